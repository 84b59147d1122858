"""The "Try it" view: run the language model and a dictionary on a text and show, per token, the features that
fire (strongest first) and, per feature, where it fires. The LM is the one the dictionary reads
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
    per_token: list[list[Any]]  # [position, token, firing, top features]


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
                 top_k: int = 3, max_features: int = 200) -> TryIt:
    """Run `model` and `dictionary` on `text`: per token its `top_k` strongest features, per feature
    where it fires (the `max_features` strongest). Input beyond `max_tokens` tokens is dropped with a notice."""
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
    strength = torch.where(fired, strength, torch.full_like(strength, -math.inf))

    positions = [i for i, t in enumerate(ids) if t not in special]
    tokens = [text[offsets[i][0] : offsets[i][1]] if offsets[i][1] > offsets[i][0] else tokenizer.convert_ids_to_tokens(ids[i]) for i in positions]
    fired, strength = fired[positions], strength[positions]
    n_fired = fired.sum(1).tolist()
    k = min(top_k, d.num_features)
    top_values, top_ids = torch.topk(strength, k, dim=1)
    per_token, spans = [], []
    for t, (pos, tok) in enumerate(zip(positions, tokens)):
        top = [j for j, v in zip(top_ids[t].tolist(), top_values[t].tolist()) if v > -math.inf]
        per_token.append([pos, tok, n_fired[t], ", ".join(map(str, top))])
        chips = "".join(f"<button class='chip' data-feature='{j}' title='{esc(_short(ix, j))}'>{j}</button>" for j in top)
        spans.append(
            f"<span class='tok-cell' title='{n_fired[t]} features fire'><span class='tok-text'>{esc(visible(tok))}</span>"
            f"<span class='chips'>{chips}</span></span>"
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
    html_out = "<div class='tokens'>" + "".join(spans) + "</div>"
    return TryIt(notice=" ".join(notices), tokens_html=html_out, per_feature=per_feature, per_token=per_token)


def _short(ix: AtlasIndex, feature: int) -> str:
    r = ix.row_of.get(feature)
    return clip(ix.explanation[r], 120) if r is not None else ""
