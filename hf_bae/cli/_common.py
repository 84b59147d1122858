"""Helpers shared by sub-commands: logging set-up and the exit-code policy (`run_or_explain`), which
turns an error into a one-line message and the status the policy in `hf_bae.cli` gives it."""

import logging
import sys
from collections.abc import Callable

EXIT_OK = 0
EXIT_FAILURE = 1  # a failure at run time that is not the user's input (a backend down, a training diverged)
EXIT_USAGE = 2  # bad input or usage (argparse exits with it too)
EXIT_INTERRUPTED = 130  # Ctrl-C: 128 + SIGINT, as a shell reports it

# Errors in what the user gave: paths named by flags that are not there. Other OSErrors (a network
# connection, a full disk) are failures at run time.
_MISSING_PATH_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError)


def setup_logging() -> None:
    """Warnings from every library, progress messages from hf_bae only (as `hf-bae push`)."""
    logging.basicConfig(format="%(message)s")
    logging.getLogger("hf_bae").setLevel(logging.INFO)


def run_or_explain(prog: str, fn: Callable[[], int]) -> int:
    """Run `fn` and apply the exit-code policy of `hf_bae.cli` to what it raises.

    A ValueError, an LLMSetupError (a bad key, model or URL) or a missing path is bad input: exit 2.
    A RuntimeError or another OSError is a failure at run time: exit 1. A run stopped by a signal N
    after saving a checkpoint (`TrainingInterrupted`) exits 128 + N, and Ctrl-C 130. Each prints one
    line on stderr; any other exception is a bug and keeps its traceback (Python exits 1).
    """
    from ..interpret.chat import LLMSetupError

    try:
        return fn()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ValueError, LLMSetupError, *_MISSING_PATH_ERRORS) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (RuntimeError, OSError) as error:
        signal_number = getattr(error, "signal_number", None)  # TrainingInterrupted carries the signal
        if signal_number is not None:
            print(str(error), file=sys.stderr)
            return 128 + int(signal_number)
        print(f"{prog}: error: {error}", file=sys.stderr)
        return EXIT_FAILURE
