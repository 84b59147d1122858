import dataclasses
import json

import pytest

from hf_bae import BAEConfig, SAEConfig, __version__
from hf_bae.arguments import config_arguments, parse


def test_sizes_and_defaults():
    c = BAEConfig(hidden_size=576)
    assert c.num_latents == 4 * 576 and c.num_codes == 4 * 576
    assert BAEConfig(hidden_size=8, latent_size=20, bits=4).num_codes == 80
    # The defaults are the recipe of benchmarks/sweep.py; the "original" preset gives the original code's.
    assert c.estimator == "identity" and c.decoder_bias and c.encoder_bias
    assert (c.entropy_weight, c.covariance_weight, c.entropy_threshold) == (1e-3, 1e-5, 0.0)
    assert (c.normalize_activations, c.initial_firing_rate) == ("center_scale", 0.05)
    o = BAEConfig.from_preset("original", hidden_size=576)
    assert o.estimator == "legacy_sign_s" and (o.entropy_weight, o.covariance_weight) == (1e-7, 1e-7)
    assert (o.normalize_activations, o.initial_firing_rate) == ("none", None)
    s = SAEConfig.from_preset("original", hidden_size=8, l1_weight=1e-3)
    assert (s.l1_weight, s.l1_reduction, s.l1_decoder_norm, s.auxk_weight) == (1e-3, "sum", False, 0.0)
    with pytest.raises(ValueError, match="Unknown preset 'nope'"):
        BAEConfig.from_preset("nope")


@pytest.mark.parametrize("legacy, ours", [("sign", "identity"), ("sign_s", "legacy_sign_s"), ("squarewave", "squarewave")])
def test_original_binarization_names_map(legacy, ours):
    assert BAEConfig(estimator=legacy).estimator == ours


def test_every_own_field_is_written_and_read_back(tmp_path):
    c = BAEConfig(hidden_size=32, bits=2, layer=5, base_model="some/model", site="mlp_out")
    c.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    # Fields equal to their defaults are written too: the card and the reader need all of them.
    assert saved["hf_bae_version"] == __version__ and saved["entropy_weight"] == 1e-3
    assert saved["layer"] == 5 and saved["site"] == "mlp_out" and saved["bits"] == 2
    again = BAEConfig.from_pretrained(tmp_path)
    assert again.to_dict() == c.to_dict()


@pytest.mark.parametrize(
    "cls, kwargs, message",
    [
        (BAEConfig, {"estimator": "magic"}, "estimator='magic' is not supported"),
        (BAEConfig, {"bits": 3}, "bits=3 is not supported"),
        (BAEConfig, {"hidden_size": 0}, "hidden_size must be a positive integer"),
        (BAEConfig, {"site": "attn_out"}, "site='attn_out' is not supported"),
        (BAEConfig, {"output_activation": "gelu"}, "output_activation='gelu'"),
        (BAEConfig, {"estimator_temperature": 0.0}, "estimator_temperature must be > 0"),
        (BAEConfig, {"hf_bae_version": "99.0.0"}, "newer than the installed"),
        (SAEConfig, {"activation": "softplus"}, "activation='softplus' is not supported"),
        (SAEConfig, {"activation": "topk", "hidden_size": 4, "expansion_factor": 2, "k": 9}, "k=9 must be between 1 and"),
        (SAEConfig, {"l1_weight": -1.0}, "l1_weight must be >= 0"),
    ],
)
def test_bad_configs_name_the_problem(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


def test_newer_config_file_is_refused(tmp_path):
    BAEConfig(hidden_size=8).save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    data["hf_bae_version"] = "9.9.9"
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="written by hf_bae 9.9.9"):
        BAEConfig.from_pretrained(tmp_path)


def test_flags_are_generated_from_the_config_fields():
    BAEArgs = config_arguments(BAEConfig)
    names = {f.name for f in dataclasses.fields(BAEArgs)}
    assert {"hidden_size", "estimator", "entropy_weight", "bits", "layer"} <= names
    assert "output_hidden_states" not in names  # transformers' generic fields are not flags
    (args,) = parse(
        [BAEArgs],
        ["--hidden_size", "64", "--binarization_type", "sign", "--covarience_weight", "1e-6", "--inner_expand_rate", "2"],
        prog="t",
        description="",
    )
    config = BAEConfig(**dataclasses.asdict(args))
    assert (config.estimator, config.covariance_weight, config.num_latents) == ("identity", 1e-6, 128)


def test_help_text_comes_from_the_fields(capsys):
    with pytest.raises(SystemExit):
        parse([config_arguments(SAEConfig)], ["--help"], prog="t", description="")
    out = capsys.readouterr().out
    assert "Fixed threshold" in out and "--theta" in out and "--l1_norm_weight" in out
