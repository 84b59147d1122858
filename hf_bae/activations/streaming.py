"""Streaming activations: packed token rows → a hooked forward that stops after the last needed site →
`ActivationBatch`es of float32 activations, without special tokens and, optionally, outlier tokens."""

import contextlib
import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from ..sites import HookedForward, Site, parse_sites
from .language_models import model_device, resolve_dtype
from .packing import pack_tokens

__all__ = ["ActivationBatch", "stream_activations", "token_filter_description"]


@dataclass
class ActivationBatch:
    """Activations of the kept tokens of one forward pass over a batch of packed rows.

    Attributes:
        activations: `str(site) -> [n_tokens, d]` float32, kept tokens in row-major order.
        input_ids: `[rows, context_length]`, the packed rows of this forward.
        row_index: `[n_tokens]`, row (within `input_ids`) of each kept token.
        positions: `[n_tokens]`, position of each kept token in its row.
        first_row: index of `input_ids[0]` in the whole row stream (for resuming and provenance).
    """

    activations: dict[str, torch.Tensor]
    input_ids: torch.Tensor
    row_index: torch.Tensor
    positions: torch.Tensor
    first_row: int

    @property
    def token_ids(self) -> torch.Tensor:
        """`[n_tokens]` token id of each kept token."""
        return self.input_ids[self.row_index, self.positions]

    @property
    def num_tokens(self) -> int:
        """Number of kept tokens."""
        return int(self.row_index.numel())


def _batched(iterable: Iterable[Any], n: int) -> Iterator[list[Any]]:
    iterator = iter(iterable)
    while batch := list(itertools.islice(iterator, n)):
        yield batch


def token_filter_description(exclude_special_tokens: bool, outlier_factor: float | None) -> str | None:
    """What `stream_activations` leaves out, in the words configs record (`token_filter`)."""
    parts = (["special"] if exclude_special_tokens else []) + ([f"outliers>{outlier_factor:g}xmedian"] if outlier_factor else [])
    return ",".join(parts) or None


def stream_activations(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Iterable[str],
    sites: "Sequence[Site | str] | Site | str",
    *,
    context_length: int = 128,
    batch_size: int = 8,
    exclude_special_tokens: bool = True,
    outlier_factor: float | None = None,
    skip_rows: int = 0,
    device: "str | torch.device | None" = None,
    dtype: "str | torch.dtype | None" = None,
    progress: bool = True,
) -> Iterator[ActivationBatch]:
    """Stream activations of `sites` over `texts`, `batch_size` packed rows per forward pass.

    Args:
        sites: one or several sites, read in one pass that stops after the last.
        context_length: tokens per packed row (see `pack_tokens` for BOS handling).
        batch_size: rows per forward pass.
        exclude_special_tokens: leave out BOS/EOS/pad and other special tokens (position 0 of every row).
        outlier_factor: if set, leave out tokens whose activation norm exceeds this many times the
            batch's median norm at any site (massive-activation tokens that dominate a reconstruction loss).
        skip_rows: skip this many packed rows without running the model (resume at a data position).
        device: where the forward runs (default: the device of the model's embeddings).
        dtype: if set (e.g. bfloat16 on a GPU), run the forward under autocast in this dtype.
        progress: show a tqdm bar counting tokens.

    Yields:
        `ActivationBatch`es with float32 activations on the forward's device.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if outlier_factor is not None and outlier_factor <= 1:
        raise ValueError(f"outlier_factor must be > 1 (a multiple of the median norm), got {outlier_factor}.")
    sites = parse_sites(sites)
    device = torch.device(device) if device is not None else model_device(model)
    autocast_dtype = resolve_dtype(dtype)
    special = None
    if exclude_special_tokens and tokenizer.all_special_ids:
        special = torch.tensor(sorted(set(tokenizer.all_special_ids)), device=device)
    rows = pack_tokens(texts, tokenizer, context_length)
    bar = tqdm(desc="activations", unit="tok", unit_scale=True, disable=not progress)
    next_row = 0
    # The hooks are registered around each forward, not for the generator's lifetime: while the caller
    # holds a batch, the model is free for other (full) forwards, e.g. splice metrics.
    forward = HookedForward(model, sites)
    with bar:
        for batch_rows in _batched(rows, batch_size):
            first, next_row = next_row, next_row + len(batch_rows)
            if next_row <= skip_rows:
                continue
            if first < skip_rows:
                batch_rows, first = batch_rows[skip_rows - first :], skip_rows
            input_ids = torch.stack(batch_rows).to(device)
            autocast = (
                torch.autocast(device_type=device.type, dtype=autocast_dtype)
                if isinstance(autocast_dtype, torch.dtype)
                else contextlib.nullcontext()
            )
            with autocast, forward:
                acts = forward(input_ids)
            keep = torch.ones_like(input_ids, dtype=torch.bool)
            if special is not None:
                keep &= ~torch.isin(input_ids, special)
            acts = {k: v.float() for k, v in acts.items()}
            if outlier_factor is not None and keep.any():
                for value in acts.values():
                    norms = value.norm(dim=-1)
                    keep &= norms <= outlier_factor * norms[keep].median()
            row_index, positions = keep.nonzero(as_tuple=True)
            batch = ActivationBatch({k: v[keep] for k, v in acts.items()}, input_ids, row_index, positions, first)
            bar.update(batch.num_tokens)
            yield batch
