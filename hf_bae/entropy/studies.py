"""The experiments of `hf-bae entropy`, one function per study: each finds (or trains) its BAEs, loads
the language model they read, measures, writes its files into `est.output_dir` (names in
`hf_bae.formats`) and returns what it measured.

- `estimate_study`: one BAE at its own site over a dataset's tokens: `entropy.json`.
- `layers_study`: one BAE per layer, the same tokens for all: `layers.csv` + `layers.png`.
- `icl_study`: entropy at the last prompt token and accuracy over k = 0..K demonstrations:
  `icl_<task>.csv` + `.png`.
- `positions_study`: one BAE per token position (the paper's setting): `positions.csv` + `.png`.
- `steer_study`: a BAE task vector against the centroid-difference vector: `steer_<task>.json`.

With `--train` (`TrainOptions.train`) the BAEs are trained first and saved under `output_dir/baes/`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import formats
from ..formats import hookpoint
from .arguments import (
    EstimateArguments,
    EstimatorArguments,
    ICLArguments,
    LayersArguments,
    PositionsArguments,
    SourceArguments,
    SteerArguments,
    TrainOptions,
    study_language_model,
    study_texts,
)
from .baes import find_baes, train_baes
from .curves import document_prefixes, layer_entropy, position_activations, position_entropy
from .estimator import EntropyReport
from .icl import SteeringResult, icl_entropy, icl_steering, load_task
from .measure import check_bae_fits, feature_set_entropy
from .plots import plot_entropy_curve, write_csv

# The report's columns in the CSV files (the per-code tensors stay out).
REPORT_COLUMNS = ("miller_madow_bits", "ci_low", "ci_high", "total_bits", "bootstrap_std", "num_samples", "live_codes",
                  "num_codes", "mean_abs_correlation", "max_abs_correlation", "max_pairwise_mutual_information_bits",
                  "compressed_bits_per_sample")


@dataclass
class EntropyEstimate:
    """`estimate_study`'s result: the report at the BAE's site and the JSON written."""

    site: str
    report: EntropyReport
    path: Path
    seconds: float


@dataclass
class EntropyCurve:
    """A curve (layers, positions, ICL shots): one CSV row per point, the reports, and the files written."""

    rows: list[dict[str, Any]]
    reports: list[EntropyReport]
    csv: Path
    plot: Path
    seconds: float


@dataclass
class SteeringStudy:
    """`steer_study`'s result: the accuracies with and without the task vectors, and the JSON written."""

    task: str
    site: str
    result: SteeringResult
    path: Path
    seconds: float


def report_row(label: dict[str, Any], report: EntropyReport) -> dict[str, Any]:
    """A CSV row: the point's `label` columns then the report's `REPORT_COLUMNS`."""
    values = report.to_dict()
    return {**label, **{key: values[key] for key in REPORT_COLUMNS}}


