"""Judge calibration: how often a ComSem judge is right on items whose answer is known by construction.

The ComSem score is only as good as its judge, and nothing in the protocol measures the judge itself
(a judge that answers Yes to everything gives every explanation a perfect score). The calibration set
shipped with the package (`data/calibration.jsonl`) holds (explanation, token in context, truth) items:
token categories that a rule checks mechanically (month names, digits, countries, U.S. states,
past-tense verbs after a subject pronoun, punctuation, capitalised words, plural nouns, personal
pronouns, prepositions, ordinal numbers) in real sentences of the embedded corpus, tokenized with the
embedded tokenizer. Each category has positives, hard negatives (a capitalised non-month for "names of
months", a U.S. state for "names of countries", a present-tense verb after a pronoun for "verbs in the
past tense", a singular for "plural nouns") and a few easy negatives (common function words).
Ambiguous tokens ("May", "Washington", "Georgia") are in neither.

`build_calibration_set` regenerates the set deterministically (`benchmarks/calibrate_judges.py
--regenerate`); `item_truth` recomputes an item's truth from its context with the category's rule;
`calibrate` asks a judge about every item with the real judge prompt (`prompts.judge_prompt`, so a
change of how the highlighted token is shown reaches calibration too; the answers go through the
response cache like ComSem's); `calibration_metrics` computes accuracy, Yes-rate and balanced accuracy
with a 95 % stratified bootstrap interval, and flags a judge whose interval reaches chance (0.5).
A saved calibration (`save_calibration`) is found again by the judge's identity (`find_calibration`),
so every ComSem results table can state the judge's calibration beside its scores.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

CALIBRATION_SET_PATH = Path(__file__).parent / "data" / "calibration.jsonl"
CALIBRATIONS_DIR = "judge_calibrations"  # beside the response cache
CHANCE = 0.5
ITEM_FIELDS = ("id", "category", "explanation", "token", "position", "context", "truth", "kind")

# ----------------------------------------------------------------------------------------------
# Categories: each is a description (what the judge sees) and a rule on the tokenized context.
# ----------------------------------------------------------------------------------------------
MONTHS = {"January", "February", "March", "April", "June", "July", "August", "September", "October", "November",
          "December"}  # "May" is left out: at a sentence start it is also the modal verb
COUNTRIES = {"France", "Germany", "Mexico", "China", "Japan", "Russia", "Spain", "Britain", "England", "Cuba", "Canada",
             "Italy", "Iraq", "Iran", "Israel", "Egypt", "India", "Korea", "Vietnam", "Brazil", "Chile", "Peru",
             "Greece", "Turkey", "Poland", "Austria", "Portugal", "Panama", "Nicaragua", "Haiti", "Colombia", "Argentina",
             "Venezuela", "Ukraine", "Syria", "Libya", "Kuwait", "Pakistan", "Ireland", "Norway", "Sweden", "Denmark",
             "Belgium", "Hungary", "Switzerland", "Liberia", "Morocco", "Afghanistan", "Philippines"}
US_STATES = {"Texas", "California", "Ohio", "Virginia", "Florida", "Oregon", "Alaska", "Kansas", "Missouri", "Kentucky",
             "Tennessee", "Louisiana", "Maryland", "Pennsylvania", "Illinois", "Michigan", "Mississippi", "Alabama",
             "Arkansas", "Iowa", "Nebraska", "Nevada", "Utah", "Colorado", "Arizona", "Minnesota", "Wisconsin", "Indiana",
             "Massachusetts", "Connecticut", "Vermont", "Maine", "Delaware", "Oklahoma", "Idaho", "Montana", "Wyoming",
             "Hawaii"}  # not Washington, Georgia, New York ...: a capital, a country, two tokens
NUMBER_WORDS = {"one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
                "twenty", "thirty", "forty", "fifty", "hundred", "thousand", "million", "billion"}
ORDINALS = {"first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth", "twentieth",
            "hundredth"}
PAST_PRESENT = [("passed", "pass"), ("made", "make"), ("took", "take"), ("gave", "give"), ("saw", "see"), ("said", "say"),
                ("came", "come"), ("went", "go"), ("began", "begin"), ("found", "find"), ("sent", "send"), ("asked", "ask"),
                ("faced", "face"), ("fought", "fight"), ("won", "win"), ("lost", "lose"), ("built", "build"),
                ("signed", "sign"), ("met", "meet"), ("kept", "keep"), ("created", "create"), ("worked", "work"),
                ("acted", "act"), ("reduced", "reduce"), ("increased", "increase"), ("started", "start"),
                ("left", "leave"), ("brought", "bring"), ("knew", "know"), ("thought", "think"), ("did", "do"),
                ("had", "have"), ("were", "are"), ("needed", "need"), ("wanted", "want"), ("believed", "believe"),
                ("told", "tell"), ("stood", "stand"), ("paid", "pay"), ("spent", "spend"), ("helped", "help"),
                ("proposed", "propose"), ("cut", None), ("put", None)]
PAST = {p for p, _ in PAST_PRESENT if p not in ("cut", "put")}  # cut / put are the same in the present: neither
PRESENT = {q for _, q in PAST_PRESENT if q}  # "we have passed": "have" is present tense (present perfect)
SUBJECT_PRONOUNS = {"i", "we", "they"}  # "he" / "she" take -s in the present: "he pass" never occurs
PLURAL_SINGULAR = [("citizens", "citizen"), ("nations", "nation"), ("years", "year"), ("children", "child"),
                   ("families", "family"), ("schools", "school"), ("workers", "worker"), ("farmers", "farmer"),
                   ("soldiers", "soldier"), ("programs", "program"), ("treaties", "treaty"), ("officers", "officer"),
                   ("laws", "law"), ("countries", "country"), ("governments", "government"), ("men", "man"),
                   ("women", "woman"), ("dollars", "dollar"), ("problems", "problem"), ("policies", "policy"),
                   ("communities", "community"), ("cities", "city"), ("businesses", "business"), ("jobs", "job"),
                   ("banks", "bank"), ("ships", "ship"), ("territories", "territory"), ("industries", "industry"),
                   ("wars", "war"), ("friends", "friend"), ("parents", "parent"), ("teachers", "teacher")]
PLURALS = {p for p, _ in PLURAL_SINGULAR}
SINGULARS = {s for _, s in PLURAL_SINGULAR}
PERSONAL_PRONOUNS = {"i", "we", "you", "he", "she", "they", "it", "us", "them", "him", "me"}
ARTICLES = {"the", "a", "an", "every"}
PREPOSITIONS = {"of", "in", "for", "with", "from", "by", "on", "at", "into", "under", "upon", "between", "against",
                "through", "without", "among", "during", "toward", "towards", "across"}
CONJUNCTIONS = {"and", "or", "but", "nor"}
PUNCTUATION = set(".,;:!?()'\"-")
LOWERCASE_NOUNS = {"government", "congress", "president", "nation", "state", "union", "people", "country", "world",
                   "states", "constitution", "senate", "army", "navy", "court", "treasury", "republic", "department"}
# Easy negatives: common function words that belong to none of the categories.
FILLER = {"the", "and", "that", "is", "be", "will", "which", "have", "been", "not", "also", "more", "this", "has"}
AMBIGUOUS = {"May", "Washington", "Georgia", "Jersey"}


def _word(token: str) -> str:
    return token.strip()


def _whole_word(tokens: Sequence[str], i: int) -> bool:
    """The token is a whole word: it opens with a space (or starts the context) and the next token does not
    continue it (it opens with a space, is punctuation, or there is none)."""
    starts = i == 0 or tokens[i][:1].isspace()
    nxt = tokens[i + 1] if i + 1 < len(tokens) else " "
    ends = nxt[:1].isspace() or (bool(nxt.strip()) and all(c in PUNCTUATION for c in nxt.strip()))
    return starts and ends and _word(tokens[i]).isalpha()


def _prev_word(tokens: Sequence[str], i: int) -> str:
    return _word(tokens[i - 1]).lower() if i > 0 else ""


@dataclass(frozen=True)
class Category:
    """A token category: the description the judge sees, and mechanical rules on (tokens, index)."""

    name: str
    explanation: str
    member: Callable[[Sequence[str], int], bool]
    hard_negative: Callable[[Sequence[str], int], bool]


def _in(words: set[str], lower: bool = False) -> Callable[[Sequence[str], int], bool]:
    def rule(tokens: Sequence[str], i: int) -> bool:
        w = _word(tokens[i])
        return _whole_word(tokens, i) and (w.lower() if lower else w) in words
    return rule


def _capitalised(tokens: Sequence[str], i: int) -> bool:
    return _whole_word(tokens, i) and _word(tokens[i])[0].isupper()


def _capitalised_mid_sentence(exclude: set[str]) -> Callable[[Sequence[str], int], bool]:
    def rule(tokens: Sequence[str], i: int) -> bool:
        w = _word(tokens[i])
        return i > 0 and _capitalised(tokens, i) and w not in exclude and w not in AMBIGUOUS and w.lower() != "i"
    return rule


def _digits(tokens: Sequence[str], i: int) -> bool:
    # The embedded tokenizer splits numbers into single digits: each digit token is a member.
    w = _word(tokens[i])
    return bool(w) and w.isdigit()


def _punctuation(tokens: Sequence[str], i: int) -> bool:
    w = _word(tokens[i])
    return bool(w) and all(c in PUNCTUATION for c in w)


def _after_pronoun(words: set[str]) -> Callable[[Sequence[str], int], bool]:
    def rule(tokens: Sequence[str], i: int) -> bool:
        return _in(words, lower=True)(tokens, i) and _prev_word(tokens, i) in SUBJECT_PRONOUNS
    return rule


def _short_word_or_digit(tokens: Sequence[str], i: int) -> bool:
    w = _word(tokens[i])
    return (_whole_word(tokens, i) and len(w) <= 3) or _digits(tokens, i)


CATEGORIES: dict[str, Category] = {c.name: c for c in [
    Category("month", "names of months", _in(MONTHS), _capitalised_mid_sentence(MONTHS | COUNTRIES | US_STATES)),
    Category("digit", "numbers written in digits", _digits, _in(NUMBER_WORDS, lower=True)),
    Category("country", "names of countries", _in(COUNTRIES), _in(US_STATES)),
    Category("us_state", "names of U.S. states", _in(US_STATES), _in(COUNTRIES)),
    Category("past_tense", "verbs in the past tense", _after_pronoun(PAST), _after_pronoun(PRESENT)),
    Category("punctuation", "punctuation marks", _punctuation, _short_word_or_digit),
    Category("capitalised", "capitalised words", _capitalised, _in(LOWERCASE_NOUNS)),
    Category("plural", "plural nouns", _in(PLURALS, lower=True), _in(SINGULARS, lower=True)),
    Category("pronoun", "personal pronouns", _in(PERSONAL_PRONOUNS, lower=True), _in(ARTICLES, lower=True)),
    Category("preposition", "prepositions", _in(PREPOSITIONS, lower=True), _in(CONJUNCTIONS | ARTICLES, lower=True)),
    Category("ordinal", "ordinal numbers", _in(ORDINALS, lower=True), _in(NUMBER_WORDS, lower=True)),
]}


def _easy_negative(category: Category) -> Callable[[Sequence[str], int], bool]:
    def rule(tokens: Sequence[str], i: int) -> bool:
        return _in(FILLER)(tokens, i) and not category.member(tokens, i) and not category.hard_negative(tokens, i)
    return rule


# ----------------------------------------------------------------------------------------------
# The set
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CalibrationItem:
    """One labelled judge question: does `explanation` fit `token` (at `position` in `context`)?"""

    id: str
    category: str
    explanation: str
    token: str
    position: int
    context: str
    truth: bool
    kind: str  # "positive", "hard_negative" or "easy_negative"

    @property
    def sample(self) -> tuple[str, int, str]:
        """The (token, position, context) triple the judge prompt takes."""
        return self.token, self.position, self.context


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")


def _sentences(texts: Iterable[str], min_words: int = 6, max_words: int = 40) -> list[str]:
    out = []
    for text in texts:
        for s in _SENTENCE_END.split(" ".join(text.split())):
            if min_words <= len(s.split()) <= max_words:
                out.append(s)
    return out


def context_tokens(tokenizer: Any, context: str) -> list[str]:
    """The context's tokens as strings (spaces shown as spaces), no special tokens: what positions index."""
    ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    return [tokenizer.decode([i]) for i in ids]


