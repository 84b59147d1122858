"""`FeatureBrowser`, the view model of the feature browser (what the Gradio Space, `hf_bae.space`, shows,
without Gradio): atlases (one, or several side by side), their dictionaries, the views over them, and
the caches that keep it responsive (overview drawn once, feature pages kept, one LM per name, the
nearest-feature table of a compared pair computed once)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..activations.language_models import load_language_model
from .atlas_view import Atlas
from .compare import CoActivation, Nearest, check_comparable, co_activation, compare_page, nearest_features
from .dictionary_view import Dictionary, check_compatible
from .feature_page import FeaturePage, build_feature_page
from .overview import describe, overview_html, summary
from .plots import frequency_plot, score_plot
from .table import table_page
from .steering import SteeringView, steering_view
from .try_it import TryIt, analyse_text, language_model_of, load_message

DEFAULT_MAX_TOKENS = 256


class FeatureBrowser:
    """Atlases (one, or several side by side), their dictionaries, and the views over them.

    Args:
        atlases: the atlases; names must be distinct.
        dictionaries: one per atlas (or None where absent: then no neighbours and no Try it).
        language_model: LM id or path for Try it; defaults to the dictionary's `base_model`.
        max_tokens: Try-it input is truncated to this many tokens (with a notice).
    """

    def __init__(
        self,
        atlases: Sequence[Atlas],
        dictionaries: Sequence[Dictionary | None] | None = None,
        language_model: str | None = None,
        max_tokens: int = DEFAULT_MAX_TOKENS,
    ):
        if not atlases:
            raise ValueError("No atlas given: pass at least one (`--atlas DIR`).")
        dictionaries = list(dictionaries) if dictionaries is not None else [None] * len(atlases)
        if len(dictionaries) != len(atlases):
            raise ValueError(f"Got {len(atlases)} atlases but {len(dictionaries)} dictionaries: pass one dictionary per atlas.")
        names = [a.name for a in atlases]
        for i, a in enumerate(atlases):  # make labels unique: "BAE (runs/a)", "BAE (runs/b)"
            if names.count(a.name) > 1:
                a.name = f"{a.name} ({Path(str(a.source)).name or i + 1})"
        if len({a.name for a in atlases}) < len(atlases):
            for i, a in enumerate(atlases):
                a.name = f"{a.name} #{i + 1}"
        for atlas, dictionary in zip(atlases, dictionaries):
            if dictionary is not None:
                check_compatible(atlas, dictionary)
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}.")
        self.atlases = {a.name: a for a in atlases}
        self.dictionaries = {a.name: d for a, d in zip(atlases, dictionaries)}
        self.language_model = language_model
        self.max_tokens = max_tokens
        self._lms: dict[tuple[str, str | None], tuple[Any, Any]] = {}
        self._overview: tuple | None = None
        self._pages: OrderedDict[tuple[str, int, int], FeaturePage] = OrderedDict()
        self._nearest: dict[tuple[str, str], tuple[Nearest, list[str]]] = {}
        self._coact: dict[tuple[str, str], tuple[CoActivation | None, str]] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_paths(
        cls,
        atlases: Sequence[str],
        models: Sequence[str] = (),
        language_model: str | None = None,
        names: Sequence[str] = (),
        max_tokens: int = DEFAULT_MAX_TOKENS,
    ) -> FeatureBrowser:
        """Load atlases and dictionaries (`models`, one per atlas in the same order) by path / Hub id. A
        missing dictionary falls back to the atlas's recorded one when that exists."""
        if len(models) > len(atlases):
            raise ValueError(f"Got {len(models)} dictionaries for {len(atlases)} atlases: pass at most one dictionary per atlas, "
                             "in the same order.")
        loaded, dictionaries = [], []
        for i, source in enumerate(atlases):
            atlas = Atlas.load(source, name=names[i] if i < len(names) else None)
            model = models[i] if i < len(models) else atlas.dictionary_path
            if model is not None and i >= len(models) and not Path(str(model)).exists():
                model = None  # the recorded path is from another machine; browse without the dictionary
            dictionary = Dictionary.load(model) if model else None
            if dictionary is not None and not names and atlas.meta("name") is None and atlas.meta("dictionary_type") is None:
                atlas.name = dictionary.kind
            loaded.append(atlas)
            dictionaries.append(dictionary)
        return cls(loaded, dictionaries, language_model=language_model, max_tokens=max_tokens)

    # -- helpers ------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return list(self.atlases)

    def atlas(self, name: str | None) -> Atlas:
        if name is None or name == "":
            return next(iter(self.atlases.values()))
        if name not in self.atlases:
            raise ValueError(f"No atlas named {name!r}; choose one of {', '.join(self.atlases)}.")
        return self.atlases[name]

    def describe(self, name: str | None = None) -> str:
        """One line of provenance: dictionary, base model, layer, site."""
        atlas = self.atlas(name)
        return describe(atlas, self.dictionaries[atlas.name])

    # -- overview -----------------------------------------------------------------------------
    def summary(self, name: str) -> dict[str, Any]:
        """Per-atlas numbers of the overview."""
        return summary(self.atlas(name))

    def overview(self) -> tuple[str, list[dict[str, Any]], bytes, bytes]:
        """(summary HTML, per-atlas rows, frequency histogram PNG, ComSem histogram PNG); computed once."""
        if self._overview is None:
            rows = [self.summary(n) for n in self.names]
            atlases = list(self.atlases.values())
            self._overview = (overview_html(rows, self.describe), rows, frequency_plot(atlases), score_plot(atlases))
        return self._overview

    # -- feature table ------------------------------------------------------------------------
    def table(
        self,
        name: str | None = None,
        query: str = "",
        sort_by: str = "feature",
        descending: bool = False,
        hide_dead: bool = False,
        page: int = 1,
        page_size: int = 50,
    ) -> tuple[list[list[Any]], int]:
        """One page of the feature table and the number of matching features.

        `query`: an integer matches that feature id; `token:Senate` / `context:the Senate` the features
        with a sample on that token / in such a context; other text matches explanations
        (case-insensitive substring). Only the atlas index is read, never the rows.
        """
        atlas = self.atlas(name)
        return table_page(atlas.index, query, sort_by, descending, hide_dead, page, page_size, text_index=atlas.search)

    # -- feature page -------------------------------------------------------------------------
    def feature(self, name: str | None, feature: int, num_neighbours: int = 10) -> FeaturePage:
        """The page of one feature; built once per (atlas, feature) and cached."""
        atlas = self.atlas(name)
        row = atlas.row_for(feature)  # raises for an unknown id
        feature = int(atlas.index.feature[row])
        key = (atlas.name, feature, num_neighbours)
        with self._lock:
            if key in self._pages:
                self._pages.move_to_end(key)
                return self._pages[key]
        page = build_feature_page(atlas, self.dictionaries.get(atlas.name), feature, num_neighbours)
        with self._lock:
            self._pages[key] = page
            while len(self._pages) > 256:
                self._pages.popitem(last=False)
        return page

    # -- try it -------------------------------------------------------------------------------
    def _lm(self, atlas: Atlas, dictionary: Dictionary) -> tuple[Any, Any]:
        name, revision = language_model_of(atlas, dictionary, self.language_model)
        with self._lock:  # load once even when two requests arrive together
            if (name, revision) not in self._lms:
                self._lms[name, revision] = load_language_model(name, revision=revision)
            return self._lms[name, revision]

    def lm_pending(self, name: str | None) -> str | None:
        """What loading the LM of atlas `name` will do, when it is not loaded yet (else None): the
        Space shows it as progress instead of a bare timer."""
        atlas = self.atlas(name)
        d = self.dictionaries.get(atlas.name)
        if d is None:
            return None
        key = language_model_of(atlas, d, self.language_model)
        return None if key in self._lms else load_message(*key)

    def try_it(self, name: str | None, text: str, top_k: int = 3, max_features: int = 200, rare_only: bool = False) -> TryIt:
        """Run the LM and the dictionary on `text`: per token, the features that fire (strongest
        first); per feature, where it fires. Input beyond `max_tokens` tokens is dropped with a notice.
        `rare_only`: only features rarer than the atlas's dense threshold."""
        atlas = self.atlas(name)
        d = self.dictionaries.get(atlas.name)
        if d is None:
            raise ValueError(f"Try it needs the dictionary of atlas '{atlas.name}': pass `--dictionary DIR` for it.")
        text = text or ""
        if not text.strip():
            raise ValueError("Type some text to analyse.")
        model, tokenizer = self._lm(atlas, d)
        return analyse_text(atlas, d, model, tokenizer, text, self.max_tokens, top_k=top_k, max_features=max_features, rare_only=rare_only)

    def steer(self, name: str | None, text: str, feature: int, strength: float) -> SteeringView:
        """Add `feature`'s decoder direction (sign by its event) at the site its dictionary writes, at
        `strength` times the site's typical activation norm, and compare the next-token distribution
        after `text` without and with it (`hf_bae.browser.steering`)."""
        atlas = self.atlas(name)
        d = self.dictionaries.get(atlas.name)
        if d is None:
            raise ValueError(f"Steering needs the dictionary of atlas '{atlas.name}': pass `--dictionary DIR` for it.")
        if feature is None or float(feature) != int(feature):
            raise ValueError(f"Feature id must be an integer, got {feature}.")
        text = text or ""
        if not text.strip():
            raise ValueError("Type some text to steer on.")
        model, tokenizer = self._lm(atlas, d)
        return steering_view(atlas, d, model, tokenizer, text, int(feature), float(strength), self.max_tokens)

    # -- compare ------------------------------------------------------------------------------
    @property
    def comparable(self) -> list[str]:
        """Names of the atlases that have a dictionary (what the Compare tab offers)."""
        return [n for n in self.names if self.dictionaries.get(n) is not None]

    def nearest(self, a: str, b: str) -> tuple[Nearest, list[str]]:
        """For each feature of A, its nearest features of B by decoder cosine; computed once per pair."""
        atlas_a, atlas_b = self.atlas(a), self.atlas(b)
        key = (atlas_a.name, atlas_b.name)
        with self._lock:
            if key in self._nearest:
                return self._nearest[key]
        da, db = self.dictionaries.get(atlas_a.name), self.dictionaries.get(atlas_b.name)
        notes = check_comparable(atlas_a, da, atlas_b, db)
        result = (nearest_features(da, db), notes)
        with self._lock:
            self._nearest[key] = result
        return result

    def co_activation(self, a: str, b: str) -> tuple[CoActivation | None, str]:
        """For each feature of A, the features of B on the same sample tokens (Jaccard); computed once per pair."""
        atlas_a, atlas_b = self.atlas(a), self.atlas(b)
        key = (atlas_a.name, atlas_b.name)
        with self._lock:
            if key in self._coact:
                return self._coact[key]
        result = co_activation(atlas_a, atlas_b)
        with self._lock:
            self._coact[key] = result
        return result

    def compare(self, a: str, b: str, query: str = "", page: int = 1, page_size: int = 25) -> tuple[str, int]:
        """(HTML, matching features of A): one page of A's features (searched as the table) with their
        nearest features of B by decoder cosine, both explanations, and B's co-activating features."""
        nearest, notes = self.nearest(a, b)
        coact, note = self.co_activation(a, b)
        return compare_page(self.atlas(a), self.atlas(b), nearest, [*notes, note], query, page, page_size, coact)
