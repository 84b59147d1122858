"""The local judge backend: a transformers chat model run with `generate` through its chat template
(default: the embedded SmolLM2-135M-Instruct; also a `.gguf` file, or a chat model that a registry
package carries, `hf_bae.interpret.packaged_judges`), reusing the KV cache of shared prompt prefixes or
batching with left padding.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .chat import ChatBackend, ChatRequest, ChatResult


def _packaged_names() -> set[str]:
    from .packaged_judges import PACKAGED_JUDGES

    return set(PACKAGED_JUDGES)


def cpu_has_bf16_matmul() -> bool:
    """Whether this CPU has bf16 dot-product instructions (avx512_bf16 or AMX), which oneDNN's bf16 matmuls use.

    Read from /proc/cpuinfo: torch's own checks miss them (`torch.ops.mkldnn._is_mkldnn_bf16_supported()`
    is False and the ATen capability reads AVX2 on a Zen 4 whose bf16 GEMM runs at 2.8x float32's). Without
    them a bf16 matmul is emulated and ~100x slower than float32 (measured: 1 vs 164 GFLOP/s on 2 cores of an
    EPYC without AVX-512), so a wrong guess either way costs a lot.
    """
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.split()))


def gguf_dtype(device: str | None = None) -> str:
    """The dtype a GGUF judge runs in by default: "bfloat16" on a GPU or a CPU with bf16 matmul instructions
    (2.5-3x float32's GEMM rate), else "float32"."""
    if device and str(device).startswith("cuda"):
        return "bfloat16"
    if device in (None, "cpu") and cpu_has_bf16_matmul():
        return "bfloat16"
    return "float32"


class TransformersBackend(ChatBackend):
    """A local chat model (a transformers causal LM with a chat template).

    ComSem's prompts share long prefixes (system message and few-shot turns, ~90% of a judge prompt).
    With `prefix_cache` (default) the key/value cache of each prefix is computed once and reused, and
    requests run one at a time; without it, requests run in left-padded batches of `batch_size`.

    Args:
        model: "embedded" (SmolLM2-135M-Instruct, offline), a packaged judge ("qwen2.5-coder-1.5b",
            "qwen2.5-coder-0.5b": `packaged_judges.PACKAGED_JUDGES`), a local `.gguf` file (Qwen2 / Llama
            architectures: transformers dequantises it on load), a Hub id or a local folder.
        revision, device, dtype: passed to the loader. A GGUF judge's default dtype is `gguf_dtype`'s:
            bfloat16 (dequantised once on load) where the machine has bf16 matmul kernels, else float32
            with the weights kept in their GGUF blocks.
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
        if dtype is None and (model in _packaged_names() or model.endswith(".gguf")):
            dtype = gguf_dtype(device)
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
            from .packaged_judges import PACKAGED_JUDGES, packaged_gguf

            if self.model in PACKAGED_JUDGES:
                self._set(*self._load_gguf(packaged_gguf(self.model)))
            elif self.model.endswith(".gguf"):
                self._set(*self._load_gguf(Path(self.model)))
            else:
                from ..activations import load_language_model

                self._set(*load_language_model(self.model, **self._load_kwargs))

    def _load_gguf(self, path: Path) -> tuple[Any, Any]:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

        from ..activations.language_models import resolve_dtype

        if not path.is_file():
            raise ValueError(f"--llm {path}: no such GGUF file; give the path of a .gguf chat model.")
        dtype = resolve_dtype(self._load_kwargs["dtype"]) or torch.float32
        # Packed GGUF weights are multiplied by float32 kernels that unpack them on every call; in a half
        # dtype they would only add casts, so then the weights are unpacked once into a dense model
        # (measured on Qwen2.5-Coder-1.5B Q4_K_M, 2 Zen-4 cores: a 40-token judge suffix 2.04 s packed
        # float32, 0.61 s dense bfloat16; benchmarks/RESULTS.md).
        dense = dtype in (torch.bfloat16, torch.float16)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype,
                                                     quantization_config=GgufConfig(dequantize=dense))
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        device = self._load_kwargs["device"] or "cpu"
        return model.to(device).eval().requires_grad_(False), tokenizer

    @property
    def identity(self) -> str:
        # The dtype is part of the judge: bf16 and fp32 answers may differ, so they are cached and calibrated apart.
        dtype = self._load_kwargs["dtype"]
        return (f"transformers@{self.model}" + (f"@{self.revision}" if self.revision else "")
                + (f"@{dtype}" if dtype not in (None, "float32") else ""))

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
