"""The covariance penalty's dense and sparse paths against the dense formula: value and gradient, float64."""

import pytest
import torch

import hf_bae.losses as losses
from hf_bae import BAEConfig, BinaryAutoencoder
from hf_bae.configuration import COVARIANCE_IMPLEMENTATIONS
from hf_bae.losses import code_deviations, covariance_penalty, deviation_density


def _codes(b, m, density, seed=0, dtype=torch.float64):
    """Binary codes whose per-code rates spread around `density`, plus an always-on and a never-on code."""
    g = torch.Generator().manual_seed(seed)
    p = (torch.rand(m, generator=g, dtype=torch.float64) * density * 2).clamp(max=1)
    codes = (torch.rand(b, m, generator=g, dtype=torch.float64) < p).to(dtype)
    if m >= 4:
        codes[:, 0], codes[:, 1] = 1, 0
    return codes


def _torch_cov_penalty(codes):
    cov = torch.cov(codes.T)
    return cov.abs().sum() - cov.diagonal().abs().sum()


def _exact_reference(codes):
    """Value and gradient of Σ_{i≠j}|Cov| from integer arithmetic: sign(C) is exact, ties C_ij = 0 included.

    b(b − 1)·C = b·hᵀh − c cᵀ (c the column counts); dΣ/dh = 2 (h − c/b) sign(C) / (b − 1).
    """
    b = codes.shape[0]
    h = codes.round().long()
    c = h.sum(0)
    k = b * (h.T @ h) - c[:, None] * c[None, :]
    k.fill_diagonal_(0)
    value = k.abs().sum().double() / (b * (b - 1))
    grad = 2 * (codes - c.double() / b) @ k.sign().double() / (b - 1)
    return value, grad


def _value_and_grad(codes, implementation, chunk=7, scale=1.7):
    x = codes.clone().requires_grad_(True)
    value = covariance_penalty(x, chunk, implementation, binary=True)
    (grad,) = torch.autograd.grad(value * scale, x)
    return value.detach(), grad / scale


CASES = [
    (64, 50, 0.03),   # sparse codes
    (64, 50, 0.5),    # dense codes (as at initialisation)
    (37, 80, 0.05),   # a batch size that is not a power of two: ties C_ij = 0 are exact only in integers
    (100, 120, 0.97),  # codes that are usually on: r = 1, sparse deviations of −1
    (2, 9, 0.5),
    (3, 6, 0.5),
]


@pytest.mark.parametrize("implementation", ["dense", "sparse"])
@pytest.mark.parametrize("b, m, density", CASES)
def test_value_and_gradient_equal_the_exact_dense_formula(b, m, density, implementation):
    codes = _codes(b, m, density, seed=b + m)
    value, grad = _value_and_grad(codes, implementation)
    ref_value, ref_grad = _exact_reference(codes)
    assert torch.allclose(value, ref_value, rtol=1e-12, atol=1e-12)
    assert torch.allclose(value, _torch_cov_penalty(codes), rtol=1e-10, atol=1e-12)
    assert torch.allclose(grad, ref_grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("implementation", ["dense", "sparse"])
@pytest.mark.parametrize("density", [0.02, 0.5])
def test_gradient_equals_autograd_through_torch_cov(implementation, density):
    # With b a power of two every float64 operation of torch.cov on 0/1 codes is exact, so autograd
    # through abs(torch.cov) is the dense formula's gradient, ties included.
    codes = _codes(128, 90, density, seed=3)
    x = codes.clone().requires_grad_(True)
    (ref,) = torch.autograd.grad(_torch_cov_penalty(x), x)
    value, grad = _value_and_grad(codes, implementation)
    assert torch.allclose(value, _torch_cov_penalty(codes), rtol=1e-12)
    assert torch.allclose(grad, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("implementation", ["dense", "sparse", "auto"])
def test_edge_cases(implementation):
    # all-constant codes: no covariance, no gradient
    for fill in (0.0, 1.0):
        codes = torch.full((16, 10), fill, dtype=torch.float64)
        value, grad = _value_and_grad(codes, implementation)
        assert value.item() == 0.0 and torch.count_nonzero(grad) == 0
    # one sample: no covariance defined; two samples: the formula still holds
    assert covariance_penalty(torch.ones(1, 5), implementation=implementation).item() == 0.0
    codes = torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.0]], dtype=torch.float64)
    value, grad = _value_and_grad(codes, implementation)
    ref_value, ref_grad = _exact_reference(codes)
    assert torch.allclose(value, ref_value) and torch.allclose(grad, ref_grad)


