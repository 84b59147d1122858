"""Building feature atlases: for every feature of a dictionary, the corpus samples it is explained and judged on.

A run streams texts through the language model (`hf_bae.activations`), encodes the hooked site with
the dictionary, scores every feature on every token (`atlas_scoring`), and lets each token join the
sample list of its `top_k` features (the paper's per-token quota; `atlas_samples`). It also records
each feature's firing frequency and dead/dense flags (`hf_bae.metrics.FeatureStats`), a few
contexts where it is in its usual state (`non_activating`), and per sample the feature's value at
every token of its context (`token_values`, copied from the batch that holds the sample's row). The result is a `datasets.Dataset` and an
`AtlasInfo` (`atlas_format` saves and loads them).

Samples are *events* (`atlas_scoring`): tokens where an SAE latent or a usually-off BAE code fires
(event "on"), or where a usually-on BAE code switches off (event "off"); a BAE sample is always an
event, and the negatives are tokens in the feature's usual state. Each row also stores the feature's
logit effects (`logit_effects`: W_U · d_j through the language model's unembedding), so that readers
need no language model for them.

Because the BAE score (and the rescaled SAE score) needs corpus means, such runs make two passes:
the first gathers statistics and keeps the activations in memory within `cache_activations_gb`,
the second selects (re-streaming the texts when the activations did not fit).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..configuration import option
from ..formats import DEFAULT_DENSE_THRESHOLD, AtlasInfo
from ..modeling_base import config_hash
from .atlas_format import atlas_features
from .atlas_samples import ContextBuilder, NegativeSampler, SampleSelector, TokenValueStore
from .atlas_scoring import FeatureScorer, dictionary_fingerprint, score_definition, top_k_features
from .logit_effects import dictionary_logit_effects, logit_effects_unavailable

logger = logging.getLogger(__name__)

SELECTIONS = ("corpus", "top")


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
        "Only let a token join features that are in their event state on it (an SAE latent firing, a BAE code deviating "
        "from its usual state). Without it the paper's quota also hands SAE zeros to tokens on which fewer than top_k "
        "latents fire; a BAE sample is always an event (its off state for a usually-on code).",
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
    token_values: bool = option(
        True,
        "Store in each sample the feature's value at every token of its context (`token_values`, for the browser's "
        "shading); costs features x samples_per_feature x context_length x 4 bytes of memory while building.",
    )
    logit_effects_k: int = option(
        10, "Top promoted and suppressed tokens stored per feature (W_U · decoder direction, the `logit_effects` column); 0 = none."
    )

    def __post_init__(self) -> None:
        if self.selection not in SELECTIONS:
            raise ValueError(f"selection={self.selection!r}: choose 'corpus' (the paper's) or 'top'.")
        for name in ("top_k", "samples_per_feature"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.logit_effects_k < 0:
            raise ValueError(f"logit_effects_k must be >= 0, got {self.logit_effects_k}.")
        if self.num_non_activating < 0:
            raise ValueError(f"num_non_activating must be >= 0, got {self.num_non_activating}.")
        if self.max_context_tokens is not None and self.max_context_tokens < 0:
            raise ValueError(f"max_context_tokens must be >= 0 or None, got {self.max_context_tokens}.")


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
    scorers = [FeatureScorer(d, config.sae_rescale) for d in dictionaries]
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

    selectors = [SampleSelector(s.num_features, config.samples_per_feature, config.selection) for s in scorers]
    negatives = [NegativeSampler(s.num_features, config.num_non_activating, config.seed) for s in scorers]
    # The random baseline has no feature values to shade contexts with.
    row_values = [TokenValueStore() if config.token_values and s.kind != "random" else None for s in scorers]
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
        token_index = (TokenValueStore.token_index(batch.row_index.cpu(), batch.positions.cpu(), ids.shape[0], ctx)
                       if any(v is not None for v in row_values) else None)
        for scorer, selector, neg, store in zip(scorers, selectors, negatives, row_values):
            primary, tie, fired, value = scorer.score(acts, n)
            event = scorer.events(value, fired) if fired is not None else None
            if config.active_only and event is not None:
                primary = primary.masked_fill(~event, -math.inf)
            top = top_k_features(primary, config.top_k, tie)
            picked = torch.zeros_like(primary, dtype=torch.bool).scatter_(1, top, True)
            if config.active_only and event is not None:
                picked &= event
            if event is None:  # random: "fires" = picked
                event = picked
                scorer.stats.update(picked)
            selector.count(picked.sum(0).numpy())
            # A deviation feature's sample is always an event: a pick in its usual state shows nothing.
            kept = picked & event if scorer.samples_are_events else picked
            tok_idx, feat_idx = kept.nonzero(as_tuple=True)
            selector.add(
                feat_idx.numpy(), seq[tok_idx].numpy(), primary[tok_idx, feat_idx].double().numpy(),
                (tie[tok_idx, feat_idx] if tie is not None else torch.zeros(len(tok_idx))).double().numpy(),
                value[tok_idx, feat_idx].double().numpy(), count=False,
            )
            if store is not None:
                # The batch holds the sample's whole row: copy its values now, while they exist.
                store.add(*selector.kept_from(batch.first_row * ctx), value, token_index, batch.first_row)
                store.prune(*selector.kept())
            # Negatives: the usual state (off, or on for a usually-on BAE code), never a pick.
            neg.add(~(event | picked), seq, None if scorer.kind == "random" else value)
        del batch
    if num_tokens == 0:
        raise ValueError("The corpus gave no tokens: check the dataset, split and text column.")
    cached = None
    all_rows = np.concatenate(rows) if rows else np.empty((0, context_length), np.int64)
    # Rows are indexed globally: stream rows start at 0 and follow each other.
    contexts = ContextBuilder(tokenizer, all_rows, config.max_context_tokens)

    out = []
    base_source = dict(source or {})
    paths = list(dictionary_paths or [None] * len(dictionaries))
    for scorer, selector, neg, store, dictionary, path in zip(scorers, selectors, negatives, row_values, dictionaries, paths):
        freq = scorer.stats.frequencies
        dead = scorer.stats.dead_mask()
        dense = scorer.stats.dense_mask(config.dense_threshold)
        records = []
        kept = selector.per_feature()
        events = scorer.event_labels()
        effects = dictionary_logit_effects(dictionary, model, tokenizer, config.logit_effects_k)
        logit_meta = {"k": config.logit_effects_k, "computed": effects is not None,
                      "definition": "W_U · d_j: the unembedding times the feature's decoder direction in raw residual units"}
        if effects is None:
            logit_meta["reason"] = logit_effects_unavailable(dictionary, model, config.logit_effects_k)
        for j in tqdm(range(scorer.num_features), desc=f"atlas ({scorer.kind})", unit="feature", disable=not progress):
            k = kept[j]
            samples = [contexts.record(q, s, a, store.get(j, q) if store is not None else None)
                       for q, s, a in zip(k["seq"], k["score"], k["activation"])]
            non_act = [contexts.record(q, 0.0, v) for q, v in neg.per_feature_values(j)]
            records.append({
                "feature": j, "frequency": float(freq[j]), "is_dead": bool(dead[j]), "is_dense": bool(dense[j]),
                "selection_count": int(selector.selection_count[j]), "samples": samples, "non_activating": non_act,
                "event": events[j], "logit_effects": effects[j] if effects is not None else None,
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
            score=score_definition(scorer.kind, config.sae_rescale),
            dead_features=int(dead.sum()),
            dense_features=int(dense.sum()),
            created=time.time(),
            extra={**{k: v for k, v in base_source.items()
                      if k not in ("base_model", "base_model_revision", "dataset", "split", "num_texts")},
                   "logit_effects": logit_meta,
                   "usually_on_features": sum(e == "off" for e in events)},
        )
        out.append((dataset, info))
    return out


def build_atlas(dictionary: Any, model: Any, tokenizer: Any, texts: Sequence[str] | Callable[[], Iterable[str]],
                config: AtlasConfig | None = None, **kwargs: Any):
    """`build_atlases` for one dictionary: returns `(datasets.Dataset, AtlasInfo)`."""
    return build_atlases([dictionary], model, tokenizer, texts, config, **kwargs)[0]
