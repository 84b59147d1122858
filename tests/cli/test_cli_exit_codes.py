"""The exit-code policy of `hf-bae` (hf_bae/cli/__init__.py): 0 success, 1 a failure at run time, 2 bad
input or usage, 130 interrupted (128 + N after a signal N), as `run_or_explain` applies it."""

import pytest

from hf_bae.cli import main
from hf_bae.cli._common import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, run_or_explain


class _Stopped(RuntimeError):
    """Like hf_bae.training's TrainingInterrupted: raised after a signal, once a checkpoint is saved."""

    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.signal_number = signal_number


def _raises(error: BaseException):
    def fn(*args) -> int:
        raise error

    return fn


@pytest.mark.parametrize("error, status", [
    (ValueError("--layers is empty"), EXIT_USAGE),
    (FileNotFoundError("no such task file"), EXIT_USAGE),
    (RuntimeError("the loss became NaN at step 12"), EXIT_FAILURE),
    (ConnectionError("the judge backend is down"), EXIT_FAILURE),
    (KeyboardInterrupt(), EXIT_INTERRUPTED),
    (_Stopped("stopped by SIGTERM; checkpoint saved", 15), 143),
    (_Stopped("stopped by SIGINT; checkpoint saved", 2), 130),
])
def test_run_or_explain_applies_the_policy_with_one_line_on_stderr(error, status, capsys):
    assert run_or_explain("hf-bae x", _raises(error)) == status
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_llm_setup_errors_are_bad_input_and_success_passes_through(capsys):
    from hf_bae.interpret.chat import LLMSetupError

    assert run_or_explain("hf-bae x", _raises(LLMSetupError("no API key"))) == EXIT_USAGE
    assert "hf-bae x: error: no API key" in capsys.readouterr().err
    assert run_or_explain("hf-bae x", lambda: EXIT_OK) == EXIT_OK


def test_a_bug_keeps_its_traceback():
    with pytest.raises(TypeError):
        run_or_explain("hf-bae x", _raises(TypeError("a bug")))


def test_the_dispatcher_exits_2_on_an_unknown_command_and_130_when_interrupted(monkeypatch, capsys):
    assert main(["no-such-command"]) == EXIT_USAGE
    assert main([]) == EXIT_OK

    from hf_bae.cli import entropy

    monkeypatch.setattr(entropy, "main", _raises(KeyboardInterrupt()))
    assert main(["entropy", "layers"]) == EXIT_INTERRUPTED
    assert "interrupted" in capsys.readouterr().err
