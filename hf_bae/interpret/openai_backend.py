"""The OpenAI-compatible judge backend: any chat-completions endpoint through the `openai` client
(OpenAI itself, vLLM, llama.cpp's server, Ollama, ...).

The API key comes from a flag or an environment variable and lives only in memory: it is never
written to the cache, the ledger, logs or cards. Requests are retried with exponential backoff
(honouring `Retry-After`) on 429, 5xx, timeouts, dropped connections and malformed bodies.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from .chat import RETRYABLE, ChatBackend, ChatRequest, ChatResult, LLMSetupError
from .ledger import PRICES_USD_PER_MILLION

logger = logging.getLogger(__name__)

# Environment variables searched for the API key when none is passed (the second is the original
# code's name).
API_KEY_ENVS = ("OPENAI_API_KEY", "OAI_TOKEN")
DEFAULT_OPENAI_MODEL = "gpt-4.1-mini"  # the original's --backend_model_name default


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


def completion_body(model: str, request: ChatRequest) -> dict[str, Any]:
    """The chat-completions request body of `request` (what the synchronous and the Batch API both send)."""
    body: dict[str, Any] = {"model": model, "messages": request.as_messages()}
    if request.max_tokens is not None:
        body["max_completion_tokens"] = request.max_tokens
    if request.temperature is not None:
        body["temperature"] = request.temperature
    return body


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
                f"The endpoint {self.identity} answered 404 for model {self.model!r}: check --llm and --base_url "
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
        response = self._client.chat.completions.create(**completion_body(self.model, request))
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

    def _retry_delay(self, attempt: int, error: Exception) -> float:
        """Seconds before retry `attempt` + 1: the server's Retry-After, else min(backoff_max, backoff_base·2ⁿ)
        with jitter; never more than backoff_max."""
        delay = _retry_after_seconds(error)
        if delay is None:
            delay = min(self.backoff_max, self.backoff_base * 2**attempt) * random.uniform(0.5, 1.0)
        return min(delay, self.backoff_max)

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
                delay = self._retry_delay(attempt, error)
                logger.debug("retrying after %s (%.2f s): %s", kind, delay, detail)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def generate(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        return [self._complete(r) for r in requests]
