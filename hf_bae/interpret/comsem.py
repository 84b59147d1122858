"""ComSem (Common Semantics): explain each feature with an LLM, judge the explanation, score it.

Protocol (Cho et al., `evaluate_interp.py` + `util/interp_score.py` of the original code):

1. A feature's samples come from the feature atlas (`hf_bae.interpret.atlas`): tokens that joined
   the feature's top-k quota, in corpus order by default.
2. A feature with fewer than `explain_samples + 1` = 6 samples is *not interpretable*: it is reported
   (status "too_few_samples"), never silently dropped.
3. The explainer gets the first `explain_samples` = 5 samples — token, position and sentence, never an
   activation value — with the commonality instruction and few-shot examples (`prompts.py`), and
   answers with one phrase.
4. The judge gets each of the next samples, at most `max_test_samples` = 8, one call per sample,
   with the explanation, and answers Yes or No.
5. Score = fraction of Yes among the judged positive samples (an unparseable answer counts as not
   Yes, as in the original, and is counted separately).

Fixes and additions (labelled as such in every summary):

- Answers are parsed strictly after trimming quotes, markdown and a final period: the original
  compared `answer.lower() == "yes"`, so "Yes." counted as No. Anything but yes/no is
  "unparseable" and counted.
- Beyond the paper: the judge also sees up to `num_negatives` contexts where the feature does not
  fire (`non_activating` in the atlas). An explanation such as "any word" then cannot score well:
  we report specificity, precision and balanced accuracy = (score + specificity) / 2 next to the
  paper's score. The paper's score is unchanged by this.
- The paper gives no score threshold for calling a feature interpretable; `threshold` (default 0.5)
  is ours and is always reported with the count.
- Interpretable by balanced accuracy (`interpretable_count_balanced_accuracy`): balanced accuracy
  >= `balanced_accuracy_threshold` = 0.6, which must be strictly above chance (0.5). An explanation
  the judge accepts on everything ("any word": score 1, specificity 0) has balanced accuracy exactly
  0.5 and never counts; with 8 positives and 8 negatives, 0.6 asks for at least two more right
  answers than chance (e.g. 8/8 Yes and 2/8 No, or 6/8 and 4/8) rather than a single one (0.5625).
- Events: a usually-on BAE code's samples are tokens where it switches off (`event` "off" in the
  atlas) and its negatives are tokens where it is on; both prompts say so (`prompts.EVENT_NOTES`).
- A judge whose every answer in a run is unparseable is not answering the protocol (a base model, a
  wrong chat template, a server answering garbage): its verdicts score nothing (status
  "judge_unparseable") rather than 0 for every feature. When a run scores nothing, the unusable
  answers it got (unparseable explanations and verdicts) are dropped from the response cache, so that
  a rerun against the fixed server asks again instead of replaying them.

`summarize_verdicts` turns verdicts into the summary; the `evaluate` module `metrics/comsem` wraps it.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..configuration import option
from .chat import ChatRequest
from .bootstrap import mean_interval
from .client import LLMClient
from .prompts import explain_prompt, judge_prompt

logger = logging.getLogger(__name__)

ANSWERS = ("yes", "no", "unparseable")
SPLITS = ("positive", "negative")

# Status of a feature after a ComSem run.
STATUS_SCORED = "scored"
STATUS_TOO_FEW = "too_few_samples"
STATUS_EXPLAIN_FAILED = "explain_failed"  # the explainer call failed after its retries (see the ledger)
STATUS_EXPLANATION_UNPARSEABLE = "explanation_unparseable"
STATUS_NO_VERDICTS = "no_verdicts"  # every judge call failed or was not made
STATUS_JUDGE_UNPARSEABLE = "judge_unparseable"  # the judge answered, but never Yes or No, in the whole run
STATUS_NOT_SELECTED = "not_selected"  # outside --max_features
STATUS_PENDING = "pending"  # the explainer call was not made (dry run, or --max_calls reached): a rerun makes it

CHANCE = 0.5  # the balanced accuracy of a judge that ignores the explanation (always Yes, always No, a coin)
BALANCED_ACCURACY_THRESHOLD = 0.6  # interpretable by balanced accuracy: >= this, strictly above CHANCE


def check_balanced_accuracy_threshold(value: float) -> float:
    """`value` if it is a valid balanced-accuracy threshold (in (0.5, 1]), else a ValueError saying why."""
    if not isinstance(value, (int, float)) or not CHANCE < value <= 1.0:
        raise ValueError(f"balanced_accuracy_threshold must be above chance (0.5) and at most 1, got {value!r}: at 0.5 an "
                         "explanation judged Yes on everything would count as interpretable. The default is 0.6.")
    return float(value)




@dataclass
class ComSemConfig:
    """Options of the ComSem protocol. Defaults are the original code's (`evaluate_interp.py`)."""

    _argument_group_name = 'ComSem protocol options'  # its --help section

    explain_samples: int = option(
        5, "Samples shown to the explainer (the original's interpretation_length). A feature needs at least one more to be scored."
    )
    max_test_samples: int = option(8, "Most held-out activating samples judged per feature (the original's max_test_samples).")
    num_negatives: int = option(
        8, "Beyond the paper: non-activating contexts judged per feature, for specificity and balanced accuracy. 0 = the paper's protocol only."
    )
    threshold: float = option(
        0.5, "A feature counts as interpretable when its ComSem score is >= this (the paper states no threshold; this one is ours)."
    )
    balanced_accuracy_threshold: float = option(
        BALANCED_ACCURACY_THRESHOLD, "Beyond the paper: a feature counts as interpretable by balanced accuracy when it is >= this, "
        "which must be above chance (0.5), so that an explanation judged Yes on everything (exactly 0.5) never counts.",
    )
    max_features: int | None = option(
        None, "Interpret a random sample of this many features (seeded by --features_seed; the same subset for every dictionary of equal width). None = all."
    )
    features_seed: int = option(0, "Seed of the --max_features sample.")
    explain_max_tokens: int | None = option(
        None, "Cap on the explainer's answer length in tokens (None = the server's default, as the original)."
    )
    judge_max_tokens: int | None = option(None, "Cap on the judge's answer length in tokens (None = the server's default).")
    temperature: float | None = option(
        None, "Sampling temperature of both calls (None = the server's default, as the original; the local backend then decodes greedily)."
    )

    def __post_init__(self) -> None:
        if self.explain_samples < 1:
            raise ValueError(f"explain_samples must be >= 1, got {self.explain_samples}.")
        if self.max_test_samples < 1:
            raise ValueError(f"max_test_samples must be >= 1, got {self.max_test_samples}.")
        if self.num_negatives < 0:
            raise ValueError(f"num_negatives must be >= 0, got {self.num_negatives}.")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold}.")
        check_balanced_accuracy_threshold(self.balanced_accuracy_threshold)
        if self.max_features is not None and self.max_features < 1:
            raise ValueError(f"max_features must be >= 1 or None, got {self.max_features}.")


