"""Chat LLM backends for feature interpretation, with a persistent response cache and a cost ledger.

Two backends speak one interface (`ChatBackend.generate(list[ChatRequest]) -> list[ChatResult]`):

- `OpenAIBackend`: any OpenAI-compatible chat-completions endpoint through the `openai` client
  (OpenAI itself, vLLM, llama.cpp's server, Ollama, ...). Base URL and model are configurable. The
  API key comes from a flag or an environment variable and lives only in memory: it is never written
  to the cache, the ledger, logs or cards. Retries with exponential backoff (honouring `Retry-After`)
  on 429, 5xx, timeouts, dropped connections and malformed bodies.
- `TransformersBackend`: a local chat model run with `generate` through its chat template
  (default: the embedded SmolLM2-135M-Instruct), batched with left padding.

`LLMClient` puts a backend to work on many requests: it answers from the `ResponseCache` first
(SQLite, keyed by backend, model, messages and sampling parameters; safe for threads and
processes; every answer is committed as soon as it arrives, so an interrupted run loses nothing
that was paid for), runs the rest with bounded concurrency, stops making new calls at `max_calls`,
and in `dry_run` mode only counts the calls it would make. The `Ledger` counts calls, cache hits,
retries, failures by kind, tokens and cost.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import random
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..configuration import option

logger = logging.getLogger(__name__)

# Environment variables searched for the API key when none is passed (the second is the original
# code's name).
API_KEY_ENVS = ("OPENAI_API_KEY", "OAI_TOKEN")
DEFAULT_OPENAI_MODEL = "gpt-4.1-mini"  # the original's --backend_model_name default

# List prices in USD per million tokens (input, output), as published by OpenAI in 2025. Prices
# change: pass `price_input` / `price_output` to override. Unknown models cost 0 in the ledger.
PRICES_USD_PER_MILLION: dict[str, tuple[float, float]] = {
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "o4-mini": (1.10, 4.40),
    "o3-mini": (1.10, 4.40),
}

# Error kinds a result can carry. Retryable ones are retried before they count as a failure.
RETRYABLE = ("rate_limited", "server_error", "timeout", "connection", "malformed")
FAILURE_KINDS = RETRYABLE + ("bad_request", "budget_exhausted", "dry_run")


class LLMSetupError(RuntimeError):
    """An error that every further call would repeat (bad key, unknown model, wrong URL): the run stops."""


# ----------------------------------------------------------------------------------------------
# Requests, results, cache keys
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChatRequest:
    """One chat completion to make.

    Args:
        messages: `(role, content)` pairs.
        max_tokens: cap on generated tokens (`max_completion_tokens` for the API); None = the server's default.
        temperature: sampling temperature; None = the server's default (what the original code used).
            The local backend decodes greedily when it is None or 0.
    """

    messages: tuple[tuple[str, str], ...]
    max_tokens: int | None = None
    temperature: float | None = None

    @classmethod
    def from_messages(cls, messages: Sequence[dict[str, str]], **sampling: Any) -> "ChatRequest":
        return cls(tuple((m["role"], m["content"]) for m in messages), **sampling)

    def as_messages(self) -> list[dict[str, str]]:
        return [{"role": role, "content": content} for role, content in self.messages]

    def sampling(self) -> dict[str, Any]:
        """The sampling parameters that were set (they are part of the cache key)."""
        out = {}
        if self.max_tokens is not None:
            out["max_tokens"] = self.max_tokens
        if self.temperature is not None:
            out["temperature"] = self.temperature
        return out

    def estimated_prompt_tokens(self) -> int:
        """A rough token count (4 characters per token) for dry-run cost estimates."""
        return sum(len(content) for _, content in self.messages) // 4 + 4 * len(self.messages)


def request_key(backend_identity: str, model: str, request: ChatRequest) -> str:
    """The cache key: a SHA-256 of the backend, the model, the messages and the sampling parameters."""
    payload = {"backend": backend_identity, "model": model, "messages": request.messages, "sampling": request.sampling()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


@dataclass
class ChatResult:
    """The answer to a `ChatRequest`: `text`, or `error` (one of `FAILURE_KINDS`)."""

    text: str | None = None
    error: str | None = None
    cached: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    attempts: int = 0
    retries: Counter = field(default_factory=Counter)
    detail: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.text is not None


# ----------------------------------------------------------------------------------------------
# Persistent response cache
# ----------------------------------------------------------------------------------------------
def default_cache_path() -> Path:
    """`$HF_BAE_CACHE/llm_responses.sqlite`, else `~/.cache/hf_bae/llm_responses.sqlite`."""
    root = os.environ.get("HF_BAE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "hf_bae")
    return Path(root) / "llm_responses.sqlite"


class ResponseCache:
    """LLM answers on disk (SQLite, WAL mode), keyed by `request_key`.

    One connection per thread; SQLite's locking makes concurrent writers in several threads or
    processes safe. Each answer is committed at once. Only successful answers are stored, so a
    rerun retries what failed. The request's messages are stored beside the answer for auditing;
    no credential is ever part of a request.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._connect() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, backend TEXT, model TEXT, "
                "request TEXT, text TEXT, prompt_tokens INTEGER, completion_tokens INTEGER, created REAL)"
            )

    def _connect(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=60)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    def get(self, key: str) -> dict[str, Any] | None:
        row = self._connect().execute(
            "SELECT text, prompt_tokens, completion_tokens FROM responses WHERE key = ?", (key,)
        ).fetchone()
        if row is None:
            return None
        return {"text": row[0], "prompt_tokens": row[1], "completion_tokens": row[2]}

    def put(self, key: str, backend: str, model: str, request: ChatRequest, result: ChatResult) -> None:
        with self._connect() as conn:  # commits
            conn.execute(
                "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (key, backend, model, json.dumps({"messages": request.messages, "sampling": request.sampling()}),
                 result.text, result.prompt_tokens, result.completion_tokens, time.time()),
            )

    def __contains__(self, key: str) -> bool:
        return self._connect().execute("SELECT 1 FROM responses WHERE key = ?", (key,)).fetchone() is not None

    def __len__(self) -> int:
        return self._connect().execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


