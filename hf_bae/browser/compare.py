"""Compare two dictionaries on the same site: for each feature of A, its nearest features of B by
decoder cosine (where BAE vs SAE differences become visible), with both atlases' explanations.

The cosines come from one matrix product of the unit decoder columns, `U_A · U_Bᵀ`, taken in row
blocks so that 10^5 × 10^5 features never hold the whole matrix; only the top k of each row is kept,
and `FeatureBrowser` computes it once per pair. Cosine does not depend on a dictionary's scale, so
decoders trained with a (folded or not) normalisation compare as they are.

Beside them, co-activation (`co_activation`): the features of B whose atlas samples sit on the same
corpus tokens, by the Jaccard index of the two sample sets of (row, row_position); shown only when
both atlases were built over the same corpus (the rows would otherwise name different tokens).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .atlas_view import Atlas
from .dictionary_view import Dictionary, write_site
from .markup import clip, esc
from .table import table_page

# Nearest features of B kept per feature of A.
NEAREST_K = 5
# Rows of A per block of the product (block × m_B floats at a time).
BLOCK_ROWS = 2048


@dataclass
class Nearest:
    """For every feature of A (row = feature id), its k nearest features of B and their cosines."""

    indices: np.ndarray  # [m_A, k] int64, most similar first
    cosines: np.ndarray  # [m_A, k] float32

    def summary(self) -> dict[str, float]:
        """Mean best cosine, the share of A's features with a close match in B (≥ 0.9), and the share
        of B's features that are some A feature's nearest."""
        best = self.cosines[:, 0]
        return {"mean best cosine": float(best.mean()), "share with a match ≥ 0.9": float((best >= 0.9).mean()),
                "B features that are a nearest": float(len(np.unique(self.indices[:, 0])))}


@torch.inference_mode()
def nearest_features(a: Dictionary, b: Dictionary, k: int = NEAREST_K, block_rows: int = BLOCK_ROWS) -> Nearest:
    """The k features of `b` whose decoder directions have the largest cosine with each feature of `a`."""
    ua, ub = a.unit_decoder, b.unit_decoder
    if ua.shape[1] != ub.shape[1]:
        raise ValueError(f"The dictionaries write vectors of different widths ({ua.shape[1]} vs {ub.shape[1]}): "
                         "compare two dictionaries of the same site.")
    k = min(k, ub.shape[0])
    indices, cosines = [], []
    ubt = ub.T.contiguous()
    for start in range(0, ua.shape[0], block_rows):
        values, ids = torch.topk(ua[start : start + block_rows] @ ubt, k, dim=1)
        indices.append(ids)
        cosines.append(values)
    return Nearest(indices=torch.cat(indices).numpy().astype(np.int64), cosines=torch.cat(cosines).numpy().astype(np.float32))


@dataclass
class CoActivation:
    """For every row of atlas A, the k features of B whose sample tokens overlap its own most (Jaccard)."""

    indices: np.ndarray  # [n_A, k] int64 feature ids of B, -1 where fewer overlap
    jaccard: np.ndarray  # [n_A, k] float32


def _sample_tokens(atlas: Atlas) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(atlas row, row, row_position) of every sample, read from Arrow; None when samples lack them."""
    samples = atlas.dataset.data.column("samples").combine_chunks()
    fields = {f.name for f in samples.type.value_type}
    if not {"row", "row_position"} <= fields:
        return None
    lengths = samples.value_lengths().fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = samples.flatten()
    row = np.asarray(flat.field("row").to_numpy(zero_copy_only=False), dtype=np.float64)
    pos = np.asarray(flat.field("row_position").to_numpy(zero_copy_only=False), dtype=np.float64)
    owner = np.repeat(np.arange(len(lengths)), lengths)
    ok = ~(np.isnan(row) | np.isnan(pos))  # hand-made samples may leave them out
    return owner[ok], row[ok].astype(np.int64), pos[ok].astype(np.int64)


