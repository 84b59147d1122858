"""The online Poisson bootstrap of the entropy estimate: Poisson(1) weights that are a pure function of
(seed, group id, replicate), so that the replicates do not depend on how a stream was batched and every
sample of one group (the tokens of one text) gets the same weights (a cluster bootstrap)."""

from __future__ import annotations

import math

import numpy as np
import torch

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)
# CDF of Poisson(1) at 0..19 (the tail beyond 19 has probability < 1e-18).
_POISSON1_CDF = np.cumsum([math.exp(-1) / math.factorial(k) for k in range(20)])


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser on uint64 arrays (wrapping arithmetic): a good 64-bit hash."""
    with np.errstate(over="ignore"):
        x = (x + np.uint64(0x9E3779B97F4A7C15)) & _M64
        x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _M64
        x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _M64
        return x ^ (x >> np.uint64(31))


def poisson_bootstrap_weights(group_ids: torch.Tensor, num_replicates: int, seed: int = 0) -> torch.Tensor:
    """Poisson(1) weights `[len(group_ids), num_replicates]`, a pure function of (seed, group id, replicate).

    The online (Poisson) bootstrap: instead of resampling N items with replacement, each item enters
    replicate b with a Poisson(1) count, which is the same in the limit and needs no second pass.
    Hashing the ids (instead of drawing from a generator) makes the weights independent of the order
    and batching of the stream, and gives every sample of one group the same weights (a cluster
    bootstrap).
    """
    ids = group_ids.detach().cpu().numpy().astype(np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        base = _splitmix64(ids ^ _splitmix64(np.array([seed], dtype=np.uint64)))
        keys = base[:, None] + np.arange(num_replicates, dtype=np.uint64)[None, :] * np.uint64(0xD1B54A32D192ED03)
    u = (_splitmix64(keys) >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return torch.from_numpy(np.searchsorted(_POISSON1_CDF, u, side="right").astype(np.float32))

