import math

import pytest
import torch

from hf_bae.binarize import binarize, bits_to_values, square_wave, step


def test_step_forward_and_tie_at_zero():
    x = torch.tensor([-2.0, -0.0, 0.0, 1e-8, 3.0])
    assert step(x).tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]
    for estimator in ("legacy_sign_s", "identity", "sigmoid"):
        assert torch.equal(binarize(x, estimator), step(x))


def _backward(estimator, x, g, **kw):
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(binarize(x, estimator, **kw), x, grad_outputs=g)
    return grad


X = torch.linspace(-3, 3, 25, dtype=torch.float64)
G = torch.linspace(-0.7, 0.9, 25, dtype=torch.float64)


def test_identity_is_straight_through():
    assert torch.allclose(_backward("identity", X, G), G)


def test_legacy_sign_s_is_g_times_one_minus_g():
    # The original's backward acts on the incoming gradient g, not on x.
    assert torch.allclose(_backward("legacy_sign_s", X, G), G * (1 - G))
    tiny = torch.full_like(X, 1e-9)
    assert torch.allclose(_backward("legacy_sign_s", X, tiny), tiny, rtol=1e-8)  # ≈ STE in practice


@pytest.mark.parametrize("temperature", [1.0, 0.25])
def test_sigmoid_is_the_derivative_of_the_sigmoid_surrogate(temperature):
    s = torch.sigmoid(X / temperature)
    assert torch.allclose(_backward("sigmoid", X, G, temperature=temperature), G * s * (1 - s) / temperature)
    # and that is what autograd gives for sigmoid(x / T) itself
    x = X.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(torch.sigmoid(x / temperature), x, grad_outputs=G)
    assert torch.allclose(_backward("sigmoid", X, G, temperature=temperature), auto)


@pytest.mark.parametrize("cycle", [2.0, 3.0])
def test_squarewave_forward_is_periodic_and_backward_follows_its_first_harmonic(cycle):
    x = torch.tensor([0.1, cycle / 2 + 0.1, cycle + 0.1, -cycle / 2 + 0.1], dtype=torch.float64)
    assert square_wave(x, cycle).tolist() == [1.0, 0.0, 1.0, 0.0]
    grad = _backward("squarewave", X, G, cycle=cycle)
    assert torch.allclose(grad, G * (4 / cycle) * torch.cos(2 * math.pi * X / cycle))
    # the surrogate's derivative by autograd
    x = X.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(0.5 + (2 / math.pi) * torch.sin(2 * math.pi * x / cycle), x, grad_outputs=G)
    assert torch.allclose(grad, auto)


def test_unknown_estimator():
    with pytest.raises(ValueError, match="Unknown estimator 'nope'"):
        binarize(X, "nope")


def test_bits_to_values_is_least_significant_bit_first():
    codes = torch.tensor([[1.0, 0.0, 0.0, 0.0, 1.0, 1.0]])  # two features of 3 bits: 1 and 2+4
    assert torch.allclose(bits_to_values(codes, 3), torch.tensor([[1 / 7, 6 / 7]]))
    assert torch.equal(bits_to_values(codes, 1), codes)
