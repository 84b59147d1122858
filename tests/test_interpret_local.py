"""The local transformers backend: chat template, left-padded batches, caching. Fast on a tiny random
chat model; the slow test runs the embedded SmolLM2-135M-Instruct end to end."""

import pytest
import torch

from interp_fixtures import install_activations_shim, word_lm

install_activations_shim()

from hf_bae.interpret.llm import ChatRequest, LLMClient, TransformersBackend  # noqa: E402


def req(text, **kw):
    return ChatRequest.from_messages([{"role": "system", "content": "be brief"}, {"role": "user", "content": text}], **kw)


def test_batched_generation_equals_one_by_one_and_is_cached(tmp_path):
    model, tok = word_lm()
    backend = TransformersBackend("tiny-test", model_obj=model, tokenizer=tok, batch_size=4, max_new_tokens=5)
    prompts = [req("cat"), req("the red dog runs near a big horse"), req("one two", max_tokens=3), req("blue")]
    batched = LLMClient(backend, tmp_path / "c.sqlite", progress=False).complete_many(prompts)
    single = [TransformersBackend("tiny-test", model_obj=model, tokenizer=tok, batch_size=1, max_new_tokens=5).generate([p])[0] for p in prompts]
    assert [r.text for r in batched] == [r.text for r in single]
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
