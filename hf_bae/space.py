"""The Gradio feature browser (the Space in `spaces_app/`, and `hf-bae space`).

`build_demo(browser)` lays out four tabs (five when two dictionaries can be compared) over a `FeatureBrowser`:

- Overview: counts, dead / dense, code-set entropy, frequency and ComSem histograms; several
  atlases side by side.
- Features: the table, searchable (feature id, explanation text, or the samples' tokens and
  contexts: "which features fire on 'Senate'?") and sortable.
- Feature: explanation and score, frequency and (BAE) usual state and event, a density histogram,
  logit effects, top contexts sorted by value (one per document) with tokens shaded by value,
  quantile bands, judge verdicts, neighbours by decoder cosine.
- Try it: per token the features that fire with their values (click a token for its top features
  and their explanations; "rare only" hides usually-on codes), per feature where it fires; the
  first load of the LM shows what it is doing. Steering: add a feature's decoder direction at its
  site (strength in units of the site's typical activation norm) and see the next-token
  distribution before / after, with the KL divergence.
- Compare (two or more atlases with dictionaries): for each feature of A its nearest features of B
  by decoder cosine, with both explanations; every id opens that feature in its own atlas.

Clicking a row of any table, or a feature chip under a token, opens that feature's page. Each
view is also a named API endpoint (`/overview`, `/table`, `/feature`, `/try_it`, `/steer`, `/compare`) for
`gradio_client`. Gradio is imported only when the app is built, so the rest of hf_bae does not need it.
"""

import io
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .browser import DEFAULT_MAX_TOKENS, TABLE_COLUMNS, TABLE_SORT_KEYS, FeatureBrowser
from .configuration import option
from .formats import DEFAULT_BUILD_MARKER_FILE

ENV_PREFIX = "HF_BAE_"

CSS = """
.overview { display: flex; flex-wrap: wrap; gap: 12px; }
.atlas-card { border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 10px 14px; flex: 1 1 420px; }
.atlas-card h3 { margin: 0 0 4px 0; }
.atlas-card .prov { font-size: 0.85em; opacity: 0.75; margin: 0 0 8px 0; }
.stats { display: flex; flex-wrap: wrap; gap: 14px; }
.stat { display: flex; flex-direction: column; min-width: 90px; }
.stat b { font-size: 1.35em; }
.stat span { font-size: 0.8em; opacity: 0.8; }
mark.fire { background: #ffb347; color: #000; border-radius: 3px; padding: 0 2px; font-weight: 600; }
mark.quiet { background: #cfd8dc; color: #000; border-radius: 3px; padding: 0 2px; }
ol.samples li { margin: 4px 0; line-height: 1.5; }
ol.samples .score { display: inline-block; min-width: 3.5em; font-family: monospace; opacity: 0.7; margin-right: 6px; }
ol.samples .tok { font-family: monospace; font-size: 0.85em; opacity: 0.6; margin-left: 8px; }
.verdict { font-size: 0.8em; border-radius: 3px; padding: 0 4px; margin-left: 8px; }
.verdict.yes { background: #c8e6c9; color: #1b5e20; }
.verdict.no { background: #ffcdd2; color: #b71c1c; }
.verdict.unparseable { background: #eeeeee; color: #555; }
.badge { font-size: 0.55em; border-radius: 4px; padding: 1px 6px; vertical-align: middle; background: #eee; color: #333; }
.badge.dead { background: #ffcdd2; } .badge.dense { background: #fff3c4; }
.feature-header .explanation { font-size: 1.15em; }
.tokens { display: flex; flex-wrap: wrap; gap: 4px; }
.tok-cell { display: inline-flex; flex-direction: column; align-items: center; border: 1px solid var(--border-color-primary); border-radius: 4px; padding: 2px 4px; }
.tok-text { font-family: monospace; white-space: pre; }
.chips { display: flex; gap: 2px; }
.chip { font-size: 0.72em; border: none; border-radius: 3px; background: #e3f2fd; color: #0d47a1; cursor: pointer; padding: 0 4px; }
.chip:hover { background: #90caf9; }
.chip[data-value]::after { content: " " attr(data-value); opacity: 0.65; }
.tok-cell { cursor: pointer; }
.tok-cell.selected { outline: 2px solid #1976d2; }
.selected-token { border: 1px solid var(--border-color-primary); border-radius: 6px; padding: 6px 10px; margin-bottom: 8px; }
.selected-token table { font-size: 0.85em; margin-top: 4px; }
.selected-token td, .selected-token th { padding: 1px 8px; text-align: left; }
.feature-panels { display: flex; flex-wrap: wrap; gap: 18px; margin-top: 6px; }
.feature-panels h4 { margin: 0 0 4px 0; }
svg.histogram rect.bar { fill: #ff8c00; }
svg.histogram line.tick { stroke: #555; stroke-dasharray: 3 2; }
svg.histogram text.axis { font-size: 10px; fill: currentColor; }
.logit-cols { display: flex; gap: 24px; }
.logit-list { margin: 2px 0; padding-left: 1.6em; font-size: 0.88em; }
.logit-list .logit-token { font-family: monospace; margin-right: 8px; }
.logit-list.promoted .logit-value { color: #1b5e20; } .logit-list.suppressed .logit-value { color: #b71c1c; }
span.act { border-radius: 2px; }
ol.samples .value { font-family: monospace; font-size: 0.8em; opacity: 0.6; margin-right: 6px; }
.note { font-size: 0.85em; opacity: 0.8; }
.bands h4 { margin: 8px 0 2px 0; font-size: 0.9em; }
.steer-cols { display: flex; flex-wrap: wrap; gap: 24px; }
.steering table, table.compare { font-size: 0.88em; border-collapse: collapse; }
.steering td, .steering th { padding: 1px 8px; text-align: left; }
.steering .steer-token { font-family: monospace; }
.steering td.up { color: #1b5e20; } .steering td.down { color: #b71c1c; }
table.compare td, table.compare th { padding: 3px 8px; text-align: left; vertical-align: top; border-bottom: 1px solid var(--border-color-primary); }
table.compare ol.nearest { margin: 0; padding-left: 1.4em; }
table.compare .cos { font-family: monospace; margin: 0 6px; }
"""

