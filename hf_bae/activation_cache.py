"""A cache of activations on disk: safetensors shards plus a JSON manifest, written by `harvest`
(`hf-bae harvest`) and streamed back by `ActivationCache` in random order with bounded memory.

Layout of a cache folder:

```
manifest.json              model, revision, sites, hidden sizes, dtype, token count, text source, shards
shard-00000.safetensors    one tensor per site ([n, d], the cache dtype), plus token_ids [n] int32,
shard-00001.safetensors    positions [n] int32, rows [n] int64 (global row of each token) and
...                        input_ids [rows, context_length] int32 (the packed rows, for contexts)
```

Shards are standard safetensors files (`safetensors.torch.load_file` reads them). Each one is
written to a temporary name, renamed, and only then listed in the manifest (itself replaced
atomically), so the manifest lists complete shards only. Shards end at row boundaries and record
the row stream position after them; an interrupted harvest resumes there. A listed shard whose size
differs from the manifest (a truncated copy) is refused by the reader and rewritten by a resumed
harvest; files not in the manifest are deleted by it.

Reading (`ActivationCache.iter_batches`) shuffles the order of shards and, within windows of a
bounded number of tokens, the tokens: memory stays at about one window whatever the cache size.
The order is a function of (seed, epoch), and `start_batch` resumes it exactly without reading the
skipped part.
"""

import json
import math
import os
import pickle
import struct
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .activations import model_name_of, model_revision_of, stream_activations, token_filter_description
from .sites import Site, parse_sites
from .version import __version__

FORMAT = "hf_bae.activation_cache"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_SAFETENSORS_DTYPES = {
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I32": torch.int32,
    "I64": torch.int64,
    "I16": torch.int16,
}
TOKEN_KEYS = ("token_ids", "positions", "rows")
DEFAULT_SHARD_BYTES = 64 * 2**20
DEFAULT_BUFFER_BYTES = 512 * 2**20


@dataclass
class ShardInfo:
    """One complete shard: its file, token count, byte size and the rows its tokens came from."""

    file: str
    num_tokens: int
    num_bytes: int
    first_row: int | None = None
    end_row: int | None = None  # row stream position after this shard (where a resumed harvest starts)


@dataclass
class CacheManifest:
    """What a cache holds and where it came from (`manifest.json`)."""

    model: str | None
    sites: list[str]
    hidden_sizes: dict[str, int]
    dtype: str = "float32"
    revision: str | None = None
    num_tokens: int = 0
    target_tokens: int | None = None
    complete: bool = False
    exhausted: bool = False  # the text ran out before target_tokens
    context_length: int | None = None
    text_source: dict[str, Any] | None = None
    token_filter: str | None = None
    has_tokens: bool = True
    shards: list[ShardInfo] = field(default_factory=list)
    hf_bae_version: str = __version__
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    @property
    def layers(self) -> list[int]:
        """Decoder layers of the cached sites."""
        return sorted({Site.parse(s).layer for s in self.sites})

    @property
    def parsed_sites(self) -> list[Site]:
        return [Site.parse(s) for s in self.sites]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "manifest") -> "CacheManifest":
        if data.get("format") != FORMAT:
            raise ValueError(f"{where} is not an hf_bae activation cache manifest (format={data.get('format')!r}).")
        if int(data.get("format_version", 0)) > FORMAT_VERSION:
            raise ValueError(
                f"{where} has cache format {data['format_version']}, newer than this hf_bae reads ({FORMAT_VERSION}): "
                "upgrade hf_bae."
            )
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in data.items() if k in known}
        values["shards"] = [ShardInfo(**s) for s in data.get("shards", [])]
        return cls(**values)

    @classmethod
    def load(cls, cache_dir: "str | os.PathLike") -> "CacheManifest":
        path = Path(cache_dir) / MANIFEST_NAME
        if not path.is_file():
            hint = (
                " The folder exists but has no manifest: a harvest that never finished its first shard, or not a cache."
                if Path(cache_dir).is_dir()
                else ""
            )
            raise FileNotFoundError(
                f"No activation cache at {cache_dir}: {MANIFEST_NAME} is missing.{hint} "
                "Create one with `hf-bae harvest --output_dir ...`."
            )
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON ({err}); the cache is damaged: harvest it again.") from err
        return cls.from_dict(data, where=str(path))

    def save(self, cache_dir: "str | os.PathLike") -> None:
        path = Path(cache_dir) / MANIFEST_NAME
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2))
        os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# Shard files
