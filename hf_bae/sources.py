"""Activation sources: how batches of hidden states reach the training loop.

A source yields `SourceBatch`es: `[batch_size, d]` float32 activations for each site it serves
(keys such as ``"layers.5.resid_post"``), the epoch the batch belongs to, and the *position after
it*, a small JSON-able dict (plus, for the live source, a few tensors) from which `batches` resumes
exactly: the next batch yielded from that position is the batch that would have come next. That
is what makes `--resume` continue on the same data, neither repeating nor skipping a token.

Three sources:

- `TensorSource`: activations already in memory (tests, notebooks, the benchmarks).
- `CacheSource`: a shard cache written by `hf-bae harvest` (`hf_bae.cache.ActivationCache`).
- `LiveSource`: a language model run on streamed text (`hf_bae.activations.stream_activations`),
  mixed across many sequences in seeded chunks before batches are cut.

Every source shards by rank (`rank`, `world_size`), so that the processes of a distributed run
see disjoint data.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from .activations.language_models import model_name_of, model_revision_of
from .activations.streaming import stream_activations, token_filter_description
from .cache.reader import ActivationCache
from .embedded import EMBEDDED_DATASET_ID
from .sites import Site

# Seeds of the per-epoch / per-chunk permutations are derived from (seed, rank, index) so that a
# resumed run draws the very same permutation without any saved generator state.
_SEED_STRIDE = 1_000_003


def _generator(seed: int, rank: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * _SEED_STRIDE + rank) * _SEED_STRIDE + index)


def activation_provenance(model_name_or_path: str, revision: str | None = None, *, dataset: str | None = None,
                          context_length: int | None = None, exclude_special_tokens: bool = True,
                          outlier_factor: float | None = None) -> dict[str, Any]:
    """What a dictionary config records about live activations (the one place it is assembled): the LM's
    Hub id and revision (the embedded model's recorded ones, so that it resolves back to it), the
    dataset (the embedded corpus by its id), the context length and the token filter."""
    return {"base_model": model_name_of(model_name_or_path),
            "base_model_revision": model_revision_of(model_name_or_path, revision),
            "dataset": EMBEDDED_DATASET_ID if dataset == "embedded" else dataset,
            "context_length": context_length,
            "token_filter": token_filter_description(exclude_special_tokens, outlier_factor)}


@dataclass
class SourceBatch:
    """One training batch and where the stream stands after it."""

    activations: dict[str, torch.Tensor]
    epoch: int
    state: dict[str, Any]
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # part of the state that is tensors


@dataclass
class ValidationData:
    """Held-out activations (and, when a language model is available, the token rows they came from)."""

    activations: dict[str, torch.Tensor]
    input_ids: torch.Tensor | None = None  # [rows, context_length], for the splice metrics

    @property
    def num_tokens(self) -> int:
        return next(iter(self.activations.values())).shape[0]


class ActivationSource:
    """Interface of the sources (see the module docstring)."""

    sites: tuple[str, ...] = ()
    finite: bool = True

    def hidden_size(self, site: str) -> int:
        raise NotImplementedError

    def batches(self, batch_size: int, state: dict[str, Any] | None = None,
                tensors: dict[str, torch.Tensor] | None = None) -> Iterator[SourceBatch]:
        """Yield batches from `state` (None: the beginning), forever for finite sources (epoch after epoch)."""
        raise NotImplementedError

    def batches_per_epoch(self, batch_size: int) -> int | None:
        """Batches one process gets per epoch, when known."""
        return None

    def validation(self, max_tokens: int, context_rows: int = 0) -> ValidationData | None:
        """The held-out split, at most `max_tokens` tokens (None when the source has none)."""
        return None

    def provenance(self) -> dict[str, Any]:
        """What a dictionary config should record about the data (base_model, dataset, context_length, ...)."""
        return {}

    def locate_nonfinite(self, site: str) -> str | None:
        """Where the first training token whose `site` activation holds NaN/inf is stored ("shard file, row"),
        for the error that stops training on it; None when the source cannot tell (a live stream)."""
        return None


def first_nonfinite_row(values: torch.Tensor) -> int | None:
    """Index of the first row of `[n, d]` holding a NaN or inf, or None."""
    bad = (~torch.isfinite(values)).any(-1).nonzero()
    return int(bad[0]) if len(bad) else None


def _check_sites(tensors: dict[str, torch.Tensor], what: str) -> None:
    if not tensors:
        raise ValueError(f"{what} holds no sites: pass a dict such as {{'layers.5.resid_post': tensor}}.")
    sizes = {tuple(t.shape[:1]) for t in tensors.values()}
    for site, t in tensors.items():
        if t.dim() != 2:
            raise ValueError(f"{what}[{site!r}] must be [num_tokens, d], got shape {tuple(t.shape)}.")
    if len(sizes) != 1:
        raise ValueError(f"{what}: every site must hold the same tokens, got lengths {sorted(s[0] for s in sizes)}.")


class TensorSource(ActivationSource):
    """Activations held in memory, `{site: [num_tokens, d]}`, reshuffled every epoch with a seeded permutation.

    Args:
        tensors: training activations per site (rows aligned across sites: a transcoder reads one
            site and reconstructs another for the same tokens).
        validation: held-out activations per site, or None.
        shuffle: draw a new permutation each epoch (else the stored order).
        seed: permutation seed.
        rank, world_size: this process's shard (each epoch's order is split into equal parts).
    """

    def __init__(self, tensors: dict[str, torch.Tensor], validation: dict[str, torch.Tensor] | None = None, *,
                 shuffle: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1,
                 provenance: dict[str, Any] | None = None):
        _check_sites(tensors, "tensors")
        if validation is not None:
            _check_sites(validation, "validation")
        self.tensors = {k: v.detach().float().contiguous() for k, v in tensors.items()}
        self._validation = validation
        self.sites = tuple(self.tensors)
        self.shuffle, self.seed, self.rank, self.world_size = shuffle, seed, rank, world_size
        self._provenance = dict(provenance or {})
        self.num_tokens = next(iter(self.tensors.values())).shape[0]
        if self.num_tokens == 0:
            raise ValueError("The training activations are empty (0 tokens): nothing to train on.")

    def hidden_size(self, site: str) -> int:
        return self.tensors[site].shape[1]

    def batches_per_epoch(self, batch_size: int) -> int:
        return (self.num_tokens // self.world_size) // batch_size

    def _order(self, epoch: int) -> torch.Tensor:
        if self.shuffle:
            order = torch.randperm(self.num_tokens, generator=_generator(self.seed, 0, epoch))
        else:
            order = torch.arange(self.num_tokens)
        per_rank = self.num_tokens // self.world_size
        return order[self.rank * per_rank:(self.rank + 1) * per_rank]

    def batches(self, batch_size, state=None, tensors=None):
        per_epoch = self.batches_per_epoch(batch_size)
        if per_epoch == 0:
            raise ValueError(
                f"{self.num_tokens} training tokens over {self.world_size} process(es) do not fill one batch of "
                f"{batch_size}: lower --batch_size or provide more data."
            )
        epoch, start = (state or {}).get("epoch", 0), (state or {}).get("batch", 0)
        while True:
            order = self._order(epoch)
            for b in range(start, per_epoch):
                index = order[b * batch_size:(b + 1) * batch_size]
                after = {"epoch": epoch, "batch": b + 1} if b + 1 < per_epoch else {"epoch": epoch + 1, "batch": 0}
                yield SourceBatch({k: v[index] for k, v in self.tensors.items()}, epoch, after)
            epoch, start = epoch + 1, 0

    def validation(self, max_tokens, context_rows=0):
        if self._validation is None:
            return None
        return ValidationData({k: v[:max_tokens].float() for k, v in self._validation.items()})

    def provenance(self):
        return dict(self._provenance)

    def locate_nonfinite(self, site):
        row = first_nonfinite_row(self.tensors[site])
        return None if row is None else f"row {row} of the {site!r} tensor"


class CacheSource(ActivationSource):
    """A shard cache on disk (`hf-bae harvest`), split in order into training and validation parts.

    Args:
        path: the cache folder (or an opened `hf_bae.cache.ActivationCache`).
        sites: the sites to read (all must be in the cache; a transcoder reads two in step).
        train_fraction: the first `train_fraction` of the cache trains, the rest validates (the
            original's `--dataset_split`, which split in order without shuffling).
        seed, rank, world_size: shuffling seed and this process's shard.
        model_name, hidden_size: if given, the cache must hold activations of this model / width.
    """

    def __init__(self, path: Any, sites: Iterable[str], *, train_fraction: float = 0.8, seed: int = 0,
                 rank: int = 0, world_size: int = 1, model_name: str | None = None, hidden_size: int | None = None):
        self.cache = path if isinstance(path, ActivationCache) else ActivationCache(path)
        self.sites = tuple(sites)
        self.cache.check_compatible(model_name, list(self.sites), hidden_size=hidden_size)
        if not 0 < train_fraction <= 1:
            raise ValueError(f"train_fraction must be in (0, 1], got {train_fraction}.")
        if self.cache.num_tokens == 0:
            raise ValueError(f"The activation cache at {self.cache.path} holds no tokens: harvest some first "
                             "(`hf-bae harvest`).")
        if train_fraction < 1:
            self.train_view, self.validation_view = self.cache.split(1 - train_fraction)
        else:
            self.train_view, self.validation_view = self.cache, None
        self.seed, self.rank, self.world_size = seed, rank, world_size

    def hidden_size(self, site):
        return self.cache.hidden_size(site)

    def batches_per_epoch(self, batch_size):
        return self.train_view.num_batches(batch_size, world_size=self.world_size)

    def batches(self, batch_size, state=None, tensors=None):
        if self.batches_per_epoch(batch_size) == 0:
            raise ValueError(f"The cache's training split ({self.train_view.num_tokens} tokens) does not fill one batch "
                             f"of {batch_size} tokens per process: lower --batch_size or harvest more.")
        epoch, start = (state or {}).get("epoch", 0), (state or {}).get("batch", 0)
        while True:
            for b, batch in enumerate(
                self.train_view.iter_batches(batch_size, sites=list(self.sites), shuffle=True, seed=self.seed,
                                             epoch=epoch, start_batch=start, rank=self.rank,
                                             world_size=self.world_size, drop_last=True),
                start=start,
            ):
                yield SourceBatch(batch, epoch, {"epoch": epoch, "batch": b + 1})
            epoch, start = epoch + 1, 0

    def validation(self, max_tokens, context_rows=0):
        view = self.validation_view
        if view is None or max_tokens <= 0:  # --validation_tokens 0: no held-out split wanted
            return None
        with_tokens = bool(context_rows) and self.cache.manifest.has_tokens
        data = view.read(0, max_tokens, sites=list(self.sites), with_tokens=with_tokens)
        input_ids = None
        if with_tokens:
            rows = torch.unique(data["rows"].long())  # whole packed rows of held-out tokens
            input_ids = view.row_input_ids(rows).long()
            input_ids = input_ids[(input_ids >= 0).all(-1)][:context_rows]
        return ValidationData({s: data[s] for s in self.sites}, input_ids)

    def locate_nonfinite(self, site):
        # The error path only: read the training split one shard segment at a time until the first bad row.
        key = self.cache._key(site)
        for shard, lo, hi in self.train_view.segments:
            values = self.cache._read_segments([(shard, lo, hi)], [key])[key]
            row = first_nonfinite_row(values.float())
            if row is not None:
                return f"{self.cache.path / self.cache.manifest.shards[shard].file}, row {lo + row}"
        return None

    def provenance(self):
        m = self.cache.manifest
        text = m.text_source if isinstance(m.text_source, dict) else {}
        out = {"base_model": m.model, "base_model_revision": m.revision, "context_length": m.context_length,
               "token_filter": m.token_filter, "dataset": text.get("dataset")}
        return {k: v for k, v in out.items() if v is not None}


class LiveSource(ActivationSource):
    """A language model run on streamed text; activations are mixed in seeded chunks of `shuffle_rows` rows.

    The token rows of a chunk (`shuffle_rows` packed rows of `context_length` tokens, from as many
    different places in the corpus) are pooled with the tokens left over from the previous chunk,
    permuted with a seed derived from (seed, rank, chunk index), and cut into full batches; what
    does not fill a batch is carried into the next chunk, so no token is dropped. Resuming restarts
    the LM at the first row of the current chunk (`skip_rows`), which is always a multiple of
    `lm_batch_size`, so the LM sees the very same batches and gives bitwise the same activations.

    Args:
        model, tokenizer: the language model (see `hf_bae.activations.load_language_model`).
        texts: a callable returning a fresh iterator over this process's training texts.
        sites: site names to hook, e.g. ``["layers.5.resid_post"]``.
        validation_texts: a callable returning the held-out texts (or None).
    """

    finite = False

    def __init__(self, model, tokenizer, texts: Callable[[], Iterable[str]], sites: Iterable[str], *,
                 validation_texts: Callable[[], Iterable[str]] | None = None, context_length: int = 128,
                 lm_batch_size: int = 8, shuffle_rows: int = 64, exclude_special_tokens: bool = True,
                 outlier_factor: float | None = None, device=None, dtype=None, seed: int = 0, rank: int = 0,
                 progress: bool = False, provenance: dict[str, Any] | None = None):
        if shuffle_rows % lm_batch_size:
            raise ValueError(f"shuffle_rows ({shuffle_rows}) must be a multiple of lm_batch_size ({lm_batch_size}).")
        self.model, self.tokenizer, self.texts, self.validation_texts = model, tokenizer, texts, validation_texts
        self.sites = tuple(sites)
        self.context_length, self.lm_batch_size, self.shuffle_rows = context_length, lm_batch_size, shuffle_rows
        self.exclude_special_tokens, self.outlier_factor = exclude_special_tokens, outlier_factor
        self.device, self.dtype, self.seed, self.rank, self.progress = device, dtype, seed, rank, progress
        self._provenance = dict(provenance or {})
        self._sizes: dict[str, int] = {}

    def _stream(self, texts: Iterable[str], skip_rows: int = 0):
        return stream_activations(
            self.model, self.tokenizer, texts, [Site.parse(s) for s in self.sites],
            context_length=self.context_length, batch_size=self.lm_batch_size,
            exclude_special_tokens=self.exclude_special_tokens, outlier_factor=self.outlier_factor,
            skip_rows=skip_rows, device=self.device, dtype=self.dtype, progress=False,
        )

    def hidden_size(self, site):
        if site not in self._sizes:
            config = getattr(self.model, "config", None)
            size = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
            if size is None:
                raise ValueError(f"Cannot tell the width of {site}: the model config has no hidden_size.")
            # mlp_in / mlp_out of a standard decoder have the residual width.
            self._sizes[site] = int(size)
        return self._sizes[site]

    def batches(self, batch_size, state=None, tensors=None):
        state = state or {}
        row, chunk, start = state.get("row", 0), state.get("chunk", 0), state.get("batch", 0)
        carry = {s: (tensors or {}).get(s) for s in self.sites}
        if any(v is None for v in carry.values()):
            carry = None
        stream = iter(self._stream(self.texts(), skip_rows=row))
        produced = False
        while True:
            parts: dict[str, list[torch.Tensor]] = {s: [] for s in self.sites}
            rows = 0
            try:
                for lm_batch in itertools.islice(stream, self.shuffle_rows // self.lm_batch_size):
                    rows += lm_batch.input_ids.shape[0]
                    for s in self.sites:
                        parts[s].append(lm_batch.activations[s].float())
            except ValueError as exc:
                if produced or row:
                    raise
                raise ValueError(f"The training texts yielded no tokens ({exc}). Check --dataset / --split / "
                                 "--text_column, and that --validation_texts did not hold out the whole dataset.") from exc
            if rows == 0:
                if not produced and row == 0 and start == 0:
                    raise ValueError(
                        "The training texts yielded no tokens: check --dataset / --split / --text_column "
                        "(and that --validation_texts did not hold out the whole dataset)."
                    )
                return
            pool = {s: torch.cat(([carry[s].to(parts[s][0].device)] if carry is not None else []) + parts[s])
                    for s in self.sites}
            n = next(iter(pool.values())).shape[0]
            order = torch.randperm(n, generator=_generator(self.seed, self.rank, chunk)).to(next(iter(pool.values())).device)
            full = n // batch_size
            leftover = {s: v[order[full * batch_size:]] for s, v in pool.items()}
            for b in range(start, full):
                index = order[b * batch_size:(b + 1) * batch_size]
                if b + 1 < full:
                    after, after_tensors = {"row": row, "chunk": chunk, "batch": b + 1}, (carry or {})
                else:
                    after, after_tensors = {"row": row + rows, "chunk": chunk + 1, "batch": 0}, leftover
                produced = True
                yield SourceBatch({s: v[index] for s, v in pool.items()}, 0, after, after_tensors)
            carry, row, chunk, start = leftover, row + rows, chunk + 1, 0

    def validation(self, max_tokens, context_rows=0):
        if self.validation_texts is None or (max_tokens == 0 and context_rows == 0):
            return None
        parts: dict[str, list[torch.Tensor]] = {s: [] for s in self.sites}
        ids, n = [], 0
        stream = self._stream(self.validation_texts())
        try:
            for lm_batch in stream:
                for s in self.sites:
                    parts[s].append(lm_batch.activations[s].float())
                ids.append(lm_batch.input_ids)
                n += next(iter(lm_batch.activations.values())).shape[0]
                if n >= max_tokens and sum(i.shape[0] for i in ids) >= context_rows:
                    break
        except ValueError as exc:
            raise ValueError(f"The validation texts yielded no tokens ({exc}). Check --validation_split / "
                             "--validation_texts and the dataset.") from exc
        finally:
            stream.close()  # removes the stream's hooks from the model
        if n == 0:
            raise ValueError(
                "The validation texts yielded no tokens: check --validation_split / --validation_texts, "
                "or that the dataset is not empty."
            )
        input_ids = torch.cat(ids)[:context_rows].cpu() if context_rows else None
        return ValidationData({s: torch.cat(p)[:max_tokens] for s, p in parts.items()}, input_ids)

    def provenance(self):
        return dict(self._provenance)