# ----------------------------------------------------------------------------------------------
# Parsing
# ----------------------------------------------------------------------------------------------
_PREFIX = re.compile(r"^(the\s+)?(commonality|description|answer)(\s+is)?\s*:\s*", re.IGNORECASE)
_TRIM = " \t\"'`*_“”‘’"


def parse_explanation(text: str | None, max_chars: int = 200) -> str | None:
    """The explanation phrase in an explainer answer, or None if there is none.

    Takes the first non-empty line, drops a leading "Commonality:" (or similar), quotes, markdown
    emphasis and a final period. Answers longer than `max_chars` are not one phrase: None.
    """
    if not text:
        return None
    line = next((ln for ln in text.splitlines() if ln.strip(_TRIM)), "")
    line = _PREFIX.sub("", line.strip(_TRIM)).strip(_TRIM).rstrip(".").strip(_TRIM)
    line = " ".join(line.split())
    if not line or len(line) > max_chars:
        return None
    return line


def parse_answer(text: str | None) -> str:
    """"yes", "no" or "unparseable". Only quotes, markdown, whitespace and final punctuation are trimmed."""
    if not text:
        return "unparseable"
    answer = text.strip(_TRIM).rstrip(".!").strip(_TRIM).lower()
    return answer if answer in ("yes", "no") else "unparseable"


