"""Which samples an atlas keeps, as state over the activation stream: per feature the first
(corpus order, the paper's) or best-scoring samples (`SampleSelector`), a uniform sample of tokens
in its usual state (`NegativeSampler`: where it does not fire, or is on for a usually-on BAE code), the
feature's values at every token of each kept sample's row (`TokenValueStore`), and the sample records with
their contexts and per-token values (`ContextBuilder`).

The sample unit is a token in its context. Texts are packed into rows of `context_length` tokens
(hf_bae.activations), so a sample's context is the stretch of its row between document
boundaries (special tokens such as BOS/EOS start a new stretch), optionally cut to
`max_context_tokens` tokens either side of the token. `position` is the token's index in that
stretch (a leading BOS is index 0, as in the original, which tokenized each sentence with BOS).

A context never leaves its row and a stream batch holds whole rows, so the feature's values at every
token of a sample's context are known in the batch that offers the sample: `TokenValueStore` copies
the row's values then (float32, `context_length` values per kept sample), and `ContextBuilder` turns
them into `token_values` spans of the context text.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch


class SampleSelector:
    """Keeps, per feature, the first (corpus) or best (top) `capacity` samples seen so far."""

    def __init__(self, num_features: int, capacity: int, mode: str):
        self.num_features, self.capacity, self.mode = num_features, capacity, mode
        self.selection_count = np.zeros(num_features, dtype=np.int64)
        self._cols: dict[str, np.ndarray] = {
            "feature": np.empty(0, np.int64), "seq": np.empty(0, np.int64), "score": np.empty(0, np.float64),
            "tie": np.empty(0, np.float64), "activation": np.empty(0, np.float64),
        }

    def count(self, picks: np.ndarray) -> None:
        """Add `[m]` per-feature pick counts to `selection_count` (when not every pick is kept as a sample)."""
        self.selection_count += picks.astype(np.int64)

    def add(self, feature: np.ndarray, seq: np.ndarray, score: np.ndarray, tie: np.ndarray, activation: np.ndarray,
            count: bool = True) -> None:
        """Offer samples (one entry per (token, feature)); `count` adds them to `selection_count` too."""
        if count:
            self.selection_count += np.bincount(feature, minlength=self.num_features)
        new = {"feature": feature, "seq": seq, "score": score, "tie": tie, "activation": activation}
        if self.mode == "corpus":
            # Samples arrive in corpus order: a full feature keeps what it has.
            kept = np.bincount(self._cols["feature"], minlength=self.num_features)
            room = kept[feature] < self.capacity
            new = {k: v[room] for k, v in new.items()}
        cols = {k: np.concatenate([self._cols[k], new[k]]) for k in self._cols}
        if self.mode == "corpus":
            order = np.lexsort((cols["seq"], cols["feature"]))
        else:
            order = np.lexsort((cols["seq"], -cols["tie"], -cols["score"], cols["feature"]))
        cols = {k: v[order] for k, v in cols.items()}
        f = cols["feature"]
        starts = np.searchsorted(f, f, side="left")
        keep = (np.arange(len(f)) - starts) < self.capacity
        self._cols = {k: v[keep] for k, v in cols.items()}

    def kept_from(self, seq: int) -> tuple[np.ndarray, np.ndarray]:
        """(feature, seq) of the kept samples whose seq id is >= `seq` (those of the latest batch, as rows
        arrive in order)."""
        new = self._cols["seq"] >= seq
        return self._cols["feature"][new], self._cols["seq"][new]

    def kept(self) -> tuple[np.ndarray, np.ndarray]:
        return self._cols["feature"], self._cols["seq"]

    def per_feature(self) -> list[dict[str, np.ndarray]]:
        f = self._cols["feature"]
        bounds = np.searchsorted(f, np.arange(self.num_features + 1), side="left")
        return [{k: v[bounds[j]:bounds[j + 1]] for k, v in self._cols.items()} for j in range(self.num_features)]


class NegativeSampler:
    """Uniform sample (without replacement) of `capacity` eligible tokens per feature, by random priorities."""

    def __init__(self, num_features: int, capacity: int, seed: int):
        self.capacity = capacity
        self._gen = torch.Generator().manual_seed(seed + 1)
        self.keys = torch.full((capacity, num_features), math.inf)
        self.seqs = torch.full((capacity, num_features), -1, dtype=torch.int64)
        self.values = torch.zeros((capacity, num_features), dtype=torch.float64)

    def add(self, eligible: torch.Tensor, seq: torch.Tensor, values: torch.Tensor | None = None) -> None:
        """Offer a batch: `eligible` `[n, m]`, the tokens' `seq` ids `[n]` and their feature values `[n, m]`
        (recorded as the negatives' activation: 1 for a usually-on BAE code in its usual state)."""
        if self.capacity == 0:
            return
        n, m = eligible.shape
        keys = torch.rand(n, m, generator=self._gen).masked_fill_(~eligible, math.inf)
        best = torch.cat([self.keys, keys]).topk(self.capacity, dim=0, largest=False)
        idx = best.indices  # < capacity: a kept sample; else a token of this batch
        new = idx >= self.capacity
        old = self.seqs.gather(0, idx.clamp(max=self.capacity - 1))
        batch_idx = (idx - self.capacity).clamp(min=0)
        self.seqs = torch.where(new, seq[batch_idx], old)
        old_values = self.values.gather(0, idx.clamp(max=self.capacity - 1))
        new_values = values.double().gather(0, batch_idx) if values is not None else torch.zeros_like(old_values)
        self.values = torch.where(new, new_values, old_values)
        self.keys = best.values

    def per_feature_values(self, j: int) -> list[tuple[int, float]]:
        """Feature j's negatives as (seq id, value), in corpus order."""
        if self.capacity == 0:
            return []
        ok = torch.isfinite(self.keys[:, j])
        return sorted(zip(self.seqs[ok, j].tolist(), self.values[ok, j].tolist()))

    def per_feature(self, j: int) -> list[int]:
        return [q for q, _ in self.per_feature_values(j)]


class TokenValueStore:
    """Per kept sample (feature, seq id), the feature's value at every position of the sample's row
    (NaN where the stream has no token: special tokens it excluded)."""

    def __init__(self) -> None:
        self._values: dict[tuple[int, int], np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._values)

    @staticmethod
    def token_index(row_index: torch.Tensor, positions: torch.Tensor, num_rows: int, ctx: int) -> torch.Tensor:
        """`[num_rows, ctx]`: the batch's token index at each (row, position), -1 where there is none."""
        index = torch.full((num_rows, ctx), -1, dtype=torch.int64)
        index[row_index.long(), positions.long()] = torch.arange(len(positions))
        return index

    def add(self, feature: np.ndarray, seq: np.ndarray, values: torch.Tensor, token_index: torch.Tensor, first_row: int) -> None:
        """Record the rows of new kept samples: `values` `[n, m]` the batch's feature values, `token_index`
        from `token_index`, `first_row` the batch's first global row."""
        if len(feature) == 0:
            return
        ctx = token_index.shape[1]
        tok = token_index[torch.as_tensor(seq // ctx - first_row)]  # [k, ctx]
        rows = values[tok.clamp(min=0), torch.as_tensor(feature)[:, None]].float()
        rows = rows.masked_fill(tok < 0, math.nan).numpy()
        for f, q, r in zip(feature.tolist(), seq.tolist(), rows):
            self._values[(f, q)] = r.copy()

    def prune(self, feature: np.ndarray, seq: np.ndarray) -> None:
        """Drop the rows of samples no longer kept (selection "top" replaces samples); cheap to call often:
        it works only when evicted rows make up half the store."""
        if len(self._values) <= 2 * len(feature) + 1024:
            return
        self._values = {k: self._values[k] for k in zip(feature.tolist(), seq.tolist()) if k in self._values}

    def get(self, feature: int, seq: int) -> np.ndarray | None:
        return self._values.get((int(feature), int(seq)))


def common_prefix_length(a: str, b: str) -> int:
    if a.startswith(b) or b.startswith(a):  # the usual case, without a character loop
        return min(len(a), len(b))
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class ContextBuilder:
    """Builds sample records (token, context, character offsets) from packed rows."""

    def __init__(self, tokenizer: Any, rows: np.ndarray, max_context_tokens: int | None):
        self.tok = tokenizer
        self.rows = rows
        self.max_context = max_context_tokens
        # Special tokens (BOS, EOS, pad, chat markers) separate documents in packed rows; UNK does not.
        self.boundaries = set(getattr(tokenizer, "all_special_ids", []) or []) - {getattr(tokenizer, "unk_token_id", None)}
        self._segments: dict[int, np.ndarray] = {}
        self._decoded: dict[tuple[int, int, int], str] = {}
        self._spans: dict[tuple[int, int, int], list[tuple[int, int]]] = {}

    def _segment(self, row: int, pos: int) -> tuple[int, int]:
        """[start, end) of the document stretch of `row` containing `pos` (special tokens open stretches)."""
        if row not in self._segments:
            ids = self.rows[row]
            self._segments[row] = np.flatnonzero(np.isin(ids, list(self.boundaries))) if self.boundaries else np.empty(0, np.int64)
        opens = self._segments[row]
        i = np.searchsorted(opens, pos, side="right")
        start = int(opens[i - 1]) if i > 0 else 0
        end = int(opens[i]) if i < len(opens) else len(self.rows[row])
        return start, end

    def _decode(self, row: int, start: int, end: int) -> str:
        key = (row, start, end)
        if key not in self._decoded:
            self._decoded[key] = self.tok.decode(self.rows[row][start:end].tolist(), skip_special_tokens=True)
        return self._decoded[key]

    @staticmethod
    def _span(before: int, after: int, text: str) -> tuple[int, int]:
        """A token's character span from the lengths of the text before and through it, without the
        whitespace that BPE tokens carry."""
        while before < after and text[before].isspace():
            before += 1
        return before, max(before, after)

    def _context_spans(self, row: int, start: int, end: int, text: str) -> list[tuple[int, int]]:
        """The character span of every token of the context [start, end) of `row` (as a sample's own
        start/end: a special token's span is empty), from end + 1 - start prefix decodes."""
        key = (row, start, end)
        if key not in self._spans:
            ids = self.rows[row][start:end].tolist()
            prefix = [common_prefix_length(self.tok.decode(ids[:i], skip_special_tokens=True), text) for i in range(len(ids) + 1)]
            self._spans[key] = [self._span(prefix[i], prefix[i + 1], text) for i in range(len(ids))]
        return self._spans[key]

    def record(self, seq: int, score: float, activation: float, row_values: np.ndarray | None = None) -> dict[str, Any]:
        """The sample record of token `seq`; `row_values` (the feature's value at each position of the
        row, `TokenValueStore`) adds `token_values`: {start, end, value} for every token of the context
        that has a value (an empty list without `row_values`)."""
        ctx_len = self.rows.shape[1]
        row, pos = divmod(int(seq), ctx_len)
        start, end = self._segment(row, pos)
        if self.max_context is not None:
            start, end = max(start, pos - self.max_context), min(end, pos + self.max_context + 1)
        text = self._decode(row, start, end)
        before = common_prefix_length(self._decode(row, start, pos), text)
        after = common_prefix_length(self._decode(row, start, pos + 1), text)
        before, token_end = self._span(before, after, text)
        token_values = []
        if row_values is not None:
            for p, (a, b) in enumerate(self._context_spans(row, start, end, text), start):
                if not math.isnan(row_values[p]):
                    token_values.append({"start": a, "end": b, "value": float(row_values[p])})
        token_id = int(self.rows[row][pos])
        return {
            "token": self.tok.decode([token_id]),
            "token_id": token_id,
            "position": pos - start,
            "context": text,
            "start": before,
            "end": token_end,
            "score": float(score),
            "activation": float(activation),
            "row": row,
            "row_position": pos,
            "token_values": token_values,
        }