# Clicks on a feature chip anywhere inside the component (delegated, so it survives re-renders).
# A click on a token (not on one of its chips) shows its top features, already in the page, in the
# selected-token panel: no round trip.
CHIP_JS = """
element.addEventListener('click', (event) => {
  const chip = event.target.closest('[data-feature], [data-open]');
  if (chip) {
    trigger('click', {feature: parseInt(chip.dataset.feature || chip.dataset.open, 10)});
    return;
  }
  const cell = event.target.closest('.tok-cell');
  const panel = element.querySelector('.selected-token');
  if (cell && panel) {
    element.querySelectorAll('.tok-cell.selected').forEach((c) => c.classList.remove('selected'));
    cell.classList.add('selected');
    panel.innerHTML = cell.querySelector('.token-detail').innerHTML;
  }
});
"""

# In the Compare tab an id opens that feature in its own atlas (A's or B's).
COMPARE_JS = """
element.addEventListener('click', (event) => {
  const chip = event.target.closest('[data-open]');
  if (chip) trigger('click', {feature: parseInt(chip.dataset.open, 10), atlas: chip.dataset.atlas});
});
"""

SEARCH_MODES = {"explanation": "", "token": "token:", "context": "context:"}


@dataclass
class SpaceArguments:
    """Options of the feature browser (`hf-bae space`, `python spaces_app/app.py`). Each can also be
    set by an environment variable named HF_BAE_<FIELD> (e.g. HF_BAE_ATLAS=dir1,dir2), which is how
    a Space is configured; the old names HF_BAE_MODEL (dictionary) and HF_BAE_LM (language model)
    are still read."""

    atlas: list[str] = option(
        [], "Feature atlas folder(s) or Hub dataset id(s) written by `hf-bae atlas`. Several: compared side by side. "
        "None: a small default atlas of the embedded model is built (once, then cached).",
    )
    dictionary: list[str] = option(
        [], "Dictionary folder(s) or Hub id(s), one per atlas in the same order; needed for neighbours and Try it. "
        "A missing one falls back to the dictionary recorded in the atlas. --model is its old name, still accepted.",
        aliases=["--model"],
    )
    name: list[str] = option([], "Labels of the atlases (default: the dictionary type).")
    base_model: str | None = option(
        None, "Language model for Try it (default: the dictionary's base_model). --lm is its old name, still accepted.",
        aliases=["--lm"],
    )
    max_tokens: int = option(DEFAULT_MAX_TOKENS, "Try-it input is truncated to this many tokens.")
    host: str | None = option(None, "Address to listen on (default: Gradio's, 127.0.0.1 or $GRADIO_SERVER_NAME).")
    port: int | None = option(None, "Port (default: Gradio's, 7860 or the next free one).")
    share: bool = option(False, "Create a public gradio.live link (needs the internet).")
    cache_dir: str | None = option(None, "Where the default atlas is built and cached (default: $HF_HOME/hf_bae/space-default).")

    def __post_init__(self):
        if self.max_tokens < 1:
            raise ValueError(f"--max_tokens must be >= 1, got {self.max_tokens}.")
        if len(self.dictionary) > len(self.atlas) and self.atlas:
            raise ValueError(f"Got {len(self.dictionary)} --dictionary for {len(self.atlas)} --atlas: pass one dictionary per atlas, "
                             "in the same order.")


