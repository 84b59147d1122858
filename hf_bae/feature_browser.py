"""Browse a dictionary's features: what the Gradio Space (`hf_bae.space`) shows, without Gradio.

A *feature atlas* (written by `hf-bae atlas`) is a `datasets.Dataset` with one row per feature:

    feature: int; frequency: float; is_dead: bool; is_dense: bool
    samples / non_activating: list of {token, token_id, position, context, start, end, score}
        (start / end: character offsets of the token in context)
    explanation: str | None; comsem_score: float | None
    verdicts: list of {sample_index, split: "positive" | "negative", answer: "yes" | "no" | "unparseable"}

plus atlas-level metadata in a JSON file beside it (dictionary, dictionary type, base model,
layer, site, tokens, dense threshold).

Responsiveness with 10^4+ features comes from never recomputing what the atlas holds:
`Atlas.index` reads the scalar columns once (Arrow, memory-mapped) into NumPy arrays; table
queries only touch those arrays (sort orders are computed once per key); a feature page reads one
row and is cached; neighbours are one matrix-vector product against unit decoder columns computed
once. Only "Try it" runs a model.

Every string that comes from an atlas, a tokenizer or a user is HTML-escaped before it is put in
markup (`html.escape`); nothing here builds markup from unescaped text.
"""

from __future__ import annotations

import html
import io
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .losses import binary_entropy_bits
from .formats import ATLAS_INFO_FILE, DEFAULT_DENSE_THRESHOLD, AtlasInfo, atlas_mismatches, read_atlas_info, site_name

TABLE_SORT_KEYS = ("feature", "frequency", "comsem_score", "explanation")
TABLE_COLUMNS = ["feature", "frequency", "flags", "ComSem score", "samples", "explanation"]
DEFAULT_MAX_TOKENS = 256
# Characters of a sample's context shown on each side of the firing token.
CONTEXT_WINDOW = 160


# ---------------------------------------------------------------------------------------------
# Atlas
# ---------------------------------------------------------------------------------------------


@dataclass
class AtlasIndex:
    """The scalar columns of an atlas as NumPy arrays (one entry per row, in row order)."""

    feature: np.ndarray  # int64
    frequency: np.ndarray  # float64
    is_dead: np.ndarray  # bool
    is_dense: np.ndarray  # bool
    comsem_score: np.ndarray  # float64, NaN where unscored
    explanation: list[str]  # "" where unexplained
    num_samples: np.ndarray  # int64
    row_of: dict[int, int] = field(repr=False)  # feature id -> row
    _orders: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    _lowered: list[str] | None = field(default=None, repr=False)

    def order(self, key: str) -> np.ndarray:
        """Row order ascending by `key`, computed once (NaN scores and empty explanations last)."""
        if key not in self._orders:
            if key == "feature":
                o = np.argsort(self.feature, kind="stable")
            elif key == "frequency":
                o = np.argsort(self.frequency, kind="stable")
            elif key == "comsem_score":
                o = np.argsort(np.where(np.isnan(self.comsem_score), np.inf, self.comsem_score), kind="stable")
            elif key == "explanation":
                # Unexplained features sort after every explanation.
                o = np.array(sorted(range(len(self.explanation)), key=lambda r: (self.explanation[r] == "", self.explanation[r].lower())), dtype=np.int64)
            else:
                raise ValueError(f"Unknown sort key {key!r}; choose one of {', '.join(TABLE_SORT_KEYS)}.")
            self._orders[key] = o
        return self._orders[key]

    @property
    def lowered(self) -> list[str]:
        if self._lowered is None:
            self._lowered = [e.lower() for e in self.explanation]
        return self._lowered


def _column(table: Any, name: str) -> np.ndarray:
    return table.column(name).to_numpy(zero_copy_only=False)


