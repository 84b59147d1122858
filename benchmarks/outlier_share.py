"""How much of a layer's variance, and of each dictionary's error, sits in its largest-norm tokens.

Reads a sweep's held-out tokens (the same split as `benchmarks/sweep.py`) and its saved dictionaries, and
prints per dictionary the FVU on all tokens, the FVU on the tokens below the norm quantile, and the
share of the squared error that the tokens above it hold. Explains a BAE's FVU on a layer with massive
activations (SmolLM2 layer 20: one token in a hundred holds two thirds of the variance).

    python benchmarks/outlier_share.py --cache runs/cache --layer 20 --run runs/sweep_l20 --names bae topk_32
"""

from __future__ import annotations

import argparse

import torch
from transformers import AutoModel

import hf_bae  # noqa: F401  (registers the dictionary classes with AutoModel)
from hf_bae.cache import ActivationCache
from hf_bae.sources import CacheSource


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", required=True)
    p.add_argument("--layer", type=int, required=True)
    p.add_argument("--site", default="resid_post")
    p.add_argument("--run", required=True, help="a benchmarks/sweep.py output folder")
    p.add_argument("--names", nargs="+", required=True, help="dictionaries of the run")
    p.add_argument("--quantile", type=float, default=0.99)
    p.add_argument("--validation_tokens", type=int, default=32768)
    p.add_argument("--train_fraction", type=float, default=0.87)
    opts = p.parse_args(argv)

    key = f"layers.{opts.layer}.{opts.site}"
    source = CacheSource(ActivationCache(opts.cache), [key], train_fraction=opts.train_fraction, seed=0)
    x = source.validation(opts.validation_tokens).activations[key].float()
    norms = x.norm(dim=1)
    median, cut = torch.quantile(norms, torch.tensor([0.5, opts.quantile])).tolist()
    bulk = norms <= cut
    deviation = (x - x.mean(0)).pow(2).sum(1)
    top = f"{1 - opts.quantile:.1%} largest-norm tokens"
    print(f"layer {opts.layer}: token norm median {median:.1f}, q{opts.quantile:g} {cut:.1f}, max {norms.max():.1f}; "
          f"the {top} hold {float(deviation[~bulk].sum() / deviation.sum()):.1%} of the variance\n")
    print(f"| dictionary | FVU | FVU below q{opts.quantile:g} | error share of the {top} |\n|---|---|---|---|")
    bulk_variance = (x[bulk] - x[bulk].mean(0)).pow(2).sum()
    for name in opts.names:
        model = AutoModel.from_pretrained(f"{opts.run}/{name}")
        with torch.no_grad():
            r = torch.cat([model(x[i:i + 4096]).reconstruction for i in range(0, len(x), 4096)])
        error = (x - r).pow(2).sum(1)
        print(f"| {name} | {float(error.sum() / deviation.sum()):.3f} | {float(error[bulk].sum() / bulk_variance):.3f} | "
              f"{float(error[~bulk].sum() / error.sum()):.1%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
