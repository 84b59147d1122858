"""`hf-bae entropy`: feature-set entropy of a language model's hidden states, read by trained BAEs.

Sub-commands (each has its own --help):

    estimate   entropy of a BAE on a dataset, at the BAE's own site: one number with an error bar
    layers     bits per layer (one BAE per layer; --train trains them first): CSV + PNG
    icl        bits and LM accuracy against the number of in-context demonstrations k = 0..K: CSV + PNG
    positions  bits per token position (one BAE per position, as the paper; --train trains them): CSV + PNG
    steer      ICL steering: a task vector from the BAE features that k-shot prompts switch, added in
               0-shot prompts, against the centroid-difference vector: JSON

Examples (offline, on the embedded model and corpus):

    hf-bae entropy layers --train --layers 3 9 15 21 --output_dir runs/entropy_layers
    hf-bae entropy layers --bae_dir runs/entropy_layers/baes --output_dir runs/entropy_layers
    hf-bae entropy icl --bae runs/entropy_layers/baes/layer_15 --task antonyms --max_shots 4
    hf-bae entropy positions --train --layer 9 --max_position 32 --output_dir runs/entropy_positions
    hf-bae entropy steer --bae runs/entropy_layers/baes/layer_15 --task country_capital --shots 4
    hf-bae entropy estimate --bae runs/demo/bae --num_tokens 50000

Numbers are in bits: the Miller–Madow corrected sum of per-code binary entropies with a Poisson
bootstrap interval (texts or prompts are the resampled units). The sum equals the joint entropy only
for independent codes: check `mean_abs_correlation` and `max_pairwise_mutual_information_bits`.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..arguments import parse
from ..configuration import option
from ._common import run_or_explain, setup_logging

SUBCOMMANDS = ("estimate", "layers", "icl", "positions", "steer")




@dataclass
class SourceArguments:
    """Where the hidden states come from."""

    model: str = option("embedded", "Causal LM: 'embedded' (SmolLM2-135M-Instruct, offline), a Hub id or a local folder. "
                        "Default with --bae/--bae_dir: the base model recorded in the BAE's config.")
    revision: str | None = option(None, "Hub revision of the model.")
    dataset: str = option("embedded", "Text: 'embedded' (State of the Union paragraphs, offline), a Hub dataset id, or a "
                          "local .txt/.jsonl/.csv/.parquet file or folder.")
    dataset_config: str | None = option(None, "Configuration name of a Hub dataset.")
    split: str = option("train", "Dataset split.")
    text_column: str = option("text", "Column holding the text.")
    context_length: int = option(128, "Tokens per packed row.")
    lm_batch_size: int = option(8, "Rows (or prompts) per forward pass.")
    num_tokens: int = option(20_000, "Tokens evaluated (estimate, layers).")
    model_dtype: str | None = option(None, "dtype of the LM: float32 (CPU default), bfloat16, float16, auto.")
    device: str | None = option(None, "Device (default: cuda if available, else cpu).")


@dataclass
class EstimatorArguments:
    """The estimate and where it is written."""

    output_dir: str = option("runs/entropy", "Folder for the CSV / JSON / PNG outputs (created).")
    num_bootstrap: int = option(200, "Bootstrap replicates for the interval (0: none).")
    confidence: float = option(0.95, "Confidence level of the interval.")
    min_samples: int = option(256, "Warn when an estimate rests on fewer hidden states than this.")
    seed: int = option(0, "Seed of the bootstrap, of prompt sampling and of --train.")
    progress: bool = option(True, "Show progress bars (--no_progress hides them).")


@dataclass
class TrainOptions:
    """--train: fit the BAEs first (hf_bae.training's loop), on texts after the evaluated ones."""

    train: bool = option(False, "Train the BAEs instead of loading them; they are saved under OUTPUT_DIR/baes/.")
    train_steps: int = option(300, "Optimiser steps of each BAE.")
    train_batch_size: int = option(256, "Tokens per training batch.")
    train_learning_rate: float = option(1e-3, "Learning rate of --train.")
    eval_texts: int = option(200, "With --train: the first this many texts are held out for evaluation; training reads "
                             "the texts after them.")


@dataclass
class EstimateArguments:
    bae: str | None = option(None, "Folder of a trained BAE (save_pretrained); its config says the layer and site.")


@dataclass
class LayersArguments:
    bae_dir: str | None = option(None, "Folder holding one BAE per layer (sub-folders with config.json), e.g. the "
                                 "baes/ folder a --train run writes, or a training run with several BAEs.")
    layers: list[int] | None = option(None, "With --train: the decoder layers (0-based) to train a BAE for.")
    site: str = option("resid_post", "With --train: the site of every layer (resid_post, mlp_in, mlp_out).")


@dataclass
class ICLArguments:
    bae: str | None = option(None, "Folder of a trained BAE for the site read (its config gives the layer).")
    layer: int | None = option(None, "With --train: the layer of the BAE to train.")
    task: str = option("antonyms", "Task: a JSONL file of {\"input\": ..., \"label\": ...} lines, or a shipped one: "
                       "antonyms, country_capital, sentiment.")
    max_shots: int = option(4, "Largest number of demonstrations K (curve over k = 0..K).")
    num_queries: int = option(64, "Queries per k (the same queries for every k).")


@dataclass
class PositionsArguments:
    bae_dir: str | None = option(None, "Folder holding one BAE per position (sub-folders position_<t>), as --train writes.")
    layer: int | None = option(None, "Decoder layer read (default with --bae_dir: the BAEs' recorded layer).")
    site: str = option("resid_post", "Site of the layer.")
    max_position: int = option(32, "Positions 1..max_position-1 of each document (position 0 is BOS).")
    position_step: int = option(1, "Evaluate every this-many positions.")
    num_rows: int = option(512, "Documents (rows) read; with --train, half train the per-position BAEs, half evaluate.")


@dataclass
class SteerArguments:
    bae: str | None = option(None, "Folder of a trained BAE; the vector is added at its site.")
    layer: int | None = option(None, "With --train: the layer of the BAE to train.")
    task: str = option("antonyms", "Task file or shipped name (see `icl`).")
    shots: int = option(4, "Demonstrations in the k-shot prompts.")
    num_features: int = option(20, "Features whose firing rate differs most between k-shot and 0-shot prompts.")
    strength: float = option(1.0, "Multiplier of both task vectors (the original script's default was 0.2).")
    rescale: bool = option(True, "Scale the BAE vector to the centroid difference's norm (--no_rescale: raw W_dec·s).")


def _bae_training_classes():
    from ..training import BAEArguments, DictionaryArguments

    return DictionaryArguments, BAEArguments


_SPECIFIC = {"estimate": EstimateArguments, "layers": LayersArguments, "icl": ICLArguments,
             "positions": PositionsArguments, "steer": SteerArguments}
_DESCRIPTIONS = {
    "estimate": "Entropy of a trained BAE's codes over a dataset's tokens at the BAE's own site.",
    "layers": "Bits per layer: one BAE per layer (from --bae_dir, or --train --layers ...), the same tokens for all.",
    "icl": "Entropy at the last prompt token and the LM's accuracy against the number of demonstrations k = 0..K.",
    "positions": "Bits per token position, one BAE per position (the paper's setting).",
    "steer": "ICL steering with a BAE task vector against the centroid-difference task vector (0-shot accuracy).",
}


def _usage() -> str:
    return __doc__


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------
def _load_bae(path: str):
    from transformers import AutoModel

    import hf_bae  # noqa: F401 - registers the dictionaries with AutoModel

    from ..entropy import _check_bae

    if not Path(path, "config.json").is_file():
        raise ValueError(f"{path} holds no config.json: pass the folder a BAE was saved to (save_pretrained).")
    model = AutoModel.from_pretrained(path)
    _check_bae(model)
    return model.eval()


def _find_baes(folder: str) -> dict[str, Any]:
    """name → BAE for every sub-folder (or the folder itself) holding a BAE config."""
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"--bae_dir {folder} is not a folder.")
    candidates = [root] if (root / "config.json").is_file() else sorted(p for p in root.iterdir() if (p / "config.json").is_file())
    out = {}
    for path in candidates:
        config = json.loads((path / "config.json").read_text())
        if config.get("model_type") == "binary_autoencoder":
            out[path.name] = _load_bae(str(path))
    if not out:
        raise ValueError(f"No BAE found in {folder}: expected sub-folders with a config.json of model_type "
                         "binary_autoencoder (train them with --train).")
    return out


