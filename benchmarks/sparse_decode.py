"""Sparse decoding of binary codes: `codes @ Wᵀ` as `r @ Wᵀ + D @ Wᵀ` (D = codes − round(batch mean), sparse)
against the dense product, forward only (inference) and forward + backward (gradients to codes, weight
and bias, as in training), one run.

    PYTHONPATH=. python benchmarks/sparse_decode.py [--latents 16384] [--d 768] [--batch 512] [--threads 2]

Prints the time of each path at several deviation densities ρ and the ratio dense / sparse
(`BAEConfig.decoder_implementation`: dense by default, because on a CPU the sparse path did not win).
"""

import argparse
import time

import torch

from hf_bae import BAEConfig, BinaryAutoencoder


def codes_with_density(b: int, m: int, rho: float, generator: torch.Generator) -> torch.Tensor:
    usual = (torch.rand(m, generator=generator) < 0.5).float()
    flip = torch.rand(b, m, generator=generator) < rho
    return torch.where(flip, 1 - usual, usual)


def time_decode(model: BinaryAutoencoder, codes: torch.Tensor, steps: int, backward: bool) -> float:
    def step():
        if not backward:
            with torch.no_grad():
                model.decode(codes)
            return
        x = codes.clone().requires_grad_(True)
        model.zero_grad(set_to_none=True)
        model.decode(x).square().mean().backward()

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latents", type=int, default=16384)
    parser.add_argument("--d", type=int, default=768)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--density", type=float, nargs="+", default=[0.002, 0.008, 0.02, 0.05, 0.166])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = dict(hidden_size=args.d, latent_size=args.latents)
    dense = BinaryAutoencoder(BAEConfig(decoder_implementation="dense", **config))
    sparse = BinaryAutoencoder(BAEConfig(decoder_implementation="sparse", **config))
    sparse.load_state_dict(dense.state_dict())
    generator = torch.Generator().manual_seed(0)
    print(f"decode forward+backward, d={args.d}, m={args.latents}, batch {args.batch}, {args.threads} threads, torch {torch.__version__}")
    print(f"{'rho':>7} {'pass':>17} {'dense ms':>9} {'sparse ms':>10} {'dense/sparse':>13}")
    for rho in args.density:
        codes = codes_with_density(args.batch, args.latents, rho, generator)
        for backward, name in ((False, "forward (no_grad)"), (True, "forward+backward")):
            t_dense = time_decode(dense, codes, args.steps, backward)
            t_sparse = time_decode(sparse, codes, args.steps, backward)
            print(f"{rho:7.3f} {name:>17} {t_dense * 1e3:9.1f} {t_sparse * 1e3:10.1f} {t_dense / t_sparse:12.2f}x")


if __name__ == "__main__":
    main()
