"""The page of one feature: explanation, ComSem score and status, frequency and (for a BAE) the code's
usual state and its event, a density histogram of the sample values, the logit effects of its decoder
direction (when the atlas stores them), the top contexts sorted by value (one per document by
default) with every token the atlas has a value for shaded, quantile bands, the judge's verdicts and
the nearest features by decoder cosine.

What the atlas holds is read as it is: older atlases without the `event` / `logit_effects` columns
(or per-token `token_values` in samples) get a page that says what is missing, never invented values."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .atlas_view import Atlas
from .dictionary_view import Dictionary
from .markup import esc, flags, fmt_freq, highlight_context, histogram_svg, shade_context

# Quantile bands are shown when a feature has at least this many samples with distinct values.
MIN_SAMPLES_FOR_BANDS = 12
NUM_BANDS = 4
SAMPLES_PER_BAND = 3


@dataclass
class FeaturePage:
    """What the feature view shows."""

    feature: int
    header_html: str
    samples_html: str
    non_activating_html: str
    verdicts: list[list[Any]]  # [split, sample, token, answer]
    neighbours: list[list[Any]]  # [feature, cosine, frequency, explanation]


def pct(p: float) -> str:
    """A fraction of tokens as a percentage for people: "3 %", "0.012 %"."""
    return f"{100 * p:.3g} %"


def is_deviation_scored(atlas: Atlas, dictionary: Dictionary | None) -> bool:
    """Whether samples rank by deviation from the usual state (BAE codes) rather than by value."""
    if dictionary is not None:
        return bool(dictionary.score_is_deviation)
    return (atlas.meta("dictionary_type") or "").upper() == "BAE"


def feature_event(rec: dict[str, Any], deviation: bool, kind: str = "") -> tuple[str | None, bool]:
    """(event, inferred): the atlas's `event` column when set; None for the random baseline; else (an
    atlas built before events were recorded) inferred: for a BAE, "off" when the code is usually on
    and its samples are all 0, "on" otherwise."""
    if rec.get("event") in ("on", "off"):
        return rec["event"], False
    if kind.lower() == "random":
        return None, False
    if not deviation:
        return "on", True
    values = [s.get("activation") for s in rec.get("samples") or []]
    usually_on = float(rec["frequency"]) > 0.5
    return ("off" if usually_on and values and all(v == 0 for v in values) else "on"), True


def event_html(rec: dict[str, Any], deviation: bool, event: str | None, inferred: bool) -> str:
    """The sentence saying what the feature's samples are: "usually off; on in 3 % of tokens"."""
    p = float(rec["frequency"])
    note = " <i>(the atlas records no event: inferred from the frequency and samples)</i>" if inferred else ""
    if event is None:
        return "<p class='event'>Event: none recorded (a baseline without a usual state).</p>"
    if not deviation:
        return f"<p class='event'>Fires on {pct(p)} of tokens; the samples are tokens where it fires.{note}</p>"
    if p >= 1.0:
        return "<p class='event'>Usual state: <b>on</b> in every token of the atlas corpus: it never turns off, so there is no event to sample.</p>"
    if p <= 0.0:
        return "<p class='event'>Usual state: <b>off</b> in every token of the atlas corpus (dead): no event to sample.</p>"
    if event == "off":
        return (f"<p class='event'>Usual state: <b>on</b> ({pct(p)} of tokens). Event: <b>off in {pct(1 - p)} of tokens</b>; "
                f"the samples are tokens where it is off, the non-activating ones tokens in its usual state.{note}</p>")
    return (f"<p class='event'>Usual state: <b>off</b> ({pct(1 - p)} of tokens). Event: <b>on in {pct(p)} of tokens</b>; "
            f"the samples are tokens where it is on.{note}</p>")


def sample_value(s: dict[str, Any], deviation: bool) -> float:
    """What a sample ranks by: its deviation score for a BAE code, its activation for a latent."""
    key, other = ("score", "activation") if deviation else ("activation", "score")
    v = s.get(key)
    v = s.get(other) if v is None else v
    return float(v) if isinstance(v, (int, float)) else 0.0