def _model_for(source: SourceArguments, bae) -> tuple[str, str | None]:
    """The LM to load: --model if given, else the base model recorded in the BAE."""
    if source.model != "embedded" or bae is None or not bae.config.base_model:
        return source.model, source.revision
    return bae.config.base_model, source.revision or bae.config.base_model_revision


def _load_lm(source: SourceArguments, name: str, revision: str | None):
    import torch

    from ..activations import load_language_model

    device = source.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return load_language_model(name, revision=revision, dtype=source.model_dtype, device=device)


def _texts(source: SourceArguments, skip: int = 0, limit: int | None = None):
    import itertools

    from ..activations import load_texts

    stream = load_texts(source.dataset, source.split, source.text_column, config_name=source.dataset_config)
    return itertools.islice(stream, skip, None if limit is None else skip + limit)


def _report_row(label: dict[str, Any], report) -> dict[str, Any]:
    keys = ("miller_madow_bits", "ci_low", "ci_high", "total_bits", "bootstrap_std", "num_samples", "live_codes",
            "num_codes", "mean_abs_correlation", "max_abs_correlation", "max_pairwise_mutual_information_bits",
            "compressed_bits_per_sample")
    d = report.to_dict()
    return {**label, **{k: d[k] for k in keys}}


def _train_baes(sources: dict[str, str], dictionaries_dir: Path, lm, tokenizer, args, est, train, dictionary, bae_args,
                tensors: dict[str, Any] | None = None, provenance: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train one BAE per entry of `sources` (name → site key) with hf_bae.training.Trainer; returns name → BAE."""
    from ..activations import model_device, model_name_of, model_revision_of, token_filter_description
    from ..configuration import BAEConfig
    from ..modeling_bae import BinaryAutoencoder
    from ..sources import LiveSource, TensorSource
    from ..sites import Site
    from ..training import Trainer, TrainingArguments

    if tensors is not None:
        source = TensorSource(tensors)
    else:
        texts = lambda: _texts(args, skip=train.eval_texts)  # noqa: E731
        source = LiveSource(lm, tokenizer, texts, sorted(set(sources.values())), context_length=args.context_length,
                            lm_batch_size=args.lm_batch_size, shuffle_rows=args.lm_batch_size * 4,
                            device=model_device(lm), seed=est.seed)
    base = {"base_model": model_name_of(args.model), "base_model_revision": model_revision_of(args.model, args.revision),
            "dataset": "sotu" if args.dataset == "embedded" else args.dataset, "context_length": args.context_length,
            "token_filter": token_filter_description(True, None), **(provenance or {})}
    dictionaries, inputs = {}, {}
    for name, key in sources.items():
        site = Site.parse(key) if key.startswith("layers.") else None
        config = {**dataclasses.asdict(dictionary), **dataclasses.asdict(bae_args), **base,
                  "hidden_size": source.hidden_size(key)}
        if site is not None:
            config.update(layer=site.layer, site=site.name)
        dictionaries[name] = BinaryAutoencoder(BAEConfig(**config))
        inputs[name] = (key, None)
    run = TrainingArguments(output_dir=str(dictionaries_dir), overwrite=True, max_steps=train.train_steps,
                            batch_size=train.train_batch_size, learning_rate=train.train_learning_rate, seed=est.seed,
                            validate_every=0, validation_tokens=0, splice_rows=0, checkpoint_every=0,
                            save_total_limit=1, plots=False, progress=est.progress, log_every=max(1, train.train_steps // 10),
                            cpu=(args.device == "cpu"))
    Trainer(run, dictionaries, source, inputs=inputs).train()
    return {name: _load_bae(str(dictionaries_dir / name)) for name in sources}


def _write_json(path: Path, obj: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")
    return path


# ---------------------------------------------------------------------------------------------
# Sub-commands
# ---------------------------------------------------------------------------------------------
def _estimate(source, est, train, dictionary, bae_args, specific) -> int:
    from ..activations import stream_activations
    from ..entropy import bae_site, check_bae_fits, feature_set_entropy

    if not specific.bae:
        raise ValueError("estimate needs --bae FOLDER (a trained BAE).")
    bae = _load_bae(specific.bae)
    site = bae_site(bae)
    if site is None:
        raise ValueError(f"The BAE in {specific.bae} records no layer, so its site is unknown.")
    lm, tok = _load_lm(source, *_model_for(source, bae))
    check_bae_fits(bae, lm, site)
    start = time.perf_counter()
    stream = stream_activations(lm, tok, _texts(source), [site], context_length=source.context_length,
                                batch_size=source.lm_batch_size, progress=est.progress)

    def limited():
        seen = 0
        for batch in stream:
            yield batch
            seen += batch.num_tokens
            if seen >= source.num_tokens:
                return

    report = feature_set_entropy(bae, limited(), site=site, confidence=est.confidence, num_bootstrap=est.num_bootstrap,
                                 seed=est.seed, min_samples=est.min_samples)
    stream.close()
    out = Path(est.output_dir)
    _write_json(out / "entropy.json", {"bae": specific.bae, "site": site, **report.to_dict(),
                                       "seconds": time.perf_counter() - start})
    print(f"{site}: {report.summary()}\nWritten: {out / 'entropy.json'}")
    return 0


def _layers(source, est, train, dictionary, bae_args, specific) -> int:
    from ..entropy import bae_site, layer_entropy, plot_entropy_curve, write_csv

    out = Path(est.output_dir)
    if specific.bae_dir and train.train:
        raise ValueError("Pass either --bae_dir (trained BAEs) or --train (train them now), not both.")
    if train.train:
        if not specific.layers:
            raise ValueError("--train needs --layers, e.g. --layers 3 9 15.")
        lm, tok = _load_lm(source, source.model, source.revision)
        sources = {f"layer_{L}": f"layers.{L}.{specific.site}" for L in specific.layers}
        baes = _train_baes(sources, out / "baes", lm, tok, source, est, train, dictionary, bae_args)
    elif specific.bae_dir:
        baes = _find_baes(specific.bae_dir)
        lm, tok = _load_lm(source, *_model_for(source, next(iter(baes.values()))))
    else:
        raise ValueError("layers needs --bae_dir FOLDER (one BAE per layer) or --train --layers L1 L2 ...")
    by_site = {}
    for name, bae in baes.items():
        site = bae_site(bae)
        if site is None:
            raise ValueError(f"The BAE {name} records no layer: cannot place it on the layer axis.")
        if site in by_site:
            raise ValueError(f"Two BAEs read {site}: keep one per layer in --bae_dir.")
        by_site[site] = bae
    by_site = dict(sorted(by_site.items(), key=lambda kv: (kv[1].config.layer, kv[0])))
    start = time.perf_counter()
    # With --train the BAEs trained on the texts after the first --eval_texts: evaluate on those held out.
    texts = _texts(source, 0, train.eval_texts if train.train else None)
    reports = layer_entropy(lm, tok, texts, by_site, num_tokens=source.num_tokens, context_length=source.context_length,
                            batch_size=source.lm_batch_size, num_bootstrap=est.num_bootstrap, seed=est.seed,
                            confidence=est.confidence, min_samples=est.min_samples, progress=est.progress)
    rows = [_report_row({"site": s, "layer": by_site[s].config.layer}, r) for s, r in reports.items()]
    csv = write_csv(out / "layers.csv", rows)
    layers = [by_site[s].config.layer for s in reports]
    png = plot_entropy_curve(layers, list(reports.values()), out / "layers.png", xlabel="decoder layer (0-based)",
                             title=f"Feature-set entropy per layer, {len(rows)} BAEs "
                                   f"({next(iter(reports.values())).num_samples:,} tokens)")
    for row in rows:
        print(f"layer {row['layer']:>3}: {row['miller_madow_bits']:9.2f} bits "
              f"[{row['ci_low']:.2f}, {row['ci_high']:.2f}]  mean|corr| {row['mean_abs_correlation']:.3f}")
    print(f"Written: {csv}, {png} [{time.perf_counter() - start:.1f} s]")
    return 0


def _single_bae(source, est, train, dictionary, bae_args, specific, name: str):
    """(lm, tokenizer, bae) for icl / steer: --bae, or --train --layer L."""
    if specific.bae and train.train:
        raise ValueError("Pass either --bae (a trained BAE) or --train (train one now), not both.")
    if train.train:
        if specific.layer is None:
            raise ValueError("--train needs --layer L (the decoder layer whose last-token state is read).")
        lm, tok = _load_lm(source, source.model, source.revision)
        key = f"layers.{specific.layer}.resid_post"
        bae = _train_baes({name: key}, Path(est.output_dir) / "baes", lm, tok, source, est, train, dictionary,
                          bae_args)[name]
        return lm, tok, bae
    if not specific.bae:
        raise ValueError("Pass --bae FOLDER (a trained BAE) or --train --layer L.")
    bae = _load_bae(specific.bae)
    lm, tok = _load_lm(source, *_model_for(source, bae))
    return lm, tok, bae


def _icl(source, est, train, dictionary, bae_args, specific) -> int:
    from ..entropy import bae_site, check_bae_fits, plot_entropy_curve, write_csv
    from ..icl import icl_entropy, load_task

    task = load_task(specific.task)  # fail on a bad task file before loading anything
    if specific.max_shots < 0:
        raise ValueError(f"--max_shots must be >= 0, got {specific.max_shots}.")
    lm, tok, bae = _single_bae(source, est, train, dictionary, bae_args, specific, f"layer_{specific.layer}")
    site = bae_site(bae)
    check_bae_fits(bae, lm, site)
    start = time.perf_counter()
    points = icl_entropy(lm, tok, bae, task, specific.max_shots, num_queries=specific.num_queries, seed=est.seed,
                         batch_size=source.lm_batch_size, num_bootstrap=est.num_bootstrap, confidence=est.confidence,
                         min_samples=est.min_samples, progress=est.progress)
    out = Path(est.output_dir)
    rows = [_report_row({"task": task.name, "shots": p.shots, "accuracy": p.accuracy}, p.report) for p in points]
    csv = write_csv(out / f"icl_{task.name}.csv", rows)
    png = plot_entropy_curve([p.shots for p in points], [p.report for p in points], out / f"icl_{task.name}.png",
                             xlabel="demonstrations in the prompt (k)", accuracy=[p.accuracy for p in points],
                             title=f"ICL: entropy at the last prompt token ({site}), task {task.name}, "
                                   f"{points[0].num_prompts} queries")
    for row in rows:
        print(f"k={row['shots']}: {row['miller_madow_bits']:8.2f} bits [{row['ci_low']:.2f}, {row['ci_high']:.2f}]  "
              f"accuracy {row['accuracy']:.2f}")
    print(f"Written: {csv}, {png} [{time.perf_counter() - start:.1f} s]")
    return 0


def _positions(source, est, train, dictionary, bae_args, specific) -> int:
    from ..entropy import document_prefixes, plot_entropy_curve, position_activations, position_entropy, write_csv

    if specific.max_position < 2:
        raise ValueError(f"--max_position must be >= 2, got {specific.max_position}.")
    positions = list(range(1, specific.max_position, specific.position_step))
    if specific.bae_dir and train.train:
        raise ValueError("Pass either --bae_dir (trained BAEs) or --train (train them now), not both.")
    baes = None
    if specific.bae_dir:
        found = _find_baes(specific.bae_dir)
        baes = {int(name.rsplit("_", 1)[1]): b for name, b in found.items() if name.startswith("position_")}
        missing = [p for p in positions if p not in baes]
        if missing:
            raise ValueError(f"--bae_dir has no BAE for positions {missing[:8]} (expected sub-folders position_<t>); "
                             "lower --max_position or train them with --train.")
        first = baes[positions[0]]
        layer = specific.layer if specific.layer is not None else first.config.layer
        lm, tok = _load_lm(source, *_model_for(source, first))
    elif train.train:
        if specific.layer is None:
            raise ValueError("--train needs --layer L.")
        layer = specific.layer
        lm, tok = _load_lm(source, source.model, source.revision)
    else:
        raise ValueError("positions needs --bae_dir FOLDER (one BAE per position) or --train --layer L.")
    site = f"layers.{layer}.{specific.site}"
    start = time.perf_counter()
    ids = document_prefixes(_texts(source), tok, specific.max_position, specific.num_rows)
    acts = position_activations(lm, ids, site, positions, batch_size=source.lm_batch_size, progress=est.progress)
    if baes is not None:
        for p in positions:
            from ..entropy import check_bae_fits

            check_bae_fits(baes[p], lm, site)
        evaluate = acts
    else:
        half = ids.shape[0] // 2
        if half < 2:
            raise ValueError(f"Only {ids.shape[0]} documents have {specific.max_position} tokens: need more --num_rows.")
        tensors = {f"position_{p}": acts[p][:half] for p in positions}
        names = {f"position_{p}": f"position_{p}" for p in positions}
        trained = _train_baes(names, Path(est.output_dir) / "baes", lm, tok, source, est, train, dictionary, bae_args,
                              tensors=tensors, provenance={"layer": layer, "site": specific.site})
        baes = {int(n.rsplit("_", 1)[1]): b for n, b in trained.items()}
        evaluate = {p: acts[p][half:] for p in positions}
    reports = position_entropy(baes, evaluate, num_bootstrap=est.num_bootstrap, seed=est.seed,
                               confidence=est.confidence, min_samples=est.min_samples)
    out = Path(est.output_dir)
    rows = [_report_row({"position": p, "site": site}, r) for p, r in reports.items()]
    csv = write_csv(out / "positions.csv", rows)
    png = plot_entropy_curve(positions, list(reports.values()), out / "positions.png",
                             xlabel="token position in the document (0 = BOS)",
                             title=f"Feature-set entropy per position ({site}, one BAE per position, "
                                   f"{next(iter(reports.values())).num_samples} documents)")
    print(f"Written: {csv}, {png} [{time.perf_counter() - start:.1f} s]")
    return 0


def _steer(source, est, train, dictionary, bae_args, specific) -> int:
    from ..entropy import bae_site, check_bae_fits
    from ..icl import icl_steering, load_task

    task = load_task(specific.task)
    lm, tok, bae = _single_bae(source, est, train, dictionary, bae_args, specific, f"layer_{specific.layer}")
    site = bae_site(bae)
    check_bae_fits(bae, lm, site)
    start = time.perf_counter()
    result = icl_steering(lm, tok, bae, task, shots=specific.shots, num_features=specific.num_features,
                          strength=specific.strength, seed=est.seed, batch_size=source.lm_batch_size,
                          rescale=specific.rescale, progress=est.progress)
    path = _write_json(Path(est.output_dir) / f"steer_{task.name}.json",
                       {"task": task.name, "site": site, **result.to_dict(), "seconds": time.perf_counter() - start})
    print(f"{task.name} at {site}, {result.num_eval_prompts} held-out queries: 0-shot {result.accuracy_zero_shot:.2f}, "
          f"{result.shots}-shot {result.accuracy_k_shot:.2f}, 0-shot + BAE vector {result.accuracy_bae_vector:.2f} "
          f"({result.bae_gain:+.2f}), 0-shot + centroid vector {result.accuracy_centroid_vector:.2f} "
          f"({result.centroid_gain:+.2f})\nWritten: {path}")
    return 0


_RUNNERS = {"estimate": _estimate, "layers": _layers, "icl": _icl, "positions": _positions, "steer": _steer}


def main(argv: Sequence[str] | None = None) -> int:
    """`hf-bae entropy SUBCOMMAND [options]`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"hf-bae entropy: unknown sub-command {name!r}; choose one of {', '.join(SUBCOMMANDS)}.", file=sys.stderr)
        return 2
    dictionary_cls, bae_cls = _bae_training_classes()
    classes = [_SPECIFIC[name], SourceArguments, EstimatorArguments]
    if name != "estimate":
        classes += [TrainOptions, dictionary_cls, bae_cls]
    parsed = parse(classes, rest, prog=f"hf-bae entropy {name}", description=_DESCRIPTIONS[name])
    specific, source, est = parsed[:3]
    train, dictionary, bae_args = parsed[3:] if name != "estimate" else (TrainOptions(), None, None)
    setup_logging()

    def run() -> int:
        with warnings.catch_warnings():
            warnings.simplefilter("default")  # EntropyWarnings are printed once each, not raised
            return _RUNNERS[name](source, est, train, dictionary, bae_args, specific)

    return run_or_explain(f"hf-bae entropy {name}", run)


if __name__ == "__main__":
    sys.exit(main())