# ----------------------------------------------------------------------------------------------
# Summary (the logic of the `evaluate` metric)
# ----------------------------------------------------------------------------------------------
def _histogram(scores: Sequence[float], num_bins: int) -> dict[str, list]:
    counts = [0] * num_bins
    for s in scores:
        counts[min(int(s * num_bins), num_bins - 1)] += 1
    return {"bin_edges": [round(i / num_bins, 10) for i in range(num_bins + 1)], "counts": counts}


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def per_feature_scores(features: Iterable[int], splits: Iterable[str], answers: Iterable[str]) -> dict[int, dict[str, Any]]:
    """Per-feature counts and scores from verdict triples.

    Returns {feature: {positives, yes, unparseable, score, negatives, rejected, false_yes,
    specificity, balanced_accuracy, precision}} for every feature with at least one verdict.
    """
    counts: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for feature, split, answer in zip(features, splits, answers, strict=True):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
        if answer not in ANSWERS:
            raise ValueError(f"answer must be one of {ANSWERS}, got {answer!r}.")
        c = counts[int(feature)]
        c[f"{split}:{answer}"] += 1
    out = {}
    for feature, c in counts.items():
        pos = c["positive:yes"] + c["positive:no"] + c["positive:unparseable"]
        neg = c["negative:yes"] + c["negative:no"] + c["negative:unparseable"]
        score = c["positive:yes"] / pos if pos else None
        specificity = c["negative:no"] / neg if neg else None
        said_yes = c["positive:yes"] + c["negative:yes"]
        out[feature] = {
            "positives": pos,
            "yes": c["positive:yes"],
            "negatives": neg,
            "rejected": c["negative:no"],
            "false_yes": c["negative:yes"],
            "unparseable": c["positive:unparseable"] + c["negative:unparseable"],
            "score": score,
            "specificity": specificity,
            "balanced_accuracy": (score + specificity) / 2 if score is not None and specificity is not None else None,
            "precision": c["positive:yes"] / said_yes if pos and neg and said_yes else None,
        }
    return out