class Atlas:
    """A feature atlas: the Arrow dataset (memory-mapped, read lazily) and its metadata.

    Args:
        dataset: the `datasets.Dataset` (one row per feature).
        info: atlas-level metadata (dictionary, dictionary_type, base_model, layer, site, ...).
        name: label shown in the app (defaults to the dictionary type or the folder name).
        source: where it was loaded from (folder or Hub id), for messages.
    """

    REQUIRED_COLUMNS = ("feature", "frequency", "is_dead", "is_dense", "samples")

    def __init__(self, dataset: Any, info: AtlasInfo | dict[str, Any] | None = None, name: str | None = None,
                 source: str = "<memory>"):
        missing = [c for c in self.REQUIRED_COLUMNS if c not in dataset.column_names]
        if missing:
            raise ValueError(
                f"{source} is not a feature atlas: it lacks the column(s) {', '.join(missing)} "
                f"(it has {', '.join(dataset.column_names)}). Build one with `hf-bae atlas`."
            )
        if len(dataset) == 0:
            raise ValueError(f"The atlas {source} has no features (0 rows). Build it again with `hf-bae atlas`.")
        if getattr(dataset, "_indices", None) is not None:
            dataset = dataset.flatten_indices()  # so that Arrow row i is dataset row i
        self.dataset = dataset
        self.info = info if isinstance(info, AtlasInfo) else AtlasInfo.from_dict(dict(info or {}))
        self.source = source
        self.name = name or self.meta("name", "dictionary_type") or Path(str(source)).name or "atlas"
        self._rows: OrderedDict[int, dict] = OrderedDict()
        self._lock = threading.Lock()  # Gradio serves several requests at once from threads

    @classmethod
    def load(cls, path_or_repo: str | os.PathLike, name: str | None = None, revision: str | None = None) -> Atlas:
        """Load an atlas from a folder written by `save_to_disk` or from a Hub dataset repo id."""
        import datasets

        source = str(path_or_repo)
        path = Path(source).expanduser()
        if path.exists():
            if not path.is_dir():
                raise ValueError(f"Atlas {source} is a file; expected the folder written by `hf-bae atlas`.")
            try:
                dataset = datasets.load_from_disk(str(path))
            except FileNotFoundError as err:
                raise ValueError(f"{source} is not a saved dataset ({err}). Pass the folder written by `hf-bae atlas`.") from err
            if isinstance(dataset, datasets.DatasetDict):
                dataset = dataset[next(iter(dataset))]
            info = read_atlas_info(path, required=False)
        else:
            if source.startswith((".", "/", "~")) or source.count("/") > 1:
                raise ValueError(f"Atlas folder {source} does not exist.")
            dataset = datasets.load_dataset(source, split="train", revision=revision)
            info = _read_info_hub(source, revision)
        return cls(dataset, info=info, name=name, source=source)

    def __len__(self) -> int:
        return len(self.dataset)

    @cached_property
    def index(self) -> AtlasIndex:
        """Scalar columns read once from Arrow (a few ms for 10^4 features, no row decoding)."""
        table = self.dataset.data
        n = len(self.dataset)
        feature = _column(table, "feature").astype(np.int64)
        names = self.dataset.column_names
        score = (
            np.array(table.column("comsem_score").to_pylist(), dtype=np.float64) if "comsem_score" in names else np.full(n, np.nan)
        )
        explanation = [e or "" for e in table.column("explanation").to_pylist()] if "explanation" in names else [""] * n
        num_samples = table.column("samples").combine_chunks().value_lengths().fill_null(0).to_numpy(zero_copy_only=False)
        row_of = {int(f): r for r, f in enumerate(feature)}
        if len(row_of) != n:
            raise ValueError(f"The atlas {self.source} lists some features more than once; rebuild it with `hf-bae atlas`.")
        return AtlasIndex(
            feature=feature,
            frequency=_column(table, "frequency").astype(np.float64),
            is_dead=_column(table, "is_dead").astype(bool),
            is_dense=_column(table, "is_dense").astype(bool),
            comsem_score=score,
            explanation=explanation,
            num_samples=num_samples.astype(np.int64),
            row_of=row_of,
        )

    def row_for(self, feature: int) -> int:
        """Row holding `feature`; a ValueError that says which ids exist otherwise."""
        try:
            feature = int(feature)
        except (TypeError, ValueError):
            raise ValueError(f"Feature id must be an integer, got {feature!r}.") from None
        row = self.index.row_of.get(feature)
        if row is None:
            f = self.index.feature
            raise ValueError(
                f"Feature {feature} is not in the atlas '{self.name}': it holds {len(f)} features with ids "
                f"{int(f.min())}–{int(f.max())}."
            )
        return row

    def record(self, feature: int, cache_size: int = 512) -> dict[str, Any]:
        """The full row of `feature` (samples, verdicts, ...), read once and kept in an LRU cache."""
        row = self.row_for(feature)
        with self._lock:
            if row in self._rows:
                self._rows.move_to_end(row)
                return self._rows[row]
        record = self.dataset[row]
        with self._lock:
            self._rows[row] = record
            while len(self._rows) > cache_size:
                self._rows.popitem(last=False)
        return record

    # -- metadata, with the names `hf-bae atlas` writes ---------------------------------------
    def meta(self, *keys: str) -> Any:
        """The first of `keys` set in the metadata (`AtlasInfo`, or the `extra` part older atlases use)."""
        for key in keys:
            value = self.info.get(key)
            if value is not None:
                return value
        return None

    @property
    def dictionary_path(self) -> str | None:
        return self.meta("dictionary_path")

    @property
    def dense_threshold(self) -> float:
        value = self.meta("dense_threshold")
        return float(value) if value is not None else DEFAULT_DENSE_THRESHOLD


