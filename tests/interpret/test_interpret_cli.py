"""`hf-bae atlas` and `hf-bae interpret` end to end on a tiny model, with the loopback OpenAI-compatible
server answering (normal answers, 429 then success, a 500, a timeout, a malformed body, an unparseable
answer); a second run makes no request; the API key is written nowhere."""

import json
import os

import pytest
import torch

from fake_openai import FakeOpenAI
from interp_fixtures import category_llm, corpus, word_lm

from hf_bae import BAEConfig, BinaryAutoencoder, SAEConfig, SparseAutoencoder
from hf_bae.cli import main
from hf_bae.interpret.atlas_format import load_atlas

KEY = "sk-e2e-SECRET-0123456789"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("interp")
    model, tok = word_lm()
    model.save_pretrained(root / "lm")
    tok.save_pretrained(root / "lm")
    (root / "corpus.txt").write_text("\n".join(corpus(30)) + "\n")
    torch.manual_seed(3)
    bae = BinaryAutoencoder(BAEConfig(hidden_size=16, expansion_factor=2, layer=1, base_model=str(root / "lm")))
    topk = SparseAutoencoder(SAEConfig(hidden_size=16, expansion_factor=2, layer=1, activation="topk", k=4,
                                       base_model=str(root / "lm")))
    for d, name in ((bae, "bae"), (topk, "topk")):
        # The tiny random LM's residual stream is small: random encoder biases would decide every code.
        d.encoder.bias.data.zero_()
        d.save_pretrained(root / name)
    return root


def common(root):
    return ["--dataset", "text", "--data_files", str(root / "corpus.txt"), "--num_texts", "30", "--context_length", "32",
            "--batch_size", "4", "--top_k", "4", "--samples_per_feature", "13", "--num_non_activating", "2"]


def test_interpret_end_to_end_with_failures_cache_and_no_key_leak(setup, tmp_path, monkeypatch, capsys, caplog):
    root = setup
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    out, cache = tmp_path / "out", tmp_path / "cache.sqlite"
    argv = ["interpret", "--dictionary", str(root / "bae"), str(root / "topk"), "random", *common(root),
            "--base_url", "", "--llm", "fake-model", "--cache", str(cache), "--output_dir", str(out),
            "--timeout", "3", "--backoff_base", "0.01", "--max_retries", "3", "--max_features", "6", "--concurrency", "4"]
    sequence = {0: "429", 3: "500", 6: "timeout", 9: "malformed", 12: "no_choices"}
    with FakeOpenAI(responder=category_llm, sequence=sequence, timeout_delay=4.0) as server:
        argv[argv.index("--base_url") + 1] = server.base_url
        assert main(argv) == 0
        first = server.count()
        ledger = json.loads((out / "ledger.json").read_text())
        retried = {}
        for name in ledger:
            for kind, n in ledger[name]["retried"].items():
                retried[kind] = retried.get(kind, 0) + n
        assert retried == {"rate_limited": 1, "server_error": 1, "timeout": 1, "malformed": 2}
        assert sum(l["succeeded"] for l in ledger.values()) == sum(l["calls"] for l in ledger.values()) > 0
        assert first == sum(l["http_requests"] for l in ledger.values())

        # Second run: atlases reused, every answer from the cache.
        assert main(argv) == 0
        assert server.count() == first
        ledger2 = json.loads((out / "ledger.json").read_text())
        assert sum(l["calls"] for l in ledger2.values()) == 0 and sum(l["cache_hits"] for l in ledger2.values()) > 0

    results = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in results] == ["bae", "topk", "random"]
    for r in results:
        assert r["features_interpreted"] == 6 and r["features_scored"] >= 1 and 0 <= r["comsem_score"] <= 1
        assert r["judge"]["model"] == "fake-model"
    assert results[0]["random_baseline_comsem_score"] == results[2]["comsem_score"]
    assert sum(r["unparseable"] for r in results) > 0  # "horse" answers
    table = (out / "results.md").read_text()
    assert "| bae | BAE |" in table and "| random | random |" in table and "ComSem score" in table
    assert (out / "comsem_scores.png").stat().st_size > 1000
    # comsem.json beside the atlases that produced it (`hf-bae push --comsem` gives it to the model card);
    # nothing is written back into the trained dictionaries' folders
    card = json.loads((out / "bae" / "comsem.json").read_text())
    assert card["comsem_score"] == results[0]["comsem_score"] and "interpretable_fraction" in card
    assert json.loads((out / "bae" / "interpreted" / "comsem.json").read_text()) == card
    assert not (root / "bae" / "comsem.json").exists()
    interpreted, info = load_atlas(out / "bae" / "interpreted")
    scored = [r for r in interpreted if r["comsem_status"] == "scored"]
    assert scored and all(r["explanation"] and r["verdicts"] for r in scored)
    assert info.dictionary_type == "BAE" and info.site == "layers.1.resid_post" and info.top_k == 4

    # The key is nowhere: not in any file written, not in the output, not in the logs.
    for folder in (out, root, tmp_path):
        for dirpath, _, files in os.walk(folder):
            for f in files:
                assert KEY.encode() not in open(os.path.join(dirpath, f), "rb").read(), os.path.join(dirpath, f)
    captured = capsys.readouterr()
    assert KEY not in captured.out + captured.err + caplog.text
    args = json.loads((out / "interpret_args.json").read_text())
    assert args["llm"]["api_key"] is None


