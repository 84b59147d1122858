"""Bad inputs of the library's configs and models (issue 17): each row is a call and the ValueError it must
raise, whose one-line message names the input. NaN once passed every `x < 0` check and gave loss = nan."""

import json
import math
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from transformers import AutoModel

from hf_bae import BAEConfig, BinaryAutoencoder, SAEConfig, SparseAutoencoder
from hf_bae.loading import load_dictionary

NAN, INF = math.nan, math.inf


@dataclass
class Call:
    """One bad call: what to run (given a tmp_path), and a regex its ValueError's message matches."""

    name: str
    call: Callable
    match: str

    def __str__(self) -> str:
        return self.name


def bae(**kw):
    return BAEConfig(hidden_size=4, expansion_factor=2, **kw)


def sae(**kw):
    return SAEConfig(hidden_size=4, expansion_factor=2, **kw)


def saved(tmp_path, edit_config=None, truncate_weights=False):
    """A tiny BAE saved to tmp_path/d, its config.json or model.safetensors then damaged as asked."""
    folder = tmp_path / "d"
    BinaryAutoencoder(BAEConfig(hidden_size=4, expansion_factor=2)).save_pretrained(folder)
    if edit_config:
        config = json.loads((folder / "config.json").read_text())
        edit_config(config)
        (folder / "config.json").write_text(json.dumps(config))
    if truncate_weights:
        weights = folder / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:20])
    return folder


def drop_hidden_size(config):
    del config["hidden_size"]


def nan_entropy_weight(config):
    config["entropy_weight"] = NAN  # json writes NaN, which Python's json reads back


MODEL = BinaryAutoencoder(BAEConfig(hidden_size=4, expansion_factor=2))
SAE_MODEL = SparseAutoencoder(SAEConfig(hidden_size=4, expansion_factor=2))