def _read_info_hub(repo_id: str, revision: str | None) -> AtlasInfo | None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return read_atlas_info(Path(hf_hub_download(repo_id, ATLAS_INFO_FILE, repo_type="dataset", revision=revision)).parent)
    except EntryNotFoundError:
        return None


# ---------------------------------------------------------------------------------------------
# Dictionary (for neighbours and Try it)
# ---------------------------------------------------------------------------------------------


class Dictionary:
    """A loaded BAE / SAE with what the browser needs: firing features and decoder neighbours."""

    def __init__(self, model: torch.nn.Module, source: str = "<memory>"):
        self.model = model.eval()
        self.config = model.config
        self.source = source
        self.bits = getattr(self.config, "bits", 1)

    @classmethod
    def load(cls, path_or_repo: str | os.PathLike, revision: str | None = None) -> Dictionary:
        """Load a BAE / SAE from a folder, a Hub repo id, or "namespace/name/subfolder" (a repo holding several)."""
        from transformers import AutoModel

        from . import BinaryAutoencoder, SparseAutoencoder  # noqa: F401  (registers the Auto classes)

        source = str(path_or_repo)
        where: dict[str, Any] = {}
        if Path(source).expanduser().exists():
            target = str(Path(source).expanduser())
        elif source.startswith((".", "/", "~")):
            raise ValueError(f"Dictionary folder {source} does not exist.")
        else:  # a Hub id, "namespace/name", or a dictionary in a subfolder of a repo, "namespace/name/subfolder"
            parts = source.split("/")
            target = "/".join(parts[:2])
            if len(parts) > 2:
                where["subfolder"] = "/".join(parts[2:])
        model = AutoModel.from_pretrained(target, revision=revision, **where)
        if not hasattr(model, "encode") or not hasattr(model.config, "num_latents"):
            raise ValueError(f"{source} holds a {type(model).__name__}, not an hf_bae dictionary (BAE or SAE).")
        return cls(model, source)

    @property
    def kind(self) -> str:
        """The model's kind ("BAE", "SAE", "TRC"), what atlases record."""
        return self.model.kind

    @property
    def label(self) -> str:
        """A longer human name: "BAE (2-bit)", "SAE (topk)"."""
        if self.bits > 1:
            return f"{self.kind} ({self.bits}-bit)"
        activation = getattr(self.config, "activation", None)
        return f"{self.kind} ({activation})" if activation else self.kind

    @property
    def score_is_deviation(self) -> bool:
        return self.model.score_is_deviation

    @property
    def num_features(self) -> int:
        return self.model.num_features

    def fingerprint(self) -> str:
        return self.model.fingerprint()

    @cached_property
    def unit_decoder(self) -> torch.Tensor:
        """Decoder columns as unit rows `[m, d]` (computed once)."""
        w = self.model.decoder.weight.detach().float().T  # [m, d]
        return w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def neighbours(self, feature: int, k: int = 10) -> list[tuple[int, float]]:
        """The k features whose decoder directions have the largest cosine with `feature`'s."""
        u = self.unit_decoder
        sims = u @ u[feature]
        sims[feature] = -math.inf
        values, indices = torch.topk(sims, min(k, len(sims) - 1))
        return [(int(i), float(v)) for i, v in zip(indices, values)]

    @torch.inference_mode()
    def activations(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(fired `[n, m]` booleans, value `[n, m]`): value is the latent (SAE) or the code value (BAE)."""
        values, fired = self.model.feature_values(hidden_states.to(self.model.dtype))
        return fired, values


def check_compatible(atlas: Atlas, dictionary: Dictionary) -> None:
    """Raise a ValueError if `atlas` was not built from `dictionary` (`hf_bae.formats.atlas_mismatches`, and
    the atlas's feature ids must be the dictionary's)."""
    problems = atlas_mismatches(atlas.info, dictionary, num_rows=len(atlas))
    ids = atlas.index.feature
    if not problems and (int(ids.max()) >= dictionary.num_features or int(ids.min()) < 0):
        problems.append(f"the atlas's feature ids run outside 0–{dictionary.num_features - 1}")
    if problems:
        raise ValueError(
            f"The atlas {atlas.source} does not belong to the dictionary {dictionary.source}: "
            + "; ".join(problems)
            + ". Pass the atlas built from this dictionary (`hf-bae atlas --model ...`)."
        )


# ---------------------------------------------------------------------------------------------
# Language model (Try it)
# ---------------------------------------------------------------------------------------------


def load_language_model(name_or_path: str, revision: str | None = None) -> tuple[Any, Any]:
    """The LM and tokenizer whose activations the dictionary reads (the embedded model's recorded
    Hub id and revision tag load the offline copy: see `hf_bae.activations.load_language_model`)."""
    from .activations import load_language_model as _load

    return _load(name_or_path, revision=revision)


@torch.inference_mode()
def site_activations(model: Any, input_ids: torch.Tensor, layer: int, site: str) -> torch.Tensor:
    """`[seq, d]` activations of one sequence at `site` of decoder layer `layer`."""
    from .activations import HookedForward, Site

    target = Site(layer, site)
    with HookedForward(model, [target]) as hooked:
        return hooked(input_ids)[str(target)][0].float()


# ---------------------------------------------------------------------------------------------
# HTML rendering (every piece of text escaped)
# ---------------------------------------------------------------------------------------------


def esc(text: Any) -> str:
    """HTML-escape any value (quotes included, so it is also safe inside attributes)."""
    return html.escape("" if text is None else str(text), quote=True)


def visible(token: str) -> str:
    """Make whitespace-only tokens visible (a newline shows as ↵, spaces as ·)."""
    if token.strip():
        return token
    return token.replace("\n", "↵").replace(" ", "·").replace("\t", "⇥") or "∅"


def highlight_context(context: str, start: int, end: int, cls: str = "fire", token: str = "", window: int = CONTEXT_WINDOW) -> str:
    """The context with characters [start, end) wrapped in <mark>, all text escaped, trimmed around the mark.

    start == end marks a token that is not in the context text (a special token such as BOS): the
    mark then shows `token` at that place."""
    context = context or ""
    if not (0 <= start <= end <= len(context)):
        return esc(context[: 2 * window])  # offsets do not fit the context: show it unmarked
    left, right = max(0, start - window), min(len(context), end + window)
    before = ("…" if left > 0 else "") + context[left:start]
    after = context[end:right] + ("…" if right < len(context) else "")
    marked = context[start:end] if end > start else token
    return f'{esc(before)}<mark class="{cls}">{esc(visible(marked))}</mark>{esc(after)}'


def _fmt_freq(p: float) -> str:
    if p <= 0:
        return "0 (dead)"
    return f"{p:.3g} (1 in {1 / p:,.0f} tokens)" if p < 0.5 else f"{p:.3g}"


def _flags(dead: bool, dense: bool) -> str:
    return "dead" if dead else ("dense" if dense else "")


# ---------------------------------------------------------------------------------------------
# The browser
# ---------------------------------------------------------------------------------------------


@dataclass
class FeaturePage:
    """What the feature view shows."""

    feature: int
    header_html: str
    samples_html: str
    non_activating_html: str
    verdicts: list[list[Any]]  # [split, sample, token, answer]
    neighbours: list[list[Any]]  # [feature, cosine, frequency, explanation]


@dataclass
class TryIt:
    """What the Try-it view shows for one text."""

    notice: str
    tokens_html: str
    per_feature: list[list[Any]]  # [feature, fires on, where, explanation]
    per_token: list[list[Any]]  # [position, token, firing, top features]


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
        self._lms: dict[str, tuple[Any, Any]] = {}
        self._overview: tuple | None = None
        self._pages: OrderedDict[tuple[str, int, int], FeaturePage] = OrderedDict()
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
        """Load atlases and dictionaries by path / Hub id. A missing model falls back to the atlas's
        recorded dictionary when that exists."""
        if len(models) > len(atlases):
            raise ValueError(f"Got {len(models)} models for {len(atlases)} atlases: pass at most one model per atlas, in the same order.")
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
        d = self.dictionaries[atlas.name]
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

    # -- overview -----------------------------------------------------------------------------
    def summary(self, name: str) -> dict[str, Any]:
        """Per-atlas numbers of the overview."""
        atlas = self.atlas(name)
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

    def overview(self) -> tuple[str, list[dict[str, Any]], bytes, bytes]:
        """(summary HTML, per-atlas rows, frequency histogram PNG, ComSem histogram PNG); computed once."""
        if self._overview is None:
            rows = [self.summary(n) for n in self.names]
            self._overview = (self._overview_html(rows), rows, self._frequency_plot(), self._score_plot())
        return self._overview

    def _overview_html(self, rows: list[dict[str, Any]]) -> str:
        cards = []
        for r in rows:
            score = "—" if r["mean ComSem score"] is None else f"{r['mean ComSem score']:.3f}"
            tokens = "" if r["tokens"] is None else f"<div class='stat'><b>{r['tokens']:,}</b><span>tokens</span></div>"
            cards.append(
                f"<div class='atlas-card'><h3>{esc(r['atlas'])}</h3><p class='prov'>{esc(self.describe(r['atlas']))}</p>"
                f"<div class='stats'><div class='stat'><b>{r['features']:,}</b><span>features</span></div>"
                f"<div class='stat'><b>{r['dead']:,}</b><span>dead</span></div>"
                f"<div class='stat'><b>{r['dense']:,}</b><span>dense (p &gt; {r['dense threshold']:g})</span></div>"
                f"<div class='stat'><b>{r['code-set entropy (bits)']:.1f}</b><span>code-set entropy (bits)</span></div>"
                f"<div class='stat'><b>{r['L0 (Σ frequencies)']:.1f}</b><span>L0 (features / token)</span></div>"
                f"<div class='stat'><b>{r['scored']:,}</b><span>scored by ComSem</span></div>"
                f"<div class='stat'><b>{score}</b><span>mean ComSem score</span></div>{tokens}</div></div>"
            )
        return "<div class='overview'>" + "".join(cards) + "</div>"

    def _frequency_plot(self) -> bytes:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 3.6), dpi=100)
        positive = [a.index.frequency[a.index.frequency > 0] for a in self.atlases.values()]
        lo = min((float(p.min()) for p in positive if len(p)), default=1e-6)
        bins = np.logspace(math.floor(math.log10(lo)), 0, 41)
        for atlas, p in zip(self.atlases.values(), positive):
            dead = int(atlas.index.is_dead.sum())
            ax.hist(p, bins=bins, histtype="step", linewidth=1.8, label=f"{atlas.name} ({dead:,} dead, not shown)")
            ax.axvline(atlas.dense_threshold, color="grey", linestyle=":", linewidth=1)
        ax.set_xscale("log")
        ax.set_xlabel("firing frequency (fraction of tokens, log scale)")
        ax.set_ylabel("features")
        ax.set_title("Feature frequencies (dotted: dense threshold)")
        ax.legend(fontsize=8)
        return _png(fig)

    def _score_plot(self) -> bytes:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 3.6), dpi=100)
        any_scored = False
        for atlas in self.atlases.values():
            s = atlas.index.comsem_score[~np.isnan(atlas.index.comsem_score)]
            if len(s):
                any_scored = True
                ax.hist(s, bins=np.linspace(0, 1, 11), histtype="step", linewidth=1.8, label=f"{atlas.name} ({len(s):,} scored)")
        if any_scored:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "No ComSem scores in this atlas\n(run `hf-bae interpret`)", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlim(0, 1)
        ax.set_xlabel("ComSem score (fraction of held-out samples judged 'yes')")
        ax.set_ylabel("features")
        ax.set_title("ComSem score distribution")
        return _png(fig)

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

        `query`: an integer matches that feature id; other text matches explanations
        (case-insensitive substring). Only the atlas index is read, never the rows.
        """
        ix = self.atlas(name).index
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
        query = (query or "").strip()
        mask = np.ones(len(ix.feature), dtype=bool)
        if query:
            if query.lstrip("#").isdigit():
                mask = ix.feature == int(query.lstrip("#"))
            else:
                q = query.lower()
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
                    _flags(ix.is_dead[r], ix.is_dense[r]),
                    None if np.isnan(score) else round(float(score), 3),
                    int(ix.num_samples[r]),
                    expl if len(expl) <= 160 else expl[:159] + "…",
                ]
            )
        return out, total

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
        page = self._build_page(atlas, feature, num_neighbours)
        with self._lock:
            self._pages[key] = page
            while len(self._pages) > 256:
                self._pages.popitem(last=False)
        return page

    def _build_page(self, atlas: Atlas, feature: int, num_neighbours: int) -> FeaturePage:
        rec = atlas.record(feature)
        ix = atlas.index
        samples, negatives = rec.get("samples") or [], rec.get("non_activating") or []
        verdicts = rec.get("verdicts") or []
        answer = {(v.get("split"), v.get("sample_index")): v.get("answer") for v in verdicts}

        score = rec.get("comsem_score")
        yes = sum(1 for v in verdicts if v.get("split") == "positive" and v.get("answer") == "yes")
        judged = sum(1 for v in verdicts if v.get("split") == "positive")
        expl = rec.get("explanation")
        badge = f"<span class='badge {_flags(rec['is_dead'], rec['is_dense'])}'>{_flags(rec['is_dead'], rec['is_dense'])}</span>" if _flags(rec["is_dead"], rec["is_dense"]) else ""
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
            f"<p>Frequency: {esc(_fmt_freq(float(rec['frequency'])))} · {len(samples)} samples · {len(negatives)} non-activating samples</p></div>"
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
        d = self.dictionaries.get(atlas.name)
        if d is None:
            header = header.replace("</div>", "<p><i>Neighbours need the dictionary: pass <code>--model</code>.</i></p></div>")
        else:
            for j, cos in d.neighbours(feature, num_neighbours):
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

    # -- try it -------------------------------------------------------------------------------
    def _lm(self, atlas: Atlas, dictionary: Dictionary) -> tuple[Any, Any]:
        name = self.language_model or dictionary.config.base_model or atlas.meta("base_model")
        revision = None if self.language_model else dictionary.config.base_model_revision
        if not name:
            raise ValueError(
                "Try it needs the language model the dictionary reads, and neither the dictionary's config "
                "(base_model) nor the atlas records it: pass `--lm NAME_OR_PATH`."
            )
        with self._lock:  # load once even when two requests arrive together
            if (name, revision) not in self._lms:
                self._lms[name, revision] = load_language_model(name, revision)
            return self._lms[name, revision]

    def try_it(self, name: str | None, text: str, top_k: int = 3, max_features: int = 200) -> TryIt:
        """Run the LM and the dictionary on `text`: per token, the features that fire (strongest
        first); per feature, where it fires. Input beyond `max_tokens` tokens is dropped with a notice."""
        atlas = self.atlas(name)
        d = self.dictionaries.get(atlas.name)
        if d is None:
            raise ValueError(f"Try it needs the dictionary of atlas '{atlas.name}': pass `--model DIR` for it.")
        text = text or ""
        if not text.strip():
            raise ValueError("Type some text to analyse.")
        notices = []
        # Never tokenize megabytes only to drop them: no token is shorter than a character, and
        # 40 characters per token leaves room for long words.
        char_cap = self.max_tokens * 40
        cut_chars = len(text) > char_cap
        if cut_chars:
            text = text[:char_cap]
        model, tokenizer = self._lm(atlas, d)
        enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        special = set(tokenizer.all_special_ids)
        content = [i for i, t in enumerate(ids) if t not in special]
        if len(content) > self.max_tokens or cut_chars:
            if len(content) > self.max_tokens:
                keep = content[self.max_tokens - 1] + 1
                ids, offsets = ids[:keep], offsets[:keep]
            total = f"more than {char_cap:,} characters" if cut_chars else f"{len(content):,} tokens"
            notices.append(f"Input truncated: it has {total}; only the first {min(self.max_tokens, len(content))} tokens were analysed.")
        layer = d.config.layer if d.config.layer is not None else atlas.meta("layer")
        if layer is None:
            raise ValueError("Neither the dictionary nor the atlas records the layer it reads; set `layer` in the dictionary's config.json.")
        hidden = site_activations(model, torch.tensor([ids]), int(layer), d.config.site)
        fired, values = d.activations(hidden)
        ix = atlas.index
        freq = torch.zeros(d.num_features, dtype=torch.float32)
        freq[torch.from_numpy(ix.feature)] = torch.from_numpy(ix.frequency).float()
        # Rank what fires: SAEs by activation; BAEs by surprise, |code - usual rate| (the atlas's own
        # scoring), so always-on codes do not crowd out the rare ones.
        strength = (values - freq).abs() if d.score_is_deviation else values
        strength = torch.where(fired, strength, torch.full_like(strength, -math.inf))

        positions = [i for i, t in enumerate(ids) if t not in special]
        tokens = [text[offsets[i][0] : offsets[i][1]] if offsets[i][1] > offsets[i][0] else tokenizer.convert_ids_to_tokens(ids[i]) for i in positions]
        fired, strength = fired[positions], strength[positions]
        n_fired = fired.sum(1).tolist()
        k = min(top_k, d.num_features)
        top_values, top_ids = torch.topk(strength, k, dim=1)
        per_token, spans = [], []
        for t, (pos, tok) in enumerate(zip(positions, tokens)):
            top = [j for j, v in zip(top_ids[t].tolist(), top_values[t].tolist()) if v > -math.inf]
            per_token.append([pos, tok, n_fired[t], ", ".join(map(str, top))])
            chips = "".join(f"<button class='chip' data-feature='{j}' title='{esc(self._short(ix, j))}'>{j}</button>" for j in top)
            spans.append(
                f"<span class='tok-cell' title='{n_fired[t]} features fire'><span class='tok-text'>{esc(visible(tok))}</span>"
                f"<span class='chips'>{chips}</span></span>"
            )
        counts = fired.sum(0)
        best = strength.max(0).values
        firing = counts.nonzero().flatten()
        firing = firing[torch.argsort(-best[firing], stable=True)]  # strongest first, ties by id
        if len(firing) > max_features:
            notices.append(f"{len(firing):,} features fire; the table lists the {max_features} strongest.")
        per_feature = []
        for j in firing[:max_features].tolist():
            at = set(fired[:, j].nonzero().flatten().tolist())
            first = max(0, min(at) - 4)
            marked = ("…" if first else "") + "".join(f"[{t}]" if i in at else t for i, t in enumerate(tokens[first:], start=first))
            per_feature.append([j, int(counts[j]), _clip(marked, 160), self._short(ix, j)])
        html_out = "<div class='tokens'>" + "".join(spans) + "</div>"
        return TryIt(notice=" ".join(notices), tokens_html=html_out, per_feature=per_feature, per_token=per_token)

    @staticmethod
    def _short(ix: AtlasIndex, feature: int) -> str:
        r = ix.row_of.get(feature)
        return _clip(ix.explanation[r], 120) if r is not None else ""


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
