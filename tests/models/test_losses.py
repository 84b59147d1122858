import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from hf_bae.losses import binary_entropy_bits, covariance_penalty, l1_penalty, minibatch_entropy, reconstruction_loss


def _random_codes(n, m, density, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(m, generator=g, dtype=dtype) * density * 2  # per-feature rates around `density`
    return (torch.rand(n, m, generator=g, dtype=dtype) < p.clamp(max=1)).to(dtype)


def test_reconstruction_is_the_element_mean_of_squares():
    x, y = torch.randn(7, 5), torch.randn(7, 5)
    assert torch.isclose(reconstruction_loss(x, y), ((x - y) ** 2).sum() / 35)


@pytest.mark.parametrize("density", [0.05, 0.5])
def test_entropy_matches_a_float64_reference(density):
    codes = _random_codes(300, 40, density)
    p = codes.numpy().mean(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ref = -np.nansum(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    assert abs(minibatch_entropy(codes).item() - ref) < 1e-6
    assert binary_entropy_bits(torch.tensor(0.5, dtype=torch.float64)).item() == pytest.approx(1.0)


def test_entropy_threshold_switches_the_term_off():
    codes = _random_codes(100, 10, 0.3)
    h = minibatch_entropy(codes).item()
    assert minibatch_entropy(codes, threshold=h + 1).item() == 0.0
    assert minibatch_entropy(codes, threshold=h - 1).item() == pytest.approx(h)


def _dense_reference(codes):
    cov = torch.cov(codes.T)
    return cov.abs().sum() - cov.diagonal().abs().sum()


@pytest.mark.parametrize("n, m, density, chunk", [(64, 50, 0.1, 7), (64, 50, 0.5, 16), (33, 130, 0.02, 1024), (5, 9, 0.5, 1)])
def test_chunked_covariance_equals_the_dense_formula(n, m, density, chunk):
    codes = _random_codes(n, m, density)
    a = codes.clone().requires_grad_(True)
    b = codes.clone().requires_grad_(True)
    ours, ref = covariance_penalty(a, chunk_size=chunk), _dense_reference(b)
    assert torch.allclose(ours, ref, rtol=1e-10, atol=1e-12)
    # gradient, with a random weighting of rows so that a wrong centring term would show
    w = torch.rand(n, 1, dtype=torch.float64)
    (ga,) = torch.autograd.grad(covariance_penalty(a * w, chunk), a)
    (gb,) = torch.autograd.grad(_dense_reference(b * w), b)
    assert torch.allclose(ga, gb, rtol=1e-9, atol=1e-12)


def test_covariance_on_real_valued_inputs_too():
    x = torch.randn(40, 30, dtype=torch.float64, requires_grad=True)
    y = x.detach().clone().requires_grad_(True)
    assert torch.allclose(covariance_penalty(x, 8), _dense_reference(y))
    (gx,) = torch.autograd.grad(covariance_penalty(x, 8), x)
    (gy,) = torch.autograd.grad(_dense_reference(y), y)
    assert torch.allclose(gx, gy)


def test_covariance_of_one_sample_is_zero_and_bad_shapes_are_refused():
    assert covariance_penalty(torch.ones(1, 5)).item() == 0.0
    with pytest.raises(ValueError, match=r"expects \[n, m\] codes"):
        covariance_penalty(torch.ones(5))


def test_l1_reductions():
    a = torch.tensor([[1.0, -2.0], [0.0, 3.0]])
    assert l1_penalty(a).item() == 6.0 and l1_penalty(a, "mean").item() == 3.0
    with pytest.raises(ValueError, match="Unknown L1 reduction"):
        l1_penalty(a, "max")


_PEAK_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys, torch
    from hf_bae.losses import covariance_penalty
    torch.set_num_threads(2)
    torch.manual_seed(0)
    n, m, mode = 64, 16384, sys.argv[1]
    codes = (torch.rand(n, m) < 0.05).float().requires_grad_(True)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if mode == "chunked":
        loss = covariance_penalty(codes, chunk_size=1024)
    else:
        cov = torch.cov(codes.T)
        loss = cov.abs().sum() - cov.diagonal().abs().sum()
    loss.backward()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_mb": (after - before) / 1024, "loss": loss.item()}))
    """
)


def _peak(mode):
    out = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, mode], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_chunked_covariance_peak_memory_is_bounded_at_16k_features():
    chunked, dense = _peak("chunked"), _peak("dense")
    assert chunked["loss"] == pytest.approx(dense["loss"], rel=1e-4)
    # A dense 16384² float32 covariance alone is 1 GiB; the chunked path holds one 16384×1024 block.
    assert dense["peak_mb"] > 1000, dense
    assert chunked["peak_mb"] < 250, chunked
