"""`hf-bae train`: flags generated from `TrainingArguments` and the dictionary configs; calls `hf_bae.training.train`."""

import sys
from collections.abc import Sequence

from ..arguments import parse
from ._common import run_or_explain

DESCRIPTION = """Train one or several dictionaries (BAE, ReLU / TopK / JumpReLU SAEs, transcoders) on the hidden \
states of a language model, side by side on the same tokens, each with its own optimiser and output folder. \
Single process: `hf-bae train ...`; GPUs: `accelerate launch train.py ...`; two CPU processes: \
`accelerate launch --multi_gpu --num_processes 2 train.py --cpu ...`. Ctrl-C or SIGTERM saves a checkpoint; \
the same command with --resume continues exactly where it stopped. The original code's flag names \
(--lr, --covarience_weight, --inner_expand_rate, ...) are accepted as aliases, and --preset original \
reproduces its setting (raw hidden states, default init, sign_s, weights 1e-7)."""


def parse_args(argv: Sequence[str] | None):
    """The four option groups (training, every dictionary, BAE, SAE) parsed from `argv`."""
    from ..presets import PRESETS
    from ..training import ARGUMENT_CLASSES

    return parse(ARGUMENT_CLASSES, argv, prog="hf-bae train", description=DESCRIPTION, presets=PRESETS)


def main(argv: Sequence[str]) -> int:
    """Parse, train, print the final metrics and where the results are (exit codes: `hf_bae.cli`)."""
    return run_or_explain("hf-bae train", lambda: _train(*parse_args(argv)))


def _train(args, dictionary, bae, sae) -> int:
    from accelerate import PartialState

    from ..training import summarize_run, train

    results = train(args, dictionary, bae, sae)
    if PartialState().is_main_process:
        print(summarize_run(args.output_dir, results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
