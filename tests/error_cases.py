"""Shared by the table-driven bad-input tests (`tests/*/test_*_bad_inputs.py`): run an `hf-bae` command
in-process and check that it failed the way `hf_bae.cli`'s exit-code policy says: the expected exit
code, exactly one line on stderr that names the input, and no traceback."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

EXIT_FAILURE, EXIT_USAGE = 1, 2


@dataclass
class Case:
    """One bad input: `argv` of `hf-bae` (or a callable returning it, for cases that need files made
    first), the exit code the policy gives it, and the words the one-line message must contain."""

    name: str
    argv: Sequence[str] | Callable[[], Sequence[str]]
    code: int = EXIT_USAGE
    mentions: Sequence[str] = field(default_factory=tuple)

    def __str__(self) -> str:
        return self.name


def run_cli(argv: Sequence[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `hf-bae argv`, run in this process."""
    from hf_bae.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exit_:  # argparse's own usage errors
            code = exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    return code, out.getvalue(), err.getvalue()


def error_lines(stderr: str) -> list[str]:
    """The lines of stderr that are hf-bae's message (progress bars and library warnings are not)."""
    return [line for line in stderr.splitlines() if line.startswith("hf-bae") or "error:" in line]


def assert_clear_error(case: Case) -> str:
    """Run `case` and assert the policy; returns the error line."""
    argv = case.argv() if callable(case.argv) else case.argv
    code, _, err = run_cli(argv)
    assert "Traceback" not in err, f"{case}: a traceback:\n{err[-2000:]}"
    lines = error_lines(err)
    assert code == case.code, f"{case}: exit {code}, expected {case.code}; stderr:\n{err[-2000:]}"
    assert len(lines) == 1, f"{case}: expected one error line, got {lines!r}"
    for word in case.mentions:
        assert word in lines[0], f"{case}: {word!r} not in {lines[0]!r}"
    return lines[0]
