"""Activation normalisation and data-dependent initialisation of dictionaries.

Hidden states of different models and layers differ in scale by orders of magnitude (SmolLM2's
layer-6 residual stream has E‖h‖² in the tens, Llama's late layers in the thousands), so loss
weights such as the BAE's entropy and covariance weights mean nothing from one site to the next.
As SAELens' `normalize_activations="expected_average_only_in"`, a dictionary is trained on

    x = s · (h − μ)        with s chosen so that E‖x‖² = d      (μ = 0 unless centring is asked for),

estimated on the first training batches. Its in-memory model reads raw hidden states throughout:
the normalisation is applied inside `pre_activations` / `decode`, and the reconstruction loss is
the MSE of the *normalised* vectors (s² times the raw MSE), so the loss weights are in the same
units on every model and layer. At the end of training `fold_normalization` rewrites the weights
so that the saved model is a plain dictionary on raw hidden states with the very same outputs:

    encoder:  W ← s·W,   b ← b − s·W μ            decoder:  W ← W / s_t,   b ← b / s_t + μ_t

(s_t, μ_t: the target's statistics, which differ from the input's only for a transcoder); the
config then records `activation_scale` and `target_scale`, from which the loss keeps its units.

This module also holds `encoder_bias_for_rate`, the BAE's initialisation to a target firing rate.
"""

from __future__ import annotations

import math

import torch


def normalization_statistics(activations: torch.Tensor, center: bool) -> tuple[torch.Tensor, float]:
    """(μ, s) with E‖s·(h − μ)‖² = d over `[n, d]` activations; μ = 0 unless `center`."""
    if activations.dim() != 2 or activations.shape[0] < 2:
        raise ValueError(f"Normalisation statistics need [n >= 2, d] activations, got shape {tuple(activations.shape)}.")
    x = activations.double()
    mean = x.mean(0) if center else torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    mean_square_norm = float((x - mean).pow(2).sum(-1).mean())
    if not math.isfinite(mean_square_norm) or mean_square_norm <= 0:
        raise ValueError(f"Cannot normalise activations whose mean squared norm is {mean_square_norm}: are they all "
                         "equal, or not finite?")
    return mean.float(), math.sqrt(x.shape[1] / mean_square_norm)


def encoder_bias_for_rate(pre_activations: torch.Tensor, rate: float) -> torch.Tensor:
    """The bias b that makes each column of `pre_activations + b` positive on a fraction `rate` of its rows.

    `pre_activations` is `[n, m]` without bias; b_j = −(the (1 − rate) quantile of column j), taken as an
    order statistic (no interpolation), so that about rate·n of the n rows exceed it.
    """
    if not 0 < rate < 1:
        raise ValueError(f"The firing rate must be in (0, 1), got {rate}.")
    n = pre_activations.shape[0]
    k = min(n, max(1, math.ceil((1 - rate) * n)))
    return -pre_activations.float().kthvalue(k, dim=0).values


@torch.no_grad()
def fold_affine_into_encoder(encoder: torch.nn.Linear, mean: torch.Tensor, scale: float) -> None:
    """Make `encoder(h)` compute what it computed on `scale · (h − mean)`, in place."""
    if mean.abs().max() > 0 and encoder.bias is None:
        raise ValueError("Centred normalisation needs an encoder bias to fold the mean into (encoder_bias=True).")
    weight = encoder.weight.double() * scale
    if encoder.bias is not None:
        encoder.bias.copy_((encoder.bias.double() - weight @ mean.double().to(weight.device)).to(encoder.bias.dtype))
    encoder.weight.copy_(weight.to(encoder.weight.dtype))


@torch.no_grad()
def fold_affine_into_decoder(decoder: torch.nn.Linear, mean: torch.Tensor, scale: float) -> None:
    """Make `decoder(z)` return `decoder(z) / scale + mean` (raw units), in place."""
    if mean.abs().max() > 0 and decoder.bias is None:
        raise ValueError("Centred normalisation needs a decoder bias to fold the mean into (decoder_bias=True).")
    decoder.weight.copy_((decoder.weight.double() / scale).to(decoder.weight.dtype))
    if decoder.bias is not None:
        bias = decoder.bias.double() / scale + mean.double().to(decoder.bias.device)
        decoder.bias.copy_(bias.to(decoder.bias.dtype))
