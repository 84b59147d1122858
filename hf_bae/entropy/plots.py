"""What the entropy studies write: dict rows as CSV (`write_csv`) and an entropy curve with its
bootstrap band, optionally with the LM's accuracy on a second axis (`plot_entropy_curve`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .estimator import EntropyReport


def write_csv(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write dict rows (same keys) as CSV."""
    import csv

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def plot_entropy_curve(x: Sequence[float], reports: Sequence[EntropyReport], path: str | Path, *, xlabel: str,
                       title: str, accuracy: Sequence[float] | None = None, xticklabels: Sequence[str] | None = None
                       ) -> Path:
    """Bits against `x`: the Miller–Madow estimate with its bootstrap band and the plug-in sum; with
    `accuracy`, the LM's accuracy on a second axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    fig.subplots_adjust(left=0.13, right=0.86 if accuracy is not None else 0.97, bottom=0.14, top=0.86)
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    mm = [r.miller_madow_bits for r in reports]
    level = f"{reports[0].confidence:.0%}" if reports else ""
    ax.fill_between(x, [r.ci_low for r in reports], [r.ci_high for r in reports], color="tab:blue", alpha=0.2,
                    label=f"{level} bootstrap interval")
    ax.plot(x, mm, "o-", color="tab:blue", markersize=4, label="entropy (Miller–Madow)")
    ax.plot(x, [r.total_bits for r in reports], "--", color="tab:blue", linewidth=1, alpha=0.7,
            label="plug-in Σ H(p_j)")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("feature-set entropy (bits)")
    if xticklabels is not None:
        ax.set_xticks(list(x))
        ax.set_xticklabels(xticklabels, fontsize=8)
    elif all(float(v).is_integer() for v in x):  # layers, positions, shots: no "1.25 demonstrations" ticks
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    handles, labels = ax.get_legend_handles_labels()
    if accuracy is not None:
        ax2 = ax.twinx()
        ax2.plot(x, accuracy, "s-", color="tab:orange", markersize=4, label="LM accuracy")
        ax2.set_ylabel("accuracy (fraction correct)")
        ax2.set_ylim(-0.02, 1.02)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, fontsize=8, loc="best")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
