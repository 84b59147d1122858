"""Packing: documents → rows of exactly `context_length` token ids, with BOS and document boundaries
placed as `pack_tokens` says."""

import itertools
from collections.abc import Iterable, Iterator
from typing import Any

import torch

__all__ = ["pack_tokens"]


def pack_tokens(
    texts: Iterable[str],
    tokenizer: Any,
    context_length: int,
    *,
    bos_token_id: "int | None | str" = "auto",
    separator_token_id: "int | None | str" = "auto",
    tokenize_batch_size: int = 64,
) -> Iterator[torch.Tensor]:
    """Tokenize documents and pack them into rows of exactly `context_length` token ids.

    BOS handling:

    - Documents are tokenized without special tokens and joined into one stream, each preceded by a
      separator: the tokenizer's BOS if it has one, else its EOS (GPT-2's `<|endoftext|>`).
    - If there is a BOS, every row starts with it, followed by `context_length - 1` stream tokens, so
      that position 0 is always the attention sink the model was trained with, never a mid-document
      token. A separator that would come first in a row merges with the row's BOS (no BOS BOS).
    - Without a BOS, rows are plain consecutive chunks of the stream.
    - Documents flow across rows (long ones are split, short ones share a row: attention then
      crosses the separator, as in pre-training); the last incomplete row is dropped.

    Args:
        bos_token_id / separator_token_id: override the ids above ("auto"), or None for none.
        tokenize_batch_size: documents tokenized per call of the (Rust, multi-threaded) tokenizer.

    Raises:
        ValueError: if the texts do not fill a single row (all empty, or too short).
    """
    if context_length < 2:
        raise ValueError(f"context_length must be >= 2, got {context_length}.")
    bos = tokenizer.bos_token_id if bos_token_id == "auto" else bos_token_id
    sep = (bos if bos is not None else tokenizer.eos_token_id) if separator_token_id == "auto" else separator_token_id
    body = context_length - (1 if bos is not None else 0)
    buffer: list[int] = []
    start = 0  # read position in `buffer`
    num_texts = num_tokens = num_rows = 0
    iterator = iter(texts)
    while True:
        chunk = list(itertools.islice(iterator, tokenize_batch_size))
        if not chunk:
            break
        for text in chunk:
            if not isinstance(text, str):
                raise ValueError(f"pack_tokens expects strings, got {type(text).__name__}.")
        num_texts += len(chunk)
        for ids in tokenizer(chunk, add_special_tokens=False, verbose=False)["input_ids"]:
            if not ids:
                continue
            num_tokens += len(ids)
            if sep is not None:
                buffer.append(sep)
            buffer.extend(ids)
        while True:
            merge = 1 if bos is not None and start < len(buffer) and buffer[start] == bos else 0
            if len(buffer) - start < merge + body:
                break
            row = buffer[start + merge : start + merge + body]
            start += merge + body
            num_rows += 1
            yield torch.tensor(([bos] if bos is not None else []) + row, dtype=torch.long)
        if start > 65536:  # drop consumed tokens now and then, not on every row
            del buffer[:start]
            start = 0
    if num_rows == 0:
        what = "all empty" if num_tokens == 0 else f"only {num_tokens} tokens"
        raise ValueError(
            f"Not enough text for one row of {context_length} tokens: the {num_texts} texts given were {what}. "
            "Give more (or non-empty) texts, or a smaller context_length."
        )
