"""Small, fast fixtures for the interpretation tests: a word-level tokenizer with a chat template,
a tiny random Llama on it, and a corpus whose words fall in a few obvious categories.

Until `hf_bae.activations` lands on main, `install_activations_shim()` provides a minimal
implementation of its contract (Site, ActivationBatch, stream_activations) built on
`output_hidden_states`.
"""

from __future__ import annotations

import random
import sys
import types
from dataclasses import dataclass

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
# Minimal stand-in for hf_bae.activations (resid_post only), used until the real module is merged.
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Site:
    layer: int
    name: str = "resid_post"

    @classmethod
    def parse(cls, text: str) -> "Site":
        _, layer, name = text.split(".")
        return cls(int(layer), name)

    def __str__(self) -> str:
        return f"layers.{self.layer}.{self.name}"


@dataclass
class ActivationBatch:
    activations: dict
    input_ids: torch.Tensor
    row_index: torch.Tensor
    positions: torch.Tensor
    first_row: int

    @property
    def token_ids(self) -> torch.Tensor:
        return self.input_ids[self.row_index, self.positions]


def stream_activations(model, tokenizer, texts, sites, *, context_length=128, batch_size=8, exclude_special_tokens=True,
                       outlier_factor=None, skip_rows=0, device=None, dtype=None, progress=True):
    ids: list[int] = []
    for text in texts:
        ids += [tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]
    rows = [ids[i : i + context_length] for i in range(0, len(ids) - context_length + 1, context_length)]
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)))
    for b in range(0, len(rows), batch_size):
        input_ids = torch.tensor(rows[b : b + batch_size])
        with torch.no_grad():
            hs = model(input_ids, output_hidden_states=True).hidden_states
        keep = ~torch.isin(input_ids, special) if exclude_special_tokens else torch.ones_like(input_ids, dtype=torch.bool)
        r, p = keep.nonzero(as_tuple=True)
        acts = {str(s): hs[Site.parse(str(s)).layer + 1][r, p].float() for s in sites}
        yield ActivationBatch(acts, input_ids, r, p, b)


def install_activations_shim() -> None:
    """Make `hf_bae.activations` importable (the shim) if the real module is not there yet."""
    try:
        import hf_bae.activations  # noqa: F401
    except ImportError:
        module = types.ModuleType("hf_bae.activations")
        module.Site, module.ActivationBatch, module.stream_activations = Site, ActivationBatch, stream_activations
        module.load_language_model, module.load_texts = load_language_model, load_texts
        sys.modules["hf_bae.activations"] = module


def load_language_model(name_or_path="embedded", revision=None, dtype=None, device=None):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(name_or_path).eval(), AutoTokenizer.from_pretrained(name_or_path)


def load_texts(dataset="embedded", split="train", text_column="text", *, config_name=None, data_files=None,
               streaming=True, rank=0, world_size=1, max_texts=None):
    import datasets

    ds = datasets.load_dataset(dataset, config_name, data_files=data_files, split=split, streaming=True)
    for i, row in enumerate(ds):
        if max_texts is not None and i >= max_texts:
            return
        yield row[text_column]


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
