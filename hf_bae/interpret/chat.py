"""The chat vocabulary shared by every judge backend: `ChatRequest` (what to ask), `ChatResult`
(what came back, or which kind of failure), the error kinds, `LLMSetupError`, and the `ChatBackend`
interface (`generate(list[ChatRequest]) -> list[ChatResult]`) that `OpenAIBackend` and
`TransformersBackend` implement.

A new judge backend subclasses `ChatBackend`, sets `kind`, `model`, `batch_size`, `concurrency`,
and is named in `hf_bae.interpret.client.make_backend`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

# Error kinds a result can carry. Retryable ones are retried before they count as a failure.
RETRYABLE = ("rate_limited", "server_error", "timeout", "connection", "malformed")
FAILURE_KINDS = RETRYABLE + ("bad_request", "budget_exhausted", "dry_run")


class LLMSetupError(RuntimeError):
    """An error that every further call would repeat (bad key, unknown model, wrong URL): the run stops."""


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
