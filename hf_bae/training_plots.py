"""Plots of a training run, drawn from a dictionary's `metrics.jsonl` (matplotlib, Agg backend).

`plot_dictionary_run(folder)` writes `folder/plots/`:

- `loss.png`: training loss and reconstruction MSE, and the validation MSE, against the step (log scale);
- `l0.png`: mean number of active features per token (training and validation);
- `entropy.png` (BAE): minibatch code entropy during training and the validation-set code entropy, in bits;
- `covariance.png` (BAE): mean |off-diagonal covariance| of the codes per pair;
- `frequency_histogram.png`: how many features fire at each frequency (log-spaced bins, log counts),
  with the dead features counted apart and the dense threshold drawn.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from .formats import METRICS_FILE, PLOT_FILES, PLOTS_DIR


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a `metrics.jsonl` file, in order."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _series(records: list[dict], split: str, key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in records
              if r.get("split") == split and isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return [p[0] for p in points], [p[1] for p in points]


def _figure(title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    fig.subplots_adjust(left=0.13, right=0.97, bottom=0.13, top=0.86)  # fixed margins: tight_layout is slow
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    return fig, ax


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.savefig(path)
    plt.close(fig)
    return path


def _curves(records: list[dict], curves: list[tuple[str, str, str]], ylabel: str, title: str, path: Path,
            log: bool = False) -> Path | None:
    fig, ax = _figure(title)
    drawn = False
    for split, key, label in curves:
        x, y = _series(records, split, key)
        if x:
            style = "-" if split == "train" else "o-"
            ax.plot(x, y, style, label=label, markersize=3, linewidth=1.2)
            drawn = True
    if not drawn:
        import matplotlib.pyplot as plt

        plt.close(fig)
        return None
    if log and all(v > 0 for line in ax.get_lines() for v in line.get_ydata()):
        ax.set_yscale("log")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_frequency_histogram(frequencies: torch.Tensor, path: str | Path, dense_threshold: float = 0.1,
                             title: str = "feature firing frequencies") -> Path:
    """Histogram of per-feature firing frequencies on log-spaced bins; dead features (0) are counted apart."""
    freq = frequencies.detach().double().cpu()
    dead = int((freq == 0).sum())
    alive = freq[freq > 0]
    fig, ax = _figure(title)
    if len(alive):
        low = max(min(float(alive.min()), dense_threshold) / 2, 1e-9)
        edges = torch.logspace(math.log10(low), 0.0, 41).tolist()
        ax.hist(alive.tolist(), bins=edges, color="tab:blue", alpha=0.8, label=f"{len(alive)} live features")
        ax.set_xscale("log")
    ax.set_yscale("log")
    ax.axvline(dense_threshold, color="tab:red", linestyle="--", linewidth=1,
               label=f"dense > {dense_threshold:g} ({int((freq > dense_threshold).sum())} features)")
    ax.set_xlabel("firing frequency (fraction of validation tokens, log scale)")
    ax.set_ylabel("number of features (log scale)")
    ax.legend(fontsize=8, title=f"dead (never fired): {dead} of {len(freq)}", title_fontsize=8)
    return _save(fig, Path(path))


def plot_dictionary_run(folder: str | Path, frequencies: torch.Tensor | None = None, dense_threshold: float = 0.1,
                        title: str = "") -> list[Path]:
    """Draw the plots of one dictionary's run into `folder/plots/`; returns the files written."""
    folder = Path(folder)
    records = read_metrics(folder / METRICS_FILE)
    out = folder / PLOTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    prefix = f"{title}\n" if title else ""
    written = [
        _curves(records, [("train", "loss", "train loss (total)"), ("train", "mse", "train MSE"),
                          ("validation", "mse", "validation MSE")],
                "loss (MSE per element)", prefix + "loss", out / PLOT_FILES["loss"], log=True),
        _curves(records, [("train", "l0", "train"), ("validation", "l0", "validation")],
                "L0 (active features per token)", prefix + "L0", out / PLOT_FILES["l0"]),
        _curves(records, [("train", "entropy_bits", "train (minibatch)"),
                          ("validation", "entropy_bits_batch", "validation (minibatch)"),
                          ("validation", "code_entropy_bits", "validation (whole set)")],
                "code entropy (bits)", prefix + "code entropy", out / PLOT_FILES["entropy"]),
        _curves(records, [("train", "mean_abs_offdiagonal_cov", "train"),
                          ("validation", "mean_abs_offdiagonal_cov", "validation")],
                "mean |off-diagonal covariance| per pair", prefix + "covariance of the codes",
                out / PLOT_FILES["covariance"], log=True),
    ]
    if frequencies is not None:
        written.append(plot_frequency_histogram(frequencies, out / PLOT_FILES["frequency_histogram"], dense_threshold,
                                                prefix + "feature firing frequencies"))
    return [p for p in written if p is not None]
