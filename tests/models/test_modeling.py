import json
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoConfig, AutoModel

from hf_bae import BAEConfig, BinaryAutoencoder, SAEConfig, SparseAutoencoder
from hf_bae.configuration import ESTIMATORS, SAE_ACTIVATIONS

D = 16


def _bae(**kw):
    return BinaryAutoencoder(BAEConfig(hidden_size=D, **kw))


def _sae(activation, **kw):
    kw.setdefault("k", 5)
    return SparseAutoencoder(SAEConfig(hidden_size=D, activation=activation, **kw))


MODELS = [pytest.param(lambda e=e: _bae(estimator=e), id=f"bae-{e}") for e in ESTIMATORS]
MODELS += [pytest.param(lambda: _bae(bits=4, decoder_bias=False), id="bae-4bit")]
MODELS += [pytest.param(lambda a=a: _sae(a), id=f"sae-{a}") for a in SAE_ACTIVATIONS]


@pytest.mark.parametrize("make", MODELS)
def test_save_and_auto_load_give_the_same_class_and_outputs(make, tmp_path):
    model = make().eval()
    x = torch.randn(10, D)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model)
    assert type(AutoConfig.from_pretrained(tmp_path)) is type(model.config)
    a, b = model(x), loaded(x)
    assert torch.equal(a.reconstruction, b.reconstruction)
    assert torch.equal(a.loss, b.loss)


_REMOTE = textwrap.dedent(
    """
    import sys, json, torch
    sys.modules["hf_bae"] = None  # hf_bae is not importable in this interpreter
    from transformers import AutoModel
    model = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
    x = torch.load(sys.argv[2])
    torch.save(model(x, return_loss=False).reconstruction, sys.argv[3])
    print(type(model).__module__)
    """
)


@pytest.mark.parametrize("make", [lambda: _bae(bits=2), lambda: _sae("topk", output_site="mlp_out", site="mlp_in")])
def test_saved_folder_loads_with_trust_remote_code_without_hf_bae(make, tmp_path):
    model = make().eval()
    model.save_pretrained(tmp_path / "m")
    x = torch.randn(6, D)
    torch.save(x, tmp_path / "x.pt")
    out = subprocess.run(
        [sys.executable, "-c", _REMOTE, str(tmp_path / "m"), str(tmp_path / "x.pt"), str(tmp_path / "y.pt")],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1].startswith("transformers_modules.")
    assert torch.equal(torch.load(tmp_path / "y.pt"), model(x, return_loss=False).reconstruction)
    auto_map = json.loads((tmp_path / "m" / "config.json").read_text())["auto_map"]
    assert set(auto_map) == {"AutoConfig", "AutoModel"}


def test_codes_are_binary_and_multibit_decoding_uses_bit_values():
    model = _bae(bits=2)
    x = torch.randn(7, D)
    codes = model.encode(x)
    assert codes.shape == (7, 4 * D * 2) and set(codes.unique().tolist()) <= {0.0, 1.0}
    values = codes.view(7, -1, 2) @ torch.tensor([1 / 3, 2 / 3])
    assert torch.allclose(model.decode(codes), model.decoder(values))


def test_forward_returns_each_loss_term_and_their_weighted_sum():
    model = _bae(entropy_weight=0.5, covariance_weight=0.25)
    out = model(torch.randn(32, D))
    expected = out.reconstruction_loss + 0.5 * out.entropy_loss + 0.25 * out.covariance_loss
    assert torch.allclose(out.loss, expected)
    # overriding the weights (the warm-up does) changes only the total
    off = model(torch.randn(32, D), entropy_weight=0.0, covariance_weight=0.0)
    assert off.covariance_loss is None and torch.allclose(off.loss, off.reconstruction_loss)
    assert model(torch.randn(2, 3, D)).codes.shape == (2, 3, 4 * D)  # leading dims are kept


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_encoder_learns_from_the_reconstruction_loss(estimator):
    model = _bae(estimator=estimator, entropy_weight=0.0, covariance_weight=0.0)
    model(torch.randn(64, D)).loss.backward()
    assert model.encoder.weight.grad.abs().sum() > 0
    assert model.decoder.weight.grad.abs().sum() > 0


def test_topk_keeps_exactly_k_and_legacy_topk_keeps_negatives():
    x = torch.randn(50, D)
    latents = _sae("topk", k=5).encode(x)
    assert ((latents != 0).sum(-1) <= 5).all() and (latents >= 0).all()
    legacy = _sae("legacy_topk", k=60).encode(x)  # 60 of 64 latents: some kept values are negative
    assert ((legacy != 0).sum(-1) >= 60).all() and (legacy < 0).any()


def test_jumprelu_uses_its_fixed_threshold():
    model = _sae("jumprelu", jumprelu_threshold=0.3)
    x = torch.randn(20, D)
    pre = model.pre_activations(x)
    assert torch.equal(model.encode(x), torch.where(pre > 0.3, pre, torch.zeros_like(pre)))


def test_transcoder_needs_its_target_and_may_change_width():
    model = SparseAutoencoder(SAEConfig(hidden_size=D, output_size=8, site="mlp_in", output_site="mlp_out"))
    assert model.config.is_transcoder
    with pytest.raises(ValueError, match="pass the mlp_out activations as `target`"):
        model(torch.randn(4, D))
    out = model(torch.randn(4, D), target=torch.randn(4, 8))
    assert out.reconstruction.shape == (4, 8)


def test_original_state_dict_keys_load_unchanged():
    original_keys = {"encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias"}
    assert set(_bae().state_dict()) == original_keys
    assert set(_sae("relu").state_dict()) == original_keys


def test_wrong_width_names_the_expected_source():
    model = BinaryAutoencoder(BAEConfig(hidden_size=D, layer=5, base_model="meta-llama/Llama-3.2-1B"))
    with pytest.raises(ValueError, match=r"expected hidden_states of hidden size 16 from layer 5 \(resid_post\) of meta-llama/Llama-3.2-1B, got shape \(3, 12\)"):
        model(torch.randn(3, 12))
    with pytest.raises(ValueError, match="expected codes of hidden size 64"):
        model.decode(torch.zeros(3, 10))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_inputs_are_refused(bad):
    x = torch.randn(4, D)
    x[1, 2] = bad
    for model in (_bae(), _sae("relu")):
        with pytest.raises(ValueError, match="1 NaN or infinite values"):
            model(x)
