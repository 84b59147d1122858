"""The feature atlas: for every feature of a dictionary, the corpus samples it is explained and judged on.

A run streams texts through the language model (`hf_bae.activations`), encodes the hooked site with
the dictionary, scores every feature on every token, and lets each token join the sample list of
its `top_k` features (the paper's per-token quota). It also records each feature's firing frequency
and dead/dense flags (`hf_bae.metrics.FeatureStats`) and a few contexts where it does not fire.

Scores (the paper's, `util/interp_score.py` of the original code):

- BAE: |v_j − mean(v_j)|, the deviation of the feature from its usual state (v = the code; for a
  k-bit feature its value in [0, 1]), the mean taken over all corpus tokens. The original ranks
  log₂(|·| + 1e-6), the same order. Ties (features of equal frequency in the same state) are broken
  by |pre-step logit|: the feature further from its threshold is more firmly in its state. (The
  original broke them by feature index, which hands spurious samples to low-index features.)
- SAE / TopK / JumpReLU / transcoder: the latent's value; with `sae_rescale` (the original's
  `--SAE_rescale`), z-scored per latent over the corpus, (a − mean) / (std + 1e-6). Ties (e.g. the
  zeros of latents that do not fire) are broken by the pre-activation.
- random (baseline): i.i.d. N(0, 1) scores, seeded; no model. Its "frequency" is how often a
  feature is picked.

Because the BAE score (and the rescaled SAE score) needs corpus means, such runs make two passes:
the first gathers statistics and keeps the activations in memory within `cache_activations_gb`,
the second selects (re-streaming the texts when the activations did not fit).

The sample unit is a token in its context. Texts are packed into rows of `context_length` tokens
(hf_bae.activations), so a sample's context is the stretch of its row between document
boundaries (special tokens such as BOS/EOS start a new stretch), optionally cut to
`max_context_tokens` tokens either side of the token. `position` is the token's index in that
stretch (a leading BOS is index 0, as in the original, which tokenized each sentence with BOS).

Schema (a `datasets.Dataset`, one row per feature, saved with `save_to_disk`; `atlas.json` beside
it holds the run's metadata, `AtlasInfo`):

- feature (int): the feature index.
- frequency (float): firing frequency over the corpus tokens (BAE: code 1, or any bit for k bits;
  SAE: latent ≠ 0; random: picked). is_dead (bool): never fired. is_dense (bool): frequency >
  dense_threshold (metadata).
- selection_count (int): how many tokens picked this feature among their top_k.
- samples (list): the kept samples, in corpus order (selection "corpus", the paper's) or by
  decreasing score (selection "top"), at most `samples_per_feature`. Each sample is
  {token (str), token_id (int), position (int), context (str), start (int), end (int) — character
  offsets of the token in `context` (start == end for a special token, which is not in the
  context text) —, score (float: the selection score above), activation (float: the code or
  latent value), row (int) and row_position (int): where the token sits in the packed corpus}.
- non_activating (list, same struct): up to `num_non_activating` tokens, uniformly sampled
  (seeded), where the feature neither fires nor was picked; used by the beyond-paper
  specificity test.
- explanation (str | None), comsem_score (float | None), verdicts (list of {sample_index (int),
  split ("positive" | "negative"), answer ("yes" | "no" | "unparseable")}): empty until
  `hf-bae interpret` fills them; sample_index indexes `samples` (positive) or `non_activating`
  (negative).
- comsem_status (str | None): "scored", "too_few_samples", "explain_failed",
  "explanation_unparseable", "no_verdicts", "pending" or "not_selected" (see `comsem.py`);
  balanced_accuracy (float | None, beyond the paper); judge_failures (int).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..configuration import option
from ..formats import (ATLAS_STATE_FILE, DEFAULT_DENSE_THRESHOLD, AtlasInfo, atlas_mismatches, read_atlas_info,
                       save_atlas_info)
from ..metrics import FeatureStats
from ..modeling_base import config_hash

logger = logging.getLogger(__name__)

SELECTIONS = ("corpus", "top")
DICTIONARY_TYPES = ("BAE", "SAE", "TRC", "random")




@dataclass
class AtlasConfig:
    """How samples are chosen. Defaults are the original code's (`evaluate_interp.py`)."""

    _argument_group_name = 'Atlas options (sample selection)'  # its --help section

    top_k: int = option(10, "Each token joins the sample lists of its top_k features (the paper's quota).")
    selection: str = option(
        "corpus",
        "Which samples a feature keeps: corpus (the first ones in corpus order, the paper's) or top (the highest-scoring ones).",
        choices=SELECTIONS,
    )
    samples_per_feature: int = option(
        20, "Samples kept per feature (ComSem uses the first 5 to explain and the next 8 to test, so at least 13)."
    )
    num_non_activating: int = option(8, "Non-activating contexts kept per feature (beyond the paper: ComSem's specificity test).")
    sae_rescale: bool = option(
        False, "SAEs: z-score each latent over the corpus before ranking (the original's --SAE_rescale, the paper's 'rescaled ReLU').",
        aliases=["--SAE_rescale"],
    )
    active_only: bool = option(
        False,
        "Only let a token join features that fire on it. The paper's quota also hands tokens to features that are off "
        "(dense BAE features in their rare off state; SAE zeros when fewer than top_k latents fire).",
    )
    max_context_tokens: int | None = option(
        None, "Cut each sample's context to this many tokens either side of the token (None = the whole document stretch of its row)."
    )
    dense_threshold: float = option(DEFAULT_DENSE_THRESHOLD, "A feature is dense when its firing frequency exceeds this.")
    random_features: int | None = option(
        None, "Width of the random baseline: None = that of the first trained dictionary of the run, else 4 x the model's hidden size (the original)."
    )
    seed: int = option(0, "Seed of the random baseline's scores and of the non-activating samples.")
    cache_activations_gb: float = option(
        2.0, "Activations kept in memory between the two passes (BAE, rescaled SAE); beyond it the texts are streamed twice."
    )

    def __post_init__(self) -> None:
        if self.selection not in SELECTIONS:
            raise ValueError(f"selection={self.selection!r}: choose 'corpus' (the paper's) or 'top'.")
        for name in ("top_k", "samples_per_feature"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.num_non_activating < 0:
            raise ValueError(f"num_non_activating must be >= 0, got {self.num_non_activating}.")
        if self.max_context_tokens is not None and self.max_context_tokens < 0:
            raise ValueError(f"max_context_tokens must be >= 0 or None, got {self.max_context_tokens}.")


# ----------------------------------------------------------------------------------------------
# Dictionaries: identity and type
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RandomBaseline:
    """The random "dictionary" of the original: i.i.d. N(0, 1) scores per token and feature."""

    num_features: int
    seed: int = 0

    kind = "random"
    score_is_deviation = False

    def fingerprint(self) -> str:
        return f"random:num_features={self.num_features}:seed={self.seed}"


def dictionary_type(dictionary: Any) -> str:
    """"BAE", "SAE", "TRC" (a transcoder) or "random": the dictionary's `kind`."""
    kind = getattr(dictionary, "kind", None)
    if not isinstance(kind, str):
        raise TypeError(f"Not a dictionary: {type(dictionary).__name__}. Load one with AutoModel.from_pretrained after `import hf_bae`.")
    return kind


def dictionary_fingerprint(dictionary: Any) -> str:
    """SHA-256 of a dictionary's config and weights (its `fingerprint()`)."""
    return dictionary.fingerprint()


# ----------------------------------------------------------------------------------------------
# Scoring (pure functions)
# ----------------------------------------------------------------------------------------------
def bae_deviation(values: torch.Tensor, mean_values: torch.Tensor) -> torch.Tensor:
    """The paper's BAE score |v − mean(v)| (its log₂(· + 1e-6) ranks the same)."""
    return (values - mean_values).abs()


def zscore(latents: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """The original's SAE rescaling (a − mean) / (std + eps), population std."""
    return (latents - mean) / (std + eps)


def top_k_features(primary: torch.Tensor, k: int, secondary: torch.Tensor | None = None) -> torch.Tensor:
    """Indices `[n, k]` of the k largest `primary` scores per row, ties broken by the larger `secondary`.

    Exact lexicographic top-k with two `topk` calls: every feature strictly above the k-th value is
    in; the remaining slots go to the features equal to it, by `secondary`.
    """
    k = min(k, primary.shape[-1])
    if secondary is None:
        return primary.topk(k, dim=-1).indices
    kth = primary.topk(k, dim=-1).values[..., -1:]
    key = torch.where(primary > kth, torch.full_like(secondary, math.inf),
                      torch.where(primary == kth, secondary, torch.full_like(secondary, -math.inf)))
    return key.topk(k, dim=-1).indices


class _Scorer:
    """Turns a batch of activations into per-token feature scores for one dictionary (state: corpus statistics)."""

    needs_first_pass = False

    def __init__(self, dictionary: Any, config: AtlasConfig):
        self.dictionary = dictionary
        self.kind = dictionary_type(dictionary)
        self.config = config
        self.site: str | None = None
        if self.kind == "random":
            self.num_features = dictionary.num_features
            self.bits = 1
            self._gen = torch.Generator().manual_seed(dictionary.seed)
        else:
            c = dictionary.config
            if c.layer is None:
                raise ValueError(
                    "This dictionary's config does not record its layer: set `layer` and `site` in its config.json "
                    "(the hidden states it was trained on) before building an atlas."
                )
            self.site = c.hookpoint
            self.num_features = c.num_latents
            self.bits = getattr(c, "bits", 1)
            self.needs_first_pass = dictionary.score_is_deviation or config.sae_rescale
        self.stats = FeatureStats(num_features=self.num_features, num_codes=self.num_features * self.bits,
                                  binary=self.kind == "BAE")
        self._sum = torch.zeros(self.num_features, dtype=torch.float64)
        self._sq_sum = torch.zeros(self.num_features, dtype=torch.float64)
        self._count = 0
        self.mean: torch.Tensor | None = None
        self.std: torch.Tensor | None = None

    @torch.no_grad()
    def _encode(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(values [n, m] float32, fired [n, m] bool, tie-break key [n, m], codes [n, m·bits] | None)."""
        a = self.dictionary.feature_activity(hidden.to(self.dictionary.device))
        return a.values.cpu(), a.fired.cpu(), a.firmness.cpu(), None if a.codes is None else a.codes.cpu()

    def observe(self, activations: dict[str, torch.Tensor]) -> None:
        """First pass: corpus statistics."""
        values, fired, _, codes = self._encode(activations[self.site])
        self.stats.update(fired, codes=codes)
        v = values.double()
        self._sum += v.sum(0)
        self._sq_sum += v.pow(2).sum(0)
        self._count += v.shape[0]

    def finish_first_pass(self) -> None:
        if self._count == 0:
            raise ValueError("The corpus gave no tokens: check the dataset, split and text column.")
        self.mean = self._sum / self._count
        self.std = (self._sq_sum / self._count - self.mean.pow(2)).clamp_min(0).sqrt()

    def score(self, activations: dict[str, torch.Tensor], n: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        """(primary score [n, m], tie-break [n, m] | None, fired [n, m] | None, activation value [n, m])."""
        if self.kind == "random":
            scores = torch.randn(n, self.num_features, generator=self._gen)
            return scores, None, None, scores
        values, fired, tie, codes = self._encode(activations[self.site])
        if not self.needs_first_pass:
            self.stats.update(fired, codes=codes)
        if self.dictionary.score_is_deviation:
            primary = bae_deviation(values, self.mean.float())
        elif self.config.sae_rescale:
            primary = zscore(values, self.mean.float(), self.std.float())
        else:
            primary = values
        return primary, tie, fired, values


# ----------------------------------------------------------------------------------------------
# Sample selection and non-activating samples (state over the stream)
# ----------------------------------------------------------------------------------------------
class _SampleSelector:
    """Keeps, per feature, the first (corpus) or best (top) `capacity` samples seen so far."""

    def __init__(self, num_features: int, capacity: int, mode: str):
        self.num_features, self.capacity, self.mode = num_features, capacity, mode
        self.selection_count = np.zeros(num_features, dtype=np.int64)
        self._cols: dict[str, np.ndarray] = {
            "feature": np.empty(0, np.int64), "seq": np.empty(0, np.int64), "score": np.empty(0, np.float64),
            "tie": np.empty(0, np.float64), "activation": np.empty(0, np.float64),
        }

    def add(self, feature: np.ndarray, seq: np.ndarray, score: np.ndarray, tie: np.ndarray, activation: np.ndarray) -> None:
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

    def per_feature(self) -> list[dict[str, np.ndarray]]:
        f = self._cols["feature"]
        bounds = np.searchsorted(f, np.arange(self.num_features + 1), side="left")
        return [{k: v[bounds[j]:bounds[j + 1]] for k, v in self._cols.items()} for j in range(self.num_features)]


class _NegativeSampler:
    """Uniform sample (without replacement) of `capacity` eligible tokens per feature, by random priorities."""

    def __init__(self, num_features: int, capacity: int, seed: int):
        self.capacity = capacity
        self._gen = torch.Generator().manual_seed(seed + 1)
        self.keys = torch.full((capacity, num_features), math.inf)
        self.seqs = torch.full((capacity, num_features), -1, dtype=torch.int64)

    def add(self, eligible: torch.Tensor, seq: torch.Tensor) -> None:
        if self.capacity == 0:
            return
        n, m = eligible.shape
        keys = torch.rand(n, m, generator=self._gen).masked_fill_(~eligible, math.inf)
        best = torch.cat([self.keys, keys]).topk(self.capacity, dim=0, largest=False)
        idx = best.indices  # < capacity: a kept sample; else a token of this batch
        old = self.seqs.gather(0, idx.clamp(max=self.capacity - 1))
        self.seqs = torch.where(idx < self.capacity, old, seq[(idx - self.capacity).clamp(min=0)])
        self.keys = best.values

    def per_feature(self, j: int) -> list[int]:
        if self.capacity == 0:
            return []
        ok = torch.isfinite(self.keys[:, j])
        return sorted(self.seqs[ok, j].tolist())


# ----------------------------------------------------------------------------------------------
# Contexts
# ----------------------------------------------------------------------------------------------
def _common_prefix_length(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class _ContextBuilder:
    """Builds sample records (token, context, character offsets) from packed rows."""

    def __init__(self, tokenizer: Any, rows: np.ndarray, max_context_tokens: int | None):
        self.tok = tokenizer
        self.rows = rows
        self.max_context = max_context_tokens
        # Special tokens (BOS, EOS, pad, chat markers) separate documents in packed rows; UNK does not.
        self.boundaries = set(getattr(tokenizer, "all_special_ids", []) or []) - {getattr(tokenizer, "unk_token_id", None)}
        self._segments: dict[int, np.ndarray] = {}
        self._decoded: dict[tuple[int, int, int], str] = {}

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

    def record(self, seq: int, score: float, activation: float) -> dict[str, Any]:
        ctx_len = self.rows.shape[1]
        row, pos = divmod(int(seq), ctx_len)
        start, end = self._segment(row, pos)
        if self.max_context is not None:
            start, end = max(start, pos - self.max_context), min(end, pos + self.max_context + 1)
        text = self._decode(row, start, end)
        before = _common_prefix_length(self._decode(row, start, pos), text)
        after = _common_prefix_length(self._decode(row, start, pos + 1), text)
        # The token's span, without the whitespace that BPE tokens carry.
        while before < after and text[before].isspace():
            before += 1
        token_id = int(self.rows[row][pos])
        return {
            "token": self.tok.decode([token_id]),
            "token_id": token_id,
            "position": pos - start,
            "context": text,
            "start": before,
            "end": max(before, after),
            "score": float(score),
            "activation": float(activation),
            "row": row,
            "row_position": pos,
        }


# ----------------------------------------------------------------------------------------------
# Dataset schema, saving and loading
# ----------------------------------------------------------------------------------------------
def atlas_features():
    """The `datasets.Features` of an atlas."""
    import datasets

    sample = {
        "token": datasets.Value("string"), "token_id": datasets.Value("int64"), "position": datasets.Value("int64"),
        "context": datasets.Value("string"), "start": datasets.Value("int64"), "end": datasets.Value("int64"),
        "score": datasets.Value("float64"), "activation": datasets.Value("float64"),
        "row": datasets.Value("int64"), "row_position": datasets.Value("int64"),
    }
    verdict = {"sample_index": datasets.Value("int64"), "split": datasets.Value("string"), "answer": datasets.Value("string")}
    return datasets.Features({
        "feature": datasets.Value("int64"),
        "frequency": datasets.Value("float64"),
        "is_dead": datasets.Value("bool"),
        "is_dense": datasets.Value("bool"),
        "selection_count": datasets.Value("int64"),
        "samples": datasets.List(sample),
        "non_activating": datasets.List(sample),
        "explanation": datasets.Value("string"),
        "comsem_score": datasets.Value("float64"),
        "verdicts": datasets.List(verdict),
        "comsem_status": datasets.Value("string"),
        "balanced_accuracy": datasets.Value("float64"),
        "judge_failures": datasets.Value("int64"),
    })


def save_atlas(dataset, info: AtlasInfo, path: str | os.PathLike) -> Path:
    """Save the atlas with `save_to_disk` and its metadata as `atlas.json` in the same folder."""
    if len(dataset) == 0:
        raise ValueError("The atlas is empty (no features): nothing to save.")
    path = Path(path)
    dataset.save_to_disk(str(path))
    save_atlas_info(info, path)
    return path


def load_atlas(path: str | os.PathLike):
    """Load an atlas saved by `save_atlas`: returns `(datasets.Dataset, AtlasInfo)`."""
    import datasets

    path = Path(path)
    info = read_atlas_info(path)
    state = json.loads((path / ATLAS_STATE_FILE).read_text()) if (path / ATLAS_STATE_FILE).is_file() else {}
    # datasets cannot load a saved dataset with no rows (it has no data files).
    dataset = datasets.load_from_disk(str(path)) if state.get("_data_files", [None]) else []
    if len(dataset) == 0:
        raise ValueError(f"The atlas at {path} is empty (no features): rebuild it with `hf-bae atlas` over a non-empty corpus.")
    return dataset, info


def check_atlas_matches(info: AtlasInfo, dictionary: Any, atlas_path: str | os.PathLike = "the atlas") -> None:
    """Raise ValueError if the atlas was not built from `dictionary` (`hf_bae.formats.atlas_mismatches`:
    width, provenance, kind, then the config + weights fingerprint, which must be recorded)."""
    problems = atlas_mismatches(info, dictionary)
    if not problems and not info.dictionary_fingerprint:
        problems = ["the atlas records no dictionary fingerprint"]
    if problems:
        raise ValueError(
            f"{atlas_path} was built from another dictionary than the one given: {'; '.join(problems)}. "
            "Rebuild it with `hf-bae atlas` for this dictionary, or pass the matching dictionary."
        )


# ----------------------------------------------------------------------------------------------
# Building
# ----------------------------------------------------------------------------------------------
_SCORE_DEFINITIONS = {
    "BAE": "|code - mean code| (the paper's deviation from the usual state), ties by |pre-step logit|",
    "SAE": "latent value, ties by pre-activation",
    "SAE_rescaled": "(latent - mean) / (std + 1e-6) per latent, ties by pre-activation",
    "random": "i.i.d. N(0, 1)",
}


def _score_definition(kind: str, rescale: bool) -> str:
    if kind in ("SAE", "TRC"):
        return _SCORE_DEFINITIONS["SAE_rescaled" if rescale else "SAE"]
    return _SCORE_DEFINITIONS[kind]


def build_atlases(
    dictionaries: Sequence[Any],
    model: Any,
    tokenizer: Any,
    texts: Sequence[str] | Callable[[], Iterable[str]],
    config: AtlasConfig | None = None,
    *,
    context_length: int = 128,
    batch_size: int = 8,
    exclude_special_tokens: bool = False,
    device: str | None = None,
    dtype: Any = None,
    progress: bool = True,
    source: dict[str, Any] | None = None,
    dictionary_paths: Sequence[str | None] | None = None,
) -> list[tuple[Any, AtlasInfo]]:
    """Build one feature atlas per dictionary from a single stream of the language model's activations.

    Args:
        dictionaries: `BinaryAutoencoder`s, `SparseAutoencoder`s (transcoders included) and/or
            `RandomBaseline`s. Each reads the site its config names.
        model, tokenizer: the language model (e.g. from `hf_bae.activations.load_language_model`).
        texts: the corpus, as a sequence or a callable returning a fresh iterable (called again if the
            activations do not fit in memory between the two passes).
        config: sample selection options.
        context_length, batch_size, exclude_special_tokens, device, dtype: passed to
            `hf_bae.activations.stream_activations`. Special tokens are kept by default, as in the
            original (which scored BOS too).
        source: corpus metadata recorded in `AtlasInfo` (dataset, split, num_texts, base_model, ...).
        dictionary_paths: where each dictionary was loaded from (metadata).

    Returns:
        `[(datasets.Dataset, AtlasInfo)]`, one per dictionary, in order.
    """
    import datasets

    from ..activations import Site, stream_activations

    config = config or AtlasConfig()
    if not dictionaries:
        raise ValueError("No dictionary given: pass at least one dictionary or RandomBaseline.")
    scorers = [_Scorer(d, config) for d in dictionaries]
    sites = sorted({s.site for s in scorers if s.site is not None})
    # The random baseline needs only the tokens: the cheapest site lets the stream stop after layer 0.
    stream_sites = [Site.parse(s) for s in sites] or [Site(0, "resid_post")]
    stream_kwargs = dict(context_length=context_length, batch_size=batch_size, exclude_special_tokens=exclude_special_tokens,
                         device=device, dtype=dtype, progress=progress)

    def stream():
        corpus = texts() if callable(texts) else texts
        return stream_activations(model, tokenizer, corpus, stream_sites, **stream_kwargs)

    cached: list[Any] | None = None
    if any(s.needs_first_pass for s in scorers):
        cached, budget, used = [], config.cache_activations_gb * 2**30, 0
        for batch in stream():
            acts = {s: batch.activations[s] for s in sites}
            for s in scorers:
                if s.needs_first_pass:
                    s.observe(acts)
            if cached is not None:
                used += sum(a.numel() * a.element_size() for a in acts.values())
                if used > budget:
                    logger.info("activations exceed %.1f GB: the texts will be streamed a second time", config.cache_activations_gb)
                    cached = None
                else:
                    cached.append(batch)
        if cached is None and not callable(texts) and not isinstance(texts, Sequence):
            raise ValueError(
                "The activations do not fit in cache_activations_gb and `texts` can be read only once: pass a list "
                "or a callable that returns the texts again, or raise cache_activations_gb."
            )
        for s in scorers:
            if s.needs_first_pass:
                s.finish_first_pass()

    selectors = [_SampleSelector(s.num_features, config.samples_per_feature, config.selection) for s in scorers]
    negatives = [_NegativeSampler(s.num_features, config.num_non_activating, config.seed) for s in scorers]
    rows: list[np.ndarray] = []
    num_tokens = num_rows = 0
    for batch in (cached if cached is not None else stream()):
        ids = batch.input_ids
        ctx = ids.shape[1]
        if batch.first_row != num_rows:
            raise RuntimeError(f"activation stream skipped rows: expected row {num_rows}, got {batch.first_row}.")
        num_rows += ids.shape[0]
        rows.append(ids.cpu().numpy().astype(np.int64))
        seq = (batch.first_row + batch.row_index.long().cpu()) * ctx + batch.positions.long().cpu()
        n = seq.shape[0]
        num_tokens += n
        acts = {s: batch.activations[s] for s in sites}
        for scorer, selector, neg in zip(scorers, selectors, negatives):
            primary, tie, fired, value = scorer.score(acts, n)
            if config.active_only and fired is not None:
                primary = primary.masked_fill(~fired, -math.inf)
            top = top_k_features(primary, config.top_k, tie)
            picked = torch.zeros_like(primary, dtype=torch.bool).scatter_(1, top, True)
            if config.active_only and fired is not None:
                picked &= fired
            if fired is None:  # random: "fires" = picked
                fired = picked
                scorer.stats.update(fired)
            tok_idx, feat_idx = picked.nonzero(as_tuple=True)
            selector.add(
                feat_idx.numpy(), seq[tok_idx].numpy(), primary[tok_idx, feat_idx].double().numpy(),
                (tie[tok_idx, feat_idx] if tie is not None else torch.zeros(len(tok_idx))).double().numpy(),
                value[tok_idx, feat_idx].double().numpy(),
            )
            neg.add(~(fired | picked), seq)
        del batch
    if num_tokens == 0:
        raise ValueError("The corpus gave no tokens: check the dataset, split and text column.")
    cached = None
    all_rows = np.concatenate(rows) if rows else np.empty((0, context_length), np.int64)
    # Rows are indexed globally: stream rows start at 0 and follow each other.
    contexts = _ContextBuilder(tokenizer, all_rows, config.max_context_tokens)

    out = []
    base_source = dict(source or {})
    paths = list(dictionary_paths or [None] * len(dictionaries))
    for scorer, selector, neg, dictionary, path in zip(scorers, selectors, negatives, dictionaries, paths):
        freq = scorer.stats.frequencies
        dead = scorer.stats.dead_mask()
        dense = scorer.stats.dense_mask(config.dense_threshold)
        records = []
        kept = selector.per_feature()
        for j in tqdm(range(scorer.num_features), desc=f"atlas ({scorer.kind})", unit="feature", disable=not progress):
            k = kept[j]
            samples = [contexts.record(q, s, a) for q, s, a in zip(k["seq"], k["score"], k["activation"])]
            non_act = [contexts.record(q, 0.0, 0.0) for q in neg.per_feature(j)]
            records.append({
                "feature": j, "frequency": float(freq[j]), "is_dead": bool(dead[j]), "is_dense": bool(dense[j]),
                "selection_count": int(selector.selection_count[j]), "samples": samples, "non_activating": non_act,
                "explanation": None, "comsem_score": None, "verdicts": [], "comsem_status": None,
                "balanced_accuracy": None, "judge_failures": 0,
            })
        dataset = datasets.Dataset.from_list(records, features=atlas_features())
        c = getattr(dictionary, "config", None)
        info = AtlasInfo(
            dictionary_type=scorer.kind,
            num_features=scorer.num_features,
            dictionary_path=path,
            dictionary_fingerprint=dictionary_fingerprint(dictionary),
            config_hash=config_hash(c) if c is not None else None,
            base_model=base_source.get("base_model") or (c.base_model if c is not None else None),
            base_model_revision=base_source.get("base_model_revision"),
            layer=c.layer if c is not None else None,
            site=scorer.site,
            dataset=base_source.get("dataset"),
            split=base_source.get("split"),
            num_texts=base_source.get("num_texts"),
            num_tokens=num_tokens,
            num_rows=int(all_rows.shape[0]),
            context_length=context_length,
            exclude_special_tokens=exclude_special_tokens,
            dense_threshold=config.dense_threshold,
            top_k=config.top_k,
            selection=config.selection,
            samples_per_feature=config.samples_per_feature,
            num_non_activating=config.num_non_activating,
            sae_rescale=config.sae_rescale,
            active_only=config.active_only,
            max_context_tokens=config.max_context_tokens,
            seed=config.seed,
            score=_score_definition(scorer.kind, config.sae_rescale),
            dead_features=int(dead.sum()),
            dense_features=int(dense.sum()),
            created=time.time(),
            extra={k: v for k, v in base_source.items()
                   if k not in ("base_model", "base_model_revision", "dataset", "split", "num_texts")},
        )
        out.append((dataset, info))
    return out


def build_atlas(dictionary: Any, model: Any, tokenizer: Any, texts: Sequence[str] | Callable[[], Iterable[str]],
                config: AtlasConfig | None = None, **kwargs: Any):
    """`build_atlases` for one dictionary: returns `(datasets.Dataset, AtlasInfo)`."""
    return build_atlases([dictionary], model, tokenizer, texts, config, **kwargs)[0]
