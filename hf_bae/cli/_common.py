"""Helpers shared by sub-commands: logging set-up and turning user errors into a clear exit."""

import logging
import sys
from collections.abc import Callable


def setup_logging() -> None:
    """Warnings from every library, progress messages from hf_bae only (as `hf-bae push`)."""
    logging.basicConfig(format="%(message)s")
    logging.getLogger("hf_bae").setLevel(logging.INFO)


def run_or_explain(prog: str, fn: Callable[[], int]) -> int:
    """Run `fn`; a ValueError (bad input) or LLMSetupError becomes a one-line message and exit status 2."""
    from ..interpret.chat import LLMSetupError

    try:
        return fn()
    except (ValueError, LLMSetupError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
