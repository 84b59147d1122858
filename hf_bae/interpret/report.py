"""The results of an `hf-bae interpret` run: the atlas with its ComSem results filled (`apply_results`),
the per-dictionary summary saved as `comsem.json` beside the atlas (`comsem_report`), and the table
and histogram that compare the dictionaries (`results_table`, `plot_scores`), with each trained
dictionary's difference to the random baseline (`compare_with_random`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..formats import AtlasInfo
from ..version import __version__
from .atlas_format import atlas_features
from .calibration import describe as describe_calibration
from .calibration import short as short_calibration
from .bootstrap import difference_interval
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


def comsem_report(name: str, info: AtlasInfo, run: ComSemRun, judge: dict[str, Any],
                  judge_calibration: dict[str, Any] | None = None) -> dict[str, Any]:
    """The content of `comsem.json` (read by the Hub model card). `judge_calibration`: the judge's calibration
    (`calibration.summary`), None when the judge was not calibrated (then it says so)."""
    s = run.summary
    measured = s["features_scored"] > 0  # else an interpretable fraction of 0.0 would read as a measurement
    return {
        "comsem_score": s["comsem_score"],
        "comsem_score_interval": s.get("comsem_score_interval"),
        "interpretable_fraction": s["interpretable_fraction"] if measured else None,
        "interpretable_fraction_interval": s.get("interpretable_fraction_interval") if measured else None,
        "interpretable_count": s["interpretable_count"] if measured else None,
        "coverage": f"{s['features_scored']} of {s['features_selected']} features scored",
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
        "per_feature": s["per_feature"],
        "name": name,
        "dictionary_type": info.dictionary_type,
        "dictionary_fingerprint": info.dictionary_fingerprint,
        "dead_features": info.dead_features,
        "dense_features": info.dense_features,
        "dense_threshold": info.dense_threshold,
        "judge": judge,
        "judge_calibration": judge_calibration,
        "judge_calibration_note": describe_calibration(judge_calibration),
        "protocol": s["protocol"],
        "atlas": {k: getattr(info, k) for k in ("base_model", "layer", "site", "dataset", "split", "num_texts", "num_tokens",
                                                 "top_k", "selection", "sae_rescale", "active_only", "exclude_special_tokens")},
        "ledger": run.ledger,
        "hf_bae_version": __version__,
    }


# What to do when every call of a run failed with one kind (`hf_bae.interpret.chat.FAILURE_KINDS`).
FAILURE_ADVICE = {
    "connection": "nothing answers at the endpoint: start the server, or fix --base_url",
    "timeout": "the endpoint did not answer within --timeout: raise --timeout, lower --concurrency, or check the server",
    "rate_limited": "the endpoint kept rate-limiting: lower --concurrency, raise --max_retries, or retry later",
    "server_error": "the endpoint answered 5xx errors: check the server's logs",
    "malformed": "the endpoint's answers are not chat completions: check that --base_url is an OpenAI-compatible /v1 endpoint",
    "bad_request": "the endpoint refused the requests (HTTP 4xx): check --llm and the server's logs",
    "budget_exhausted": "--max_calls was reached before a feature was judged: raise it (a rerun reuses the cached answers)",
}


def nothing_scored_message(reports: Sequence[dict[str, Any]], ledgers: dict[str, dict[str, Any]], endpoint: str,
                           ledger_path: Path) -> str:
    """One line saying why the dictionaries in `reports` got no feature scored, and what to do."""
    names = ", ".join(r["name"] for r in reports)
    selected = sum(r["features_interpreted"] for r in reports)
    failed: dict[str, int] = {}
    for r in reports:
        for kind, n in ledgers.get(r["name"], {}).get("failed", {}).items():
            failed[kind] = failed.get(kind, 0) + n
    calls = sum(ledgers.get(r["name"], {}).get("requests", 0) for r in reports)
    unparseable = sum(r["unparseable"] for r in reports)
    explained_badly = sum(r["status_counts"].get("explanation_unparseable", 0) for r in reports)
    too_few = sum(r["features_too_few_samples"] for r in reports)
    head = f"nothing was scored for {names} (0 of {selected} features)"
    if failed:
        kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(failed.items(), key=lambda kv: -kv[1]))
        worst = max(failed, key=failed.get)
        advice = FAILURE_ADVICE.get(worst, "see the ledger")
        what = f"{sum(failed.values())} of {calls} LLM requests to {endpoint} failed ({kinds}): {advice}"
    elif unparseable or explained_badly:
        what = (f"{endpoint} answered, but {unparseable} judge answers were never Yes or No and {explained_badly} "
                "explanations were not one phrase: check --llm (a chat / instruct model) and the server's chat template; "
                "these answers were not kept in the cache")
    elif too_few == selected:
        what = ("every feature had too few samples: build the atlas on more texts (--num_texts, --samples_per_feature) "
                "or lower --explain_samples")
    else:
        what = f"{calls} LLM requests gave no verdict"
    return f"{head}: {what}. No comsem.json was written; the calls are counted in {ledger_path}."


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _fmt_interval(value: Any, interval: Sequence[float] | None) -> str:
    """A value with its bootstrap interval, e.g. "0.412 [0.350, 0.471]" (reports from before intervals: the value)."""
    return _fmt(value) if value is None or not interval else f"{_fmt(value)} [{interval[0]:.3f}, {interval[1]:.3f}]"


def _fmt_difference(value: Sequence[float] | None) -> str:
    """"+0.111 [+0.033, +0.186]" from `difference_interval`'s [difference, low, high]; "–" without one."""
    return "–" if not value else f"{value[0]:+.3f} [{value[1]:+.3f}, {value[2]:+.3f}]"


