"""Train many dictionaries side by side on the same cached tokens; one table and Pareto plots.

Every dictionary of a grid is trained by one `hf_bae.training.Trainer` pass over the same batches of an
activation cache (`hf-bae harvest`), then evaluated on the cache's held-out tokens: FVU, L0, dead and
dense features (by frequency, and for a BAE by deviation from the code's usual value), constant codes,
code entropy, CE-loss score and KL with the reconstruction spliced into the language model, and, for
binary codes, how independent they are (mean |correlation| and the largest pairwise mutual information
between live codes). Writes `OUTPUT_DIR/results.json`, `results.md` and `plots/*.png`.

    hf-bae harvest --output_dir runs/cache --sites layers.6.resid_post layers.20.resid_post --num_tokens 1050000 --dtype float16
    python benchmarks/sweep.py --cache runs/cache --layer 6 --grid full --output_dir runs/sweep_l6

Grids (`--grid`, see GRIDS below): `probe` (BAE recipe hypotheses), `full` (the default BAE over three
seeds, its ablations, the BAE at 1, 2 and 4 bits, the original setting, and the baselines over their
sparsity knobs), `late` (a smaller full grid for a second layer, same loss weights), `long` (the default
BAE against TopK at a similar L0 over a longer budget). `--only NAME ...` trains a subset.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from hf_bae import BAEConfig, BinaryAutoencoder, SAEConfig, SparseAutoencoder
from hf_bae.activations import ActivationCache, load_language_model
from hf_bae.presets import ORIGINAL_BAE
from hf_bae.sources import CacheSource
from hf_bae.training import Trainer, TrainingArguments

DEFAULT_BAE: dict = {}  # the BAEConfig defaults: the recipe this sweep chose
BAE_NO_COVARIANCE = {"covariance_weight": 0.0}

GRIDS: dict[str, dict[str, tuple[str, dict]]] = {
    "probe": {
        "bae": ("bae", {}),
        "bae_bias_lr_1": ("bae", {"encoder_bias_lr_scale": 1.0}),
        "bae_bias_lr_30": ("bae", {"encoder_bias_lr_scale": 30.0}),
        "bae_no_unit_norm": ("bae", {"unit_norm_encoder": False}),
        "bae_no_cov": ("bae", BAE_NO_COVARIANCE),
    },
    "full": {
        "bae": ("bae", DEFAULT_BAE),
        "bae_seed1": ("bae", {"_seed": 1}),
        "bae_seed2": ("bae", {"_seed": 2}),
        "bae_ent_3e-4": ("bae", {"entropy_weight": 3e-4}),
        "bae_ent_1e-2": ("bae", {"entropy_weight": 1e-2}),
        "bae_bias_lr_1": ("bae", {"encoder_bias_lr_scale": 1.0}),
        "bae_bias_lr_30": ("bae", {"encoder_bias_lr_scale": 30.0}),
        "bae_no_cov": ("bae", BAE_NO_COVARIANCE),
        "bae_2bit": ("bae", {"bits": 2}),
        "bae_4bit": ("bae", {"bits": 4}),
        "bae_original": ("bae", dict(ORIGINAL_BAE)),
        **{f"topk_{k}": ("topk", {"k": k}) for k in (8, 16, 32, 64, 128)},
        "topk_32_no_auxk": ("topk", {"k": 32, "auxk_weight": 0.0}),
        **{f"relu_{w:g}": ("relu", {"l1_weight": w}) for w in (0.003, 0.01, 0.03)},
        "jumprelu": ("jumprelu", {}),
    },
    "late": {
        "bae": ("bae", DEFAULT_BAE),
        "bae_no_cov": ("bae", BAE_NO_COVARIANCE),
        "bae_2bit": ("bae", {"bits": 2}),
        **{f"topk_{k}": ("topk", {"k": k}) for k in (16, 32, 64)},
        "relu_0.01": ("relu", {"l1_weight": 0.01}),
        "jumprelu": ("jumprelu", {}),
    },
    "long": {
        "bae": ("bae", DEFAULT_BAE),
        "topk_64": ("topk", {"k": 64}),
        "topk_128": ("topk", {"k": 128}),
    },
}
_ACTIVATION = {"topk": "topk", "relu": "relu", "jumprelu": "jumprelu"}


def build(kind: str, options: dict, hidden_size: int, expansion_factor: int, provenance: dict, seed: int):
    """A fresh dictionary of `kind` with `options` over the config defaults (`_seed` picks its init seed)."""
    options = dict(options)
    torch.manual_seed(options.pop("_seed", seed))
    common = dict(hidden_size=hidden_size, expansion_factor=expansion_factor, **provenance)
    if kind == "bae":
        return BinaryAutoencoder(BAEConfig(**common, **options))
    return SparseAutoencoder(SAEConfig(**common, activation=_ACTIVATION[kind], **options))


@torch.no_grad()
def independence(model, activations: torch.Tensor, batch_size: int = 4096) -> dict:
    """Mean |correlation| and the largest pairwise mutual information (bits) between live binary codes."""
    codes = torch.cat([model.encode(activations[i:i + batch_size]).double() for i in range(0, len(activations),
                                                                                              batch_size)])
    n = codes.shape[0]
    p = codes.mean(0)
    live = (p > 0) & (p < 1)
    c = codes[:, live]
    p = p[live]
    if c.shape[1] < 2:
        return {"mean_abs_correlation": float("nan"), "max_pairwise_mi_bits": float("nan"), "live_codes": int(live.sum())}
    p11 = (c.T @ c) / n
    cov = p11 - p[:, None] * p[None, :]
    std = (p * (1 - p)).sqrt()
    corr = cov / (std[:, None] * std[None, :])
    off = ~torch.eye(len(p), dtype=torch.bool)
    # Mutual information of each pair of Bernoulli codes from their joint table.
    p10 = p[:, None] - p11
    p01 = p[None, :] - p11
    p00 = 1 - p11 - p10 - p01
    mi = torch.zeros_like(p11)
    for joint, a, b in ((p11, p[:, None], p[None, :]), (p10, p[:, None], 1 - p[None, :]),
                        (p01, 1 - p[:, None], p[None, :]), (p00, 1 - p[:, None], 1 - p[None, :])):
        joint = joint.clamp_min(0)
        mi += torch.where(joint > 0, joint * torch.log2(joint.clamp_min(1e-300) / (a * b)), torch.zeros_like(joint))
    return {"mean_abs_correlation": float(corr[off].abs().mean()), "max_pairwise_mi_bits": float(mi[off].max()),
            "live_codes": int(live.sum())}


def firing_entropy_bits(frequencies: torch.Tensor) -> float:
    """Σ_j H_b(p_j) of the features' firing indicators (the SAE analogue of a BAE's code entropy)."""
    p = frequencies.double().clamp(0, 1)
    h = -(p * torch.log2(p.clamp_min(1e-300)) + (1 - p) * torch.log2((1 - p).clamp_min(1e-300)))
    return float(h.sum())


COLUMNS = [("kind", "kind", "{}"), ("fvu", "FVU", "{:.3f}"), ("l0", "L0", "{:.1f}"), ("dead_fraction", "dead", "{:.1%}"),
           ("dense_fraction", "dense (freq)", "{:.1%}"), ("dense_deviation_fraction", "dense (dev)", "{:.1%}"),
           ("constant_code_fraction", "constant", "{:.1%}"), ("entropy_bits", "entropy (bits)", "{:.0f}"),
           ("ce_loss_score", "CE score", "{:.3f}"), ("kl_divergence", "KL", "{:.4f}"),
           ("mean_abs_correlation", "mean abs corr", "{:.4f}"), ("max_pairwise_mi_bits", "max MI (bits)", "{:.3f}")]


def table(results: dict[str, dict]) -> str:
    """The results as a Markdown table."""
    header = "| dictionary | " + " | ".join(c[1] for c in COLUMNS) + " |"
    lines = [header, "|" + "---|" * (len(COLUMNS) + 1)]
    for name, r in results.items():
        cells = [fmt.format(r[k]) if isinstance(r.get(k), (int, float, str)) and not (
            isinstance(r.get(k), float) and math.isnan(r[k])) else "–" for k, _, fmt in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: dict[str, dict], folder: Path, title: str) -> None:
    """FVU vs L0, FVU vs dense fraction, CE-loss score vs code entropy, one colour per kind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    colours = {"bae": "tab:red", "topk": "tab:blue", "relu": "tab:green", "jumprelu": "tab:purple"}
    panels = [("l0", "fvu", "L0 (active features per token)", "FVU", "fvu_vs_l0.png", True),
              ("dense_any", "fvu", "dense features (BAE: by deviation; SAE: by frequency)", "FVU", "fvu_vs_dense.png",
               False),
              ("entropy_bits", "ce_loss_score", "code entropy (bits; SAE: of the firing indicators)", "CE-loss score",
               "ce_vs_entropy.png", True)]
    for x_key, y_key, x_label, y_label, filename, log_x in panels:
        fig, ax = plt.subplots(figsize=(6.4, 4.6))
        for name, r in results.items():
            x = r.get("dense_deviation_fraction", r.get("dense_fraction")) if x_key == "dense_any" else r.get(x_key)
            y = r.get(y_key)
            if x is None or y is None:
                continue
            ax.scatter(x, y, color=colours.get(r["kind"], "k"), label=r["kind"], s=36)
            ax.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles))
        ax.legend(unique.values(), unique.keys(), fontsize=8)
        if log_x:
            ax.set_xscale("symlog" if x_key == "entropy_bits" else "log")
        ax.set_xlabel(x_label)
        ax.set_ylabel(y_label)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(folder / filename, dpi=110)
        plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", required=True, help="activation cache folder (hf-bae harvest)")
    parser.add_argument("--layer", type=int, required=True, help="layer of the cache to train on")
    parser.add_argument("--site", default="resid_post")
    parser.add_argument("--grid", choices=sorted(GRIDS), default="full")
    parser.add_argument("--only", nargs="*", help="train only these names of the grid")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--max_tokens", type=int, default=0, help="training tokens (0: one epoch of the split)")
    parser.add_argument("--train_fraction", type=float, default=0.87)
    parser.add_argument("--batch_size", type=int, default=1024)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--expansion_factor", type=int, default=4)
    parser.add_argument("--validation_tokens", type=int, default=32768)
    parser.add_argument("--splice_rows", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    opts = parser.parse_args(argv)
    if opts.threads:
        torch.set_num_threads(opts.threads)

    out = Path(opts.output_dir)
    grid = {k: v for k, v in GRIDS[opts.grid].items() if not opts.only or k in opts.only}
    key = f"layers.{opts.layer}.{opts.site}"
    cache = ActivationCache(opts.cache)
    source = CacheSource(cache, [key], train_fraction=opts.train_fraction, seed=opts.seed)
    provenance = {"layer": opts.layer, "site": opts.site, **source.provenance()}
    hidden = source.hidden_size(key)
    dictionaries = {name: build(kind, options, hidden, opts.expansion_factor, provenance, opts.seed)
                    for name, (kind, options) in grid.items()}
    lm = tokenizer = None
    if opts.splice_rows:
        lm, tokenizer = load_language_model(cache.manifest.model, revision=cache.manifest.revision)
    args = TrainingArguments(output_dir=str(out), overwrite=True, batch_size=opts.batch_size,
                             learning_rate=opts.learning_rate, max_tokens=opts.max_tokens,
                             num_epochs=0 if opts.max_tokens else 1, validate_every=0, log_every=20,
                             checkpoint_every=0, validation_tokens=opts.validation_tokens,
                             splice_rows=opts.splice_rows, seed=opts.seed, plots=False, cache=opts.cache)
    started = time.perf_counter()
    trainer = Trainer(args, dictionaries, source, inputs={n: (key, None) for n in dictionaries}, language_model=lm,
                      tokenizer=tokenizer, run_options={"sweep": opts.grid, "grid": {k: list(v) for k, v in grid.items()},
                                                        **vars(opts)})
    results = trainer.train()
    seconds = time.perf_counter() - started
    held_out = trainer.validation.activations[key]
    for name, model in dictionaries.items():
        r = results[name]
        r["kind"] = grid[name][0]
        r["options"] = grid[name][1]
        if isinstance(model, BinaryAutoencoder):
            r["entropy_bits"] = r.get("code_entropy_bits")
            r.update(independence(model, held_out))
        else:
            r["entropy_bits"] = firing_entropy_bits(trainer.last_results[name]["frequencies"])
    summary = {"grid": opts.grid, "cache": opts.cache, "layer": opts.layer, "site": opts.site,
               "training_tokens": trainer.tokens, "steps": trainer.step, "batch_size": opts.batch_size,
               "learning_rate": opts.learning_rate, "held_out_tokens": int(held_out.shape[0]),
               "seconds": seconds, "threads": torch.get_num_threads(), "dictionaries": results}
    (out / "results.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    title = (f"{cache.manifest.model} layer {opts.layer} {opts.site}, {trainer.tokens:,} tokens, "
             f"m = {opts.expansion_factor}d")
    text = (f"{title}; {seconds / 60:.1f} min for {len(dictionaries)} dictionaries "
            f"({torch.get_num_threads()} threads); held-out {held_out.shape[0]:,} tokens\n\n{table(results)}\n")
    (out / "results.md").write_text(text)
    plot(results, out / "plots", title)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
