"""From a trained BAE and hidden states to an `EntropyReport`: the BAE's codes (`encode_codes`), the
check that a BAE can read a language model's site (`check_bae_fits`), and `feature_set_entropy` over a
tensor or a stream of activations."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from .estimator import (DEFAULT_CORRELATION_CODES, DEFAULT_MIN_SAMPLES, DEFAULT_NUM_BOOTSTRAP, EntropyAccumulator,
                        EntropyReport, check_confidence)


def check_is_bae(model: Any) -> None:
    """Raise a ValueError unless `model` is a BAE (only its codes are binary)."""
    if getattr(model, "kind", None) != "BAE":
        raise ValueError(f"Feature-set entropy needs a BinaryAutoencoder (binary codes), got {type(model).__name__}.")


def bae_site(model: Any) -> str | None:
    """`layers.L.site` the BAE reads (its `hookpoint`), or None when its layer is unrecorded."""
    return model.hookpoint


def check_bae_fits(bae: Any, language_model: Any, site: str) -> None:
    """Raise a ValueError that says what to do when the BAE cannot read `site` of this model."""
    check_is_bae(bae)
    config = getattr(language_model, "config", None)
    width = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    if width is not None and width != bae.config.hidden_size:
        raise ValueError(
            f"The BAE for {site} reads hidden states of width {bae.config.hidden_size} "
            f"({bae.config.describe_source()}), but this language model's are {width} wide: was it trained on "
            "another model? Pass the model it was trained on (--base_model) or retrain it (--train).")


@torch.no_grad()
def encode_codes(model: Any, hidden_states: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """The BAE's {0,1} codes of `[n, d]` hidden states as float32 `[n, M]` on the CPU, batch by batch."""
    check_is_bae(model)
    device = next(model.parameters()).device
    out = [model.encode(hidden_states[i:i + batch_size].to(device)).float().cpu()
           for i in range(0, hidden_states.shape[0], batch_size)]
    return torch.cat(out) if out else torch.zeros(0, model.config.num_codes)


def _batches(activations: Any, site: str | None) -> Iterable[tuple[torch.Tensor, torch.Tensor | None]]:
    from ..activations import ActivationBatch

    if torch.is_tensor(activations):
        yield activations, None
        return
    for item in activations:
        if isinstance(item, ActivationBatch):
            if site is None:
                if len(item.activations) != 1:
                    raise ValueError(f"The batches hold several sites ({', '.join(item.activations)}): pass site=.")
                x = next(iter(item.activations.values()))
            elif site in item.activations:
                x = item.activations[site]
            else:
                raise ValueError(f"The BAE reads {site}, but the activations hold {', '.join(item.activations)}.")
            yield x, (item.first_row + item.row_index).cpu()
        elif isinstance(item, (tuple, list)):
            yield item[0], (item[1] if len(item) > 1 else None)
        else:
            yield item, None


@torch.no_grad()
def feature_set_entropy(model: Any, activations: Any, *, site: str | None = None, confidence: float = 0.95,
                        num_bootstrap: int = DEFAULT_NUM_BOOTSTRAP, seed: int = 0,
                        min_samples: int = DEFAULT_MIN_SAMPLES, correlation_codes: int = DEFAULT_CORRELATION_CODES,
                        batch_size: int = 4096) -> EntropyReport:
    """Entropy (bits) of a set of hidden states, from a trained BAE's codes.

    Args:
        model: a `BinaryAutoencoder`.
        activations: `[n, d]` hidden states, or an iterable of them, of `(hidden_states, group_ids)`
            pairs, or of `ActivationBatch`es (`stream_activations`; tokens of one packed row form a
            bootstrap group). Streamed input is never held in memory: only counts are kept.
        site: with `ActivationBatch`es of several sites, which to read (default: the BAE's own).
        confidence, num_bootstrap, seed: the bootstrap interval.
        min_samples: warn (`EntropyWarning`) below this many hidden states.

    Example:
        >>> report = feature_set_entropy(bae, hidden_states)
        >>> report.miller_madow_bits, (report.ci_low, report.ci_high)
    """
    check_is_bae(model)
    check_confidence(confidence)  # before the pass over the activations, not after it
    c = model.config
    acc = EntropyAccumulator(c.num_codes, bits_per_feature=c.bits, num_bootstrap=num_bootstrap, seed=seed,
                             correlation_codes=correlation_codes)
    was_training = model.training
    model.eval()
    try:
        for x, groups in _batches(activations, site):
            for start in range(0, x.shape[0], batch_size):
                g = groups[start:start + batch_size] if groups is not None else None
                acc.update(encode_codes(model, x[start:start + batch_size], batch_size), g)
    finally:
        model.train(was_training)
    return acc.report(confidence, min_samples)


