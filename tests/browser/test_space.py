"""The feature browser: its views (directly and through the running app with gradio_client), bad
input, and a 10^4-feature atlas answered from the index without recomputation."""

import html
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from hf_bae.browser import Atlas, Dictionary, FeatureBrowser, check_compatible, highlight_context
from space_fixtures import build_atlas, serve, synthetic_atlas, tiny_dictionary, tiny_language_model

REPO = Path(__file__).resolve().parents[2]
EVIL = '<img src=x onerror="window.__pwned=1"><b id="injected">bold</b>'


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """A tiny LM, a BAE and a TopK SAE on it, and an atlas of each (built by running them)."""
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("space")
    model, tokenizer = tiny_language_model(root / "lm")
    bae = tiny_dictionary(root / "bae", root / "lm", kind="bae")
    sae = tiny_dictionary(root / "sae", root / "lm", kind="sae")
    verdicts = [dict(sample_index=5, split="positive", answer="yes"), dict(sample_index=6, split="positive", answer="no"),
                dict(sample_index=0, split="negative", answer="no")]
    # Explain three features that have 8 samples and non-activating ones (a random BAE has many
    # dead and always-on features): the first pass finds them.
    rows = build_atlas(root / "bae-atlas", model, tokenizer, bae)
    a, b, c = [r["feature"] for r in rows if len(r["samples"]) == 8 and r["non_activating"]][:3]
    explanations = {a: (f"cats & dogs {EVIL}", 0.5, verdicts), b: ("the word 'the'", 0.9, []), c: ("budget talk", 0.25, [])}
    bae_rows = build_atlas(root / "bae-atlas-explained", model, tokenizer, bae, explanations=explanations)
    sae_rows = build_atlas(root / "sae-atlas", model, tokenizer, sae, explanations={1: ("numbers", 1.0, [])})
    return dict(root=root, model=model, tokenizer=tokenizer, bae=bae, sae=sae, bae_rows=bae_rows, sae_rows=sae_rows, explained=(a, b, c))


@pytest.fixture(scope="session")
def browser(world):
    r = world["root"]
    return FeatureBrowser.from_paths([str(r / "bae-atlas-explained"), str(r / "sae-atlas")], [str(r / "bae"), str(r / "sae")])


@pytest.fixture(scope="module")
def big_atlas(tmp_path_factory):
    path = tmp_path_factory.mktemp("big") / "atlas"
    synthetic_atlas(path, num_features=10_000)
    return path


# -- rendering ------------------------------------------------------------------------------------
def test_highlight_marks_the_token_and_escapes_everything():
    context = "x <b>y</b> & z"
    out = highlight_context(context, 2, 5)  # "<b>"
    assert out == 'x <mark class="fire">&lt;b&gt;</mark>y&lt;/b&gt; &amp; z'
    assert highlight_context("abc", 1, 1, token="<s>") == 'a<mark class="fire">&lt;s&gt;</mark>bc'
    assert "<mark" not in highlight_context("abc", 2, 9)  # offsets outside the context: no mark, no crash


# -- overview / table / feature page --------------------------------------------------------------
def test_overview_numbers_match_the_atlas(browser, world):
    _, rows, freq_png, score_png = browser.overview()
    assert [r["atlas"] for r in rows] == ["BAE", "SAE"]
    bae = rows[0]
    ref = world["bae_rows"]
    assert bae["features"] == 64 and bae["dead"] == sum(r["is_dead"] for r in ref) and bae["dense"] == sum(r["is_dense"] for r in ref)
    assert bae["scored"] == 3 and bae["mean ComSem score"] == pytest.approx((0.5 + 0.9 + 0.25) / 3)
    p = torch.tensor([r["frequency"] for r in ref], dtype=torch.float64)
    h = -(p * p.log2() + (1 - p) * (1 - p).log2()).nan_to_num(0.0).sum()
    assert bae["code-set entropy (bits)"] == pytest.approx(float(h))
    assert freq_png[:8] == b"\x89PNG\r\n\x1a\n" and score_png[:8] == b"\x89PNG\r\n\x1a\n"


def test_table_search_and_sort(browser, world):
    a, b, c = world["explained"]
    rows, total = browser.table("BAE", query="CATS", sort_by="feature")
    assert total == 1 and rows[0][0] == a
    rows, total = browser.table("BAE", query="7")
    assert total == 1 and rows[0][0] == 7
    rows, total = browser.table("BAE", sort_by="comsem_score", descending=True, page_size=4)
    assert total == 64 and [r[0] for r in rows[:3]] == [b, a, c] and rows[3][3] is None  # unscored last
    rows, _ = browser.table("BAE", sort_by="explanation", page_size=4)
    assert [r[0] for r in rows[:3]] == [c, a, b] and rows[3][5] == ""
    rows, _ = browser.table("BAE", sort_by="frequency", descending=True, page_size=64)
    assert [r[1] for r in rows] == sorted((r[1] for r in rows), reverse=True)
    alive, n_alive = browser.table("BAE", hide_dead=True, page_size=64)
    assert n_alive == 64 - browser.summary("BAE")["dead"] and all(r[2] != "dead" for r in alive)


