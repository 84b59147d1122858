"""Steering in Try it (a feature's decoder direction added at its site, the next-token distribution
before / after) and the comparison of two dictionaries by decoder cosine (issue 16, items 2 and 3)."""

import copy
import html
import re
import shutil

import pytest
import torch

from hf_bae.browser import Atlas, Dictionary, FeatureBrowser, nearest_features, steer_next_token
from hf_bae.browser.steering import steering_view
from space_fixtures import build_atlas, tiny_dictionary
from test_space import EVIL, browser, world  # noqa: F401  (module fixtures)

TEXT = "The cat sat on the mat"


def _ids(world):  # noqa: F811
    return torch.tensor([world["tokenizer"](TEXT)["input_ids"]])


def test_zero_strength_changes_nothing(world):  # noqa: F811
    model = world["model"]
    ids = _ids(world)
    shift = steer_next_token(model, ids, "layers.0.resid_post", torch.randn(32), 0.0)
    with torch.inference_mode():
        plain = model(input_ids=ids).logits[0, -1].double().softmax(-1)
    assert torch.equal(shift.before, shift.after) and shift.kl == 0.0
    assert torch.allclose(shift.before, plain, atol=1e-9)  # the observing hook itself changes nothing
    hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[1][0].detach()
    assert shift.scale == pytest.approx(float(hidden.norm(dim=-1).mean()), rel=1e-5)


