"""The results of an `hf-bae interpret` run: the atlas with its ComSem results filled (`apply_results`),
the per-dictionary summary saved as `comsem.json` beside the atlas (`comsem_report`), and the table
and histogram that compare the dictionaries (`results_table`, `plot_scores`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..formats import AtlasInfo
from ..version import __version__
from .atlas_format import atlas_features
from .comsem import ComSemRun


def apply_results(dataset, run: ComSemRun):
    """The atlas with explanation, comsem_score, verdicts, comsem_status, balanced_accuracy and judge_failures filled."""
    by_feature = {r.feature: r for r in run.results}

    def fill(row):
        r = by_feature.get(row["feature"])
        if r is None:
            return row
        row.update(explanation=r.explanation, comsem_score=r.comsem_score, verdicts=r.verdicts, comsem_status=r.status,
                   balanced_accuracy=r.balanced_accuracy, judge_failures=r.judge_failures)
        return row

    return dataset.map(fill, features=atlas_features(), keep_in_memory=True, desc="writing results")


def comsem_report(name: str, info: AtlasInfo, run: ComSemRun, judge: dict[str, Any]) -> dict[str, Any]:
    """The content of `comsem.json` (read by the Hub model card)."""
    s = run.summary
    return {
        "comsem_score": s["comsem_score"],
        "interpretable_fraction": s["interpretable_fraction"],
        "interpretable_count": s["interpretable_count"],
        "threshold": s["threshold"],
        "features_scored": s["features_scored"],
        "features_interpreted": s["features_selected"],
        "num_features": info.num_features,
        "features_too_few_samples": s["status_counts"].get("too_few_samples", 0),
        "features_explained": s["features_explained"],
        "status_counts": s["status_counts"],
        "unparseable": s["unparseable"],
        "judge_failures": s["judge_failures"],
        "judge_calls_pending_explanations": s["judge_calls_pending_explanations"],
        "histogram": s["histogram"],
        "beyond_paper": s["beyond_paper"],
        "name": name,
        "dictionary_type": info.dictionary_type,
        "dictionary_fingerprint": info.dictionary_fingerprint,
        "dead_features": info.dead_features,
        "dense_features": info.dense_features,
        "dense_threshold": info.dense_threshold,
        "judge": judge,
        "protocol": s["protocol"],
        "atlas": {k: getattr(info, k) for k in ("base_model", "layer", "site", "dataset", "split", "num_texts", "num_tokens",
                                                 "top_k", "selection", "sae_rescale", "active_only", "exclude_special_tokens")},
        "ledger": run.ledger,
        "hf_bae_version": __version__,
    }


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def results_table(reports: Sequence[dict[str, Any]]) -> str:
    """A markdown table comparing dictionaries side by side."""
    columns = [
        ("dictionary", lambda r: r["name"]),
        ("type", lambda r: r["dictionary_type"]),
        ("features", lambda r: r["num_features"]),
        ("dead", lambda r: r["dead_features"]),
        ("dense", lambda r: r["dense_features"]),
        ("interpreted", lambda r: r["features_interpreted"]),
        ("too few samples", lambda r: r["features_too_few_samples"]),
        ("scored", lambda r: r["features_scored"]),
        ("ComSem score", lambda r: _fmt(r["comsem_score"])),
        (f"interpretable (score ≥ {reports[0]['threshold'] if reports else 0.5})", lambda r: r["interpretable_count"]),
        ("interpretable fraction", lambda r: _fmt(r["interpretable_fraction"])),
        ("specificity*", lambda r: _fmt(r["beyond_paper"]["specificity"])),
        ("balanced accuracy*", lambda r: _fmt(r["beyond_paper"]["balanced_accuracy"])),
        ("unparseable", lambda r: r["unparseable"]),
        ("failed calls", lambda r: r["judge_failures"] + r["status_counts"].get("explain_failed", 0)),
    ]
    lines = ["| " + " | ".join(c for c, _ in columns) + " |", "|" + "---|" * len(columns)]
    for r in reports:
        lines.append("| " + " | ".join(str(get(r)) for _, get in columns) + " |")
    lines.append("")
    lines.append("ComSem score: mean over scored features of the fraction of held-out activating samples the judge accepts "
                 "(the paper's). *Beyond the paper: judged on non-activating samples too. Compare with the random "
                 "baseline under the same judge.")
    return "\n".join(lines)


def plot_scores(reports: Sequence[dict[str, Any]], path: Path) -> Path:
    """Grouped histogram of per-feature ComSem scores, one colour per dictionary."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4))
    edges = reports[0]["histogram"]["bin_edges"]
    width = (edges[1] - edges[0]) / (len(reports) + 1)
    for i, r in enumerate(reports):
        counts = np.asarray(r["histogram"]["counts"], dtype=float)
        total = counts.sum()
        ax.bar(np.asarray(edges[:-1]) + (i + 0.5) * width, counts / total if total else counts, width=width,
               label=f"{r['name']} (mean {_fmt(r['comsem_score'], 2)})")
    ax.set_xlabel("ComSem score of a feature (fraction of Yes on held-out samples)")
    ax.set_ylabel("fraction of scored features")
    ax.set_xlim(0, 1)
    ax.legend()
    ax.set_title("ComSem scores by dictionary")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
