"""Loss terms of the dictionaries, as pure functions of tensors.

Scales follow the original code, because its published weights (λ = 1e-7) only make sense with them:

- reconstruction: mean of squared errors over tokens *and* dimensions, (1 / (n·d)) Σ ‖h − ĥ‖²;
- entropy: H = Σ_j H_b(p_j) in bits, a sum over codes (not a mean), p_j the code's firing rate in
  the minibatch;
- covariance: Σ_{i≠j} |Cov(h_i, h_j)| with the unbiased covariance (divisor n − 1), a sum over all
  ordered pairs;
- L1: Σ |a| over tokens and latents (or a per-token mean with `reduction="mean"`).

All terms are computed in float32 (or float64 when given float64).
"""

import torch

ENTROPY_EPS = 1e-10  # inside the logs, as in the original code: keeps the gradient finite at p = 0 or 1


def _float(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def reconstruction_loss(target: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """Mean squared error over every element, (1 / (n·d)) Σ ‖h − ĥ‖² (the original's `self_regression_loss`)."""
    return torch.mean((_float(target) - _float(reconstruction)) ** 2)


def binary_entropy_bits(p: torch.Tensor, eps: float = ENTROPY_EPS) -> torch.Tensor:
    """Element-wise entropy in bits of Bernoulli(p): −p log2(p + eps) − (1 − p) log2(1 − p + eps)."""
    return -(p * torch.log2(p + eps) + (1 - p) * torch.log2(1 - p + eps))


def minibatch_entropy(codes: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    """Sum over codes of the binary entropy of each code's firing rate in the minibatch, in bits.

    Args:
        codes: `[n, m]` codes in {0, 1}; gradients flow into them (and through the estimator).
        threshold: while the entropy is below this many bits the term is 0 (the original's
            `entropy_threshold`; 0 keeps it always on).
    """
    p = _float(codes).mean(dim=0)
    entropy = binary_entropy_bits(p).sum()
    if threshold > 0 and entropy.item() < threshold:
        return entropy.new_zeros(())
    return entropy


class _AbsOffDiagonalCovariance(torch.autograd.Function):
    """Σ_{i≠j} |C_ij| with C = Xcᵀ Xc / (n − 1), computed and differentiated column chunk by column chunk.

    Autograd through `abs(torch.cov(x))` would keep the m×m matrix (and its sign) alive for the
    backward pass. Here only the centred codes Xc ([n, m]) are saved; each [m, chunk] block of C is
    recomputed in backward. With S = sign(C) (zero diagonal, symmetric) the gradient is
    ∂/∂Xc = 2 Xc S / (n − 1), and the centring passes it through unchanged because its columns
    already sum to zero.
    """

    @staticmethod
    def forward(ctx, codes, chunk_size):
        n, m = codes.shape
        centered = codes - codes.mean(dim=0, keepdim=True)
        total = centered.new_zeros(())
        for start in range(0, m, chunk_size):
            stop = min(start + chunk_size, m)
            block = (centered.T @ centered[:, start:stop]).abs_()
            total += block.sum() - torch.diagonal(block[start:stop]).sum()
        ctx.save_for_backward(centered)
        ctx.chunk_size = chunk_size
        return total / (n - 1)

    @staticmethod
    def backward(ctx, grad_output):
        (centered,) = ctx.saved_tensors
        n, m = centered.shape
        grad = torch.empty_like(centered)
        for start in range(0, m, ctx.chunk_size):
            stop = min(start + ctx.chunk_size, m)
            sign = torch.sign(centered.T @ centered[:, start:stop])
            torch.diagonal(sign[start:stop]).zero_()
            grad[:, start:stop] = centered @ sign
        return grad * (2 * grad_output / (n - 1)), None


def covariance_penalty(codes: torch.Tensor, chunk_size: int = 1024) -> torch.Tensor:
    """Σ_{i≠j} |Cov(h_i, h_j)| over the codes of a minibatch, without materialising the m×m matrix.

    Equal to `torch.cov(codes.T).abs().sum() - torch.cov(codes.T).diagonal().abs().sum()` (the
    original's `covarience_of_binary_hidden`); peak memory is O(n·m + m·chunk_size).
    With fewer than two samples no covariance is defined and the penalty is 0.

    Args:
        codes: `[n, m]` codes (any real values work; gradients flow into them).
        chunk_size: columns of the covariance computed at once.
    """
    if codes.dim() != 2:
        raise ValueError(f"covariance_penalty expects [n, m] codes, got shape {tuple(codes.shape)}.")
    codes = _float(codes)
    if codes.shape[0] < 2:
        return codes.sum() * 0.0
    return _AbsOffDiagonalCovariance.apply(codes, chunk_size)


def l1_penalty(latents: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """L1 norm of the latents: `sum` over tokens and latents (original), or `mean` over tokens of the per-token sum."""
    total = _float(latents).abs().sum()
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / max(latents.reshape(-1, latents.shape[-1]).shape[0], 1)
    raise ValueError(f"Unknown L1 reduction {reduction!r}; choose sum or mean.")
