"""BAE training step at 3k–64k features: step time and peak memory, with and without the covariance term.

Each row is one BAE (d, m, batch) trained for a few Adam steps (MSE + 1e-7·entropy + covariance term)
on random activations, with the encoder thresholds shifted so that a given fraction ρ of the codes
fires — the deviation density D = h − round(mean h) the sparse covariance follows. Rows:

- `none`: covariance weight 0 (the baseline the covariance term is compared with, in the same run);
- `dense` / `sparse` / `auto`: `BAEConfig.covariance_implementation`.

Each row runs in a fresh subprocess, so that its peak memory is its own: peak RSS on the CPU,
`torch.cuda.max_memory_allocated` on a GPU. On a GPU the script also measures the device's bf16
peak with a large GEMM and reports the achieved TFLOP/s of the encoder/decoder matmuls (the five
GEMMs of a step, 2·b·d·m FLOPs each, timed alone under bf16 autocast) as a % of that peak.

    PYTHONPATH=. python benchmarks/scale.py                        # CPU rows (a few minutes, 2 threads)
    PYTHONPATH=. python benchmarks/scale.py --device cuda --d 2048 --batch 4096 --latents 65536 --bf16

The default density is the one measured on a trained BAE by `benchmarks/measure_density.py`
(`benchmarks/density.json`).
"""

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
from pathlib import Path

import torch
from timing import call_times

HERE = Path(__file__).resolve().parent


def _timed(fn, device, steps, warmup=1):
    return statistics.median(call_times(fn, device, steps, warmup))


