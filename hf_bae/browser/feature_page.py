"""The page of one feature: explanation, ComSem score and status, frequency, the samples with the firing
token highlighted, the judge's verdicts and the nearest features by decoder cosine."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .atlas_view import Atlas
from .dictionary_view import Dictionary
from .markup import esc, flags, fmt_freq, highlight_context


@dataclass
class FeaturePage:
    """What the feature view shows."""

    feature: int
    header_html: str
    samples_html: str
    non_activating_html: str
    verdicts: list[list[Any]]  # [split, sample, token, answer]
    neighbours: list[list[Any]]  # [feature, cosine, frequency, explanation]


def build_feature_page(atlas: Atlas, dictionary: Dictionary | None, feature: int, num_neighbours: int = 10) -> FeaturePage:
    """The page of `feature` (an id the atlas holds) from its atlas row; neighbours need `dictionary`."""
    rec = atlas.record(feature)
    ix = atlas.index
    samples, negatives = rec.get("samples") or [], rec.get("non_activating") or []
    verdicts = rec.get("verdicts") or []
    answer = {(v.get("split"), v.get("sample_index")): v.get("answer") for v in verdicts}

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
        f"<p>Frequency: {esc(fmt_freq(float(rec['frequency'])))} · {len(samples)} samples · {len(negatives)} non-activating samples</p></div>"
    )

    def sample_list(items: list[dict], split: str, cls: str) -> str:
        if not items:
            return "<p><i>none</i></p>"
        lis = []
        for i, s in enumerate(items):
            a = answer.get((split, i))
            verdict = f"<span class='verdict {esc(a)}'>judge: {esc(a)}</span>" if a else ""
            sc = s.get("score")
            sc_html = f"<span class='score'>{sc:.3g}</span>" if isinstance(sc, (int, float)) else ""
            lis.append(
                f"<li>{sc_html}<span class='ctx'>{highlight_context(s.get('context') or '', int(s.get('start') or 0), int(s.get('end') or 0), cls, s.get('token') or '')}</span>"
                f"<span class='tok' title='token id {esc(s.get('token_id'))}, position {esc(s.get('position'))}'>{esc(repr(s.get('token')))}</span>{verdict}</li>"
            )
        return f"<ol class='samples'>{''.join(lis)}</ol>"

    table = []
    for v in sorted(verdicts, key=lambda v: (v.get("split") != "positive", v.get("sample_index", 0))):
        pool = samples if v.get("split") == "positive" else negatives
        i = v.get("sample_index")
        tok = pool[i]["token"] if isinstance(i, int) and 0 <= i < len(pool) else "?"
        table.append([v.get("split"), i, tok, v.get("answer")])

    neighbours = []
    if dictionary is None:
        header = header.replace("</div>", "<p><i>Neighbours need the dictionary: pass <code>--dictionary</code>.</i></p></div>")
    else:
        for j, cos in dictionary.neighbours(feature, num_neighbours):
            r = ix.row_of.get(j)
            neighbours.append(
                [j, round(cos, 4), float(f"{ix.frequency[r]:.4g}") if r is not None else None, ix.explanation[r] if r is not None else ""]
            )
    return FeaturePage(
        feature=feature,
        header_html=header,
        samples_html=sample_list(samples, "positive", "fire"),
        non_activating_html=sample_list(negatives, "negative", "quiet"),
        verdicts=table,
        neighbours=neighbours,
    )