CALLS = [
    # -- configs: non-finite numbers ----------------------------------------------------------------
    *[Call(f"BAEConfig({field}={value})", lambda _, f=field, v=value: bae(**{f: v}), f"{field} must be a finite number")
      for field in ("entropy_weight", "covariance_weight", "estimator_temperature", "squarewave_cycle",
                    "encoder_bias_lr_scale", "initial_firing_rate", "entropy_threshold", "activation_scale")
      for value in (NAN, INF)],
    *[Call(f"SAEConfig({field}=nan)", lambda _, f=field: sae(**{f: NAN}), f"{field} must be a finite number")
      for field in ("l1_weight", "jumprelu_threshold", "auxk_weight", "target_scale")],
    # -- configs: wrong types ---------------------------------------------------------------------
    Call("BAEConfig(entropy_weight='0.1')", lambda _: bae(entropy_weight="0.1"), "entropy_weight must be a finite number, got '0.1'"),
    Call("BAEConfig(hidden_size=8.0)", lambda _: BAEConfig(hidden_size=8.0), "hidden_size must be an integer"),
    Call("BAEConfig(hidden_size=True)", lambda _: BAEConfig(hidden_size=True), "hidden_size must be an integer"),
    Call("BAEConfig(encoder_bias='no')", lambda _: bae(encoder_bias="no"), "encoder_bias must be true/false"),
    Call("SAEConfig(k='3')", lambda _: sae(activation="topk", k="3"), "k must be an integer"),
    Call("BAEConfig(layer='5')", lambda _: bae(layer="5"), "layer must be an integer or None"),
    # -- configs: out of range --------------------------------------------------------------------
    Call("BAEConfig(entropy_weight=-1)", lambda _: bae(entropy_weight=-1.0), "entropy_weight must be >= 0"),
    Call("BAEConfig(initial_firing_rate=1)", lambda _: bae(initial_firing_rate=1.0), "initial_firing_rate must be > 0 and < 1"),
    Call("BAEConfig(entropy_threshold=-1)", lambda _: bae(entropy_threshold=-1.0), "entropy_threshold must be >= 0"),
    Call("BAEConfig(covariance_chunk_size=0)", lambda _: bae(covariance_chunk_size=0), "covariance_chunk_size must be >= 1"),
    Call("SAEConfig(k=0)", lambda _: sae(activation="relu", k=0), "k must be >= 1"),
    Call("SAEConfig(auxk_k=0)", lambda _: sae(activation="topk", k=2, auxk_k=0), "auxk_k=0 must be between 1"),
    Call("SAEConfig(auxk_dead_tokens=0)", lambda _: sae(auxk_dead_tokens=0), "auxk_dead_tokens must be >= 1"),
    Call("BAEConfig(layer=-1)", lambda _: bae(layer=-1), "layer must be >= 0"),
    # -- saved configs ----------------------------------------------------------------------------
    Call("config.json without hidden_size", lambda t: BAEConfig.from_pretrained(saved(t, drop_hidden_size)),
         "has no hidden_size"),
    Call("AutoModel of a config.json without hidden_size",
         lambda t: AutoModel.from_pretrained(saved(t, drop_hidden_size)), "has no hidden_size"),
    Call("load_dictionary of a config.json without hidden_size",
         lambda t: load_dictionary(saved(t, drop_hidden_size)), r"Could not load a dictionary from .*hidden_size"),
    Call("config.json with entropy_weight NaN", lambda t: load_dictionary(saved(t, nan_entropy_weight)),
         "entropy_weight must be a finite number"),
    # -- truncated weights ------------------------------------------------------------------------
    Call("load_dictionary of a truncated model.safetensors", lambda t: load_dictionary(saved(t, truncate_weights=True)),
         r"d/model\.safetensors is truncated or corrupt"),
    Call("AutoModel of a truncated model.safetensors",
         lambda t: AutoModel.from_pretrained(saved(t, truncate_weights=True)), r"d/model\.safetensors is truncated"),
    # -- model inputs -----------------------------------------------------------------------------
    Call("BAE forward of a Python list", lambda _: MODEL([[0.0] * 4]), "hidden_states must be a torch.Tensor .* got a list"),
    Call("BAE encode of a Python list", lambda _: MODEL.encode([[0.0] * 4]), "hidden_states must be a torch.Tensor"),
    Call("BAE decode of a Python list", lambda _: MODEL.decode([[0.0] * 8]), "codes must be a torch.Tensor"),
    Call("SAE forward of a Python list", lambda _: SAE_MODEL([[0.0] * 4]), "hidden_states must be a torch.Tensor"),
    Call("BAE forward of an empty batch", lambda _: MODEL(torch.zeros(0, 4)), r"hidden_states is an empty batch \(shape \(0, 4\)\)"),
    Call("SAE forward of an empty batch", lambda _: SAE_MODEL(torch.zeros(2, 0, 4)), "hidden_states is an empty batch"),
    Call("BAE forward of NaN hidden states", lambda _: MODEL(torch.full((2, 4), NAN)), "hidden_states contains 8 NaN"),
    Call("BAE forward with a NaN target", lambda _: MODEL(torch.zeros(2, 4), target=torch.full((2, 4), NAN)),
         "target contains 8 NaN"),
]


@pytest.mark.parametrize("case", CALLS, ids=str)
def test_a_bad_call_is_a_one_line_value_error(case, tmp_path):
    with pytest.raises(ValueError, match=case.match) as error:
        case.call(tmp_path)
    assert "\n" not in str(error.value), f"{case}: not one line: {error.value}"


def test_python_defaults_stay_usable():
    # The 768 default is documented for configs built in Python; only saved configs must give the width.
    assert BAEConfig().hidden_size == 768 and SAEConfig().hidden_size == 768
    assert BAEConfig.from_dict({"hidden_size": 8}).hidden_size == 8
    assert BAEConfig(hidden_size=8, activation_scale=2).activation_scale == 2  # an int for a float field
    assert MODEL(torch.zeros(3, 4)).loss.isfinite()