def item_truth(item: CalibrationItem, tokenizer: Any) -> bool:
    """The item's truth recomputed from its context with its category's rule (ValueError if the token is not
    at its position)."""
    tokens = context_tokens(tokenizer, item.context)
    if not 0 <= item.position < len(tokens) or tokens[item.position] != item.token:
        raise ValueError(f"calibration item {item.id}: token {item.token!r} is not at position {item.position} of its context.")
    return CATEGORIES[item.category].member(tokens, item.position)


def build_calibration_set(texts: Iterable[str], tokenizer: Any, positives: int = 14, hard_negatives: int = 10,
                          easy_negatives: int = 4, seed: int = 0, max_per_word: int = 2) -> list[CalibrationItem]:
    """Draw the calibration items from `texts` (deterministic for a given corpus, tokenizer and seed).

    Sentences are visited in a seeded random order; each contributes at most one item per category, and a
    word at most `max_per_word` items of one kind, so that the set is not 14 times "January".
    """
    sentences = _sentences(texts)
    random.Random(seed).shuffle(sentences)
    quotas = {"positive": positives, "hard_negative": hard_negatives, "easy_negative": easy_negatives}
    found: dict[tuple[str, str], list[CalibrationItem]] = {(c, k): [] for c in CATEGORIES for k in quotas}
    per_word: dict[tuple[str, str, str], int] = {}
    rng = random.Random(seed + 1)
    for sentence in sentences:
        if all(len(v) >= quotas[k] for (_, k), v in found.items()):
            break
        tokens = context_tokens(tokenizer, sentence)
        for name, category in CATEGORIES.items():
            rules = (("positive", category.member), ("hard_negative", category.hard_negative),
                     ("easy_negative", _easy_negative(category)))
            for kind, rule in rules:
                bucket = found[(name, kind)]
                if len(bucket) >= quotas[kind]:
                    continue
                hits = [i for i in range(len(tokens)) if rule(tokens, i)
                        and (kind == "positive" or not category.member(tokens, i))
                        and _word(tokens[i]) not in AMBIGUOUS]
                hits = [i for i in hits if per_word.get((name, kind, _word(tokens[i])), 0) < max_per_word]
                if not hits:
                    continue
                i = rng.choice(hits)
                per_word[(name, kind, _word(tokens[i]))] = per_word.get((name, kind, _word(tokens[i])), 0) + 1
                bucket.append(CalibrationItem(
                    id=f"{name}-{kind}-{len(bucket)}", category=name, explanation=category.explanation, token=tokens[i],
                    position=i, context=sentence, truth=kind == "positive", kind=kind))
                break  # one item per category per sentence
    missing = [f"{c}/{k}: {len(v)} of {quotas[k]}" for (c, k), v in found.items() if len(v) < quotas[k]]
    if missing:
        raise ValueError(f"the corpus is too small for the calibration set ({', '.join(missing)}): give more texts.")
    return [item for c in CATEGORIES for k in quotas for item in found[(c, k)]]


