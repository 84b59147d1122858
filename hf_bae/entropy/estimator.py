"""The feature-set entropy estimator: `EntropyAccumulator` keeps streaming counts of binary codes and
turns them into an `EntropyReport` (all in bits).

A BAE's codes c ∈ {0,1}^M are made (nearly) independent by its training objective, so the entropy of
a set of hidden states is estimated by the sum of per-code Bernoulli entropies

    Ĥ = Σ_j H_b(p̂_j),   H_b(p) = −p log2 p − (1 − p) log2(1 − p),   p̂_j = (# samples with c_j = 1) / N

(the original code's `entropy_eval`), with what a measurement needs:

- **Streaming**: O(M) counts, a bounded co-occurrence block and bootstrap counts, never the codes;
  a stream gives exactly the numbers of one big batch.
- **Bias correction**: the plug-in sum is biased low by about (#codes seen in both states)/(2N ln 2)
  bits; the Miller–Madow estimate adds that back.
- **Error bar**: the basic bootstrap interval of the Miller–Madow estimate, from the online Poisson
  bootstrap of `hf_bae.entropy.bootstrap` (groups of samples, e.g. the tokens of one text, resampled
  together).
- **Independence diagnostic**: Σ_j H(c_j) equals the joint entropy only for independent codes (in
  general it is an upper bound: the gap is the total correlation). The report gives the mean and max
  |correlation| between live codes and the largest pairwise mutual information, a lower bound (in
  bits) on how much the sum over-counts.
- **Compression**: the size of `hf_bae.entropy.codes.compress_codes` per sample, beside the entropy.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from ..losses import binary_entropy_bits
from ..metrics import entropy_bits_from_counts
from .bootstrap import poisson_bootstrap_weights
from .codes import compressed_size_bits

DEFAULT_MIN_SAMPLES = 256
DEFAULT_NUM_BOOTSTRAP = 200
DEFAULT_CORRELATION_CODES = 1024


class EntropyWarning(UserWarning):
    """An entropy estimate that is computed but should not be trusted (e.g. too few samples)."""


@dataclass
class EntropyReport:
    """The entropy of a set of codes, with its error bar and an independence diagnostic (all in bits).

    Attributes:
        total_bits: plug-in estimate Σ_j H_b(p̂_j) over all codes (the original `entropy_eval`).
        miller_madow_bits: bias-corrected estimate, total_bits + live_codes / (2 N ln 2).
        ci_low, ci_high: basic bootstrap interval of the Miller–Madow estimate at `confidence`.
        bootstrap_std: standard deviation of the bootstrap replicates.
        per_code_bits: `[num_codes]` H_b(p̂_j).
        per_feature_bits: `[num_features]` the bits of each feature (the sum over its `bits` codes).
        frequencies: `[num_codes]` p̂_j.
        num_samples: N, the number of hidden states.
        num_groups: independent groups the bootstrap resampled (texts / prompts), if known.
        live_codes: codes seen in both states (0 < count < N).
        mean_abs_correlation / max_abs_correlation: |Pearson correlation| over pairs of live codes
            (among the `correlation_codes` tracked). 0 for independent codes.
        max_pairwise_mutual_information_bits: the largest I(c_i; c_j) over those pairs: a lower bound
            on Σ H(c_j) − H(c), the amount by which the sum of marginals over-counts the joint entropy.
        compressed_bits_per_sample: size of the original code's compression of the codes (indices that
            differ from the rounded mean code) per sample: a practical upper bound on the joint entropy.
    """

    total_bits: float
    miller_madow_bits: float
    ci_low: float
    ci_high: float
    confidence: float
    bootstrap_std: float
    num_bootstrap: int
    num_samples: int
    num_groups: int | None
    num_codes: int
    bits_per_feature: int
    live_codes: int
    mean_abs_correlation: float
    max_abs_correlation: float
    max_pairwise_mutual_information_bits: float
    correlation_codes: int
    compressed_bits_per_sample: float
    per_code_bits: torch.Tensor = field(repr=False)
    per_feature_bits: torch.Tensor = field(repr=False)
    frequencies: torch.Tensor = field(repr=False)

    def to_dict(self, tensors: bool = False) -> dict[str, Any]:
        """Plain values for JSON/CSV; the per-code tensors as lists only with `tensors=True`."""
        out = asdict(self)
        for key in ("per_code_bits", "per_feature_bits", "frequencies"):
            value = out.pop(key)
            if tensors:
                out[key] = value.tolist()
        return out

    def summary(self) -> str:
        """One line: estimate, interval, N, and the independence diagnostic."""
        return (f"{self.miller_madow_bits:.2f} bits [{self.confidence:.0%} CI {self.ci_low:.2f}-{self.ci_high:.2f}] "
                f"(plug-in {self.total_bits:.2f}; N={self.num_samples:,}; {self.live_codes} live codes of "
                f"{self.num_codes}; mean |corr| {self.mean_abs_correlation:.3f}; compressed "
                f"{self.compressed_bits_per_sample:.1f} bits/sample)")


def check_confidence(confidence: float) -> None:
    """A confidence level is strictly between 0 and 1: checked before the work that the interval ends."""
    if not (isinstance(confidence, (int, float)) and 0 < confidence < 1):
        raise ValueError(f"confidence must be between 0 and 1 (e.g. 0.95), got {confidence!r}.")


class EntropyAccumulator:
    """Streaming counts of binary codes, enough for `EntropyReport` (see the module docstring).

    Args:
        num_codes: M, codes per sample (m·bits for a BAE).
        bits_per_feature: codes per feature (the BAE's `bits`), for `per_feature_bits`.
        num_bootstrap: B bootstrap replicates (0: no interval).
        seed: seed of the bootstrap weights.
        correlation_codes: codes whose pairwise co-occurrences are counted for the independence
            diagnostic (all when M is at most this; else a seeded random subset: memory is its square).
    """

    def __init__(self, num_codes: int, *, bits_per_feature: int = 1, num_bootstrap: int = DEFAULT_NUM_BOOTSTRAP,
                 seed: int = 0, correlation_codes: int = DEFAULT_CORRELATION_CODES):
        if num_codes < 1:
            raise ValueError(f"num_codes must be >= 1, got {num_codes}.")
        if num_codes % bits_per_feature:
            raise ValueError(f"num_codes ({num_codes}) is not a multiple of bits_per_feature ({bits_per_feature}).")
        self.num_codes, self.bits_per_feature = num_codes, bits_per_feature
        self.num_bootstrap, self.seed = num_bootstrap, seed
        self.num_samples = 0
        self.counts = torch.zeros(num_codes, dtype=torch.int64)
        if num_codes <= correlation_codes:
            self.tracked = torch.arange(num_codes)
        else:
            g = torch.Generator().manual_seed(seed)
            self.tracked = torch.randperm(num_codes, generator=g)[:correlation_codes].sort().values
        self.cooccurrence = torch.zeros(len(self.tracked), len(self.tracked), dtype=torch.float64)
        self.boot_counts = torch.zeros(num_bootstrap, num_codes, dtype=torch.float64)
        self.boot_samples = torch.zeros(num_bootstrap, dtype=torch.float64)
        self._groups: set[int] = set()
        self._grouped = True

    @torch.no_grad()
    def update(self, codes: torch.Tensor, groups: torch.Tensor | None = None) -> None:
        """Add `[n, M]` codes in {0, 1}; `groups` `[n]` are ids of independent units (texts), global
        across the stream (default: each sample its own group, numbered in stream order)."""
        codes = codes.reshape(-1, self.num_codes)
        n = codes.shape[0]
        if n == 0:
            return
        codes = codes.detach().to("cpu", torch.float32)
        if groups is None:
            self._grouped = False
            groups = torch.arange(self.num_samples, self.num_samples + n)
        else:
            groups = groups.reshape(-1).cpu()
            if groups.numel() != n:
                raise ValueError(f"groups has {groups.numel()} ids for {n} samples.")
            self._groups.update(groups.unique().tolist())
        # Integer-valued float32 products are exact while partial sums stay below 2^24.
        self.counts += codes.sum(0).to(torch.int64)
        tracked = codes[:, self.tracked]
        self.cooccurrence += (tracked.T @ tracked).double()
        if self.num_bootstrap:
            unique, inverse = groups.unique(return_inverse=True)
            weights = poisson_bootstrap_weights(unique, self.num_bootstrap, self.seed)[inverse]  # [n, B]
            self.boot_counts += (weights.T @ codes).double()
            self.boot_samples += weights.sum(0).double()
        self.num_samples += n

    def merge(self, other: EntropyAccumulator) -> None:
        """Add another accumulator's counts (same sizes, seed and tracked codes; disjoint groups)."""
        if other.num_codes != self.num_codes or not torch.equal(other.tracked, self.tracked):
            raise ValueError("Cannot merge entropy accumulators of different codes.")
        self.num_samples += other.num_samples
        self.counts += other.counts
        self.cooccurrence += other.cooccurrence
        self.boot_counts += other.boot_counts
        self.boot_samples += other.boot_samples
        self._groups |= other._groups
        self._grouped &= other._grouped

    def report(self, confidence: float = 0.95, min_samples: int = DEFAULT_MIN_SAMPLES) -> EntropyReport:
        """The estimates. Warns (`EntropyWarning`) when fewer than `min_samples` samples were seen."""
        check_confidence(confidence)
        n = self.num_samples
        if n == 0:
            raise ValueError("No samples: the entropy of an empty set of codes is undefined. Give more text or prompts.")
        if n < min_samples:
            warnings.warn(
                f"Only {n} samples for {self.num_codes} codes: rates below 1/{n} are invisible, the plug-in estimate "
                f"is biased low and the bootstrap interval is unreliable. Use at least {min_samples} samples.",
                EntropyWarning, stacklevel=2)
        per_code = entropy_bits_from_counts(self.counts, n)
        plug_in = float(per_code.sum())
        live = int(((self.counts > 0) & (self.counts < n)).sum())
        mm = plug_in + live / (2 * n * math.log(2))
        low = high = mm
        std = 0.0
        if self.num_bootstrap:
            reps = _miller_madow(self.boot_counts, self.boot_samples)
            alpha = (1 - confidence) / 2
            q_low, q_high = np.quantile(reps.numpy(), [alpha, 1 - alpha])
            low, high = 2 * mm - q_high, 2 * mm - q_low  # basic interval: the replicates' bias is reflected
            std = float(reps.std())
        mean_corr, max_corr, max_mi = self._independence()
        per_feature = per_code.view(-1, self.bits_per_feature).sum(-1)
        return EntropyReport(
            total_bits=plug_in, miller_madow_bits=mm, ci_low=float(low), ci_high=float(high), confidence=confidence,
            bootstrap_std=std, num_bootstrap=self.num_bootstrap, num_samples=n,
            num_groups=len(self._groups) if self._grouped and self._groups else None, num_codes=self.num_codes,
            bits_per_feature=self.bits_per_feature, live_codes=live, mean_abs_correlation=mean_corr,
            max_abs_correlation=max_corr, max_pairwise_mutual_information_bits=max_mi,
            correlation_codes=len(self.tracked),
            compressed_bits_per_sample=compressed_size_bits(self.counts, n) / n,
            per_code_bits=per_code.float(), per_feature_bits=per_feature.float(),
            frequencies=(self.counts.double() / n).float())

    def _independence(self) -> tuple[float, float, float]:
        n = self.num_samples
        c = self.counts[self.tracked].double()
        live = (c > 0) & (c < n)
        if int(live.sum()) < 2:
            return 0.0, 0.0, 0.0
        p = c[live] / n
        p11 = self.cooccurrence[live][:, live] / n
        cov = p11 - p[:, None] * p[None, :]
        sd = torch.sqrt(p * (1 - p))
        corr = (cov / (sd[:, None] * sd[None, :])).clamp(-1, 1)
        upper = torch.triu(torch.ones_like(corr, dtype=torch.bool), diagonal=1)
        abs_corr = corr.abs()[upper]
        # Pairwise mutual information from the 2x2 tables (p11, p10, p01, p00).
        pi, pj = p[:, None], p[None, :]
        cells = [(p11, pi * pj), (pi - p11, pi * (1 - pj)), (pj - p11, (1 - pi) * pj), (1 - pi - pj + p11, (1 - pi) * (1 - pj))]
        mi = sum(torch.where(joint > 0, joint * torch.log2(joint.clamp_min(1e-300) / ind), 0.0) for joint, ind in cells)
        return float(abs_corr.mean()), float(abs_corr.max()), float(mi[upper].clamp_min(0).max())


def _miller_madow(counts: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
    """Miller–Madow entropy (bits) of each row of weighted counts `[B, M]` with totals `[B]`."""
    samples = samples.clamp_min(1e-12)[:, None]
    h = binary_entropy_bits((counts / samples).clamp(0, 1), eps=0.0).nan_to_num(0.0)  # 0·log 0 = 0
    live = ((counts > 0) & (counts < samples)).sum(-1)
    return h.sum(-1) + live / (2 * samples[:, 0] * math.log(2))

