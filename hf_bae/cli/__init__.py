"""The `hf-bae` command. Each sub-command lives in its own module of this package and only parses
flags and calls the library; `hf-bae COMMAND --help` explains every flag.

Exit codes, the same for every command:

    0    success
    1    a failure at run time that is not the user's input (a judge backend down, a training that
         diverged, a network error)
    2    bad input or usage: an unknown command or flag (argparse), a bad value, a missing file
    130  interrupted (Ctrl-C); a run stopped by another signal N after saving a checkpoint exits 128 + N
         (SIGTERM: 143), as `--resume` can continue it

`_common.run_or_explain` applies this to the exceptions a command raises (one line on stderr, no
traceback); an unexpected exception is a bug and keeps its traceback.

Debugging: `hf-bae --debug COMMAND ...` (the flag may also come anywhere after the command) or the
environment variable `HF_BAE_DEBUG=1` makes `run_or_explain` re-raise instead, so an expected error
shows its full traceback too (for a bug report, or to see where a bad input was found).
"""

import importlib
import sys
from collections.abc import Sequence

from ._common import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, debugging

DEBUG_FLAG = "--debug"

# name -> (module in hf_bae.cli, one-line description). Modules are imported only when used, so
# `hf-bae --help` stays fast and one command's optional dependencies never break another.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("demo", "Train a BAE and a TopK SAE on the embedded model and corpus (offline, a few CPU minutes)."),
    "train": ("train", "Train one or several dictionaries on live or cached activations (accelerate)."),
    "harvest": ("harvest", "Cache a language model's activations to disk in shards."),
    "entropy": ("entropy", "Feature-set entropy: per layer, per position, and in-context-learning curves."),
    "atlas": ("atlas", "Collect top-activating contexts per feature into a feature atlas (datasets.Dataset)."),
    "interpret": ("interpret", "ComSem: explain features with an LLM, judge the explanations, score them."),
    "calibrate": ("calibrate", "Measure a ComSem judge on labelled items of known truth (accuracy, balanced accuracy)."),
    "push": ("push", "Upload a trained run to the Hugging Face Hub with a generated model card."),
    "export-saelens": ("export_saelens", "Export a ReLU / TopK / JumpReLU dictionary to the SAELens folder format."),
    "import-original": ("import_original", "Import a model trained by the original research code (model .pt + its parameters)."),
    "space": ("space", "Launch the Gradio feature browser on a dictionary and its atlas."),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: hf-bae COMMAND [options]", "", "Binary Autoencoders and sparse dictionaries for Hugging Face models.", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "Run `hf-bae COMMAND --help` for the options of a command. `hf-bae --debug COMMAND ...` (or",
              "HF_BAE_DEBUG=1) shows the full traceback of an error instead of its one-line message."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `hf-bae`: dispatch to the sub-command's `main(argv)`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in argv  # a global flag: accepted before or after the command, never passed on
    argv = [arg for arg in argv if arg != DEBUG_FLAG]
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return EXIT_OK
    if argv[0] in ("-V", "--version"):
        from ..version import __version__

        print(f"hf-bae {__version__}")
        return EXIT_OK
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"hf-bae: unknown command {name!r}.\n\n{_usage()}", file=sys.stderr)
        return EXIT_USAGE
    module = importlib.import_module(f"{__name__}.{COMMANDS[name][0]}")
    try:
        with debugging(debug):
            return int(module.main(rest) or EXIT_OK)
    except KeyboardInterrupt:  # a command that does not catch it still exits as the policy says
        print(f"hf-bae {name}: interrupted.", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