def test_multi_bit_codes_of_a_bae():
    model = BinaryAutoencoder(BAEConfig(hidden_size=12, latent_size=10, bits=4, covariance_weight=1.0)).double()
    with torch.no_grad():
        codes = model.encode(torch.randn(40, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    flat = codes.reshape(-1, model.config.num_codes)
    ref_value, ref_grad = _exact_reference(flat)
    for implementation in ("dense", "sparse"):
        value, grad = _value_and_grad(flat, implementation)
        assert torch.allclose(value, ref_value, rtol=1e-12) and torch.allclose(grad, ref_grad, rtol=1e-10, atol=1e-12)


def test_deviations_are_the_codes_minus_their_rounded_mean():
    codes = torch.tensor([[1.0, 0.0, 1.0], [1.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    d, t = code_deviations(codes)
    # means 0.75, 0.25, 0.5 → rounded 1, 0, 0 (a tie rounds down, as torch.round)
    assert torch.equal(d, codes - torch.tensor([1.0, 0.0, 0.0]))
    assert torch.equal(t, torch.tensor([-1.0, 1.0, 2.0], dtype=torch.float64))
    assert deviation_density(codes) == pytest.approx(4 / 12)


def test_auto_picks_the_path_by_deviation_density(monkeypatch):
    used = []
    for name in ("_SparseCovariance", "_DenseCovariance", "_AbsOffDiagonalCovariance"):
        cls = getattr(losses, name)
        monkeypatch.setattr(cls, "apply", (lambda n, f: lambda *a: used.append(n) or f(*a))(name, cls.apply))
    sparse = _codes(256, 200, losses.SPARSE_COVARIANCE_DENSITY / 3)
    dense = _codes(256, 200, 0.3)
    assert deviation_density(sparse) <= losses.SPARSE_COVARIANCE_DENSITY < deviation_density(dense)
    covariance_penalty(sparse)
    covariance_penalty(dense)
    covariance_penalty(sparse, sparse_density=0.0)  # the switch point is a parameter
    covariance_penalty(torch.randn(30, 8))  # real values: the float path, whatever the density
    assert used == ["_SparseCovariance", "_DenseCovariance", "_DenseCovariance", "_AbsOffDiagonalCovariance"]


def test_sparse_refuses_real_values_and_unknown_names():
    with pytest.raises(ValueError, match="needs binary"):
        covariance_penalty(torch.randn(8, 4), implementation="sparse")
    with pytest.raises(ValueError, match="Unknown covariance implementation"):
        covariance_penalty(torch.ones(8, 4), implementation="fast")
    with pytest.raises(ValueError, match="covariance_implementation"):
        BAEConfig(hidden_size=8, covariance_implementation="fast")
    assert COVARIANCE_IMPLEMENTATIONS == losses.COVARIANCE_IMPLEMENTATIONS


@pytest.mark.parametrize("implementation", ["dense", "sparse"])
def test_autocast_does_not_round_the_penalty(implementation):
    codes = _codes(256, 300, 0.02, dtype=torch.float32)
    expected = covariance_penalty(codes, implementation=implementation)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = covariance_penalty(codes, implementation=implementation)
    assert got.dtype == torch.float32 and torch.allclose(got, expected, rtol=1e-6)


def test_sparse_and_dense_paths_train_the_same():
    """Ten Adam steps of a BAE whose codes are sparse, with a strong covariance term: same losses."""
    torch.manual_seed(0)
    x = torch.randn(10, 128, 16, dtype=torch.float64)
    start = BinaryAutoencoder(BAEConfig(hidden_size=16, latent_size=64, covariance_weight=1e-2,
                                        estimator="identity")).double()
    with torch.no_grad():  # shift the thresholds so that ~2 % of the codes fire, as after the entropy term
        start.encoder.bias -= torch.quantile(start.encoder(x[0]), 0.98, dim=0)
    runs = {}
    for implementation in ("dense", "sparse"):
        model = BinaryAutoencoder(BAEConfig(**{**start.config.to_dict(), "covariance_implementation": implementation}))
        model = model.double()
        model.load_state_dict(start.state_dict())
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        log = []
        for batch in x:
            out = model(batch)
            optimizer.zero_grad()
            out.loss.backward()
            optimizer.step()
            log.append((out.loss.item(), out.covariance_loss.item()))
        runs[implementation] = torch.tensor(log)
    assert runs["dense"][:, 1].min() > 0
    assert torch.allclose(runs["sparse"], runs["dense"], rtol=1e-9, atol=1e-12)


# --- sparse decoding: codes @ W = r @ W + D @ W -------------------------------------------------------


def _decoder_pair(decoder_bias=True, output_activation="none", bits=1):
    from hf_bae import BAEConfig, BinaryAutoencoder

    kwargs = dict(hidden_size=12, expansion_factor=4, decoder_bias=decoder_bias, output_activation=output_activation, bits=bits)
    torch.manual_seed(0)
    sparse = BinaryAutoencoder(BAEConfig(decoder_implementation="sparse", **kwargs)).double()
    dense = BinaryAutoencoder(BAEConfig(decoder_implementation="dense", **kwargs)).double()
    dense.load_state_dict(sparse.state_dict())
    return sparse, dense


@pytest.mark.parametrize("shape", [(37, 48), (2, 9, 48)])
@pytest.mark.parametrize("decoder_bias,activation", [(True, "none"), (False, "relu")])
def test_sparse_decode_equals_dense_in_value_and_gradient(shape, decoder_bias, activation):
    sparse, dense = _decoder_pair(decoder_bias, activation)
    generator = torch.Generator().manual_seed(1)
    usual = (torch.rand(shape[-1], generator=generator) < 0.3).double()  # some codes usually on
    flip = torch.rand(shape, generator=generator) < 0.05
    codes = torch.where(flip, 1 - usual, usual)
    a, b = codes.clone().requires_grad_(True), codes.clone().requires_grad_(True)
    out_sparse, out_dense = sparse.decode(a), dense.decode(b)
    assert out_sparse.shape == out_dense.shape == (*shape[:-1], 12)
    torch.testing.assert_close(out_sparse, out_dense, rtol=1e-12, atol=1e-12)
    upstream = torch.randn_like(out_dense)
    out_sparse.backward(upstream)
    out_dense.backward(upstream)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-12)
    for name, p in sparse.named_parameters():
        if p.grad is not None or dict(dense.named_parameters())[name].grad is not None:
            torch.testing.assert_close(p.grad, dict(dense.named_parameters())[name].grad, rtol=1e-12, atol=1e-12)


def test_decode_path_follows_the_config(monkeypatch):
    from hf_bae import BAEConfig, BinaryAutoencoder
    from hf_bae import modeling_bae

    calls = []
    original = modeling_bae._DeviationDecode.apply
    monkeypatch.setattr(modeling_bae._DeviationDecode, "apply", lambda *args: calls.append(1) or original(*args))
    codes = (torch.rand(64, 192) < 0.5).float()
    BinaryAutoencoder(BAEConfig(hidden_size=12, expansion_factor=16)).decode(codes)
    assert calls == []  # default: dense
    BinaryAutoencoder(BAEConfig(hidden_size=12, expansion_factor=16, decoder_implementation="sparse")).decode(codes)
    assert calls == [1]
    two_bit, _ = _decoder_pair(bits=2)
    two_bit.decode(torch.zeros(8, two_bit.config.num_codes, dtype=torch.float64))
    assert calls == [1]  # multi-bit codes always decode densely
    with pytest.raises(ValueError, match="decoder_implementation"):
        BAEConfig(decoder_implementation="auto")
