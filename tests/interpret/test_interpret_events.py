"""Atlas events and logit effects: a usually-on BAE code is explained by where it switches off (samples,
labels, negatives in its usual state), multi-bit features by deviation from their mean; the stored logit
effects equal W_U · d_j computed directly; atlases written before these columns still load and take
results; a dictionary trained on the embedded model finds it again offline through `hf-bae atlas`."""

import json

import pytest
import torch

from interp_fixtures import corpus, word_lm

from hf_bae import BAEConfig, BinaryAutoencoder, SAEConfig, SparseAutoencoder
from hf_bae.activations import stream_activations
from hf_bae.interpret.atlas import AtlasConfig, build_atlas, build_atlases
from hf_bae.interpret.atlas_format import ADDED_COLUMNS, check_atlas_matches, load_atlas, save_atlas
from hf_bae.interpret.atlas_scoring import RandomBaseline
from hf_bae.interpret.logit_effects import (decoder_directions, dictionary_logit_effects, logit_effects,
                                           logit_effects_unavailable)

CTX = 32
KW = dict(context_length=CTX, batch_size=4, progress=False)


@pytest.fixture(scope="module")
def lm():
    return word_lm()


@pytest.fixture(scope="module")
def texts():
    return corpus(40)


def hidden(lm, texts, site):
    model, tok = lm
    seqs, acts = [], []
    for b in stream_activations(model, tok, texts, [site], exclude_special_tokens=False, context_length=CTX, batch_size=4):
        seqs.append((b.first_row + b.row_index) * CTX + b.positions)
        acts.append(b.activations[site])
    return torch.cat(seqs), torch.cat(acts)


def usually_on_bae(lm, texts, bits=1):
    """A BAE whose feature 0 is on for ~90 % of the tokens and feature 1 for ~10 % (biases set at quantiles)."""
    torch.manual_seed(5)
    bae = BinaryAutoencoder(BAEConfig(hidden_size=16, expansion_factor=2, layer=1, bits=bits)).eval()
    _, h = hidden(lm, texts, "layers.1.resid_post")
    with torch.no_grad():
        bae.encoder.bias.zero_()
        pre = bae.pre_activations(h)
        for code, on in ((0, 0.9), (1, 0.1)):  # the first bit of features 0 and 1
            c = code * bits
            bae.encoder.bias[c] = -torch.quantile(pre[:, c], 1 - on)
    return bae, h


def test_a_usually_on_code_is_explained_by_where_it_switches_off(lm, texts):
    bae, h = usually_on_bae(lm, texts)
    seqs, _ = hidden(lm, texts, "layers.1.resid_post")
    with torch.no_grad():
        codes = (bae.pre_activations(h) > 0)
    position = {int(q): t for t, q in enumerate(seqs)}
    ds, info = build_atlas(bae, *lm, texts, AtlasConfig(top_k=4, samples_per_feature=10, num_non_activating=6), **KW)
    on0, on1 = ds[0], ds[1]
    assert on0["frequency"] > 0.8 and on1["frequency"] < 0.2
    assert on0["event"] == "off" and on1["event"] == "on"
    # Feature 0 (usually on): every sample is a token where its code is 0, recorded as value 0 ...
    assert len(on0["samples"]) == 10
    for s in on0["samples"]:
        assert not codes[position[s["row"] * CTX + s["row_position"]], 0] and s["activation"] == 0.0
    # ... and its negatives are tokens in its usual state (on, value 1): the test contrasts the two states.
    assert len(on0["non_activating"]) == 6
    for s in on0["non_activating"]:
        assert codes[position[s["row"] * CTX + s["row_position"]], 0] and s["activation"] == 1.0
    # Feature 1 (usually off): the reverse, as an SAE latent.
    assert all(codes[position[s["row"] * CTX + s["row_position"]], 1] and s["activation"] == 1.0 for s in on1["samples"])
    assert all(not codes[position[s["row"] * CTX + s["row_position"]], 1] for s in on1["non_activating"])
    assert info.extra["usually_on_features"] == sum(r["event"] == "off" for r in ds) >= 1
    assert "usually-on" in info.score

    # active_only keeps to events too: a usually-on code still gets its off tokens, never its on ones.
    ds, _ = build_atlas(bae, *lm, texts, AtlasConfig(top_k=4, samples_per_feature=10, active_only=True), **KW)
    assert ds[0]["event"] == "off" and ds[0]["samples"] and all(s["activation"] == 0.0 for s in ds[0]["samples"])

    # SAE latents and the random baseline: "on" and None.
    sae = SparseAutoencoder(SAEConfig(hidden_size=16, expansion_factor=2, layer=1, activation="relu")).eval()
    (sd, _), (rd, _) = build_atlases([sae, RandomBaseline(8)], *lm, texts, AtlasConfig(top_k=2, samples_per_feature=3), **KW)
    assert set(sd["event"]) == {"on"} and set(rd["event"]) == {None} and set(rd["logit_effects"]) == {None}