# ----------------------------------------------------------------------------------------------
# Ledger
# ----------------------------------------------------------------------------------------------
@dataclass
class Ledger:
    """What a run asked for, what it paid, and what went wrong.

    `calls` counts requests sent to the backend (one per request, however many HTTP attempts it
    took; `http_requests` counts the attempts). `failed` counts requests that ended without an
    answer, by kind; `retried` counts attempts that were retried, by kind.
    """

    backend: str
    model: str
    price_input: float = 0.0  # USD per million prompt tokens
    price_output: float = 0.0
    requests: int = 0
    cache_hits: int = 0
    calls: int = 0
    http_requests: int = 0
    succeeded: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    cached_completion_tokens: int = 0
    would_call: int = 0
    would_call_prompt_tokens: int = 0
    failed: Counter = field(default_factory=Counter)
    retried: Counter = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def _cost(self, prompt: int, completion: int) -> float:
        return (prompt * self.price_input + completion * self.price_output) / 1e6

    @property
    def cost_usd(self) -> float:
        """Cost of the calls made in this run."""
        return self._cost(self.prompt_tokens, self.completion_tokens)

    @property
    def saved_usd(self) -> float:
        """What the answers taken from the cache would have cost."""
        return self._cost(self.cached_prompt_tokens, self.cached_completion_tokens)

    def record(self, result: ChatResult) -> None:
        with self._lock:
            self.requests += 1
            self.retried.update(result.retries)
            if result.cached:
                self.cache_hits += 1
                self.cached_prompt_tokens += result.prompt_tokens
                self.cached_completion_tokens += result.completion_tokens
                return
            if result.error in ("budget_exhausted", "dry_run"):
                self.failed[result.error] += 1
                return
            self.calls += 1
            self.http_requests += result.attempts
            self.prompt_tokens += result.prompt_tokens
            self.completion_tokens += result.completion_tokens
            if result.ok:
                self.succeeded += 1
            else:
                self.failed[result.error or "unknown"] += 1

    def record_would_call(self, request: ChatRequest) -> None:
        with self._lock:
            self.would_call += 1
            self.would_call_prompt_tokens += request.estimated_prompt_tokens()

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "model": self.model,
            "requests": self.requests,
            "cache_hits": self.cache_hits,
            "calls": self.calls,
            "http_requests": self.http_requests,
            "succeeded": self.succeeded,
            "failed": dict(self.failed),
            "failed_total": sum(v for k, v in self.failed.items() if k != "dry_run"),
            "retried": dict(self.retried),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": round(self.cost_usd, 6),
            "saved_by_cache_usd": round(self.saved_usd, 6),
            "price_usd_per_million": {"input": self.price_input, "output": self.price_output},
            "would_call": self.would_call,
            "would_call_estimated_cost_usd": round(self._cost(self.would_call_prompt_tokens, 0), 6),
        }

    def describe(self) -> str:
        d = self.to_dict()
        failures = ", ".join(f"{k} {v}" for k, v in sorted(d["failed"].items())) or "none"
        retries = ", ".join(f"{k} {v}" for k, v in sorted(d["retried"].items())) or "none"
        return (
            f"{self.model} via {self.backend}: {d['requests']} requests, {d['cache_hits']} from cache, "
            f"{d['calls']} calls ({d['http_requests']} HTTP attempts), failures: {failures}; retries: {retries}; "
            f"{d['prompt_tokens']} + {d['completion_tokens']} tokens, ${d['cost_usd']:.4f} "
            f"(cache saved ${d['saved_by_cache_usd']:.4f})"
        )


