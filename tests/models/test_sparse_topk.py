"""The sparse TopK path (values + indices, embedding-bag decoder, sparse encoder backward) against the dense
one (scatter into [n, m], dense matmuls): the same outputs, losses and gradients, in float64."""

import pytest
import torch

from hf_bae import SAEConfig, SparseAutoencoder
from hf_bae.modeling_sae import SelectedPreActivations, sparse_decode


def pair(**kwargs):
    """A dense and a sparse TopK SAE with the same float64 weights."""
    torch.manual_seed(0)
    config = dict(hidden_size=24, latent_size=96, activation="topk", k=5, **kwargs)
    dense = SparseAutoencoder(SAEConfig(topk_implementation="dense", **config)).double()
    sparse = SparseAutoencoder(SAEConfig(topk_implementation="sparse", **config)).double()
    sparse.load_state_dict(dense.state_dict())
    with torch.no_grad():  # non-zero biases, so their gradients are compared too
        for model in (dense, sparse):
            for p in (model.encoder.bias, model.decoder.bias):
                if p is not None:
                    p.copy_(torch.linspace(-0.3, 0.3, p.numel(), dtype=torch.float64))
    return dense, sparse


def grads(model):
    return {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("kwargs", [
    {},
    {"l1_weight": 0.3, "l1_decoder_norm": True, "l1_reduction": "mean"},
    {"l1_weight": 0.1, "l1_decoder_norm": False, "l1_reduction": "sum", "decoder_bias": False},
    {"auxk_weight": 0.5, "auxk_k": 7},
])
def test_sparse_topk_equals_dense_in_value_loss_and_gradients(kwargs):
    dense, sparse = pair(**kwargs)
    x = torch.randn(3, 10, 24, dtype=torch.float64, requires_grad=True)
    dead = torch.zeros(96, dtype=torch.bool)
    dead[::3] = True
    outs, input_grads = [], []
    for model in (dense, sparse):
        out = model(x, dead_mask=dead if "auxk_k" in kwargs else None)
        out.loss.backward()
        outs.append(out)
        input_grads.append(x.grad.clone())
        x.grad = None
    d, s = outs
    assert s.latent_values.shape == s.latent_indices.shape == (3, 10, 5) and d.latent_values is None
    torch.testing.assert_close(s.latents, d.latents)
    torch.testing.assert_close(s.reconstruction, d.reconstruction)
    for name in ("loss", "reconstruction_loss", "l1_loss", "auxk_loss"):
        if getattr(d, name) is not None:
            torch.testing.assert_close(getattr(s, name), getattr(d, name))
    if "auxk_k" in kwargs:
        assert d.auxk_loss > 0
    gd, gs = grads(dense), grads(sparse)
    assert gd.keys() == gs.keys()
    for name in gd:
        torch.testing.assert_close(gs[name], gd[name], msg=name)
    torch.testing.assert_close(input_grads[1], input_grads[0])
    assert torch.equal(sparse.features_fired(s), dense.features_fired(d))


def test_training_uses_values_and_indices_and_the_fired_mask_matches():
    dense, sparse = pair()
    x = torch.randn(32, 24, dtype=torch.float64)
    kwargs = sparse.training_kwargs(True, torch.zeros(96))
    assert kwargs["return_dense_latents"] is False and dense.training_kwargs(True)["return_dense_latents"] is True
    out = sparse(x, **kwargs)
    assert out.latents is None
    fired = sparse.features_fired(out)
    assert fired.shape == (32, 96) and torch.equal(fired, dense.features_fired(dense(x)))
    assert int(fired.sum(-1).max()) <= 5
    # What a training step records, from the k values and indices, equals the dense path's from its mask;
    # zero values (ReLU of a negative pick) do not count as fired.
    with torch.no_grad():
        sparse.encoder.bias[:92] = -100.0  # 4 features left for k = 5: a zero pick on every token
        dense.encoder.bias[:92] = -100.0
    out, reference = sparse(x, **kwargs), dense(x)
    assert bool((out.latent_values == 0).any())
    (l0, anywhere), (l0_dense, anywhere_dense) = sparse.firing(out), dense.firing(reference)
    torch.testing.assert_close(l0, l0_dense.float())
    assert torch.equal(anywhere, anywhere_dense) and not anywhere[:92].any()


def test_normalised_training_and_folding_give_the_same_outputs_on_both_paths():
    dense, sparse = pair()
    mean = torch.randn(24)
    for model in (dense, sparse):
        model.set_normalization(mean, 0.7, mean, 0.7)
    x = torch.randn(16, 24, dtype=torch.float64)
    torch.testing.assert_close(sparse(x).loss, dense(x).loss)
    for model in (dense, sparse):
        model.fold_normalization()
    torch.testing.assert_close(sparse(x).reconstruction, dense(x).reconstruction)
    torch.testing.assert_close(sparse(x).loss, dense(x).loss)


def test_auto_takes_the_sparse_path_only_for_narrow_topk():
    sae = lambda **kw: SparseAutoencoder(SAEConfig(hidden_size=16, **kw))  # noqa: E731
    assert sae(latent_size=256, activation="topk", k=32).sparse_topk  # k = m / 8
    assert not sae(latent_size=128, activation="topk", k=32).sparse_topk
    assert not sae(latent_size=256, activation="topk", k=32, topk_implementation="dense").sparse_topk
    assert sae(latent_size=64, activation="topk", k=32, topk_implementation="sparse").sparse_topk
    assert not sae(latent_size=256, activation="relu", topk_implementation="sparse").sparse_topk
    with pytest.raises(ValueError, match="topk_implementation"):
        SAEConfig(hidden_size=16, topk_implementation="fast")


def test_the_sparse_pieces_match_their_definitions():
    torch.manual_seed(1)
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(10, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(10, dtype=torch.float64, requires_grad=True)
    idx = torch.randint(0, 10, (6, 3))
    # pre is computed outside autograd, as in the model; gradcheck perturbs the inputs, so recompute it
    selected = lambda x, w, b: SelectedPreActivations.apply(x, w, b, (x @ w.T + b).detach(), idx)  # noqa: E731
    torch.autograd.gradcheck(selected, (x, w, b))
    values = torch.randn(6, 3, dtype=torch.float64)
    dense = torch.zeros(6, 10, dtype=torch.float64).scatter_add(-1, idx, values)  # repeated indices add up
    dec = torch.randn(4, 10, dtype=torch.float64)
    torch.testing.assert_close(sparse_decode(values, idx, dec), dense @ dec.T)


def test_bf16_autocast_runs_the_sparse_path_close_to_float32():
    dense, sparse = pair()
    dense, sparse = dense.float(), sparse.float()
    x = torch.randn(64, 24)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sparse(x)
    out.loss.backward()
    ref = dense(x)
    assert torch.isfinite(out.loss) and abs(float(out.loss) - float(ref.loss)) < 0.05 * float(ref.loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in sparse.parameters())


def test_the_sparse_path_keeps_its_decoder_column_major_through_loading_and_training(tmp_path):
    """The embedding-bag decode reads whole feature directions: the decoder weight's transpose stays contiguous
    after init, a dtype change, `from_pretrained` and an optimiser step; the saved tensor is the usual [d, m]."""
    from safetensors.torch import load_file

    dense, sparse = pair()
    assert sparse.decoder.weight.t().is_contiguous() and not sparse.decoder.weight.is_contiguous()
    assert dense.decoder.weight.is_contiguous()  # the dense path reads rows: left as nn.Linear stores it
    sparse.save_pretrained(tmp_path)
    saved = load_file(str(tmp_path / "model.safetensors"))["decoder.weight"]
    assert saved.shape == (24, 96)
    torch.testing.assert_close(saved, sparse.decoder.weight.detach())
    loaded = SparseAutoencoder.from_pretrained(tmp_path)
    assert loaded.decoder.weight.t().is_contiguous()
    torch.testing.assert_close(loaded.decoder.weight, sparse.decoder.weight)
    optimizer = torch.optim.Adam(loaded.parameters(), lr=1e-2, fused=True)
    loaded(torch.randn(8, 24, dtype=loaded.dtype)).loss.backward()
    optimizer.step()
    assert loaded.decoder.weight.t().is_contiguous() and loaded.decoder.weight.grad.t().is_contiguous()
