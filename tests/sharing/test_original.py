"""Importing models trained by the original research code (hf_bae.original, `hf-bae import-original`)."""

import pickle

import pytest
import torch
from transformers import AutoModel

from hf_bae import BinaryAutoencoder, SparseAutoencoder
from hf_bae.cli import main as cli
from hf_bae.original import convert_original_checkpoint, read_original_params


def _original_run(tmp_path, params, d=12, m=48, bias=True):
    """What the original's feature_reconstruction*.py leaves behind: a state_dict and experiment_params.txt."""
    torch.manual_seed(0)
    encoder, decoder = torch.nn.Linear(d, m), torch.nn.Linear(m, d, bias=bias)
    state = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    state |= {f"decoder.{k}": v for k, v in decoder.state_dict().items()}
    torch.save(state, tmp_path / "model_x.pt")
    with open(tmp_path / "experiment_params.txt", "w") as f:  # written as the original does
        for key, value in params.items():
            f.write(f"{key}: {value}\n")
    return encoder, decoder


BAE_PARAMS = {"feature_path": "features.pkl", "layered_feature": True, "layer": 6, "inner_expand_rate": 4,
              "binarization_type": "sign_s", "cycle_for_squarewave": 2, "output_activation": "none", "cuda": True,
              "lr": 0.0005, "entropy_weight": 1e-07, "covarience_weight": 1e-07, "entropy_threshold": 0}


def test_bae_imports_with_the_original_forward(tmp_path):
    encoder, decoder = _original_run(tmp_path, BAE_PARAMS)
    bae = convert_original_checkpoint(tmp_path / "model_x.pt", tmp_path / "experiment_params.txt",
                                      base_model="meta-llama/Llama-3.2-1B", layer=6)
    assert isinstance(bae, BinaryAutoencoder)
    assert bae.config.estimator == "legacy_sign_s" and bae.config.layer == 5 and bae.config.site == "resid_post"
    assert bae.config.covariance_weight == 1e-7 and bae.config.base_model == "meta-llama/Llama-3.2-1B"
    x = torch.randn(32, 12)
    with torch.no_grad():
        codes = (encoder(x) > 0).float()  # the original's sign forward
        assert torch.equal(bae.encode(x), codes)
        assert torch.allclose(bae(x).reconstruction, decoder(codes), atol=1e-6)
    bae.save_pretrained(tmp_path / "out")
    again = AutoModel.from_pretrained(tmp_path / "out")
    with torch.no_grad():
        assert torch.equal(again.encode(x), codes)


def test_original_topk_sae_becomes_legacy_topk(tmp_path):
    params = {"inner_expand_rate": 4, "inner_activation": "topk", "output_activation": "none", "bias": False,
              "l1_norm_weight": 0.0}
    encoder, decoder = _original_run(tmp_path, params, bias=False)
    sae = convert_original_checkpoint(tmp_path / "model_x.pt", tmp_path / "experiment_params.txt", k=3)
    assert isinstance(sae, SparseAutoencoder)
    assert sae.config.activation == "legacy_topk" and sae.config.k == 3 and not sae.config.decoder_bias
    x = torch.randn(16, 12)
    with torch.no_grad():
        pre = encoder(x)
        expected = pre * (pre >= torch.topk(pre, 3, dim=1).values[:, -1:]).float()  # the original's TopK
        assert torch.allclose(sae(x).latents, expected, atol=1e-6)


def test_pickled_params_need_explicit_permission(tmp_path):
    _original_run(tmp_path, BAE_PARAMS)
    with open(tmp_path / "log_x.pkl", "wb") as f:
        pickle.dump({"log": {}, "params": BAE_PARAMS}, f)
    with pytest.raises(ValueError, match="allow_pickle"):
        read_original_params(tmp_path / "log_x.pkl")
    assert read_original_params(tmp_path / "log_x.pkl", allow_pickle=True)["inner_expand_rate"] == 4
    assert read_original_params(tmp_path / "experiment_params.txt") == BAE_PARAMS


def test_bad_inputs_say_what_is_wrong(tmp_path):
    _original_run(tmp_path, dict(BAE_PARAMS, inner_expand_rate=8))
    with pytest.raises(ValueError, match="inner_expand_rate"):
        convert_original_checkpoint(tmp_path / "model_x.pt", tmp_path / "experiment_params.txt")
    with pytest.raises(FileNotFoundError, match="model_<time>.pt"):
        convert_original_checkpoint(tmp_path / "missing.pt", BAE_PARAMS)
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="state_dict"):
        convert_original_checkpoint(tmp_path / "broken.pt", BAE_PARAMS)
    with pytest.raises(ValueError, match="binarization_type"):
        convert_original_checkpoint(tmp_path / "model_x.pt", dict(BAE_PARAMS, inner_expand_rate=8, binarization_type="tanh"))


def test_cli_import_original(tmp_path, capsys):
    _original_run(tmp_path, BAE_PARAMS)
    rc = cli(["import-original", str(tmp_path / "model_x.pt"), str(tmp_path / "experiment_params.txt"),
              str(tmp_path / "out"), "--LM_name", "gpt2", "--layer", "3"])
    assert rc == 0 and "BinaryAutoencoder" in capsys.readouterr().out
    model = AutoModel.from_pretrained(tmp_path / "out")
    assert model.config.base_model == "gpt2" and model.config.layer == 2
    assert cli(["import-original", str(tmp_path / "model_x.pt"), str(tmp_path / "nope.txt"), str(tmp_path / "o2")]) == 2
    assert "does not exist" in capsys.readouterr().err