def compare_with_random(reports: Sequence[dict[str, Any]]) -> None:
    """Add `vs_random` = {comsem_score, balanced_accuracy}: [difference, low, high] (`difference_interval`) to
    every report of a trained dictionary, against the random baseline's report among them (if any)."""
    baseline = next((r for r in reports if r["dictionary_type"] == "random" and r.get("per_feature")), None)
    if baseline is None:
        return
    for r in reports:
        if r is not baseline and r["dictionary_type"] != "random" and r.get("per_feature"):
            r["vs_random"] = {key: difference_interval(r["per_feature"][key], baseline["per_feature"][key])
                              for key in ("comsem_score", "balanced_accuracy")}


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
        ("ComSem score", lambda r: _fmt_interval(r["comsem_score"], r.get("comsem_score_interval"))),
        (f"interpretable (score ≥ {reports[0]['threshold'] if reports else 0.5})", lambda r: r["interpretable_count"]),
        ("interpretable fraction", lambda r: _fmt_interval(r["interpretable_fraction"], r.get("interpretable_fraction_interval"))),
        ("specificity*", lambda r: _fmt_interval(r["beyond_paper"]["specificity"], r["beyond_paper"].get("specificity_interval"))),
        ("balanced accuracy*", lambda r: _fmt_interval(r["beyond_paper"]["balanced_accuracy"],
                                                       r["beyond_paper"].get("balanced_accuracy_interval"))),
        ("ComSem − random", lambda r: _fmt_difference(r.get("vs_random", {}).get("comsem_score"))),
        ("balanced accuracy* − random", lambda r: _fmt_difference(r.get("vs_random", {}).get("balanced_accuracy"))),
        (f"interpretable* (balanced accuracy ≥ {reports[0]['beyond_paper'].get('balanced_accuracy_threshold', 0.6) if reports else 0.6})",
         lambda r: r["beyond_paper"].get("interpretable_count_balanced_accuracy")),
        ("unparseable", lambda r: r["unparseable"]),
        ("failed calls", lambda r: r["judge_failures"] + r["status_counts"].get("explain_failed", 0)),
        ("judge balanced accuracy (calibration)", lambda r: short_calibration(r.get("judge_calibration"))),
    ]
    lines = ["| " + " | ".join(c for c, _ in columns) + " |", "|" + "---|" * len(columns)]
    for r in reports:
        lines.append("| " + " | ".join(str(get(r)) for _, get in columns) + " |")
    lines.append("")
    lines.append("ComSem score: mean over scored features of the fraction of held-out activating samples the judge accepts "
                 "(the paper's). *Beyond the paper: judged on non-activating samples too. Brackets: 95 % bootstrap "
                 "intervals over features. − random: the difference to the random baseline under the same judge, with its "
                 "bootstrap interval (above 0: ahead of random by more than feature sampling explains).")
    judges = {}
    for r in reports:
        judges.setdefault(r.get("judge", {}).get("backend", "judge"), r.get("judge_calibration"))
    for judge, calibration in judges.items():
        lines.append("")
        lines.append(f"Judge {judge}: {describe_calibration(calibration)}.")
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
