"""Model cards for dictionaries: Hub metadata (`ModelCardData` with a model-index of the metrics) and
a README body rendered from the Jinja templates in `model_cards/`.

The templates' canonical copy is `model_cards/` at the repository root; an installed wheel carries
them as `hf_bae/model_cards/` (setup.py maps one onto the other), and `model_cards_dir()` finds either.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .formats import config_hookpoint
from .version import __version__

CARD_TEMPLATE = "model_card.md.j2"

PAPER_CITATION = """@article{cho2025binary,
  title   = {Binary Autoencoder for Mechanistic Interpretability of Large Language Models},
  author  = {Cho, Hakaze and Yang, Haolin and Kurkoski, Brian M. and Inoue, Naoya},
  journal = {arXiv preprint arXiv:2509.20997},
  year    = {2025},
  url     = {https://arxiv.org/abs/2509.20997}
}"""

# key (as in eval_results.json / comsem.json) -> (label, meaning). Also the order of the card's table.
METRICS: dict[str, tuple[str, str]] = {
    "fvu": ("FVU", "fraction of variance unexplained, Σ‖h − ĥ‖² / Σ‖h − mean(h)‖² (lower is better)"),
    "explained_variance": ("Explained variance", "1 − FVU"),
    "mse": ("MSE", "mean squared reconstruction error per dimension"),
    "l0": ("L0", "mean number of features firing per token"),
    "dead_fraction": ("Dead", "share of features that never fired on the validation tokens"),
    "dense_fraction": ("Dense", "share of features firing on more than `dense_threshold` of the tokens (in eval_results.json)"),
    "code_entropy_bits": ("Code entropy (bits)", "BAE only: Σ_j H_b(q_j) over the binary codes, the paper's feature-set entropy"),
    "ce_loss_score": ("CE loss score", "share of the LM's loss increase from zero-ablating the site that splicing in ĥ recovers (1 is perfect)"),
    "kl_divergence": ("KL", "KL divergence of the LM's next-token distribution with ĥ spliced in from the original one (nats)"),
    "js_divergence": ("JS", "Jensen–Shannon divergence between the same two distributions"),
    "comsem_score": ("ComSem", "ComSem score of the features' LLM explanations (`hf-bae interpret`)"),
    "interpretable_fraction": ("Interpretable", "share of the interpreted features (those with too few samples count as not interpretable) whose ComSem score reaches the threshold"),
    "num_tokens": ("Tokens", "number of validation tokens the metrics were computed on"),
}
PERCENT_METRICS = ("dead_fraction", "dense_fraction", "interpretable_fraction")
COMSEM_METRICS = ("comsem_score", "interpretable_fraction")


def comsem_unmeasured(report: dict[str, Any], require_fields: bool = True) -> str | None:
    """Why a `comsem.json` report holds no measured ComSem result, or None when it does.

    A result is measured when at least one feature was scored and the score is a number. A run in which
    every LLM call failed, or every answer was unparseable, reports `features_scored: 0`; a report
    without the field is not one `hf-bae interpret` wrote (`require_fields=False` lets one through when its
    score is a number: for files already in a repo or a dictionary folder, which are skipped, not refused).
    """
    if not isinstance(report, dict):
        return "it is not a JSON object"
    if "features_scored" not in report and require_fields:
        return "it has no features_scored field (it is not a ComSem result of `hf-bae interpret`)"
    scored = report.get("features_scored", 1)
    if not is_number(scored) or scored < 1:
        return f"no feature was scored in it (features_scored: {scored!r}): the run measured nothing"
    if not is_number(report.get("comsem_score")):
        return f"its comsem_score is {report.get('comsem_score')!r}, not a number"
    return None


def shown_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The metrics a card may show: an interpretable fraction without a ComSem score beside it was not
    measured (a run where nothing was scored reports 0.0), so it is dropped with the score."""
    if is_number(metrics.get("comsem_score")):
        return metrics
    return {k: v for k, v in metrics.items() if k not in COMSEM_METRICS}


@dataclass
class CardEntry:
    """One dictionary as a card shows it.

    Args:
        subfolder: where it lives in the repo (`""` for the root).
        name: its name (the subfolder, or its hookpoint for a root dictionary).
        config: its `config.json` content.
        metrics: `eval_results.json` merged with the ComSem scores.
        plots: repo-relative paths of its plots.
        saelens: repo-relative folder of its SAELens copy, if any.
    """

    subfolder: str
    name: str
    config: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    plots: list[str] = field(default_factory=list)
    saelens: str | None = None


def model_cards_dir() -> Path:
    """Folder of the Jinja card templates: the source checkout's `model_cards/` (the canonical copy), or
    `hf_bae/model_cards/` inside an installed wheel."""
    here = Path(__file__).resolve().parent
    for folder in (here.parent / "model_cards", here / "model_cards"):
        if (folder / CARD_TEMPLATE).is_file():
            return folder
    raise FileNotFoundError(
        f"hf_bae's model card templates ({CARD_TEMPLATE}) are in neither {here.parent / 'model_cards'} nor "
        f"{here / 'model_cards'}: reinstall hf_bae."
    )


def site_meaning(site: str, layer: int | None) -> str:
    """What a site at a layer is, in transformers terms."""
    if layer is None:
        return f"{site} of an unrecorded layer"
    return {
        "resid_post": f"the residual stream after decoder layer {layer} (0-based): `hidden_states[{layer + 1}]` of "
        "`model(..., output_hidden_states=True)` (index 0 is the embedding output)",
        "mlp_in": f"the input of layer {layer}'s MLP (0-based) after its normalisation (a forward pre-hook on the MLP, "
        f"e.g. `model.model.layers[{layer}].mlp` in Llama-family models)",
        "mlp_out": f"the output of layer {layer}'s MLP (0-based; a forward hook on the MLP, e.g. `model.model.layers[{layer}].mlp`)",
    }.get(site, f"{site} of layer {layer}")


def is_transcoder(config: dict[str, Any]) -> bool:
    return bool(config.get("output_site")) and config.get("output_site") != config.get("site")


def _bae_label(config: dict[str, Any]) -> str:
    bits = config.get("bits", 1)
    return "Binary autoencoder" + (f" ({bits} bits per feature)" if bits != 1 else "")


def _sae_label(config: dict[str, Any]) -> str:
    activation = config.get("activation", "relu")
    label = {
        "relu": "ReLU SAE",
        "topk": f"TopK SAE (k={config.get('k')})",
        "jumprelu": f"JumpReLU SAE (θ={config.get('jumprelu_threshold')})",
        "legacy_topk": f"TopK SAE, original code's variant (k={config.get('k')})",
    }.get(activation, f"SAE ({activation} activation)")
    if is_transcoder(config):
        label = label.replace("SAE", "transcoder") + f" → {config['output_site']}"
    return label


@dataclass(frozen=True)
class KindCard:
    """What a card says about one dictionary kind (cards read `config.json` dicts, not models)."""

    label: Callable[[dict[str, Any]], str]  # a short human name of the architecture
    tag: str  # the Hub tag of the kind
    binary: bool  # binary codes (a BAE): the usage snippet shows codes, not latents
    activation_tag: bool  # tag the activation function (topk, relu, ...) too


# config model_type -> its card; an unknown model_type reads as a sparse autoencoder's.
KIND_CARDS = {
    "binary_autoencoder": KindCard(_bae_label, "binary-autoencoder", binary=True, activation_tag=False),
    "sparse_autoencoder": KindCard(_sae_label, "sparse-autoencoder", binary=False, activation_tag=True),
}


def kind_card(config: dict[str, Any]) -> KindCard:
    return KIND_CARDS.get(config.get("model_type"), KIND_CARDS["sparse_autoencoder"])


def kind(config: dict[str, Any]) -> str:
    """A short human name of the dictionary's architecture ("TopK SAE (k=32)")."""
    return kind_card(config).label(config)


def num_latents(config: dict[str, Any]) -> int:
    return config.get("latent_size") or config.get("expansion_factor", 4) * config.get("hidden_size", 0)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_hub_id(value: Any) -> bool:
    """Whether metadata may name `value` as a Hub repo: a valid `namespace/name` that is not a local path
    (names without a namespace are local corpora such as "sotu" far more often than legacy Hub repos)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not isinstance(value, str) or value.count("/") != 1 or value.startswith((".", "/", "~")) or Path(value).exists():
        return False
    try:
        validate_repo_id(value)
    except HFValidationError:
        return False
    return True


def card_data(entries: Sequence[CardEntry], repo_id: str, *, license: str | None = "mit", atlas_repo: str | None = None,
              tags: Sequence[str] = ()):
    """The Hub metadata of a card as a `huggingface_hub.ModelCardData`.

    The model-index has one result per dictionary and metric: task `feature-extraction`, dataset = the
    training dataset with the dictionary's name as its `config` (so that hookpoints stay apart) and the
    `validation` split.
    """
    from huggingface_hub import EvalResult, ModelCardData

    model_types = {e.config.get("model_type") for e in entries}
    all_tags = ["hf_bae", "interpretability", "mechanistic-interpretability", "dictionary-learning"]
    all_tags += [card.tag for model_type, card in KIND_CARDS.items() if model_type in model_types]
    for e in entries:
        if e.config.get("model_type") in KIND_CARDS and kind_card(e.config).activation_tag:
            all_tags.append(e.config.get("activation", "relu").replace("_", "-"))
            if is_transcoder(e.config):
                all_tags.append("transcoder")
        if e.saelens:
            all_tags.append("saelens")
    all_tags += list(tags)
    base_models = sorted({e.config["base_model"] for e in entries if _is_hub_id(e.config.get("base_model"))})
    datasets = sorted({e.config["dataset"] for e in entries if _is_hub_id(e.config.get("dataset"))})
    if atlas_repo:
        datasets.append(atlas_repo)
    results = []
    for e in entries:
        source = e.config.get("dataset") or "unrecorded dataset"
        metrics = shown_metrics(e.metrics)
        for key, (label, _) in METRICS.items():
            value = metrics.get(key)
            if not is_number(value):
                continue
            results.append(EvalResult(
                task_type="feature-extraction",
                task_name="Activation reconstruction",
                dataset_type=e.config.get("dataset") or "unrecorded",
                dataset_name=f"{source}: {e.config.get('base_model') or 'LM'} activations at {config_hookpoint(e.config) or e.name}",
                dataset_config=e.name,
                dataset_split="validation",
                metric_type=key,
                metric_name=label,
                metric_value=int(value) if key == "num_tokens" else float(value),
            ))
    return ModelCardData(
        library_name="hf_bae",
        license=license,
        tags=list(dict.fromkeys(all_tags)),
        base_model=(base_models[0] if len(base_models) == 1 else base_models) or None,
        datasets=datasets or None,
        model_name=repo_id.split("/")[-1],
        eval_results=results or None,
    )


def format_metric(key: str, value: Any) -> str:
    if not is_number(value):
        return "–"
    if key == "num_tokens":
        return f"{int(value):,}"
    if key in PERCENT_METRICS:
        return f"{100 * value:.1f}%"
    if key in ("l0", "code_entropy_bits"):
        return f"{value:.1f}"
    return f"{value:.4g}"


def _example(rows: list[dict]) -> dict:
    """The dictionary the usage snippet shows: a residual-stream one (simplest to feed), BAEs first."""
    return min(rows, key=lambda r: (r["site"] != "resid_post" or r["layer"] is None, not r["is_bae"]))


def render_card(entries: Sequence[CardEntry], repo_id: str, *, license: str | None = "mit",
                atlas_repo: str | None = None, tags: Sequence[str] = ()):
    """The README of a repo holding `entries`, as a `huggingface_hub.ModelCard`."""
    import jinja2
    from huggingface_hub import ModelCard

    if not entries:
        raise ValueError("A model card needs at least one dictionary.")
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(model_cards_dir())),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    shown = [shown_metrics(e.metrics) for e in entries]
    columns = [(key, label) for key, (label, _) in METRICS.items() if any(is_number(m.get(key)) for m in shown)]
    help_text = {key: meaning for key, (_, meaning) in METRICS.items()}
    thresholds = {e.metrics.get("dense_threshold") for e in entries if is_number(e.metrics.get("dense_fraction"))}
    if len(thresholds) == 1 and is_number(next(iter(thresholds))):
        help_text["dense_fraction"] = f"share of features firing on more than {100 * next(iter(thresholds)):g}% of the tokens"
    rows = []
    for e, metrics in zip(entries, shown):
        c = e.config
        rows.append({
            "entry": e,
            "kind": kind(c),
            "is_bae": kind_card(c).binary,
            "hookpoint": config_hookpoint(c) or "unrecorded",
            "layer": c.get("layer"),
            "site": c.get("site", "resid_post"),
            "site_meaning": site_meaning(c.get("site", "resid_post"), c.get("layer")),
            "output_site_meaning": site_meaning(c["output_site"], c.get("layer")) if is_transcoder(c) else None,
            "num_latents": num_latents(c),
            "values": {key: format_metric(key, metrics.get(key)) for key, _ in columns},
            "plots": [(Path(p).stem.replace("_", " "), p) for p in e.plots],
        })
    data = card_data(entries, repo_id, license=license, atlas_repo=atlas_repo, tags=tags)
    content = env.get_template(CARD_TEMPLATE).render(
        card_data=data.to_yaml(),
        repo_id=repo_id,
        title=repo_id.split("/")[-1],
        rows=rows,
        example=_example(rows),
        columns=columns,
        metric_help=[(label, help_text[key]) for key, label in columns],
        base_models=sorted({e.config.get("base_model") or "an unrecorded model" for e in entries}),
        any_bae=any(r["is_bae"] for r in rows),
        any_sae=any(not r["is_bae"] for r in rows),
        any_saelens=any(e.saelens for e in entries),
        atlas_repo=atlas_repo,
        citation=PAPER_CITATION,
        hf_bae_version=__version__,
    )
    return ModelCard(content)
