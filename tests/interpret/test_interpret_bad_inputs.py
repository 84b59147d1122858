"""Bad inputs of `hf-bae interpret` / `hf-bae atlas`, as a table: each exits with the code of the policy
(`hf_bae.cli`: 2 bad input, 1 a failure at run time), prints one line that names the input, and no
traceback. Then the "nothing scored" case: a run in which every LLM call failed exits 1, writes no
result that looks measured, and leaves the dictionary's folder byte for byte as it was; a partly
scored run succeeds and says its coverage; nonsense answers never stay in the response cache."""

from __future__ import annotations

import hashlib
import json
import re
import socket
from pathlib import Path

import pytest
import torch

from error_cases import EXIT_FAILURE, EXIT_USAGE, Case, assert_clear_error, run_cli
from fake_openai import FakeOpenAI
from fake_openai import last_user_message
from interp_fixtures import category_llm, corpus, is_judge, word_lm

from hf_bae import BAEConfig, BinaryAutoencoder, SAEConfig, SparseAutoencoder
from hf_bae.interpret.client import LLMConfig
from hf_bae.interpret.comsem import ComSemConfig
from hf_bae.interpret.response_cache import ResponseCache

ROOT: dict[str, Path] = {}  # filled by the `root` fixture; the table's argv callables read it
SERVERS: dict[str, FakeOpenAI] = {}


@pytest.fixture(scope="module", autouse=True)
def root(tmp_path_factory, monkeypatch_module):
    path = tmp_path_factory.mktemp("bad-interp")
    model, tok = word_lm()
    model.save_pretrained(path / "lm")
    tok.save_pretrained(path / "lm")
    (path / "corpus.txt").write_text("\n".join(corpus(30)) + "\n")
    torch.manual_seed(3)
    bae = BinaryAutoencoder(BAEConfig(hidden_size=16, expansion_factor=2, layer=1, base_model=str(path / "lm")))
    topk = SparseAutoencoder(SAEConfig(hidden_size=16, expansion_factor=2, layer=1, activation="topk", k=4,
                                       base_model=str(path / "lm")))
    for d, name in ((bae, "bae"), (topk, "topk")):
        d.encoder.bias.data.zero_()  # else random encoder biases decide every code of the tiny LM
        d.save_pretrained(path / name)
    code, _, err = run_cli(["atlas", "--dictionary", str(path / "bae"), *corpus_args(path), "--output", str(path / "atlas")])
    assert code == 0, err
    (path / "not-json.json").write_text("{ not json")
    (path / "a-file").write_text("x")
    ROOT["path"] = path
    monkeypatch_module.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch_module.setenv("HF_BAE_CACHE", str(path / "hf_bae_cache"))
    servers = {
        "garbage": FakeOpenAI(responder=lambda body: "banana split"),
        "hanging": FakeOpenAI(rules=[("", ["timeout"] * 1000)], timeout_delay=1.5),
        "malformed": FakeOpenAI(rules=[("", ["malformed"] * 1000)]),
        "500": FakeOpenAI(rules=[("", ["500"] * 1000)]),
        "401": FakeOpenAI(rules=[("", ["401"] * 1000)]),
        "ok": FakeOpenAI(responder=category_llm),
    }
    for name, server in servers.items():
        server.start()
        SERVERS[name] = server
    yield path
    for server in servers.values():
        server.stop()


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def corpus_args(path: Path) -> list[str]:
    return ["--dataset", "text", "--data_files", str(path / "corpus.txt"), "--num_texts", "30", "--context_length", "32",
            "--batch_size", "4", "--top_k", "4", "--samples_per_feature", "13", "--num_non_activating", "2"]