def histogram_html(rec: dict[str, Any], samples: list[dict], deviation: bool, event: str | None) -> str:
    """Density of the sample values (SAE latents, multi-bit codes); for a binary BAE code, the share of
    tokens in its usual state and in its event."""
    p = float(rec["frequency"])
    acts = np.array([float(s["activation"]) for s in samples if isinstance(s.get("activation"), (int, float))])
    binary = deviation and (len(acts) == 0 or set(np.unique(acts).tolist()) <= {0.0, 1.0})
    if binary:
        usual, ev = (1 - p, p) if event != "off" else (p, 1 - p)
        labels = [f"usual ({'off' if event != 'off' else 'on'}) {pct(usual)}", f"event ({event or 'on'}) {pct(ev)}"]
        svg = histogram_svg([round(usual, 6), round(ev, 6)], [0.0, 0.5, 1.0], "share of tokens: usual state vs event", bar_labels=labels)
        return f"<div class='density'><h4>Event density</h4>{svg}</div>"
    if len(acts) == 0:
        return "<div class='density'><h4>Activation density</h4><p><i>no samples</i></p></div>"
    lo, hi = float(acts.min()), float(acts.max())
    if hi <= lo:
        hi = lo + 1.0
    counts, edges = np.histogram(acts, bins=min(20, max(5, len(acts) // 2)), range=(lo, hi))
    what = "code values (multi-bit)" if deviation else "activation"
    svg = histogram_svg(counts.tolist(), edges.tolist(), f"{what} of the {len(acts)} samples")
    return (f"<div class='density'><h4>Activation density</h4>{svg}<p class='note'>Over the atlas's samples of this feature; "
            f"it fires on {pct(p)} of tokens.</p></div>")


def logit_html(rec: dict[str, Any]) -> str:
    """The promoted and suppressed tokens of the decoder direction through the unembedding."""
    effects = rec.get("logit_effects")
    if not effects:
        return ("<div class='logits'><h4>Logit effects</h4><p><i>Not in this atlas: not computable for this dictionary "
                "(a random baseline, a transcoder, or a site whose width differs from the unembedding's), or the atlas "
                "was built before they were stored (rebuild it with <code>hf-bae atlas</code>).</i></p></div>")

    def column(items: list[dict] | None, cls: str, title: str) -> str:
        lis = "".join(
            f"<li><span class='logit-token'>{esc(repr(e.get('token')))}</span><span class='logit-value'>{float(e.get('value') or 0):+.3g}</span></li>"
            for e in items or []
        )
        return f"<div class='logit-col'><b>{title}</b><ol class='logit-list {cls}'>{lis or '<li><i>none</i></li>'}</ol></div>"

    return ("<div class='logits'><h4>Logit effects (W<sub>U</sub> · decoder direction)</h4><div class='logit-cols'>"
            + column(effects.get("promoted"), "promoted", "promoted") + column(effects.get("suppressed"), "suppressed", "suppressed")
            + "</div></div>")


def token_spans(s: dict[str, Any], same_context: list[dict], deviation: bool, event: str | None = None) -> list[tuple[int, int, float]]:
    """Values of the tokens of a sample's context: the atlas's per-token `token_values` when the sample
    has them, else the values of this feature's samples that share the context (other tokens unknown).

    `token_values` hold the feature's value (a BAE code, an SAE latent); a deviation-scored code is
    shaded by its deviation from the usual state, as its samples are ranked: |value − mean|, the mean
    read off the sample itself (its score is |activation − mean|, the activation above the mean for
    event "on", below it for "off")."""
    per_token = s.get("token_values")
    if per_token:
        a, score = s.get("activation"), s.get("score")
        if deviation and isinstance(a, (int, float)) and isinstance(score, (int, float)):
            mean = a + score if event == "off" else a - score
            return [(int(t["start"]), int(t["end"]), abs(float(t["value"]) - mean)) for t in per_token]
        return [(int(t["start"]), int(t["end"]), float(t["value"])) for t in per_token]
    return [(int(o.get("start") or 0), int(o.get("end") or 0), sample_value(o, deviation)) for o in same_context]


def build_feature_page(atlas: Atlas, dictionary: Dictionary | None, feature: int, num_neighbours: int = 10,
                       one_per_document: bool = True) -> FeaturePage:
    """The page of `feature` (an id the atlas holds) from its atlas row; neighbours need `dictionary`."""
    rec = atlas.record(feature)
    ix = atlas.index
    samples, negatives = rec.get("samples") or [], rec.get("non_activating") or []
    verdicts = rec.get("verdicts") or []
    answer = {(v.get("split"), v.get("sample_index")): v.get("answer") for v in verdicts}
    deviation = is_deviation_scored(atlas, dictionary)
    event, inferred = feature_event(rec, deviation, str(atlas.meta("dictionary_type") or ""))

    score = rec.get("comsem_score")
    yes = sum(1 for v in verdicts if v.get("split") == "positive" and v.get("answer") == "yes")
    judged = sum(1 for v in verdicts if v.get("split") == "positive")
    expl = rec.get("explanation")
    flag = flags(rec["is_dead"], rec["is_dense"])
    badge = f"<span class='badge {flag}'>{flag}</span>" if flag else ""
    score_html = (
        f"<b>{score:.3f}</b> ({yes} of {judged} held-out samples judged 'yes')" if score is not None else "<i>not scored</i>"
    )
    status = rec.get("comsem_status")
    if status and status != "scored":
        score_html += f" — status: {esc(status)}"
    elif score is None and len(samples) < 6:
        score_html += f" — {len(samples)} samples: fewer than 6, not interpretable by ComSem's protocol"
    if rec.get("balanced_accuracy") is not None:
        score_html += f"; balanced accuracy with non-activating samples (beyond the paper): <b>{rec['balanced_accuracy']:.3f}</b>"
    if rec.get("judge_failures"):
        score_html += f"; {int(rec['judge_failures'])} judge call(s) failed"
    header = (
        f"<div class='feature-header'><h2>Feature {feature} <small>{esc(atlas.name)}</small> {badge}</h2>"
        f"<p class='explanation'>{esc(expl) if expl else '<i>no explanation</i>'}</p>"
        f"<p>ComSem score: {score_html}</p>"
        f"<p>Frequency: {esc(fmt_freq(float(rec['frequency'])))} · {len(samples)} samples · {len(negatives)} non-activating samples</p>"
        + event_html(rec, deviation, event, inferred)
        + "<div class='feature-panels'>" + histogram_html(rec, samples, deviation, event) + logit_html(rec) + "</div></div>"
    )

    # Sorted by value, strongest first (the atlas may keep them in corpus order); ties keep that order.
    values = [sample_value(s, deviation) for s in samples]
    order = sorted(range(len(samples)), key=lambda i: -values[i])
    by_context: dict[tuple[Any, str], list[dict]] = {}
    for s in samples:
        by_context.setdefault((s.get("row"), s.get("context") or ""), []).append(s)
    scale = max((abs(v) for v in values), default=1.0) or 1.0
    has_token_values = any(s.get("token_values") for s in samples)

    shown_verdicts: set[tuple[str, int]] = set()

    def item(i: int, s: dict, split: str, cls: str, shaded: bool) -> str:
        # A verdict is shown once, with the first listing of its sample.
        a = answer.get((split, i)) if (split, i) not in shown_verdicts else None
        shown_verdicts.add((split, i))
        verdict = f"<span class='verdict {esc(a)}'>judge: {esc(a)}</span>" if a else ""
        v = sample_value(s, deviation) if split == "positive" else None
        act = s.get("activation")
        if v is None:
            sc_html = ""
        elif deviation and isinstance(act, (int, float)):
            sc_html = f"<span class='score' title='deviation from the usual state'>{v:.3g}</span><span class='value'>value {act:g}</span>"
        else:
            sc_html = f"<span class='score'>{v:.3g}</span>"
        context, start, end, token = s.get("context") or "", int(s.get("start") or 0), int(s.get("end") or 0), s.get("token") or ""
        if shaded:
            same = by_context.get((s.get("row"), context), [s])
            ctx = shade_context(context, start, end, token_spans(s, same, deviation, event), scale, cls, token)
        else:
            ctx = highlight_context(context, start, end, cls, token)
        row = s.get("row")
        return (f"<li data-value='{'' if v is None else f'{v:.6g}'}' data-row='{esc(row)}'>{sc_html}<span class='ctx'>{ctx}</span>"
                f"<span class='tok' title='token id {esc(s.get('token_id'))}, position {esc(s.get('position'))}'>{esc(repr(s.get('token')))}</span>{verdict}</li>")

    def top_list(indices: list[int], cls: str = "top") -> str:
        return f"<ol class='samples {cls}'>{''.join(item(i, samples[i], 'positive', 'fire', True) for i in indices)}</ol>"

    if not samples:
        samples_html = "<p><i>none</i></p>"
    else:
        seen, top = set(), []
        for i in order:
            row = samples[i].get("row")
            if one_per_document and row is not None:
                if row in seen:
                    continue
                seen.add(row)
            top.append(i)
        shade_note = (
            "Every token of a context is shaded by the feature's value there (stored per token in the atlas)."
            if has_token_values else
            "This atlas stores no per-token values: only tokens that are samples of this feature are shaded "
            "(the highlighted one and others from the same document); the other tokens are not known, so left blank."
        )
        dropped = len(samples) - len(top)
        more = f" {dropped} more sample(s) from the same documents are under “All samples”." if dropped else ""
        samples_html = (
            f"<p class='note'>{len(top)} contexts, strongest first, one per document.{more} {shade_note}</p>" + top_list(top)
        )
        distinct = len(set(values))
        if len(samples) >= MIN_SAMPLES_FOR_BANDS and distinct >= NUM_BANDS:
            ranked = sorted(range(len(samples)), key=lambda i: -values[i])
            bands = []
            for b, chunk in enumerate(np.array_split(np.array(ranked), NUM_BANDS)):
                chunk = chunk.tolist()
                lo, hi = values[chunk[-1]], values[chunk[0]]
                label = f"quantile band {b + 1} of {NUM_BANDS}: {100 * b // NUM_BANDS}–{100 * (b + 1) // NUM_BANDS} % from the top (values {lo:.3g}–{hi:.3g})"
                picks = chunk[:: max(1, len(chunk) // SAMPLES_PER_BAND)][:SAMPLES_PER_BAND]
                bands.append(f"<div class='band'><h4>{esc(label)}</h4>{top_list(picks, 'band')}</div>")
            samples_html += "<div class='bands'><h3>Samples by quantile band</h3>" + "".join(bands) + "</div>"
        if dropped:
            samples_html += f"<details class='all-samples'><summary>All samples ({len(samples)})</summary>{top_list(order, 'all')}</details>"

    def plain_list(items: list[dict], split: str, cls: str) -> str:
        if not items:
            return "<p><i>none</i></p>"
        return f"<ol class='samples'>{''.join(item(i, s, split, cls, False) for i, s in enumerate(items))}</ol>"

    table = []
    for v in sorted(verdicts, key=lambda v: (v.get("split") != "positive", v.get("sample_index", 0))):
        pool = samples if v.get("split") == "positive" else negatives
        i = v.get("sample_index")
        tok = pool[i]["token"] if isinstance(i, int) and 0 <= i < len(pool) else "?"
        table.append([v.get("split"), i, tok, v.get("answer")])

    neighbours = []
    if dictionary is None:
        header = header.replace("<div class='feature-panels'>", "<p><i>Neighbours need the dictionary: pass <code>--dictionary</code>.</i></p><div class='feature-panels'>", 1)
    else:
        for j, cos in dictionary.neighbours(feature, num_neighbours):
            r = ix.row_of.get(j)
            neighbours.append(
                [j, round(cos, 4), float(f"{ix.frequency[r]:.4g}") if r is not None else None, ix.explanation[r] if r is not None else ""]
            )
    return FeaturePage(
        feature=feature,
        header_html=header,
        samples_html=samples_html,
        non_activating_html=plain_list(negatives, "negative", "quiet"),
        verdicts=table,
        neighbours=neighbours,
    )