def test_feature_page(browser, world):
    a = world["explained"][0]
    page = browser.feature("BAE", a)
    assert f"Feature {a}" in page.header_html and "0.500" in page.header_html and "1 of 2 held-out samples" in page.header_html
    assert html.escape(f"cats & dogs {EVIL}", quote=True) in page.header_html and EVIL not in page.header_html
    # The top contexts: strongest first (equal BAE scores keep the atlas's order), one per document,
    # each marking its sample's token at its character offsets (issue 16: sorted, one per document).
    record = world["bae_rows"][a]
    top = page.samples_html.split("<ol class='samples top'>")[1].split("</ol>")[0]
    marks = re.findall(r'<mark class="fire"[^>]*>(.*?)</mark>', top)
    first_per_row = list({s["row"]: s for s in reversed(record["samples"])}.values())[::-1]
    first_per_row.sort(key=lambda s: -s["score"])
    assert marks == [html.escape(s["token"], quote=True).replace(" ", "·") if not s["token"].strip() else html.escape(s["token"], quote=True)
                     for s in first_per_row]
    assert [int(r) for r in re.findall(r"data-row='(\d+)'", top)] == [s["row"] for s in first_per_row]
    assert page.samples_html.count("judge: yes") == 1 and page.samples_html.count("judge: no") == 1
    # This atlas predates per-token values, events and logit effects: the page says so and invents none.
    assert "stores no per-token values" in page.samples_html and "inferred" in page.header_html
    assert "Logit effects" in page.header_html and "logit-list" not in page.header_html
    assert ["negative", 0, record["non_activating"][0]["token"], "no"] in page.verdicts
    # Neighbours: the largest decoder cosines, checked against a direct computation.
    w = world["bae"].decoder.weight.detach().T
    cos = torch.nn.functional.cosine_similarity(w[a][None], w, dim=1)
    cos[a] = -2
    assert [n[0] for n in page.neighbours] == cos.topk(10).indices.tolist()
    assert page.neighbours[0][1] == pytest.approx(cos.max().item(), abs=1e-4)


def test_unknown_feature_id_is_a_clear_error(browser):
    with pytest.raises(ValueError, match=r"Feature 640 is not in the atlas 'BAE': it holds 64 features with ids 0–63"):
        browser.feature("BAE", 640)
    with pytest.raises(ValueError, match="must be an integer"):
        browser.feature("BAE", "seven")
    with pytest.raises(ValueError, match="No atlas named 'TopK'"):
        browser.feature("TopK", 1)


