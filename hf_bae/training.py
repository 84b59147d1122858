"""The training loop: one loop, on `accelerate`, for the BAE and every baseline.

Several dictionaries (e.g. a BAE, a ReLU SAE and a TopK SAE) train side by side from one
activation stream, each with its own optimiser, output folder and metrics, so that they are
compared on exactly the same tokens. `accelerate` does device placement, DDP across processes,
mixed precision (autocast with fp32 master weights), gradient accumulation, trackers and
`save_state` checkpoints; this module adds the schedules (learning rate, entropy / L1 warm-up),
the data position (so that `--resume` continues bitwise identically on CPU), validation with
downstream fidelity, NaN detection, signal handling and progress.

Run layout (`OUTPUT_DIR/`)::

    training_args.json                 all options of the run
    checkpoints/checkpoint_<step>/     accelerator.save_state + data position (+ RNG), every N steps,
                                       on SIGTERM/SIGINT, and at the end
    <name>/                            one folder per dictionary ("bae", "topk", ...)
        config.json, model.safetensors save_pretrained, provenance filled
        eval_results.json              final validation metrics
        metrics.jsonl                  one JSON object per logged step (train and validation)
        plots/*.png                    loss, entropy, covariance, L0, frequency histogram

Use it from Python with any `ActivationSource`::

    trainer = Trainer(TrainingArguments(output_dir="runs/x", max_steps=1000),
                      {"bae": BinaryAutoencoder(BAEConfig(hidden_size=576))}, TensorSource({"x": acts}))
    results = trainer.train()

or from the command line (`hf-bae train --help`, `accelerate launch train.py ...`).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import shutil
import signal
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast, set_seed
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .arguments import config_arguments
from .configuration import SITES, BAEConfig, DictionaryConfig, SAEConfig, option, own_fields
from .evaluation import downstream_fidelity, evaluate_dictionary
from .metrics import DEFAULT_DENSE_THRESHOLD, features_fired
from .modeling_bae import BinaryAutoencoder
from .modeling_base import DictionaryPreTrainedModel
from .modeling_sae import SparseAutoencoder
from .normalization import encoder_bias_for_rate, normalization_statistics
from .sources import ActivationSource, CacheSource, LiveSource, SourceBatch, ValidationData
from .version import __version__

# --------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------

DICTIONARY_KINDS: dict[str, str] = {
    "bae": "Binary autoencoder (BAE options).",
    "relu": "ReLU SAE with the L1 penalty (--l1_weight).",
    "topk": "TopK SAE (--k), no L1.",
    "jumprelu": "JumpReLU SAE with a fixed threshold (--jumprelu_threshold) and the L1 penalty.",
    "legacy_topk": "The original code's TopK (keeps negatives and ties), no L1.",
    "sae": "SAE with --activation as given (the original feature_reconstruction_SAE.py).",
    "transcoder": "SAE (--activation) reading the MLP input of --layer and reconstructing --transcoder_target.",
}
_SAE_KIND_ACTIVATION = {"relu": "relu", "topk": "topk", "jumprelu": "jumprelu", "legacy_topk": "legacy_topk"}
MIXED_PRECISION = ("no", "bf16", "fp16")
SCHEDULES = ("constant", "linear", "cosine")
OPTIMIZERS = ("adam", "adamw")
TRACKERS = ("none", "tensorboard", "wandb", "all")




@dataclass
class TrainingArguments:
    """Options of a training run that are not properties of a dictionary (those live in the configs)."""

    # -- where the activations come from --------------------------------------------------------
    model_name_or_path: str = option(
        "embedded", "Language model whose hidden states are encoded: a Hub id, a local folder, or 'embedded' "
        "(SmolLM2-135M-Instruct, offline).", aliases=["--model"])
    model_revision: str | None = option(None, "Revision (branch, tag or commit) of the language model.")
    lm_dtype: str | None = option(None, "dtype of the language model (float32, bfloat16, float16); default: float32 "
                                  "on CPU, bfloat16 on GPU.")
    dataset: str = option("embedded", "Text dataset (Hub id, local folder, or 'embedded': State of the Union "
                          "addresses, offline), streamed with datasets.")
    dataset_config: str | None = option(None, "Configuration name of the dataset.")
    data_files: list[str] | None = option(None, "Data files of the dataset (e.g. local .txt / .jsonl files).")
    split: str = option("train", "Split the training texts come from.")
    text_column: str = option("text", "Column holding the text.")
    validation_split: str | None = option(
        None, "Split of held-out texts for validation. If unset, the first --validation_texts texts of --split are "
        "held out (and never trained on).")
    validation_texts: int = option(64, "Number of held-out texts validation activations are taken from.")
    layer: int | None = option(None, "Decoder layer L (0-based) whose site is hooked; default: the middle layer.")
    site: str = option("resid_post", "Hooked site: resid_post (output of layer L = hidden_states[L+1]), mlp_in or "
                       "mlp_out.", choices=SITES)
    transcoder_target: str = option(
        "mlp_out", "What a transcoder reconstructs from the MLP input of layer L: mlp_out (a standard transcoder) "
        "or resid_post (the original code's target, the residual stream after layer L).",
        choices=("mlp_out", "resid_post"))
    context_length: int = option(128, "Tokens per packed row fed to the language model.")
    lm_batch_size: int = option(8, "Rows per language-model forward pass.")
    shuffle_rows: int = option(64, "Rows whose tokens are pooled and shuffled together before batches are cut "
                               "(a multiple of --lm_batch_size); more rows mix more sequences per batch.")
    exclude_special_tokens: bool = option(True, "Leave BOS/EOS/pad tokens out of training (their activations are "
                                          "outliers).")
    outlier_factor: float | None = option(None, "Also leave out tokens whose activation norm exceeds this many times "
                                          "the median.")
    cache: str | None = option(None, "Train from an activation cache written by `hf-bae harvest` instead of running "
                               "the language model.", aliases=["--cache_dir"])
    train_fraction: float = option(0.8, "Cache only: the first fraction of the cache trains, the rest validates "
                                   "(split in order, as the original --dataset_split).", aliases=["--dataset_split"])
    # -- what is trained ------------------------------------------------------------------------
    dictionaries: list[str] = option(
        ["bae"], "Dictionaries trained side by side on the same tokens, each with its own optimiser and folder: "
        + "; ".join(f"{k}: {v.rstrip('.')}" for k, v in DICTIONARY_KINDS.items()) + ".",
        choices=tuple(DICTIONARY_KINDS))
    # -- optimisation ---------------------------------------------------------------------------
    learning_rate: float = option(5e-4, "Learning rate (the original's published commands use 5e-4).",
                                  aliases=["--lr"])
    weight_decay: float = option(0.0, "Weight decay (L2 added to the gradient with adam; decoupled with adamw).")
    optimizer: str = option("adam", "Optimiser: adam (as the original) or adamw.", choices=OPTIMIZERS)
    adam_beta1: float = option(0.9, "Adam beta1.")
    adam_beta2: float = option(0.999, "Adam beta2.")
    lr_scheduler: str = option("constant", "Learning-rate schedule after warm-up: constant, linear or cosine decay "
                               "to 0 (linear/cosine need a known number of steps).", choices=SCHEDULES)
    warmup_steps: int = option(0, "Steps of linear learning-rate warm-up.")
    max_grad_norm: float = option(0.0, "Clip the gradient norm to this value (0: no clipping, as the original).")
    batch_size: int = option(512, "Tokens per batch and process. The BAE's entropy and covariance are batch "
                             "statistics, so this also sets their estimator.")
    gradient_accumulation_steps: int = option(1, "Batches accumulated per optimiser step.")
    max_steps: int = option(0, "Stop after this many optimiser steps (0: no limit).")
    max_tokens: int = option(0, "Stop after this many training tokens over all processes (0: no limit).")
    num_epochs: int = option(0, "Passes over a finite source (cache or tensors). With no budget at all, a finite "
                             "source trains one epoch and a live stream until its texts run out.")
    entropy_start_step: int = option(0, "BAE entropy term is off (weight 0) before this optimiser step.")
    entropy_start_tokens: int = option(0, "BAE entropy term is off before this many training tokens.")
    entropy_start_epoch: int = option(0, "BAE entropy term is off before this epoch (finite sources only; the "
                                      "original's default was 500).")
    l1_start_step: int = option(0, "SAE L1 penalty is off before this optimiser step.")
    l1_start_tokens: int = option(0, "SAE L1 penalty is off before this many training tokens.")
    l1_start_epoch: int = option(0, "SAE L1 penalty is off before this epoch (finite sources only).")
    mixed_precision: str = option("no", "Autocast precision with fp32 master weights: no, bf16 or fp16 (bf16 "
                                  "recommended on GPUs; slow on most CPUs).", choices=MIXED_PRECISION)
    compile: bool = option(False, "torch.compile each dictionary (accelerate's dynamo backend 'inductor'): fuses the "
                           "element-wise work around the matmuls; the covariance penalty's custom autograd stays eager. "
                           "Needs a C++ compiler on the CPU; the first steps are slow while it compiles.")
    fused_optimizer: bool = option(False, "Use the fused Adam/AdamW kernel (one kernel for all parameters; CUDA and CPU "
                                   "float32/bf16): faster steps on a GPU, tiny numerical differences from the default.")
    cpu: bool = option(False, "Train on the CPU even when an accelerator is available (also for multi-process CPU "
                       "runs: `accelerate launch --multi_gpu --num_processes 2 train.py --cpu`).")
    seed: int = option(0, "Seed of initialisation and data shuffling.")
    initialization_tokens: int = option(
        8192, "Tokens of the first training batches on which a new run estimates the normalisation statistics "
        "(--normalize_activations) and sets the BAE's initial firing rate (--initial_firing_rate).")
    # -- evaluation -----------------------------------------------------------------------------
    validate_every: int = option(500, "Validate every N optimiser steps (and at the end; 0: only at the end).")
    validation_tokens: int = option(8192, "Held-out tokens used for validation.")
    splice_rows: int = option(8, "Held-out rows of --context_length tokens on which the reconstruction is spliced "
                              "into the language model for KL / JS / CE-loss score (0: skip).")
    dense_threshold: float = option(DEFAULT_DENSE_THRESHOLD, "A feature is dense when it fires on more than this "
                                    "fraction of validation tokens (the paper gives no value).")
    dead_window_tokens: int = option(1_000_000, "Training-time dead features: fired on none of the last this many "
                                     "training tokens (per process).")
    # -- output ---------------------------------------------------------------------------------
    output_dir: str = option("runs/hf_bae", "Folder of the run (see the layout in hf_bae.training).",
                             aliases=["--save_dir"])
    overwrite: bool = option(False, "Replace a previous run in --output_dir.")
    resume: bool = option(False, "Continue the run in --output_dir from its latest checkpoint.")
    save_dictionaries: bool = option(True, "Write each dictionary with save_pretrained at the end (the original's "
                                     "--dont_save_model is --no_save_dictionaries).")
    checkpoint_every: int = option(1000, "Checkpoint every N optimiser steps (0: only on a signal and at the end).")
    save_total_limit: int = option(2, "Checkpoints kept (older ones are deleted).")
    log_every: int = option(10, "Log training metrics every N optimiser steps.")
    nan_check_every: int = option(1, "Check that losses and gradients are finite every N steps (each check syncs "
                                  "the device; with N > 1 the first bad step is still found exactly).")
    report_to: str = option("none", "Trackers: none, tensorboard, wandb or all (installed ones only).",
                            choices=TRACKERS)
    progress: bool = option(True, "Show a tqdm progress bar (main process only).")
    plots: bool = option(True, "Draw the plots of each dictionary at the end (plots/*.png).")

    def __post_init__(self) -> None:
        for name in ("batch_size", "gradient_accumulation_steps", "context_length", "lm_batch_size",
                     "shuffle_rows", "save_total_limit", "log_every", "nan_check_every", "initialization_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}.")
        for name in ("max_steps", "max_tokens", "num_epochs", "warmup_steps", "validate_every", "checkpoint_every",
                     "validation_tokens", "splice_rows", "validation_texts", "entropy_start_step",
                     "entropy_start_tokens", "entropy_start_epoch", "l1_start_step", "l1_start_tokens",
                     "l1_start_epoch", "dead_window_tokens"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name} must be >= 0, got {getattr(self, name)}.")
        if self.learning_rate <= 0:
            raise ValueError(f"--learning_rate must be > 0, got {self.learning_rate}.")
        if self.shuffle_rows % self.lm_batch_size:
            raise ValueError(f"--shuffle_rows ({self.shuffle_rows}) must be a multiple of --lm_batch_size "
                             f"({self.lm_batch_size}).")
        if not 0 < self.train_fraction <= 1:
            raise ValueError(f"--train_fraction must be in (0, 1], got {self.train_fraction}.")
        if not self.dictionaries:
            raise ValueError("--dictionaries is empty: name at least one of " + ", ".join(DICTIONARY_KINDS) + ".")
        for kind in self.dictionaries:
            if kind not in DICTIONARY_KINDS:
                raise ValueError(f"Unknown dictionary {kind!r}; choose from {', '.join(DICTIONARY_KINDS)}.")
        if len(set(self.dictionaries)) != len(self.dictionaries):
            raise ValueError(f"--dictionaries names one kind twice: {self.dictionaries}.")
        if self.overwrite and self.resume:
            raise ValueError("--overwrite and --resume contradict each other: pass one.")
        if self.cache is None and (self.entropy_start_epoch or self.l1_start_epoch):
            raise ValueError("Warm-ups in epochs need a finite source (--cache); a live stream has no epochs: use "
                             "--entropy_start_step / --entropy_start_tokens (or the l1_ ones).")
        if self.cache is None and self.num_epochs:
            raise ValueError("--num_epochs needs a finite source (--cache); bound a live stream with --max_steps or "
                             "--max_tokens.")
        if self.lr_scheduler != "constant" and not (self.max_steps or self.max_tokens or self.num_epochs):
            raise ValueError(f"--lr_scheduler {self.lr_scheduler} decays to 0 at the last step: set --max_steps, "
                             "--max_tokens or --num_epochs.")


# Config fields that describe the data rather than the dictionary: the trainer fills them.
PROVENANCE_FIELDS = ("hidden_size", "output_size", "base_model", "base_model_revision", "layer", "site",
                     "output_site", "dataset", "context_length", "token_filter", "hf_bae_version",
                     "activation_scale", "target_scale")
_COMMON_FIELDS = tuple(f.name for f in own_fields(DictionaryConfig))

DictionaryArguments = config_arguments(DictionaryConfig, exclude=PROVENANCE_FIELDS)
DictionaryArguments._argument_group_name = "Dictionary options (every dictionary)"
BAEArguments = config_arguments(BAEConfig, exclude=_COMMON_FIELDS)
BAEArguments._argument_group_name = "BAE options"
SAEArguments = config_arguments(SAEConfig, exclude=_COMMON_FIELDS)
SAEArguments._argument_group_name = "SAE options (relu, topk, jumprelu, legacy_topk, sae, transcoder)"
TrainingArguments._argument_group_name = "Training options"
ARGUMENT_CLASSES = (TrainingArguments, DictionaryArguments, BAEArguments, SAEArguments)

# Options that may differ when resuming: they change neither the data order nor the model.
RESUMABLE_CHANGES = frozenset({
    "max_steps", "max_tokens", "num_epochs", "validate_every", "log_every", "checkpoint_every", "save_total_limit",
    "report_to", "resume", "overwrite", "nan_check_every", "progress", "learning_rate", "max_grad_norm",
    "splice_rows", "validation_tokens", "dense_threshold", "save_dictionaries", "output_dir", "cache", "plots",
    "compile", "covariance_implementation", "covariance_chunk_size", "decoder_implementation",
})


class NonFiniteLossError(RuntimeError):
    """Raised when a loss or gradient became NaN/inf; the message names the step and the checkpoint."""


class TrainingInterrupted(RuntimeError):
    """Raised after SIGINT/SIGTERM once a checkpoint is saved; `--resume` continues from it."""

    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.signal_number = signal_number


# --------------------------------------------------------------------------------------------
# Pure helpers: schedules
# --------------------------------------------------------------------------------------------


def learning_rate_at(step: int, base: float, schedule: str = "constant", warmup_steps: int = 0,
                     total_steps: int | None = None) -> float:
    """Learning rate of optimiser step `step` (0-based): linear warm-up, then constant / linear / cosine to 0."""
    if warmup_steps and step < warmup_steps:
        return base * (step + 1) / warmup_steps
    if schedule == "constant" or not total_steps:
        return base
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "linear":
        return base * (1.0 - progress)
    if schedule == "cosine":
        return base * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"Unknown learning-rate schedule {schedule!r}; choose from {', '.join(SCHEDULES)}.")


def penalty_active(step: int, tokens: int, epoch: int, start_step: int = 0, start_tokens: int = 0,
                   start_epoch: int = 0) -> bool:
    """Whether a warm-up-delayed penalty is on at this step: every given start (step, tokens, epoch) is reached."""
    return step >= start_step and tokens >= start_tokens and epoch >= start_epoch


# --------------------------------------------------------------------------------------------
# Dictionaries
# --------------------------------------------------------------------------------------------


def site_key(layer: int | None, name: str) -> str:
    """The source key of a site, e.g. ``site_key(5, "resid_post") == "layers.5.resid_post"``."""
    return name if layer is None else f"layers.{layer}.{name}"


@dataclass
class _Entry:
    """A dictionary in training: model (as prepared), optimiser, the source keys it reads, its counters."""

    name: str
    model: Any
    optimizer: Any
    input_key: str
    target_key: str | None
    is_bae: bool
    since_fired: torch.Tensor | None = None
    window: torch.Tensor | None = None  # device-side sums of the train metrics since the last log


def build_dictionary(kind: str, hidden_size: int, output_size: int | None, dictionary: dict[str, Any],
                     bae: dict[str, Any], sae: dict[str, Any], provenance: dict[str, Any]) -> DictionaryPreTrainedModel:
    """A fresh dictionary of `kind` (see `DICTIONARY_KINDS`) from the parsed option groups and the provenance."""
    if kind not in DICTIONARY_KINDS:
        raise ValueError(f"Unknown dictionary {kind!r}; choose from {', '.join(DICTIONARY_KINDS)}.")
    common = {**dictionary, **provenance, "hidden_size": hidden_size}
    if output_size is not None and output_size != hidden_size:
        common["output_size"] = output_size
    if kind == "bae":
        return BinaryAutoencoder(BAEConfig(**common, **bae))
    options = dict(sae)
    if kind in _SAE_KIND_ACTIVATION:
        options["activation"] = _SAE_KIND_ACTIVATION[kind]
    if options.get("activation") in ("topk", "legacy_topk"):
        options["l1_weight"] = 0.0  # as the original: TopK is sparse by construction
    return SparseAutoencoder(SAEConfig(**common, **options))


def _default_inputs(dictionaries: dict[str, DictionaryPreTrainedModel], sites: Sequence[str]) -> dict[str, tuple]:
    out = {}
    for name, model in dictionaries.items():
        c = model.config
        if len(sites) == 1 and not c.is_transcoder:
            out[name] = (sites[0], None)
            continue
        key = site_key(c.layer, c.site)
        target = site_key(c.layer, c.output_site) if c.is_transcoder else None
        for k in (key, target):
            if k is not None and k not in sites:
                raise ValueError(f"Dictionary {name!r} reads {k}, which the source does not serve (it has "
                                 f"{', '.join(sites)}): pass `inputs=` or set the config's layer/site.")
        out[name] = (key, target)
    return out


# --------------------------------------------------------------------------------------------
# Output folder and checkpoints
# --------------------------------------------------------------------------------------------

CHECKPOINT_PREFIX = "checkpoint_"


def holds_run(output_dir: str | Path) -> bool:
    """Whether `output_dir` already holds a training run (its options or checkpoints)."""
    path = Path(output_dir)
    return (path / "training_args.json").exists() or (path / "checkpoints").is_dir()


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run (complete = its trainer_state.json was written last)."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return None
    done = [p for p in root.iterdir() if p.name.startswith(CHECKPOINT_PREFIX) and (p / "trainer_state.json").exists()]
    return max(done, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]), default=None)


def check_output_dir(args: TrainingArguments) -> Path | None:
    """Refuse an output folder that holds another run (unless --overwrite / --resume); the checkpoint to resume."""
    out = Path(args.output_dir)
    if args.resume:
        checkpoint = latest_checkpoint(out)
        if checkpoint is None:
            raise ValueError(f"--resume: {out} holds no complete checkpoint (looked in {out / 'checkpoints'}). Start "
                             "a new run without --resume.")
        return checkpoint
    if holds_run(out) and not args.overwrite:
        raise ValueError(f"{out} already holds a training run (training_args.json or checkpoints/). Pass --resume to "
                         "continue it, --overwrite to replace it, or choose another --output_dir.")
    return None


def _clear_run(out: Path, names: Sequence[str]) -> None:
    previous = []
    if (out / "training_args.json").exists():
        try:
            previous = json.loads((out / "training_args.json").read_text()).get("dictionaries", [])
        except (json.JSONDecodeError, AttributeError):
            previous = []
    for name in set(names) | set(previous):
        if (out / name / "config.json").exists() or (out / name / "metrics.jsonl").exists():
            shutil.rmtree(out / name)
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    (out / "training_args.json").unlink(missing_ok=True)


def _json_default(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value)}")


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------

_TRAIN_STATS = ("loss", "reconstruction_loss", "entropy_bits", "covariance", "l1", "l0", "squared_error",
                "target_variance")


def make_accelerator(args: TrainingArguments) -> Accelerator:
    """The `Accelerator` of a run: device, mixed precision, gradient accumulation and trackers from `args`."""
    log_with = None if args.report_to == "none" else args.report_to
    return Accelerator(cpu=args.cpu, mixed_precision=args.mixed_precision, log_with=log_with,
                       dynamo_backend="inductor" if args.compile else "no",
                       gradient_accumulation_steps=args.gradient_accumulation_steps, project_dir=args.output_dir)


def _make_optimizer(model: torch.nn.Module, args: TrainingArguments) -> torch.optim.Optimizer:
    cls = torch.optim.AdamW if args.optimizer == "adamw" else torch.optim.Adam
    scale = getattr(model.config, "encoder_bias_lr_scale", 1.0)
    bias = model.encoder.bias if scale != 1.0 else None
    groups = [{"params": [p for p in model.parameters() if p is not bias], "lr_scale": 1.0}]
    if bias is not None:  # a group of its own only when it differs: the original's optimiser state stays as it was
        groups.append({"params": [bias], "lr_scale": scale})
    return cls([{**g, "lr": args.learning_rate * g["lr_scale"]} for g in groups], lr=args.learning_rate,
               betas=(args.adam_beta1, args.adam_beta2), weight_decay=args.weight_decay,
               fused=True if args.fused_optimizer else None)


class _prepend:
    """`head` then `rest`; `close()` closes `rest` (a live stream removes its hooks), even if never started."""

    def __init__(self, head: list[SourceBatch], rest: Iterator[SourceBatch]):
        self.head, self.rest = list(head), rest

    def __iter__(self):
        return self

    def __next__(self) -> SourceBatch:
        return self.head.pop(0) if self.head else next(self.rest)

    def close(self) -> None:
        self.head = []
        self.rest.close()


class Trainer:
    """Trains several dictionaries from one `ActivationSource` with `accelerate` (see the module docstring).

    Args:
        args: the run's options.
        dictionaries: name → fresh (or pretrained) dictionary; the name is its output folder.
        source: where the training (and validation) activations come from.
        inputs: name → (input site key, target site key or None); default: the source's only site, or
            the keys named by each config's layer/site/output_site.
        language_model, tokenizer: the LM, for the splice metrics (optional).
        run_options: what `training_args.json` records (default: `args`).
        accelerator: an existing `Accelerator` (default: one made from `args`).
        initialize: at the start of a new run, estimate each dictionary's normalisation and set a BAE's
            initial firing rate from the first batches (False for dictionaries that are already trained).
    """

    def __init__(self, args: TrainingArguments, dictionaries: dict[str, DictionaryPreTrainedModel],
                 source: ActivationSource, *, inputs: dict[str, tuple[str, str | None]] | None = None,
                 language_model=None, tokenizer=None, run_options: dict[str, Any] | None = None,
                 accelerator: Accelerator | None = None, initialize: bool = True):
        if not dictionaries:
            raise ValueError("No dictionaries to train.")
        self.args, self.source, self.initialize = args, source, initialize
        self.language_model, self.tokenizer = language_model, tokenizer
        self.run_options = dict(run_options) if run_options is not None else dataclasses.asdict(args)
        self.run_options["dictionaries"] = list(dictionaries)
        self.output_dir = Path(args.output_dir)
        # Every process checks everything (read-only) before any process writes, so that a refusal
        # is raised everywhere, leaves the output folder as it was, and no process waits at a barrier.
        self.resume_from = check_output_dir(args)
        self._check_resumed_options()
        inputs = inputs or _default_inputs(dictionaries, source.sites)
        for name, model in dictionaries.items():
            key, target = inputs[name]
            width = source.hidden_size(key)
            if width != model.config.hidden_size:
                raise ValueError(
                    f"Dictionary {name!r} expects hidden size {model.config.hidden_size} "
                    f"({model.config.describe_source()}) but the source's {key} is {width} wide: was it made for "
                    "another model, layer or site?")
            if target is not None and source.hidden_size(target) != model.config.reconstruction_size:
                raise ValueError(f"Dictionary {name!r} reconstructs {model.config.reconstruction_size} values but "
                                 f"the source's {target} is {source.hidden_size(target)} wide.")
        self.accelerator = accelerator or make_accelerator(args)
        acc = self.accelerator
        acc.wait_for_everyone()
        if acc.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            if args.overwrite:
                _clear_run(self.output_dir, list(dictionaries))
            (self.output_dir / "training_args.json").write_text(
                json.dumps({**self.run_options, "hf_bae_version": __version__}, indent=2, default=_json_default) + "\n")
        acc.wait_for_everyone()

        self.entries: list[_Entry] = []
        for name, model in dictionaries.items():
            key, target = inputs[name]
            model.check_inputs = False  # the loop checks the loss instead of syncing on every input
            model.train()
            optimizer = _make_optimizer(model, args)
            model, optimizer = acc.prepare(model, optimizer)
            self.entries.append(_Entry(name, model, optimizer, key, target, isinstance(acc.unwrap_model(model),
                                                                                   BinaryAutoencoder)))
        for e in self.entries:
            e.since_fired = torch.zeros(self._unwrap(e).config.num_latents, dtype=torch.long, device=acc.device)

        self.step, self.tokens, self.epoch = 0, 0, 0
        self.data_state: dict[str, Any] | None = None
        self.data_tensors: dict[str, torch.Tensor] = {}
        self.tokens_per_step = args.batch_size * args.gradient_accumulation_steps * acc.num_processes
        self.validation: ValidationData | None = None
        self.last_results: dict[str, dict[str, float]] = {}
        self._signal: int | None = None
        self._first_bad: torch.Tensor | None = None
        self._last_checkpoint_step = -1
        self._last_validation_step = -1

    # -- small utilities ------------------------------------------------------------------------
    def _unwrap(self, entry: _Entry) -> DictionaryPreTrainedModel:
        return self.accelerator.unwrap_model(entry.model)

    def _check_resumed_options(self) -> None:
        path = self.output_dir / "training_args.json"
        if self.resume_from is None or not path.exists():
            return
        old = json.loads(path.read_text())
        options = json.loads(json.dumps(self.run_options, default=_json_default))
        changed = sorted(k for k in set(old) | set(options)
                         if old.get(k) != options.get(k) and k not in RESUMABLE_CHANGES | {"hf_bae_version"})
        if changed:
            details = ", ".join(f"{k}: {old.get(k)!r} -> {options.get(k)!r}" for k in changed)
            raise ValueError(f"--resume with different options would not continue the same run ({details}). "
                             "Resume with the original options, or start a new run in another --output_dir.")

    def _total_steps(self) -> int | None:
        a = self.args
        limits = []
        if a.max_steps:
            limits.append(a.max_steps)
        if a.max_tokens:
            limits.append(math.ceil(a.max_tokens / self.tokens_per_step))
        per_epoch = self.source.batches_per_epoch(a.batch_size)
        if self.source.finite and per_epoch:
            epochs = a.num_epochs or (0 if limits else 1)
            if epochs:
                limits.append(epochs * per_epoch // a.gradient_accumulation_steps)
        return min(limits) if limits else None

    def _agree(self, *flags: bool) -> list[bool]:
        """Any-reduce boolean flags over processes (no communication in a single process)."""
        if self.accelerator.num_processes == 1:
            return list(flags)
        t = torch.tensor([int(f) for f in flags], device=self.accelerator.device)
        t = self.accelerator.reduce(t, reduction="sum")
        return [bool(v) for v in t.tolist()]

    def _on_signal(self, signum, frame) -> None:
        if self._signal is not None:  # a second signal: stop at once, without a checkpoint
            raise KeyboardInterrupt
        self._signal = signum
        if self.accelerator.is_main_process:
            sys.stderr.write(f"\n{signal.Signals(signum).name}: saving a checkpoint after this step (send it again to "
                             "stop at once without saving).\n")

    def _log(self, entry_name: str, record: dict[str, Any]) -> None:
        path = self.output_dir / entry_name / "metrics.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(json.dumps(record, default=_json_default) + "\n")

    # -- checkpoints ----------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Save models, optimisers, RNG (accelerate) and the data position of every process; returns the folder."""
        acc = self.accelerator
        root = self.output_dir / "checkpoints"
        final = root / f"{CHECKPOINT_PREFIX}{self.step:08d}"
        tmp = root / f".tmp_{CHECKPOINT_PREFIX}{self.step:08d}"
        acc.wait_for_everyone()
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        rank = acc.process_index
        tensors = {f"data.{k}": v.detach().cpu().contiguous() for k, v in self.data_tensors.items()}
        tensors.update({f"since_fired.{e.name}": e.since_fired.cpu() for e in self.entries})
        for e in self.entries:
            norm = self._unwrap(e).normalization
            if norm is not None:
                tensors[f"normalization.{e.name}.input_mean"] = norm[0].cpu().clone()
                tensors[f"normalization.{e.name}.target_mean"] = norm[2].cpu().clone()
                tensors[f"normalization.{e.name}.scales"] = torch.tensor([norm[1], norm[3]], dtype=torch.float64)
        save_file(tensors, str(tmp / f"data_state_{rank}.safetensors"))
        (tmp / f"data_state_{rank}.json").write_text(json.dumps({"state": self.data_state, "epoch": self.epoch}))
        acc.wait_for_everyone()
        if acc.is_main_process:
            state = {"step": self.step, "tokens": self.tokens, "epoch": self.epoch, "world_size": acc.num_processes,
                     "dictionaries": [e.name for e in self.entries], "hf_bae_version": __version__}
            (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2) + "\n")
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            kept = sorted((p for p in root.iterdir() if p.name.startswith(CHECKPOINT_PREFIX)),
                          key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))
            for old in kept[:-self.args.save_total_limit]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        self._last_checkpoint_step = self.step
        return final

    def load_checkpoint(self, path: Path) -> None:
        """Restore a checkpoint written by `save_checkpoint` (same dictionaries and number of processes)."""
        acc = self.accelerator
        state = json.loads((path / "trainer_state.json").read_text())
        if state["world_size"] != acc.num_processes:
            raise ValueError(f"{path} was written by {state['world_size']} process(es); resume it with the same "
                             f"number (this run has {acc.num_processes}), or the data order would change.")
        if state["dictionaries"] != [e.name for e in self.entries]:
            raise ValueError(f"{path} holds dictionaries {state['dictionaries']}, this run trains "
                             f"{[e.name for e in self.entries]}: resume with the same --dictionaries.")
        acc.load_state(str(path))
        rank = acc.process_index
        data = json.loads((path / f"data_state_{rank}.json").read_text())
        tensors = load_file(str(path / f"data_state_{rank}.safetensors"))
        self.step, self.tokens, self.epoch = state["step"], state["tokens"], data["epoch"]
        self.data_state = data["state"]
        self.data_tensors = {k[len("data."):]: v for k, v in tensors.items() if k.startswith("data.")}
        for e in self.entries:
            e.since_fired = tensors[f"since_fired.{e.name}"].to(acc.device)
            if f"normalization.{e.name}.scales" in tensors:
                scales = tensors[f"normalization.{e.name}.scales"].tolist()
                self._unwrap(e).set_normalization(tensors[f"normalization.{e.name}.input_mean"], scales[0],
                                                  tensors[f"normalization.{e.name}.target_mean"], scales[1])
        self._last_checkpoint_step = self.step
        if acc.is_main_process:  # the interrupted run may have logged past its last checkpoint
            for e in self.entries:
                log = self.output_dir / e.name / "metrics.jsonl"
                if log.exists():
                    lines = [ln for ln in log.read_text().splitlines() if ln and json.loads(ln)["step"] <= self.step]
                    log.write_text("".join(ln + "\n" for ln in lines))
        acc.wait_for_everyone()

    # -- data-dependent initialisation -------------------------------------------------------------
    def _initialize_from_data(self, batches: Iterator[SourceBatch]) -> Iterator[SourceBatch]:
        """Normalisation statistics and the BAE's initial firing rate, from the first training batches.

        Each process estimates on its own batches, then every process takes rank 0's values, so that the
        replicas stay identical. Returns the stream with those batches put back in front: training still
        sees every batch once, in the same order, and a live source runs the LM only once.
        """
        a, acc = self.args, self.accelerator
        todo = []
        for e in self.entries:
            c = self._unwrap(e).config
            normalize = c.normalize_activations != "none" and c.activation_scale is None
            rate = getattr(c, "initial_firing_rate", None) if c.encoder_bias else None
            if normalize or rate:
                todo.append((e, normalize, rate))
        if not todo:
            return batches
        # A short run never reads ahead more batches than it will train on.
        wanted = min(a.initialization_tokens, a.max_steps * a.batch_size) if a.max_steps else a.initialization_tokens
        head: list[SourceBatch] = []
        for batch in batches:
            head.append(batch)
            if len(head) * a.batch_size >= wanted:
                break
        if not head:
            batches.close()
            raise ValueError("Training ended before its first step: the source yielded no full batch of "
                             f"{a.batch_size} tokens per process. Provide more data or lower --batch_size.")
        sample = {k: torch.cat([b.activations[k] for b in head]).to(acc.device) for k in head[0].activations}
        for e, normalize, rate in todo:
            model = self._unwrap(e)
            x = sample[e.input_key]
            if normalize:
                center = model.config.normalize_activations == "center_scale"
                mean, scale = normalization_statistics(x, center)
                target_mean, target_scale = (normalization_statistics(sample[e.target_key], center)
                                             if e.target_key is not None else (mean, scale))
                if acc.num_processes > 1:
                    mean, target_mean = broadcast(mean.contiguous()), broadcast(target_mean.contiguous())
                    scale, target_scale = broadcast(torch.tensor([scale, target_scale], device=acc.device,
                                                                 dtype=torch.float64)).tolist()
                model.set_normalization(mean, scale, target_mean, target_scale)
            if rate:
                with torch.no_grad():
                    pre = model._normalize_input(x.to(model.encoder.weight.dtype)) @ model.encoder.weight.T
                    bias = encoder_bias_for_rate(pre, rate).to(model.encoder.bias.dtype)
                    if acc.num_processes > 1:
                        bias = broadcast(bias.contiguous())
                    model.encoder.bias.copy_(bias)
            if getattr(model.config, "unit_norm_encoder", False):
                model.normalize_encoder_rows()  # the codes are unchanged; training keeps the rows at unit norm
        return _prepend(head, batches)

    # -- one step -------------------------------------------------------------------------------
    def _forward_backward(self, batch: SourceBatch) -> list[torch.Tensor]:
        """Forward and backward of every dictionary on one batch; returns their detached losses."""
        a, acc = self.args, self.accelerator
        acts = {k: v.to(acc.device, non_blocking=True) for k, v in batch.activations.items()}
        n = next(iter(acts.values())).shape[0]
        losses = []
        for e in self.entries:
            x = acts[e.input_key]
            target = acts[e.target_key] if e.target_key is not None else None
            if e.is_bae:
                on = penalty_active(self.step, self.tokens, batch.epoch, a.entropy_start_step,
                                    a.entropy_start_tokens, a.entropy_start_epoch)
                out = e.model(x, target=target, entropy_weight=None if on else 0.0)
                fired = out.codes if self._unwrap(e).config.bits == 1 else features_fired(
                    out.codes, self._unwrap(e).config.bits)
                extra = (out.entropy_loss, out.covariance_loss, None)
            else:
                on = penalty_active(self.step, self.tokens, batch.epoch, a.l1_start_step, a.l1_start_tokens,
                                    a.l1_start_epoch)
                c = self._unwrap(e).config
                dead = e.since_fired >= c.auxk_dead_tokens if c.activation == "topk" and c.auxk_weight > 0 else None
                out = e.model(x, target=target, l1_weight=None if on else 0.0, dead_mask=dead)
                fired = out.latents
                extra = (None, None, out.l1_loss)
            acc.backward(out.loss)
            with torch.no_grad():
                t = (x if target is None else target).float()
                fired_mask = fired.detach() != 0
                zero = out.loss.new_zeros(())
                stats = torch.stack([
                    out.loss.detach().float(), out.reconstruction_loss.detach().float(),
                    *[(v.detach().float() if v is not None else zero) for v in extra],
                    fired_mask.sum(-1).float().mean(),
                    (t - out.reconstruction.detach().float()).pow(2).sum(),
                    (t - t.mean(0, keepdim=True)).pow(2).sum(),
                ])
                e.window = stats if e.window is None else e.window + stats
                e.since_fired += n
                e.since_fired.masked_fill_(fired_mask.any(0), 0)
            losses.append(out.loss.detach())
        return losses

    def _grad_norms(self) -> list[torch.Tensor]:
        norms = []
        for e in self.entries:
            grads = [p.grad for p in e.model.parameters() if p.grad is not None]
            if self.args.max_grad_norm > 0:
                norms.append(self.accelerator.clip_grad_norm_(e.model.parameters(), self.args.max_grad_norm))
            elif self.accelerator.num_processes > 1 and self.args.mixed_precision != "fp16":
                norms.append(torch.nn.utils.get_total_norm(grads))
        return norms

    def _check_finite(self, losses: list[torch.Tensor], norms: list[torch.Tensor], check_now: bool) -> None:
        values = torch.stack([v.float().reshape(()) for v in losses + norms])
        bad_now = ~torch.isfinite(values).all()
        if self.args.nan_check_every > 1:
            # Remember the first bad step on the device; look at it only every N steps.
            step = torch.tensor(self.step + 1, device=values.device)
            if self._first_bad is None:
                self._first_bad = torch.tensor(-1, device=values.device)
            self._first_bad = torch.where(bad_now & (self._first_bad < 0), step, self._first_bad)
            if not check_now:
                return
            first = int(self._first_bad)
            if first < 0:
                return
            last = latest_checkpoint(self.output_dir)
            raise NonFiniteLossError(
                f"The loss or gradient became NaN/inf at step {first} (found at step {self.step + 1}; checks every "
                f"{self.args.nan_check_every} steps, so the weights are no longer finite and were not saved). "
                f"Last good checkpoint: {last or 'none'}. Lower --learning_rate, set --max_grad_norm, use bf16 "
                "instead of fp16, or check the activations for outliers (--outlier_factor).")
        if not check_now or not bool(bad_now):
            return
        which = [e.name for e, v in zip(self.entries, losses) if not torch.isfinite(v).all()] or ["(gradients)"]
        path = self.save_checkpoint()
        raise NonFiniteLossError(
            f"The loss of {', '.join(which)} became NaN/inf at step {self.step + 1}; the step was not applied and "
            f"the last good state (step {self.step}) is saved in {path}. Lower --learning_rate, set --max_grad_norm, "
            "use bf16 instead of fp16, or check the activations for outliers (--outlier_factor); then --resume.")

    def _set_learning_rate(self, total: int | None) -> float:
        a = self.args
        lr = learning_rate_at(self.step, a.learning_rate, a.lr_scheduler, a.warmup_steps, total)
        for e in self.entries:
            for group in e.optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr

    # -- logging --------------------------------------------------------------------------------
    def _flush_train_metrics(self, steps: int, seconds: float, lr: float) -> dict[str, dict[str, float]]:
        acc = self.accelerator
        windows = torch.stack([e.window for e in self.entries])
        if acc.num_processes > 1:
            windows = acc.reduce(windows, reduction="mean")
        since = torch.stack([(e.since_fired >= min(self.args.dead_window_tokens, self.tokens_seen_local))
                             .float().mean() for e in self.entries])
        values = windows.cpu().double().tolist()
        dead = since.cpu().tolist()
        out = {}
        micro = steps * self.args.gradient_accumulation_steps
        for e, row, dead_fraction in zip(self.entries, values, dead):
            s = dict(zip(_TRAIN_STATS, row))
            record = {
                "loss": s["loss"] / micro, "mse": s["reconstruction_loss"] / micro, "l0": s["l0"] / micro,
                "fvu": s["squared_error"] / s["target_variance"] if s["target_variance"] > 0 else float("nan"),
                "dead_fraction": dead_fraction, "learning_rate": lr,
            }
            if e.is_bae:
                m = self._unwrap(e).config.num_codes
                record["entropy_bits"] = s["entropy_bits"] / micro
                if s["covariance"] > 0:
                    record["mean_abs_offdiagonal_cov"] = s["covariance"] / micro / (m * (m - 1))
            elif s["l1"] > 0:
                record["l1"] = s["l1"] / micro
            out[e.name] = record
            e.window = None
        tokens_per_s = steps * self.tokens_per_step / max(seconds, 1e-9)
        if acc.is_main_process:
            for name, record in out.items():
                self._log(name, {"step": self.step, "tokens": self.tokens, "epoch": self.epoch, "split": "train",
                                 **record, "tokens_per_second": tokens_per_s})
        acc.log({f"{name}/train/{k}": v for name, r in out.items() for k, v in r.items()}, step=self.step)
        self._tokens_per_s = tokens_per_s
        return out

    # -- validation -----------------------------------------------------------------------------
    def evaluate(self, validation: ValidationData | None = None) -> dict[str, dict[str, float]]:
        """Validation metrics of every dictionary (see `hf_bae.evaluation`), downstream fidelity included."""
        validation = validation or self.validation
        if validation is None or validation.num_tokens == 0:
            return {}
        a, acc = self.args, self.accelerator
        results = {}
        for e in self.entries:
            target = validation.activations[e.target_key] if e.target_key is not None else None
            results[e.name] = evaluate_dictionary(self._unwrap(e), validation.activations[e.input_key], target,
                                                  batch_size=a.batch_size, dense_threshold=a.dense_threshold,
                                                  autocast=acc.autocast)
        if self.language_model is not None and validation.input_ids is not None and len(validation.input_ids):
            spliced = downstream_fidelity(
                self.language_model, self.tokenizer,
                {e.name: (self._unwrap(e), e.input_key, e.target_key) for e in self.entries}, validation.input_ids,
                exclude_special_tokens=a.exclude_special_tokens, autocast=acc.autocast)
            for name, values in spliced.items():
                results[name].update(values)
        return results

    def _run_validation(self) -> None:
        acc = self.accelerator
        if acc.is_main_process and self.validation is not None:
            results = self.evaluate()
            for name, summary in results.items():
                record = {k: v for k, v in summary.items() if k != "frequencies"}
                self._log(name, {"step": self.step, "tokens": self.tokens, "epoch": self.epoch,
                                 "split": "validation", **record})
            acc.log({f"{name}/validation/{k}": v for name, r in results.items() for k, v in r.items()
                     if k != "frequencies" and isinstance(v, (int, float))}, step=self.step)
            self.last_results = results
        self._last_validation_step = self.step
        acc.wait_for_everyone()

    # -- the loop -------------------------------------------------------------------------------
    def train(self) -> dict[str, dict[str, float]]:
        """Train until the budget (or the data) ends; save the dictionaries; return the final validation metrics."""
        a, acc = self.args, self.accelerator
        set_seed(a.seed)
        if self.resume_from is not None:
            self.load_checkpoint(self.resume_from)
            acc.print(f"Resuming from {self.resume_from} (step {self.step}, {self.tokens:,} tokens).")
        if acc.is_main_process:
            self.validation = self.source.validation(a.validation_tokens,
                                                     a.splice_rows if self.language_model is not None else 0)
        if a.report_to != "none":
            acc.init_trackers("hf_bae", config={k: v for k, v in self.run_options.items()
                                                if isinstance(v, (int, float, str, bool))})
        total = self._total_steps()
        self.tokens_seen_local = self.step * a.batch_size * a.gradient_accumulation_steps
        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                previous[sig] = signal.signal(sig, self._on_signal)
            except ValueError:  # not the main thread
                pass
        bar = tqdm(total=total, initial=self.step, desc="training", unit="step", dynamic_ncols=True,
                   disable=not (a.progress and acc.is_main_process))
        batches = self.source.batches(a.batch_size, self.data_state, self.data_tensors)
        if self.resume_from is None and self.initialize:
            batches = self._initialize_from_data(batches)
        window_start, window_steps, self._tokens_per_s = time.perf_counter(), 0, 0.0
        lr = a.learning_rate
        try:
            while total is None or self.step < total:
                stop, batch = False, None
                pending: list[SourceBatch] = []
                for micro in range(a.gradient_accumulation_steps):
                    batch = next(batches, None)
                    over = batch is None or (a.num_epochs and batch.epoch >= a.num_epochs)
                    flags = self._agree(bool(over), micro == 0 and self._signal is not None)
                    if flags[1]:
                        path = self.save_checkpoint()
                        signum = self._signal or signal.SIGTERM
                        raise TrainingInterrupted(
                            f"Stopped by {signal.Signals(signum).name} at step {self.step}; checkpoint saved in "
                            f"{path}. Continue with the same command and --resume.", signum)
                    if flags[0]:
                        stop = True
                        break
                    pending.append(batch)
                if stop:
                    if pending:  # a partial accumulation is dropped: its gradients must not leak into a step
                        for e in self.entries:
                            e.optimizer.zero_grad(set_to_none=True)
                    break
                lr = self._set_learning_rate(total)
                losses = []
                for micro, b in enumerate(pending):
                    self.epoch = b.epoch
                    with acc.accumulate(*[e.model for e in self.entries]):
                        losses = self._forward_backward(b)
                        if micro == len(pending) - 1:
                            norms = self._grad_norms()
                            check = (self.step + 1) % a.nan_check_every == 0 or (total and self.step + 1 >= total)
                            self._check_finite(losses, norms, bool(check))
                            for e in self.entries:
                                e.optimizer.step()
                                e.optimizer.zero_grad(set_to_none=True)
                                if e.is_bae and self._unwrap(e).config.unit_norm_encoder:
                                    self._unwrap(e).normalize_encoder_rows()
                self.data_state, self.data_tensors = pending[-1].state, pending[-1].tensors
                self.step += 1
                self.tokens += self.tokens_per_step
                self.tokens_seen_local += a.batch_size * a.gradient_accumulation_steps
                window_steps += 1
                bar.update(1)
                if self.step % a.log_every == 0:
                    now = time.perf_counter()
                    logged = self._flush_train_metrics(window_steps, now - window_start, lr)
                    window_start, window_steps = now, 0
                    bar.set_postfix_str(self._postfix(logged), refresh=False)
                if a.validate_every and self.step % a.validate_every == 0:
                    self._run_validation()
                    window_start = time.perf_counter()  # validation time is not training throughput
                if a.checkpoint_every and self.step % a.checkpoint_every == 0:
                    self.save_checkpoint()
                    window_start = time.perf_counter()
            if self.step == 0:
                raise ValueError("Training ended before its first step: the source yielded no full batch of "
                                 f"{a.batch_size} tokens per process. Provide more data or lower --batch_size.")
            if window_steps and any(e.window is not None for e in self.entries):
                self._flush_train_metrics(window_steps, time.perf_counter() - window_start, lr)
            batches.close()  # an activation stream removes its hooks from the LM
            if self._last_validation_step != self.step:
                self._run_validation()
            if self._last_checkpoint_step != self.step:
                self.save_checkpoint()
            self._finish()
        finally:
            batches.close()
            bar.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if a.report_to != "none":
            acc.end_training()
        return {name: {k: v for k, v in r.items() if k != "frequencies"} for name, r in self.last_results.items()}

    def _postfix(self, logged: dict[str, dict[str, float]]) -> str:
        parts = [f"{self._tokens_per_s:,.0f} tok/s"]
        for name, r in logged.items():
            parts.append(f"{name} loss={r['loss']:.4g} L0={r['l0']:.1f}")
        return " | ".join(parts)

    def _finish(self) -> None:
        acc = self.accelerator
        for e in self.entries:  # the saved (and in-memory) dictionaries read raw hidden states
            self._unwrap(e).fold_normalization()
        if acc.is_main_process:
            from .training_plots import plot_dictionary_run

            for e in self.entries:
                folder = self.output_dir / e.name
                folder.mkdir(parents=True, exist_ok=True)
                model = self._unwrap(e)
                if self.args.save_dictionaries:
                    model.save_pretrained(folder, safe_serialization=True)
                results = self.last_results.get(e.name, {})
                frequencies = results.get("frequencies")
                final = {k: v for k, v in results.items() if k != "frequencies"}
                final.update({"step": self.step, "training_tokens": self.tokens})
                (folder / "eval_results.json").write_text(json.dumps(final, indent=2, default=_json_default) + "\n")
                if self.args.plots:
                    plot_dictionary_run(folder, frequencies=frequencies, dense_threshold=self.args.dense_threshold,
                                        title=f"{e.name}: {model.config.describe_source()}")
        acc.wait_for_everyone()


