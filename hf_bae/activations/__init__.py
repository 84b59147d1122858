"""Activations of a causal language model, streamed: text → packed token rows → hooked forward that
stops after the last needed layer → float32 activation batches. This package's `__init__` is its public
boundary; each step lives in its own module, in data-flow order:

- `language_models`: `load_language_model` ("embedded" for the offline default of `hf_bae.embedded`,
  or any Hub id / local path), the name and revision configs record (`model_name_of`,
  `model_revision_of`, `is_embedded`), `model_device`.
- `texts`: `load_texts` → a `TextStream` that records its source.
- `packing`: `pack_tokens`, documents → rows of exactly `context_length` token ids.
- `streaming`: `stream_activations`, rows → `ActivationBatch`es holding the activations of one or
  several sites (`hf_bae.sites`, re-exported here), without special tokens and, optionally, outliers.
- `shuffle`: `ShuffleBuffer`, mixing activations from many rows before training batches are cut.

The shard cache on disk (`harvest`, `ActivationCache`) builds on this package: see `hf_bae.cache`.
"""

from ..embedded import EMBEDDED_DATASET_ID, EMBEDDED_MODEL_ID
from ..sites import HookedForward, Site, decoder_layers, num_layers, parse_sites, replace_site, resolve_site_module
from .language_models import (
    is_embedded,
    load_language_model,
    model_device,
    model_name_of,
    model_revision_of,
    resolve_dtype,
)
from .packing import pack_tokens
from .shuffle import ShuffleBuffer
from .streaming import ActivationBatch, stream_activations, token_filter_description
from .texts import TextStream, load_texts

__all__ = [
    "EMBEDDED_DATASET_ID",
    "EMBEDDED_MODEL_ID",
    "ActivationBatch",
    "HookedForward",
    "ShuffleBuffer",
    "Site",
    "TextStream",
    "decoder_layers",
    "is_embedded",
    "load_language_model",
    "load_texts",
    "model_device",
    "model_name_of",
    "model_revision_of",
    "num_layers",
    "pack_tokens",
    "parse_sites",
    "replace_site",
    "resolve_dtype",
    "resolve_site_module",
    "stream_activations",
    "token_filter_description",
]