# -- try it ---------------------------------------------------------------------------------------
def test_try_it_reports_what_the_dictionary_fires(browser, world):
    text = "The cat sat on the mat."
    result = browser.try_it("SAE", text)
    ids = world["tokenizer"](text)["input_ids"]
    with torch.inference_mode():
        hidden = world["model"](input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[1][0]
        latents = world["sae"].encode(hidden)[1:]  # without BOS
    assert [r[1] for r in result.per_token] == [world["tokenizer"].decode([i]) for i in ids[1:]]
    assert [r[2] for r in result.per_token] == (latents != 0).sum(1).tolist()  # TopK: k = 4 per token
    for t, row in enumerate(result.per_token):
        assert [int(j) for j in row[3].split(", ")] == latents[t].topk(3).indices.tolist()
    counts = (latents != 0).sum(0)
    assert {r[0]: r[1] for r in result.per_feature} == {j: int(counts[j]) for j in counts.nonzero().flatten().tolist()}
    assert result.notice == ""
    explanation = {r["feature"]: r["explanation"] or "" for r in world["sae_rows"]}
    assert all(row[3] == explanation[row[0]] for row in result.per_feature)
    # Each token shows its strongest features as clickable chips.
    assert re.findall(r"data-feature='(\d+)'", result.tokens_html) == [j for row in result.per_token for j in row[3].split(", ")]


def test_try_it_escapes_html_and_truncates_long_input(browser, world):
    result = browser.try_it("BAE", f"Hello {EVIL} world")
    assert "<img" not in result.tokens_html and "<b id" not in result.tokens_html and "&lt;" in result.tokens_html
    short = FeatureBrowser(list(browser.atlases.values()), list(browser.dictionaries.values()), max_tokens=16)
    long_text = "The cat sat on the mat. " * 500
    result = short.try_it("BAE", long_text)
    assert len(result.per_token) == 16
    assert "truncated" in result.notice and "only the first 16 tokens" in result.notice
    with pytest.raises(ValueError, match="Type some text"):
        browser.try_it("BAE", "   ")


def test_an_atlas_without_its_dictionary_is_browsable(world, tmp_path):
    """E.g. the random baseline's atlas: table and pages work; neighbours and Try it say what they need."""
    atlas = Atlas.load(world["root"] / "sae-atlas", name="random")
    browser = FeatureBrowser([atlas])
    page = browser.feature("random", 1)
    assert page.neighbours == [] and "Neighbours need the dictionary" in page.header_html
    with pytest.raises(ValueError, match="Try it needs the dictionary of atlas 'random': pass `--dictionary DIR`"):
        browser.try_it("random", "The cat")


# -- mismatches -----------------------------------------------------------------------------------
def test_model_atlas_mismatch_is_refused(world, tmp_path):
    r = world["root"]
    with pytest.raises(ValueError, match="built from a SAE dictionary, this one is a BAE"):
        FeatureBrowser.from_paths([str(r / "sae-atlas")], [str(r / "bae")])
    wide = Dictionary(tiny_dictionary(tmp_path / "wide", r / "lm", kind="bae", layer=1))
    wide.model.config.latent_size = 128
    with pytest.raises(ValueError, match=r"the atlas has 64 features, the dictionary 128") as err:
        check_compatible(Atlas.load(r / "bae-atlas-explained"), wide)
    assert "layer=0" in str(err.value) and "layer=1" in str(err.value) and "hf-bae atlas" in str(err.value)
    from hf_bae.cli import main

    code = main(["space", "--atlas", str(r / "sae-atlas"), "--model", str(r / "bae")])
    assert code == 2


def test_an_atlas_of_another_dictionary_of_the_same_shape_is_refused(world, tmp_path):
    from hf_bae.formats import read_atlas_info, save_atlas_info

    shutil.copytree(world["root"] / "bae-atlas-explained", tmp_path / "atlas")
    info = read_atlas_info(tmp_path / "atlas")
    info.dictionary_fingerprint = world["bae"].fingerprint()
    save_atlas_info(info, tmp_path / "atlas")
    FeatureBrowser.from_paths([str(tmp_path / "atlas")], [str(world["root"] / "bae")])  # the right one loads
    retrained = Dictionary(tiny_dictionary(tmp_path / "other", world["root"] / "lm"))
    with torch.no_grad():
        retrained.model.decoder.weight.mul_(1.01)
    with pytest.raises(ValueError, match="another dictionary of the same shape"):
        check_compatible(Atlas.load(tmp_path / "atlas"), retrained)


def test_cli_names_the_dictionary_and_the_language_model_as_every_command_does():
    """--dictionary / --base_model (and HF_BAE_DICTIONARY / HF_BAE_BASE_MODEL), with the old names
    --model / --lm (HF_BAE_MODEL / HF_BAE_LM) still accepted."""
    from hf_bae.arguments import parse
    from hf_bae.space import SpaceArguments, apply_environment

    def parsed(argv, environ=None):
        (args,) = parse([SpaceArguments], argv, prog="hf-bae space", description="")
        return apply_environment(args, environ or {})

    new = parsed(["--atlas", "a1", "a2", "--dictionary", "d1", "d2", "--base_model", "lm"])
    old = parsed(["--atlas", "a1", "a2", "--model", "d1", "d2", "--lm", "lm"])
    assert (new.dictionary, new.base_model) == (old.dictionary, old.base_model) == (["d1", "d2"], "lm")
    for environ in ({"HF_BAE_DICTIONARY": "d1,d2", "HF_BAE_BASE_MODEL": "lm"}, {"HF_BAE_MODEL": "d1, d2", "HF_BAE_LM": "lm"}):
        args = parsed(["--atlas", "a1", "a2"], {**environ, "HF_BAE_MAX_TOKENS": "32"})
        assert (args.dictionary, args.base_model, args.max_tokens) == (["d1", "d2"], "lm", 32)
    # The new name wins over the old one, and a flag over either variable.
    args = parsed(["--atlas", "a1", "--base_model", "flag"], {"HF_BAE_DICTIONARY": "new", "HF_BAE_MODEL": "old", "HF_BAE_LM": "env"})
    assert (args.dictionary, args.base_model) == (["new"], "flag")
    with pytest.raises(ValueError, match="Got 2 --dictionary for 1 --atlas"):
        parsed(["--atlas", "a1", "--model", "d1", "d2"])


def test_cli_reports_bad_paths(tmp_path, capsys):
    from hf_bae.cli import main

    assert main(["space", "--atlas", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["space", "--atlas", str(tmp_path / "empty")]) == 2
    assert "not a saved dataset" in capsys.readouterr().err


# -- a large atlas ------------------------------------------------------------------------------
class CountingDataset:
    """Wraps a datasets.Dataset and counts row reads (what a recomputation per click would do)."""

    def __init__(self, dataset):
        self._dataset, self.reads = dataset, 0

    def __getitem__(self, key):
        self.reads += 1
        return self._dataset[key]

    def __getattr__(self, name):
        return getattr(self._dataset, name)

    def __len__(self):
        return len(self._dataset)


def test_ten_thousand_features_are_served_from_the_index(big_atlas):
    t0 = time.perf_counter()
    atlas = Atlas.load(big_atlas)
    browser = FeatureBrowser([atlas])
    _ = atlas.index
    t_load = time.perf_counter() - t0
    counting = CountingDataset(atlas.dataset)
    atlas.dataset = counting

    timings = {}
    t0 = time.perf_counter()
    rows, total = browser.table(None, query="budget", sort_by="comsem_score", descending=True)
    timings["table query"] = time.perf_counter() - t0
    assert 850 < total < 950  # features 4, 14, 24, ... mention 'budget'; 90% of them are explained
    assert all("budget" in r[5] for r in rows) and counting.reads == 0
    t0 = time.perf_counter()
    page = browser.feature(None, 8)
    timings["feature page (cold)"] = time.perf_counter() - t0
    assert counting.reads == 1 and "&lt;b&gt;bold&lt;/b&gt;" in page.samples_html and "<b>bold" not in page.samples_html
    t0 = time.perf_counter()
    browser.feature(None, 8)
    timings["feature page (cached)"] = time.perf_counter() - t0
    assert counting.reads == 1
    print(f"\n10^4 features: load + index {t_load * 1e3:.0f} ms; " + "; ".join(f"{k} {v * 1e3:.1f} ms" for k, v in timings.items()))


# -- the running app, driven with gradio_client ---------------------------------------------------
def test_app_over_gradio_client(browser, world):
    a = world["explained"][0]
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    demo, url = serve(browser)
    try:
        client = Client(url, verbose=False)
        summary_html, numbers, freq_plot, score_plot = client.predict(api_name="/overview")
        assert "BAE" in summary_html and "SAE" in summary_html and ">64</b><span>features" in summary_html
        assert [row[0] for row in numbers["data"]] == ["BAE", "SAE"]
        assert Path(freq_plot).read_bytes()[:4] == b"\x89PNG" and Path(score_plot).stat().st_size > 1000

        table, info = client.predict("BAE", "cats", "feature", False, False, 1, api_name="/table")
        assert info.startswith("1 matching features") and table["data"][0][0] == a

        header, samples, verdicts, neighbours, _ = client.predict("BAE", a, api_name="/feature")
        assert f"Feature {a}" in header and "&lt;img" in header and "<img" not in header
        assert "<mark" in samples and len(neighbours["data"]) == 10

        notice, tokens_html, per_feature, per_token = client.predict("SAE", "The cat sat.", api_name="/try_it")
        assert notice == "" and "cat" in tokens_html and len(per_token["data"]) == 4
        assert per_feature["headers"][0] == "feature" and len(per_feature["data"]) >= 4

        with pytest.raises(AppError, match="Feature 99999 is not in the atlas 'BAE'"):
            client.predict("BAE", 99999, api_name="/feature")
    finally:
        demo.close()


# -- the Space folder -----------------------------------------------------------------------------
def test_space_folder_is_a_gradio_space():
    import gradio
    from huggingface_hub import SpaceCard

    card = SpaceCard.load(REPO / "spaces_app" / "README.md")
    assert card.data.sdk == "gradio" and card.data.app_file == "app.py"
    assert card.data.sdk_version == gradio.__version__  # the version the tests ran with
    requirements = [line for line in (REPO / "spaces_app" / "requirements.txt").read_text().splitlines() if line and not line.startswith("#")]
    assert any(line.startswith("hf_bae") for line in requirements)
    assert not any(line.startswith("gradio") for line in requirements)  # sdk_version pins gradio


def test_space_app_starts_from_environment_variables(world):
    """`python spaces_app/app.py` configured as a Space is: by HF_BAE_* variables."""
    from space_fixtures import free_port

    port = free_port()
    r = world["root"]
    env = dict(os.environ, HF_BAE_ATLAS=f"{r / 'bae-atlas'},{r / 'sae-atlas'}", HF_BAE_MODEL=f"{r / 'bae'},{r / 'sae'}",
               GRADIO_SERVER_PORT=str(port), GRADIO_ANALYTICS_ENABLED="False", PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, str(REPO / "spaces_app" / "app.py")], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                config = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=1).read())
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode()
                time.sleep(0.3)
        else:
            raise AssertionError("the Space did not start within 60 s")
        dropdowns = [c for c in config["components"] if c.get("props", {}).get("elem_id") == "atlas-choice"]
        assert [choice[0] for choice in dropdowns[0]["props"]["choices"]] == ["BAE", "SAE"]
    finally:
        proc.terminate()
        proc.wait(timeout=20)


