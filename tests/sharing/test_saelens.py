"""SAELens export: the folder format and what cannot be exported. That sae_lens itself loads the
exports with equal encodings is checked in test_hub_roundtrip.py (one process imports sae_lens)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from hf_bae import BAEConfig, BinaryAutoencoder, SAEConfig, SparseAutoencoder
from hf_bae.cli import main as cli
from hf_bae.saelens import BAE_HAS_NO_SAELENS_EQUIVALENT, export_saelens

D = 16


def test_topk_export_writes_saelens_cfg_and_transposed_weights(tmp_path):
    model = SparseAutoencoder(SAEConfig(hidden_size=D, activation="topk", k=3, layer=4, base_model="org/lm", dataset="org/data", context_length=128))
    folder = export_saelens(model, tmp_path / "sae")
    cfg = json.loads((folder / "cfg.json").read_text())
    assert cfg["architecture"] == "topk" and cfg["k"] == 3 and cfg["d_in"] == D and cfg["d_sae"] == 4 * D
    assert cfg["apply_b_dec_to_input"] is False and cfg["normalize_activations"] == "none" and cfg["dtype"] == "float32"
    meta = cfg["metadata"]
    assert meta["model_name"] == "org/lm" and meta["hook_name"] == "blocks.4.hook_resid_post"
    assert meta["context_size"] == 128 and meta["dataset_path"] == "org/data" and meta["sae_lens_version"].startswith("6.")
    weights = load_file(folder / "sae_weights.safetensors")
    assert set(weights) == {"W_enc", "b_enc", "W_dec", "b_dec"}
    assert torch.equal(weights["W_enc"], model.encoder.weight.T) and torch.equal(weights["W_dec"], model.decoder.weight.T)
    # SAELens' encoding, written out: topk(x W_enc + b_enc) then ReLU (apply_b_dec_to_input is off)
    x = torch.randn(5, D)
    pre = x @ weights["W_enc"] + weights["b_enc"]
    values, index = pre.topk(3, dim=-1)
    assert torch.allclose(torch.zeros_like(pre).scatter(-1, index, values.relu()), model.encode(x), atol=1e-6)


def test_jumprelu_and_transcoder_metadata(tmp_path):
    jump = export_saelens(SparseAutoencoder(SAEConfig(hidden_size=D, activation="jumprelu", jumprelu_threshold=0.25)), tmp_path / "j")
    assert json.loads((jump / "cfg.json").read_text())["architecture"] == "jumprelu"
    assert torch.equal(load_file(jump / "sae_weights.safetensors")["threshold"], torch.full((4 * D,), 0.25))
    tc = SparseAutoencoder(SAEConfig(hidden_size=D, output_size=8, site="mlp_in", output_site="mlp_out", layer=2, encoder_bias=False))
    cfg = json.loads((export_saelens(tc, tmp_path / "t") / "cfg.json").read_text())
    assert cfg["architecture"] == "transcoder" and cfg["d_out"] == 8
    assert cfg["metadata"]["hook_name"] == "blocks.2.ln2.hook_normalized" and cfg["metadata"]["hook_name_out"] == "blocks.2.hook_mlp_out"
    assert torch.equal(load_file(tmp_path / "t" / "sae_weights.safetensors")["b_enc"], torch.zeros(4 * D))


@pytest.mark.parametrize(
    "model, message",
    [
        (BinaryAutoencoder(BAEConfig(hidden_size=D)), "A Binary Autoencoder has no SAELens equivalent"),
        (SparseAutoencoder(SAEConfig(hidden_size=D, activation="legacy_topk", k=3)), "legacy_topk keeps negative values"),
        (SparseAutoencoder(SAEConfig(hidden_size=D, activation="sigmoid")), "activation='sigmoid' has no SAELens equivalent"),
        (SparseAutoencoder(SAEConfig(hidden_size=D, output_activation="relu")), "output_activation='relu' has no SAELens"),
        (SparseAutoencoder(SAEConfig(hidden_size=D, activation="jumprelu", jumprelu_threshold=-0.1)), "lets negative activations through"),
        (SparseAutoencoder(SAEConfig(hidden_size=D, activation="topk", k=2, site="mlp_in", output_site="mlp_out")), "transcoder with activation='topk'"),
    ],
    ids=["bae", "legacy_topk", "sigmoid", "output-activation", "negative-theta", "topk-transcoder"],
)
def test_what_saelens_cannot_express_is_refused_with_the_reason(model, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        export_saelens(model, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_cli_exports_the_saes_of_a_run_and_skips_the_bae(tmp_path, capsys):
    run = tmp_path / "run"
    BinaryAutoencoder(BAEConfig(hidden_size=D, layer=1)).save_pretrained(run / "bae")
    SparseAutoencoder(SAEConfig(hidden_size=D, layer=1, activation="topk", k=2)).save_pretrained(run / "topk")
    assert cli(["export-saelens", str(run), str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "layers.1.resid_post.topk" / "cfg.json").is_file()
    assert not (tmp_path / "out" / "layers.1.resid_post.bae").exists()
    assert BAE_HAS_NO_SAELENS_EQUIVALENT in capsys.readouterr().err
    assert cli(["export-saelens", str(run / "bae"), str(tmp_path / "none")]) == 2  # nothing exportable: bad input
    assert "nothing to export" in capsys.readouterr().err
