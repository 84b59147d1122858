"""The OpenAI Batch API as a judge backend (`--backend openai-batch`): half the list price, answers within
24 hours instead of seconds.

Each `generate` call (up to `max_batch_requests` requests: the client sends everything the response cache
lacks) becomes one JSONL file of chat-completions requests, uploaded and submitted as one batch, which is
polled until it ends; the answers are then parsed from its output and error files. The `custom_id` of a
request is its response-cache key, so answers land in the same cache as the synchronous backend's (the
same model answers both ways) and a rerun asks only for what is missing.

A run stopped while a batch is in flight loses nothing: the batch id is written to a small JSON file
(`state_path`, beside the response cache) before the first poll, keyed by the set of requests, and the
next run with the same requests re-attaches to that batch instead of paying for it again. Requests a
batch did not answer (expired, failed lines, a batch that failed validation) come back as failures, which
are not cached, so a rerun resubmits exactly those.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .chat import RETRYABLE, ChatRequest, ChatResult, LLMSetupError
from .openai_backend import OpenAIBackend, completion_body
from .response_cache import request_key

logger = logging.getLogger(__name__)

BATCH_DISCOUNT = 0.5  # the Batch API's price against the synchronous API's (OpenAI's pricing page)
ENDPOINT = "/v1/chat/completions"
TERMINAL = ("completed", "failed", "expired", "cancelled")
MAX_BATCH_REQUESTS = 50_000  # OpenAI's limit per batch (and 200 MB per input file)


class BatchWaitTimeout(RuntimeError):
    """The batch did not end within `max_wait` seconds; it is still recorded, and a rerun collects it."""


class BatchCallError(RuntimeError):
    """An HTTP call of the batch protocol failed after its retries; `kind` is one of the failure kinds."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


def batch_line(custom_id: str, model: str, request: ChatRequest) -> dict[str, Any]:
    """One line of a batch input file: the chat-completions request `request` as the synchronous backend sends it."""
    return {"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": completion_body(model, request)}


def parse_batch_line(line: dict[str, Any]) -> ChatResult:
    """A `ChatResult` from one line of a batch's output or error file."""
    response = line.get("response") or {}
    status = response.get("status_code")
    error = line.get("error")
    if status == 200:
        try:
            body = response["body"]
            text = body["choices"][0]["message"]["content"]
            if not isinstance(text, str):
                raise TypeError("no text content")
        except (KeyError, IndexError, TypeError) as exc:
            return ChatResult(error="malformed", attempts=1, detail=f"batch line without an answer ({exc!r})")
        usage = body.get("usage") or {}
        return ChatResult(text=text.strip(), attempts=1, prompt_tokens=int(usage.get("prompt_tokens") or 0),
                          completion_tokens=int(usage.get("completion_tokens") or 0))
    kind = ("rate_limited" if status == 429 else "server_error" if status is None or status >= 500 else "bad_request")
    detail = json.dumps(error or response.get("body"))[:200]
    return ChatResult(error=kind, attempts=1, detail=f"batch line status {status}: {detail}")


def requests_digest(custom_ids: Sequence[str]) -> str:
    """The key of a set of requests in the state file (order-free)."""
    return hashlib.sha256("\n".join(sorted(custom_ids)).encode()).hexdigest()[:32]