# ---------------------------------------------------------------------------------------------
def _shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def _read_header(f: Any, path: Path) -> tuple[dict[str, Any], int]:
    raw = f.read(8)
    if len(raw) < 8:
        raise ValueError(f"{path} is truncated (no safetensors header).")
    (length,) = struct.unpack("<Q", raw)
    text = f.read(length)
    if len(text) < length:
        raise ValueError(f"{path} is truncated (incomplete safetensors header).")
    return json.loads(text), 8 + length


def _tensor_info(header: dict[str, Any], name: str) -> tuple[torch.dtype, list[int], int]:
    entry = header[name]
    dtype = _SAFETENSORS_DTYPES[entry["dtype"]]
    shape = entry["shape"]
    return dtype, shape[1:], math.prod(shape[1:]) * dtype.itemsize


def _read_rows(
    f: Any, header: dict[str, Any], data_start: int, name: str, lo: int, hi: int, path: Path, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Rows [lo, hi) of tensor `name`, read into `out` (or a new tensor) by plain reads.

    No mmap: resident memory is what we keep, not the pages of a multi-GB file we touched.
    """
    dtype, row_shape, row_bytes = _tensor_info(header, name)
    if out is None:
        out = torch.empty((hi - lo, *row_shape), dtype=dtype)
    count = (hi - lo) * row_bytes
    if count == 0:
        return out
    f.seek(data_start + header[name]["data_offsets"][0] + lo * row_bytes)
    if f.readinto(memoryview(out.view(torch.uint8).numpy()).cast("B")) != count:
        raise ValueError(f"{path} is truncated: tensor {name!r} ends early. Resume the harvest to rewrite it.")
    return out


def _write_shard(path: Path, tensors: dict[str, torch.Tensor]) -> int:
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".partial")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata={"format": FORMAT})
    os.replace(tmp, path)
    return path.stat().st_size


class _Writer:
    """Appends shards to a cache folder and keeps its manifest in step."""

    def __init__(self, cache_dir: Path, manifest: CacheManifest) -> None:
        self.cache_dir = cache_dir
        self.manifest = manifest
        self.storage_dtype = STORAGE_DTYPES[manifest.dtype]

    def write(self, activations: dict[str, torch.Tensor], extra: dict[str, torch.Tensor], first_row=None, end_row=None) -> None:
        n = next(iter(activations.values())).shape[0]
        name = _shard_name(len(self.manifest.shards))
        tensors = {k: v.to("cpu", self.storage_dtype) for k, v in activations.items()}
        tensors.update({k: v.cpu() for k, v in extra.items()})
        size = _write_shard(self.cache_dir / name, tensors)
        self.manifest.shards.append(ShardInfo(name, n, size, first_row, end_row))
        self.manifest.num_tokens += n
        self.manifest.save(self.cache_dir)


def _validate_shards(cache_dir: Path, manifest: CacheManifest) -> int | None:
    """Index of the first listed shard that is missing or truncated, or None if all are whole."""
    for i, shard in enumerate(manifest.shards):
        path = cache_dir / shard.file
        if not path.is_file() or path.stat().st_size != shard.num_bytes:
            return i
    return None


def _shard_problem(cache_dir: Path, shard: ShardInfo) -> str:
    path = cache_dir / shard.file
    if not path.is_file():
        return f"shard {shard.file} is missing"
    return f"shard {shard.file} is truncated ({path.stat().st_size} of {shard.num_bytes} bytes)"


# ---------------------------------------------------------------------------------------------
# Harvest
# ---------------------------------------------------------------------------------------------
def _default_shard_tokens(bytes_per_token: int) -> int:
    return max(1024, DEFAULT_SHARD_BYTES // max(1, bytes_per_token))


def _open_for_writing(
    cache_dir: Path, manifest: CacheManifest, *, resume: bool, overwrite: bool, compare: Sequence[str]
) -> CacheManifest:
    """Start a new cache, or continue the one in `cache_dir` if it was made the same way."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    existing_path = cache_dir / MANIFEST_NAME
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
        bad = _validate_shards(cache_dir, old)
        if bad is not None:
            warnings.warn(
                f"{_shard_problem(cache_dir, old.shards[bad])}: rewriting it and the {len(old.shards) - bad - 1} shard(s) after it.",
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
    manifest = _open_for_writing(
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
    writer = _Writer(cache_dir, manifest)
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
                shard_tokens = _default_shard_tokens(width * writer.storage_dtype.itemsize)
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


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------
class ActivationCache:
    """Read a shard cache written by `harvest` or `import_legacy_pickle`.

    ```python
    >>> cache = ActivationCache("runs/cache")
    >>> cache.check_compatible("HuggingFaceTB/SmolLM2-135M-Instruct", ["layers.5.resid_post"], hidden_size=576)
    >>> train, validation = cache.split(0.2)
    >>> for batch in train.iter_batches(4096, seed=0, epoch=0):
    ...     x = batch["layers.5.resid_post"]           # [4096, 576] float32
    ```

    Raises on construction if the manifest is missing or damaged, or a listed shard is missing or
    truncated (never reads it as data).
    """

    def __init__(self, path: "str | os.PathLike", *, _segments: list[tuple[int, int, int]] | None = None) -> None:
        self.path = Path(path)
        self.manifest = CacheManifest.load(self.path)
        bad = _validate_shards(self.path, self.manifest)
        if bad is not None:
            raise ValueError(
                f"Activation cache {self.path}: {_shard_problem(self.path, self.manifest.shards[bad])}. "
                "Run the same harvest again (resume, the default) to rewrite it."
            )
        if not self.manifest.complete:
            warnings.warn(
                f"The harvest of {self.path} was not finished: reading its {self.manifest.num_tokens} complete tokens. "
                "Run it again to finish.",
                UserWarning,
                stacklevel=2,
            )
        if _segments is None:
            _segments = [(i, 0, s.num_tokens) for i, s in enumerate(self.manifest.shards) if s.num_tokens]
        self.segments = _segments

    # -- description --------------------------------------------------------------------------
    @property
    def num_tokens(self) -> int:
        """Tokens in this cache (or in this part of it, after `split`)."""
        return sum(hi - lo for _, lo, hi in self.segments)

    def __len__(self) -> int:
        return self.num_tokens

    @property
    def sites(self) -> list[Site]:
        return self.manifest.parsed_sites

    def hidden_size(self, site: "Site | str") -> int:
        """Width of the activations at `site`."""
        return int(self.manifest.hidden_sizes[self._key(site)])

    def __repr__(self) -> str:
        m = self.manifest
        return f"ActivationCache({str(self.path)!r}, model={m.model!r}, sites={m.sites}, num_tokens={self.num_tokens}, dtype={m.dtype})"

    def _key(self, site: "Site | str") -> str:
        key = str(Site.parse(site))
        if key not in self.manifest.sites:
            raise ValueError(
                f"The cache at {self.path} has no activations for {key}; it holds {', '.join(self.manifest.sites)}. "
                "Harvest that site, or ask for one of these."
            )
        return key

    def check_compatible(self, model_name: str | None, sites: "Sequence[Site | str]", hidden_size: int | None = None) -> None:
        """Raise a ValueError unless this cache holds `sites` of `model_name` with width `hidden_size`."""
        cached = self.manifest.model
        if model_name is not None and cached is not None and model_name_of(model_name) != cached:
            raise ValueError(
                f"The cache at {self.path} holds activations of {cached!r}, not {model_name_of(model_name)!r}: "
                "harvest that model, or point to the matching cache."
            )
        for site in parse_sites(sites):
            key = self._key(site)
            width = self.manifest.hidden_sizes.get(key)
            if hidden_size is not None and width is not None and int(width) != hidden_size:
                raise ValueError(
                    f"Expected hidden size {hidden_size} at {key}, the cache at {self.path} has {width}: "
                    f"was it harvested from another model than {cached!r}?"
                )

    # -- views --------------------------------------------------------------------------------
    def _view(self, segments: list[tuple[int, int, int]]) -> "ActivationCache":
        view = object.__new__(ActivationCache)
        view.path, view.manifest, view.segments = self.path, self.manifest, segments
        return view

    def _take(self, start: int, stop: int) -> list[tuple[int, int, int]]:
        """Segments covering tokens [start, stop) of this view, in stream order."""
        out, offset = [], 0
        for shard, lo, hi in self.segments:
            a, b = max(start, offset), min(stop, offset + hi - lo)
            if a < b:
                out.append((shard, lo + a - offset, lo + b - offset))
            offset += hi - lo
        return out

    def split(self, validation_fraction: float) -> tuple["ActivationCache", "ActivationCache"]:
        """(train, validation): the last `validation_fraction` of the tokens, in stream order, is held out.

        As the original code's `--dataset_split 0.8` (first 80 % train, last 20 % validation), but in
        stream order of whole texts, so the two parts share no text except at the boundary row.
        """
        if not 0 < validation_fraction < 1:
            raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}.")
        n = self.num_tokens
        n_val = round(n * validation_fraction)
        if n_val == 0 or n_val == n:
            raise ValueError(f"A {validation_fraction} split of {n} tokens leaves one part empty; harvest more tokens.")
        return self._view(self._take(0, n - n_val)), self._view(self._take(n - n_val, n))

    # -- reading ------------------------------------------------------------------------------
    def _read_segments(self, segments: Sequence[tuple[int, int, int]], keys: Sequence[str]) -> dict[str, torch.Tensor]:
        """Tokens of `segments`, concatenated: each one is read straight into its slice (no second copy)."""
        total = sum(hi - lo for _, lo, hi in segments)
        out: dict[str, torch.Tensor] = {}
        offset = 0
        for shard, lo, hi in segments:
            path = self.path / self.manifest.shards[shard].file
            with open(path, "rb") as f:
                header, data_start = _read_header(f, path)
                for k in keys:
                    if k not in header:
                        held = sorted(name for name in header if name != "__metadata__")
                        raise ValueError(f"{path} has no tensor {k!r} (it holds {held}).")
                    if k not in out:
                        dtype, row_shape, _ = _tensor_info(header, k)
                        out[k] = torch.empty((total, *row_shape), dtype=dtype)
                    _read_rows(f, header, data_start, k, lo, hi, path, out=out[k][offset : offset + hi - lo])
            offset += hi - lo
        return out

    def _keys(self, sites: "Sequence[Site | str] | None", with_tokens: bool) -> tuple[list[str], list[str]]:
        site_keys = [self._key(s) for s in parse_sites(sites)] if sites is not None else list(self.manifest.sites)
        token_keys = []
        if with_tokens:
            if not self.manifest.has_tokens:
                raise ValueError(f"The cache at {self.path} has no token ids (imported from a legacy pickle).")
            token_keys = list(TOKEN_KEYS)
        return site_keys, token_keys

    def read(self, start: int = 0, stop: int | None = None, *, sites=None, with_tokens: bool = False) -> dict[str, torch.Tensor]:
        """Tokens [start, stop) in stream order (float32 activations); for small slices and tests."""
        stop = self.num_tokens if stop is None else min(stop, self.num_tokens)
        site_keys, token_keys = self._keys(sites, with_tokens)
        data = self._read_segments(self._take(start, stop), site_keys + token_keys)
        return {k: (v.float() if k in site_keys else v) for k, v in data.items()}

    def row_input_ids(self, rows: torch.Tensor) -> torch.Tensor:
        """`[len(rows), context_length]` packed token ids of global `rows` (e.g. `batch["rows"]`), for contexts."""
        rows = torch.as_tensor(rows, dtype=torch.int64)
        out = torch.full((len(rows), self.manifest.context_length or 0), -1, dtype=torch.int32)
        for shard in self.manifest.shards:
            if shard.first_row is None:
                continue
            mask = (rows >= shard.first_row) & (rows < shard.end_row)
            if mask.any():
                path = self.path / shard.file
                with open(path, "rb") as f:
                    header, start = _read_header(f, path)
                    block = _read_rows(f, header, start, "input_ids", 0, header["input_ids"]["shape"][0], path)
                out[mask] = block[rows[mask] - shard.first_row]
        return out

    def num_batches(self, batch_size: int, *, world_size: int = 1, drop_last: bool = True) -> int:
        """Batches per rank and epoch that `iter_batches` yields from the start."""
        total = self.num_tokens // batch_size if drop_last else math.ceil(self.num_tokens / batch_size)
        return total // world_size if drop_last else math.ceil(total / world_size)

    def iter_batches(
        self,
        batch_size: int,
        *,
        sites: "Sequence[Site | str] | None" = None,
        shuffle: bool = True,
        seed: int = 0,
        epoch: int = 0,
        start_batch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
        buffer_tokens: int | None = None,
        with_tokens: bool = False,
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Yield batches `{str(site): [batch_size, d] float32}` (plus token_ids, positions, rows with `with_tokens`).

        Args:
            batch_size: tokens per batch.
            sites: sites to read (default: all cached); a transcoder reads two in step.
            shuffle: random order: shards are permuted, then tokens within windows of `buffer_tokens`.
                Without it, stream order.
            seed, epoch: the order is a function of both (a new order each epoch).
            start_batch: skip this many batches (per rank) without reading them: resume exactly.
            rank, world_size: global batch i goes to rank i % world_size; every rank gets the same count.
            drop_last: leave out the final incomplete batch.
            buffer_tokens: window size; memory is about one window (default: 512 MiB of activations).
            with_tokens: also yield `token_ids`, `positions` and `rows` of every token.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"Need 0 <= rank < world_size, got rank={rank}, world_size={world_size}.")
        site_keys, token_keys = self._keys(sites, with_tokens)
        keys = site_keys + token_keys
        if buffer_tokens is None:
            per_token = sum(self.manifest.hidden_sizes.get(k, 1) for k in site_keys) * STORAGE_DTYPES[self.manifest.dtype].itemsize
            buffer_tokens = max(batch_size, DEFAULT_BUFFER_BYTES // max(1, per_token))
        buffer_tokens = max(buffer_tokens, 1)
        total = self.num_tokens
        n_global = total // batch_size if drop_last else math.ceil(total / batch_size)
        n_steps = self.num_batches(batch_size, world_size=world_size, drop_last=drop_last)
        mine = [s * world_size + rank for s in range(start_batch, n_steps) if s * world_size + rank < n_global]
        if not mine:
            return
        windows = self._windows(shuffle, seed, epoch, buffer_tokens)

        carry: dict[str, list[torch.Tensor]] | None = None
        next_mine = 0
        offset = 0
        for w, segments in enumerate(windows):
            size = sum(hi - lo for _, lo, hi in segments)
            end = offset + size
            needed = []
            while next_mine + len(needed) < len(mine):
                b = mine[next_mine + len(needed)]
                if b * batch_size >= end:
                    break
                needed.append(b)
            if not needed:
                offset = end
                continue
            data = self._read_segments(segments, keys)
            if shuffle:
                generator = torch.Generator().manual_seed(_mix(seed, epoch, w))
                order = torch.randperm(size, generator=generator)
            else:
                order = torch.arange(size)
            for b in needed:
                lo = max(b * batch_size, offset) - offset
                hi = min((b + 1) * batch_size, end, total) - offset
                idx = order[lo:hi]
                pieces = {k: v[idx] for k, v in data.items()}
                if carry is not None:
                    for k in keys:
                        carry[k].append(pieces[k])
                else:
                    carry = {k: [pieces[k]] for k in keys}
                if min((b + 1) * batch_size, total) > end:  # continues in the next window
                    break
                batch = {k: torch.cat(v) if len(v) > 1 else v[0] for k, v in carry.items()}
                carry = None
                next_mine += 1
                yield {k: (v.float() if k in site_keys else v) for k, v in batch.items()}
            del data
            offset = end
            if next_mine >= len(mine):
                return

    def _windows(self, shuffle: bool, seed: int, epoch: int, buffer_tokens: int) -> list[list[tuple[int, int, int]]]:
        pieces = []
        for shard, lo, hi in self.segments:  # no piece larger than a window
            for a in range(lo, hi, buffer_tokens):
                pieces.append((shard, a, min(hi, a + buffer_tokens)))
        if shuffle:
            generator = torch.Generator().manual_seed(_mix(seed, epoch, -1))
            pieces = [pieces[i] for i in torch.randperm(len(pieces), generator=generator).tolist()]
        windows, current, size = [], [], 0
        for piece in pieces:
            n = piece[2] - piece[1]
            if current and size + n > buffer_tokens:
                windows.append(current)
                current, size = [], 0
            current.append(piece)
            size += n
        if current:
            windows.append(current)
        return windows


def _mix(seed: int, epoch: int, window: int) -> int:
    """A 63-bit seed from (seed, epoch, window), so each window's permutation can be made on its own."""
    x = (seed * 0x9E3779B97F4A7C15 + (epoch + 1) * 0xBF58476D1CE4E5B9 + (window + 2) * 0x94D049BB133111EB) % (2**64)
    x ^= x >> 31
    return x % (2**63 - 1)


# ---------------------------------------------------------------------------------------------
# Legacy import
# ---------------------------------------------------------------------------------------------
def import_legacy_pickle(
    pkl_path: "str | os.PathLike",
    cache_dir: "str | os.PathLike",
    *,
    allow_pickle: bool = False,
    layer: int | None = None,
    site: "Site | str | None" = None,
    model_name: str | None = None,
    shard_tokens: int | None = None,
    dtype: str = "float32",
    overwrite: bool = False,
) -> CacheManifest:
    """Convert the original code's `.pkl` feature set into a shard cache.

    The original `feature_reconstruction.py --feature_path X.pkl [--layered_feature --layer L]` reads
    a pickled list of 1-D tensors `[d]`, or (layered) a list of such lists, one per entry of the
    model's `output_hidden_states` (0 = embeddings).

    Args:
        allow_pickle: must be True: unpickling runs arbitrary code, so only import files you trust.
        layer: the original's `--layer` (with `--layered_feature`); negative counts from the end.
        site: the site the vectors are from. Default with `layer`: `layers.{L-1}.resid_post`
            (hidden_states[L] is the output of decoder layer L-1); without `layer` it must be given.
        model_name: the model they came from, if known (recorded, checked by `check_compatible`).
    """
    pkl_path = Path(pkl_path)
    if not allow_pickle:
        raise ValueError(
            f"Refusing to unpickle {pkl_path}: loading a pickle runs arbitrary code. If you made this file or trust it, "
            "pass allow_pickle=True (hf-bae harvest --from_pickle ... --allow_pickle)."
        )
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"dtype={dtype!r} is not supported; choose one of {', '.join(STORAGE_DTYPES)}.")
    with open(pkl_path, "rb") as f:
        data = pickle.load(f)  # noqa: S301 - explicitly allowed by the caller
    if not isinstance(data, (list, tuple)) or len(data) == 0:
        raise ValueError(f"{pkl_path} holds {type(data).__name__}, not a non-empty list of vectors.")
    if layer is not None:
        if not _is_layered(data):
            raise ValueError(f"{pkl_path} is not layered (a list of lists of vectors): drop layer= / --layer.")
        index = layer if layer >= 0 else len(data) + layer
        if not 0 <= index < len(data):
            raise ValueError(f"layer={layer} is out of range: {pkl_path} holds {len(data)} layers.")
        data = data[index]
        if site is None:
            if index == 0:
                raise ValueError("Layer 0 of a layered pickle is the embeddings, not a decoder site: pass site= explicitly.")
            site = Site(index - 1, "resid_post")
    elif _is_layered(data):
        raise ValueError(f"{pkl_path} is layered (one list of vectors per layer): choose one with layer= (--layer).")
    if site is None:
        raise ValueError(
            "Say which site these vectors are from, e.g. site='layers.10.resid_post' (the original's hidden_states[11]); "
            "for a layered pickle, layer= sets it."
        )
    site = Site.parse(site)
    if len(data) == 0:
        raise ValueError(f"{pkl_path} holds no vectors at that layer.")
    first = torch.as_tensor(data[0])
    if first.dim() not in (1, 2):
        raise ValueError(f"{pkl_path}: expected 1-D vectors, got items of shape {tuple(first.shape)}.")
    d = first.shape[-1]
    key = str(site)
    manifest = CacheManifest(
        model=model_name_of(model_name) if model_name else None,
        sites=[key],
        hidden_sizes={key: int(d)},
        dtype=dtype,
        context_length=None,
        text_source={"dataset": f"legacy pickle {pkl_path.name}"},
        has_tokens=False,
    )
    cache_dir = Path(cache_dir)
    manifest = _open_for_writing(cache_dir, manifest, resume=False, overwrite=overwrite, compare=())
    writer = _Writer(cache_dir, manifest)
    per_shard = shard_tokens or _default_shard_tokens(d * STORAGE_DTYPES[dtype].itemsize)
    pending: list[torch.Tensor] = []
    count = 0
    for i, item in enumerate(data):
        vec = torch.as_tensor(item).detach().to("cpu", torch.float32)
        vec = vec[None] if vec.dim() == 1 else vec
        if vec.dim() != 2 or vec.shape[-1] != d:
            raise ValueError(f"Item {i} of {pkl_path} has shape {tuple(vec.shape)}; the first vector has width {d}.")
        pending.append(vec)
        count += vec.shape[0]
        while count >= per_shard:
            block = torch.cat(pending)
            writer.write({key: block[:per_shard]}, {})
            pending, count = [block[per_shard:]], count - per_shard
    if count:
        writer.write({key: torch.cat(pending)}, {})
    manifest.target_tokens = manifest.num_tokens
    manifest.complete = True
    manifest.save(cache_dir)
    return manifest


def _is_layered(data: Sequence[Any]) -> bool:
    """A list of lists of vectors (one list per layer), as opposed to a list of vectors."""
    item = data[0]
    if not isinstance(item, (list, tuple)) or len(item) == 0:
        return False
    return not isinstance(item[0], (int, float))  # a vector given as a plain list of numbers is not a layer