def save_calibration_set(items: Sequence[CalibrationItem], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(asdict(i), ensure_ascii=False) + "\n" for i in items), encoding="utf-8")
    return path


def load_calibration_set(path: str | Path | None = None) -> list[CalibrationItem]:
    """The items of a calibration set (JSONL, one item a line; default: the shipped set).

    ValueError naming the file and line for an empty file, a line that is not a JSON object, a missing
    field, an unknown category or a truth that is not true / false.
    """
    path = Path(path) if path is not None else CALIBRATION_SET_PATH
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"calibration set {path} is not UTF-8 text: give a JSONL file, one item per line.") from None
    items = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"calibration set {path}, line {n}: not JSON ({err.msg}); give a JSONL file, one item "
                             "(a JSON object) per line.") from None
        if not isinstance(data, dict):
            raise ValueError(f"calibration set {path}, line {n}: not a JSON object.")
        missing = [f for f in ITEM_FIELDS if f not in data]
        if missing:
            raise ValueError(f"calibration set {path}, line {n}: missing field(s) {', '.join(missing)} "
                             f"(an item has {', '.join(ITEM_FIELDS)}).")
        if not isinstance(data["truth"], bool):
            raise ValueError(f"calibration set {path}, line {n}: truth must be true or false, got {data['truth']!r}.")
        if not isinstance(data["position"], int) or data["position"] < 0:
            raise ValueError(f"calibration set {path}, line {n}: position must be an integer >= 0, got {data['position']!r}.")
        items.append(CalibrationItem(**{f: data[f] for f in ITEM_FIELDS}))
    if not items:
        raise ValueError(f"calibration set {path} has no items: give a JSONL file with at least one item per line.")
    if not any(i.truth for i in items) or all(i.truth for i in items):
        raise ValueError(f"calibration set {path} needs items of both truths (some true, some false) for a balanced accuracy.")
    return items