def closed_port_url() -> str:
    """An http URL on a loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def interpret(*extra: str, server: str | None = None, atlas: bool = True) -> list[str]:
    """argv of an `hf-bae interpret` on the saved atlas, fast to fail: no retries, 4 features."""
    path = ROOT["path"]
    base_url = SERVERS[server].base_url if server else closed_port_url()
    argv = ["interpret", *(["--atlas", str(path / "atlas")] if atlas else []), "--base_url", base_url,
            "--llm", "fake-model", "--max_retries", "0", "--timeout", "0.5", "--max_features", "4",
            "--no_cache", "--output_dir", str(path / "out")]
    return argv + list(extra)


def with_cache(argv: list[str], cache: str) -> list[str]:
    return [a for a in argv if a != "--no_cache"] + ["--cache", cache]


def p(name: str) -> str:
    return str(ROOT["path"] / name)


CASES = [
    # every LLM call failed: nothing measured (exit 1), the line says of which kind and what to do
    Case("closed port", lambda: interpret(), EXIT_FAILURE, ("nothing was scored", "connection", "--base_url")),
    Case("judge answering nonsense", lambda: interpret(server="garbage"), EXIT_FAILURE, ("nothing was scored", "Yes or No")),
    Case("judge timing out", lambda: interpret(server="hanging"), EXIT_FAILURE, ("nothing was scored", "timeout", "--timeout")),
    Case("malformed bodies", lambda: interpret(server="malformed"), EXIT_FAILURE, ("nothing was scored", "malformed")),
    Case("server errors", lambda: interpret(server="500"), EXIT_FAILURE, ("nothing was scored", "server_error")),
    Case("--max_calls 0", lambda: interpret("--max_calls", "0", server="ok"), EXIT_FAILURE, ("nothing was scored", "--max_calls")),
    Case("too few samples everywhere", lambda: interpret("--explain_samples", "20", server="ok"), EXIT_FAILURE,
         ("nothing was scored", "too few samples")),
    # errors every call would repeat, or bad values: exit 2
    Case("refused API key", lambda: interpret(server="401"), EXIT_USAGE, ("API key",)),
    Case("--base_url not a URL", lambda: interpret("--base_url", "localhost:8000"), EXIT_USAGE, ("--base_url", "localhost:8000")),
    Case("--timeout 0", lambda: interpret("--timeout", "0"), EXIT_USAGE, ("--timeout",)),
    Case("--timeout nan", lambda: interpret("--timeout", "nan"), EXIT_USAGE, ("--timeout", "nan")),
    Case("--concurrency 0", lambda: interpret("--concurrency", "0"), EXIT_USAGE, ("--concurrency",)),
    Case("--max_retries -1", lambda: interpret("--max_retries", "-1"), EXIT_USAGE, ("--max_retries",)),
    Case("--max_features 0", lambda: interpret("--max_features", "0"), EXIT_USAGE, ("max_features",)),
    Case("--threshold 1.5", lambda: interpret("--threshold", "1.5"), EXIT_USAGE, ("threshold", "1.5")),
    Case("--threshold nan", lambda: interpret("--threshold", "nan"), EXIT_USAGE, ("threshold", "nan")),
    Case("--explain_samples 0", lambda: interpret("--explain_samples", "0"), EXIT_USAGE, ("explain_samples",)),
    Case("--num_texts 0", lambda: interpret("--num_texts", "0"), EXIT_USAGE, ("num_texts",)),
    Case("missing atlas folder", lambda: interpret("--atlas", p("no-atlas"), atlas=False), EXIT_USAGE, ("no-atlas",)),
    Case("atlas is not an atlas", lambda: interpret("--atlas", p("bae"), atlas=False), EXIT_USAGE, ("bae",)),
    Case("atlas of another dictionary", lambda: interpret("--dictionary", p("topk")), EXIT_USAGE, ("another dictionary",)),
    Case("two atlases, one dictionary", lambda: interpret("--atlas", p("atlas"), p("atlas"), "--dictionary", p("bae"), atlas=False),
         EXIT_USAGE, ("2 atlases", "1 dictionar")),
    Case("no dictionary", lambda: interpret(atlas=False), EXIT_USAGE, ("--dictionary",)),
    Case("missing dictionary", lambda: interpret("--dictionary", p("no-dict"), atlas=False), EXIT_USAGE, ("no-dict",)),
    Case("--type SAE for a BAE", lambda: interpret("--dictionary", p("bae"), "--type", "SAE"), EXIT_USAGE, ("--type SAE",)),
    Case("--config_path missing", lambda: interpret("--dictionary", "random", "--config_path", p("no.json"), atlas=False),
         EXIT_USAGE, ("no.json",)),
    Case("--config_path not JSON", lambda: interpret("--dictionary", "random", "--config_path", p("not-json.json"), atlas=False),
         EXIT_USAGE, ("not-json.json",)),
    Case("--cache under a file", lambda: with_cache(interpret(server="ok"), p("a-file/cache.sqlite")), EXIT_USAGE, ("a-file",)),
    Case("atlas --output is a file", lambda: ["atlas", "--dictionary", p("bae"), *corpus_args(ROOT["path"]), "--output", p("a-file")],
         EXIT_USAGE, ("a-file",)),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_bad_input_is_one_clear_line(case):
    assert_clear_error(case)


# -- library level --------------------------------------------------------------------------------
LIBRARY_CASES = [
    (lambda: LLMConfig(base_url="ftp://x"), "not an http"),
    (lambda: LLMConfig(timeout=float("inf")), "timeout"),
    (lambda: LLMConfig(price_input=-1.0), "price_input"),
    (lambda: LLMConfig(backoff_base=float("nan")), "backoff_base"),
    (lambda: ComSemConfig(max_features=0), "max_features"),
    (lambda: ComSemConfig(threshold=float("nan")), "threshold"),
]


@pytest.mark.parametrize("make, message", LIBRARY_CASES, ids=[m for _, m in LIBRARY_CASES])
def test_bad_library_values_are_value_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()


# -- nothing scored -----------------------------------------------------------------------------
def folder_hash(folder: Path) -> str:
    """SHA-256 over every file's relative path and bytes (and every folder's name) under `folder`."""
    digest = hashlib.sha256()
    for item in sorted(folder.rglob("*")):
        digest.update(str(item.relative_to(folder)).encode())
        if item.is_file():
            digest.update(item.read_bytes())
    return digest.hexdigest()


def test_nothing_scored_fails_and_writes_nothing_measured(tmp_path):
    path = ROOT["path"]
    before = folder_hash(path / "bae")
    out = tmp_path / "out"
    argv = ["interpret", "--dictionary", str(path / "bae"), "random", *corpus_args(path), "--base_url", closed_port_url(),
            "--llm", "fake-model", "--max_retries", "0", "--max_features", "4", "--cache", str(tmp_path / "c.sqlite"),
            "--output_dir", str(out)]
    code, stdout, err = run_cli(argv)
    assert code == EXIT_FAILURE and "Traceback" not in err
    line = [ln for ln in err.splitlines() if ln.startswith("hf-bae")]
    assert len(line) == 1 and "nothing was scored for bae, random (0 of 8 features)" in line[0]
    # (the random baseline's few features may share prompts: identical requests are sent once)
    failed = re.search(r"(\d+) of (\d+) LLM requests .* failed \(connection (\d+)\)", line[0])
    assert failed and failed[1] == failed[2] == failed[3] and "--base_url" in line[0] and "ledger.json" in line[0]
    assert folder_hash(path / "bae") == before  # the dictionary's folder is unchanged
    assert not list(out.rglob("comsem.json")) and not (out / "results.json").exists() and not (out / "results.md").exists()
    assert not list(out.rglob("interpreted"))
    ledger = json.loads((out / "ledger.json").read_text())  # what failed is kept, as a ledger, not as a score
    assert set(ledger["bae"]["failed"]) == {"connection"} and ledger["bae"]["succeeded"] == 0
    assert "0 of 4 features scored" in stdout
    assert len(ResponseCache(tmp_path / "c.sqlite")) == 0  # a failure is never cached


def test_nonsense_answers_are_counted_and_leave_the_cache(tmp_path):
    cache = tmp_path / "c.sqlite"
    argv = with_cache(interpret(server="garbage"), str(cache)) + ["--output_dir", str(tmp_path / "o")]
    code, _, err = run_cli(argv)
    assert code == EXIT_FAILURE and "Traceback" not in err
    assert "4 explanations" in err or "judge answers were never Yes or No" in err
    assert len(ResponseCache(cache)) == 0  # a rerun against the fixed server asks again
    # The same server fixed (same URL and model): the rerun scores, from fresh answers.
    fixed = SERVERS["garbage"]
    fixed.responder = category_llm
    try:
        code, out, err = run_cli(argv)
    finally:
        fixed.responder = lambda body: "banana split"
    assert code == 0, err
    report = json.loads((tmp_path / "o" / "bae" / "comsem.json").read_text())
    assert report["features_scored"] >= 1 and report["coverage"] == f"{report['features_scored']} of 4 features scored"


def test_partly_scored_run_succeeds_and_states_its_coverage(tmp_path):
    # the first two explainer calls fail (no retries): the other features are scored, and the coverage is said
    server = FakeOpenAI(responder=category_llm, sequence={0: "500", 1: "500"})
    with server:
        argv = [*interpret(server="ok"), "--max_features", "8", "--concurrency", "1", "--output_dir", str(tmp_path / "o")]
        argv[argv.index("--base_url") + 1] = server.base_url
        code, out, err = run_cli(argv)
    assert code == 0, err
    report = json.loads((tmp_path / "o" / "bae" / "comsem.json").read_text())
    assert 1 <= report["features_scored"] <= 6 and report["status_counts"]["explain_failed"] == 2
    assert f"{report['features_scored']} of 8 features scored" in out and report["coverage"] in out
    assert report["interpretable_fraction"] is not None and report["ledger"]["failed"] == {"server_error": 2}


def test_the_judge_alone_answering_nonsense_scores_nothing(tmp_path):
    # a sane explainer, a judge that never says Yes or No: not "0.0 for every feature"
    server = FakeOpenAI(responder=lambda body: "maybe, who knows" if is_judge(last_user_message(body))
                        else category_llm(body))
    with server:
        argv = interpret(server="ok", atlas=True) + ["--output_dir", str(tmp_path / "o")]
        argv[argv.index("--base_url") + 1] = server.base_url
        code, _, err = run_cli(argv)
    assert code == EXIT_FAILURE and "never Yes or No" in err and "Traceback" not in err
    assert not list((tmp_path / "o").rglob("comsem.json"))