def test_multi_bit_features_deviate_from_their_mean(lm, texts):
    bae, h = usually_on_bae(lm, texts, bits=2)
    with torch.no_grad():
        values = bae.feature_activity(h).values.double()
    mean = values.mean(0)
    ds, _ = build_atlas(bae, *lm, texts, AtlasConfig(top_k=4, samples_per_feature=8, num_non_activating=4), **KW)
    for row in ds:
        j = row["feature"]
        usually_on = mean[j].item() > 0.5
        assert row["event"] == ("off" if usually_on else "on")
        for s in row["samples"]:  # an event: below the mean for a usually-on feature, above it otherwise
            assert (s["activation"] < mean[j].item()) if usually_on else (s["activation"] > mean[j].item())
        for s in row["non_activating"]:  # the usual side of the mean
            assert (s["activation"] >= mean[j].item() - 1e-6) if usually_on else (s["activation"] <= mean[j].item() + 1e-6)
    assert "off" in ds["event"]


def test_stored_logit_effects_equal_the_direct_computation(lm, texts):
    model, tok = lm
    bae, _ = usually_on_bae(lm, texts)
    ds, info = build_atlas(bae, model, tok, texts, AtlasConfig(top_k=2, samples_per_feature=3, logit_effects_k=5), **KW)
    w_u = model.get_output_embeddings().weight.detach().double()  # [vocab, d]
    for row in ds:
        direct = w_u @ bae.decoder.weight.detach().double()[:, row["feature"]]  # W_U · d_j
        effects = row["logit_effects"]
        assert [e["token_id"] for e in effects["promoted"]] == direct.topk(5).indices.tolist()
        assert [e["token_id"] for e in effects["suppressed"]] == (-direct).topk(5).indices.tolist()
        assert [e["value"] for e in effects["promoted"]] == pytest.approx(direct.topk(5).values.tolist(), rel=1e-5)
        assert [e["value"] for e in effects["suppressed"]] == pytest.approx((-(-direct).topk(5).values).tolist(), rel=1e-5)
        assert [e["token"] for e in effects["promoted"]] == [tok.decode([i]) for i in direct.topk(5).indices.tolist()]
    assert info.extra["logit_effects"]["computed"] and info.extra["logit_effects"]["k"] == 5

    # While training normalisation is not folded, the decoder writes normalised units: raw = weight / scale.
    sae = SparseAutoencoder(SAEConfig(hidden_size=16, expansion_factor=2, layer=1)).eval()
    before = decoder_directions(sae)
    sae.set_normalization(torch.zeros(16), 4.0)
    assert torch.allclose(decoder_directions(sae), before / 4.0)
    sae.fold_normalization()
    assert torch.allclose(decoder_directions(sae), before / 4.0)

    # Not computable: a transcoder, a dictionary of another width than the unembedding, k = 0.
    trc = SparseAutoencoder(SAEConfig(hidden_size=16, expansion_factor=2, layer=1, site="mlp_in", output_site="mlp_out"))
    assert dictionary_logit_effects(trc, model, tok) is None
    narrow_lm = word_lm(hidden_size=8)[0]  # its unembedding reads 8 dimensions, the BAE writes 16
    assert dictionary_logit_effects(bae, narrow_lm, tok) is None
    assert "writes 16 dimensions, the unembedding reads 8" in logit_effects_unavailable(bae, narrow_lm)
    assert "transcoder" in logit_effects_unavailable(trc, model)
    assert dictionary_logit_effects(bae, model, tok, k=0) is None
    with pytest.raises(ValueError, match="residual width"):
        logit_effects(torch.zeros(3, 8), w_u.float())
    ds, info = build_atlas(bae, model, tok, texts, AtlasConfig(top_k=2, samples_per_feature=3, logit_effects_k=0), **KW)
    assert set(ds["logit_effects"]) == {None} and "logit_effects_k = 0" in info.extra["logit_effects"]["reason"]