# ----------------------------------------------------------------------------------------------
# Backends
# ----------------------------------------------------------------------------------------------
class ChatBackend:
    """Interface of a chat backend. Subclasses set `kind`, `model`, `batch_size`, `concurrency`."""

    kind: str = "base"
    model: str = ""
    batch_size: int = 1  # requests per `generate` call
    concurrency: int = 1  # `generate` calls in flight at once

    @property
    def identity(self) -> str:
        """What, besides the model name, decides the answers (part of the cache key)."""
        return self.kind

    def prices(self) -> tuple[float, float]:
        return 0.0, 0.0

    def generate(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        raise NotImplementedError


def resolve_api_key(api_key: str | None = None, api_key_env: str | None = None) -> str:
    """The API key: `api_key` if given, else the environment (`api_key_env`, OPENAI_API_KEY, OAI_TOKEN).

    Raises ValueError, before any work is done, when there is none.
    """
    if api_key:
        return api_key
    names = ([api_key_env] if api_key_env else []) + [n for n in API_KEY_ENVS if n != api_key_env]
    for name in names:
        if os.environ.get(name):
            return os.environ[name]
    raise ValueError(
        f"No API key for the OpenAI-compatible backend: set the environment variable {names[0]} (preferred: it does "
        "not show in the process list) or pass --api_key. A local server that ignores keys (vLLM, llama.cpp, Ollama) "
        "still needs a value: any string, e.g. OPENAI_API_KEY=none. To run without any API, use --backend transformers."
    )


def _retry_after_seconds(error: Exception) -> float | None:
    response = getattr(error, "response", None)
    headers = getattr(response, "headers", None)
    if not headers:
        return None
    value = headers.get("retry-after-ms")
    if value:
        try:
            return float(value) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    try:
        return float(value) if value else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


class OpenAIBackend(ChatBackend):
    """Any OpenAI-compatible chat-completions endpoint.

    Args:
        model: model name as the server knows it (default gpt-4.1-mini, the original's).
        base_url: endpoint, e.g. `http://localhost:8000/v1` for vLLM; None = OpenAI's.
        api_key: the key; if None it is read from `api_key_env` / OPENAI_API_KEY / OAI_TOKEN. Kept in memory only.
        api_key_env: name of an environment variable to read the key from first.
        timeout: seconds per HTTP attempt.
        max_retries: retries of a request after retryable errors (429, 5xx, timeouts, connection
            errors, malformed bodies) before it counts as failed.
        backoff_base / backoff_max: the n-th retry waits min(backoff_max, backoff_base·2ⁿ)·U(0.5, 1)
            seconds, or the server's Retry-After when it sends one (capped at backoff_max).
        concurrency: requests in flight at once.
        price_input / price_output: USD per million tokens; default from `PRICES_USD_PER_MILLION`.
    """

    kind = "openai"

    def __init__(
        self,
        model: str = DEFAULT_OPENAI_MODEL,
        base_url: str | None = None,
        api_key: str | None = None,
        api_key_env: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 6,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        concurrency: int = 8,
        price_input: float | None = None,
        price_output: float | None = None,
    ):
        import openai

        self.model = model
        self.base_url = base_url.rstrip("/") if base_url else None
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.concurrency = max(1, concurrency)
        self.batch_size = 1
        default_in, default_out = PRICES_USD_PER_MILLION.get(model, (0.0, 0.0))
        self._prices = (default_in if price_input is None else price_input, default_out if price_output is None else price_output)
        # The client keeps the key in memory; retries are ours (max_retries=0) so that we can count them.
        self._client = openai.OpenAI(
            api_key=resolve_api_key(api_key, api_key_env), base_url=self.base_url, timeout=timeout, max_retries=0
        )

    def __repr__(self) -> str:  # never show the key
        return f"OpenAIBackend(model={self.model!r}, base_url={self.base_url!r})"

    @property
    def identity(self) -> str:
        return f"openai-compatible@{self.base_url or 'https://api.openai.com/v1'}"

    def prices(self) -> tuple[float, float]:
        return self._prices

    def _classify(self, error: Exception) -> str:
        import openai

        if isinstance(error, (openai.AuthenticationError, openai.PermissionDeniedError)):
            raise LLMSetupError(
                f"The endpoint {self.identity} refused the API key ({type(error).__name__}): check the key "
                "(environment variable or --api_key) and the base URL."
            ) from None
        if isinstance(error, openai.NotFoundError):
            raise LLMSetupError(
                f"The endpoint {self.identity} answered 404 for model {self.model!r}: check --model and --base_url "
                "(it usually ends in /v1)."
            ) from None
        if isinstance(error, openai.RateLimitError):
            return "rate_limited"
        if isinstance(error, openai.APITimeoutError):
            return "timeout"
        if isinstance(error, openai.APIConnectionError):
            return "connection"
        if isinstance(error, openai.APIStatusError):
            return "server_error" if error.status_code >= 500 else "bad_request"
        if isinstance(error, (openai.APIResponseValidationError, ValueError, KeyError, IndexError, TypeError, AttributeError)):
            return "malformed"
        raise error

    def _once(self, request: ChatRequest) -> ChatResult:
        kwargs: dict[str, Any] = {"model": self.model, "messages": request.as_messages()}
        if request.max_tokens is not None:
            kwargs["max_completion_tokens"] = request.max_tokens
        if request.temperature is not None:
            kwargs["temperature"] = request.temperature
        response = self._client.chat.completions.create(**kwargs)
        if isinstance(response, (str, bytes)) or not getattr(response, "choices", None):
            raise ValueError("the response has no choices")
        text = response.choices[0].message.content
        if not isinstance(text, str):
            raise ValueError("the response's message has no text content")
        usage = getattr(response, "usage", None)
        return ChatResult(
            text=text.strip(),
            prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
            completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
        )

    def _complete(self, request: ChatRequest) -> ChatResult:
        retries: Counter = Counter()
        for attempt in range(self.max_retries + 1):
            try:
                result = self._once(request)
                result.attempts, result.retries = attempt + 1, retries
                return result
            except LLMSetupError:
                raise
            except Exception as error:  # noqa: BLE001 - classified below; unknown errors re-raise
                kind = self._classify(error)
                detail = f"{type(error).__name__}: {str(error)[:200]}"
                if kind not in RETRYABLE or attempt == self.max_retries:
                    return ChatResult(error=kind, attempts=attempt + 1, retries=retries, detail=detail)
                retries[kind] += 1
                delay = _retry_after_seconds(error)
                if delay is None:
                    delay = min(self.backoff_max, self.backoff_base * 2**attempt) * random.uniform(0.5, 1.0)
                logger.debug("retrying after %s (%.2f s): %s", kind, delay, detail)
                time.sleep(min(delay, self.backoff_max))
        raise AssertionError("unreachable")

    def generate(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        return [self._complete(r) for r in requests]


class TransformersBackend(ChatBackend):
    """A local chat model (a transformers causal LM with a chat template).

    ComSem's prompts share long prefixes (system message and few-shot turns, ~90% of a judge prompt).
    With `prefix_cache` (default) the key/value cache of each prefix is computed once and reused, and
    requests run one at a time; without it, requests run in left-padded batches of `batch_size`.

    Args:
        model: "embedded" (SmolLM2-135M-Instruct, offline), a Hub id or a local folder.
        revision, device, dtype: passed to the loader.
        batch_size: prompts per `generate` call (without prefix_cache).
        max_new_tokens: default cap on generated tokens when a request sets none.
        prefix_cache: reuse the KV cache of the messages before the last one.
        model_obj, tokenizer: an already loaded model and tokenizer (then `model` is only a name for the cache key).

    Decoding is greedy unless a request sets a temperature > 0. Costs are 0; tokens are counted.
    """

    kind = "transformers"

    def __init__(
        self,
        model: str = "embedded",
        revision: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        batch_size: int = 8,
        max_new_tokens: int = 32,
        prefix_cache: bool = True,
        model_obj: Any = None,
        tokenizer: Any = None,
    ):
        self.model = model
        self.revision = revision
        self.prefix_cache = prefix_cache
        self._prefixes: dict[str, tuple[list[int], Any]] = {}  # prefix text -> (token ids, KV cache), a small LRU
        self.batch_size = max(1, batch_size)
        self.concurrency = 1
        self.max_new_tokens = max_new_tokens
        self._load_kwargs = {"revision": revision, "dtype": dtype, "device": device}
        self._lm, self._tokenizer = None, None
        self._lock = threading.Lock()
        if model_obj is not None and tokenizer is not None:
            self._set(model_obj, tokenizer)

    def _set(self, model_obj: Any, tokenizer: Any) -> None:
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError(
                f"The tokenizer of {self.model!r} has no chat template: the local backend needs an instruction-tuned chat "
                "model (e.g. 'embedded', SmolLM2-135M-Instruct)."
            )
        self._lm, self._tokenizer = model_obj.eval(), tokenizer

    def load(self) -> None:
        """Load the model now (otherwise it is loaded by the first call, so a dry run never loads it)."""
        if self._lm is None:
            from ..activations import load_language_model

            self._set(*load_language_model(self.model, **self._load_kwargs))

    @property
    def identity(self) -> str:
        return f"transformers@{self.model}" + (f"@{self.revision}" if self.revision else "")

    def _generation_kwargs(self, request: ChatRequest) -> dict[str, Any]:
        tok = self._tokenizer
        kwargs: dict[str, Any] = {"max_new_tokens": request.max_tokens or self.max_new_tokens, "do_sample": bool(request.temperature),
                                  "pad_token_id": tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id}
        if request.temperature:
            kwargs["temperature"] = request.temperature
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        return kwargs

    def _result(self, new_ids: Any, prompt_tokens: int) -> ChatResult:
        tok = self._tokenizer
        stop = {tok.eos_token_id, tok.pad_token_id} - {None}
        ids = new_ids.tolist()
        n_new = next((j for j, t in enumerate(ids) if t in stop), len(ids))
        text = tok.decode(ids[:n_new], skip_special_tokens=True).strip()
        return ChatResult(text=text, prompt_tokens=prompt_tokens, completion_tokens=n_new, attempts=1)

    def _prefix(self, messages: list[dict[str, str]], full_ids: list[int]) -> tuple[int, Any] | None:
        """(length, a private copy of the KV cache) of the prompt's shared prefix, or None."""
        import copy

        import torch

        if len(messages) < 2:
            return None
        text = self._tokenizer.apply_chat_template(messages[:-1], tokenize=False)
        if text not in self._prefixes:
            ids = self._tokenizer(text, add_special_tokens=False)["input_ids"]
            device = next(self._lm.parameters()).device
            with torch.no_grad():
                cache = self._lm(torch.tensor([ids], device=device), use_cache=True).cache
            if len(self._prefixes) >= 4:
                self._prefixes.pop(next(iter(self._prefixes)))
            self._prefixes[text] = (ids, cache)
        ids, cache = self._prefixes[text]
        # Tokens merging across the boundary would make the cache wrong for this prompt: then no reuse.
        if len(ids) >= len(full_ids) or full_ids[: len(ids)] != ids:
            return None
        return len(ids), copy.deepcopy(cache)

    def _generate_with_prefix(self, request: ChatRequest) -> ChatResult:
        import torch

        messages = request.as_messages()
        prompt = self._tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = self._tokenizer(prompt, add_special_tokens=False)["input_ids"]
        device = next(self._lm.parameters()).device
        input_ids = torch.tensor([ids], device=device)
        kwargs = self._generation_kwargs(request)
        prefix = self._prefix(messages, ids)
        if prefix is not None:
            kwargs["cache"] = prefix[1]
        with torch.no_grad():
            out = self._lm.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **kwargs)
        return self._result(out[0, len(ids):], len(ids))

    def _generate_group(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        import torch

        if self.prefix_cache:
            return [self._generate_with_prefix(r) for r in requests]
        tok = self._tokenizer
        prompts = [
            tok.apply_chat_template(r.as_messages(), add_generation_prompt=True, tokenize=False) for r in requests
        ]
        side, pad = tok.padding_side, tok.pad_token
        try:
            tok.padding_side = "left"
            if tok.pad_token is None:
                tok.pad_token = tok.eos_token
            # The chat template already wrote the special tokens.
            enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        finally:
            tok.padding_side, tok.pad_token = side, pad
        device = next(self._lm.parameters()).device
        enc = {k: v.to(device) for k, v in enc.items()}
        with torch.no_grad():
            out = self._lm.generate(**enc, **self._generation_kwargs(requests[0]))
        new = out[:, enc["input_ids"].shape[1]:]
        return [self._result(new[i], int(enc["attention_mask"][i].sum())) for i in range(len(requests))]

    def generate(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        # Requests with different sampling parameters are generated in separate groups.
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault((r.max_tokens, r.temperature), []).append(i)
        results: list[ChatResult | None] = [None] * len(requests)
        with self._lock:
            self.load()
            for indices in groups.values():
                for i, res in zip(indices, self._generate_group([requests[i] for i in indices])):
                    results[i] = res
        return results  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------
# The client: cache, budget, concurrency
# ----------------------------------------------------------------------------------------------
class LLMClient:
    """Runs many requests on a backend through the cache, within a call budget.

    Args:
        backend: a `ChatBackend`.
        cache: a `ResponseCache`, a path to one, or None for no cache.
        max_calls: most requests sent to the backend in this client's life (cache hits are free);
            further requests end with error "budget_exhausted" and can be made by a later run.
        dry_run: send nothing; requests not in the cache end with error "dry_run" and are counted
            in `ledger.would_call`.
        progress: show a tqdm bar.
    """

    def __init__(
        self,
        backend: ChatBackend,
        cache: ResponseCache | str | os.PathLike | None = None,
        *,
        max_calls: int | None = None,
        dry_run: bool = False,
        progress: bool = True,
    ):
        if max_calls is not None and max_calls < 0:
            raise ValueError(f"max_calls must be >= 0, got {max_calls}.")
        self.backend = backend
        self.cache = ResponseCache(cache) if isinstance(cache, (str, os.PathLike)) else cache
        self.max_calls = max_calls
        self.dry_run = dry_run
        self.progress = progress
        price_in, price_out = backend.prices()
        self.ledger = Ledger(backend=backend.identity, model=backend.model, price_input=price_in, price_output=price_out)
        self._budget_lock = threading.Lock()
        self._calls_reserved = 0

    def key(self, request: ChatRequest) -> str:
        return request_key(self.backend.identity, self.backend.model, request)

    def cached(self, request: ChatRequest) -> bool:
        """Whether the answer to `request` is already in the cache."""
        return self.cache is not None and self.key(request) in self.cache

    def _reserve(self, n: int) -> int:
        with self._budget_lock:
            allowed = n if self.max_calls is None else max(0, min(n, self.max_calls - self._calls_reserved))
            self._calls_reserved += allowed
            return allowed

    def complete_many(self, requests: Sequence[ChatRequest], desc: str = "LLM calls",
                      on_result: Callable[[int, ChatResult], None] | None = None) -> list[ChatResult]:
        """Answer every request (from the cache when possible); results come back in order.

        Identical requests are sent once. `on_result(index, result)` is called as answers arrive.
        """
        results: list[ChatResult | None] = [None] * len(requests)
        pending: dict[str, list[int]] = {}
        for i, request in enumerate(requests):
            key = self.key(request)
            if key in pending:
                pending[key].append(i)
                continue
            hit = self.cache.get(key) if self.cache is not None else None
            if hit is not None:
                results[i] = ChatResult(text=hit["text"], cached=True, prompt_tokens=hit["prompt_tokens"] or 0,
                                        completion_tokens=hit["completion_tokens"] or 0)
                self.ledger.record(results[i])
                if on_result:
                    on_result(i, results[i])
            else:
                pending[key] = [i]

        def deliver(key: str, request: ChatRequest, result: ChatResult) -> None:
            if result.ok and self.cache is not None:
                self.cache.put(key, self.backend.identity, self.backend.model, request, result)
            self.ledger.record(result)
            for n, i in enumerate(pending[key]):
                # Duplicates of a request are answered by the one call: they count as cache hits.
                results[i] = result if n == 0 else ChatResult(text=result.text, error=result.error, cached=result.ok,
                                                              prompt_tokens=result.prompt_tokens,
                                                              completion_tokens=result.completion_tokens)
                if n > 0 and result.ok:
                    self.ledger.record(results[i])
                if on_result:
                    on_result(i, results[i])

        todo = [(key, requests[idx[0]]) for key, idx in pending.items()]
        if self.dry_run:
            for key, request in todo:
                self.ledger.record_would_call(request)
                deliver(key, request, ChatResult(error="dry_run"))
            return results  # type: ignore[return-value]

        size = self.backend.batch_size
        chunks = [todo[i : i + size] for i in range(0, len(todo), size)]
        bar = tqdm(total=len(todo), desc=desc, unit="call", disable=not self.progress or not todo)

        def run_chunk(chunk: list[tuple[str, ChatRequest]]) -> None:
            allowed = self._reserve(len(chunk))
            if allowed:
                answers = self.backend.generate([r for _, r in chunk[:allowed]])
                for (key, request), result in zip(chunk[:allowed], answers):
                    deliver(key, request, result)
            for key, request in chunk[allowed:]:
                deliver(key, request, ChatResult(error="budget_exhausted"))
            bar.update(len(chunk))

        try:
            if self.backend.concurrency <= 1 or len(chunks) <= 1:
                for chunk in chunks:
                    run_chunk(chunk)
            else:
                with ThreadPoolExecutor(max_workers=self.backend.concurrency) as pool:
                    futures = [pool.submit(run_chunk, chunk) for chunk in chunks]
                    try:
                        for future in futures:
                            future.result()
                    except BaseException:
                        for future in futures:
                            future.cancel()
                        raise
        finally:
            bar.close()
        return results  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------
# Options (the `hf-bae interpret` flags) and construction
# ----------------------------------------------------------------------------------------------
BACKENDS = ("openai", "transformers")
SECRET_FIELDS = ("api_key",)  # never written anywhere




@dataclass
class LLMConfig:
    """Which LLM explains and judges, and how it is called."""

    _argument_group_name = 'LLM options (explainer and judge)'  # its --help section

    backend: str = option(
        "openai", "openai: any OpenAI-compatible endpoint (OpenAI, vLLM, llama.cpp, Ollama); transformers: a local chat model.",
        choices=BACKENDS,
    )
    llm: str | None = option(
        None, f"Explainer and judge model (the original's backend_model_name). Default: {DEFAULT_OPENAI_MODEL} (openai) or "
        "'embedded', SmolLM2-135M-Instruct (transformers).", aliases=["--backend_model_name"],
    )
    base_url: str | None = option(None, "OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 (None = OpenAI).")
    api_key: str | None = option(
        None, "API key (the original's --openai_token). Prefer the environment variable (see --api_key_env): a flag shows "
        "in the process list. Never written to disk, logs or cards.", aliases=["--openai_token"],
    )
    api_key_env: str = option("OPENAI_API_KEY", "Environment variable holding the API key (OAI_TOKEN, the original's, is also read).")
    timeout: float = option(60.0, "Seconds per HTTP attempt before it counts as a timeout.")
    max_retries: int = option(6, "Retries per call after 429, 5xx, timeouts, dropped connections or malformed bodies.")
    backoff_base: float = option(1.0, "First retry delay in seconds; doubles each retry (with jitter), unless the server sends Retry-After.")
    concurrency: int = option(8, "API calls in flight at once.")
    price_input: float | None = option(None, "USD per million prompt tokens for the ledger (default: the list price of known OpenAI models, else 0).")
    price_output: float | None = option(None, "USD per million completion tokens for the ledger.")
    llm_batch_size: int = option(8, "Local backend: prompts per generate call.")
    llm_max_new_tokens: int = option(32, "Local backend: cap on generated tokens when the protocol sets none.")
    llm_device: str | None = option(None, "Local backend: device of the chat model.")
    llm_prefix_cache: bool = option(
        True, "Local backend: compute the shared prompt prefix (instructions, few-shot turns) once and reuse its KV cache; "
        "requests then run one at a time. Off: left-padded batches of --llm_batch_size."
    )
    cache: str | None = option(
        None, "Response cache (SQLite). Default: $HF_BAE_CACHE/llm_responses.sqlite or ~/.cache/hf_bae/llm_responses.sqlite."
    )
    no_cache: bool = option(False, "Do not read or write the response cache.")
    max_calls: int | None = option(
        None, "Stop making new LLM calls after this many (cached answers are free); a rerun continues where this one stopped."
    )
    dry_run: bool = option(False, "Make no LLM call: print how many calls (and roughly what cost) a run would make.")

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend={self.backend!r}: choose one of {BACKENDS}.")
        if self.max_calls is not None and self.max_calls < 0:
            raise ValueError(f"max_calls must be >= 0, got {self.max_calls}.")

    def public_dict(self) -> dict[str, Any]:
        """The options without secrets (what may be written to disk)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in SECRET_FIELDS}
        out["api_key"] = "<set>" if self.api_key else None
        return out


def make_backend(config: LLMConfig) -> ChatBackend:
    """The backend named by `config`. An API backend without a key raises ValueError here, before any work
    (except in a dry run, which sends nothing)."""
    if config.backend == "openai":
        api_key = config.api_key
        if config.dry_run:
            try:
                api_key = resolve_api_key(api_key, config.api_key_env)
            except ValueError:
                api_key = "unused-in-dry-run"
        return OpenAIBackend(
            model=config.llm or DEFAULT_OPENAI_MODEL, base_url=config.base_url, api_key=api_key,
            api_key_env=config.api_key_env, timeout=config.timeout, max_retries=config.max_retries,
            backoff_base=config.backoff_base, concurrency=config.concurrency,
            price_input=config.price_input, price_output=config.price_output,
        )
    return TransformersBackend(model=config.llm or "embedded", device=config.llm_device, batch_size=config.llm_batch_size,
                               max_new_tokens=config.llm_max_new_tokens, prefix_cache=config.llm_prefix_cache)


def make_cache(config: LLMConfig) -> ResponseCache | None:
    """The response cache named by `config` (None with `no_cache`)."""
    if config.no_cache:
        return None
    return ResponseCache(config.cache or default_cache_path())