def test_no_api_key_fails_before_any_work(setup, tmp_path, monkeypatch, capsys):
    for name in ("OPENAI_API_KEY", "OAI_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    code = main(["interpret", "--dictionary", str(setup / "bae"), *common(setup), "--output_dir", str(tmp_path / "o")])
    assert code == 2 and "No API key" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_atlas_command_dry_run_and_mismatched_atlas(setup, tmp_path, monkeypatch, capsys):
    root = setup
    assert main(["atlas", "--dictionary", str(root / "bae"), *common(root), "--output", str(tmp_path / "a")]) == 0
    ds, info = load_atlas(tmp_path / "a")
    assert len(ds) == 32 and info.num_texts == 30 and info.dictionary_path == str(root / "bae")
    # A dry run counts calls without a key and without sending anything.
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with FakeOpenAI() as server:
        code = main(["interpret", "--atlas", str(tmp_path / "a"), "--dry_run", "--base_url", server.base_url,
                     "--cache", str(tmp_path / "c.sqlite"), "--output_dir", str(tmp_path / "d")])
        assert code == 0 and server.count() == 0
    assert "dry run:" in capsys.readouterr().out
    # The atlas of one dictionary with another dictionary: refused.
    code = main(["interpret", "--atlas", str(tmp_path / "a"), "--dictionary", str(root / "topk"), "--dry_run",
                 "--output_dir", str(tmp_path / "e")])
    assert code == 2 and "built from another dictionary" in capsys.readouterr().err


def test_the_recorded_base_model_revision_is_the_one_loaded():
    # a dictionary trained on the embedded model records its Hub id with a revision that resolves back to it
    from hf_bae.interpret.pipeline import CorpusArguments, LoadedDictionary, resolve_base_model

    config = BAEConfig(hidden_size=8, layer=0, base_model="HuggingFaceTB/SmolLM2-135M-Instruct", base_model_revision="hf-bae-embedded")
    entries = [LoadedDictionary("bae", BinaryAutoencoder(config))]
    assert resolve_base_model(CorpusArguments(), entries) == ("HuggingFaceTB/SmolLM2-135M-Instruct", "hf-bae-embedded")
    assert resolve_base_model(CorpusArguments(base_model="other", base_model_revision="v1"), entries) == ("other", "v1")


def test_interpret_through_the_batch_api_costs_half_and_a_rerun_asks_nothing(setup, tmp_path, monkeypatch, capsys):
    root = setup
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    out, cache = tmp_path / "out", tmp_path / "cache.sqlite"
    with FakeOpenAI(responder=category_llm) as server:
        argv = ["interpret", "--dictionary", str(root / "topk"), *common(root), "--backend", "openai-batch",
                "--base_url", server.base_url, "--llm", "gpt-4.1-mini", "--cache", str(cache), "--output_dir", str(out),
                "--batch_poll_interval", "0.01", "--max_features", "4"]
        assert main(argv) == 0
        assert len(server.batches) == 2  # one for the explanations, one for the judge's verdicts
        assert all(r.get("batch") for r in server.requests)  # nothing went through the synchronous route
        ledger = json.loads((out / "ledger.json").read_text())["topk"]
        assert ledger["price_usd_per_million"] == {"input": 0.20, "output": 0.80} and ledger["succeeded"] > 0
        assert "OpenAI batch batch_1: completed" in capsys.readouterr().err
        assert main(argv) == 0 and len(server.batches) == 2  # every answer from the cache
    result = json.loads((out / "results.json").read_text())[0]
    assert result["features_scored"] >= 1 and 0 <= result["comsem_score"] <= 1
    assert not (tmp_path / "cache.batches.json").exists() or not json.loads((tmp_path / "cache.batches.json").read_text())
