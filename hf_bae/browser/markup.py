"""HTML pieces of the browser's views. Every string that comes from an atlas, a tokenizer or a user is
escaped here (`esc`, quotes included) before it is put in markup; nothing builds markup from unescaped text."""

from __future__ import annotations

import html
from typing import Any

# Characters of a sample's context shown on each side of the firing token.
CONTEXT_WINDOW = 160


def esc(text: Any) -> str:
    """HTML-escape any value (quotes included, so it is also safe inside attributes)."""
    return html.escape("" if text is None else str(text), quote=True)


def visible(token: str) -> str:
    """Make whitespace-only tokens visible (a newline shows as ↵, spaces as ·)."""
    if token.strip():
        return token
    return token.replace("\n", "↵").replace(" ", "·").replace("\t", "⇥") or "∅"


def highlight_context(context: str, start: int, end: int, cls: str = "fire", token: str = "", window: int = CONTEXT_WINDOW) -> str:
    """The context with characters [start, end) wrapped in <mark>, all text escaped, trimmed around the mark.

    start == end marks a token that is not in the context text (a special token such as BOS): the
    mark then shows `token` at that place."""
    context = context or ""
    if not (0 <= start <= end <= len(context)):
        return esc(context[: 2 * window])  # offsets do not fit the context: show it unmarked
    left, right = max(0, start - window), min(len(context), end + window)
    before = ("…" if left > 0 else "") + context[left:start]
    after = context[end:right] + ("…" if right < len(context) else "")
    marked = context[start:end] if end > start else token
    return f'{esc(before)}<mark class="{cls}">{esc(visible(marked))}</mark>{esc(after)}'


def fmt_freq(p: float) -> str:
    """A firing frequency for people: "0.00123 (1 in 813 tokens)"."""
    if p <= 0:
        return "0 (dead)"
    return f"{p:.3g} (1 in {1 / p:,.0f} tokens)" if p < 0.5 else f"{p:.3g}"


def flags(dead: bool, dense: bool) -> str:
    """The flag a feature's row shows: "dead", "dense" or ""."""
    return "dead" if dead else ("dense" if dense else "")


def clip(text: str, n: int) -> str:
    """`text` cut to `n` characters, with an ellipsis when cut."""
    return text if len(text) <= n else text[: n - 1] + "…"
