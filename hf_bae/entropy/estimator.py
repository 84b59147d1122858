"""Feature-set entropy: how many bits a set of hidden states carries, read off a trained BAE's codes.

The paper's first application (Cho et al., arXiv 2509.20997, Sec. 4): a BAE turns hidden states
into binary codes c ∈ {0,1}^M whose features the training objective makes (nearly) independent, so
the entropy of the set is estimated by the sum of per-code Bernoulli entropies

    Ĥ = Σ_j H_b(p̂_j),   H_b(p) = −p log2 p − (1 − p) log2(1 − p),   p̂_j = (# samples with c_j = 1) / N

in bits (the original code's `entropy_eval`). This module adds what a measurement needs:

- **Streaming**: `EntropyAccumulator` keeps counts (O(M) memory, plus a bounded co-occurrence
  block and bootstrap counts), never the codes; a stream gives exactly the numbers of one big batch.
- **Bias correction**: the plug-in sum is biased low by about (#codes seen in both states)/(2N ln 2)
  bits; the Miller–Madow estimate adds that back.
- **Error bar**: a Poisson bootstrap computed on the fly: each sample (or each *group* of samples,
  e.g. the tokens of one text, which are not independent) gets B Poisson(1) weights from a counter-
  based hash of (seed, group id, replicate), so the replicates do not depend on how the stream was
  batched. The interval is the basic bootstrap interval of the Miller–Madow estimate.
- **Independence diagnostic**: Σ_j H(c_j) equals the joint entropy only for independent codes
  (in general it is an upper bound: the gap is the total correlation). The report gives the mean
  and max |correlation| between live codes and the largest pairwise mutual information, a lower
  bound (in bits) on how much the sum over-counts.
- **Compression** (the original `util/compression.py`): each code stored as the indices where it
  differs from the rounded mean code; its size in bits per sample is reported beside the entropy.

Curves built on it: `layer_entropy` (bits per layer), `position_entropy` (bits per token position,
one BAE per position as in the paper) and `plot_entropy_curve`; in-context learning lives in
`hf_bae.icl`. The command line is `hf-bae entropy` (layers / icl / positions / steer / estimate).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .losses import binary_entropy_bits
from .metrics import entropy_bits_from_counts

DEFAULT_MIN_SAMPLES = 256
DEFAULT_NUM_BOOTSTRAP = 200
DEFAULT_CORRELATION_CODES = 1024


class EntropyWarning(UserWarning):
    """An entropy estimate that is computed but should not be trusted (e.g. too few samples)."""


# ---------------------------------------------------------------------------------------------
# Counter-based Poisson(1) weights: the same weights for a group whatever the batching
# ---------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------
# The report and the streaming accumulator
# ---------------------------------------------------------------------------------------------
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


def compressed_size_bits(counts: torch.Tensor, num_samples: int) -> float:
    """Total size in bits of `compress_codes` of N codes with these per-code counts of ones.

    Every sample stores its number of deviations (ceil(log2(M + 1)) bits) and each deviating index
    (ceil(log2 M) bits); the reference code costs M bits once. A code deviates from the rounded
    mean on min(count, N − count) samples, so the size follows from the counts alone.
    """
    m = counts.numel()
    deviations = torch.minimum(counts.double(), num_samples - counts.double()).sum().item()
    index_bits = max(1, math.ceil(math.log2(m))) if m > 1 else 1
    length_bits = max(1, math.ceil(math.log2(m + 1)))
    return deviations * index_bits + num_samples * length_bits + m


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


# ---------------------------------------------------------------------------------------------
# From a BAE and activations to a report
# ---------------------------------------------------------------------------------------------
def _check_bae(model: Any) -> None:
    from .modeling_bae import BinaryAutoencoder

    if not isinstance(model, BinaryAutoencoder):
        raise ValueError(f"Feature-set entropy needs a BinaryAutoencoder (binary codes), got {type(model).__name__}.")


@torch.no_grad()
def encode_codes(model: Any, hidden_states: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """The BAE's {0,1} codes of `[n, d]` hidden states as float32 `[n, M]` on the CPU, batch by batch."""
    _check_bae(model)
    device = next(model.parameters()).device
    out = [model.encode(hidden_states[i:i + batch_size].to(device)).float().cpu()
           for i in range(0, hidden_states.shape[0], batch_size)]
    return torch.cat(out) if out else torch.zeros(0, model.config.num_codes)


def _batches(activations: Any, site: str | None) -> Iterable[tuple[torch.Tensor, torch.Tensor | None]]:
    from .activations import ActivationBatch

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


def bae_site(model: Any) -> str | None:
    """`layers.L.site` of the BAE's config, or None when its layer is unrecorded."""
    c = model.config
    return None if c.layer is None else f"layers.{c.layer}.{c.site}"


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
    _check_bae(model)
    c = model.config
    acc = EntropyAccumulator(c.num_codes, bits_per_feature=c.bits, num_bootstrap=num_bootstrap, seed=seed,
                             correlation_codes=correlation_codes)
    was_training = model.training
    model.eval()
    try:
        for x, groups in _batches(activations, site if site is not None else None):
            for start in range(0, x.shape[0], batch_size):
                g = groups[start:start + batch_size] if groups is not None else None
                acc.update(encode_codes(model, x[start:start + batch_size], batch_size), g)
    finally:
        model.train(was_training)
    return acc.report(confidence, min_samples)