def summarize_verdicts(
    features: Sequence[int],
    splits: Sequence[str],
    answers: Sequence[str],
    *,
    num_features: int | None = None,
    threshold: float = 0.5,
    num_bins: int = 10,
    balanced_accuracy_threshold: float = BALANCED_ACCURACY_THRESHOLD,
) -> dict[str, Any]:
    """The ComSem summary of a set of judge verdicts.

    Args:
        features / splits / answers: one entry per verdict: the feature index, "positive" (an
            activating sample) or "negative" (a non-activating one, beyond the paper), and the
            parsed answer ("yes", "no" or "unparseable").
        num_features: total number of features of the dictionary; when given, the interpretable
            fraction is over all features (features without verdicts count as not interpretable),
            otherwise over the scored ones.
        threshold: a feature with score >= threshold is interpretable.
        num_bins: bins of the score histogram on [0, 1].
        balanced_accuracy_threshold: a feature with balanced accuracy >= this is interpretable by
            balanced accuracy; it must be strictly above chance (0.5), default 0.6.

    Returns:
        comsem_score (mean of per-feature Yes fractions on positives: the paper's score),
        features_scored, interpretable_count, interpretable_fraction, threshold, histogram,
        unparseable (answers), verdicts, and `beyond_paper` = {features_with_negatives,
        specificity, balanced_accuracy, precision, interpretable_count_balanced_accuracy,
        interpretable_fraction_balanced_accuracy, balanced_accuracy_threshold} (None values when no
        negatives were judged), and `per_feature` = {comsem_score, balanced_accuracy}: the per-feature
        values. Every mean and fraction has a `*_interval`: its 95 % bootstrap interval over features
        (`mean_interval`), None with fewer than two features.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}.")
    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1, got {num_bins}.")
    check_balanced_accuracy_threshold(balanced_accuracy_threshold)
    per = per_feature_scores(features, splits, answers)
    scores = [p["score"] for p in per.values() if p["score"] is not None]
    if num_features is not None and num_features < len(per):
        raise ValueError(f"num_features={num_features} is smaller than the {len(per)} features that have verdicts.")
    interpretable = sum(s >= threshold for s in scores)
    denominator = num_features if num_features is not None else len(scores)
    spec = [p["specificity"] for p in per.values() if p["specificity"] is not None]
    bal = [p["balanced_accuracy"] for p in per.values() if p["balanced_accuracy"] is not None]
    prec = [p["precision"] for p in per.values() if p["precision"] is not None]
    # Over all `denominator` features, an unscored one counting as not interpretable (as the fraction does).
    is_interpretable = [float(x >= threshold) for x in scores] + [0.0] * max(0, denominator - len(scores))
    bal_interpretable = [float(b >= balanced_accuracy_threshold) for b in bal]
    return {
        "comsem_score": _mean(scores),
        "comsem_score_interval": mean_interval(scores),
        "features_scored": len(scores),
        "features_total": num_features,
        "interpretable_count": interpretable,
        "interpretable_fraction": interpretable / denominator if denominator else None,
        "interpretable_fraction_interval": mean_interval(is_interpretable),
        "threshold": threshold,
        "histogram": _histogram(scores, num_bins),
        "verdicts": len(answers),
        "unparseable": sum(p["unparseable"] for p in per.values()),
        # The per-feature values behind the means, for comparisons between dictionaries (`difference_interval`).
        "per_feature": {"comsem_score": scores, "balanced_accuracy": bal},
        "beyond_paper": {
            "features_with_negatives": len(spec),
            "specificity": _mean(spec),
            "specificity_interval": mean_interval(spec),
            "balanced_accuracy": _mean(bal),
            "balanced_accuracy_interval": mean_interval(bal),
            "precision": _mean(prec),
            "interpretable_count_balanced_accuracy": int(sum(bal_interpretable)),
            "interpretable_fraction_balanced_accuracy": _mean(bal_interpretable),
            "interpretable_fraction_balanced_accuracy_interval": mean_interval(bal_interpretable),
            "balanced_accuracy_threshold": balanced_accuracy_threshold,
        },
    }


# ----------------------------------------------------------------------------------------------
# Running the protocol on an atlas
# ----------------------------------------------------------------------------------------------
def _triple(sample: dict[str, Any]) -> tuple[str, int, str]:
    return sample["token"], int(sample["position"]), sample["context"]


def select_features(num_features: int, max_features: int | None, seed: int) -> list[int]:
    """All features, or a seeded random sample of `max_features` of them (sorted).

    The samples are nested (a smaller `max_features` picks a subset of a larger one's), so raising
    --max_features on a rerun reuses every cached call of the smaller run."""
    if max_features is None or max_features >= num_features:
        return list(range(num_features))
    import random

    order = list(range(num_features))
    random.Random(seed).shuffle(order)  # a prefix of one seeded order: nested (random.sample's are not always)
    return sorted(order[:max_features])


@dataclass
class FeatureResult:
    """ComSem outcome of one feature (what is written back into the atlas row)."""

    feature: int
    status: str
    explanation: str | None = None
    comsem_score: float | None = None
    verdicts: list[dict[str, Any]] = field(default_factory=list)
    balanced_accuracy: float | None = None
    judge_failures: int = 0


@dataclass
class ComSemRun:
    """Result of `run_comsem`: per-feature results, the summary and the ledger."""

    results: list[FeatureResult]
    summary: dict[str, Any]
    ledger: dict[str, Any]
    dry_run: bool = False

    def status_counts(self) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for r in self.results:
            counts[r.status] += 1
        return dict(counts)


def run_comsem(atlas, client: LLMClient, config: ComSemConfig | None = None, progress: bool = True) -> ComSemRun:
    """Explain, judge and score the features of a feature atlas.

    Args:
        atlas: a feature atlas (`datasets.Dataset` with one row per feature, see `hf_bae.interpret.atlas`).
        client: the `LLMClient` (backend, cache, budget) used for both the explainer and the judge.
        config: protocol options.

    Returns:
        A `ComSemRun`; `summary` also holds per-status feature counts and the ledger. With
        `client.dry_run`, nothing is sent and `ledger["would_call"]` counts the explainer calls and
        the judge calls of the features whose explanation is already cached;
        `summary["judge_calls_pending_explanations"]` counts the judge calls of the others.
    """
    config = config or ComSemConfig()
    if len(atlas) == 0:
        raise ValueError("The atlas is empty (no features): build it with `hf-bae atlas` over a non-empty corpus.")
    missing = {"feature", "samples", "non_activating"} - set(atlas.column_names)
    if missing:
        raise ValueError(f"This is not a feature atlas: columns {sorted(missing)} are missing. Build one with `hf-bae atlas`.")
    n = len(atlas)
    chosen = set(select_features(n, config.max_features, config.features_seed))
    # Atlases written before events were recorded have no `event` column: their samples are "on" events.
    rows = atlas.select_columns(["feature", "samples", "non_activating"] + (["event"] if "event" in atlas.column_names else []))
    results: dict[int, FeatureResult] = {}
    explain_requests: list[ChatRequest] = []
    explain_rows: list[dict] = []
    explained_by: dict[int, ChatRequest] = {}  # feature -> its explainer request
    for row in rows:
        f = int(row["feature"])
        if f not in chosen:
            results[f] = FeatureResult(f, STATUS_NOT_SELECTED)
        elif len(row["samples"]) < config.explain_samples + 1:
            results[f] = FeatureResult(f, STATUS_TOO_FEW)
        else:
            messages = explain_prompt([_triple(s) for s in row["samples"][: config.explain_samples]], row.get("event"))
            explain_requests.append(ChatRequest.from_messages(messages, max_tokens=config.explain_max_tokens,
                                                              temperature=config.temperature))
            explain_rows.append(row)

    answers = client.complete_many(explain_requests, desc="explain")
    unusable: list[ChatRequest] = []  # answered, but unparseable: forgotten if the run scores nothing
    judge_requests: list[ChatRequest] = []
    judge_meta: list[tuple[int, int, str]] = []  # (feature, sample_index, split)
    judge_pending = 0  # judge calls of features whose explainer call was not made
    for row, request, answer in zip(explain_rows, explain_requests, answers):
        f = int(row["feature"])
        tests = row["samples"][config.explain_samples : config.explain_samples + config.max_test_samples]
        negatives = row["non_activating"][: config.num_negatives]
        if not answer.ok:
            pending = answer.error in ("dry_run", "budget_exhausted")
            results[f] = FeatureResult(f, STATUS_PENDING if pending else STATUS_EXPLAIN_FAILED)
            judge_pending += (len(tests) + len(negatives)) if pending else 0
            continue
        explanation = parse_explanation(answer.text)
        if explanation is None:
            results[f] = FeatureResult(f, STATUS_EXPLANATION_UNPARSEABLE, explanation=answer.text)
            unusable.append(request)
            continue
        results[f] = FeatureResult(f, STATUS_NO_VERDICTS, explanation=explanation)
        explained_by[f] = request
        for split, samples, offset in (("positive", tests, config.explain_samples), ("negative", negatives, 0)):
            for i, sample in enumerate(samples):
                judge_requests.append(ChatRequest.from_messages(
                    judge_prompt(_triple(sample), explanation, row.get("event")), max_tokens=config.judge_max_tokens,
                    temperature=config.temperature))
                judge_meta.append((f, offset + i, split))

    verdict_answers = client.complete_many(judge_requests, desc="judge")
    for (f, index, split), request, answer in zip(judge_meta, judge_requests, verdict_answers):
        if answer.ok:
            verdict = parse_answer(answer.text)
            results[f].verdicts.append({"sample_index": index, "split": split, "answer": verdict})
            if verdict == "unparseable":
                unusable.append(request)
        else:
            results[f].judge_failures += 1

    vf, vs, va = [], [], []
    for r in results.values():
        for v in r.verdicts:
            vf.append(r.feature), vs.append(v["split"]), va.append(v["answer"])
    judge_unparseable = bool(va) and all(a == "unparseable" for a in va)
    if judge_unparseable:  # not one Yes or No: nothing was measured (see the module docstring)
        for f in set(vf):
            results[f].status = STATUS_JUDGE_UNPARSEABLE
            unusable.append(explained_by[f])  # the same broken server explained it: ask again too
        vf, vs, va = [], [], []
    per = per_feature_scores(vf, vs, va)
    for f, p in per.items():
        r = results[f]
        r.comsem_score, r.balanced_accuracy = p["score"], p["balanced_accuracy"]
        if p["score"] is not None:
            r.status = STATUS_SCORED
    # Features that were explained but whose positives all failed stay "no_verdicts".
    summary = summarize_verdicts(vf, vs, va, num_features=len(chosen), threshold=config.threshold,
                                 balanced_accuracy_threshold=config.balanced_accuracy_threshold)
    ordered = [results[f] for f in sorted(results)]
    run = ComSemRun(results=ordered, summary=summary, ledger=client.ledger.to_dict(), dry_run=client.dry_run)
    summary["features_selected"] = len(chosen)
    summary["status_counts"] = run.status_counts()
    summary["features_explained"] = sum(r.explanation is not None and r.status != STATUS_EXPLANATION_UNPARSEABLE
                                        for r in ordered)
    summary["judge_failures"] = sum(r.judge_failures for r in ordered)
    summary["judge_calls_pending_explanations"] = judge_pending
    if judge_unparseable:
        summary["verdicts"] = summary["unparseable"] = sum(len(r.verdicts) for r in ordered)
    summary["unusable_answers_forgotten"] = (client.forget(unusable) if summary["features_scored"] == 0
                                             and not client.dry_run else 0)
    summary["protocol"] = asdict(config)
    return run
