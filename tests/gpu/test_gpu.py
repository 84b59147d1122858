"""The CUDA paths, checked against the CPU: bf16 autocast training, the covariance penalty, the sparse TopK
path, the harvest, and `accelerate launch` on one GPU. Marked `gpu`; each skips cleanly without CUDA (as
on CI), and `benchmarks/gpu_check.sh` runs them on a GPU machine."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmarks/gpu_check.sh)")]


def test_covariance_dense_and_sparse_on_cuda_equal_float64_on_cpu():
    # The reference is the float64 CPU path (tests/models/test_covariance.py: equal to autograd through
    # torch.cov where torch.cov is exact); torch.cov itself at b = 512 rounds exact ties C_ij = 0 to ±tiny.
    from hf_bae.losses import covariance_penalty

    torch.manual_seed(0)
    # each implementation where `auto` takes it: dense at initialisation (half the codes fire), sparse when trained
    for density, implementations in ((0.5, ("dense",)), (0.005, ("dense", "sparse"))):
        codes = (torch.rand(512, 3072) < density).float()
        ref_codes = codes.double().requires_grad_(True)
        ref = covariance_penalty(ref_codes, implementation="dense", binary=True)
        ref.backward()
        for implementation in implementations:
            x = codes.cuda().clone().requires_grad_(True)
            value = covariance_penalty(x, implementation=implementation, binary=True)
            value.backward()
            torch.testing.assert_close(value.double().cpu(), ref.detach(), rtol=1e-6, atol=0)
            scale = float(ref_codes.grad.abs().max())
            assert float((x.grad.double().cpu() - ref_codes.grad).abs().max()) < 1e-6 * scale, (density, implementation)


def test_sparse_topk_on_cuda_equals_dense_and_the_cpu():
    from hf_bae import SAEConfig, SparseAutoencoder

    torch.manual_seed(0)
    config = dict(hidden_size=256, latent_size=8192, activation="topk", k=32, auxk_weight=0.1)
    dense = SparseAutoencoder(SAEConfig(topk_implementation="dense", **config)).double()
    x = torch.randn(1024, 256, dtype=torch.float64)
    dead = torch.arange(8192) % 7 == 0
    out = dense(x, dead_mask=dead)
    out.loss.backward()
    sparse = SparseAutoencoder(SAEConfig(topk_implementation="sparse", **config)).double().cuda()
    sparse.load_state_dict({k: v.cuda() for k, v in dense.state_dict().items()})
    got = sparse(x.cuda(), dead_mask=dead.cuda())
    got.loss.backward()
    torch.testing.assert_close(got.loss.cpu(), out.loss)
    torch.testing.assert_close(got.reconstruction.cpu(), out.reconstruction)
    for (name, p), q in zip(dense.named_parameters(), sparse.parameters()):
        torch.testing.assert_close(q.grad.cpu(), p.grad, msg=name)


def test_bf16_autocast_training_on_cuda_learns():
    from hf_bae import BAEConfig, BinaryAutoencoder, SAEConfig, SparseAutoencoder

    torch.manual_seed(0)
    x = torch.randn(4096, 128, device="cuda") @ torch.randn(128, 128, device="cuda") / 8
    for model in (BinaryAutoencoder(BAEConfig(hidden_size=128, latent_size=512)),
                  SparseAutoencoder(SAEConfig(hidden_size=128, latent_size=1024, activation="topk", k=16))):
        model = model.cuda()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        losses = []
        for step in range(60):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(x[(step % 8) * 512:(step % 8 + 1) * 512]).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(float(loss))
        assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < 0.8 * losses[0], (type(model).__name__, losses[::10])


TEXTS = [f"Paragraph {i}: the committee met on Monday and the vote was {i % 7} to {i % 5}; prices rose by {i} percent."
         for i in range(400)]


def test_harvest_on_cuda_matches_the_cpu(tmp_path):
    from transformers import AutoModelForCausalLM

    from hf_bae.activations import stream_activations
    from hf_bae.testing import tiny_causal_lm

    model, tokenizer = tiny_causal_lm("llama", tmp_path / "lm", num_layers=4, hidden_size=128)
    got = {}
    for device in ("cpu", "cuda"):
        lm = AutoModelForCausalLM.from_pretrained(tmp_path / "lm", dtype=torch.float32).to(device).eval()
        batch = next(iter(stream_activations(lm, tokenizer, TEXTS, "layers.2.resid_post", batch_size=8, progress=False)))
        got[device] = batch.activations["layers.2.resid_post"].float().cpu()
    assert got["cpu"].shape == got["cuda"].shape and got["cpu"].shape[0] > 500
    assert (got["cuda"] - got["cpu"]).abs().max() < 1e-3 * got["cpu"].abs().max()  # no TF32 for float32 by default


@pytest.mark.slow
def test_accelerate_launch_trains_on_one_gpu_in_bf16(tmp_path):
    from hf_bae.testing import tiny_causal_lm

    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")
    assert accelerate, "the accelerate launcher is not installed"
    tiny_causal_lm("llama", tmp_path / "lm", num_layers=4, hidden_size=128)
    (tmp_path / "corpus.txt").write_text("\n".join(TEXTS * 4))
    out = tmp_path / "run"
    cmd = [accelerate, "launch", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "bf16",
           "--dynamo_backend", "no", "-m", "hf_bae", "train", "--base_model", str(tmp_path / "lm"),
           "--dataset", "text", "--data_files", str(tmp_path / "corpus.txt"), "--dictionaries", "bae", "topk",
           "--layer", "2", "--expansion_factor", "8", "--mixed_precision", "bf16", "--max_tokens", "80000",
           "--batch_size", "1024", "--validation_tokens", "2048", "--output_dir", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=500)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("bae", "topk"):
        metrics = json.loads((out / name / "eval_results.json").read_text())
        assert 0 < metrics["fvu"] < 1, (name, metrics)
    assert json.loads((out / "training_args.json").read_text())["mixed_precision"] == "bf16"
