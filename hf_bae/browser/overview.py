"""The overview: one line of provenance per atlas, its summary numbers (dead / dense counts, code-set
entropy, ComSem scores) and the cards that show them. Computed from the atlas index only."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ..formats import site_name
from ..losses import binary_entropy_bits
from .atlas_view import Atlas
from .dictionary_view import Dictionary
from .markup import esc


def describe(atlas: Atlas, dictionary: Dictionary | None) -> str:
    """One line of provenance: dictionary, base model, layer, site."""
    d = dictionary
    base = atlas.meta("base_model") or (d.config.base_model if d else None)
    layer = atlas.meta("layer") if atlas.meta("layer") is not None else (d.config.layer if d else None)
    site = site_name(atlas.meta("site") or (d.config.site if d else ""))
    parts = [f"{len(atlas):,} features", f"atlas {atlas.source}"]
    if d is not None:
        parts.append(f"dictionary {d.source} ({d.kind})")
    if base:
        parts.append(f"base model {base}")
    if layer is not None:
        parts.append(f"layer {layer} {site or ''}".strip())
    return " · ".join(parts)


def summary(atlas: Atlas) -> dict[str, Any]:
    """Per-atlas numbers of the overview."""
    ix = atlas.index
    p = torch.from_numpy(ix.frequency)
    entropy = atlas.meta("code_entropy_bits")
    if entropy is None:
        entropy = float(binary_entropy_bits(p.clamp(0, 1), eps=0.0).nan_to_num(0.0).sum())
    scored = ~np.isnan(ix.comsem_score)
    tokens = atlas.meta("num_tokens", "tokens")
    return {
        "atlas": atlas.name,
        "features": len(atlas),
        "dead": int(ix.is_dead.sum()),
        "dense": int(ix.is_dense.sum()),
        "dense threshold": atlas.dense_threshold,
        "tokens": int(tokens) if tokens is not None else None,
        "L0 (Σ frequencies)": float(ix.frequency.sum()),
        "code-set entropy (bits)": float(entropy),
        "explained": int(sum(1 for e in ix.explanation if e)),
        "scored": int(scored.sum()),
        "mean ComSem score": float(ix.comsem_score[scored].mean()) if scored.any() else None,
        "ComSem score ≥ 0.5": int((ix.comsem_score[scored] >= 0.5).sum()),
    }


def overview_html(rows: Sequence[dict[str, Any]], describe_atlas: Callable[[str], str]) -> str:
    """One card per atlas from its `summary` row; `describe_atlas(name)` gives its provenance line."""
    cards = []
    for r in rows:
        score = "—" if r["mean ComSem score"] is None else f"{r['mean ComSem score']:.3f}"
        tokens = "" if r["tokens"] is None else f"<div class='stat'><b>{r['tokens']:,}</b><span>tokens</span></div>"
        cards.append(
            f"<div class='atlas-card'><h3>{esc(r['atlas'])}</h3><p class='prov'>{esc(describe_atlas(r['atlas']))}</p>"
            f"<div class='stats'><div class='stat'><b>{r['features']:,}</b><span>features</span></div>"
            f"<div class='stat'><b>{r['dead']:,}</b><span>dead</span></div>"
            f"<div class='stat'><b>{r['dense']:,}</b><span>dense (p &gt; {r['dense threshold']:g})</span></div>"
            f"<div class='stat'><b>{r['code-set entropy (bits)']:.1f}</b><span>code-set entropy (bits)</span></div>"
            f"<div class='stat'><b>{r['L0 (Σ frequencies)']:.1f}</b><span>L0 (features / token)</span></div>"
            f"<div class='stat'><b>{r['scored']:,}</b><span>scored by ComSem</span></div>"
            f"<div class='stat'><b>{score}</b><span>mean ComSem score</span></div>{tokens}</div></div>"
        )
    return "<div class='overview'>" + "".join(cards) + "</div>"
