"""Loading trained dictionaries: the one place that turns "a folder, a Hub repo, or a dictionary in a
subfolder of a repo" into a `BinaryAutoencoder` / `SparseAutoencoder`, with errors that say what to pass.

    >>> from hf_bae.loading import load_dictionary
    >>> bae = load_dictionary("runs/demo/bae")                       # doctest: +SKIP
    >>> sae = load_dictionary("you/bae-smollm2/layers.5.resid_post")  # doctest: +SKIP

It also finds the trained dictionaries of a run folder or a repo (`find_dictionaries`,
`list_dictionaries`, `load_all`: every dictionary of a run or repo) and names them as a repo holds
them (`assign_names`: `layers.{layer}.{site}`); `hf_bae.hub` pushes what these find.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError

from .formats import (COMSEM_FILE, CONFIG_FILE, EVAL_RESULTS_FILE, PLOTS_DIR, SAELENS_DIR, TRAINING_ARGS_FILE,
                      WEIGHTS_FILE, WEIGHTS_INDEX_FILE, config_hookpoint)

logger = logging.getLogger(__name__)


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


def _load_error(source: Any, error: Exception) -> ValueError:
    return ValueError(
        f"Could not load a dictionary from {str(source)!r} ({type(error).__name__}: {str(error)[:200]}). Pass a folder "
        "written by `hf-bae train` / save_pretrained (config.json + model.safetensors) or a Hub repo id.")


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
    except ValueError as error:
        if isinstance(error.__cause__, SafetensorError):
            raise  # already names the file (DictionaryPreTrainedModel.from_pretrained)
        raise _load_error(source, error) from error
    except (OSError, KeyError) as error:
        raise _load_error(source, error) from error
    except SafetensorError as error:  # a model class that is not ours (it names no file)
        raise ValueError(f"The weights of {str(source)!r} are truncated or corrupt ({error}): save or download "
                         "them again.") from error
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


# ----------------------------------------------------------------------------------------------
# The trained dictionaries of a run folder or a repo
# ----------------------------------------------------------------------------------------------
MODEL_TYPES = ("binary_autoencoder", "sparse_autoencoder")
PLOT_SUFFIXES = (".png", ".svg", ".jpg", ".jpeg")


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in `path`; {} when it is missing or not a JSON object (with a warning when corrupt)."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        logger.warning("Ignoring %s: not valid JSON (%s).", path, err)
        return {}
    return data if isinstance(data, dict) else {}


def comsem_metrics(comsem: dict[str, Any]) -> dict[str, Any]:
    """The ComSem numbers of a `comsem.json` report that a model card shows."""
    return {k: comsem[k] for k in ("comsem_score", "interpretable_fraction") if k in comsem}


@dataclass
class LocalDictionary:
    """A trained dictionary folder: save_pretrained output plus, when present, metrics and plots.

    `comsem_report` is the ComSem result of `hf-bae interpret` for this dictionary when one was
    given (it lives beside the atlas that produced it); without it, a `comsem.json` that an older
    version of hf_bae wrote into the dictionary folder is read.
    """

    name: str  # its folder's name in the run ("bae", "topk")
    path: Path
    config: dict[str, Any]
    run_dir: Path  # where training_args.json of its run lives
    comsem_report: dict[str, Any] | None = None
    comsem_path: Path | None = None  # where `comsem_report` was read from

    def json(self, name: str) -> dict[str, Any]:
        return read_json(self.path / name)

    @property
    def plots(self) -> list[Path]:
        folder = self.path / PLOTS_DIR
        return sorted(p for p in folder.iterdir() if p.suffix.lower() in PLOT_SUFFIXES) if folder.is_dir() else []

    @property
    def training_args(self) -> Path | None:
        return next((p for p in (self.path / TRAINING_ARGS_FILE, self.run_dir / TRAINING_ARGS_FILE) if p.is_file()), None)

    @property
    def comsem(self) -> dict[str, Any]:
        """The ComSem report of this dictionary: the one given, else a legacy `comsem.json` in its folder, else {}."""
        return self.comsem_report if self.comsem_report is not None else self.json(COMSEM_FILE)

    @property
    def metrics(self) -> dict[str, Any]:
        return {**self.json(EVAL_RESULTS_FILE), **comsem_metrics(self.comsem)}


def has_weights(folder: Path) -> bool:
    """Whether a dictionary folder holds its weights (one file or shards)."""
    return any(folder.glob("model*.safetensors")) or (folder / WEIGHTS_INDEX_FILE).is_file()


def find_dictionaries(run_dir: str | Path, only: Sequence[str] | None = None) -> list[LocalDictionary]:
    """The trained dictionaries of a run directory, by folder name.

    `run_dir` is either one dictionary folder (config.json at its root) or a run with one subfolder per
    dictionary (`RUN_DIR/bae/`, `RUN_DIR/topk/`); other subfolders (checkpoints, plots) are ignored.
    Raises ValueError, saying what is missing, when it holds no trained dictionary or a dictionary
    folder without weights.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"{run_dir} is not a directory: pass the output directory of `hf-bae train` (or one dictionary folder in it).")
    single = (run_dir / CONFIG_FILE).is_file()
    if single:
        candidates = [(run_dir.resolve().name, run_dir)]
    else:
        candidates = [(p.name, p) for p in sorted(run_dir.iterdir()) if p.is_dir() and (p / CONFIG_FILE).is_file()]
    if only:
        missing = sorted(set(only) - {name for name, _ in candidates})
        if missing:
            have = ", ".join(name for name, _ in candidates) or "none"
            raise ValueError(f"--only {' '.join(missing)}: no such dictionary folder in {run_dir} (it has: {have}).")
        candidates = [(name, folder) for name, folder in candidates if name in only]
    found, problems = [], []
    for name, folder in candidates:
        config = read_json(folder / CONFIG_FILE)
        if config.get("model_type") not in MODEL_TYPES:
            if single:  # a subfolder with another model's config.json is simply not ours
                problems.append(f"{folder}/{CONFIG_FILE} is not an hf_bae dictionary (model_type must be one of {', '.join(MODEL_TYPES)})")
        elif not has_weights(folder):
            problems.append(f"{folder} has {CONFIG_FILE} but no {WEIGHTS_FILE}: its training did not finish (or saved elsewhere)")
        else:
            found.append(LocalDictionary(name, folder, config, run_dir.parent if single else run_dir))
    if problems:
        raise ValueError(f"Cannot push {run_dir}:\n  " + "\n  ".join(problems) + "\nFinish or remove those folders, or pick the others with --only.")
    if not found:
        raise ValueError(
            f"No trained dictionary in {run_dir}: expected {CONFIG_FILE} + {WEIGHTS_FILE} (the save_pretrained output of a "
            "BinaryAutoencoder or SparseAutoencoder) in it or in its subfolders (e.g. RUN_DIR/bae/). "
            "Did `hf-bae train` finish? Checkpoints are not pushed."
        )
    return found


