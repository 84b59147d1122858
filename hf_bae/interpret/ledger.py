"""The cost ledger of a run of LLM calls: calls, cache hits, retries, failures by kind, tokens and
cost, with the list prices of known OpenAI models.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .chat import ChatRequest, ChatResult

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
