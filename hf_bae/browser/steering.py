"""Steering in "Try it": add a feature's decoder direction at the site its dictionary writes and show
how the language model's next-token distribution on the text changes (top tokens before and after,
with probabilities, and the KL divergence).

- The direction is feature j's decoder column d_j (raw residual units), as a unit vector; its sign
  follows the feature's event (`feature_page.feature_event`): a usually-on BAE code (event "off")
  is steered along -d_j, so a positive strength moves the stream toward its event, as it does for
  every SAE latent and usually-off code.
- The strength is in units of the site's typical activation norm: the mean L2 norm of the site's
  activation over the text's tokens (special tokens such as BOS excluded: their norms are often far
  larger), so strength 1 adds a vector as long as a typical activation there. The vector is added at
  every token of the text (not at special tokens), in a full forward through `hf_bae.sites.replace_site`.
- `steer_next_token` is the pure computation (model, ids, site, direction, strength → the two
  distributions); `steering_view` turns it into what the page shows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..sites import Site, replace_site
from .atlas_view import Atlas
from .dictionary_view import Dictionary, write_site
from .feature_page import feature_event
from .markup import esc, visible

# How many tokens each side of the comparison lists.
TOP_TOKENS = 10


@dataclass
class NextTokenShift:
    """The next-token distribution at the text's last position without and with the steering vector."""

    before: torch.Tensor  # [vocab] float64 probabilities
    after: torch.Tensor  # [vocab] float64 probabilities
    scale: float  # the typical activation norm at the site (raw units) the strength is measured in
    kl: float  # KL(before ‖ after) in nats

    def top(self, which: str = "before", k: int = TOP_TOKENS) -> list[tuple[int, float, float]]:
        """(token id, p before, p after) of the k most likely tokens `before` or `after` steering."""
        p = self.before if which == "before" else self.after
        ids = torch.topk(p, min(k, len(p))).indices.tolist()
        return [(i, float(self.before[i]), float(self.after[i])) for i in ids]


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def steer_next_token(model: Any, input_ids: torch.Tensor, site: Site | str, direction: torch.Tensor, strength: float,
                     positions: torch.Tensor | None = None) -> NextTokenShift:
    """Add `strength · scale · direction/‖direction‖` to the activation at `site` at `positions` (a `[seq]`
    bool mask; default every position) of `input_ids` `[1, seq]`, and return the next-token distribution at
    the last position without and with it. `scale` is the mean L2 norm of the site's activation over the
    masked positions (measured in the unsteered forward). Strength 0 leaves the distribution unchanged."""
    if input_ids.dim() != 2 or input_ids.shape[0] != 1 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids must be one non-empty sequence [1, seq], got shape {tuple(input_ids.shape)}.")
    if not math.isfinite(strength):
        raise ValueError(f"The steering strength must be a finite number, got {strength}.")
    device = _device(model)
    input_ids = input_ids.to(device)
    seq = input_ids.shape[1]
    mask = torch.ones(seq, dtype=torch.bool) if positions is None else positions.to(torch.bool).cpu()
    if mask.shape != (seq,) or not mask.any():
        raise ValueError(f"positions must be a [seq] = [{seq}] mask with at least one position set.")
    unit = direction.detach().float().flatten()
    norm = float(unit.norm())
    if not norm > 0:
        raise ValueError("The steering direction is zero: this feature's decoder column has no direction to add.")
    unit = unit / norm
    seen: dict[str, torch.Tensor] = {}

    def observe(activation: torch.Tensor) -> torch.Tensor:
        seen["activation"] = activation.detach()
        return activation

    with replace_site(model, site, observe):
        logits = model(input_ids=input_ids, use_cache=False).logits[0, -1].double()
    activation = seen["activation"][0].float()  # [seq, d]
    if activation.shape[-1] != unit.numel():
        raise ValueError(f"The direction has {unit.numel()} dimensions but the activation at {site} has {activation.shape[-1]}: "
                         "steer with a dictionary of this site.")
    scale = float(activation[mask.to(activation.device)].norm(dim=-1).mean())
    before = torch.log_softmax(logits, -1)
    if strength == 0:
        after = before
    else:
        add = (strength * scale) * unit.to(activation.device)
        where = mask.to(activation.device)[:, None]

        def push(act: torch.Tensor) -> torch.Tensor:
            return act + torch.where(where, add.to(act.dtype), torch.zeros((), dtype=act.dtype, device=act.device))

        with replace_site(model, site, push):
            after = torch.log_softmax(model(input_ids=input_ids, use_cache=False).logits[0, -1].double(), -1)
    kl = float((before.exp() * (before - after)).sum().clamp_min(0.0))
    return NextTokenShift(before=before.exp().cpu(), after=after.exp().cpu(), scale=scale, kl=kl)


