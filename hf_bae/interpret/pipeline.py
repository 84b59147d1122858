"""The `hf-bae atlas` and `hf-bae interpret` pipelines: load dictionaries and the language model, build
feature atlases from one activation stream, run ComSem on each, and write a table that compares the
dictionaries (BAE, SAE baselines, random) side by side.

Output of `run_interpret(..., output_dir=OUT)`:

    OUT/<name>/atlas/          the atlas as built (reused by a rerun with the same settings)
    OUT/<name>/interpreted/    the atlas with explanation, comsem_score and verdicts filled (for the Space),
                               and its comsem.json
    OUT/<name>/comsem.json     the summary, beside the atlases that produced it (`hf-bae push --comsem OUT`
                               puts it on the model card); nothing is written into the dictionaries' folders
    OUT/results.md, results.json, comsem_scores.png
    OUT/ledger.json            calls, cache hits, retries, failures, tokens and cost
    OUT/interpret_args.json    the options (never the API key)

A dictionary none of whose features was scored (every LLM call failed, the judge never answered Yes or
No, every feature had too few samples) has no measured result: no comsem.json and no interpreted atlas
are written for it, and `run_interpret` raises a RuntimeError (`hf-bae interpret` exits 1) whose one line
says how many calls failed, of which kind, and what to do, after writing the results of the
dictionaries that were scored and the ledger. Errors every call would repeat (a refused key, an
unknown model or URL: `LLMSetupError`) stop the run at once: exit 2. A partly scored dictionary is a
result; its `coverage` ("12 of 50 features scored") is in its comsem.json and printed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..arguments import BASE_MODEL_DTYPE_ALIASES, base_model_dtype_option, base_model_option, base_model_revision_option
from ..configuration import option
from ..formats import (ATLAS_INFO_FILE, COMSEM_FILE, COMSEM_PLOT_FILE, INTERPRET_ARGS_FILE, INTERPRET_ATLAS_DIR,
                       INTERPRETED_ATLAS_DIR, LEDGER_FILE, RESULTS_JSON_FILE, RESULTS_TABLE_FILE, AtlasInfo, save_atlas_info)
from ..loading import base_model_of, load_dictionary
from ..version import __version__
from .atlas import AtlasConfig, build_atlases
from .atlas_format import check_atlas_matches, load_atlas, save_atlas
from .atlas_scoring import DICTIONARY_TYPES, RandomBaseline, dictionary_fingerprint, dictionary_type
from .calibration import judge_calibration_for, loud_warning
from .comsem import ComSemConfig, run_comsem
from .report import (apply_results, compare_with_random, comsem_report, nothing_scored_message, plot_scores,
                     results_table)
from .client import LLMClient, LLMConfig, make_backend, make_cache

logger = logging.getLogger(__name__)


@dataclass
class CorpusArguments:
    """The language model and the texts the atlas is built from (defaults: the original's corpus size)."""

    _argument_group_name = 'Corpus options (language model and texts)'  # its --help section

    base_model: str | None = base_model_option(None, "Default: the dictionary's recorded base_model (and revision), "
                                               "else 'embedded'.")
    base_model_revision: str | None = base_model_revision_option()
    dataset: str = option(
        "embedded", "Corpus: 'embedded' (State of the Union paragraphs, offline), a Hub dataset or a loader such as 'text'.",
        aliases=["--dataset_name"],
    )
    split: str = option("train", "Split of the corpus.")
    text_column: str = option("text", "Column holding the text.")
    dataset_config: str | None = option(None, "Configuration name of the dataset.")
    data_files: str | None = option(None, "Data files for a loader dataset (e.g. --dataset text --data_files corpus.txt).")
    num_texts: int = option(8192, "Number of texts read from the start of the corpus (the original's sample_size).", aliases=["--sample_size"])
    context_length: int = option(128, "Tokens per packed row; a sample's context is its row's stretch between document boundaries.")
    batch_size: int = option(8, "Rows per language-model forward pass.")
    exclude_special_tokens: bool = option(
        False, "Leave BOS/EOS and other special tokens out of the samples (the original kept them: BOS is scored too)."
    )
    device: str | None = option(None, "Device of the language model and dictionaries (default: cuda if available, else cpu).")
    base_model_dtype: str | None = base_model_dtype_option(aliases=["--dtype", *BASE_MODEL_DTYPE_ALIASES])

    def __post_init__(self) -> None:
        if self.num_texts < 1:
            raise ValueError(f"num_texts must be >= 1, got {self.num_texts}.")


@dataclass
class DictionarySelection:
    """Which dictionaries to interpret (the `--dictionary` options of `hf-bae atlas` / `interpret`)."""

    _argument_group_name = 'Dictionary options'  # its --help section

    dictionary: list[str] = option(
        [], "Trained dictionary folders (or Hub ids), and/or 'random' for the random baseline, e.g. "
        "--dictionary runs/bae runs/topk random (the original's BAE_path).", aliases=["--BAE_path"],
    )
    type: str | None = option(
        None, "Expected type of the dictionaries: BAE, SAE, TRC or random (the original's --type; ours is read from "
        "each dictionary's config, this only checks it). --type random alone runs the random baseline.",
        choices=list(DICTIONARY_TYPES),
    )
    config_path: str | None = option(
        None, "A dictionary's config.json whose width the random baseline copies (the original's config_path, a pickle, "
        "gave its width). Trained dictionaries read the config.json in their own folder.",
    )
    layer: int | None = option(
        None, "Check that every dictionary reads this decoder layer (its config's `layer`). The original's --layer L "
        "indexed hidden_states[L], which is our layer L-1 with site resid_post.",
    )


@dataclass
class LoadedDictionary:
    """A dictionary of the run, its display name, and where it came from."""

    name: str
    dictionary: Any
    source: str | None = None

    @property
    def kind(self) -> str:
        return dictionary_type(self.dictionary)


def _unique_names(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}-{seen[n]}")
    return out


def load_dictionaries(args: DictionarySelection, random_features: int | None = None, seed: int = 0,
                      device: str | None = None) -> list[LoadedDictionary]:
    """Load the dictionaries named in `args` (the random baseline's width is settled by `settle_random_width`)."""
    entries = list(args.dictionary)
    if args.type == "random" and "random" not in entries:
        entries.append("random")
    if not entries:
        raise ValueError("No dictionary given: pass --dictionary PATH [PATH ...] (trained dictionary folders) and/or 'random'.")
    loaded = []
    for entry in entries:
        if entry == "random":
            loaded.append(LoadedDictionary("random", RandomBaseline(random_features or 0, seed), "random"))
            continue
        model = load_dictionary(entry)
        kind = dictionary_type(model)
        if args.type not in (None, "random") and kind != args.type:
            raise ValueError(f"{entry} is a {kind} dictionary, but --type {args.type} was given.")
        if args.layer is not None and model.config.layer != args.layer:
            raise ValueError(
                f"{entry} reads layer {model.config.layer} ({model.config.site}), not --layer {args.layer}. "
                "(The original's --layer L is our layer L-1, site resid_post.)"
            )
        if device:
            model = model.to(device)
        name = (Path(entry).resolve().name if Path(entry).is_dir() else entry.rstrip("/").split("/")[-1]) or "dictionary"
        loaded.append(LoadedDictionary(name, model, entry))
    for d, name in zip(loaded, _unique_names([d.name for d in loaded])):
        d.name = name
    return loaded


def settle_random_width(entries: list[LoadedDictionary], args: DictionarySelection, atlas: AtlasConfig,
                        hidden_size: int | None) -> None:
    """Give the random baseline its width: --random_features, else the --config_path config's, else the first
    trained dictionary's, else 4 x the language model's hidden size (the original)."""
    width = atlas.random_features
    if width is None and args.config_path:
        width = _config_width(Path(args.config_path))
    if width is None:
        width = next((e.dictionary.config.num_latents for e in entries if e.kind != "random"), None)
    if width is None and hidden_size is not None:
        width = 4 * hidden_size
    for e in entries:
        if e.kind == "random" and width:
            e.dictionary = RandomBaseline(int(width), atlas.seed)


def _config_width(path: Path) -> int:
    """The number of features of the dictionary config at `path` (--config_path); ValueError naming the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"--config_path {path} is not a JSON config ({err}): give a dictionary's config.json.") from None
    if not isinstance(data, dict) or not (data.get("latent_size") or data.get("hidden_size")):
        raise ValueError(f"--config_path {path} gives no width: it needs latent_size, or hidden_size (and expansion_factor).")
    width = data.get("latent_size") or data.get("expansion_factor", 4) * data["hidden_size"]
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"--config_path {path} gives {width!r} features: latent_size / hidden_size must be positive integers.")
    return width


def resolve_base_model(corpus: CorpusArguments, entries: list[LoadedDictionary]) -> tuple[str, str | None]:
    """(name, revision) of the language model: --base_model (and --base_model_revision), else the base model and
    revision the dictionaries record (they must agree), else 'embedded' (`hf_bae.loading.base_model_of`)."""
    configs = [e.dictionary.config for e in entries if e.kind != "random"]
    if corpus.base_model:
        for model in {c.base_model for c in configs if c.base_model} - {corpus.base_model}:
            logger.warning("a dictionary was trained on %s, but --base_model %s was given", model, corpus.base_model)
    return base_model_of(configs, corpus.base_model, corpus.base_model_revision)


def _settings_hash(corpus: CorpusArguments, atlas: AtlasConfig, fingerprint: str, base_model: str) -> str:
    data = {"corpus": dataclasses.asdict(corpus), "atlas": dataclasses.asdict(atlas), "fingerprint": fingerprint,
            "base_model": base_model}
    for volatile in ("device", "dtype", "batch_size"):
        data["corpus"].pop(volatile, None)
    data["atlas"].pop("cache_activations_gb", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def build_or_reuse_atlases(
    corpus: CorpusArguments,
    dict_args: DictionarySelection,
    atlas_config: AtlasConfig,
    folder_for: Callable[[str], Path] | None = None,
    progress: bool = True,
) -> list[tuple[LoadedDictionary, Any, AtlasInfo, Path | None]]:
    """Load the dictionaries and build their atlases in one activation stream.

    `folder_for(name)` says where a dictionary's atlas is saved; an atlas already there, built with the
    same dictionary and settings, is reused instead of rebuilt (so an interrupted `interpret` resumes).
    """
    entries = load_dictionaries(dict_args, atlas_config.random_features, atlas_config.seed, corpus.device)
    folders = {e.name: folder_for(e.name) for e in entries} if folder_for else {}
    base_model, base_model_revision = resolve_base_model(corpus, entries)
    settle_random_width(entries, dict_args, atlas_config, None)
    results: dict[str, tuple[Any, AtlasInfo]] = {}
    for e in entries:
        folder = folders.get(e.name)
        if folder is None or not (folder / ATLAS_INFO_FILE).is_file() or (e.kind == "random" and not e.dictionary.num_features):
            continue
        dataset, info = load_atlas(folder)
        if info.extra.get("settings_hash") == _settings_hash(corpus, atlas_config, dictionary_fingerprint(e.dictionary), base_model):
            logger.info("reusing the atlas of %s at %s", e.name, folder)
            results[e.name] = (dataset, info)
    todo = [e for e in entries if e.name not in results]
    if todo:
        from ..activations import load_language_model, load_texts

        model, tokenizer = load_language_model(base_model, revision=base_model_revision, dtype=corpus.base_model_dtype,
                                               device=corpus.device)
        settle_random_width(entries, dict_args, atlas_config, model.config.hidden_size)

        def texts():
            return load_texts(corpus.dataset, corpus.split, corpus.text_column, config_name=corpus.dataset_config,
                              data_files=corpus.data_files, max_texts=corpus.num_texts)

        source = {"base_model": base_model, "base_model_revision": base_model_revision, "dataset": corpus.dataset,
                  "split": corpus.split, "num_texts": corpus.num_texts, "text_column": corpus.text_column}
        built = build_atlases(
            [e.dictionary for e in todo], model, tokenizer, texts, atlas_config,
            context_length=corpus.context_length, batch_size=corpus.batch_size,
            exclude_special_tokens=corpus.exclude_special_tokens, device=corpus.device, dtype=corpus.base_model_dtype,
            progress=progress, source=source, dictionary_paths=[e.source for e in todo],
        )
        for e, (dataset, info) in zip(todo, built):
            info.extra["settings_hash"] = _settings_hash(corpus, atlas_config, info.dictionary_fingerprint, base_model)
            info.extra["name"] = e.name
            folder = folders.get(e.name)
            if folder is not None:
                save_atlas(dataset, info, folder)
                dataset, info = load_atlas(folder)  # memory-mapped from disk from now on
            results[e.name] = (dataset, info)
        del model
    return [(e, *results[e.name], folders.get(e.name)) for e in entries]


def run_interpret(
    corpus: CorpusArguments,
    dict_args: DictionarySelection,
    atlas_config: AtlasConfig,
    llm_config: LLMConfig,
    comsem_config: ComSemConfig,
    output_dir: str | os.PathLike,
    atlas_paths: Sequence[str] = (),
    no_interpret: bool = False,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """atlas → explain → judge → metric for every dictionary; writes the outputs listed in the module docstring.

    Returns the per-dictionary reports (the content of each `comsem.json`), or the atlas statistics with
    `no_interpret`. With `llm_config.dry_run` nothing is sent and no result is written. Nothing is ever written
    into the dictionaries' folders: the results live beside the atlases that produced them.
    """
    out = Path(output_dir)
    # Fail on configuration (e.g. a missing API key) before any expensive work.
    backend = None if no_interpret else make_backend(llm_config)
    # A --judge_calibration file of another judge is bad input: said before any work.
    calibration = None if no_interpret else judge_calibration_for(llm_config, backend.identity)
    out.mkdir(parents=True, exist_ok=True)
    (out / INTERPRET_ARGS_FILE).write_text(json.dumps({
        "corpus": dataclasses.asdict(corpus), "dictionaries": dataclasses.asdict(dict_args),
        "atlas": dataclasses.asdict(atlas_config), "llm": llm_config.public_dict(),
        "comsem": dataclasses.asdict(comsem_config), "atlas_paths": list(atlas_paths), "hf_bae_version": __version__,
    }, indent=2) + "\n")

    if atlas_paths:
        items = []
        dictionaries = load_dictionaries(dict_args, atlas_config.random_features, atlas_config.seed) if dict_args.dictionary else []
        if dictionaries and len(dictionaries) != len(atlas_paths):
            raise ValueError(f"{len(atlas_paths)} atlases but {len(dictionaries)} dictionaries: pass one dictionary per atlas, or none.")
        for i, path in enumerate(atlas_paths):
            dataset, info = load_atlas(path)
            entry = None
            if dictionaries:
                entry = dictionaries[i]
                if entry.kind == "random":
                    entry.dictionary = RandomBaseline(info.num_features, info.seed)
                check_atlas_matches(info, entry.dictionary, path)
            name = entry.name if entry else info.extra.get("name") or Path(path).resolve().name
            items.append((entry or LoadedDictionary(name, RandomBaseline(info.num_features, info.seed), info.dictionary_path),
                          dataset, info, None))
        for (entry, *_), name in zip(items, _unique_names([e.name for e, *_ in items])):
            entry.name = name
    else:
        items = build_or_reuse_atlases(corpus, dict_args, atlas_config, lambda name: out / name / INTERPRET_ATLAS_DIR, progress)

    if no_interpret:
        stats = [{"name": e.name, **{k: getattr(info, k) for k in ("dictionary_type", "num_features", "num_tokens",
                                                                  "dead_features", "dense_features")}}
                 for e, _, info, _ in items]
        (out / RESULTS_JSON_FILE).write_text(json.dumps(stats, indent=2) + "\n")
        return stats

    cache = make_cache(llm_config)
    remaining = llm_config.max_calls
    reports, ledgers = [], {}
    random_score = None
    for entry, dataset, info, _ in items:
        client = LLMClient(backend, cache, max_calls=remaining, dry_run=llm_config.dry_run, progress=progress)
        run = run_comsem(dataset, client, comsem_config, progress=progress)
        if remaining is not None:
            remaining = max(0, remaining - client.ledger.calls)
        ledgers[entry.name] = client.ledger.to_dict()
        report = comsem_report(entry.name, info, run, {"backend": backend.identity, "model": backend.model}, calibration)
        reports.append(report)
        if info.dictionary_type == "random" and report["features_scored"]:
            random_score = report["comsem_score"]
        if not llm_config.dry_run and report["features_scored"]:
            folder = out / entry.name
            folder.mkdir(parents=True, exist_ok=True)
            apply_results(dataset, run).save_to_disk(str(folder / INTERPRETED_ATLAS_DIR))
            save_atlas_info(info, folder / INTERPRETED_ATLAS_DIR)
        print(f"{entry.name}: {report['coverage']}; {client.ledger.describe()}")

    measured = [r for r in reports if r["features_scored"]]
    compare_with_random(measured)
    for report in measured:
        if random_score is not None and report["dictionary_type"] != "random":
            report["random_baseline_comsem_score"] = random_score
        if llm_config.dry_run:
            continue
        text = json.dumps(report, indent=2) + "\n"
        for folder in (out / report["name"], out / report["name"] / INTERPRETED_ATLAS_DIR):
            (folder / COMSEM_FILE).write_text(text)

    (out / LEDGER_FILE).write_text(json.dumps(ledgers, indent=2) + "\n")
    if llm_config.dry_run:
        now = sum(l["would_call"] for l in ledgers.values())
        later = sum(r["judge_calls_pending_explanations"] for r in reports)
        cost = sum(l["would_call_estimated_cost_usd"] for l in ledgers.values())
        print(f"dry run: {now} calls would be made ({sum(l['cache_hits'] for l in ledgers.values())} answers are cached), "
              f"then up to {later} judge calls for the features whose explanation is not cached yet: at most {now + later} "
              f"calls. Estimated prompt cost of the first {now}: ${cost:.4f}.")
        return reports
    unmeasured = [r for r in reports if not r["features_scored"]]
    if measured:
        table = results_table(measured)
        (out / RESULTS_TABLE_FILE).write_text(table + "\n")
        (out / RESULTS_JSON_FILE).write_text(json.dumps(measured, indent=2) + "\n")
        plot_scores(measured, out / COMSEM_PLOT_FILE)
        print(table)
        if calibration is None or calibration.get("chance"):
            print(loud_warning(calibration) if calibration else f"!!! JUDGE {backend.identity} IS NOT CALIBRATED: a ComSem "
                  "score means little until the judge is shown to be above chance (`hf-bae calibrate` with the same LLM "
                  "flags). !!!")
    if unmeasured:
        message = nothing_scored_message(unmeasured, ledgers, backend.identity, out / LEDGER_FILE)
        if measured:
            message += f" The results of {', '.join(r['name'] for r in measured)} are in {out / RESULTS_TABLE_FILE}."
        raise RuntimeError(message)
    return reports
