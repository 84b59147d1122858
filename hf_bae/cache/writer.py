"""Writing an activation cache: `harvest` runs a language model over text and appends shards that end
at row boundaries, keeping the manifest in step (`ShardWriter`), so that an interrupted harvest resumes
after its last complete shard (`open_for_writing`)."""

import functools
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..activations.language_models import model_name_of, model_revision_of
from ..activations.streaming import stream_activations, token_filter_description
from ..formats import CACHE_MANIFEST_FILE
from ..sites import Site, parse_sites, resolve_site_module
from .manifest import STORAGE_DTYPES, CacheManifest, ShardInfo
from .shards import TOKEN_KEYS, shard_name, shard_problem, validate_shards, write_shard

__all__ = ["ShardWriter", "default_shard_tokens", "harvest", "open_for_writing"]

DEFAULT_SHARD_BYTES = 64 * 2**20


class ShardWriter:
    """Appends shards to a cache folder and keeps its manifest in step."""

    def __init__(self, cache_dir: Path, manifest: CacheManifest) -> None:
        self.cache_dir = cache_dir
        self.manifest = manifest
        self.storage_dtype = STORAGE_DTYPES[manifest.dtype]

    def write(self, activations: dict[str, torch.Tensor], extra: dict[str, torch.Tensor], first_row=None, end_row=None) -> None:
        n = next(iter(activations.values())).shape[0]
        name = shard_name(len(self.manifest.shards))
        tensors = {k: v.to("cpu", self.storage_dtype) for k, v in activations.items()}
        tensors.update({k: v.cpu() for k, v in extra.items()})
        size = write_shard(self.cache_dir / name, tensors)
        self.manifest.shards.append(ShardInfo(name, n, size, first_row, end_row))
        self.manifest.num_tokens += n
        self.manifest.save(self.cache_dir)


