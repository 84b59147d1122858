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
from hf_bae.activations import load_language_model
from hf_bae.cache import ActivationCache
from hf_bae.entropy import EntropyAccumulator, encode_codes
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
        # The same 2,304 codes per token: 1,152 two-bit or 576 four-bit features.
        "bae_2bit": ("bae", {"bits": 2, "expansion_factor": 2}),
        "bae_4bit": ("bae", {"bits": 4, "expansion_factor": 1}),
        "bae_original": ("bae", dict(ORIGINAL_BAE)),
        **{f"topk_{k}": ("topk", {"k": k}) for k in (8, 16, 32, 64, 128)},
        "topk_32_no_auxk": ("topk", {"k": 32, "auxk_weight": 0.0}),
        **{f"relu_{w:g}": ("relu", {"l1_weight": w}) for w in (0.003, 0.01, 0.03)},
        "jumprelu": ("jumprelu", {}),
    },
    "late": {
        "bae": ("bae", DEFAULT_BAE),
        "bae_no_cov": ("bae", BAE_NO_COVARIANCE),
        "bae_2bit": ("bae", {"bits": 2, "expansion_factor": 2}),
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
    """A fresh dictionary of `kind` with `options` over the config defaults (`_seed` picks its init seed;
    `expansion_factor` overrides the sweep's)."""
    options = dict(options)
    torch.manual_seed(options.pop("_seed", seed))
    common = dict(hidden_size=hidden_size, expansion_factor=options.pop("expansion_factor", expansion_factor),
                  **provenance)
    if kind == "bae":
        return BinaryAutoencoder(BAEConfig(**common, **options))
    return SparseAutoencoder(SAEConfig(**common, activation=_ACTIVATION[kind], **options))


def independence(model, activations: torch.Tensor) -> dict:
    """Mean |correlation| and the largest pairwise mutual information (bits) between all live binary codes,
    and the Miller–Madow code entropy: `hf_bae.entropy`'s estimator over every code pair."""
    codes = encode_codes(model, activations)
    accumulator = EntropyAccumulator(codes.shape[1], bits_per_feature=model.config.bits, num_bootstrap=0,
                                     correlation_codes=codes.shape[1])
    accumulator.update(codes)
    report = accumulator.report()
    return {"mean_abs_correlation": report.mean_abs_correlation,
            "max_pairwise_mi_bits": report.max_pairwise_mutual_information_bits,
            "live_codes": report.live_codes, "miller_madow_bits": report.miller_madow_bits}


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


def write_report(summary: dict, out: Path, title: str, timing: str) -> str:
    """results.json, results.md and plots/ of one sweep summary; returns the Markdown text."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    text = f"{title}; {timing}\n\n{table(summary['dictionaries'])}\n"
    (out / "results.md").write_text(text)
    plot(summary["dictionaries"], out / "plots", title)
    return text


def merge(folders: list[str], out: Path) -> int:
    """One report from several sweeps on the same tokens (e.g. a grid re-run in part after a fix)."""
    runs = [json.loads((Path(f) / "results.json").read_text()) for f in folders]
    for key in ("cache", "layer", "site", "training_tokens", "batch_size", "learning_rate", "held_out_tokens"):
        if len({str(r[key]) for r in runs}) > 1:
            raise SystemExit(f"sweep.py: error: the runs differ in {key}; only sweeps on the same tokens merge.")
    dictionaries: dict[str, dict] = {}
    for r in runs:
        dictionaries.update(r["dictionaries"])
    first = runs[0]
    summary = {**first, "grid": "+".join(r["grid"] for r in runs), "seconds": sum(r["seconds"] for r in runs),
               "merged_from": list(folders), "dictionaries": dictionaries}
    title = f"{first['cache']} layer {first['layer']} {first['site']}, {first['training_tokens']:,} tokens"
    timing = " + ".join(f"{r['seconds'] / 60:.1f} min for {len(r['dictionaries'])}" for r in runs) + " dictionaries"
    print(write_report(summary, out, title, timing))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", help="activation cache folder (hf-bae harvest)")
    parser.add_argument("--layer", type=int, help="layer of the cache to train on")
    parser.add_argument("--merge", nargs="+", metavar="RUN_DIR",
                        help="instead of training: one table and plots from these sweeps' results.json (same cache, "
                             "layer and budget; a later folder's dictionary replaces an earlier one of the same name)")
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
    if opts.merge:
        return merge(opts.merge, Path(opts.output_dir))
    if opts.cache is None or opts.layer is None:
        parser.error("--cache and --layer are needed to train (or give --merge)")
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
    title = (f"{cache.manifest.model} layer {opts.layer} {opts.site}, {trainer.tokens:,} tokens, "
             f"m = {opts.expansion_factor}d")
    timing = (f"{seconds / 60:.1f} min for {len(dictionaries)} dictionaries ({torch.get_num_threads()} threads); "
              f"held-out {held_out.shape[0]:,} tokens")
    print(write_report(summary, out, title, timing))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