def safe_name(name: str) -> str:
    """`name` with only letters, digits, '_', '.' and '-' (a repo folder name)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip(".-") or "dictionary"


def assign_names(dictionaries: Sequence[LocalDictionary], suffix: str | None = None) -> dict[str, LocalDictionary]:
    """Repo folder name -> dictionary.

    A dictionary goes to `layers.{layer}.{site}`. When several share a hookpoint (a BAE and a TopK SAE
    of one layer), each of them gets its run folder's name as a suffix (`layers.5.resid_post.bae`,
    `layers.5.resid_post.topk`), so that no name depends on which was pushed first. A dictionary with
    no recorded layer is named after its run folder. `suffix` is appended to every name.
    """
    base = {d.name: config_hookpoint(d.config) or safe_name(d.name) for d in dictionaries}
    counts = Counter(base.values())
    names = {}
    for d in dictionaries:
        name = base[d.name]
        if counts[name] > 1:
            # a folder already named this way (a downloaded repo being pushed again) keeps its name
            name = d.name if d.name.startswith(f"{name}.") else f"{name}.{safe_name(d.name)}"
        names[f"{name}.{suffix}" if suffix else name] = d
    return names


def dictionary_folders(files: Iterable[str]) -> list[str]:
    """Folders (`""` = root) of a repo's file list that hold a dictionary: config.json + model*.safetensors,
    at the root or one level down (the SAELens copies are not counted)."""
    files = set(files)
    folders = []
    for path in sorted(files):
        parts = path.split("/")
        if parts[-1] != CONFIG_FILE or len(parts) > 2 or (len(parts) == 2 and parts[0] == SAELENS_DIR):
            continue
        folder = parts[0] if len(parts) == 2 else ""
        prefix = f"{folder}/" if folder else ""
        weights = (f[len(prefix):] for f in files if f.startswith(prefix))
        if any(w.startswith("model") and w.endswith((".safetensors", ".safetensors.index.json")) and "/" not in w for w in weights):
            folders.append(folder)
    return folders


def validate_repo_id(repo_id: Any, what: str = "repo id") -> str:
    """`repo_id` if it is a valid Hub repo id, else a ValueError that shows what a valid one looks like."""
    from huggingface_hub.utils import HFValidationError
    from huggingface_hub.utils import validate_repo_id as _validate

    try:
        if not isinstance(repo_id, str) or not repo_id.strip() or repo_id.strip() != repo_id:
            raise HFValidationError(f"got {repo_id!r}")
        _validate(repo_id)
    except HFValidationError as err:
        raise ValueError(
            f"{repo_id!r} is not a valid Hub {what} ({err}). Use 'namespace/name', e.g. 'your-name/bae-smollm2-layer5': "
            "letters, digits, '-', '_' and '.', no '--' or '..', at most 96 characters."
        ) from None
    return repo_id


def list_dictionaries(repo_or_path: str | Path, *, revision: str | None = None, token: str | bool | None = None) -> dict[str, str]:
    """Name -> folder (`""` = root) of every dictionary in a Hub repo or a local folder.

    Names are the repo's subfolders (`layers.5.resid_post`); a dictionary at a repo's root is named
    after its hookpoint. A local run directory is named as `hf-bae push` would name it.
    """
    path = Path(repo_or_path)
    if path.is_dir():
        if (path / CONFIG_FILE).is_file():
            (d,) = find_dictionaries(path)
            return {config_hookpoint(d.config) or safe_name(d.name): ""}
        return {name: d.path.name for name, d in assign_names(find_dictionaries(path)).items()}
    from huggingface_hub import HfApi, hf_hub_download

    repo_id = validate_repo_id(str(repo_or_path))
    folders = dictionary_folders(HfApi(token=token).list_repo_files(repo_id, revision=revision))
    if not folders:
        raise ValueError(f"{repo_id} holds no hf_bae dictionary ({CONFIG_FILE} + {WEIGHTS_FILE} at its root or in a subfolder).")
    out = {}
    for folder in folders:
        if not folder:
            config = read_json(Path(hf_hub_download(repo_id, CONFIG_FILE, revision=revision, token=token)))
            out[config_hookpoint(config) or "dictionary"] = ""
        else:
            out[folder] = folder
    return out


def load_all(repo_or_path: str | Path, *, revision: str | None = None, token: str | bool | None = None, **kwargs: Any) -> dict[str, Any]:
    """Load every dictionary of a Hub repo, or of a local run or repo folder: name -> model.

    ```python
    >>> import hf_bae
    >>> dictionaries = hf_bae.load_all("your-name/bae-smollm2")   # doctest: +SKIP
    >>> dictionaries["layers.5.resid_post"].config.layer            # doctest: +SKIP
    5
    ```

    Names are those of `list_dictionaries`. Keyword arguments go to `from_pretrained` (`dtype`, ...).
    """
    path = Path(repo_or_path)
    models = {}
    for name, folder in list_dictionaries(repo_or_path, revision=revision, token=token).items():
        if path.is_dir():
            models[name] = load_dictionary(path / folder, **kwargs)
        else:
            source = f"{str(repo_or_path).strip('/')}/{folder}" if folder else str(repo_or_path)
            models[name] = load_dictionary(source, revision=revision, token=token, **kwargs)
    return models
