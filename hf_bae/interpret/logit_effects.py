"""Logit effects of dictionary features: the tokens a feature's decoder direction promotes and suppresses
when read directly through the language model's unembedding, W_U · d_j (as Neuronpedia and SAEDashboard
show them).

- d_j is feature j's decoder column in raw residual units (`decoder_directions`: the decoder weight,
  divided by the target scale while a training normalisation is not yet folded in). For a BAE, value
  1 of the feature adds d_j to the reconstruction; for a usually-on code (event "off") the event
  removes it, so the event's effect is the opposite of what is stored.
- W_U is `lm.get_output_embeddings().weight` `[vocab, d]`. The final norm before it is not applied
  (the direct path, as the tools above do).
- Stored per feature as {"promoted": [{token, token_id, value}, ...], "suppressed": [...]}, the top k
  of W_U · d_j by value and by −value, `value` the logit change per unit of the feature.

`dictionary_logit_effects` returns None when this is not defined: the random baseline, a transcoder
(its decoder writes another site), or a dictionary whose output width differs from the unembedding's.
"""

from __future__ import annotations

from typing import Any

import torch


def unembedding(model: Any) -> torch.Tensor | None:
    """The language model's unembedding matrix W_U `[vocab, d]`, or None when it has none."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    weight = getattr(head, "weight", None)
    return weight if isinstance(weight, torch.Tensor) and weight.dim() == 2 else None


@torch.no_grad()
def decoder_directions(dictionary: Any) -> torch.Tensor:
    """`[m, d_out]` float32: each feature's decoder direction in raw residual units."""
    weight = dictionary.decoder.weight.detach().float()  # [d_out, m]
    norm = getattr(dictionary, "normalization", None)
    if norm is not None:  # training normalisation not folded yet: the decoder writes normalised units
        weight = weight / float(norm[3])
    return weight.t().contiguous()


def _token_text(tokenizer: Any, token_id: int) -> str:
    if tokenizer is None:
        return str(token_id)
    try:
        return tokenizer.decode([token_id])
    except (IndexError, KeyError, TypeError, ValueError, OverflowError):  # padded vocabulary rows have no token
        return ""


@torch.no_grad()
def logit_effects(directions: torch.Tensor, unembed: torch.Tensor, tokenizer: Any = None, k: int = 10,
                  chunk_size: int = 256) -> list[dict[str, list[dict[str, Any]]]]:
    """Top-k promoted and suppressed tokens of W_U · d_j for every row d_j of `directions` `[m, d]`.

    Args:
        directions: decoder directions `[m, d]` (`decoder_directions`).
        unembed: W_U `[vocab, d]` (`unembedding`).
        tokenizer: turns token ids into the stored `token` strings (None: the id as a string).
        k: tokens per list (at most the vocabulary size).
        chunk_size: features per matrix product, to bound memory at vocab × chunk_size floats.
    """
    if directions.dim() != 2 or unembed.dim() != 2 or directions.shape[1] != unembed.shape[1]:
        raise ValueError(f"decoder directions {tuple(directions.shape)} and unembedding {tuple(unembed.shape)} "
                         "do not share the residual width: logit effects need a dictionary that writes the LM's residual stream.")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}.")
    k = min(k, unembed.shape[0])
    w = unembed.detach().float()
    out: list[dict[str, list[dict[str, Any]]]] = []
    for start in range(0, directions.shape[0], chunk_size):
        d = directions[start:start + chunk_size].to(device=w.device, dtype=torch.float32)
        logits = d @ w.t()  # [chunk, vocab] = (W_U · d_j)ᵀ
        top = logits.topk(k, dim=-1)
        bottom = (-logits).topk(k, dim=-1)
        for tv, ti, bv, bi in zip(top.values.cpu().tolist(), top.indices.cpu().tolist(),
                                  bottom.values.cpu().tolist(), bottom.indices.cpu().tolist()):
            out.append({
                "promoted": [{"token": _token_text(tokenizer, i), "token_id": int(i), "value": float(v)} for v, i in zip(tv, ti)],
                "suppressed": [{"token": _token_text(tokenizer, i), "token_id": int(i), "value": -float(v)} for v, i in zip(bv, bi)],
            })
    return out


def logit_effects_unavailable(dictionary: Any, model: Any, k: int = 10) -> str | None:
    """Why `dictionary_logit_effects` gives None (a sentence), or None when it computes them."""
    if k == 0:
        return "not asked for (logit_effects_k = 0)"
    if getattr(dictionary, "kind", None) == "random" or not hasattr(dictionary, "decoder"):
        return "the random baseline has no decoder"
    config = getattr(dictionary, "config", None)
    if getattr(config, "is_transcoder", False):
        return f"a transcoder writes {config.output_site}, not the residual stream it reads"
    w = unembedding(model)
    if w is None:
        return "the language model has no output embeddings"
    width = dictionary.decoder.weight.shape[0]
    if width != w.shape[1]:
        return f"the dictionary writes {width} dimensions, the unembedding reads {w.shape[1]}"
    return None


def dictionary_logit_effects(dictionary: Any, model: Any, tokenizer: Any = None, k: int = 10) -> list[dict] | None:
    """Per feature of `dictionary`, its logit effects through `model`'s unembedding; None where undefined
    (see the module docstring and `logit_effects_unavailable`)."""
    if logit_effects_unavailable(dictionary, model, k) is not None:
        return None
    return logit_effects(decoder_directions(dictionary), unembedding(model), tokenizer, k)
