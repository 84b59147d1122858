"""Bad inputs of `hf-bae push` and `hf-bae export-saelens`, as a table (exit code of the policy, one
line naming the input, no traceback), and the rule that a card never shows a ComSem result that was
not measured (`features_scored: 0`, or a report without the field)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from huggingface_hub import metadata_load
from trained_runs import make_run

from error_cases import EXIT_USAGE, Case, assert_clear_error
from hf_bae.hub import push_run
from hf_bae.model_card import CardEntry, comsem_unmeasured, render_card

ROOT: dict[str, Path] = {}

UNMEASURED = {"comsem_score": None, "interpretable_fraction": 0.0, "interpretable_count": 0, "features_scored": 0,
              "name": "topk", "dictionary_type": "SAE"}


@pytest.fixture(scope="module", autouse=True)
def root(tmp_path_factory):
    path = tmp_path_factory.mktemp("bad-sharing")
    make_run(path / "run")
    files = {
        "unmeasured.json": json.dumps(UNMEASURED),
        "no-fields.json": json.dumps({"comsem_score": 0.3, "name": "topk"}),
        "not-json.json": "{ comsem",
        "not-comsem.json": json.dumps({"fvu": 0.1}),
    }
    for name, text in files.items():
        (path / name).write_text(text)
    (path / "empty-dir").mkdir()
    (path / "interp-unmeasured" / "topk").mkdir(parents=True)
    (path / "interp-unmeasured" / "topk" / "comsem.json").write_text(json.dumps(UNMEASURED))
    ROOT["path"] = path
    return path


def p(name: str) -> str:
    return str(ROOT["path"] / name)


def push(*extra: str, run: str = "run") -> list[str]:
    """argv of a dry-run push (nothing is uploaded) into a folder that does not exist yet."""
    out = ROOT["path"] / "staged"
    n = sum(1 for _ in ROOT["path"].glob("staged*"))
    return ["push", p(run), "tester/dicts", "--output_dir", f"{out}{n}", *extra]


CASES = [
    Case("--comsem with features_scored 0", lambda: push("--comsem", p("unmeasured.json"), "--only", "topk"), EXIT_USAGE,
         ("unmeasured.json", "no measured ComSem result")),
    Case("--comsem without features_scored", lambda: push("--comsem", p("no-fields.json"), "--only", "topk"), EXIT_USAGE,
         ("no-fields.json", "features_scored")),
    Case("--comsem not JSON", lambda: push("--comsem", p("not-json.json")), EXIT_USAGE, ("not-json.json", "not valid JSON")),
    Case("--comsem not a ComSem result", lambda: push("--comsem", p("not-comsem.json")), EXIT_USAGE, ("not-comsem.json",)),
    Case("--comsem missing", lambda: push("--comsem", p("nowhere")), EXIT_USAGE, ("nowhere",)),
    Case("--comsem folder without comsem.json", lambda: push("--comsem", p("empty-dir")), EXIT_USAGE, ("empty-dir",)),
    Case("--comsem folder of unmeasured results", lambda: push("--comsem", p("interp-unmeasured")), EXIT_USAGE,
         ("interp-unmeasured", "measured")),
    Case("push a missing run", lambda: push(run="no-run"), EXIT_USAGE, ("no-run",)),
    Case("push a bad repo id", lambda: ["push", p("run"), "not a repo", "--output_dir", p("staged-x")], EXIT_USAGE, ("not a repo",)),
    Case("push --only unknown", lambda: push("--only", "nope"), EXIT_USAGE, ("nope",)),
    Case("export-saelens missing source", lambda: ["export-saelens", p("no-run"), p("sl")], EXIT_USAGE, ("no-run",)),
    Case("export-saelens a BAE only", lambda: ["export-saelens", p("run/bae"), p("sl-bae")], EXIT_USAGE, ("nothing to export",)),
    Case("export-saelens --only unknown", lambda: ["export-saelens", p("run"), p("sl2"), "--only", "nope"], EXIT_USAGE, ("nope",)),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_bad_input_is_one_clear_line(case):
    assert_clear_error(case)


@pytest.mark.parametrize("report, problem", [
    (UNMEASURED, "no feature was scored"),
    ({"comsem_score": 0.3}, "no features_scored"),
    ({"comsem_score": None, "features_scored": 3}, "not a number"),
    ({"comsem_score": 0.3, "features_scored": 3}, None),
])
def test_what_counts_as_measured(report, problem):
    got = comsem_unmeasured(report)
    assert (got is None) if problem is None else (problem in got)


def test_an_unmeasured_comsem_in_a_dictionary_folder_is_skipped_with_a_warning(tmp_path, caplog):
    # an older hf_bae wrote comsem.json into the dictionary folder, from a run where every LLM call failed
    run = tmp_path / "run"
    make_run(run)
    (run / "bae" / "comsem.json").write_text(json.dumps({**UNMEASURED, "name": "bae", "dictionary_type": "BAE"}))
    with caplog.at_level(logging.WARNING, logger="hf_bae"):
        push_run(run, "tester/dicts", output_dir=tmp_path / "out", only=["bae"])
    assert "Not showing the ComSem result" in caplog.text and "no feature was scored" in caplog.text
    readme = (tmp_path / "out" / "README.md").read_text()
    assert "comsem_score" not in json.dumps(metadata_load(tmp_path / "out" / "README.md"))
    assert "Interpretable" not in readme and "interpretable_fraction" not in readme
    assert not (tmp_path / "out" / "comsem.json").exists()


def test_the_card_never_shows_an_interpretable_fraction_without_a_score():
    from hf_bae import BAEConfig

    config = BAEConfig(hidden_size=8, layer=1, base_model="acme/lm").to_dict()
    card = str(render_card([CardEntry("", "layers.1.resid_post", config, {"fvu": 0.2, "comsem_score": None,
                                                                          "interpretable_fraction": 0.0})], "tester/x"))
    assert "0.0%" not in card and "interpretable_fraction" not in card and "FVU" in card
