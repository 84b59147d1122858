"""Compression of binary codes (the original `util/compression.py`, made lossless): each code stored as
the indices where it differs from the rounded mean code, and the size of that encoding in bits, which
`EntropyReport.compressed_bits_per_sample` reports beside the entropy."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


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