# -- from the Hub ---------------------------------------------------------------------------------
HUB_CLIENT = """
import json, sys
import datasets
from huggingface_hub import HfApi
from transformers import AutoModel
import hf_bae
from hf_bae.browser import FeatureBrowser
from hf_bae.formats import ATLAS_INFO_FILE

bae_dir, atlas_dir, out = sys.argv[1:4]
AutoModel.from_pretrained(bae_dir).push_to_hub("tester/dictionaries", subfolder="layers.0.resid_post")
datasets.load_from_disk(atlas_dir).push_to_hub("tester/bae-atlas")
HfApi().upload_file(path_or_fileobj=f"{atlas_dir}/{ATLAS_INFO_FILE}", path_in_repo=ATLAS_INFO_FILE, repo_id="tester/bae-atlas", repo_type="dataset")

browser = FeatureBrowser.from_paths(["tester/bae-atlas"], ["tester/dictionaries/layers.0.resid_post"])
page = browser.feature(None, int(sys.argv[4]))
rows, total = browser.table(None, query="cats")
json.dump({"names": browser.names, "summary": browser.summary(browser.names[0]), "header": page.header_html,
           "neighbours": page.neighbours, "rows": rows}, open(out, "w"))
"""


def test_atlas_and_dictionary_from_the_hub(world, browser, tmp_path):
    """A Hub dataset atlas (+ atlas.json) and a dictionary in a subfolder of a model repo, through the
    loopback fake Hub, browse the same as the local folders."""
    from fake_hub import FakeHub

    a = world["explained"][0]
    r = world["root"]
    with FakeHub() as hub:
        env = hub.env(tmp_path / "home")
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "tests")])
        out = subprocess.run([sys.executable, "-c", HUB_CLIENT, str(r / "bae"), str(r / "bae-atlas-explained"), str(tmp_path / "out.json"), str(a)],
                             env=env, capture_output=True, text=True, timeout=240)
        assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    got = json.loads((tmp_path / "out.json").read_text())
    local = browser.feature("BAE", a)
    assert got["names"] == ["BAE"] and got["summary"]["features"] == 64
    assert got["header"] == local.header_html
    assert got["neighbours"] == [list(n) for n in local.neighbours]
    assert got["rows"] == [list(x) for x in browser.table("BAE", query="cats")[0]]


