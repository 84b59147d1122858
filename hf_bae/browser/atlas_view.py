"""A feature atlas as the browser reads it: the Arrow dataset (memory-mapped, rows read lazily and
cached), its scalar columns as NumPy arrays (`AtlasIndex`), and its metadata (`hf_bae.formats.AtlasInfo`).

A *feature atlas* (written by `hf-bae atlas`, schema `hf_bae.interpret.atlas.atlas_features`) is a
`datasets.Dataset` with one row per feature:

    feature: int; frequency: float; is_dead: bool; is_dense: bool
    samples / non_activating: list of {token, token_id, position, context, start, end, score, ...}
        (start / end: character offsets of the token in context)
    explanation: str | None; comsem_score: float | None
    verdicts: list of {sample_index, split: "positive" | "negative", answer: "yes" | "no" | "unparseable"}

plus atlas-level metadata in `atlas.json` beside it, read only through `hf_bae.formats.read_atlas_info`.

Responsiveness with 10^4+ features comes from never recomputing what the atlas holds: `Atlas.index`
reads the scalar columns once (Arrow, memory-mapped) into NumPy arrays, sort orders are computed once
per key, and a feature's row is read once and kept in an LRU cache.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from ..formats import ATLAS_INFO_FILE, DEFAULT_DENSE_THRESHOLD, AtlasInfo, read_atlas_info
from .search import SampleTextIndex

# The keys the feature table sorts by (each a column of the index).
TABLE_SORT_KEYS = ("feature", "frequency", "comsem_score", "explanation")


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

        from ..activations.paths import looks_like_local_path

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
            if looks_like_local_path(source):
                raise FileNotFoundError(f"Atlas folder {source} does not exist: pass the folder written by `hf-bae atlas`.")
            try:
                dataset = datasets.load_dataset(source, split="train", revision=revision)
            except (OSError, ValueError) as error:  # not found, or the Hub unreachable: it may be a mistyped folder
                raise FileNotFoundError(
                    f"Atlas {source} is no local folder, and no Hub dataset of that name could be loaded "
                    f"({type(error).__name__}: {str(error)[:160]}). Pass the folder written by `hf-bae atlas`, or a Hub dataset id."
                ) from error
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

    @cached_property
    def search(self) -> SampleTextIndex:
        """The samples' tokens and contexts for text search (each built on first use)."""
        return SampleTextIndex(self.dataset.data)

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
