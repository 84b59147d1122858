"""Reading an activation cache: `ActivationCache` checks the manifest and shards, splits the tokens into
train / validation views, and streams batches in an order that is a function of (seed, epoch), shuffling
shards and, within windows of a bounded number of tokens, the tokens: memory stays at about one window
whatever the cache size, and `start_batch` resumes the order exactly without reading the skipped part."""

import math
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from ..activations.language_models import model_name_of
from ..sites import Site, parse_sites
from .manifest import STORAGE_DTYPES, CacheManifest
from .shards import TOKEN_KEYS, read_header, read_rows, shard_problem, tensor_info, validate_shards

__all__ = ["ActivationCache"]

DEFAULT_BUFFER_BYTES = 512 * 2**20


class ActivationCache:
    """Read a shard cache written by `harvest` or `import_original_pickle`.

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
        bad = validate_shards(self.path, self.manifest)
        if bad is not None:
            raise ValueError(
                f"Activation cache {self.path}: {shard_problem(self.path, self.manifest.shards[bad])}. "
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
                header, data_start = read_header(f, path)
                for k in keys:
                    if k not in header:
                        held = sorted(name for name in header if name != "__metadata__")
                        raise ValueError(f"{path} has no tensor {k!r} (it holds {held}).")
                    if k not in out:
                        dtype, row_shape, _ = tensor_info(header, k)
                        out[k] = torch.empty((total, *row_shape), dtype=dtype)
                    read_rows(f, header, data_start, k, lo, hi, path, out=out[k][offset : offset + hi - lo])
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
                    header, start = read_header(f, path)
                    block = read_rows(f, header, start, "input_ids", 0, header["input_ids"]["shape"][0], path)
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
