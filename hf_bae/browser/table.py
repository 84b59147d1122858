"""The feature table: one page of rows searched, filtered and sorted from the atlas index alone
(no row of the dataset is read)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .atlas_view import TABLE_SORT_KEYS, AtlasIndex
from .markup import flags
from .search import SampleTextIndex, parse_query

TABLE_COLUMNS = ["feature", "frequency", "flags", "ComSem score", "samples", "explanation"]


def table_page(
    ix: AtlasIndex,
    query: str = "",
    sort_by: str = "feature",
    descending: bool = False,
    hide_dead: bool = False,
    page: int = 1,
    page_size: int = 50,
    text_index: SampleTextIndex | None = None,
) -> tuple[list[list[Any]], int]:
    """One page of the feature table (rows in `TABLE_COLUMNS` order) and the number of matching features.

    `query`: an integer matches that feature id; `token:Senate` the features with a sample on that
    token, `context:the Senate` those with a sample whose context contains the text (both
    case-insensitive, through `text_index`); other text matches explanations (case-insensitive
    substring). Unscored features and empty explanations stay last in either direction.
    """
    if sort_by not in TABLE_SORT_KEYS:
        raise ValueError(f"Unknown sort key {sort_by!r}; choose one of {', '.join(TABLE_SORT_KEYS)}.")
    page_size = max(1, min(int(page_size), 1000))
    order = ix.order(sort_by)
    if descending:
        # Reverse, but keep NaN scores / empty explanations at the end.
        if sort_by == "comsem_score":
            valid = ~np.isnan(ix.comsem_score[order])
            order = np.concatenate([order[valid][::-1], order[~valid]])
        elif sort_by == "explanation":
            valid = np.array([ix.explanation[r] != "" for r in order], dtype=bool)
            order = np.concatenate([order[valid][::-1], order[~valid]])
        else:
            order = order[::-1]
    mode, text = parse_query(query)
    mask = np.ones(len(ix.feature), dtype=bool)
    if mode == "id":
        mask = ix.feature == int(text)
    elif mode in ("token", "context"):
        if text_index is None:
            raise ValueError("Searching samples needs the atlas's samples; this table has none.")
        mask = text_index.matches(mode, text, len(ix.feature)) > 0
    elif text:
        q = text.lower()
        mask = np.fromiter((q in e for e in ix.lowered), dtype=bool, count=len(ix.lowered))
    if hide_dead:
        mask &= ~ix.is_dead
    order = order[mask[order]]
    total = len(order)
    page = max(1, int(page))
    rows = order[(page - 1) * page_size : page * page_size]
    out = []
    for r in rows:
        score = ix.comsem_score[r]
        expl = ix.explanation[r]
        out.append(
            [
                int(ix.feature[r]),
                float(f"{ix.frequency[r]:.4g}"),
                flags(ix.is_dead[r], ix.is_dense[r]),
                None if np.isnan(score) else round(float(score), 3),
                int(ix.num_samples[r]),
                expl if len(expl) <= 160 else expl[:159] + "…",
            ]
        )
    return out, total
