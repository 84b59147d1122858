"""LLM backends: retries, failures, the response cache, budgets and the API key, against a loopback
OpenAI-compatible server (tests/fake_openai.py)."""

import multiprocessing
import threading

import pytest

from fake_openai import FakeOpenAI
from hf_bae.interpret.chat import ChatRequest, LLMSetupError
from hf_bae.interpret.client import LLMClient, LLMConfig, make_backend
from hf_bae.interpret.openai_backend import OpenAIBackend
from hf_bae.interpret.response_cache import ResponseCache, request_key

KEY = "sk-test-NEVER-WRITE-ME-1234"


def req(text: str, **kw) -> ChatRequest:
    return ChatRequest.from_messages([{"role": "user", "content": text}], **kw)


def backend(server, **kw) -> OpenAIBackend:
    kw = {"timeout": 2.0, "max_retries": 3, "backoff_base": 0.01, "concurrency": 4, **kw}
    return OpenAIBackend(model="fake-model", base_url=server.base_url, api_key=KEY, **kw)


def test_scripted_failures_are_retried_counted_and_cached(tmp_path):
    rules = [("rate", ["429"]), ("flaky", ["500", "500"]), ("slow", ["timeout"]), ("garbled", ["malformed"]),
             ("empty", ["no_choices"]), ("broken", ["500"] * 10)]
    with FakeOpenAI(responder=lambda body: "Yes.", rules=rules, timeout_delay=3.0) as server:
        client = LLMClient(backend(server), tmp_path / "cache.sqlite", progress=False)
        prompts = ["normal", "rate", "flaky", "slow", "garbled", "empty", "broken"]
        results = client.complete_many([req(p) for p in prompts])
        by = dict(zip(prompts, results))
        assert all(by[p].ok and by[p].text == "Yes." for p in prompts if p != "broken")
        assert by["broken"].error == "server_error" and by["broken"].attempts == 4
        ledger = client.ledger.to_dict()
        assert ledger["succeeded"] == 6 and ledger["failed"] == {"server_error": 1}
        assert ledger["retried"] == {"rate_limited": 1, "server_error": 2 + 3, "timeout": 1, "malformed": 2}
        assert ledger["http_requests"] == server.count() == 1 + 2 + 3 + 2 + 2 + 2 + 4
        assert all(r["authorization"] == f"Bearer {KEY}" for r in server.requests)

        # A second client over the same cache: the answered requests cost nothing, the failed one is retried.
        before = server.count()
        again = LLMClient(backend(server, max_retries=0), tmp_path / "cache.sqlite", progress=False)
        results2 = again.complete_many([req(p) for p in prompts])
        assert [r.text for r in results2[:-1]] == [r.text for r in results[:-1]]
        assert all(r.cached for r in results2[:-1])
        assert server.count() - before == 1  # only "broken"
        assert again.ledger.to_dict()["cache_hits"] == 6


def test_auth_error_stops_the_run():
    with FakeOpenAI(rules=[("", ["401"] * 5)]) as server:
        client = LLMClient(backend(server), None, progress=False)
        with pytest.raises(LLMSetupError, match="refused the API key"):
            client.complete_many([req("x")])


def test_missing_api_key_is_a_clear_error_before_any_call(monkeypatch):
    for name in ("OPENAI_API_KEY", "OAI_TOKEN", "MY_KEY"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="No API key.*OPENAI_API_KEY"):
        make_backend(LLMConfig(backend="openai", base_url="http://127.0.0.1:9/v1"))
    monkeypatch.setenv("MY_KEY", KEY)
    b = make_backend(LLMConfig(backend="openai", api_key_env="MY_KEY", base_url="http://127.0.0.1:9/v1"))
    assert KEY not in repr(b)
    # A dry run sends nothing, so it needs no key.
    monkeypatch.delenv("MY_KEY")
    assert make_backend(LLMConfig(backend="openai", dry_run=True)).model == "gpt-4.1-mini"


def test_public_config_never_holds_the_key():
    cfg = LLMConfig(api_key=KEY)
    assert KEY not in repr(cfg.public_dict()) and cfg.public_dict()["api_key"] == "<set>"


def test_max_calls_and_dry_run(tmp_path):
    with FakeOpenAI(responder=lambda body: "No") as server:
        cache = tmp_path / "c.sqlite"
        dry = LLMClient(backend(server), cache, dry_run=True, progress=False)
        out = dry.complete_many([req(f"p{i}") for i in range(5)])
        assert all(r.error == "dry_run" for r in out) and dry.ledger.would_call == 5 and server.count() == 0

        capped = LLMClient(backend(server, concurrency=1), cache, max_calls=3, progress=False)
        out = capped.complete_many([req(f"p{i}") for i in range(5)])
        assert [r.ok for r in out] == [True] * 3 + [False] * 2
        assert {r.error for r in out[3:]} == {"budget_exhausted"} and server.count() == 3

        # Resume: only the two missing calls are made; a dry run now counts 0.
        LLMClient(backend(server), cache, progress=False).complete_many([req(f"p{i}") for i in range(5)])
        assert server.count() == 5
        dry = LLMClient(backend(server), cache, dry_run=True, progress=False)
        dry.complete_many([req(f"p{i}") for i in range(5)])
        assert dry.ledger.would_call == 0 and dry.ledger.cache_hits == 5


def test_duplicate_requests_are_sent_once_and_keys_depend_on_sampling():
    with FakeOpenAI(responder=lambda body: "Yes") as server:
        client = LLMClient(backend(server), None, progress=False)
        out = client.complete_many([req("same"), req("same"), req("same", temperature=0.0)])
        assert server.count() == 2 and all(r.ok for r in out)
    assert request_key("b", "m", req("x")) != request_key("b", "m", req("x", max_tokens=3))
    assert request_key("b", "m", req("x")) != request_key("b", "other", req("x"))
    assert request_key("b", "m", req("x")) == request_key("b", "m", req("x"))


def _write_many(path, start):
    from hf_bae.interpret.chat import ChatResult

    cache = ResponseCache(path)
    for i in range(start, start + 40):
        cache.put(f"k{i}", "b", "m", req(str(i)), ChatResult(text=str(i), prompt_tokens=1, completion_tokens=1))


def test_cache_is_safe_for_threads_and_processes(tmp_path):
    path = tmp_path / "shared.sqlite"
    ResponseCache(path)
    ctx = multiprocessing.get_context("fork")  # processes with their own connections
    procs = [ctx.Process(target=_write_many, args=(path, s)) for s in (0, 40)]
    threads = [threading.Thread(target=_write_many, args=(path, s)) for s in (80, 120)]
    for w in procs + threads:
        w.start()
    for w in procs + threads:
        w.join()
    assert all(p.exitcode == 0 for p in procs)
    cache = ResponseCache(path)
    assert len(cache) == 160 and cache.get("k123")["text"] == "123"
