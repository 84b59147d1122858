"""Telling a local path from a Hub id in the names users pass (`--base_model`, `--dataset`, `--atlas`), so
that a path that does not exist is an error about the path, never a Hub lookup that fails far away
(the idea of `hf_bae.loading.split_source` for dictionaries)."""

import os
import re
from pathlib import Path

__all__ = ["check_local_or_hub", "looks_like_local_path"]

# A Hub id is `name` or `namespace/name` of letters, digits, `-`, `_` and `.` (no leading `.`/`-`).
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
# Endings of data files: a name ending so is a file, not a dataset id.
_FILE_ENDINGS = (".txt", ".md", ".json", ".jsonl", ".csv", ".tsv", ".parquet", ".arrow", ".pkl", ".pt", ".safetensors")


def looks_like_local_path(text: str) -> bool:
    """Whether `text` can only be a local path: it starts with `.`, `/` or `~` (or a Windows drive), holds
    a backslash or more than one `/`, is not a valid Hub id, or ends like a data file."""
    text = str(text)
    if text.startswith((".", "/", "~")) or re.match(r"^[A-Za-z]:[\\/]", text) or "\\" in text:
        return True
    if text.count("/") > 1 or not _HUB_ID.match(text):
        return True
    return text.lower().endswith(_FILE_ENDINGS)


def check_local_or_hub(name: "str | os.PathLike", what: str, hint: str) -> str:
    """`name` as a string (`~` expanded when it is an existing path) if it exists or can be a Hub id; else a FileNotFoundError that says
    `what` (e.g. "--base_model") was a path that does not exist, and `hint` (what to pass instead)."""
    text = str(name)
    if Path(text).expanduser().exists():
        return str(Path(text).expanduser())
    if not looks_like_local_path(text):
        return text
    raise FileNotFoundError(f"{what} {text} does not exist (a local path, so it is not looked up on the Hub); {hint}")