# --------------------------------------------------------------------------------------------
# From options to a run
# --------------------------------------------------------------------------------------------


def _sites_for(args: TrainingArguments, layer: int) -> dict[str, tuple[str, str | None, str, str | None]]:
    """name → (input key, target key, input site name, output site name)."""
    out = {}
    for kind in args.dictionaries:
        if kind == "transcoder":
            out[kind] = (site_key(layer, "mlp_in"), site_key(layer, args.transcoder_target), "mlp_in",
                         args.transcoder_target)
        else:
            out[kind] = (site_key(layer, args.site), None, args.site, None)
    return out


def train(args: TrainingArguments, dictionary: Any = None, bae: Any = None, sae: Any = None, *,
          extra_options: dict[str, Any] | None = None) -> dict[str, dict]:
    """Build the source, language model and dictionaries named by the options, then train them.

    Args:
        args: training options.
        dictionary, bae, sae: instances of `DictionaryArguments`, `BAEArguments`, `SAEArguments`
            (defaults when None).
        extra_options: more entries for `training_args.json` (e.g. a tag).

    Returns:
        name → final validation metrics (also written to `<output_dir>/<name>/eval_results.json`).
    """
    dictionary = dictionary if dictionary is not None else DictionaryArguments()
    bae = bae if bae is not None else BAEArguments()
    sae = sae if sae is not None else SAEArguments()
    check_output_dir(args)  # fail before loading anything
    accelerator = make_accelerator(args)
    rank, world = accelerator.process_index, accelerator.num_processes
    options = {**dataclasses.asdict(args), **dataclasses.asdict(dictionary), **dataclasses.asdict(bae),
               **dataclasses.asdict(sae), **(extra_options or {})}
    language_model = tokenizer = None
    if args.cache is not None:
        from . import activations
        from .cache import ActivationCache

        cache = ActivationCache(args.cache)
        layers = cache.manifest.layers
        if args.layer is None and len(layers) != 1:
            raise ValueError(f"The cache at {args.cache} holds layers {layers}: choose one with --layer.")
        layer = args.layer if args.layer is not None else layers[0]
        sites = _sites_for(args, layer)
        keys = sorted({k for v in sites.values() for k in v[:2] if k is not None})
        explicit_model = args.model_name_or_path if args.model_name_or_path != "embedded" else None
        source = CacheSource(cache, keys, train_fraction=args.train_fraction, seed=args.seed, rank=rank,
                             world_size=world, model_name=explicit_model)
        provenance = {"layer": layer, **source.provenance()}
        lm_name = explicit_model or cache.manifest.model
        if args.splice_rows and cache.manifest.has_tokens and lm_name:
            # The splice metrics need the LM the cache was harvested from.
            try:
                language_model, tokenizer = activations.load_language_model(
                    lm_name, revision=args.model_revision or cache.manifest.revision, dtype=args.lm_dtype,
                    device=accelerator.device)
            except (OSError, ValueError) as exc:
                warnings.warn(f"Splice metrics skipped: could not load {lm_name} ({exc}). Pass --splice_rows 0 to "
                              "silence this.", stacklevel=2)
    else:
        from . import activations

        language_model, tokenizer = activations.load_language_model(
            args.model_name_or_path, revision=args.model_revision, dtype=args.lm_dtype, device=accelerator.device)
        num_layers = language_model.config.num_hidden_layers
        layer = args.layer if args.layer is not None else num_layers // 2
        if not 0 <= layer < num_layers:
            raise ValueError(f"--layer {layer} is out of range: {args.model_name_or_path} has layers 0..{num_layers - 1}.")
        sites = _sites_for(args, layer)
        keys = sorted({k for v in sites.values() for k in v[:2] if k is not None})

        def load(split: str, max_texts: int | None = None):
            return activations.load_texts(args.dataset, split=split, text_column=args.text_column,
                                          config_name=args.dataset_config, data_files=args.data_files,
                                          streaming=True, max_texts=max_texts)

        held_out = 0 if args.validation_split else args.validation_texts
        texts = lambda: itertools.islice(load(args.split), held_out + rank, None, world)  # noqa: E731
        if args.validation_split:
            validation_texts = lambda: load(args.validation_split, args.validation_texts)  # noqa: E731
        else:
            validation_texts = (lambda: itertools.islice(load(args.split), held_out)) if held_out else None  # noqa: E731
        dataset = activations.EMBEDDED_DATASET_ID if args.dataset == "embedded" else args.dataset
        provenance = {"base_model": activations.model_name_of(args.model_name_or_path),
                      "base_model_revision": activations.model_revision_of(args.model_name_or_path, args.model_revision),
                      "layer": layer, "dataset": dataset,
                      "context_length": args.context_length,
                      "token_filter": activations.token_filter_description(args.exclude_special_tokens,
                                                                           args.outlier_factor)}
        source = LiveSource(language_model, tokenizer, texts, keys, validation_texts=validation_texts,
                            context_length=args.context_length, lm_batch_size=args.lm_batch_size,
                            shuffle_rows=args.shuffle_rows, exclude_special_tokens=args.exclude_special_tokens,
                            outlier_factor=args.outlier_factor, device=accelerator.device, seed=args.seed, rank=rank,
                            provenance=provenance)
    options["layer"] = layer
    set_seed(args.seed)
    dictionaries, inputs = {}, {}
    for kind, (key, target, site, output_site) in sites.items():
        p = {**provenance, "site": site, "output_site": output_site}
        dictionaries[kind] = build_dictionary(
            kind, source.hidden_size(key), source.hidden_size(target) if target else None,
            dataclasses.asdict(dictionary), dataclasses.asdict(bae), dataclasses.asdict(sae), p)
        inputs[kind] = (key, target)
    trainer = Trainer(args, dictionaries, source, inputs=inputs, language_model=language_model, tokenizer=tokenizer,
                      run_options=options, accelerator=accelerator)
    return trainer.train()