# Environment variables of each option, the first set one wins (the later names are the old ones).
ENVIRONMENT_NAMES = {
    "atlas": ("ATLAS",),
    "dictionary": ("DICTIONARY", "MODEL"),
    "name": ("NAME",),
    "base_model": ("BASE_MODEL", "LM"),
    "max_tokens": ("MAX_TOKENS",),
    "cache_dir": ("CACHE_DIR",),
}


def apply_environment(args: SpaceArguments, environ: dict[str, str] | None = None) -> SpaceArguments:
    """Fill options left unset on the command line from HF_BAE_* environment variables (`ENVIRONMENT_NAMES`)."""
    environ = os.environ if environ is None else environ
    defaults = SpaceArguments()
    for key, names in ENVIRONMENT_NAMES.items():
        value = next((environ[ENV_PREFIX + n] for n in names if environ.get(ENV_PREFIX + n)), None)
        if value is None or getattr(args, key) != getattr(defaults, key):
            continue
        if isinstance(getattr(defaults, key), list):
            setattr(args, key, [v.strip() for v in value.split(",") if v.strip()])
        else:
            setattr(args, key, int(value) if key == "max_tokens" else value)
    args.__post_init__()
    return args


# The default atlas: a BAE on the residual stream after layer 6 of the embedded SmolLM2-135M-Instruct
# (as `hf-bae demo`), trained on State of the Union paragraphs. Small enough to build in a few CPU
# minutes on first start; a real Space points HF_BAE_ATLAS / HF_BAE_MODEL at its own.
DEFAULT_LAYER = 6
DEFAULT_TRAIN_TOKENS = 60_000
DEFAULT_ATLAS_TEXTS = 400


def default_cache_dir() -> Path:
    """Where the default dictionary and atlas are kept: `$HF_BAE_CACHE` (else `$HF_HOME/hf_bae`)/space-default-<version>."""
    from .embedded import cache_root
    from .version import __version__

    return cache_root() / f"space-default-{__version__}"