class BatchState:
    """The batches in flight, `{requests digest: batch id}`, in a JSON file written atomically."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def load(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as error:
            raise ValueError(f"The batch state file {self.path} is unreadable ({error}): delete it to start afresh "
                             "(batches it recorded are then submitted again).") from error
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise ValueError(f"The batch state file {self.path} is not a {{digest: batch id}} object: delete it.")
        return data

    def set(self, digest: str, batch_id: str | None) -> None:
        data = self.load()
        if batch_id is None:
            data.pop(digest, None)
        else:
            data[digest] = batch_id
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, self.path)


class OpenAIBatchBackend(OpenAIBackend):
    """The Batch API of OpenAI (or a server that implements it): see the module docstring.

    Args:
        state_path: where batches in flight are recorded (default: beside the response cache).
        poll_interval: seconds between status checks of a batch.
        max_wait: seconds to wait for a batch before giving up for now (its requests fail with "timeout";
            the batch keeps running and the next run collects it).
        max_batch_requests: requests per batch.
        progress: print a line whenever a batch's status or count changes.
        **kwargs: `OpenAIBackend`'s (model, base_url, api key, timeout, retries of each HTTP call, prices:
            the defaults are the list prices times `BATCH_DISCOUNT`; explicit prices are taken as given).
    """

    kind = "openai-batch"

    def __init__(self, *, state_path: str | os.PathLike, poll_interval: float = 30.0, max_wait: float = 26 * 3600.0,
                 max_batch_requests: int = MAX_BATCH_REQUESTS, progress: bool = True, **kwargs: Any):
        super().__init__(**kwargs)
        if not 1 <= max_batch_requests <= MAX_BATCH_REQUESTS:
            raise ValueError(f"max_batch_requests must be in [1, {MAX_BATCH_REQUESTS}], got {max_batch_requests}.")
        self.state = BatchState(state_path)
        self.poll_interval, self.max_wait, self.progress = poll_interval, max_wait, progress
        self.batch_size, self.concurrency = max_batch_requests, 1
        price_in, price_out = self._prices
        self._prices = (price_in * (BATCH_DISCOUNT if kwargs.get("price_input") is None else 1.0),
                        price_out * (BATCH_DISCOUNT if kwargs.get("price_output") is None else 1.0))

    def __repr__(self) -> str:  # never show the key
        return f"OpenAIBatchBackend(model={self.model!r}, base_url={self.base_url!r})"

    # The identity is the synchronous backend's: the same model answers, so both share cached answers.

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        """One HTTP call with the synchronous backend's retries; a setup error stops the run."""
        for attempt in range(self.max_retries + 1):
            try:
                return fn()
            except LLMSetupError:
                raise
            except Exception as error:  # noqa: BLE001 - classified; unknown errors re-raise
                kind = self._classify(error)
                if kind not in RETRYABLE or attempt == self.max_retries:
                    raise BatchCallError(f"{what} failed ({kind}): {type(error).__name__}: {str(error)[:200]}", kind) from error
                time.sleep(self._retry_delay(attempt, error))
        raise AssertionError("unreachable")

    def _submit(self, lines: list[dict[str, Any]]) -> str:
        data = "".join(json.dumps(line) + "\n" for line in lines).encode()
        upload = self._call("Uploading the batch file", lambda: self._client.files.create(
            file=("hf_bae_batch.jsonl", data, "application/jsonl"), purpose="batch"))
        batch = self._call("Creating the batch", lambda: self._client.batches.create(
            input_file_id=upload.id, endpoint=ENDPOINT, completion_window="24h", metadata={"created_by": "hf_bae"}))
        return batch.id

    def _wait(self, batch_id: str) -> Any:
        start, seen = time.monotonic(), None
        while True:
            batch = self._call(f"Checking batch {batch_id}", lambda: self._client.batches.retrieve(batch_id))
            counts = batch.request_counts
            now = (batch.status, counts.completed if counts else 0, counts.failed if counts else 0)
            if self.progress and now != seen:
                total = counts.total if counts else "?"
                print(f"OpenAI batch {batch_id}: {batch.status}, {now[1]} answered, {now[2]} failed of {total} "
                      f"({time.monotonic() - start:.0f} s)", file=sys.stderr, flush=True)
                seen = now
            if batch.status in TERMINAL:
                return batch
            if time.monotonic() - start + self.poll_interval > self.max_wait:
                raise BatchWaitTimeout(f"batch {batch_id} is still {batch.status} after {self.max_wait:.0f} s; it keeps "
                                       "running: rerun the same command to collect its answers")
            time.sleep(self.poll_interval)

    def _read_lines(self, file_id: str | None) -> list[dict[str, Any]]:
        if not file_id:
            return []
        content = self._call(f"Downloading {file_id}", lambda: self._client.files.content(file_id))
        lines = []
        for raw in content.text.splitlines():
            if raw.strip():
                try:
                    lines.append(json.loads(raw))
                except ValueError:
                    logger.warning("skipping a line of %s that is not JSON: %r", file_id, raw[:100])
        return lines

    def generate(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        ids = [request_key(self.identity, self.model, r) for r in requests]
        digest = requests_digest(ids)
        batch_id = self.state.load().get(digest)
        if batch_id is not None and self.progress:
            print(f"OpenAI batch {batch_id}: re-attaching (submitted by an earlier run)", file=sys.stderr, flush=True)
        try:
            if batch_id is None:
                batch_id = self._submit([batch_line(i, self.model, r) for i, r in zip(ids, requests)])
                self.state.set(digest, batch_id)  # before waiting: a stopped run re-attaches instead of paying twice
            batch = self._wait(batch_id)
            lines = self._read_lines(batch.output_file_id) + self._read_lines(batch.error_file_id)
        except BatchWaitTimeout as error:
            return [ChatResult(error="timeout", attempts=1, detail=str(error)) for _ in requests]
        except BatchCallError as error:  # still recorded (unless the submission failed): a rerun re-attaches
            return [ChatResult(error=error.kind, attempts=1, detail=str(error)) for _ in requests]
        results: dict[str, ChatResult] = {}
        for line in lines:
            if line.get("custom_id") in results and results[line["custom_id"]].ok:
                continue
            results[line.get("custom_id")] = parse_batch_line(line)
        self.state.set(digest, None)  # ended: what it did not answer is asked again by a rerun
        if batch.status == "failed":
            errors = getattr(batch, "errors", None)
            reasons = "; ".join(f"{e.code}: {e.message}" for e in (getattr(errors, "data", None) or [])) or "no reason given"
            detail = f"batch {batch_id} failed validation ({reasons})"
            return [results.get(i) or ChatResult(error="bad_request", attempts=1, detail=detail) for i in ids]
        missing = "timeout" if batch.status == "expired" else "server_error"
        detail = f"batch {batch_id} ended {batch.status} without an answer to this request"
        return [results.get(i) or ChatResult(error=missing, attempts=1, detail=detail) for i in ids]
