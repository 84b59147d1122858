"""Data-dependent initialisation of fresh dictionaries at the start of a run: the normalisation statistics
(`normalize_activations`, see `hf_bae.normalization`) and the BAE's encoder bias set to an initial firing
rate, both estimated on the first training batches, which are then handed back to the loop unchanged."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from accelerate.utils import broadcast

from ..modeling_base import DictionaryPreTrainedModel
from ..normalization import encoder_bias_for_rate, normalization_statistics
from ..sources import SourceBatch


class PrependedBatches:
    """`head` then `rest`; `close()` closes `rest` (a live stream removes its hooks), even if never started."""

    def __init__(self, head: list[SourceBatch], rest: Iterator[SourceBatch]):
        self.head, self.rest = list(head), rest

    def __iter__(self):
        return self

    def __next__(self) -> SourceBatch:
        return self.head.pop(0) if self.head else next(self.rest)

    def close(self) -> None:
        self.head = []
        self.rest.close()


def _wanted(model: DictionaryPreTrainedModel) -> tuple[bool, float | None]:
    """(estimate the normalisation, initial firing rate) of a model, from its config."""
    c = model.config
    normalize = c.normalize_activations != "none" and c.activation_scale is None
    rate = getattr(c, "initial_firing_rate", None) if c.encoder_bias else None
    return normalize, rate


def initialize_from_data(dictionaries: Sequence[tuple[DictionaryPreTrainedModel, str, str | None]],
                         batches: Iterator[SourceBatch], accelerator: Any, args: Any) -> Iterator[SourceBatch]:
    """Normalisation statistics and the BAE's initial firing rate, from the first training batches.

    Args:
        dictionaries: (model, input key, target key or None) of each dictionary (unwrapped models).
        batches: the training stream.
        accelerator: the run's `Accelerator`.
        args: the run's `TrainingArguments` (`initialization_tokens`, `max_steps`, `batch_size`).

    Each process estimates on its own batches, then every process takes rank 0's values, so that the
    replicas stay identical. Returns the stream with those batches put back in front: training still
    sees every batch once, in the same order, and a live source runs the LM only once.
    """
    acc = accelerator
    todo = [(model, key, target, *_wanted(model)) for model, key, target in dictionaries]
    todo = [t for t in todo if t[3] or t[4]]
    if not todo:
        return batches
    # A short run never reads ahead more batches than it will train on.
    wanted = (min(args.initialization_tokens, args.max_steps * args.batch_size) if args.max_steps
              else args.initialization_tokens)
    head: list[SourceBatch] = []
    for batch in batches:
        head.append(batch)
        if len(head) * args.batch_size >= wanted:
            break
    if not head:
        batches.close()
        raise ValueError("Training ended before its first step: the source yielded no full batch of "
                         f"{args.batch_size} tokens per process. Provide more data or lower --batch_size.")
    sample = {k: torch.cat([b.activations[k] for b in head]).to(acc.device) for k in head[0].activations}
    for model, key, target_key, normalize, rate in todo:
        x = sample[key]
        if normalize:
            center = model.config.normalize_activations == "center_scale"
            mean, scale = normalization_statistics(x, center)
            target_mean, target_scale = (normalization_statistics(sample[target_key], center)
                                         if target_key is not None else (mean, scale))
            if acc.num_processes > 1:
                mean, target_mean = broadcast(mean.contiguous()), broadcast(target_mean.contiguous())
                scale, target_scale = broadcast(torch.tensor([scale, target_scale], device=acc.device,
                                                             dtype=torch.float64)).tolist()
            model.set_normalization(mean, scale, target_mean, target_scale)
        if rate:
            with torch.no_grad():
                pre = model._normalize_input(x.to(model.encoder.weight.dtype)) @ model.encoder.weight.T
                bias = encoder_bias_for_rate(pre, rate).to(model.encoder.bias.dtype)
                if acc.num_processes > 1:
                    bias = broadcast(bias.contiguous())
                model.encoder.bias.copy_(bias)
        model.apply_constraints()  # e.g. unit-norm encoder rows: the codes are unchanged
    return PrependedBatches(head, batches)
