"""The dictionary factory: the kinds `hf-bae train --dictionaries` names, and a fresh dictionary of a
kind built from the parsed option groups and the provenance of its activations."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..configuration import BAEConfig, SAEConfig
from ..formats import parse_hookpoint
from ..modeling_bae import BinaryAutoencoder
from ..modeling_base import DictionaryPreTrainedModel
from ..modeling_sae import SparseAutoencoder

DICTIONARY_KINDS: dict[str, str] = {
    "bae": "Binary autoencoder (BAE options).",
    "relu": "ReLU SAE with the L1 penalty (--l1_weight).",
    "topk": "TopK SAE (--k), no L1.",
    "jumprelu": "JumpReLU SAE with a fixed threshold (--jumprelu_threshold) and the L1 penalty.",
    "legacy_topk": "The original code's TopK (keeps negatives and ties), no L1.",
    "sae": "SAE with --activation as given (the original feature_reconstruction_SAE.py).",
    "transcoder": "SAE (--activation) reading the MLP input of --layer and reconstructing --transcoder_target.",
}
_SAE_KIND_ACTIVATION = {"relu": "relu", "topk": "topk", "jumprelu": "jumprelu", "legacy_topk": "legacy_topk"}


# A width for checking the options before the language model tells the real one: large enough that no
# check depending on m (k <= m, auxk_k <= m) refuses what the real width would accept.
UNKNOWN_WIDTH = 1 << 20


def check_dictionary_options(kinds: list[str], dictionary: dict[str, Any], bae: dict[str, Any],
                             sae: dict[str, Any]) -> None:
    """Raise the config's ValueError for bad dictionary options (a NaN weight, ...) before any work: the
    configs are built (no weights) at a placeholder width. Both option groups are checked even when only
    one kind trains: a NaN `--l1_weight` beside `--dictionaries bae` is a mistake, not an unused value."""
    for kind in dict.fromkeys([*kinds, "bae", "sae"]):
        dictionary_config(kind, UNKNOWN_WIDTH, None, dictionary, bae, sae, {})


def build_dictionary(kind: str, hidden_size: int, output_size: int | None, dictionary: dict[str, Any],
                     bae: dict[str, Any], sae: dict[str, Any], provenance: dict[str, Any]) -> DictionaryPreTrainedModel:
    """A fresh dictionary of `kind` (see `DICTIONARY_KINDS`) from the parsed option groups and the provenance."""
    config = dictionary_config(kind, hidden_size, output_size, dictionary, bae, sae, provenance)
    return (BinaryAutoencoder if isinstance(config, BAEConfig) else SparseAutoencoder)(config)


def dictionary_config(kind: str, hidden_size: int, output_size: int | None, dictionary: dict[str, Any],
                      bae: dict[str, Any], sae: dict[str, Any], provenance: dict[str, Any]) -> BAEConfig | SAEConfig:
    """The config of a fresh dictionary of `kind` (see `build_dictionary`)."""
    if kind not in DICTIONARY_KINDS:
        raise ValueError(f"Unknown dictionary {kind!r}; choose from {', '.join(DICTIONARY_KINDS)}.")
    common = {**dictionary, **provenance, "hidden_size": hidden_size}
    if output_size is not None and output_size != hidden_size:
        common["output_size"] = output_size
    if kind == "bae":
        return BAEConfig(**common, **bae)
    options = dict(sae)
    if kind in _SAE_KIND_ACTIVATION:
        options["activation"] = _SAE_KIND_ACTIVATION[kind]
    if options.get("activation") in ("topk", "legacy_topk"):
        # Even when --l1_weight is given for the ReLU/JumpReLU SAEs trained beside it: TopK is sparse by
        # construction (as the original). SAEConfig's own default is 0 for topk, but a shared flag is not.
        options["l1_weight"] = 0.0
    return SAEConfig(**common, **options)


def dictionaries_for_keys(keys: Mapping[str, str], hidden_sizes: Mapping[str, int], *, kind: str = "bae",
                          dictionary: dict[str, Any] | None = None, bae: dict[str, Any] | None = None,
                          sae: dict[str, Any] | None = None, provenance: dict[str, Any] | None = None,
                          ) -> tuple[dict[str, DictionaryPreTrainedModel], dict[str, tuple[str, None]]]:
    """Fresh dictionaries of one `kind`, one per entry of `keys` (name → source key), and the `inputs`
    the trainer takes (name → (key, None)).

    A key written as a hookpoint (``layers.5.resid_post``) also records its layer and site in the config,
    unless `provenance` names them; `hidden_sizes` gives each key's width (e.g.
    `{k: source.hidden_size(k) for k in keys.values()}`).
    """
    dictionaries, inputs = {}, {}
    for name, key in keys.items():
        parsed = dict(zip(("layer", "site"), parse_hookpoint(key))) if key.startswith("layers.") else {}
        p = {**parsed, **(provenance or {})}
        dictionaries[name] = build_dictionary(kind, hidden_sizes[key], None, dict(dictionary or {}), dict(bae or {}),
                                              dict(sae or {}), p)
        inputs[name] = (key, None)
    return dictionaries, inputs