def test_steering_along_a_token_unembedding_raises_its_probability(world):  # noqa: F811
    model, ids = world["model"], _ids(world)
    w_u = model.get_output_embeddings().weight.detach()
    probe = steer_next_token(model, ids, "layers.0.resid_post", torch.randn(32), 0.0)
    t = int(probe.before.argsort()[len(probe.before) // 2])  # a token of middling probability
    up = steer_next_token(model, ids, "layers.0.resid_post", w_u[t], 10.0)
    down = steer_next_token(model, ids, "layers.0.resid_post", w_u[t], -10.0)
    assert up.after[t] > 1.5 * up.before[t] and int(up.after.argmax()) == t and up.kl > 0
    assert down.after[t] < up.before[t]
    assert abs(float(up.after.sum()) - 1) < 1e-9
    with pytest.raises(ValueError, match="direction is zero"):
        steer_next_token(model, ids, "layers.0.resid_post", torch.zeros(32), 1.0)
    with pytest.raises(ValueError, match="different|dimensions"):
        steer_next_token(model, ids, "layers.0.resid_post", torch.ones(7), 1.0)


def _with_column(dictionary, feature: int, direction: torch.Tensor) -> Dictionary:
    model = copy.deepcopy(dictionary)
    with torch.no_grad():
        model.decoder.weight[:, feature] = direction
    return Dictionary(model)


def test_steering_view_signs_by_event_and_shows_the_change(world):  # noqa: F811
    """A feature whose decoder column is W_U[t] raises p(t) for an SAE latent and a usually-off BAE
    code; a usually-on BAE code (event "off") is steered the other way, toward its event."""
    model, tok = world["model"], world["tokenizer"]
    w_u = model.get_output_embeddings().weight.detach()
    probe = steer_next_token(model, _ids(world), "layers.0.resid_post", torch.randn(32), 0.0)
    t = int(probe.before.argsort()[len(probe.before) // 2])
    root = world["root"]
    sae_atlas = Atlas.load(str(root / "sae-atlas"))
    view = steering_view(sae_atlas, _with_column(world["sae"], 3, w_u[t]), model, tok, f"{TEXT} {EVIL}", 3, 10.0, 256)
    assert view.sign == 1 and view.shift.after[t] > view.shift.before[t]
    assert "steer-before" in view.html and "steer-after" in view.html and f"{view.shift.kl:.4g}" in view.html
    after = re.findall(r"<table class='steer-after'>.*?</table>", view.html)[0]
    assert f"data-token-id='{t}'" in after.split("</tr>")[1]  # t leads the "after" list
    assert EVIL not in view.html  # the tokens are escaped
    strength0 = steering_view(sae_atlas, Dictionary(world["sae"]), model, tok, TEXT, 3, 0.0, 256)
    assert strength0.shift.kl == 0.0 and "+0<" in strength0.html and "class='up'" not in strength0.html and "class='down'" not in strength0.html

    rows = build_atlas(root / "bae-rich-steer", model, tok, world["bae"], rich=True)
    bae_atlas = Atlas.load(str(root / "bae-rich-steer"))
    usually_on_j = next(r["feature"] for r in rows if r["event"] == "off")
    usually_off_j = next(r["feature"] for r in rows if r["event"] == "on")
    usually_on = steering_view(bae_atlas, _with_column(world["bae"], usually_on_j, w_u[t]), model, tok, TEXT, usually_on_j, 10.0, 256)
    usually_off = steering_view(bae_atlas, _with_column(world["bae"], usually_off_j, w_u[t]), model, tok, TEXT, usually_off_j, 10.0, 256)
    assert usually_on.sign == -1 and usually_on.shift.after[t] < usually_on.shift.before[t]
    assert "usually-on code" in usually_on.html
    assert usually_off.sign == 1 and usually_off.shift.after[t] > usually_off.shift.before[t]
    with pytest.raises(ValueError, match="Feature 640 is not in the dictionary"):
        steering_view(bae_atlas, Dictionary(world["bae"]), model, tok, TEXT, 640, 1.0, 256)


def test_browser_steer_runs_the_dictionarys_language_model(browser):  # noqa: F811
    view = browser.steer("SAE", TEXT, 1, 4.0)
    assert view.shift.kl > 0 and "layers.0.resid_post" in view.html
    with pytest.raises(ValueError, match="Type some text"):
        browser.steer("SAE", "  ", 1, 4.0)
    with pytest.raises(ValueError, match="must be an integer"):
        browser.steer("SAE", TEXT, 1.5, 4.0)


# -- compare --------------------------------------------------------------------------------------
def test_a_copied_dictionary_is_its_own_nearest_neighbour(world):  # noqa: F811
    root = world["root"]
    shutil.copytree(root / "bae", root / "bae-copy", dirs_exist_ok=True)
    app = FeatureBrowser.from_paths([str(root / "bae-atlas-explained")] * 2, [str(root / "bae"), str(root / "bae-copy")], names=["A", "B"])
    nearest, notes = app.nearest("A", "B")
    m = world["bae"].num_features
    assert nearest.indices.shape == (m, 5) and notes == []
    assert nearest.indices[:, 0].tolist() == list(range(m))
    assert nearest.cosines[:, 0] == pytest.approx(1.0, abs=1e-5)
    assert app.nearest("A", "B")[0] is nearest  # computed once
    a = world["explained"][0]
    page, total = app.compare("A", "B", query=str(a))
    assert total == 1 and page.count("<tr data-feature=") == 1
    assert f"data-open='{a}' data-atlas='B'" in page and "1.000" in page
    assert html.escape(f"cats & dogs {EVIL}", quote=True) in page and EVIL not in page  # both explanations, escaped


def test_nearest_features_match_a_direct_computation(world, browser):  # noqa: F811
    nearest = nearest_features(Dictionary(world["bae"]), Dictionary(world["sae"]), k=5, block_rows=7)  # several blocks
    wa = torch.nn.functional.normalize(world["bae"].decoder.weight.detach().T, dim=1)
    wb = torch.nn.functional.normalize(world["sae"].decoder.weight.detach().T, dim=1)
    top = (wa @ wb.T).topk(5, dim=1)
    assert nearest.indices.tolist() == top.indices.tolist()
    assert nearest.cosines == pytest.approx(top.values.numpy(), abs=1e-5)
    page, total = browser.compare("BAE", "SAE", page_size=10)
    assert total == 64 and page.count("<tr data-feature=") == 10 and page.count("data-cosine=") == 50  # nearest chips (co-activation chips open SAE too)


def test_compare_needs_the_same_site(world, tmp_path):  # noqa: F811
    root = world["root"]
    tiny_dictionary(tmp_path / "bae-l1", root / "lm", kind="bae", layer=1)
    d1 = Dictionary.load(tmp_path / "bae-l1")
    atlas = Atlas.load(str(root / "bae-atlas"), name="L1")
    other = Atlas.load(str(root / "bae-atlas"), name="L0")
    app = FeatureBrowser([other, atlas], [Dictionary.load(root / "bae"), None])
    with pytest.raises(ValueError, match="Comparing needs the dictionary of atlas 'L1'"):
        app.compare("L0", "L1")
    from hf_bae.browser.compare import check_comparable

    with pytest.raises(ValueError, match="writes layers.0.resid_post but 'L1' writes layers.1.resid_post"):
        check_comparable(other, Dictionary.load(root / "bae"), atlas, d1)


def test_co_activation_is_the_jaccard_of_sample_tokens(world, browser):  # noqa: F811
    """A copied dictionary co-activates with itself (Jaccard 1); BAE vs SAE equals a brute-force Jaccard."""
    root = world["root"]
    shutil.copytree(root / "bae", root / "bae-copy2", dirs_exist_ok=True)
    app = FeatureBrowser.from_paths([str(root / "bae-atlas-explained")] * 2, [str(root / "bae"), str(root / "bae-copy2")], names=["A", "B"])
    coact, note = app.co_activation("A", "B")
    assert coact is not None and "Jaccard" in note and app.co_activation("A", "B")[0] is coact
    atlas = app.atlas("A")
    tokens = {int(r["feature"]): {(s["row"], s["row_position"]) for s in r["samples"]} for r in atlas.dataset}
    with_samples = [j for j, t in tokens.items() if t]
    assert with_samples
    for j in with_samples:
        r = atlas.index.row_of[j]
        ones = [i for i, v in zip(coact.indices[r], coact.jaccard[r]) if v == pytest.approx(1.0)]
        assert coact.jaccard[r, 0] == pytest.approx(1.0) and (j in ones or len(ones) == coact.indices.shape[1])
    page, _ = app.compare("A", "B", query=str(with_samples[0]))
    assert "class='coactive'" in page and "data-jaccard='1'" in page

    a, b = browser.atlas("BAE"), browser.atlas("SAE")
    coact, _ = browser.co_activation("BAE", "SAE")
    tb = {int(r["feature"]): {(s["row"], s["row_position"]) for s in r["samples"]} for r in b.dataset}
    for r in a.dataset:
        ta = {(s["row"], s["row_position"]) for s in r["samples"]}
        ref = sorted(((len(ta & t) / len(ta | t), -f) for f, t in tb.items() if ta & t), reverse=True)[:coact.indices.shape[1]]
        row = a.index.row_of[int(r["feature"])]
        got = [(float(v), -int(i)) for i, v in zip(coact.indices[row], coact.jaccard[row]) if i >= 0]
        assert [x[0] for x in got] == pytest.approx([x[0] for x in ref], abs=1e-6)
        assert [x[1] for x in got] == [x[1] for x in ref]
