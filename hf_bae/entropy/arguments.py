"""The options of the entropy studies (the flags of `hf-bae entropy`, one dataclass per group) and what
the data options load: the texts (`study_texts`) and the language model a study reads
(`study_language_model`, the LM the BAEs record unless `--base_model` names another)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from ..arguments import base_model_dtype_option, base_model_option, base_model_revision_option
from ..configuration import option


def check_at_least(options: Any, minimum: int, *flags: str) -> None:
    """Each named field of `options` (if set) is at least `minimum`; else a ValueError naming its flag."""
    for flag in flags:
        value = getattr(options, flag)
        if value is not None and value < minimum:
            raise ValueError(f"--{flag} must be at least {minimum}, got {value}.")


def check_finite(options: Any, *flags: str, positive: bool = False) -> None:
    """Each named float field of `options` is finite (and > 0 with `positive`); else a ValueError naming its flag."""
    for flag in flags:
        value = getattr(options, flag)
        if not math.isfinite(value) or (positive and value <= 0):
            raise ValueError(f"--{flag} must be a finite{' positive' if positive else ''} number, got {value}.")


@dataclass
class SourceArguments:
    """Where the hidden states come from."""

    base_model: str = base_model_option("embedded", "With --bae/--bae_dir: the base model recorded in the BAE's config "
                                        "unless one is named here.")
    base_model_revision: str | None = base_model_revision_option()
    dataset: str = option("embedded", "Text: 'embedded' (State of the Union paragraphs, offline), a Hub dataset id, or a "
                          "local .txt/.jsonl/.csv/.parquet file or folder.")
    dataset_config: str | None = option(None, "Configuration name of a Hub dataset.")
    split: str = option("train", "Dataset split.")
    text_column: str = option("text", "Column holding the text.")
    context_length: int = option(128, "Tokens per packed row.")
    lm_batch_size: int = option(8, "Rows (or prompts) per forward pass.")
    num_tokens: int = option(20_000, "Tokens evaluated (estimate, layers).")
    base_model_dtype: str | None = base_model_dtype_option()
    device: str | None = option(None, "Device (default: cuda if available, else cpu).")

    def __post_init__(self) -> None:
        """Checked when the flags are parsed, before any model or text is loaded."""
        check_at_least(self, 2, "context_length")
        check_at_least(self, 1, "lm_batch_size", "num_tokens")


@dataclass
class EstimatorArguments:
    """The estimate and where it is written."""

    output_dir: str = option("runs/entropy", "Folder for the CSV / JSON / PNG outputs (created).")
    num_bootstrap: int = option(200, "Bootstrap replicates for the interval (0: none).")
    confidence: float = option(0.95, "Confidence level of the interval.")
    min_samples: int = option(256, "Warn when an estimate rests on fewer hidden states than this.")
    seed: int = option(0, "Seed of the bootstrap, of prompt sampling and of --train.")
    progress: bool = option(True, "Show progress bars (--no_progress hides them).")

    def __post_init__(self) -> None:
        """Checked when the flags are parsed, before any model or text is loaded."""
        check_at_least(self, 0, "num_bootstrap", "min_samples")
        if not 0 < self.confidence < 1:
            raise ValueError(f"--confidence must be between 0 and 1 (e.g. 0.95), got {self.confidence}.")


@dataclass
class TrainOptions:
    """--train: fit the BAEs first (hf_bae.training's loop), on texts after the evaluated ones."""

    train: bool = option(False, "Train the BAEs instead of loading them; they are saved under OUTPUT_DIR/baes/.")
    train_steps: int = option(300, "Optimiser steps of each BAE.")
    train_batch_size: int = option(256, "Tokens per training batch.")
    train_learning_rate: float = option(1e-3, "Learning rate of --train.")
    eval_texts: int = option(200, "With --train: the first this many texts are held out for evaluation; training reads "
                             "the texts after them.")

    def __post_init__(self) -> None:
        """Checked when the flags are parsed, before any model or text is loaded."""
        check_at_least(self, 1, "train_steps", "train_batch_size")
        check_at_least(self, 0, "eval_texts")
        check_finite(self, "train_learning_rate", positive=True)


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

    def __post_init__(self) -> None:
        """Checked when the flags are parsed, before any model or text is loaded."""
        check_at_least(self, 0, "max_shots", "layer")
        check_at_least(self, 1, "num_queries")


@dataclass
class PositionsArguments:
    bae_dir: str | None = option(None, "Folder holding one BAE per position (sub-folders position_<t>), as --train writes.")
    layer: int | None = option(None, "Decoder layer read (default with --bae_dir: the BAEs' recorded layer).")
    site: str = option("resid_post", "Site of the layer.")
    max_position: int = option(32, "Positions 1..max_position-1 of each document (position 0 is BOS).")
    position_step: int = option(1, "Evaluate every this-many positions.")
    num_rows: int = option(512, "Documents (rows) read; with --train, half train the per-position BAEs, half evaluate.")

    def __post_init__(self) -> None:
        """Checked when the flags are parsed, before any model or text is loaded."""
        check_at_least(self, 0, "layer")
        check_at_least(self, 2, "max_position", "num_rows")
        check_at_least(self, 1, "position_step")


@dataclass
class SteerArguments:
    bae: str | None = option(None, "Folder of a trained BAE; the vector is added at its site.")
    layer: int | None = option(None, "With --train: the layer of the BAE to train.")
    task: str = option("antonyms", "Task file or shipped name (see `icl`).")
    shots: int = option(4, "Demonstrations in the k-shot prompts.")
    num_features: int = option(20, "Features whose firing rate differs most between k-shot and 0-shot prompts.")
    strength: float = option(1.0, "Multiplier of both task vectors (the original script's default was 0.2).")
    rescale: bool = option(True, "Scale the BAE vector to the centroid difference's norm (--no_rescale: raw W_dec·s).")

    def __post_init__(self) -> None:
        """Checked when the flags are parsed, before any model or text is loaded."""
        check_at_least(self, 0, "layer")
        check_at_least(self, 1, "shots", "num_features")
        check_finite(self, "strength")



def study_texts(source: SourceArguments, skip: int = 0, limit: int | None = None) -> Iterator[str]:
    """The dataset's texts, from the `skip`-th on, at most `limit` of them."""
    from ..activations import load_texts

    stream = load_texts(source.dataset, source.split, source.text_column, config_name=source.dataset_config)
    return itertools.islice(stream, skip, None if limit is None else skip + limit)


def study_language_model(source: SourceArguments, dictionaries: Iterable[Any] = ()) -> tuple[Any, Any]:
    """(model, tokenizer) of the LM to read: `--base_model` if given, else the base model (and revision) the
    dictionaries record (`hf_bae.loading.base_model_of`), else the embedded model."""
    import torch

    from ..activations import load_language_model
    from ..loading import base_model_of

    explicit = None if source.base_model == "embedded" else source.base_model
    name, revision = base_model_of(list(dictionaries), model=explicit, revision=source.base_model_revision)
    device = source.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return load_language_model(name, revision=revision, dtype=source.base_model_dtype, device=device)