def run_row(d, m, batch, density, implementation, steps, device, bf16, fused, compile_model):
    """One row, in this process: median step time and peak memory."""
    from hf_bae import BAEConfig, BinaryAutoencoder
    from hf_bae.losses import deviation_density

    device = torch.device(device)
    torch.manual_seed(0)
    weight = 0.0 if implementation == "none" else 1e-7
    config = BAEConfig(hidden_size=d, latent_size=m, entropy_weight=1e-7, covariance_weight=weight,
                       covariance_implementation="auto" if implementation == "none" else implementation)
    model = BinaryAutoencoder(config).to(device)
    model.check_inputs = False
    x = torch.randn(batch, d, device=device)
    with torch.no_grad():  # each code fires on ~`density` of the tokens (per-code quantile of its pre-activation)
        model.encoder.bias -= torch.quantile(model.encoder(x[: min(batch, 4096)]).float(), 1 - density, dim=0)
        codes = model.encode(x)
        measured = deviation_density(codes)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True if fused else None)
    forward = torch.compile(model) if compile_model else model

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = forward(x)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = _timed(step, device, steps)
    row = {"d": d, "m": m, "batch": batch, "target_density": density, "deviation_density": measured,
           "covariance": implementation, "step_s": seconds, "tokens_per_s": batch / seconds}
    if device.type == "cuda":
        row["peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
        row.update(matmul_throughput(d, m, batch, device))
    else:
        row["peak_memory_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    return row


def matmul_throughput(d, m, batch, device, steps=10):
    """TFLOP/s of the step's five encoder/decoder GEMMs alone, in bf16 (fwd enc, fwd dec, dec input grad, 2 weight grads)."""
    x = torch.randn(batch, d, device=device, dtype=torch.bfloat16)
    w_enc = torch.randn(m, d, device=device, dtype=torch.bfloat16)
    w_dec = torch.randn(d, m, device=device, dtype=torch.bfloat16)
    codes = (torch.rand(batch, m, device=device) < 0.5).to(torch.bfloat16)
    g_out = torch.randn(batch, d, device=device, dtype=torch.bfloat16)
    g_pre = torch.randn(batch, m, device=device, dtype=torch.bfloat16)

    def gemms():
        x @ w_enc.T            # encoder forward   b×d · d×m
        codes @ w_dec.T        # decoder forward   b×m · m×d
        g_out @ w_dec          # grad of the codes b×d · d×m
        g_out.T @ codes        # decoder weight    d×b · b×m
        g_pre.T @ x            # encoder weight    m×b · b×d

    seconds = _timed(gemms, device, steps, warmup=2)
    return {"matmul_tflops": 5 * 2 * batch * d * m / seconds / 1e12}


def bf16_peak(device, n=8192, steps=20):
    """Measured bf16 GEMM throughput (TFLOP/s) of an n×n×n product: the reference for '% of peak'."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    seconds = _timed(lambda: a @ b, device, steps, warmup=3)
    return 2 * n**3 / seconds / 1e12


def _in_subprocess(args):
    cmd = [sys.executable, __file__, "--row", json.dumps(args)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        return {**args, "error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def default_density():
    path = HERE / "density.json"
    return json.loads(path.read_text())["deviation_density"] if path.exists() else 0.166


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--d", type=int, nargs="+", default=[768])
    parser.add_argument("--latents", type=int, nargs="+", default=[3072, 16384, 65536])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--density", type=float, nargs="+", default=None,
                        help="deviation densities; default: the trained BAE's (benchmarks/density.json) and 0.005")
    parser.add_argument("--covariance", nargs="+", default=["none", "dense", "sparse", "auto"],
                        choices=["none", "dense", "sparse", "auto"])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per row (median; one untimed first)")
    parser.add_argument("--max-dense-latents", type=int, default=16384,
                        help="skip dense rows above this m on the CPU (O(b·m²): minutes per step)")
    parser.add_argument("--max-sparse-pairs", type=float, default=5e8,
                        help="skip sparse rows whose expected co-deviating pairs b·(ρm)² exceed this (time and memory)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast with fp32 master weights")
    parser.add_argument("--fused", action="store_true", help="fused Adam")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the rows here")
    parser.add_argument("--row", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    torch.set_num_threads(opts.threads)
    if opts.row:
        print(json.dumps(run_row(**json.loads(opts.row))))
        return None
    device = torch.device(opts.device)
    densities = opts.density or [default_density(), 0.005]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    print(f"device: {name}, torch {torch.__version__}, {opts.threads} threads, batch {opts.batch}, "
          f"bf16={opts.bf16}, fused={opts.fused}, compile={opts.compile}")
    peak = bf16_peak(device) if device.type == "cuda" else None
    if peak:
        print(f"measured bf16 GEMM peak (8192³): {peak:.1f} TFLOP/s")
    rows = []
    header = (f"{'d':>5} {'m':>6} {'rho':>6} {'covariance':>10} {'step s':>8} {'tok/s':>8} {'x none':>7} "
              f"{'peak GB':>8}" + (f" {'TFLOP/s':>8} {'% peak':>7}" if peak else ""))
    print(header)
    for d in opts.d:
        for m in opts.latents:
            for rho in densities:
                base = None
                for cov in opts.covariance:
                    if cov == "dense" and device.type == "cpu" and m > opts.max_dense_latents:
                        continue
                    if cov == "sparse" and opts.batch * (rho * m) ** 2 > opts.max_sparse_pairs:
                        continue
                    row = _in_subprocess(dict(d=d, m=m, batch=opts.batch, density=rho, implementation=cov,
                                              steps=opts.steps, device=str(device), bf16=opts.bf16,
                                              fused=opts.fused, compile_model=opts.compile))
                    rows.append(row)
                    if "error" in row:
                        print(f"{d:>5} {m:>6} {rho:>6.3f} {cov:>10}  error: {row['error']}", flush=True)
                        continue
                    if cov == "none":
                        base = row["step_s"]
                    row["ratio_to_none"] = row["step_s"] / base if base else None
                    line = (f"{d:>5} {m:>6} {row['deviation_density']:>6.3f} {cov:>10} {row['step_s']:>8.3f} "
                            f"{row['tokens_per_s']:>8.0f} "
                            f"{(format(row['ratio_to_none'], '>6.2f') + 'x') if base else '-':>7} "
                            f"{row['peak_memory_gb']:>8.2f}")
                    if peak:
                        line += f" {row['matmul_tflops']:>8.1f} {100 * row['matmul_tflops'] / peak:>6.1f}%"
                    print(line, flush=True)
    if opts.json:
        Path(opts.json).write_text(json.dumps({"device": name, "bf16_peak_tflops": peak, "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main()
