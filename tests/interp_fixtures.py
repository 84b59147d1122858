"""Small, fast fixtures for the interpretation tests: a word-level tokenizer with a chat template
(`hf_bae.testing.tiny_causal_lm`'s has none, and the local LLM backend needs one), a tiny random
Llama on it, a corpus whose words fall in a few obvious categories, and a scripted "LLM" for the
loopback OpenAI-compatible server that knows those categories."""

from __future__ import annotations

import random

import torch

CATEGORIES = {
    "animal": ["cat", "dog", "horse", "bird", "fish", "mouse"],
    "colour": ["red", "green", "blue", "yellow", "white", "black"],
    "number": ["one", "two", "three", "four", "five", "six"],
    "verb": ["runs", "sees", "eats", "likes", "finds", "wants"],
}
FILLER = ["the", "a", "and", "then", "of", "near", "big", "small", "."]
SPECIALS = ["<pad>", "<unk>", "<bos>", "<eos>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]


def corpus(num_texts: int = 40, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    texts = []
    for _ in range(num_texts):
        words = []
        for _ in range(rng.randint(6, 14)):
            pool = rng.choice([FILLER, *CATEGORIES.values()])
            words.append(rng.choice(pool))
        texts.append(" ".join(words))
    return texts


def word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = SPECIALS + FILLER + [w for ws in CATEGORIES.values() for w in ws] + ["yes", "no", "Yes", "No", ":", '"']
    vocab = {w: i for i, w in enumerate(dict.fromkeys(words))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
        additional_special_tokens=["<|user|>", "<|assistant|>", "<|system|>", "<|end|>"],
    )
    fast.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
        "{% if add_generation_prompt %}<|assistant|> {% endif %}"
    )
    return fast


def word_lm(num_layers: int = 2, hidden_size: int = 16):
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = word_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval(), tok


# ----------------------------------------------------------------------------------------------
# A scripted "LLM" for the fake OpenAI server that knows the corpus' categories.
# ----------------------------------------------------------------------------------------------
def category_of(word: str) -> str | None:
    return next((c for c, ws in CATEGORIES.items() if word in ws), None)


def category_llm(body: dict, unparseable_token: str = "horse") -> str:
    """Explainer: the majority category of the shown tokens. Judge: Yes iff the token's category is in the
    description; a rambling answer for `unparseable_token`."""
    import re
    from collections import Counter

    from fake_openai import last_user_message

    prompt = last_user_message(body)
    if is_judge(prompt):
        token = re.search(r'Token: "(.*?)" at position', prompt).group(1)
        description = re.search(r'Description: "(.*?)"', prompt).group(1)
        if token == unparseable_token:
            return "Perhaps, it depends on the context."
        return "Yes." if (category_of(token) or "function") in description else "No"
    cats = Counter(category_of(t) for t in re.findall(r'Token: "(.*?)" at position', prompt))
    cat = cats.most_common(1)[0][0]
    return f"**{cat} words**" if cat else "Commonality: function words."


def is_judge(prompt: str) -> bool:
    """Whether the last user message of a ComSem request is a judge query (else an explainer query)."""
    return 'Description: "' in prompt