def test_atlases_without_the_new_columns_still_load_and_take_results(lm, texts, tmp_path):
    from hf_bae.interpret.comsem import ComSemRun, FeatureResult
    from hf_bae.interpret.report import apply_results

    bae, _ = usually_on_bae(lm, texts)
    ds, info = build_atlas(bae, *lm, texts, AtlasConfig(top_k=2, samples_per_feature=3), **KW)
    old = ds.remove_columns(list(ADDED_COLUMNS))  # as hf_bae wrote atlases before events and logit effects
    path = save_atlas(old, info, tmp_path / "old")
    loaded, info2 = load_atlas(path)
    check_atlas_matches(info2, bae)
    assert set(ADDED_COLUMNS) <= set(loaded.column_names)
    assert set(loaded["event"]) == {None} and set(loaded["logit_effects"]) == {None}
    assert loaded.remove_columns(list(ADDED_COLUMNS)).to_list() == old.to_list()
    run = ComSemRun(results=[FeatureResult(0, "scored", "animal words", 0.5)], summary={}, ledger={})
    filled = apply_results(loaded, run)
    assert filled[0]["explanation"] == "animal words" and filled[0]["event"] is None
    new, _ = load_atlas(save_atlas(ds, info, tmp_path / "new"))
    assert new.to_list() == ds.to_list()
    # Samples written before per-token values lack `token_values`: they load with None there and take results.
    import datasets

    features = old.features.copy()
    sample = datasets.List({k: v for k, v in features["samples"].feature.items() if k != "token_values"})
    features["samples"] = features["non_activating"] = sample
    older = old.map(lambda r: {c: [{k: v for k, v in s.items() if k != "token_values"} for s in r[c]] for c in ("samples", "non_activating")},
                    features=features)
    assert "token_values" not in older.features["samples"].feature
    loaded, _ = load_atlas(save_atlas(older, info, tmp_path / "older"))
    assert all(s["token_values"] is None for r in loaded for s in r["samples"] + r["non_activating"])
    assert [[{k: v for k, v in s.items() if k != "token_values"} for s in r["samples"]] for r in loaded] == older["samples"]
    assert apply_results(loaded, run)[0]["explanation"] == "animal words"


def test_an_embedded_model_dictionary_resolves_back_to_it_offline(tmp_path, monkeypatch, capsys):
    """A dictionary trained on the embedded model records its Hub id with the wheel's revision tag; `hf-bae
    atlas` must load the embedded copy from that (offline), never the Hub checkpoint."""
    from hf_bae.activations import EMBEDDED_MODEL_ID
    from hf_bae.cli import main
    from hf_bae.embedded import embedded_revision
    from hf_bae.loading import base_model_of

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    config = BAEConfig(hidden_size=576, latent_size=32, layer=2, base_model=EMBEDDED_MODEL_ID,
                       base_model_revision=embedded_revision())
    BinaryAutoencoder(config).save_pretrained(tmp_path / "bae")
    saved = json.loads((tmp_path / "bae" / "config.json").read_text())
    assert (saved["base_model"], saved["base_model_revision"]) == (EMBEDDED_MODEL_ID, embedded_revision())
    assert base_model_of([config]) == (EMBEDDED_MODEL_ID, embedded_revision())
    argv = ["atlas", "--dictionary", str(tmp_path / "bae"), "--num_texts", "6", "--context_length", "32",
            "--batch_size", "2", "--top_k", "2", "--samples_per_feature", "3", "--output", str(tmp_path / "atlas")]
    assert main(argv) == 0, capsys.readouterr().err
    ds, info = load_atlas(tmp_path / "atlas")
    assert (info.base_model, info.base_model_revision) == (EMBEDDED_MODEL_ID, embedded_revision())
    assert info.num_tokens > 0 and len(ds) == 32
    # The embedded model's unembedding (width 576) gives the logit effects.
    assert info.extra["logit_effects"]["computed"] and len(ds[0]["logit_effects"]["promoted"]) == 10

    # A revision that is not the embedded tag is a Hub lookup: offline it fails in one line naming the
    # flags `hf-bae atlas` has (never a traceback, never a flag it lacks).
    config.base_model_revision = "no-such-revision"
    BinaryAutoencoder(config).save_pretrained(tmp_path / "other")
    capsys.readouterr()
    code = main(["atlas", "--dictionary", str(tmp_path / "other"), "--num_texts", "2", "--output", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err, err
    assert "--model " not in err and "--model`" not in err, err