def test_per_token_values_shade_a_code_by_its_deviation_and_a_latent_by_its_value():
    """`token_values` hold raw values (the code, the latent); a deviation-scored code is shaded by |value −
    mean|, the mean read off the sample (score = |activation − mean|), so the sample's own token gets its score."""
    from hf_bae.browser.feature_page import token_spans

    tv = [dict(start=0, end=3, value=1.0), dict(start=4, end=7, value=0.0)]
    on = dict(activation=1.0, score=0.75, token_values=tv)  # a usually-off code (mean 0.25) that fires
    assert token_spans(on, [], deviation=True, event="on") == [(0, 3, 0.75), (4, 7, 0.25)]
    off = dict(activation=0.0, score=0.75, token_values=tv)  # a usually-on code (mean 0.75) that switches off
    assert token_spans(off, [], deviation=True, event="off") == [(0, 3, 0.25), (4, 7, 0.75)]
    latent = dict(activation=2.5, score=2.5, token_values=[dict(start=0, end=3, value=2.5), dict(start=4, end=7, value=0.5)])
    assert token_spans(latent, [], deviation=False) == [(0, 3, 2.5), (4, 7, 0.5)]
    # Without per-token values, only the feature's samples from the same context are known.
    assert token_spans(dict(start=0, end=3, activation=1.0, score=0.75), [dict(start=0, end=3, activation=1.0, score=0.75)],
                       deviation=True) == [(0, 3, 0.75)]
