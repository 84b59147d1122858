"""The OpenAI Batch API backend against the loopback fake server: it submits one file, polls, parses the
answers into the shared response cache, re-attaches to a batch a stopped run left in flight, resubmits only
what a batch did not answer, and costs half the list price."""

import json

import pytest

from fake_openai import FakeOpenAI
from hf_bae.interpret.chat import ChatRequest, LLMSetupError
from hf_bae.interpret.client import LLMClient, LLMConfig, batch_state_path, make_backend
from hf_bae.interpret.openai_backend import OpenAIBackend
from hf_bae.interpret.openai_batch import BatchState, OpenAIBatchBackend

KEY = "sk-test-NEVER-WRITE-ME-1234"


def req(text: str) -> ChatRequest:
    return ChatRequest.from_messages([{"role": "user", "content": text}], max_tokens=8)


def batch_backend(server, tmp_path, **kw) -> OpenAIBatchBackend:
    kw = {"poll_interval": 0.01, "max_retries": 2, "backoff_base": 0.01, "progress": False, **kw}
    return OpenAIBatchBackend(model="gpt-4.1-mini", base_url=server.base_url, api_key=KEY,
                              state_path=tmp_path / "cache.batches.json", **kw)


def test_a_batch_is_submitted_once_polled_parsed_cached_and_half_price(tmp_path):
    with FakeOpenAI(responder=lambda body: "Yes, " + body["messages"][-1]["content"]) as server:
        client = LLMClient(batch_backend(server, tmp_path), tmp_path / "cache.sqlite", progress=False)
        prompts = ["alpha", "beta", "gamma", "beta"]  # a duplicate is asked once
        results = client.complete_many([req(p) for p in prompts])
        assert [r.text for r in results] == ["Yes, alpha", "Yes, beta", "Yes, gamma", "Yes, beta"]
        assert len(server.batches) == 1 and len(server.requests) == 3
        batch = next(iter(server.batches.values()))
        assert batch["endpoint"] == "/v1/chat/completions" and batch["completion_window"] == "24h"
        sent = [json.loads(line) for line in server.files[batch["input_file_id"]].decode().splitlines()]
        assert sent[0]["body"] == {"model": "gpt-4.1-mini", "messages": [{"role": "user", "content": "alpha"}],
                                   "max_completion_tokens": 8}
        assert KEY not in server.files[batch["input_file_id"]].decode()
        assert not BatchState(tmp_path / "cache.batches.json").load()  # nothing left in flight

        # Half the list price; the answers are the synchronous backend's too (same model, same endpoint).
        sync = OpenAIBackend(model="gpt-4.1-mini", base_url=server.base_url, api_key=KEY)
        assert client.backend.prices() == tuple(p / 2 for p in sync.prices()) and sync.prices()[0] > 0
        again = LLMClient(sync, tmp_path / "cache.sqlite", progress=False).complete_many([req("gamma")])
        assert again[0].cached and again[0].text == "Yes, gamma" and len(server.requests) == 3


def test_a_stopped_run_re_attaches_to_its_batch_instead_of_paying_twice(tmp_path):
    with FakeOpenAI(batch_polls=4) as server:
        stopped = LLMClient(batch_backend(server, tmp_path, max_wait=0.02, poll_interval=0.015),
                            tmp_path / "cache.sqlite", progress=False)
        first = stopped.complete_many([req("one"), req("two")])
        assert [r.error for r in first] == ["timeout", "timeout"] and "rerun" in first[0].detail
        assert len(server.batches) == 1 and list(BatchState(tmp_path / "cache.batches.json").load().values()) == ["batch_1"]

        rerun = LLMClient(batch_backend(server, tmp_path), tmp_path / "cache.sqlite", progress=False)
        assert [r.text for r in rerun.complete_many([req("two"), req("one")])] == ["Yes", "Yes"]
        assert len(server.batches) == 1 and len(server.requests) == 2  # collected, not resubmitted