CORPUS_KEYS = ("base_model", "dataset", "split", "num_texts", "num_tokens", "num_rows", "context_length")


def co_activation(atlas_a: Atlas, atlas_b: Atlas, k: int = NEAREST_K) -> tuple[CoActivation | None, str]:
    """(co-activation of A's features with B's, a note): Jaccard |S_a ∩ S_b| / |S_a ∪ S_b| of the sets of
    sample tokens (row, row_position), top k per feature of A. None (and why) when the atlases were built
    over different corpora or their samples do not record where they sit."""
    differ = [key for key in CORPUS_KEYS
              if atlas_a.meta(key) is not None and atlas_b.meta(key) is not None and atlas_a.meta(key) != atlas_b.meta(key)]
    if differ:
        return None, f"Co-activation not shown: the atlases were built over different corpora ({', '.join(differ)} differ)."
    ta, tb = _sample_tokens(atlas_a), _sample_tokens(atlas_b)
    if ta is None or tb is None:
        return None, "Co-activation not shown: an atlas's samples do not record their row and row_position."
    width = int(max([1, *(t[2].max() + 1 for t in (ta, tb) if len(t[2]))]))
    (ra, key_a), (rb, key_b) = [(t[0], t[1] * width + t[2]) for t in (ta, tb)]
    # One entry per (feature, token): a token counts once per feature.
    ra, key_a = np.unique(np.stack([ra, key_a]), axis=1) if len(ra) else (ra, key_a)
    rb, key_b = np.unique(np.stack([rb, key_b]), axis=1) if len(rb) else (rb, key_b)
    n_a, n_b = len(atlas_a), len(atlas_b)
    size_a, size_b = np.bincount(ra, minlength=n_a), np.bincount(rb, minlength=n_b)
    # Join on the token: every (A sample, B sample) pair on the same token.
    order = np.argsort(key_b, kind="stable")
    key_b, rb = key_b[order], rb[order]
    lo, hi = np.searchsorted(key_b, key_a, "left"), np.searchsorted(key_b, key_a, "right")
    count = hi - lo
    first = np.repeat(lo - (np.cumsum(count) - count), count)
    pair_a, pair_b = np.repeat(ra, count), rb[first + np.arange(count.sum())]
    pairs, inter = np.unique(pair_a * n_b + pair_b, return_counts=True)
    pa_, pb_ = pairs // n_b, pairs % n_b
    jac = inter / (size_a[pa_] + size_b[pb_] - inter)
    top = np.lexsort((pb_, -jac, pa_))  # per A row: highest Jaccard first, ties by B row
    pa_, pb_, jac = pa_[top], pb_[top], jac[top]
    rank = np.arange(len(pa_)) - np.searchsorted(pa_, pa_, side="left")
    keep = rank < k
    indices, values = np.full((n_a, k), -1, np.int64), np.zeros((n_a, k), np.float32)
    indices[pa_[keep], rank[keep]] = atlas_b.index.feature[pb_[keep]]
    values[pa_[keep], rank[keep]] = jac[keep]
    return CoActivation(indices, values), "Co-activation: Jaccard index of the two features' sets of sample tokens (row, position)."


def check_comparable(atlas_a: Atlas, a: Dictionary | None, atlas_b: Atlas, b: Dictionary | None) -> list[str]:
    """Raise a ValueError unless both atlases have dictionaries writing the same site; returns notes
    (e.g. the base models they record differ)."""
    for atlas, d in ((atlas_a, a), (atlas_b, b)):
        if d is None:
            raise ValueError(f"Comparing needs the dictionary of atlas '{atlas.name}': pass `--dictionary DIR` for it.")
    site_a, site_b = write_site(atlas_a, a), write_site(atlas_b, b)
    if site_a != site_b:
        raise ValueError(f"'{atlas_a.name}' writes {site_a} but '{atlas_b.name}' writes {site_b}: compare two dictionaries of the same site.")
    notes = []
    models = [getattr(d.config, "base_model", None) for d in (a, b)]
    if all(models) and models[0] != models[1]:
        notes.append(f"The two record different base models ({models[0]} vs {models[1]}); the cosines assume the same residual stream.")
    return notes


