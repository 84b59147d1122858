"""Bootstrap intervals over features: how much a ComSem mean, or the difference of two dictionaries'
means, could move with another draw of features. Percentile bootstrap, seeded so that a summary is
reproducible; None where fewer than two features leave nothing to resample."""

from __future__ import annotations

import random
from typing import Sequence


def _percentile_interval(statistics: list[float]) -> list[float]:
    """[2.5 %, 97.5 %] percentiles of resampled `statistics` (sorted here)."""
    statistics = sorted(statistics)
    resamples = len(statistics)
    return [statistics[int(0.025 * resamples)], statistics[min(resamples - 1, int(0.975 * resamples))]]


def _resampled_mean(rng: random.Random, values: Sequence[float]) -> float:
    return sum(rng.choices(values, k=len(values))) / len(values)


def mean_interval(values: Sequence[float], resamples: int = 2000, seed: int = 0) -> list[float] | None:
    """95 % percentile-bootstrap interval of the mean of per-feature `values` (features resampled with
    replacement), or None for fewer than two features."""
    if len(values) < 2:
        return None
    rng = random.Random(seed)
    return _percentile_interval([_resampled_mean(rng, values) for _ in range(resamples)])


def difference_interval(values: Sequence[float], baseline: Sequence[float], resamples: int = 2000,
                        seed: int = 0) -> list[float] | None:
    """[mean(values) − mean(baseline), low, high]: the difference of two dictionaries' per-feature means with
    its 95 % percentile-bootstrap interval (each side's features resampled independently: the features of two
    dictionaries are not paired), or None when either side has fewer than two features. An interval above 0
    says the first dictionary is ahead by more than feature sampling explains."""
    if len(values) < 2 or len(baseline) < 2:
        return None
    rng = random.Random(seed)
    low, high = _percentile_interval([_resampled_mean(rng, values) - _resampled_mean(rng, baseline)
                                      for _ in range(resamples)])
    return [sum(values) / len(values) - sum(baseline) / len(baseline), low, high]