def set_fingerprint(items: Sequence[CalibrationItem]) -> str:
    """A short hash of the set's content: a calibration names the set it was measured on."""
    h = hashlib.sha256()
    for i in items:
        h.update(json.dumps(asdict(i), sort_keys=True).encode())
    return h.hexdigest()[:16]


def subset(items: Sequence[CalibrationItem], max_items: int | None, seed: int = 0) -> list[CalibrationItem]:
    """At most `max_items` items, the same share of each (category, kind) as the whole set (deterministic)."""
    if max_items is None or max_items >= len(items):
        return list(items)
    if max_items < 2:
        raise ValueError(f"max_items must be >= 2 (one true, one false item), got {max_items}.")
    order = list(items)
    random.Random(seed).shuffle(order)
    # Half true, half false items; within each, round-robin over (category, kind) keeps the categories in proportion.
    chosen: list[CalibrationItem] = []
    for truth, quota in ((True, (max_items + 1) // 2), (False, max_items // 2)):
        strata: dict[tuple[str, str], list[CalibrationItem]] = {}
        for item in order:
            if item.truth == truth:
                strata.setdefault((item.category, item.kind), []).append(item)
        keys = sorted(strata, key=lambda k: (k[1], k[0]))
        taken = 0
        while taken < quota and any(strata.values()):
            for key in keys:
                if strata[key] and taken < quota:
                    chosen.append(strata[key].pop(0))
                    taken += 1
    return chosen


# ----------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------
def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def _balanced(yes_true: Sequence[bool], yes_false: Sequence[bool]) -> float:
    return (sum(yes_true) / len(yes_true) + (len(yes_false) - sum(yes_false)) / len(yes_false)) / 2


def calibration_metrics(truths: Sequence[bool], answers: Sequence[str], resamples: int = 2000,
                        seed: int = 0) -> dict[str, Any]:
    """Accuracy, Yes-rate, balanced accuracy (mean of the true-positive and true-negative rates) with a 95 %
    stratified bootstrap interval, and the verdict: "above chance" when the interval's lower end is above 0.5.

    `answers` are parsed answers ("yes", "no", "unparseable"); an unparseable answer counts as not Yes
    (as in ComSem) and is counted. Items without an answer (a failed call) are left out and counted.
    """
    if len(truths) != len(answers):
        raise ValueError(f"{len(truths)} truths but {len(answers)} answers.")
    pairs = [(t, a) for t, a in zip(truths, answers) if a in ("yes", "no", "unparseable")]
    pos = [a == "yes" for t, a in pairs if t]
    neg = [a == "yes" for t, a in pairs if not t]
    out: dict[str, Any] = {"items": len(pairs), "unanswered": len(truths) - len(pairs),
                           "unparseable": sum(a == "unparseable" for _, a in pairs), "positives": len(pos),
                           "negatives": len(neg)}
    if not pos or not neg:
        out.update(accuracy=None, accuracy_interval=None, yes_rate=None, true_positive_rate=None,
                   true_negative_rate=None, balanced_accuracy=None, balanced_accuracy_interval=None,
                   verdict="not measured", chance=None)
        return out
    correct = sum(p for p in pos) + sum(not n for n in neg)
    rng = random.Random(seed)
    boot = sorted(_balanced([rng.choice(pos) for _ in pos], [rng.choice(neg) for _ in neg]) for _ in range(resamples))
    low, high = boot[int(0.025 * resamples)], boot[min(resamples - 1, int(0.975 * resamples))]
    ba = _balanced(pos, neg)
    yes_rate = (sum(pos) + sum(neg)) / len(pairs)
    if low > CHANCE:
        verdict = "above chance"
    elif high < CHANCE:
        verdict = "WORSE THAN CHANCE"
    else:
        verdict = "AT CHANCE"
    out.update(accuracy=correct / len(pairs), accuracy_interval=list(wilson_interval(correct, len(pairs))),
               yes_rate=yes_rate, true_positive_rate=sum(pos) / len(pos), true_negative_rate=1 - sum(neg) / len(neg),
               balanced_accuracy=ba, balanced_accuracy_interval=[low, high], verdict=verdict,
               chance=verdict != "above chance")
    return out


def loud_warning(calibration: dict[str, Any]) -> str | None:
    """The warning to print in capitals for a judge at (or below) chance; None for a usable judge."""
    if not calibration.get("chance"):
        return None
    ba, (low, high) = calibration["balanced_accuracy"], calibration["balanced_accuracy_interval"]
    return (f"!!! JUDGE {calibration.get('judge', '')} IS {calibration['verdict']}: balanced accuracy {ba:.3f} "
            f"[{low:.3f}, {high:.3f}] on {calibration['items']} labelled items, Yes-rate {calibration['yes_rate']:.2f}. "
            "COMSEM SCORES FROM THIS JUDGE DO NOT MEASURE INTERPRETABILITY. !!!")


def describe(calibration: dict[str, Any] | None) -> str:
    """One line for results tables: the judge's calibration, or that it is not calibrated."""
    if not calibration or calibration.get("balanced_accuracy") is None:
        return "judge not calibrated (run `hf-bae calibrate` with the same LLM flags)"
    low, high = calibration["balanced_accuracy_interval"]
    text = (f"judge calibration: balanced accuracy {calibration['balanced_accuracy']:.3f} [{low:.3f}, {high:.3f}], "
            f"Yes-rate {calibration['yes_rate']:.2f}, on {calibration['items']} labelled items: {calibration['verdict']}")
    return text + (" — THESE SCORES DO NOT MEASURE INTERPRETABILITY" if calibration.get("chance") else "")


def short(calibration: dict[str, Any] | None) -> str:
    """The calibration in a table cell."""
    if not calibration or calibration.get("balanced_accuracy") is None:
        return "not calibrated"
    low, high = calibration["balanced_accuracy_interval"]
    return f"{calibration['balanced_accuracy']:.2f} [{low:.2f}, {high:.2f}] {calibration['verdict']}"


# ----------------------------------------------------------------------------------------------
# Running a judge on the set
# ----------------------------------------------------------------------------------------------
def judge_requests(items: Sequence[CalibrationItem], max_tokens: int | None = None, temperature: float | None = None):
    """The ComSem judge requests for `items` (the same prompt, so the answers share ComSem's cache entries)."""
    from .chat import ChatRequest
    from .prompts import judge_prompt

    return [ChatRequest.from_messages(judge_prompt(i.sample, i.explanation), max_tokens=max_tokens, temperature=temperature)
            for i in items]


def calibrate(items: Sequence[CalibrationItem], client: Any, max_tokens: int | None = None,
              temperature: float | None = None, set_name: str = "shipped") -> dict[str, Any]:
    """Ask the judge of `client` (an `LLMClient`) about every item; the metrics, per-category rows and costs.

    `cpu_s_per_item` / `wall_s_per_item` are per call actually made (cache hits cost nothing): None when
    every answer came from the cache.
    """
    from .comsem import parse_answer

    requests = judge_requests(items, max_tokens, temperature)
    cpu, wall = time.process_time(), time.perf_counter()
    results = client.complete_many(requests, desc="calibration")
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    answers = [parse_answer(r.text) if r.ok else "failed" for r in results]
    calls = sum(1 for r in results if r.ok and not r.cached) or sum(1 for r in results if not r.cached and r.attempts)
    out = {"judge": client.backend.identity, "model": client.backend.model, "set": set_name,
           "set_fingerprint": set_fingerprint(items), "set_items": len(items),
           **calibration_metrics([i.truth for i in items], answers)}
    out["failed_calls"] = sum(1 for a in answers if a == "failed")
    out["calls"] = calls
    out["cached"] = sum(1 for r in results if r.cached)
    out["cpu_s_per_item"] = cpu / calls if calls else None
    out["wall_s_per_item"] = wall / calls if calls else None
    per_category = {}
    for name in dict.fromkeys(i.category for i in items):
        idx = [k for k, i in enumerate(items) if i.category == name]
        m = calibration_metrics([items[k].truth for k in idx], [answers[k] for k in idx], resamples=200)
        per_category[name] = {k: m[k] for k in ("items", "accuracy", "yes_rate", "balanced_accuracy")}
    out["per_category"] = per_category
    out["answers"] = [{"id": i.id, "truth": i.truth, "answer": a} for i, a in zip(items, answers)]
    return out


def calibration_table(calibrations: Sequence[dict[str, Any]]) -> str:
    """A markdown table of judges' calibrations."""
    def f(v: Any, d: int = 3) -> str:
        return "–" if v is None else f"{v:.{d}f}" if isinstance(v, float) else str(v)

    lines = ["| judge | items | accuracy | Yes-rate | balanced accuracy | 95 % interval | CPU s / item | wall s / item | verdict |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in calibrations:
        interval = c.get("balanced_accuracy_interval")
        lines.append(f"| {c['judge']} | {c['items']} | {f(c['accuracy'])} | {f(c['yes_rate'])} | {f(c['balanced_accuracy'])} | "
                     f"{'–' if interval is None else f'[{interval[0]:.3f}, {interval[1]:.3f}]'} | {f(c['cpu_s_per_item'], 2)} | "
                     f"{f(c['wall_s_per_item'], 2)} | {c['verdict']} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Saved calibrations, found again by the judge's identity
# ----------------------------------------------------------------------------------------------
def calibration_path(directory: str | Path, judge: str) -> Path:
    """Where the calibration of `judge` (a backend identity) is kept in `directory`."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", judge)[:80]
    return Path(directory) / f"{safe}-{hashlib.sha256(judge.encode()).hexdigest()[:10]}.json"


def save_calibration(calibration: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(calibration, indent=2) + "\n", encoding="utf-8")
    return path


def read_calibration(path: str | Path) -> dict[str, Any]:
    """A saved calibration (ValueError naming the file if it is not one)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"calibration {path} is not JSON ({err}): give a file written by `hf-bae calibrate`.") from None
    if not isinstance(data, dict) or "judge" not in data or "balanced_accuracy" not in data:
        raise ValueError(f"calibration {path} is not a judge calibration (no judge / balanced_accuracy): give a file "
                         "written by `hf-bae calibrate`.")
    return data


def find_calibration(directory: str | Path, judge: str) -> dict[str, Any] | None:
    """The saved calibration of `judge` in `directory`, or None (an unreadable file counts as none)."""
    path = calibration_path(directory, judge)
    if not path.is_file():
        return None
    try:
        data = read_calibration(path)
    except ValueError:
        return None
    return data if data.get("judge") == judge else None


def calibrations_dir(config: Any) -> Path:
    """Where calibrations are kept for an `LLMConfig`: `judge_calibrations/` beside its response cache."""
    from .response_cache import default_cache_path

    return Path(config.cache or default_cache_path()).parent / CALIBRATIONS_DIR


def store_calibration(calibration: dict[str, Any], config: Any) -> Path:
    """Save `calibration` where `judge_calibration_for(config, ...)` finds it for the same judge."""
    return save_calibration(calibration, calibration_path(calibrations_dir(config), calibration["judge"]))


def judge_calibration_for(config: Any, judge: str) -> dict[str, Any] | None:
    """The calibration a ComSem run states: `config.judge_calibration` (a file; ValueError if it is another
    judge's), else the one saved for `judge` beside the response cache, else None."""
    if getattr(config, "judge_calibration", None):
        data = read_calibration(config.judge_calibration)
        if data["judge"] != judge:
            raise ValueError(f"--judge_calibration {config.judge_calibration} calibrates {data['judge']}, not this run's "
                             f"judge {judge}: calibrate this judge with `hf-bae calibrate` and the same LLM flags.")
        return summary(data)
    found = find_calibration(calibrations_dir(config), judge)
    return summary(found) if found else None


def summary(calibration: dict[str, Any]) -> dict[str, Any]:
    """What a ComSem report keeps of a calibration (not the per-item answers)."""
    keys = ("judge", "set", "set_fingerprint", "items", "accuracy", "yes_rate", "balanced_accuracy",
            "balanced_accuracy_interval", "verdict", "chance", "cpu_s_per_item")
    return {k: calibration.get(k) for k in keys}