def steering_sign(atlas: Atlas, dictionary: Dictionary, feature: int) -> tuple[int, str | None]:
    """(+1 or -1, the event): -1 for a usually-on BAE code, whose event is turning off (removing d_j)."""
    rec = atlas.record(feature) if feature in atlas.index.row_of else {"frequency": 0.0}
    event, _ = feature_event(rec, bool(dictionary.score_is_deviation), str(atlas.meta("dictionary_type") or ""))
    return (-1 if event == "off" else 1), event


@dataclass
class SteeringView:
    """What the steering panel shows."""

    html: str
    shift: NextTokenShift
    sign: int


def steering_view(atlas: Atlas, dictionary: Dictionary, model: Any, tokenizer: Any, text: str, feature: int, strength: float,
                  max_tokens: int) -> SteeringView:
    """Steer `model` on `text` (its first `max_tokens` tokens) with `feature`'s decoder direction at
    `strength` typical activation norms, and describe the next-token distribution change."""
    if not 0 <= int(feature) < dictionary.num_features:
        raise ValueError(f"Feature {feature} is not in the dictionary: it has features 0–{dictionary.num_features - 1}.")
    feature = int(feature)
    ids = tokenizer(text[: max_tokens * 40], add_special_tokens=True)["input_ids"]  # never tokenize megabytes to drop them
    special = set(tokenizer.all_special_ids)
    content = [i for i, t in enumerate(ids) if t not in special]
    if not content:
        raise ValueError("Type some text to steer on: it has no tokens besides special ones.")
    ids = ids[: content[min(max_tokens, len(content)) - 1] + 1]
    mask = torch.tensor([t not in special for t in ids])
    sign, event = steering_sign(atlas, dictionary, feature)
    site = write_site(atlas, dictionary)
    shift = steer_next_token(model, torch.tensor([ids]), site, sign * dictionary.unit_decoder[feature], float(strength), mask)

    def name(i: int) -> str:
        return esc(repr(visible(tokenizer.decode([i]))))

    def rows(which: str) -> str:
        out = []
        for i, b, a in shift.top(which):
            change = a - b
            cls = "up" if change > 0 else ("down" if change < 0 else "")
            out.append(f"<tr data-token-id='{i}' data-before='{b:.6g}' data-after='{a:.6g}'><td class='steer-token'>{name(i)}</td>"
                       f"<td>{b:.3g}</td><td>{a:.3g}</td><td class='{cls}'>{change:+.2g}</td></tr>")
        return "".join(out)

    head = "<tr><th>token</th><th>p before</th><th>p after</th><th>change</th></tr>"
    direction = ("−d<sub>j</sub> (a usually-on code: its event is turning off)" if sign < 0 else "+d<sub>j</sub>")
    html_out = (
        f"<div class='steering' data-kl='{shift.kl:.6g}' data-feature='{feature}'>"
        f"<p>Feature <b>{feature}</b> ({esc(event or 'no event')}) steered along {direction} at <b>{esc(site)}</b>, strength "
        f"<b>{float(strength):g}</b> × the site's typical activation norm (the mean ‖activation‖ over this text's "
        f"{int(mask.sum())} tokens = {shift.scale:.4g}), added at every token.</p>"
        f"<p>Next token after the text: KL(before ‖ after) = <b class='steer-kl'>{shift.kl:.4g}</b> nats.</p>"
        "<div class='steer-cols'>"
        f"<div><b>Most likely before</b><table class='steer-before'>{head}{rows('before')}</table></div>"
        f"<div><b>Most likely after</b><table class='steer-after'>{head}{rows('after')}</table></div>"
        "</div></div>"
    )
    return SteeringView(html=html_out, shift=shift, sign=sign)
