"""Training dictionaries: one loop, on `accelerate`, for the BAE and every baseline. This package's
`__init__` is its public boundary; one module per concept, in the order they build on each other:

- `schedules`: `learning_rate_at`, `penalty_active` (warm-ups), pure functions.
- `factory`: `DICTIONARY_KINDS`, `build_dictionary`, `dictionaries_for_keys`.
- `arguments`: `TrainingArguments` (the `hf-bae train` flags, the keys of `training_args.json`) and the
  option groups of the dictionary configs (`DictionaryArguments`, `BAEArguments`, `SAEArguments`).
- `checkpoints`: the run folder (`holds_run`, `latest_checkpoint`, `check_output_dir`) and checkpoints.
- `initialization`: normalisation statistics and the BAE's initial firing rate from the first batches.
- `inputs`: the one place that turns options into a language model, an activation source and provenance.
- `step_metrics`: the training metrics of a step and the records of `metrics.jsonl`.
- `optimizers`: `make_optimizer` (Adam / AdamW, fused, column-major weights stepped without copies).
- `loop`: `DictionaryTrainer` (alias `Trainer`), `NonFiniteLossError`, `NonFiniteActivationsError`, `TrainingInterrupted`.
- `run`: `train` (what `hf-bae train` does), `train_dictionaries` / `brief_arguments` (a brief run of
  dictionaries built by the caller), `summarize_run`.

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

    trainer = DictionaryTrainer(TrainingArguments(output_dir="runs/x", max_steps=1000),
                                {"bae": BinaryAutoencoder(BAEConfig(hidden_size=576))}, TensorSource({"x": acts}))
    results = trainer.train()

or from the command line (`hf-bae train --help`, `accelerate launch train.py ...`).
"""

from .arguments import (
    ARGUMENT_CLASSES,
    MIXED_PRECISION,
    OPTIMIZERS,
    PROVENANCE_FIELDS,
    RESUMABLE_CHANGES,
    TRACKERS,
    BAEArguments,
    DictionaryArguments,
    SAEArguments,
    TrainingArguments,
)
from .checkpoints import check_output_dir, holds_run, latest_checkpoint
from .factory import DICTIONARY_KINDS, build_dictionary, dictionaries_for_keys
from .inputs import DictionarySites, RunInputs, build_inputs, dictionary_sites, source_keys
from .loop import DictionaryTrainer, NonFiniteActivationsError, NonFiniteLossError, TrainingInterrupted, make_accelerator
from .optimizers import make_optimizer
from .run import BRIEF_OPTIONS, brief_arguments, summarize_run, train, train_dictionaries
from .schedules import SCHEDULES, learning_rate_at, penalty_active

# The name this class had before it stopped shadowing transformers' `Trainer`; kept so that code keeps working.
Trainer = DictionaryTrainer

__all__ = [
    "ARGUMENT_CLASSES",
    "BRIEF_OPTIONS",
    "DICTIONARY_KINDS",
    "MIXED_PRECISION",
    "OPTIMIZERS",
    "PROVENANCE_FIELDS",
    "RESUMABLE_CHANGES",
    "SCHEDULES",
    "TRACKERS",
    "BAEArguments",
    "DictionaryArguments",
    "DictionarySites",
    "DictionaryTrainer",
    "NonFiniteActivationsError",
    "NonFiniteLossError",
    "RunInputs",
    "SAEArguments",
    "Trainer",
    "TrainingArguments",
    "TrainingInterrupted",
    "brief_arguments",
    "build_dictionary",
    "build_inputs",
    "check_output_dir",
    "dictionaries_for_keys",
    "dictionary_sites",
    "holds_run",
    "latest_checkpoint",
    "learning_rate_at",
    "make_accelerator",
    "make_optimizer",
    "penalty_active",
    "source_keys",
    "summarize_run",
    "train",
    "train_dictionaries",
]
