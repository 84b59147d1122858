"""What hf_bae writes to disk and how it names things: the one place for file names, hookpoints and
the atlas metadata.

- **File names** of a run folder (what `hf-bae train` / `demo` write), of an activation cache, of
  an atlas and of an `hf-bae interpret` output folder. Every reader and writer uses these names.
- **Hookpoints**: a site of a decoder layer is written `layers.{layer}.{site}` (`hookpoint`), read
  back with `parse_hookpoint`.
- **The atlas metadata** (`AtlasInfo`, saved as `atlas.json` beside the Arrow data), its save /
  load, and the check that an atlas belongs to a dictionary (`atlas_mismatches`).

This module imports only the standard library: the configuration (part of the remote code copied
next to every saved dictionary) imports it, and so does everything that reads a folder.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .version import __version__

# -- a dictionary folder (save_pretrained) and a training run folder -----------------------------
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TRAINING_ARGS_FILE = "training_args.json"  # the run's options, written by `hf-bae train`
TRAINER_STATE_FILE = "trainer_state.json"  # counters and RNG states, for exact resume
EVAL_RESULTS_FILE = "eval_results.json"  # the final metrics of one dictionary
METRICS_FILE = "metrics.jsonl"  # one JSON line per logged step
CHECKPOINT_PREFIX = "checkpoint_"  # checkpoint_{step}/ folders inside a run
PLOT_FILES = {"loss": "loss.png", "l0": "l0.png", "entropy": "entropy.png", "covariance": "covariance.png",
              "frequency_histogram": "frequency_histogram.png"}
CHECKPOINTS_DIR = "checkpoints"  # a run's checkpoint_{step}/ folders live here
PLOTS_DIR = "plots"  # a dictionary's plots (PLOT_FILES) inside its run folder
# Files that describe a trained dictionary and travel with it to the Hub when present.
DICTIONARY_RUN_FILES = (EVAL_RESULTS_FILE, METRICS_FILE)
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"  # the weights of a sharded save_pretrained

# -- a Hub repo of dictionaries (`hf-bae push`) ---------------------------------------------------
MODEL_CARD_FILE = "README.md"
SAELENS_DIR = "saelens"  # saelens/NAME/: the SAELens copy of an SAE
SAELENS_CONFIG_FILE = "cfg.json"  # a SAELens folder (`hf-bae export-saelens`)
SAELENS_WEIGHTS_FILE = "sae_weights.safetensors"

# -- an activation cache ------------------------------------------------------------------------
CACHE_MANIFEST_FILE = "manifest.json"

# -- a feature atlas and the ComSem results derived from it -------------------------------------
ATLAS_INFO_FILE = "atlas.json"
ATLAS_STATE_FILE = "state.json"  # written by datasets' save_to_disk
COMSEM_FILE = "comsem.json"  # ComSem scores of the atlas's dictionary, written beside the atlas

# -- an `hf-bae interpret` output folder ----------------------------------------------------------
INTERPRET_ARGS_FILE = "interpret_args.json"
RESULTS_JSON_FILE = "results.json"
RESULTS_TABLE_FILE = "results.md"
LEDGER_FILE = "ledger.json"
COMSEM_PLOT_FILE = "comsem_scores.png"
INTERPRET_ATLAS_DIR = "atlas"  # OUT/NAME/atlas: the atlas as built
INTERPRETED_ATLAS_DIR = "interpreted"  # OUT/NAME/interpreted: the atlas with the ComSem results filled

# -- an `hf-bae entropy` output folder ----------------------------------------------------------
ENTROPY_FILE = "entropy.json"  # `estimate`: one number with its interval
ENTROPY_LAYERS_CSV, ENTROPY_LAYERS_PLOT = "layers.csv", "layers.png"
ENTROPY_POSITIONS_CSV, ENTROPY_POSITIONS_PLOT = "positions.csv", "positions.png"
ENTROPY_ICL_CSV, ENTROPY_ICL_PLOT = "icl_{task}.csv", "icl_{task}.png"  # .format(task=...)
ENTROPY_STEER_FILE = "steer_{task}.json"
ENTROPY_BAES_DIR = "baes"  # where --train saves its BAEs, one sub-folder each:
ENTROPY_LAYER_BAE, ENTROPY_POSITION_BAE = "layer_{layer}", "position_{position}"

# -- caches outside a run folder -------------------------------------------------------------------
RESPONSE_CACHE_FILE = "llm_responses.sqlite"  # the judge's response cache
DEFAULT_BUILD_MARKER_FILE = "complete.json"  # written last by the Space's default build: the build is whole

# Firing frequency above which a feature counts as dense (the atlas default and the metrics').
DEFAULT_DENSE_THRESHOLD = 0.1

_HOOKPOINT = re.compile(r"^(?:layers\.)?(\d+)\.([A-Za-z_]+)$")


def hookpoint(layer: int | None, site: str = "resid_post") -> str | None:
    """The name of a site of a decoder layer, ``hookpoint(5, "resid_post") == "layers.5.resid_post"``;
    None when the layer is unknown."""
    return None if layer is None else f"layers.{layer}.{site}"


def config_hookpoint(config: Any) -> str | None:
    """The hookpoint a dictionary config reads (a config object or its `config.json` dict); None without a layer."""
    get = config.get if isinstance(config, dict) else lambda key, default=None: getattr(config, key, default)
    return hookpoint(get("layer"), get("site") or "resid_post")


def parse_hookpoint(text: str) -> tuple[int, str]:
    """(layer, site) of `layers.5.resid_post` (or `5.resid_post`); a ValueError says how to write one."""
    match = _HOOKPOINT.match(str(text).strip())
    if match is None:
        raise ValueError(f"Cannot read hookpoint {text!r}: write it as 'layers.<layer>.<site>', e.g. 'layers.5.resid_post'.")
    return int(match.group(1)), match.group(2)


def site_name(site: str | None) -> str | None:
    """The site part of a site or a hookpoint: ``"layers.6.resid_post" -> "resid_post"``."""
    return None if site is None else str(site).rsplit(".", 1)[-1]


# ----------------------------------------------------------------------------------------------
# The atlas metadata
# ----------------------------------------------------------------------------------------------
@dataclass
class AtlasInfo:
    """Metadata of an atlas (saved as `atlas.json` in the atlas folder).

    `dictionary_type` is the dictionary's `kind` ("BAE", "SAE", "TRC" or "random") and
    `dictionary_fingerprint` its `fingerprint()`: a hash of the config and the weights, so that an
    atlas is only ever shown or scored with the dictionary that produced it.
    """

    dictionary_type: str
    num_features: int
    dictionary_path: str | None = None
    dictionary_fingerprint: str | None = None  # SHA-256 of the config and the weights; "random:..." for the baseline
    config_hash: str | None = None  # SHA-256 of the dictionary's config alone
    base_model: str | None = None
    base_model_revision: str | None = None
    layer: int | None = None
    site: str | None = None
    dataset: str | None = None
    split: str | None = None
    num_texts: int | None = None
    num_tokens: int = 0
    num_rows: int = 0
    context_length: int | None = None
    exclude_special_tokens: bool | None = None
    dense_threshold: float = DEFAULT_DENSE_THRESHOLD
    top_k: int = 10
    selection: str = "corpus"
    samples_per_feature: int = 20
    num_non_activating: int = 8
    sae_rescale: bool = False
    active_only: bool = False
    max_context_tokens: int | None = None
    seed: int = 0
    score: str = ""
    dead_features: int = 0
    dense_features: int = 0
    hf_bae_version: str = __version__
    created: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AtlasInfo:
        """Read the dict of an `atlas.json`; unknown keys (from a newer or hand-made atlas) go to `extra`.
        A file lacking `dictionary_type` / `num_features` (hand-written, or from before they were
        recorded) reads them as None: unknown."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known and k != "extra"}
        values.setdefault("dictionary_type", None)
        values.setdefault("num_features", None)
        extra = {**(data.get("extra") or {}), **{k: v for k, v in data.items() if k not in known}}
        return cls(**values, extra=extra)

    def get(self, key: str, default: Any = None) -> Any:
        """A field, or a key of `extra` (what older or hand-made atlases record), or `default`."""
        value = getattr(self, key, None) if key in _ATLAS_FIELDS else None
        if value is None:
            value = self.extra.get(key)
        return default if value is None else value