# ---------------------------------------------------------------------------------------------
# Compression (the original util/compression.py, made lossless)
# ---------------------------------------------------------------------------------------------
@dataclass
class CompressedCodes:
    """Codes stored as deviations from a reference code (the rounded mean code).

    Attributes:
        reference: `[M]` bool, the most frequent value of each code.
        offsets: `[N + 1]` int64, sample i's deviating indices are `indices[offsets[i]:offsets[i+1]]`.
        indices: int64 indices of the codes that differ from `reference`, sample by sample.
    """

    reference: torch.Tensor
    offsets: torch.Tensor
    indices: torch.Tensor

    @property
    def num_samples(self) -> int:
        return self.offsets.numel() - 1

    def size_bits(self) -> float:
        """Size of this encoding in bits (see `compressed_size_bits`)."""
        m = self.reference.numel()
        index_bits = max(1, math.ceil(math.log2(m))) if m > 1 else 1
        return self.indices.numel() * index_bits + self.num_samples * max(1, math.ceil(math.log2(m + 1))) + m


def compress_codes(codes: torch.Tensor, reference: torch.Tensor | None = None) -> CompressedCodes:
    """Store `[N, M]` binary codes as the indices where each differs from the rounded mean code.

    The original (`BAE_feature_compression`) keeps |z − mean| > 0.5, which loses a 1 whenever a
    code's mean is exactly 0.5 (numpy rounds 0.5 to 0); here the reference is `mean > 0.5` and every
    difference from it is stored, so `decompress_codes` is exact. Pass `reference` to reuse one
    computed on earlier data (the original's later batches).
    """
    codes = codes.reshape(-1, codes.shape[-1]).bool().cpu()
    if reference is None:
        reference = codes.double().mean(0) > 0.5
    reference = reference.bool().cpu()
    diff = codes ^ reference
    rows, cols = diff.nonzero(as_tuple=True)
    offsets = torch.zeros(codes.shape[0] + 1, dtype=torch.int64)
    offsets[1:] = torch.bincount(rows, minlength=codes.shape[0]).cumsum(0)
    return CompressedCodes(reference, offsets, cols.to(torch.int64))


def decompress_codes(compressed: CompressedCodes) -> torch.Tensor:
    """The `[N, M]` float codes of a `compress_codes` result."""
    n, m = compressed.num_samples, compressed.reference.numel()
    codes = compressed.reference.expand(n, m).clone()
    rows = torch.repeat_interleave(torch.arange(n), compressed.offsets.diff())
    codes[rows, compressed.indices] ^= True
    return codes.float()


# ---------------------------------------------------------------------------------------------
# Curves: bits per layer, bits per token position
# ---------------------------------------------------------------------------------------------
def check_bae_fits(bae: Any, language_model: Any, site: str) -> None:
    """Raise a ValueError that says what to do when the BAE cannot read `site` of this model."""
    _check_bae(bae)
    config = getattr(language_model, "config", None)
    width = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    if width is not None and width != bae.config.hidden_size:
        raise ValueError(
            f"The BAE for {site} reads hidden states of width {bae.config.hidden_size} "
            f"({bae.config.describe_source()}), but this language model's are {width} wide: was it trained on "
            "another model? Pass the model it was trained on (--model) or retrain it (--train).")


@torch.no_grad()
def layer_entropy(language_model: Any, tokenizer: Any, texts: Iterable[str], baes: Mapping[str, Any], *,
                  num_tokens: int = 20_000, context_length: int = 128, batch_size: int = 8,
                  exclude_special_tokens: bool = True, num_bootstrap: int = DEFAULT_NUM_BOOTSTRAP, seed: int = 0,
                  confidence: float = 0.95, min_samples: int = DEFAULT_MIN_SAMPLES,
                  progress: bool = True) -> dict[str, EntropyReport]:
    """Entropy of the same tokens at several sites, each read by its own BAE, in one pass over the text.

    Args:
        baes: site (`layers.L.resid_post`) → BAE trained on that site.
        num_tokens: tokens evaluated (the stream stops once reached); the tokens of one packed row form
            a bootstrap group.

    Returns:
        site → `EntropyReport`, in the order of `baes`.
    """
    from .activations import stream_activations

    if not baes:
        raise ValueError("No BAEs given: pass one per site, e.g. {'layers.3.resid_post': bae}.")
    for site, bae in baes.items():
        check_bae_fits(bae, language_model, site)
    accs = {site: EntropyAccumulator(b.config.num_codes, bits_per_feature=b.config.bits, num_bootstrap=num_bootstrap,
                                     seed=seed) for site, b in baes.items()}
    seen = 0
    stream = stream_activations(language_model, tokenizer, texts, list(baes), context_length=context_length,
                                batch_size=batch_size, exclude_special_tokens=exclude_special_tokens, progress=progress)
    try:
        for batch in stream:
            take = min(batch.num_tokens, num_tokens - seen)
            groups = (batch.first_row + batch.row_index[:take]).cpu()
            for site, bae in baes.items():
                accs[site].update(encode_codes(bae, batch.activations[site][:take]), groups)
            seen += take
            if seen >= num_tokens:
                break
    finally:
        stream.close()
    return {site: acc.report(confidence, min_samples) for site, acc in accs.items()}


