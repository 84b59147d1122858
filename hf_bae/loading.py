"""Loading trained dictionaries: the one place that turns "a folder, a Hub repo, or a dictionary in a
subfolder of a repo" into a `BinaryAutoencoder` / `SparseAutoencoder`, with errors that say what to pass.

    >>> from hf_bae.loading import load_dictionary
    >>> bae = load_dictionary("runs/demo/bae")                       # doctest: +SKIP
    >>> sae = load_dictionary("you/bae-smollm2/layers.5.resid_post")  # doctest: +SKIP

`hf_bae.load_all` (every dictionary of a run or repo) builds on it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .formats import CONFIG_FILE


def split_source(source: str | os.PathLike) -> tuple[str, dict[str, Any]]:
    """(what `from_pretrained` loads, its `subfolder=` keyword): a local folder as is; a Hub id
    `namespace/name`, or `namespace/name/subfolder` for one dictionary of a repo holding several."""
    text = str(source)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"Dictionary {text} is a file; pass the folder written by `hf-bae train` / save_pretrained.")
        if not (path / CONFIG_FILE).is_file():
            raise ValueError(f"{text} holds no {CONFIG_FILE}: pass the folder a dictionary was saved to "
                             "(e.g. RUN_DIR/bae written by `hf-bae train`).")
        return str(path), {}
    if text.startswith((".", "/", "~")):
        raise ValueError(f"Dictionary folder {text} does not exist.")
    parts = text.strip("/").split("/")
    where = {"subfolder": "/".join(parts[2:])} if len(parts) > 2 else {}
    return "/".join(parts[:2]), where


def load_dictionary(source: str | os.PathLike, *, revision: str | None = None, kind: str | None = None,
                    device: str | None = None, **kwargs: Any):
    """Load one hf_bae dictionary from a folder, a Hub repo id or `namespace/name/subfolder`, in eval mode.

    Args:
        source: where it is (see `split_source`).
        revision: the Hub revision (branch, tag or commit).
        kind: if given ("BAE", "SAE", "TRC"), refuse a dictionary of another kind.
        device: move it there.
        **kwargs: more `from_pretrained` keywords (`dtype`, `token`, ...).
    """
    from transformers import AutoModel  # hf_bae/__init__ has registered the dictionaries with it

    target, where = split_source(source)
    try:
        model = AutoModel.from_pretrained(target, revision=revision, **where, **kwargs)
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(
            f"Could not load a dictionary from {str(source)!r} ({type(error).__name__}: {str(error)[:200]}). Pass a folder "
            "written by `hf-bae train` / save_pretrained (config.json + model.safetensors) or a Hub repo id."
        ) from error
    if not isinstance(getattr(model, "kind", None), str) or not hasattr(model, "feature_values"):
        raise ValueError(f"{source} holds a {type(model).__name__}, not an hf_bae dictionary (BAE or SAE).")
    if kind is not None and model.kind != kind:
        raise ValueError(f"{source} holds a {model.kind} dictionary, not a {kind}.")
    if device is not None:
        model = model.to(device)
    return model.eval()


def base_model_of(configs: Any, model: str | None = None, revision: str | None = None) -> tuple[str, str | None]:
    """(name, revision) of the language model that dictionaries read: `model` (and `revision`) if given,
    else the base model and revision their configs record (they must agree), else the embedded model.

    The recorded revision matters: the embedded model records its Hub id with a revision tag that
    resolves back to the offline copy (`hf_bae.activations.load_language_model`).
    """
    if not isinstance(configs, (list, tuple)):
        configs = [configs]
    configs = [getattr(c, "config", c) for c in configs if c is not None]
    recorded = {(c.base_model, getattr(c, "base_model_revision", None)) for c in configs if getattr(c, "base_model", None)}
    if model:
        return model, revision
    names = {name for name, _ in recorded}
    if len(names) > 1:
        raise ValueError(f"The dictionaries were trained on different models ({sorted(names)}): use them in separate runs, "
                         "or name the language model explicitly.")
    if not recorded:
        return "embedded", revision
    name, recorded_revision = sorted(recorded, key=lambda r: r[1] or "")[-1]
    return name, revision or recorded_revision