_ATLAS_FIELDS = {f.name for f in dataclasses.fields(AtlasInfo)}


def save_atlas_info(info: AtlasInfo, folder: str | Path) -> Path:
    """Write `info` as the folder's `atlas.json` (stamping `created` if unset); returns the file."""
    if not info.created:
        info.created = time.time()
    path = Path(folder) / ATLAS_INFO_FILE
    path.write_text(json.dumps(dataclasses.asdict(info), indent=2, default=str) + "\n")
    return path


def read_atlas_info(folder: str | Path, *, required: bool = True) -> AtlasInfo | None:
    """The `AtlasInfo` of an atlas folder. Without `atlas.json`: a ValueError, or None if not `required`."""
    path = Path(folder) / ATLAS_INFO_FILE
    if not path.is_file():
        if required:
            raise ValueError(f"{folder} is not a feature atlas (no {ATLAS_INFO_FILE}): build one with `hf-bae atlas`.")
        return None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is corrupt ({error}): rebuild the atlas with `hf-bae atlas`.") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not an atlas description (a JSON object): rebuild the atlas with `hf-bae atlas`.")
    return AtlasInfo.from_dict(data)


def atlas_mismatches(info: AtlasInfo, dictionary: Any, *, num_rows: int | None = None) -> list[str]:
    """Why an atlas does not belong to `dictionary` (an hf_bae dictionary or a random baseline); empty if it does.

    Compares the width, the provenance (base model, layer, site), the kind, and last the fingerprint
    of config and weights: the same shape and provenance are not enough, since another training run
    of the same shape has other features.
    """
    problems = []
    width = int(dictionary.num_features)
    count = num_rows if num_rows is not None else (info.num_features or None)
    if count is not None and count != width:
        problems.append(f"the atlas has {count} features, the dictionary {width}")
    config = getattr(dictionary, "config", None)
    for key in ("base_model", "layer", "site"):
        ours, theirs = getattr(config, key, None), info.get(key)
        if key == "site":
            theirs = site_name(theirs)
        if theirs is not None and ours is not None and str(theirs) != str(ours):
            problems.append(f"the atlas was built at {key}={theirs!r}, the dictionary reads {key}={ours!r}")
    recorded_kind = info.get("dictionary_type")
    if recorded_kind is not None and (recorded_kind == "BAE") != (dictionary.kind == "BAE"):
        problems.append(f"the atlas was built from a {recorded_kind} dictionary, this one is a {dictionary.kind}")
    recorded = info.get("dictionary_fingerprint")
    if recorded and not problems:
        expected = dictionary.fingerprint()
        if recorded != expected:
            problems.append(f"the atlas was built from another dictionary of the same shape ({recorded_kind} at {info.get('dictionary_path')}, "
                            f"fingerprint {str(recorded)[:12]}…) than the one given (fingerprint {expected[:12]}…)")
    return problems