def document_prefixes(texts: Iterable[str], tokenizer: Any, length: int, max_rows: int) -> torch.Tensor:
    """`[rows, length]` token ids: the first `length` tokens of each text that has that many (BOS first
    when the tokenizer has one), unpacked, so that position t is the t-th token of a document."""
    bos = tokenizer.bos_token_id
    body = length - (1 if bos is not None else 0)
    rows = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) >= body:
            rows.append(([bos] if bos is not None else []) + ids[:body])
            if len(rows) >= max_rows:
                break
    if not rows:
        raise ValueError(f"No text has {body} tokens: use shorter --max_position or longer texts.")
    return torch.tensor(rows, dtype=torch.long)


@torch.no_grad()
def position_activations(language_model: Any, input_ids: torch.Tensor, site: str, positions: Sequence[int],
                         batch_size: int = 8, progress: bool = True) -> dict[int, torch.Tensor]:
    """position → `[rows, d]` activations at `site` of each row's token at that position (CPU, float32)."""
    from .activations import model_device
    from .sites import HookedForward, Site

    device = model_device(language_model)
    index = torch.tensor(list(positions))
    parts = []
    with HookedForward(language_model, [site]) as forward:
        for start in tqdm(range(0, input_ids.shape[0], batch_size), desc="positions", disable=not progress):
            acts = forward(input_ids[start:start + batch_size].to(device))[str(Site.parse(site))]
            parts.append(acts[:, index.to(acts.device)].float().cpu())
    stacked = torch.cat(parts)  # [rows, P, d]
    return {int(p): stacked[:, i] for i, p in enumerate(positions)}




def position_entropy(baes: Mapping[int, Any], activations: Mapping[int, torch.Tensor], *,
                     num_bootstrap: int = DEFAULT_NUM_BOOTSTRAP, seed: int = 0, confidence: float = 0.95,
                     min_samples: int = DEFAULT_MIN_SAMPLES) -> dict[int, EntropyReport]:
    """position → entropy of the activations at that position, read by that position's BAE (the paper
    trains one BAE per position); rows are the bootstrap groups."""
    out = {}
    for position, x in activations.items():
        bae = baes[position]
        acc = EntropyAccumulator(bae.config.num_codes, bits_per_feature=bae.config.bits, num_bootstrap=num_bootstrap,
                                 seed=seed)
        acc.update(encode_codes(bae, x), torch.arange(x.shape[0]))
        out[position] = acc.report(confidence, min_samples)
    return out


# ---------------------------------------------------------------------------------------------
# Output: CSV and plots
# ---------------------------------------------------------------------------------------------
def write_csv(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write dict rows (same keys) as CSV."""
    import csv

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def plot_entropy_curve(x: Sequence[float], reports: Sequence[EntropyReport], path: str | Path, *, xlabel: str,
                       title: str, accuracy: Sequence[float] | None = None, xticklabels: Sequence[str] | None = None
                       ) -> Path:
    """Bits against `x`: the Miller–Madow estimate with its bootstrap band and the plug-in sum; with
    `accuracy`, the LM's accuracy on a second axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    fig.subplots_adjust(left=0.13, right=0.86 if accuracy is not None else 0.97, bottom=0.14, top=0.86)
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    mm = [r.miller_madow_bits for r in reports]
    level = f"{reports[0].confidence:.0%}" if reports else ""
    ax.fill_between(x, [r.ci_low for r in reports], [r.ci_high for r in reports], color="tab:blue", alpha=0.2,
                    label=f"{level} bootstrap interval")
    ax.plot(x, mm, "o-", color="tab:blue", markersize=4, label="entropy (Miller–Madow)")
    ax.plot(x, [r.total_bits for r in reports], "--", color="tab:blue", linewidth=1, alpha=0.7,
            label="plug-in Σ H(p_j)")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("feature-set entropy (bits)")
    if xticklabels is not None:
        ax.set_xticks(list(x))
        ax.set_xticklabels(xticklabels, fontsize=8)
    elif all(float(v).is_integer() for v in x):  # layers, positions, shots: no "1.25 demonstrations" ticks
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    handles, labels = ax.get_legend_handles_labels()
    if accuracy is not None:
        ax2 = ax.twinx()
        ax2.plot(x, accuracy, "s-", color="tab:orange", markersize=4, label="LM accuracy")
        ax2.set_ylabel("accuracy (fraction correct)")
        ax2.set_ylim(-0.02, 1.02)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, fontsize=8, loc="best")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
