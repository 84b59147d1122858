"""The options of a training run: `TrainingArguments` (what is not a property of a dictionary; its fields
are the `hf-bae train` flags and the keys of `training_args.json`), the option groups generated from the
dictionary configs (`DictionaryArguments`, `BAEArguments`, `SAEArguments`), and which options may change
when a run is resumed."""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass

from ..arguments import base_model_dtype_option, base_model_option, base_model_revision_option, config_arguments
from ..configuration import SITES, BAEConfig, DictionaryConfig, SAEConfig, option, own_fields, type_problem
from ..formats import DEFAULT_DENSE_THRESHOLD
from .factory import DICTIONARY_KINDS
from .schedules import SCHEDULES

MIXED_PRECISION = ("no", "bf16", "fp16")
OPTIMIZERS = ("adam", "adamw")
TRACKERS = ("none", "tensorboard", "wandb", "all")



@dataclass
class TrainingArguments:
    """Options of a training run that are not properties of a dictionary (those live in the configs)."""

    # -- where the activations come from --------------------------------------------------------
    base_model: str = base_model_option("embedded")
    base_model_revision: str | None = base_model_revision_option()
    base_model_dtype: str | None = base_model_dtype_option()
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
    fused_optimizer: bool = option(True, "Use PyTorch's fused Adam/AdamW kernel (CPU and CUDA): one pass over each "
                                   "parameter instead of a dozen tensor ops (a 24576x768 SAE on 2 CPU cores: 28 vs 227 ms "
                                   "per step). --no_fused_optimizer gives the per-tensor loop (rounding-level differences).")
    retain_freed_memory: bool = option(
        True, "On the CPU (Linux, glibc): keep freed memory in the process for the next step instead of returning "
        "it to the kernel, so that each step's large tensors do not fault their pages in afresh (zero-filled by "
        "the kernel). Process-wide; the process keeps its peak memory until it exits (hf_bae.training.host_memory).")
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
    skip_nonfinite_tokens: bool = option(
        False, "Drop tokens whose activations hold NaN/inf (counted: nonfinite_tokens_skipped in eval_results.json) "
        "instead of stopping at the first one with its shard and row.")

    def __post_init__(self) -> None:
        # Types and finiteness first (NaN passes every `x < 0`), before any range and before any work.
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            problem = type_problem(getattr(self, f.name), hints[f.name])
            if problem:
                raise ValueError(f"--{f.name} {problem}, got {getattr(self, f.name)!r}.")
        for name, low, high in (("weight_decay", 0, None), ("max_grad_norm", 0, None), ("adam_beta1", 0, 1),
                                ("adam_beta2", 0, 1)):
            value = getattr(self, name)
            if value < low or (high is not None and value >= high):
                raise ValueError(f"--{name} must be >= {low}{f' and < {high}' if high is not None else ''}, got {value}.")
        if self.outlier_factor is not None and not self.outlier_factor > 0:
            raise ValueError(f"--outlier_factor must be > 0 (or unset), got {self.outlier_factor}.")
        if not 0 < self.dense_threshold <= 1:
            raise ValueError(f"--dense_threshold must be in (0, 1], got {self.dense_threshold}.")
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
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"--learning_rate must be a finite number > 0, got {self.learning_rate}.")
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

# Options that may differ when resuming: they change neither the data order nor the model's architecture.
# Besides budgets, logging and how the same values are computed, this allows the learning rate and the
# gradient clipping: lowering them and resuming is the documented way out of a NaN loss (the trainer's
# error says so), and a run's checkpoint is a valid starting point for any step size. The resumed run
# says which of these changed (`checkpoints.check_resumed_options`).
RESUMABLE_CHANGES = frozenset({
    "max_steps", "max_tokens", "num_epochs", "validate_every", "log_every", "checkpoint_every", "save_total_limit",
    "report_to", "resume", "overwrite", "nan_check_every", "progress", "learning_rate", "max_grad_norm",
    "splice_rows", "validation_tokens", "dense_threshold", "save_dictionaries", "output_dir", "cache", "plots",
    "compile", "covariance_implementation", "covariance_chunk_size", "decoder_implementation",
    "topk_implementation", "retain_freed_memory",
})

