"""The README works as written: every import line of its Python snippets imports, the snippets that need
no Hub run verbatim, and every `hf-bae` command line it shows uses flags that command accepts."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def _command_lines() -> list[list[str]]:
    """Every `hf-bae ...` / `python train.py ...` / `accelerate launch train.py ...` line of the bash blocks, as argv."""
    out = []
    for block in _blocks("bash"):
        for line in block.splitlines():
            line = line.split("#", 1)[0].strip()
            for part in line.split("&&"):
                words = shlex.split(part.replace("...", "").strip())
                if words and words[0].endswith("hf-bae") and len(words) > 1:
                    out.append(words[1:])
                elif "train.py" in words:
                    out.append(["train", *words[words.index("train.py") + 1:]])
    return out


COMMANDS = _command_lines()


def test_the_readme_shows_commands_and_snippets():
    assert len(COMMANDS) >= 20 and len(_blocks("python")) >= 4


def test_every_import_line_of_the_python_snippets_imports():
    lines = [line.split("#")[0].strip() for block in _blocks("python") for line in block.splitlines()]
    imports = [line for line in lines if line.startswith(("import ", "from "))]
    assert imports
    for line in imports:
        exec(line, {})  # noqa: S102 - the README's own lines


def test_the_first_python_snippet_runs_verbatim(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    snippet = _blocks("python")[0]
    namespace: dict = {}
    exec(snippet, namespace)  # noqa: S102
    assert type(namespace["same"]).__name__ == "BinaryAutoencoder" and tuple(namespace["codes"].shape) == (4, 8192)


def test_the_entropy_snippet_runs_on_a_bae():
    import torch

    import hf_bae

    snippet = next(b for b in _blocks("python") if "feature_set_entropy" in b)
    namespace = {"bae": hf_bae.BinaryAutoencoder(hf_bae.BAEConfig(hidden_size=16, latent_size=8)),
                 "hidden_states": torch.randn(600, 16)}
    exec(snippet, namespace)  # noqa: S102
    assert namespace["report"].miller_madow_bits >= 0


def _flags(argv: list[str]) -> list[str]:
    return [w.split("=", 1)[0] for w in argv if w.startswith("--")]


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(c[:3]) for c in COMMANDS])
def test_every_flag_of_a_readme_command_is_accepted(argv):
    from hf_bae.cli import main

    # `--help` of the same command (and sub-command) lists what it accepts, aliases included.
    prefix = argv[:2] if argv[0] == "entropy" and len(argv) > 1 and not argv[1].startswith("-") else argv[:1]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        main([*prefix, "--help"])
    assert exit_info.value.code in (0, None)
    text = out.getvalue()
    unknown = [flag for flag in _flags(argv) if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text)]
    assert not unknown, f"`hf-bae {' '.join(argv)}`: {unknown} not in `hf-bae {' '.join(prefix)} --help`"
