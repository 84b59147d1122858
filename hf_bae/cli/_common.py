"""Helpers shared by sub-commands: logging set-up and the exit-code policy (`run_or_explain`), which
turns an error into a one-line message and the status the policy in `hf_bae.cli` gives it."""

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator

EXIT_OK = 0
EXIT_FAILURE = 1  # a failure at run time that is not the user's input (a backend down, a training diverged)
EXIT_USAGE = 2  # bad input or usage (argparse exits with it too)
EXIT_INTERRUPTED = 130  # Ctrl-C: 128 + SIGINT, as a shell reports it

# Errors in what the user gave: paths named by flags that are not there. Other OSErrors (a network
# connection, a full disk) are failures at run time.
_MISSING_PATH_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError)


DEBUG_ENVIRONMENT = "HF_BAE_DEBUG"
_debug_flag = False  # set by `hf-bae --debug` for the command it runs (see `debugging`)


def debug_enabled() -> bool:
    """Whether errors keep their traceback: `hf-bae --debug`, or HF_BAE_DEBUG set to 1 / true / yes."""
    value = os.environ.get(DEBUG_ENVIRONMENT, "").strip().lower()
    return _debug_flag or value in ("1", "true", "yes", "on")


@contextlib.contextmanager
def debugging(enabled: bool) -> Iterator[None]:
    """Within the block, `run_or_explain` re-raises (when `enabled`); restored after, so that one command
    run in-process (tests, notebooks) does not leave the next one in debug mode."""
    global _debug_flag
    previous, _debug_flag = _debug_flag, _debug_flag or enabled
    try:
        yield
    finally:
        _debug_flag = previous


def setup_logging() -> None:
    """Warnings from every library, progress messages from hf_bae only (as `hf-bae push`)."""
    logging.basicConfig(format="%(message)s")
    logging.getLogger("hf_bae").setLevel(logging.INFO)


def run_or_explain(prog: str, fn: Callable[[], int]) -> int:
    """Run `fn` and apply the exit-code policy of `hf_bae.cli` to what it raises.

    A ValueError, an LLMSetupError (a bad key, model or URL) or a missing path is bad input: exit 2.
    A RuntimeError or another OSError is a failure at run time: exit 1. A run stopped by a signal N
    after saving a checkpoint (`TrainingInterrupted`) exits 128 + N, and Ctrl-C 130. Each prints one
    line on stderr; any other exception is a bug and keeps its traceback (Python exits 1). With
    `hf-bae --debug` or HF_BAE_DEBUG=1 every exception is re-raised with its traceback.
    """
    from ..interpret.chat import LLMSetupError

    if debug_enabled():
        return fn()
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
