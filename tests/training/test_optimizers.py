"""The trainer's optimiser: fused Adam/AdamW stepping column-major weights through their transposes gives the
same update as PyTorch's own Adam, keeps every tensor's layout, and resumes from its state dict."""

import pytest
import torch

from hf_bae import SAEConfig, SparseAutoencoder
from hf_bae.training import TrainingArguments, make_optimizer
from hf_bae.training.optimizers import transpose_column_major


def test_only_parameters_column_major_in_every_tensor_are_transposed():
    column = torch.randn(3, 5).t().contiguous().t()  # [3, 5], column-major
    row = torch.randn(3, 5)
    params = [column, row, column.clone(memory_format=torch.preserve_format), torch.randn(5)]
    grads = [torch.zeros_like(column), torch.zeros_like(row), torch.randn(3, 5), torch.randn(5)]  # 3rd: row-major
    moments = [torch.zeros_like(p) for p in params]
    transpose_column_major(params, grads, moments, [])
    assert params[0].shape == grads[0].shape == moments[0].shape == (5, 3)
    assert all(t[0].is_contiguous() and t[0].data_ptr() == column.data_ptr() for t in (params,))
    assert [p.shape for p in params[1:]] == [(3, 5), (3, 5), (5,)]  # mismatched layouts and 1-D left alone


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_fused_steps_of_a_sparse_topk_sae_equal_pytorchs_loop_and_resume(optimizer, tmp_path, monkeypatch):
    handed = []  # what the fused kernel is given: all contiguous, so it copies nothing
    kernel = torch._fused_adamw_ if optimizer == "adamw" else torch._fused_adam_
    monkeypatch.setattr(torch, kernel.__name__, lambda *a, **k: (handed.extend(a[:4]), kernel(*a, **k))[1])
    torch.manual_seed(0)
    config = SAEConfig(hidden_size=16, latent_size=64, activation="topk", k=4, topk_implementation="sparse")
    ours, reference = SparseAutoencoder(config), SparseAutoencoder(config)
    reference.load_state_dict(ours.state_dict())
    assert ours.decoder.weight.t().is_contiguous()  # the case the transposed stepping is for
    args = TrainingArguments(output_dir=str(tmp_path), optimizer=optimizer, weight_decay=0.01, learning_rate=1e-2)
    fused = make_optimizer(ours, args)
    cls = torch.optim.AdamW if optimizer == "adamw" else torch.optim.Adam
    loop = cls(reference.parameters(), lr=1e-2, weight_decay=0.01, foreach=False)
    x = torch.randn(32, 16)
    for _ in range(3):
        for model, opt in ((ours, fused), (reference, loop)):
            model(x, return_dense_latents=False).loss.backward()
            opt.step()
            opt.zero_grad()
    assert handed and all(t.is_contiguous() for tensors in handed for t in tensors)
    for (name, p), q in zip(ours.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, msg=name)
    state = fused.state[ours.decoder.weight]
    assert all(t.t().is_contiguous() for t in (ours.decoder.weight, state["exp_avg"], state["exp_avg_sq"]))
    resumed = make_optimizer(ours, args)
    resumed.load_state_dict(fused.state_dict())
    ours(x, return_dense_latents=False).loss.backward()
    resumed.step()  # loads and steps from a saved state
    assert torch.isfinite(ours.decoder.weight).all()