def write_json(path: Path, obj: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")
    return path


def _baes_dir(est: EstimatorArguments) -> Path:
    return Path(est.output_dir) / formats.ENTROPY_BAES_DIR


def _position_of(name: str) -> int:
    return int(name.rsplit("_", 1)[1])


# ---------------------------------------------------------------------------------------------
# The studies
# ---------------------------------------------------------------------------------------------
def first_tokens(batch: Any, n: int) -> Any:
    """An `ActivationBatch` holding only the first `n` kept tokens of `batch` (all of them if it has no more)."""
    if n >= batch.num_tokens:
        return batch
    return dataclasses.replace(batch, activations={k: v[:n] for k, v in batch.activations.items()},
                               row_index=batch.row_index[:n], positions=batch.positions[:n])


def estimate_study(source: SourceArguments, est: EstimatorArguments, options: EstimateArguments) -> EntropyEstimate:
    """Entropy of `options.bae`'s codes over the first `source.num_tokens` tokens at its own site."""
    from ..activations import stream_activations
    from ..loading import load_dictionary

    if not options.bae:
        raise ValueError("estimate needs --bae FOLDER (a trained BAE).")
    bae = load_dictionary(options.bae, kind="BAE")
    site = bae.hookpoint
    if site is None:
        raise ValueError(f"The BAE in {options.bae} records no layer, so its site is unknown.")
    lm, tok = study_language_model(source, [bae])
    check_bae_fits(bae, lm, site)
    start = time.perf_counter()
    stream = stream_activations(lm, tok, study_texts(source), [site], context_length=source.context_length,
                                batch_size=source.lm_batch_size, progress=est.progress)

    def limited():
        seen = 0
        for batch in stream:
            take = min(batch.num_tokens, source.num_tokens - seen)  # the last batch is cut: exactly num_tokens
            yield first_tokens(batch, take)
            seen += take
            if seen >= source.num_tokens:
                return

    report = feature_set_entropy(bae, limited(), site=site, confidence=est.confidence, num_bootstrap=est.num_bootstrap,
                                 seed=est.seed, min_samples=est.min_samples)
    stream.close()
    seconds = time.perf_counter() - start
    path = write_json(Path(est.output_dir) / formats.ENTROPY_FILE,
                      {"bae": options.bae, "site": site, **report.to_dict(), "seconds": seconds})
    return EntropyEstimate(site, report, path, seconds)


def layers_study(source: SourceArguments, est: EstimatorArguments, train: TrainOptions, dictionary: Any, bae: Any,
                 options: LayersArguments) -> EntropyCurve:
    """Bits per layer: one BAE per layer (`options.bae_dir`, or trained at `options.layers`), the same tokens."""
    out = Path(est.output_dir)
    if options.bae_dir and train.train:
        raise ValueError("Pass either --bae_dir (trained BAEs) or --train (train them now), not both.")
    if train.train:
        if not options.layers:
            raise ValueError("--train needs --layers, e.g. --layers 3 9 15.")
        lm, tok = study_language_model(source)
        sites = {formats.ENTROPY_LAYER_BAE.format(layer=layer): hookpoint(layer, options.site)
                 for layer in options.layers}
        baes = train_baes(_baes_dir(est), lm, tok, source, est, train, dictionary, bae, sites=sites)
    elif options.bae_dir:
        baes = find_baes(options.bae_dir)
        lm, tok = study_language_model(source, baes.values())
    else:
        raise ValueError("layers needs --bae_dir FOLDER (one BAE per layer) or --train --layers L1 L2 ...")
    by_site = {}
    for name, model in baes.items():
        site = model.hookpoint
        if site is None:
            raise ValueError(f"The BAE {name} records no layer: cannot place it on the layer axis.")
        if site in by_site:
            raise ValueError(f"Two BAEs read {site}: keep one per layer in --bae_dir.")
        by_site[site] = model
    by_site = dict(sorted(by_site.items(), key=lambda kv: (kv[1].config.layer, kv[0])))
    start = time.perf_counter()
    # With --train the BAEs trained on the texts after the first --eval_texts: evaluate on those held out.
    texts = study_texts(source, 0, train.eval_texts if train.train else None)
    reports = layer_entropy(lm, tok, texts, by_site, num_tokens=source.num_tokens, context_length=source.context_length,
                            batch_size=source.lm_batch_size, num_bootstrap=est.num_bootstrap, seed=est.seed,
                            confidence=est.confidence, min_samples=est.min_samples, progress=est.progress)
    layers = [by_site[site].config.layer for site in reports]
    rows = [report_row({"site": site, "layer": layer}, report)
            for (site, report), layer in zip(reports.items(), layers)]
    csv = write_csv(out / formats.ENTROPY_LAYERS_CSV, rows)
    plot = plot_entropy_curve(layers, list(reports.values()), out / formats.ENTROPY_LAYERS_PLOT,
                              xlabel="decoder layer (0-based)",
                              title=f"Feature-set entropy per layer, {len(rows)} BAEs "
                                    f"({next(iter(reports.values())).num_samples:,} tokens)")
    return EntropyCurve(rows, list(reports.values()), csv, plot, time.perf_counter() - start)


def _single_bae(source: SourceArguments, est: EstimatorArguments, train: TrainOptions, dictionary: Any, bae: Any,
                options: ICLArguments | SteerArguments) -> tuple[Any, Any, Any]:
    """(lm, tokenizer, BAE) for icl / steer: `options.bae`, or one trained at `options.layer`'s resid_post."""
    from ..loading import load_dictionary

    if options.bae and train.train:
        raise ValueError("Pass either --bae (a trained BAE) or --train (train one now), not both.")
    if train.train:
        if options.layer is None:
            raise ValueError("--train needs --layer L (the decoder layer whose last-token state is read).")
        lm, tok = study_language_model(source)
        name = formats.ENTROPY_LAYER_BAE.format(layer=options.layer)
        trained = train_baes(_baes_dir(est), lm, tok, source, est, train, dictionary, bae,
                             sites={name: hookpoint(options.layer, "resid_post")})
        return lm, tok, trained[name]
    if not options.bae:
        raise ValueError("Pass --bae FOLDER (a trained BAE) or --train --layer L.")
    model = load_dictionary(options.bae, kind="BAE")
    lm, tok = study_language_model(source, [model])
    return lm, tok, model


def icl_study(source: SourceArguments, est: EstimatorArguments, train: TrainOptions, dictionary: Any, bae: Any,
              options: ICLArguments) -> EntropyCurve:
    """Entropy at the last prompt token and the LM's accuracy against the number of demonstrations k = 0..K."""
    task = load_task(options.task)  # fail on a bad task file before loading anything
    if options.max_shots < 0:
        raise ValueError(f"--max_shots must be >= 0, got {options.max_shots}.")
    lm, tok, model = _single_bae(source, est, train, dictionary, bae, options)
    site = model.hookpoint
    check_bae_fits(model, lm, site)
    start = time.perf_counter()
    points = icl_entropy(lm, tok, model, task, options.max_shots, num_queries=options.num_queries, seed=est.seed,
                         batch_size=source.lm_batch_size, num_bootstrap=est.num_bootstrap, confidence=est.confidence,
                         min_samples=est.min_samples, progress=est.progress)
    out = Path(est.output_dir)
    rows = [report_row({"task": task.name, "shots": p.shots, "accuracy": p.accuracy}, p.report) for p in points]
    csv = write_csv(out / formats.ENTROPY_ICL_CSV.format(task=task.name), rows)
    plot = plot_entropy_curve([p.shots for p in points], [p.report for p in points],
                              out / formats.ENTROPY_ICL_PLOT.format(task=task.name),
                              xlabel="demonstrations in the prompt (k)", accuracy=[p.accuracy for p in points],
                              title=f"ICL: entropy at the last prompt token ({site}), task {task.name}, "
                                    f"{points[0].num_prompts} queries")
    return EntropyCurve(rows, [p.report for p in points], csv, plot, time.perf_counter() - start)


def positions_study(source: SourceArguments, est: EstimatorArguments, train: TrainOptions, dictionary: Any, bae: Any,
                    options: PositionsArguments) -> EntropyCurve:
    """Bits per token position 1..max_position-1, one BAE per position (`options.bae_dir`, or trained now
    on half of the documents and evaluated on the other half)."""
    if options.max_position < 2:
        raise ValueError(f"--max_position must be >= 2, got {options.max_position}.")
    positions = list(range(1, options.max_position, options.position_step))
    if options.bae_dir and train.train:
        raise ValueError("Pass either --bae_dir (trained BAEs) or --train (train them now), not both.")
    prefix = formats.ENTROPY_POSITION_BAE.format(position="")
    baes = None
    if options.bae_dir:
        found = find_baes(options.bae_dir)
        baes = {_position_of(name): model for name, model in found.items() if name.startswith(prefix)}
        missing = [p for p in positions if p not in baes]
        if missing:
            raise ValueError(f"--bae_dir has no BAE for positions {missing[:8]} (expected sub-folders "
                             f"{formats.ENTROPY_POSITION_BAE.format(position='<t>')}); lower --max_position or train "
                             "them with --train.")
        first = baes[positions[0]]
        layer = options.layer if options.layer is not None else first.config.layer
        lm, tok = study_language_model(source, [first])
    elif train.train:
        if options.layer is None:
            raise ValueError("--train needs --layer L.")
        layer = options.layer
        lm, tok = study_language_model(source)
    else:
        raise ValueError("positions needs --bae_dir FOLDER (one BAE per position) or --train --layer L.")
    site = hookpoint(layer, options.site)
    start = time.perf_counter()
    ids = document_prefixes(study_texts(source), tok, options.max_position, options.num_rows)
    acts = position_activations(lm, ids, site, positions, batch_size=source.lm_batch_size, progress=est.progress)
    if baes is not None:
        for p in positions:
            check_bae_fits(baes[p], lm, site)
        evaluate = acts
    else:
        half = ids.shape[0] // 2
        if half < 2:
            raise ValueError(f"Only {ids.shape[0]} documents have {options.max_position} tokens: need more --num_rows.")
        tensors = {formats.ENTROPY_POSITION_BAE.format(position=p): acts[p][:half] for p in positions}
        trained = train_baes(_baes_dir(est), lm, tok, source, est, train, dictionary, bae, tensors=tensors,
                             provenance={"layer": layer, "site": options.site})
        baes = {_position_of(name): model for name, model in trained.items()}
        evaluate = {p: acts[p][half:] for p in positions}
    reports = position_entropy(baes, evaluate, num_bootstrap=est.num_bootstrap, seed=est.seed,
                               confidence=est.confidence, min_samples=est.min_samples)
    out = Path(est.output_dir)
    rows = [report_row({"position": p, "site": site}, r) for p, r in reports.items()]
    csv = write_csv(out / formats.ENTROPY_POSITIONS_CSV, rows)
    plot = plot_entropy_curve(positions, list(reports.values()), out / formats.ENTROPY_POSITIONS_PLOT,
                              xlabel="token position in the document (0 = BOS)",
                              title=f"Feature-set entropy per position ({site}, one BAE per position, "
                                    f"{next(iter(reports.values())).num_samples} documents)")
    return EntropyCurve(rows, list(reports.values()), csv, plot, time.perf_counter() - start)


def steer_study(source: SourceArguments, est: EstimatorArguments, train: TrainOptions, dictionary: Any, bae: Any,
                options: SteerArguments) -> SteeringStudy:
    """ICL steering: 0-shot accuracy with a BAE task vector against the centroid-difference task vector."""
    task = load_task(options.task)
    lm, tok, model = _single_bae(source, est, train, dictionary, bae, options)
    site = model.hookpoint
    check_bae_fits(model, lm, site)
    start = time.perf_counter()
    result = icl_steering(lm, tok, model, task, shots=options.shots, num_features=options.num_features,
                          strength=options.strength, seed=est.seed, batch_size=source.lm_batch_size,
                          rescale=options.rescale, progress=est.progress)
    seconds = time.perf_counter() - start
    path = write_json(Path(est.output_dir) / formats.ENTROPY_STEER_FILE.format(task=task.name),
                      {"task": task.name, "site": site, **result.to_dict(), "seconds": seconds})
    return SteeringStudy(task.name, site, result, path, seconds)