def default_shard_tokens(bytes_per_token: int) -> int:
    """Tokens per shard for shards of about `DEFAULT_SHARD_BYTES` (at least 1024)."""
    return max(1024, DEFAULT_SHARD_BYTES // max(1, bytes_per_token))


def open_for_writing(
    cache_dir: Path, manifest: CacheManifest, *, resume: bool, overwrite: bool, compare: Sequence[str]
) -> CacheManifest:
    """Start a new cache, or continue the one in `cache_dir` if it was made the same way."""
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        if not os.access(cache_dir, os.W_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as error:  # a file in the way, a read-only disk, no permission
        raise ValueError(f"Cannot write a cache to {cache_dir} ({error.strerror or error}): choose a folder you can "
                         "write to (--output_dir).") from error
    existing_path = cache_dir / CACHE_MANIFEST_FILE
    if existing_path.is_file() and overwrite:
        old = CacheManifest.load(cache_dir)
        for shard in old.shards:
            (cache_dir / shard.file).unlink(missing_ok=True)
        existing_path.unlink()
    if existing_path.is_file():
        if not resume:
            raise ValueError(
                f"{cache_dir} already holds an activation cache. Resume it (resume=True, the default of hf-bae harvest), "
                "overwrite it (overwrite=True / --overwrite), or choose another folder."
            )
        old = CacheManifest.load(cache_dir)
        for key in compare:
            if getattr(old, key) != getattr(manifest, key):
                raise ValueError(
                    f"Cannot resume the cache in {cache_dir}: it was made with {key}={getattr(old, key)!r}, this run asks for "
                    f"{getattr(manifest, key)!r}. Use another folder, or overwrite=True (--overwrite) to start again."
                )
        bad = validate_shards(cache_dir, old)
        if bad is not None:
            warnings.warn(
                f"{shard_problem(cache_dir, old.shards[bad])}: rewriting it and the {len(old.shards) - bad - 1} shard(s) after it.",
                UserWarning,
                stacklevel=3,
            )
            old.shards = old.shards[:bad]
            old.num_tokens = sum(s.num_tokens for s in old.shards)
            old.complete = old.exhausted = False
        manifest.shards, manifest.num_tokens = old.shards, old.num_tokens
        manifest.complete, manifest.exhausted = old.complete, old.exhausted
        manifest.hidden_sizes = old.hidden_sizes or manifest.hidden_sizes
    listed = {s.file for s in manifest.shards}
    for path in cache_dir.glob("shard-*"):
        if path.name not in listed:  # written after the last manifest update: never trusted
            path.unlink()
    manifest.save(cache_dir)
    return manifest


def nothing_left_on_failure(fn: Callable[..., CacheManifest]) -> Callable[..., CacheManifest]:
    """Wrap a function writing a cache to its first argument so that, when it fails before writing any
    shard into a folder that held no cache, it leaves nothing behind (no empty manifest, no new folder)."""

    @functools.wraps(fn)
    def wrapper(cache_dir: "str | os.PathLike", *args: Any, **kwargs: Any) -> CacheManifest:
        path = Path(cache_dir)
        existed, fresh = path.exists(), not (path / CACHE_MANIFEST_FILE).is_file()
        try:
            return fn(cache_dir, *args, **kwargs)
        except BaseException:
            if fresh and (path / CACHE_MANIFEST_FILE).is_file() and not any(path.glob("shard-*")):
                (path / CACHE_MANIFEST_FILE).unlink()
                if not existed and not any(path.iterdir()):
                    path.rmdir()
            raise

    return wrapper


@nothing_left_on_failure
def harvest(
    cache_dir: "str | os.PathLike",
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Iterable[str],
    sites: "Sequence[Site | str] | Site | str",
    *,
    num_tokens: int,
    shard_tokens: int | None = None,
    context_length: int = 128,
    batch_size: int = 8,
    dtype: str = "float32",
    model_name: str | None = None,
    revision: str | None = None,
    dataset_name: str | None = None,
    resume: bool = True,
    overwrite: bool = False,
    exclude_special_tokens: bool = True,
    outlier_factor: float | None = None,
    forward_dtype: "str | torch.dtype | None" = None,
    progress: bool = True,
) -> CacheManifest:
    """Write `num_tokens` tokens of activations at `sites` to a shard cache in `cache_dir`.

    Args:
        cache_dir: output folder (created).
        model, tokenizer, texts: as for `stream_activations` (texts from `load_texts` record their source).
        sites: one or several sites, harvested in one pass.
        num_tokens: tokens to store (after special/outlier tokens are left out).
        shard_tokens: tokens per shard (default: ~64 MiB shards). Shards end at row boundaries, so
            they hold slightly more.
        context_length, batch_size: packing and forward batch (see `stream_activations`).
        dtype: storage dtype, float32, float16 or bfloat16 (reading always gives float32).
        model_name, revision: recorded in the manifest (default: the model's `name_or_path`).
        dataset_name: recorded text source when `texts` is a plain iterable.
        resume: continue an interrupted harvest in `cache_dir` (same model, sites, packing), from the
            row after its last complete shard; a truncated shard is rewritten.
        overwrite: delete an existing cache in `cache_dir` first.
        exclude_special_tokens, outlier_factor, forward_dtype: token filter and autocast dtype, as in
            `stream_activations` (there `dtype`).

    Returns:
        The final manifest (`complete=True`; `exhausted=True` if the text ran out first).
    """
    if num_tokens < 1:
        raise ValueError(f"num_tokens must be >= 1, got {num_tokens}.")
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"dtype={dtype!r} is not supported; choose one of {', '.join(STORAGE_DTYPES)}.")
    sites = parse_sites(sites)
    for site in sites:  # a layer out of range or a site the architecture lacks fails before anything is written
        resolve_site_module(model, site)
    keys = [str(s) for s in sites]
    cache_dir = Path(cache_dir)
    name = model_name if model_name is not None else getattr(model, "name_or_path", None)
    source = dict(getattr(texts, "source", {}) or {}) or ({"dataset": dataset_name} if dataset_name else None)
    manifest = CacheManifest(
        model=model_name_of(name) if name else None,
        revision=model_revision_of(name, revision) if name else revision,
        sites=keys,
        hidden_sizes={},
        dtype=dtype,
        target_tokens=num_tokens,
        context_length=context_length,
        text_source=source,
        token_filter=token_filter_description(exclude_special_tokens, outlier_factor),
    )
    manifest = open_for_writing(
        cache_dir,
        manifest,
        resume=resume,
        overwrite=overwrite,
        compare=("model", "revision", "sites", "dtype", "context_length", "text_source", "token_filter"),
    )
    manifest.target_tokens = num_tokens
    if manifest.num_tokens >= num_tokens or (manifest.exhausted and manifest.complete):
        manifest.complete = True
        manifest.save(cache_dir)
        return manifest
    manifest.complete = manifest.exhausted = False
    writer = ShardWriter(cache_dir, manifest)
    skip_rows = manifest.shards[-1].end_row if manifest.shards else 0

    pending: dict[str, list[torch.Tensor]] = {k: [] for k in [*keys, *TOKEN_KEYS]}
    pending_rows: list[tuple[int, torch.Tensor]] = []  # (first global row, input_ids block)
    pending_count = 0
    shard_first_row = skip_rows

    def cut(n: int, end_row: int | None) -> None:
        """Write the first n pending tokens as a shard ending before `end_row` (default: after the n-th token's row)."""
        nonlocal pending_count, shard_first_row, pending_rows
        data = {k: torch.cat(v) for k, v in pending.items()}
        rows = data["rows"]
        if end_row is None:
            end_row = int(rows[n - 1]) + 1 if n else shard_first_row
        blocks = torch.cat([b for _, b in pending_rows]) if pending_rows else torch.empty(0, context_length, dtype=torch.int32)
        first_pending_row = pending_rows[0][0] if pending_rows else shard_first_row
        input_ids = blocks[shard_first_row - first_pending_row : end_row - first_pending_row]
        writer.write(
            {k: data[k][:n] for k in keys},
            {"token_ids": data["token_ids"][:n], "positions": data["positions"][:n], "rows": rows[:n], "input_ids": input_ids},
            first_row=shard_first_row,
            end_row=end_row,
        )
        for k in pending:
            pending[k] = [data[k][n:]]
        pending_count -= n
        kept = blocks[end_row - first_pending_row :]
        pending_rows = [(end_row, kept)] if len(kept) else []
        shard_first_row = end_row

    stream = stream_activations(
        model,
        tokenizer,
        texts,
        sites,
        context_length=context_length,
        batch_size=batch_size,
        exclude_special_tokens=exclude_special_tokens,
        outlier_factor=outlier_factor,
        skip_rows=skip_rows,
        dtype=forward_dtype,
        progress=False,
    )
    bar = tqdm(total=num_tokens, initial=manifest.num_tokens, desc="harvest", unit="tok", unit_scale=True, disable=not progress)
    done = False
    next_row = skip_rows
    try:
        for batch in stream:
            if not manifest.hidden_sizes:
                manifest.hidden_sizes = {k: int(batch.activations[k].shape[-1]) for k in keys}
            for k in keys:
                pending[k].append(batch.activations[k].to("cpu", writer.storage_dtype))
            pending["token_ids"].append(batch.token_ids.to("cpu", torch.int32))
            pending["positions"].append(batch.positions.to("cpu", torch.int32))
            pending["rows"].append((batch.row_index + batch.first_row).to("cpu", torch.int64))
            pending_rows.append((batch.first_row, batch.input_ids.to("cpu", torch.int32)))
            pending_count += batch.num_tokens
            next_row = batch.first_row + batch.input_ids.shape[0]
            bar.update(min(batch.num_tokens, num_tokens - bar.n))
            if shard_tokens is None:
                width = sum(v.shape[-1] for v in batch.activations.values())
                shard_tokens = default_shard_tokens(width * writer.storage_dtype.itemsize)
            while True:
                remaining = num_tokens - manifest.num_tokens
                if pending_count >= remaining:  # the last shard: exactly num_tokens in all
                    cut(remaining, None)
                    done = True
                    break
                if pending_count < shard_tokens:
                    break
                # Cut at the end of the row holding the shard_tokens-th token (rows never straddle batches).
                rows = torch.cat(pending["rows"])
                last_row = int(rows[shard_tokens - 1])
                cut(int(torch.searchsorted(rows, torch.tensor(last_row), right=True)), last_row + 1)
            if done:
                break
        if not done:
            if pending_count:
                cut(pending_count, next_row)
            manifest.exhausted = True
    finally:
        stream.close()
        bar.close()
    manifest.complete = True
    manifest.save(cache_dir)
    if manifest.exhausted:
        warnings.warn(
            f"The text ran out after {manifest.num_tokens} of the {num_tokens} tokens asked for; the cache holds what there was.",
            UserWarning,
            stacklevel=2,
        )
    return manifest
