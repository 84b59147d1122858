"""Helpers shared by the sub-commands: logging set-up and turning user errors into a clear exit."""

import logging
import sys
from collections.abc import Callable


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # httpx logs every request at INFO: too chatty for thousands of LLM calls.
    for name in ("httpx", "httpx2", "httpcore", "openai"):
        logging.getLogger(name).setLevel(logging.WARNING)


def run_or_explain(prog: str, fn: Callable[[], int]) -> int:
    """Run `fn`; a ValueError (bad input) or LLMSetupError becomes a one-line message and exit status 2."""
    from ..interpret.llm import LLMSetupError

    try:
        return fn()
    except (ValueError, LLMSetupError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
