"""Browse a dictionary's features: the view model behind the Gradio Space (`hf_bae.space`), without
Gradio. This package's `__init__` is its public boundary; each concept lives in its own module:

- `atlas_view`: `Atlas` (an atlas's dataset, read lazily, and its `hf_bae.formats.AtlasInfo`) and
  `AtlasIndex` (its scalar columns as NumPy arrays, sort orders computed once).
- `dictionary_view`: `Dictionary` (loaded with `hf_bae.loading.load_dictionary`: firing features,
  decoder neighbours) and `check_compatible` (an atlas belongs to its dictionary).
- `markup`: HTML helpers; every string from an atlas, a tokenizer or a user is escaped there.
- `overview`, `plots`, `table`, `feature_page`, `try_it`: one module per view; `steering` (add a
  feature's decoder direction at its site, next-token distribution before / after) and `compare`
  (nearest features of another dictionary by decoder cosine) are views too.
- `feature_browser`: `FeatureBrowser`, the views over atlases and dictionaries side by side, with their caches.

    >>> from hf_bae.browser import FeatureBrowser
    >>> browser = FeatureBrowser.from_paths(["runs/bae-atlas"], ["runs/bae"])  # doctest: +SKIP
    >>> rows, total = browser.table(None, query="budget", sort_by="comsem_score", descending=True)  # doctest: +SKIP
"""

from .atlas_view import TABLE_SORT_KEYS, Atlas, AtlasIndex
from .compare import Nearest, nearest_features
from .feature_browser import DEFAULT_MAX_TOKENS, FeatureBrowser
from .dictionary_view import Dictionary, check_compatible
from .feature_page import FeaturePage
from .markup import esc, highlight_context, visible
from .steering import NextTokenShift, SteeringView, steer_next_token
from .table import TABLE_COLUMNS
from .try_it import TryIt, site_activations

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "TABLE_COLUMNS",
    "TABLE_SORT_KEYS",
    "Atlas",
    "AtlasIndex",
    "Dictionary",
    "FeatureBrowser",
    "FeaturePage",
    "Nearest",
    "NextTokenShift",
    "SteeringView",
    "TryIt",
    "check_compatible",
    "esc",
    "highlight_context",
    "nearest_features",
    "site_activations",
    "steer_next_token",
    "visible",
]
