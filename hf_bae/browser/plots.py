"""The overview's two histograms as PNG bytes: firing frequencies (log scale, with the dense threshold)
and ComSem scores, one line per atlas. matplotlib is imported only when a plot is drawn."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .atlas_view import Atlas


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(7, 3.6), dpi=100)


def frequency_plot(atlases: Sequence[Atlas]) -> bytes:
    """Histogram of the live features' firing frequencies (dead ones are counted in the legend)."""
    fig, ax = _figure()
    positive = [a.index.frequency[a.index.frequency > 0] for a in atlases]
    lo = min((float(p.min()) for p in positive if len(p)), default=1e-6)
    bins = np.logspace(math.floor(math.log10(lo)), 0, 41)
    for atlas, p in zip(atlases, positive):
        dead = int(atlas.index.is_dead.sum())
        ax.hist(p, bins=bins, histtype="step", linewidth=1.8, label=f"{atlas.name} ({dead:,} dead, not shown)")
        ax.axvline(atlas.dense_threshold, color="grey", linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("firing frequency (fraction of tokens, log scale)")
    ax.set_ylabel("features")
    ax.set_title("Feature frequencies (dotted: dense threshold)")
    ax.legend(fontsize=8)
    return _png(fig)


def score_plot(atlases: Sequence[Atlas]) -> bytes:
    """Histogram of the ComSem scores (or a note saying there are none)."""
    fig, ax = _figure()
    any_scored = False
    for atlas in atlases:
        s = atlas.index.comsem_score[~np.isnan(atlas.index.comsem_score)]
        if len(s):
            any_scored = True
            ax.hist(s, bins=np.linspace(0, 1, 11), histtype="step", linewidth=1.8, label=f"{atlas.name} ({len(s):,} scored)")
    if any_scored:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "No ComSem scores in this atlas\n(run `hf-bae interpret`)", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlim(0, 1)
    ax.set_xlabel("ComSem score (fraction of held-out samples judged 'yes')")
    ax.set_ylabel("features")
    ax.set_title("ComSem score distribution")
    return _png(fig)


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
