"""The BAE's binarization Γ and the gradient estimators that let it be trained.

Forward, every estimator but `squarewave` uses the step Γ(x) = 1[x > 0]. At the tie x = 0 the
code is 0, as in the original code (the paper writes γ(0) = 1; for float pre-activations the tie
has probability zero, so the choice only matters for exact zeros).

Backward (g is the gradient arriving at the codes, x the pre-activation):

| estimator       | dΓ/dx used in backward                     | note                                            |
|-----------------|--------------------------------------------|-------------------------------------------------|
| `identity`      | g                                          | plain straight-through (original `sign`)        |
| `legacy_sign_s` | g · (1 − g)                                | exact replica of the original `sign_s`: the     |
|                 |                                            | product is taken on g, not on x; since g is     |
|                 |                                            | tiny it is in practice straight-through         |
| `sigmoid`       | g · σ(x/T) · (1 − σ(x/T)) / T              | derivative of the surrogate σ(x/T): what the    |
|                 |                                            | paper's "sigmoid approximation" describes       |
| `squarewave`    | g · (4/c) · cos(2πx/c)                     | forward 1[(x mod c) < c/2]; backward is the     |
|                 |                                            | derivative of the square wave's first Fourier   |
|                 |                                            | harmonic 1/2 + (2/π) sin(2πx/c)                 |

The original `squarewave` backward, π·cos(2π·g), is a function of the gradient rather than of x
(so it ignores the loss's direction); it is not reproduced.
"""

import math

import torch


def step(x: torch.Tensor) -> torch.Tensor:
    """Γ(x) = 1[x > 0] in the dtype of x (no gradient)."""
    return (x > 0).to(x.dtype)


def square_wave(x: torch.Tensor, cycle: float) -> torch.Tensor:
    """1 where (x mod cycle) < cycle / 2, else 0 (no gradient). cycle = 2 is the original's wave."""
    return (torch.remainder(x, cycle) < cycle / 2).to(x.dtype)


class _StepIdentity(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return step(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


class _StepLegacySignS(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return step(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * (1 - grad)


class _StepSigmoid(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, temperature):
        ctx.save_for_backward(x)
        ctx.temperature = temperature
        return step(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        s = torch.sigmoid(x / ctx.temperature)
        return grad * s * (1 - s) / ctx.temperature, None


class _SquareWave(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, cycle):
        ctx.save_for_backward(x)
        ctx.cycle = cycle
        return square_wave(x, cycle)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        c = ctx.cycle
        return grad * (4.0 / c) * torch.cos(2 * math.pi * x / c), None


def binarize(x: torch.Tensor, estimator: str = "legacy_sign_s", temperature: float = 1.0, cycle: float = 2.0) -> torch.Tensor:
    """Binary codes of the pre-activations `x`, differentiable through the named estimator.

    Args:
        x: pre-activations, any shape.
        estimator: `legacy_sign_s`, `identity`, `sigmoid` or `squarewave` (see the module docstring).
        temperature: T of the `sigmoid` estimator.
        cycle: period c of `squarewave`.

    Returns:
        A tensor of 0s and 1s with the shape and dtype of `x`.
    """
    if estimator == "legacy_sign_s":
        return _StepLegacySignS.apply(x)
    if estimator == "identity":
        return _StepIdentity.apply(x)
    if estimator == "sigmoid":
        return _StepSigmoid.apply(x, temperature)
    if estimator == "squarewave":
        return _SquareWave.apply(x, cycle)
    raise ValueError(f"Unknown estimator {estimator!r}; choose legacy_sign_s, identity, sigmoid or squarewave.")


def bits_to_values(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Group each `bits` consecutive codes into one value in [0, 1], least significant bit first.

    v_j = Σ_i 2^i b_{j,i} / (2^bits − 1), as in the authors' multi-bit BAE. With bits = 1 the codes
    are returned unchanged.
    """
    if bits == 1:
        return codes
    weights = 2.0 ** torch.arange(bits, device=codes.device, dtype=codes.dtype) / (2**bits - 1)
    return (codes.unflatten(-1, (-1, bits)) * weights).sum(-1)
