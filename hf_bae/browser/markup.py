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


def shade_context(context: str, start: int, end: int, values: list[tuple[int, int, float]], scale: float,
                  cls: str = "fire", token: str = "", window: int = CONTEXT_WINDOW) -> str:
    """The context with the sample's token [start, end) in <mark> and every other token whose value is
    known (`values`: (start, end, value) character spans) shaded by value / `scale`; text escaped,
    trimmed around the mark. Spans that overlap the mark or each other, or fall outside the window,
    are left unshaded rather than guessed."""
    context = context or ""
    if not (0 <= start <= end <= len(context)):
        return esc(context[: 2 * window])
    left, right = max(0, start - window), min(len(context), end + window)
    spans = sorted((int(s), int(e), float(v)) for s, e, v in values if left <= s < e <= right and (e <= start or s >= end))
    out, cursor = ["…" if left > 0 else ""], left

    def piece(s: int, e: int, v: float | None, mark: bool) -> str:
        text = context[s:e] if e > s else token
        if mark:
            title = "" if v is None else f" title='{v:.4g}'"
            return f'<mark class="{cls}"{title}>{esc(visible(text))}</mark>'
        alpha = min(1.0, abs(v) / scale) if scale > 0 else 0.0
        return f"<span class='act' style='background: rgba(255, 140, 0, {alpha:.2f})' title='{v:.4g}'>{esc(text)}</span>"

    mark_value = next((v for s, e, v in values if int(s) == start and int(e) == end), None)
    events = sorted([(s, e, v, False) for s, e, v in spans] + [(start, end, mark_value, True)], key=lambda t: (t[0], not t[3]))
    for s, e, v, is_mark in events:
        if s < cursor:
            continue  # overlaps what is already written
        out.append(esc(context[cursor:s]))
        out.append(piece(s, e, v, is_mark))
        cursor = max(cursor, e)
    out.append(esc(context[cursor:right]) + ("…" if right < len(context) else ""))
    return "".join(out)


def histogram_svg(counts: list[float], edges: list[float], label: str, width: int = 360, height: int = 120,
                  tick: float | None = None, bar_labels: list[str] | None = None) -> str:
    """A small bar chart as inline SVG (no plotting library, so a page renders in a millisecond).
    Each bar carries its count and range in `data-` attributes and a tooltip."""
    n = len(counts)
    if n == 0:
        return ""
    top = max(max(counts), 1)
    pad, bottom = 4, 18
    bar_w = (width - 2 * pad) / n
    bars = []
    for i, c in enumerate(counts):
        h = (height - bottom - pad) * c / top
        x = pad + i * bar_w
        lo, hi = edges[i], edges[i + 1]
        bars.append(
            f"<rect class='bar' x='{x:.1f}' y='{height - bottom - h:.1f}' width='{max(bar_w - 1, 1):.1f}' height='{h:.1f}' "
            f"data-count='{c:g}' data-range='{lo:.4g}–{hi:.4g}'><title>{esc(bar_labels[i]) if bar_labels else f'{c:g} in [{lo:.4g}, {hi:.4g})'}</title></rect>"
        )
        if bar_labels:
            bars.append(f"<text x='{x + bar_w / 2:.1f}' y='{height - bottom - h - 3:.1f}' class='axis' text-anchor='middle'>{esc(bar_labels[i])}</text>")
    marker = ""
    if tick is not None and edges[-1] > edges[0]:
        tx = pad + (tick - edges[0]) / (edges[-1] - edges[0]) * (width - 2 * pad)
        marker = f"<line class='tick' x1='{tx:.1f}' x2='{tx:.1f}' y1='{pad}' y2='{height - bottom}' />"
    ends = "" if bar_labels else (
        f"<text x='{pad}' y='{height - 4}' class='axis'>{edges[0]:.3g}</text>"
        f"<text x='{width - pad}' y='{height - 4}' class='axis' text-anchor='end'>{edges[-1]:.3g}</text>"
    )
    axis = ends + f"<text x='{width / 2:.0f}' y='{height - 4}' class='axis' text-anchor='middle'>{esc(label)}</text>"
    return (f"<svg class='histogram' width='{width}' height='{height}' viewBox='0 0 {width} {height}' role='img' "
            f"aria-label='{esc(label)}'>{''.join(bars)}{marker}{axis}</svg>")