def test_unanswered_lines_fail_uncached_and_only_they_are_resubmitted(tmp_path):
    rules = [("flaky", ["500"]), ("throttled", ["429"]), ("garbled", ["no_choices"])]
    with FakeOpenAI(rules=rules, batch_outcomes=["completed", "expired", "failed"]) as server:
        client = LLMClient(batch_backend(server, tmp_path), tmp_path / "cache.sqlite", progress=False)
        results = client.complete_many([req(p) for p in ("fine", "flaky", "throttled", "garbled")])
        assert [r.error for r in results] == [None, "server_error", "rate_limited", "malformed"]
        assert client.ledger.to_dict()["failed"] == {"server_error": 1, "rate_limited": 1, "malformed": 1}

        # The second batch expires half way: its answered half is cached, the rest fails as a timeout.
        second = client.complete_many([req(p) for p in ("fine", "flaky", "throttled", "garbled")])
        assert second[0].cached
        resubmitted = [json.loads(line)["body"]["messages"][0]["content"]
                       for line in server.files[server.batches["batch_2"]["input_file_id"]].decode().splitlines()]
        assert sorted(resubmitted) == ["flaky", "garbled", "throttled"]
        assert sum(r.ok for r in second[1:]) == 1 and sum(r.error == "timeout" for r in second[1:]) == 2

        # A batch that fails validation: every request fails with its reason, nothing is cached.
        third = client.complete_many([req("new one")])
        assert third[0].error == "bad_request" and "scripted validation failure" in third[0].detail


def test_http_failures_are_retried_and_a_refused_key_stops_the_run(tmp_path, monkeypatch):
    with FakeOpenAI(batch_http_errors={"retrieve": [500, 503], "content": [502]}) as server:
        client = LLMClient(batch_backend(server, tmp_path, max_retries=3), None, progress=False)
        assert client.complete_many([req("x")])[0].text == "Yes"
    with FakeOpenAI(batch_http_errors={"retrieve": [500] * 5}) as server:
        failed = LLMClient(batch_backend(server, tmp_path, max_retries=1), None, progress=False).complete_many([req("y")])
        assert failed[0].error == "server_error" and "Checking batch batch_1" in failed[0].detail
        assert BatchState(tmp_path / "cache.batches.json").load() == {  # still recorded: a rerun re-attaches
            next(iter(BatchState(tmp_path / "cache.batches.json").load())): "batch_1"}
    with FakeOpenAI(batch_http_errors={"content": [500] * 2}) as server:
        # A finished batch whose answers cannot be downloaded stays recorded; the rerun downloads them.
        state = tmp_path / "download"
        first = LLMClient(batch_backend(server, state, max_retries=1), None, progress=False).complete_many([req("z")])
        assert first[0].error == "server_error" and "Downloading" in first[0].detail
        assert list(BatchState(state / "cache.batches.json").load().values()) == ["batch_1"]
        again = LLMClient(batch_backend(server, state), None, progress=False).complete_many([req("z")])
        assert again[0].text == "Yes" and len(server.batches) == 1
    with FakeOpenAI(batch_http_errors={"files": [401]}) as server:
        with pytest.raises(LLMSetupError, match="refused the API key"):
            LLMClient(batch_backend(server, tmp_path / "other"), None, progress=False).complete_many([req("x")])


def test_the_config_builds_the_backend_beside_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    config = LLMConfig(backend="openai-batch", cache=str(tmp_path / "answers.sqlite"), batch_poll_interval=5)
    built = make_backend(config)
    assert isinstance(built, OpenAIBatchBackend) and built.poll_interval == 5 and built.concurrency == 1
    assert built.state.path == batch_state_path(config) == tmp_path / "answers.batches.json"
    with pytest.raises(ValueError, match="batch_poll_interval"):
        LLMConfig(backend="openai-batch", batch_poll_interval=0)
    (tmp_path / "answers.batches.json").write_text("not json")
    with pytest.raises(ValueError, match="delete it"):
        built.state.load()