def summarize_run(output_dir: str | Path, results: dict[str, dict[str, float]]) -> str:
    """A short table of the final metrics and where each dictionary, its metrics and plots are."""
    out = Path(output_dir)
    columns = [("fvu", "FVU", "{:.3f}"), ("l0", "L0", "{:.1f}"), ("dead_fraction", "dead", "{:.1%}"),
               ("dense_fraction", "dense", "{:.1%}"), ("dense_deviation_fraction", "dense (dev)", "{:.1%}"),
               ("constant_code_fraction", "constant", "{:.1%}"), ("code_entropy_bits", "entropy (bits)", "{:.1f}"),
               ("ce_loss_score", "CE score", "{:.3f}"), ("kl_divergence", "KL (nats)", "{:.4f}")]
    header = ["dictionary"] + [c[1] for c in columns]
    rows = [[name] + [fmt.format(r[k]) if isinstance(r.get(k), (int, float)) else "-" for k, _, fmt in columns]
            for name, r in results.items()]
    widths = [max(len(str(row[i])) for row in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(row, widths)) for row in [header] + rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines += ["", f"Run folder: {out.resolve()}"]
    for name in results:
        lines.append(f"  {name}/: model (AutoModel.from_pretrained('{out / name}')), eval_results.json, "
                     f"metrics.jsonl, plots/*.png")
    return "\n".join(lines)