def _explanation(atlas: Atlas, feature: int) -> str:
    ix = atlas.index
    r = ix.row_of.get(int(feature))
    return clip(ix.explanation[r], 140) if r is not None else ""


def _chip(atlas: Atlas, feature: int) -> str:
    return f"<button class='chip' data-open='{int(feature)}' data-atlas='{esc(atlas.name)}' title='open feature {int(feature)} of {esc(atlas.name)}'>{int(feature)}</button>"


def compare_page(atlas_a: Atlas, atlas_b: Atlas, nearest: Nearest, notes: list[str], query: str = "", page: int = 1,
                 page_size: int = 25, coact: CoActivation | None = None) -> tuple[str, int]:
    """(HTML, number of matching A features): one page of A's features (searched as the feature table:
    id, explanation, `token:` / `context:`), each with its nearest features of B and, given `coact`, the
    features of B that fire on the same sample tokens; all ids clickable."""
    rows, total = table_page(atlas_a.index, query, "feature", False, False, page, page_size, text_index=atlas_a.search)
    s = nearest.summary()
    head = (f"<p class='compare-summary'>{esc(atlas_a.name)} → {esc(atlas_b.name)}: nearest features by decoder cosine. "
            f"Mean best cosine <b>{s['mean best cosine']:.3f}</b>; {100 * s['share with a match ≥ 0.9']:.3g} % of "
            f"{esc(atlas_a.name)}'s features have a match ≥ 0.9; {int(s['B features that are a nearest']):,} of "
            f"{esc(atlas_b.name)}'s features are someone's nearest.</p>"
            + "".join(f"<p class='note'>{esc(n)}</p>" for n in notes))
    body = []
    for row in rows:
        j = int(row[0])
        near = "".join(
            f"<li data-feature='{int(i)}' data-cosine='{c:.6g}'>{_chip(atlas_b, i)} <span class='cos'>{c:.3f}</span> "
            f"<span class='expl'>{esc(_explanation(atlas_b, i)) or '<i>no explanation</i>'}</span></li>"
            for i, c in zip(nearest.indices[j].tolist(), nearest.cosines[j].tolist())
        )
        co = ""
        if coact is not None:
            r = atlas_a.index.row_of[j]
            co = "".join(f"<li data-feature='{int(i)}' data-jaccard='{v:.6g}'>{_chip(atlas_b, i)} <span class='jaccard'>{v:.3f}</span></li>"
                         for i, v in zip(coact.indices[r].tolist(), coact.jaccard[r].tolist()) if i >= 0)
            co = f"<td><ol class='coactive'>{co or '<li><i>none</i></li>'}</ol></td>"
        body.append(f"<tr data-feature='{j}'><td>{_chip(atlas_a, j)}</td><td>{esc(_explanation(atlas_a, j)) or '<i>no explanation</i>'}</td>"
                    f"<td><ol class='nearest'>{near}</ol></td>{co}</tr>")
    co_head = f"<th>co-activating in {esc(atlas_b.name)} (Jaccard of sample tokens)</th>" if coact is not None else ""
    table = (f"<table class='compare'><tr><th>{esc(atlas_a.name)} feature</th><th>its explanation</th>"
             f"<th>nearest in {esc(atlas_b.name)} (cosine, explanation)</th>{co_head}</tr>{''.join(body)}</table>")
    if not rows:
        table = "<p><i>No feature of A matches.</i></p>"
    return head + table, total


def compare_rows(nearest: Nearest, feature: int) -> list[tuple[int, float]]:
    """(B feature, cosine) of one A feature, most similar first."""
    return [(int(i), float(c)) for i, c in zip(nearest.indices[feature], nearest.cosines[feature])]