def default_inputs(cache_dir: str | os.PathLike | None = None, *, train_tokens: int = DEFAULT_TRAIN_TOKENS,
                   atlas_texts: int = DEFAULT_ATLAS_TEXTS, progress: bool = True) -> tuple[str, str]:
    """The default dictionary and atlas, `(dictionary folder, atlas folder)`: built with the library
    (`hf_bae.training.train`, then `hf_bae.interpret.atlas.build_atlas`) on the embedded model and
    corpus the first time, offline, and reused from `cache_dir` afterwards.

    The run is built in a temporary sibling folder and renamed into place at the end, so an
    interrupted build is never mistaken for a finished one.
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    dictionary, atlas = root / "run" / "bae", root / "atlas"
    if (root / DEFAULT_BUILD_MARKER_FILE).is_file():
        return str(dictionary), str(atlas)
    from .activations import load_language_model, load_texts
    from .formats import CHECKPOINTS_DIR
    from .interpret.atlas import AtlasConfig, build_atlas
    from .interpret.atlas_format import save_atlas
    from .loading import load_dictionary
    from .training import BAEArguments, DictionaryArguments, brief_arguments, train

    print(f"hf_bae space: building the default atlas in {root} (once; a few minutes on a CPU)...", flush=True)
    work = root.parent / f"{root.name}.partial-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    args = brief_arguments(  # a brief run: validated once at the end, no checkpoints kept, no plots
        work / "run", dictionaries=["bae"], layer=DEFAULT_LAYER, site="resid_post", batch_size=512, learning_rate=1e-3,
        max_tokens=train_tokens, validation_tokens=2048, validation_texts=16, progress=progress,
    )
    train(args, DictionaryArguments(expansion_factor=4), BAEArguments(entropy_weight=1e-4, covariance_weight=1e-7))
    bae = load_dictionary(work / "run" / "bae", kind="BAE")
    model, tokenizer = load_language_model("embedded")
    dataset, info = build_atlas(
        bae, model, tokenizer, lambda: load_texts("embedded", max_texts=atlas_texts), AtlasConfig(samples_per_feature=20),
        source={"base_model": bae.config.base_model, "base_model_revision": bae.config.base_model_revision,
                "dataset": "embedded", "num_texts": atlas_texts},
        dictionary_paths=[str(dictionary)], progress=progress,
    )
    save_atlas(dataset, info, work / "atlas")
    shutil.rmtree(work / "run" / CHECKPOINTS_DIR, ignore_errors=True)
    (work / DEFAULT_BUILD_MARKER_FILE).write_text(json.dumps({"train_tokens": train_tokens, "atlas_texts": atlas_texts, "layer": DEFAULT_LAYER}))
    root.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(work, root)
    except OSError:  # another process finished first: keep its build
        shutil.rmtree(work, ignore_errors=True)
        if not (root / DEFAULT_BUILD_MARKER_FILE).is_file():
            raise
    return str(dictionary), str(atlas)


def browser_from_arguments(args: SpaceArguments) -> FeatureBrowser:
    """Load what `args` names (or build the default atlas when it names none)."""
    atlases, dictionaries = list(args.atlas), list(args.dictionary)
    if not atlases:
        dictionary_dir, atlas_dir = default_inputs(args.cache_dir)
        atlases, dictionaries = [atlas_dir], [dictionary_dir]
    return FeatureBrowser.from_paths(atlases, dictionaries, language_model=args.base_model, names=args.name, max_tokens=args.max_tokens)


def _image(png: bytes):
    from PIL import Image

    return Image.open(io.BytesIO(png))


def build_demo(browser: FeatureBrowser):
    """The Gradio Blocks app over `browser`."""
    import gradio as gr  # here, so that `hf-bae space --help` does not wait for it
    import pandas as pd
    names = browser.names
    multi = len(names) > 1
    cache: dict[str, Any] = {}
    browser.overview()  # plots are drawn at start-up, not on the first visit

    def guard(fn):
        # Bad input becomes a message in the UI (and an error for API clients), never a traceback.
        def wrapped(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except ValueError as err:
                raise gr.Error(str(err), print_exception=False) from err

        wrapped.__name__ = fn.__name__
        wrapped.__doc__ = fn.__doc__
        return wrapped

    @guard
    def overview():
        """Summary HTML, per-atlas numbers, frequency histogram, ComSem score histogram."""
        if "overview" not in cache:
            summary_html, rows, freq_png, score_png = browser.overview()
            numbers = pd.DataFrame(rows).map(lambda v: float(f"{v:.4g}") if isinstance(v, float) else v)
            cache["overview"] = (summary_html, numbers, _image(freq_png), _image(score_png))
        return cache["overview"]

    @guard
    def table(atlas: str, query: str, sort_by: str, descending: bool, hide_dead: bool, page: float):
        """One page of the feature table (50 rows) and a line saying which rows these are."""
        page = max(1, int(page or 1))
        rows, total = browser.table(atlas, query, sort_by, bool(descending), bool(hide_dead), page, 50)
        first = (page - 1) * 50 + 1
        info = f"{total:,} matching features" + (f" · rows {first:,}–{first + len(rows) - 1:,}" if rows else " · no rows on this page")
        return pd.DataFrame(rows, columns=TABLE_COLUMNS), info

    def table_ui(atlas: str, query: str, search_in: str, sort_by: str, descending: bool, hide_dead: bool, page: float):
        q = (query or "").strip()
        prefix = SEARCH_MODES.get(search_in or "explanation", "")
        if prefix and q and not q.lower().startswith(tuple(SEARCH_MODES.values())[1:]):
            q = prefix + q
        return table(atlas, q, sort_by, descending, hide_dead, page)

    @guard
    def feature(atlas: str, feature_id: float | None):
        """Feature page: header, samples, verdicts, neighbours, non-activating samples."""
        if feature_id is None:
            raise ValueError("Enter a feature id.")
        if float(feature_id) != int(feature_id):
            raise ValueError(f"Feature id must be an integer, got {feature_id}.")
        page = browser.feature(atlas, int(feature_id))
        return (
            page.header_html,
            page.samples_html,
            pd.DataFrame(page.verdicts, columns=["split", "sample", "token", "answer"]),
            pd.DataFrame(page.neighbours, columns=["feature", "cosine", "frequency", "explanation"]),
            page.non_activating_html,
        )

    @guard
    def try_it(atlas: str, text: str, rare_only: bool = False, progress=gr.Progress()):
        """Notice, per-token HTML (feature chips with values; a click on a token lists its top features),
        per-feature table, per-token table."""
        pending = browser.lm_pending(atlas)
        if pending:
            progress(0.05, desc=pending)  # what the wait is for, not a bare timer
            print(f"hf_bae space: {pending}", flush=True)
        result = browser.try_it(atlas, text, rare_only=bool(rare_only))
        return (
            result.notice,
            result.tokens_html,
            pd.DataFrame(result.per_feature, columns=["feature", "tokens", "where it fires ([token])", "explanation"]),
            pd.DataFrame(result.per_token, columns=["position", "token", "features firing", "strongest features", "their values"]),
        )

    @guard
    def steer(atlas: str, text: str, feature_id: float | None, strength: float = 4.0, progress=gr.Progress()):
        """Steering HTML: the feature's decoder direction added at its site at `strength` times the site's
        typical activation norm; the next-token distribution before / after and the KL divergence."""
        if feature_id is None:
            raise ValueError("Enter the id of the feature to steer with.")
        pending = browser.lm_pending(atlas)
        if pending:
            progress(0.05, desc=pending)
            print(f"hf_bae space: {pending}", flush=True)
        return browser.steer(atlas, text, feature_id, float(strength)).html

    @guard
    def compare_view(a: str, b: str, query: str = "", page: float = 1):
        """One page (25 features) of A with each feature's nearest features of B by decoder cosine, and a line
        saying which features these are."""
        page = max(1, int(page or 1))
        body, total = browser.compare(a, b, query or "", page, 25)
        first = (page - 1) * 25 + 1
        return body, f"{total:,} features of {a}" + (f" · {first:,}–{min(total, first + 24):,}" if total >= first else " · none on this page")

    def open_from_compare(evt: gr.EventData):
        return int(evt.feature), gr.Dropdown(value=evt.atlas), gr.Tabs(selected="feature")

    def retoggle(atlas: str, text: str, rare_only: bool):
        # The toggle re-runs an analysis already asked for; with no text yet it waits for one.
        if not (text or "").strip():
            return tuple(gr.skip() for _ in range(4))
        return try_it(atlas, text, rare_only)

    def open_from_table(evt: gr.SelectData):
        row = evt.row_value
        if not row or row[0] in (None, ""):
            raise gr.Error("Click a row that holds a feature.")
        return int(row[0]), gr.Tabs(selected="feature")

    def open_from_chip(evt: gr.EventData):
        return int(evt.feature), gr.Tabs(selected="feature")

    with gr.Blocks(title="hf_bae feature browser") as demo:
        gr.Markdown("# hf_bae feature browser")
        with gr.Row():
            atlas = gr.Dropdown(choices=names, value=names[0], label="Dictionary", visible=multi, elem_id="atlas-choice", scale=1)
            provenance = gr.Markdown(browser.describe(names[0]), elem_id="provenance")
        with gr.Tabs(selected="overview") as tabs:
            with gr.Tab("Overview", id="overview"):
                summary = gr.HTML(elem_id="overview-summary", js_on_load=None)
                compare = gr.Dataframe(label="Side by side" if multi else "Numbers", interactive=False, elem_id="overview-table")
                with gr.Row():
                    freq_plot = gr.Image(label="Feature frequencies", type="pil", format="png", interactive=False, elem_id="frequency-plot")
                    score_plot = gr.Image(label="ComSem scores", type="pil", format="png", interactive=False, elem_id="score-plot")
            with gr.Tab("Features", id="table"):
                with gr.Row():
                    query = gr.Textbox(label="Search (feature id, explanation, or a token / context of the samples)", elem_id="table-query",
                                       scale=3, placeholder="e.g. budget · token:Senate · context:the Senate")
                    search_in = gr.Radio(choices=list(SEARCH_MODES), value="explanation", label="Search in", elem_id="table-search-in", scale=2)
                    sort_by = gr.Dropdown(choices=list(TABLE_SORT_KEYS), value="feature", label="Sort by", scale=1)
                    descending = gr.Checkbox(label="Descending", value=False, scale=1)
                    hide_dead = gr.Checkbox(label="Hide dead", value=False, scale=1)
                    page = gr.Number(label="Page", value=1, precision=0, minimum=1, scale=1)
                table_info = gr.Markdown(elem_id="table-info")
                features = gr.Dataframe(headers=TABLE_COLUMNS, interactive=False, wrap=True, elem_id="feature-table", max_height=600,
                                        column_widths=["8%", "10%", "7%", "10%", "8%", "57%"])
                gr.Markdown("Click a row to open the feature.")
            with gr.Tab("Feature", id="feature"):
                with gr.Row():
                    feature_id = gr.Number(label="Feature id", value=None, precision=0, elem_id="feature-id", scale=3)
                    show = gr.Button("Show", variant="primary", elem_id="feature-show", scale=1)
                header = gr.HTML(elem_id="feature-header", js_on_load=None)
                gr.Markdown("### Top contexts (strongest first; the sample's token highlighted, tokens shaded by value)")
                samples = gr.HTML(elem_id="feature-samples", js_on_load=None)
                with gr.Row():
                    neighbours = gr.Dataframe(label="Neighbours by decoder cosine (click a row to open it)", interactive=False, wrap=True,
                                              elem_id="feature-neighbours", scale=3, column_widths=["12%", "12%", "14%", "62%"])
                    verdicts = gr.Dataframe(label="Judge verdicts", interactive=False, elem_id="feature-verdicts", scale=2)
                with gr.Accordion("Non-activating samples", open=False):
                    non_activating = gr.HTML(elem_id="feature-non-activating", js_on_load=None)
            with gr.Tab("Try it", id="tryit"):
                text = gr.Textbox(label=f"Text (up to {browser.max_tokens} tokens are analysed)", lines=3, elem_id="tryit-text",
                                  placeholder="Type a sentence and press Analyse")
                with gr.Row():
                    run = gr.Button("Analyse", variant="primary", elem_id="tryit-run", scale=3)
                    rare = gr.Checkbox(label="Rare features only (frequency below the dense threshold)", value=False, elem_id="tryit-rare", scale=2)
                notice = gr.Markdown(elem_id="tryit-notice")
                gr.Markdown("Each token with its strongest features and their values; click a token for its top features, a feature to open it.")
                tokens_html = gr.HTML(elem_id="tryit-tokens", js_on_load=CHIP_JS)
                per_feature = gr.Dataframe(label="Features that fire, strongest first (click a row to open it)", interactive=False, wrap=True,
                                           elem_id="tryit-features", column_widths=["8%", "8%", "54%", "30%"], max_height=500)
                with gr.Accordion("Per token", open=False):
                    per_token = gr.Dataframe(interactive=False, elem_id="tryit-tokens-table")
                gr.Markdown("### Steer: add a feature's decoder direction and see the next token change")
                with gr.Row():
                    steer_feature = gr.Number(label="Feature", value=None, precision=0, elem_id="steer-feature", scale=1)
                    steer_strength = gr.Slider(-10, 10, value=4, step=0.5, elem_id="steer-strength", scale=3,
                                               label="Strength, in units of the site's typical activation norm (the mean ‖activation‖ over the text's tokens)")
                    steer_run = gr.Button("Steer", elem_id="steer-run", scale=1)
                gr.Markdown("The direction is the feature's decoder column, signed so that a positive strength moves toward its event "
                            "(a usually-on BAE code: toward off), added at every token of the text above.", elem_classes=["note"])
                steer_out = gr.HTML(elem_id="steer-result", js_on_load=None)
            comparable = browser.comparable
            if len(comparable) >= 2:
                with gr.Tab("Compare", id="compare") as compare_tab:
                    with gr.Row():
                        compare_a = gr.Dropdown(choices=comparable, value=comparable[0], label="A", elem_id="compare-a", scale=1)
                        compare_b = gr.Dropdown(choices=comparable, value=comparable[1], label="B", elem_id="compare-b", scale=1)
                        compare_query = gr.Textbox(label="Features of A (id, explanation, token:… / context:…)", elem_id="compare-query", scale=3)
                        compare_page = gr.Number(label="Page", value=1, precision=0, minimum=1, elem_id="compare-page", scale=1)
                    compare_info = gr.Markdown(elem_id="compare-info")
                    compare_html = gr.HTML(elem_id="compare-result", js_on_load=COMPARE_JS)

        table_inputs = [atlas, query, sort_by, descending, hide_dead, page]
        ui_table_inputs = [atlas, query, search_in, sort_by, descending, hide_dead, page]
        feature_outputs = [header, samples, verdicts, neighbours, non_activating]
        demo.load(overview, outputs=[summary, compare, freq_plot, score_plot], api_name="overview")
        demo.load(table, inputs=table_inputs, outputs=[features, table_info], api_name="table")
        for trigger in (query.submit, search_in.change, sort_by.change, descending.change, hide_dead.change, page.submit, atlas.change):
            trigger(table_ui, inputs=ui_table_inputs, outputs=[features, table_info], api_visibility="private")
        atlas.change(browser.describe, inputs=atlas, outputs=provenance, api_visibility="private")
        show.click(feature, inputs=[atlas, feature_id], outputs=feature_outputs, api_name="feature")
        feature_id.submit(feature, inputs=[atlas, feature_id], outputs=feature_outputs, api_visibility="private")
        for source in (features, neighbours, per_feature):
            source.select(open_from_table, outputs=[feature_id, tabs], api_visibility="private").success(
                feature, inputs=[atlas, feature_id], outputs=feature_outputs, api_visibility="private"
            )
        tokens_html.click(open_from_chip, outputs=[feature_id, tabs], api_visibility="private").success(
            feature, inputs=[atlas, feature_id], outputs=feature_outputs, api_visibility="private"
        )
        # Try it runs the LM: one at a time, so a CPU Space stays responsive for the other views.
        try_outputs = [notice, tokens_html, per_feature, per_token]
        # As an API endpoint the toggle is an optional third input (gradio_client fills its default).
        run.click(try_it, inputs=[atlas, text, rare], outputs=try_outputs, api_name="try_it", concurrency_limit=1, concurrency_id="lm")
        text.submit(try_it, inputs=[atlas, text, rare], outputs=try_outputs, api_visibility="private", concurrency_limit=1, concurrency_id="lm")
        steer_inputs = [atlas, text, steer_feature, steer_strength]
        steer_run.click(steer, inputs=steer_inputs, outputs=steer_out, api_name="steer", concurrency_limit=1, concurrency_id="lm")
        steer_feature.submit(steer, inputs=steer_inputs, outputs=steer_out, api_visibility="private", concurrency_limit=1, concurrency_id="lm")
        if len(comparable) >= 2:
            compare_inputs = [compare_a, compare_b, compare_query, compare_page]
            compare_outputs = [compare_html, compare_info]
            compare_tab.select(compare_view, inputs=compare_inputs, outputs=compare_outputs, api_name="compare")
            for trigger in (compare_a.change, compare_b.change, compare_query.submit, compare_page.submit):
                trigger(compare_view, inputs=compare_inputs, outputs=compare_outputs, api_visibility="private")
            compare_html.click(open_from_compare, outputs=[feature_id, atlas, tabs], api_visibility="private").success(
                feature, inputs=[atlas, feature_id], outputs=feature_outputs, api_visibility="private"
            )
        rare.change(retoggle, inputs=[atlas, text, rare], outputs=try_outputs, api_visibility="private", concurrency_limit=1, concurrency_id="lm")
    return demo


def launch(browser: FeatureBrowser, host: str | None = None, port: int | None = None, share: bool = False, **kwargs: Any):
    """Build the app and serve it (blocks unless `prevent_thread_lock=True`); returns the Blocks."""
    demo = build_demo(browser)
    demo.queue(default_concurrency_limit=8)
    demo.launch(server_name=host, server_port=port, share=share, css=CSS, show_error=True, ssr_mode=False, **kwargs)
    return demo
