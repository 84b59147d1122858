"""Entropy curves: bits per layer (`layer_entropy`, one BAE per site over the same tokens) and bits per
token position (`position_entropy`, one BAE per position as in the paper, on `document_prefixes` read
by `position_activations`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from .estimator import DEFAULT_MIN_SAMPLES, DEFAULT_NUM_BOOTSTRAP, EntropyAccumulator, EntropyReport, check_confidence
from .measure import check_bae_fits, encode_codes


@torch.no_grad()
def layer_entropy(language_model: Any, tokenizer: Any, texts: Iterable[str], baes: Mapping[str, Any], *,
                  num_tokens: int = 20_000, context_length: int = 128, batch_size: int = 8,
                  exclude_special_tokens: bool = True, num_bootstrap: int = DEFAULT_NUM_BOOTSTRAP, seed: int = 0,
                  confidence: float = 0.95, min_samples: int = DEFAULT_MIN_SAMPLES,
                  progress: bool = True) -> dict[str, EntropyReport]:
    """Entropy of the same tokens at several sites, each read by its own BAE, in one pass over the text.

    Args:
        baes: site (`layers.L.resid_post`) → BAE trained on that site.
        num_tokens: tokens evaluated (the stream stops once reached); the tokens of one packed row form
            a bootstrap group.

    Returns:
        site → `EntropyReport`, in the order of `baes`.
    """
    from ..activations import stream_activations

    if not baes:
        raise ValueError("No BAEs given: pass one per site, e.g. {'layers.3.resid_post': bae}.")
    check_confidence(confidence)  # before the pass over the text, not after it
    if num_tokens < 1:
        raise ValueError(f"num_tokens must be at least 1, got {num_tokens}.")
    for site, bae in baes.items():
        check_bae_fits(bae, language_model, site)
    accs = {site: EntropyAccumulator(b.config.num_codes, bits_per_feature=b.config.bits, num_bootstrap=num_bootstrap,
                                     seed=seed) for site, b in baes.items()}
    seen = 0
    stream = stream_activations(language_model, tokenizer, texts, list(baes), context_length=context_length,
                                batch_size=batch_size, exclude_special_tokens=exclude_special_tokens, progress=progress)
    try:
        for batch in stream:
            take = min(batch.num_tokens, num_tokens - seen)
            groups = (batch.first_row + batch.row_index[:take]).cpu()
            for site, bae in baes.items():
                accs[site].update(encode_codes(bae, batch.activations[site][:take]), groups)
            seen += take
            if seen >= num_tokens:
                break
    finally:
        stream.close()
    return {site: acc.report(confidence, min_samples) for site, acc in accs.items()}


def document_prefixes(texts: Iterable[str], tokenizer: Any, length: int, max_rows: int) -> torch.Tensor:
    """`[rows, length]` token ids: the first `length` tokens of each text that has that many (BOS first
    when the tokenizer has one), unpacked, so that position t is the t-th token of a document."""
    bos = tokenizer.bos_token_id
    body = length - (1 if bos is not None else 0)
    rows = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) >= body:
            rows.append(([bos] if bos is not None else []) + ids[:body])
            if len(rows) >= max_rows:
                break
    if not rows:
        raise ValueError(f"No text has {body} tokens: use shorter --max_position or longer texts.")
    return torch.tensor(rows, dtype=torch.long)


@torch.no_grad()
def position_activations(language_model: Any, input_ids: torch.Tensor, site: str, positions: Sequence[int],
                         batch_size: int = 8, progress: bool = True) -> dict[int, torch.Tensor]:
    """position → `[rows, d]` activations at `site` of each row's token at that position (CPU, float32)."""
    from ..activations import model_device
    from ..sites import HookedForward, Site

    device = model_device(language_model)
    index = torch.tensor(list(positions))
    parts = []
    with HookedForward(language_model, [site]) as forward:
        for start in tqdm(range(0, input_ids.shape[0], batch_size), desc="positions", disable=not progress):
            acts = forward(input_ids[start:start + batch_size].to(device))[str(Site.parse(site))]
            parts.append(acts[:, index.to(acts.device)].float().cpu())
    stacked = torch.cat(parts)  # [rows, P, d]
    return {int(p): stacked[:, i] for i, p in enumerate(positions)}




def position_entropy(baes: Mapping[int, Any], activations: Mapping[int, torch.Tensor], *,
                     num_bootstrap: int = DEFAULT_NUM_BOOTSTRAP, seed: int = 0, confidence: float = 0.95,
                     min_samples: int = DEFAULT_MIN_SAMPLES) -> dict[int, EntropyReport]:
    """position → entropy of the activations at that position, read by that position's BAE (the paper
    trains one BAE per position); rows are the bootstrap groups."""
    out = {}
    for position, x in activations.items():
        bae = baes[position]
        acc = EntropyAccumulator(bae.config.num_codes, bits_per_feature=bae.config.bits, num_bootstrap=num_bootstrap,
                                 seed=seed)
        acc.update(encode_codes(bae, x), torch.arange(x.shape[0]))
        out[position] = acc.report(confidence, min_samples)
    return out

