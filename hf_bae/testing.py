"""Helpers for tests (ours and yours), in the spirit of `transformers.testing_utils`.

`tiny_causal_lm` builds a small random causal LM of a chosen architecture and a small real
tokenizer trained at run time on text that ships with Python, saves both with `save_pretrained`
and loads them back with `from_pretrained`, so code under test takes the same path as with a real
checkpoint. It takes well under a second.
"""

import functools
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

ARCHITECTURES = ("llama", "qwen2", "gpt2", "gpt_neox", "gemma2")
SPECIAL_TOKENS = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}


@functools.lru_cache(maxsize=1)
def small_corpus() -> tuple[str, ...]:
    """Paragraphs of English text that ship with CPython (the `pydoc` topic help texts)."""
    from pydoc_data.topics import topics

    paragraphs = []
    for key in sorted(topics):
        paragraphs += [p.strip() for p in topics[key].split("\n\n") if len(p.split()) >= 8]
    return tuple(paragraphs)


def tiny_tokenizer(path: "str | os.PathLike | None" = None, vocab_size: int = 512) -> Any:
    """A word-level tokenizer (lower-cased, with `<unk> <s> </s> <pad>`) trained on `small_corpus()`.

    Saved to `path` (a temporary folder if None) and loaded back with `AutoTokenizer.from_pretrained`.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    path = Path(path) if path is not None else Path(tempfile.mkdtemp(prefix="hf_bae-tiny-tok-"))
    tok = Tokenizer(models.WordLevel(unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS.values()))
    tok.train_from_iterator(small_corpus()[:400], trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS).save_pretrained(path)
    return AutoTokenizer.from_pretrained(path)


def tiny_config(arch: str = "llama", *, vocab_size: int = 512, num_layers: int = 4, hidden_size: int = 32, **overrides: Any):
    """A transformers config of architecture `arch` with tiny sizes (4 heads, MLP 2x hidden)."""
    from transformers import GemmaConfig, Gemma2Config, GPT2Config, GPTNeoXConfig, LlamaConfig, Qwen2Config

    if hidden_size % 4:
        raise ValueError(f"hidden_size must be a multiple of 4 (4 heads), got {hidden_size}.")
    special = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3}
    heads = dict(num_attention_heads=4, num_key_value_heads=2, head_dim=hidden_size // 4)
    common = dict(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers, intermediate_size=2 * hidden_size)
    if arch == "llama":
        config = LlamaConfig(**common, **heads, max_position_embeddings=512, **special)
    elif arch == "qwen2":
        config = Qwen2Config(**common, **heads, max_position_embeddings=512, **special)
    elif arch == "gemma":
        config = GemmaConfig(**common, **heads, max_position_embeddings=512, **special)
    elif arch == "gemma2":
        config = Gemma2Config(**common, **heads, max_position_embeddings=512, sliding_window=16, **special)
    elif arch == "gpt_neox":
        config = GPTNeoXConfig(**common, num_attention_heads=4, max_position_embeddings=512, **special)
    elif arch == "gpt2":
        config = GPT2Config(
            vocab_size=vocab_size, n_embd=hidden_size, n_layer=num_layers, n_head=4, n_inner=2 * hidden_size, n_positions=512, **special
        )
    else:
        raise ValueError(f"Unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)} or gemma.")
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def tiny_causal_lm(
    arch: str = "llama",
    path: "str | os.PathLike | None" = None,
    num_layers: int = 4,
    hidden_size: int = 32,
    *,
    seed: int = 0,
    vocab_size: int = 512,
    **config_overrides: Any,
) -> tuple[Any, Any]:
    """A tiny random causal LM of architecture `arch` and its tokenizer, saved and reloaded from `path`.

    Args:
        arch: llama, qwen2, gpt2, gpt_neox, gemma2 (or gemma).
        path: folder to save to (a new temporary folder if None); `model.name_or_path` points there.
        num_layers, hidden_size: sizes (4 attention heads, MLP width 2 * hidden_size).
        seed: weights are a function of the seed and the sizes.

    Returns:
        `(model, tokenizer)`, the model in float32 eval mode with gradients off.
    """
    from transformers import AutoModelForCausalLM

    path = Path(path) if path is not None else Path(tempfile.mkdtemp(prefix=f"hf_bae-tiny-{arch}-"))
    tokenizer = tiny_tokenizer(path, vocab_size=vocab_size)
    config = tiny_config(arch, vocab_size=len(tokenizer), num_layers=num_layers, hidden_size=hidden_size, **config_overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.eval().requires_grad_(False)
    return model, tokenizer
