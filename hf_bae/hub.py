"""Sharing dictionaries on the Hugging Face Hub: `push_run`, `push_dictionary` (behind
`model.push_to_hub`), `list_dictionaries` and `load_all`.

Repo layout. A repo holds one or several dictionaries of one language model:

    README.md                           model card (hf_bae.model_card, templates in model_cards/)
    configuration.py  modeling_*.py …   modeling code for trust_remote_code (see `_stage`)
    layers.5.resid_post/                one subfolder per hookpoint, named layers.{layer}.{site}
        config.json  model.safetensors  *.py      (save_pretrained output, auto_map)
        eval_results.json  metrics.jsonl  comsem.json  training_args.json  plots/*.png
    layers.5.resid_post.topk/           dictionaries sharing a hookpoint get ".{run folder}" each
    saelens/layers.5.resid_post.topk/   optional SAELens copy of an SAE

A repo with a single dictionary keeps it at its root instead, so that
`AutoModel.from_pretrained("user/repo")` needs no `subfolder`; `load_all` reads both layouts.

A push is one Hub commit: its files appear together or not at all. Transient failures (HTTP 408, 429,
5xx, dropped connections) are retried with backoff; other failures raise `HubUploadError`; and the
commit the Hub reports is checked against the files sent before success is reported. The token is
huggingface_hub's own (`hf auth login` or `HF_TOKEN`); hf_bae never writes it anywhere.
"""

from __future__ import annotations

import importlib
import json
import logging
import re
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .configuration import SITES, option
from .formats import ATLAS_INFO_FILE, config_hookpoint
from .model_card import CardEntry, render_card
from .version import __version__

logger = logging.getLogger(__name__)
T = TypeVar("T")

MODEL_TYPES = ("binary_autoencoder", "sparse_autoencoder")
LAYOUTS = ("auto", "root", "subfolders")
SAELENS_FOLDER = "saelens"
RUN_FILES = ("eval_results.json", "metrics.jsonl", "comsem.json")  # travel with a dictionary when present
PLOT_SUFFIXES = (".png", ".svg", ".jpg", ".jpeg")
TRANSIENT_STATUS = (408, 429, 500, 502, 503, 504)
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")




@dataclass
class PushOptions:
    """Options of `push_run` and `hf-bae push` (each field is a `--flag` of the command)."""

    _argument_group_name = "push options"  # (not a field: no annotation) the --help section title

    private: bool = option(False, "Create the repo as private (ignored when it exists already; otherwise the namespace's default).")
    revision: str | None = option(None, "Branch to commit to (default: main; created from main if missing).")
    create_pr: bool = option(False, "Open a pull request instead of committing to the branch.")
    commit_message: str | None = option(None, "Commit message (default: 'Upload N dictionaries with hf_bae VERSION').")
    commit_description: str | None = option(None, "Longer description of the commit.")
    license: str = option("mit", "License of the weights in the card metadata; choose one compatible with the base model's terms.")
    tags: list[str] | None = option(None, "Extra tags for the card metadata.")
    only: list[str] | None = option(None, "Push only these dictionaries of the run (names of RUN_DIR's subfolders, e.g. bae topk).")
    layout: str = option(
        "auto",
        "root: the dictionary at the repo root (one dictionary only); subfolders: one subfolder per hookpoint; "
        "auto: root for one dictionary pushed to a repo without subfolders, subfolders otherwise.",
        choices=LAYOUTS,
    )
    suffix: str | None = option(None, "Append '.SUFFIX' to the subfolder names (to keep another version of a hookpoint next to it).")
    overwrite: bool = option(False, "Replace dictionaries that exist in the repo under the same name (their stale files are deleted).")
    saelens: bool = option(False, "Also upload a SAELens copy of each ReLU / TopK / JumpReLU SAE under saelens/NAME/ (a BAE has none).")
    atlas: str | None = option(None, "Folder of a feature atlas (datasets.Dataset.save_to_disk) to upload as a Hub dataset, linked from the card.")
    atlas_repo: str | None = option(None, "Dataset repo of the feature atlas (default: REPO_ID-atlas); without --atlas, the card only links it.")
    max_retries: int = option(3, "Attempts for a request that fails with a transient error (HTTP 408/429/5xx, dropped connection).")
    retry_wait: float = option(2.0, "Seconds before the first retry; doubled before each further one.")
    output_dir: str | None = option(
        None, "Write the folder that would be uploaded (card included) here and stop: a preview, with no network and no token."
    )

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout={self.layout!r}: choose one of {', '.join(LAYOUTS)}.")
        if self.max_retries < 1:
            raise ValueError(f"max_retries must be >= 1, got {self.max_retries}.")
        if self.retry_wait < 0:
            raise ValueError(f"retry_wait must be >= 0 seconds, got {self.retry_wait}.")
        if self.suffix is not None and not re.fullmatch(r"[A-Za-z0-9_-]+", self.suffix):
            raise ValueError(f"suffix={self.suffix!r}: use letters, digits, '-' and '_' only.")


@dataclass
class PushResult:
    """What a push did."""

    repo_id: str
    commit_oid: str | None  # None for a dry run (output_dir)
    commit_url: str | None
    subfolders: dict[str, str]  # run folder name -> its folder in the repo ("" = the root)
    atlas_repo: str | None = None
    folder: Path | None = None  # the staged upload folder, kept only for a dry run


class HubUploadError(RuntimeError):
    """A push that did not complete. Nothing of it was committed unless the message says otherwise."""


# -- trained dictionaries on disk --------------------------------------------------------------
@dataclass
class LocalDictionary:
    """A trained dictionary folder: save_pretrained output plus, when present, metrics and plots."""

    name: str  # its folder's name in the run ("bae", "topk")
    path: Path
    config: dict[str, Any]
    run_dir: Path  # where training_args.json of its run lives

    def json(self, name: str) -> dict[str, Any]:
        return _read_json(self.path / name)

    @property
    def plots(self) -> list[Path]:
        folder = self.path / "plots"
        return sorted(p for p in folder.iterdir() if p.suffix.lower() in PLOT_SUFFIXES) if folder.is_dir() else []

    @property
    def training_args(self) -> Path | None:
        return next((p for p in (self.path / "training_args.json", self.run_dir / "training_args.json") if p.is_file()), None)

    @property
    def metrics(self) -> dict[str, Any]:
        return {**self.json("eval_results.json"), **_comsem_metrics(self.json("comsem.json"))}


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        logger.warning("Ignoring %s: not valid JSON (%s).", path, err)
        return {}
    return data if isinstance(data, dict) else {}


def _comsem_metrics(comsem: dict[str, Any]) -> dict[str, Any]:
    return {k: comsem[k] for k in ("comsem_score", "interpretable_fraction") if k in comsem}


def _has_weights(folder: Path) -> bool:
    return any(folder.glob("model*.safetensors")) or (folder / "model.safetensors.index.json").is_file()


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
    single = (run_dir / "config.json").is_file()
    if single:
        candidates = [(run_dir.resolve().name, run_dir)]
    else:
        candidates = [(p.name, p) for p in sorted(run_dir.iterdir()) if p.is_dir() and (p / "config.json").is_file()]
    if only:
        missing = sorted(set(only) - {name for name, _ in candidates})
        if missing:
            have = ", ".join(name for name, _ in candidates) or "none"
            raise ValueError(f"--only {' '.join(missing)}: no such dictionary folder in {run_dir} (it has: {have}).")
        candidates = [(name, folder) for name, folder in candidates if name in only]
    found, problems = [], []
    for name, folder in candidates:
        config = _read_json(folder / "config.json")
        if config.get("model_type") not in MODEL_TYPES:
            if single:  # a subfolder with another model's config.json is simply not ours
                problems.append(f"{folder}/config.json is not an hf_bae dictionary (model_type must be one of {', '.join(MODEL_TYPES)})")
        elif not _has_weights(folder):
            problems.append(f"{folder} has config.json but no model.safetensors: its training did not finish (or saved elsewhere)")
        else:
            found.append(LocalDictionary(name, folder, config, run_dir.parent if single else run_dir))
    if problems:
        raise ValueError(f"Cannot push {run_dir}:\n  " + "\n  ".join(problems) + "\nFinish or remove those folders, or pick the others with --only.")
    if not found:
        raise ValueError(
            f"No trained dictionary in {run_dir}: expected config.json + model.safetensors (the save_pretrained output of a "
            "BinaryAutoencoder or SparseAutoencoder) in it or in its subfolders (e.g. RUN_DIR/bae/). "
            "Did `hf-bae train` finish? Checkpoints are not pushed."
        )
    return found


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip(".-") or "dictionary"


def assign_names(dictionaries: Sequence[LocalDictionary], suffix: str | None = None) -> dict[str, LocalDictionary]:
    """Repo folder name -> dictionary.

    A dictionary goes to `layers.{layer}.{site}`. When several share a hookpoint (a BAE and a TopK SAE
    of one layer), each of them gets its run folder's name as a suffix (`layers.5.resid_post.bae`,
    `layers.5.resid_post.topk`), so that no name depends on which was pushed first. A dictionary with
    no recorded layer is named after its run folder. `suffix` is appended to every name.
    """
    base = {d.name: config_hookpoint(d.config) or _safe_name(d.name) for d in dictionaries}
    counts = Counter(base.values())
    names = {}
    for d in dictionaries:
        name = base[d.name]
        if counts[name] > 1:
            # a folder already named this way (a downloaded repo being pushed again) keeps its name
            name = d.name if d.name.startswith(f"{name}.") else f"{name}.{_safe_name(d.name)}"
        names[f"{name}.{suffix}" if suffix else name] = d
    return names


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


# -- retries -----------------------------------------------------------------------------------
def _transport_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module in ("httpx2", "httpx"):  # huggingface_hub 2.x speaks httpx2, 1.x httpx
        try:
            errors.append(importlib.import_module(module).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def _status(error: BaseException) -> int | None:
    return getattr(getattr(error, "response", None), "status_code", None)


def _root_cause(error: BaseException) -> str:
    """The error and, when it wraps others (huggingface_hub wraps LFS failures), the innermost one."""
    inner = error
    while inner.__cause__ is not None:
        inner = inner.__cause__
    return str(error) if inner is error else f"{error} ({type(inner).__name__}: {inner})"


def is_transient(error: BaseException | None) -> bool:
    """Whether a failure is worth retrying: HTTP 408/429/5xx or a dropped connection, also when wrapped
    (huggingface_hub re-raises a failed LFS upload as a RuntimeError from the HTTP error)."""
    transport, seen = _transport_errors(), set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if _status(error) in TRANSIENT_STATUS or isinstance(error, transport):
            return True
        error = error.__cause__ or error.__context__
    return False


def with_retries(action: Callable[[], T], what: str, max_retries: int = 3, retry_wait: float = 2.0) -> T:
    """Run `action`, retrying transient failures; any failure ends as a `HubUploadError` that says why."""
    for attempt in range(1, max_retries + 1):
        try:
            return action()
        except Exception as err:  # noqa: BLE001 - classified and re-raised with what to do
            status = _status(err)
            if status == 412:
                raise HubUploadError(
                    f"{what} failed: the repo changed while pushing (HTTP 412), so nothing was committed. "
                    "Push again; the new state of the repo will be taken into account."
                ) from err
            if status in (401, 403):
                raise HubUploadError(
                    f"{what} failed: the Hub refused the token (HTTP {status}). Log in with `hf auth login` or set HF_TOKEN "
                    "to a token that can write to this namespace. Nothing was committed."
                ) from err
            if not is_transient(err):
                raise HubUploadError(f"{what} failed: {_root_cause(err)}. Nothing was committed.") from err
            if attempt == max_retries:
                raise HubUploadError(
                    f"{what} failed {max_retries} times with transient errors (last: {_root_cause(err)}). Nothing was committed: "
                    "the Hub applies a commit entirely or not at all. Try again later."
                ) from err
            wait = retry_wait * 2 ** (attempt - 1)
            logger.warning("%s failed (%s); retrying in %.1f s (attempt %d of %d).", what, err, wait, attempt + 1, max_retries)
            time.sleep(wait)
    raise AssertionError("unreachable")


# -- the repo as it is -------------------------------------------------------------------------
@dataclass
class RemoteState:
    """A repo's files before a push (an absent repo has none)."""

    sha: str | None
    files: list[str]

    @property
    def dictionaries(self) -> list[str]:
        return dictionary_folders(self.files)


def dictionary_folders(files: Iterable[str]) -> list[str]:
    """Folders (`""` = root) of a file list that hold a dictionary: config.json + model*.safetensors,
    at the root or one level down (the SAELens copies are not counted)."""
    files = set(files)
    folders = []
    for path in sorted(files):
        parts = path.split("/")
        if parts[-1] != "config.json" or len(parts) > 2 or (len(parts) == 2 and parts[0] == SAELENS_FOLDER):
            continue
        folder = parts[0] if len(parts) == 2 else ""
        prefix = f"{folder}/" if folder else ""
        weights = (f[len(prefix):] for f in files if f.startswith(prefix))
        if any(w.startswith("model") and w.endswith((".safetensors", ".safetensors.index.json")) and "/" not in w for w in weights):
            folders.append(folder)
    return folders


def _remote_state(api, repo_id: str, revision: str | None) -> RemoteState:
    from huggingface_hub.errors import RevisionNotFoundError

    try:
        info = api.model_info(repo_id, revision=revision)
    except RevisionNotFoundError:  # a new branch: it starts from main
        info = api.model_info(repo_id)
    return RemoteState(info.sha, api.list_repo_files(repo_id, revision=info.sha))


def _remote_entries(api, repo_id: str, state: RemoteState, folders: Iterable[str]) -> list[CardEntry]:
    """Card entries of dictionaries that stay in the repo, read from their small JSON files."""
    from huggingface_hub import hf_hub_download

    def fetch(path: str) -> dict[str, Any]:
        if path not in state.files:
            return {}
        return _read_json(Path(hf_hub_download(repo_id, path, revision=state.sha, token=api.token)))

    entries = []
    for folder in folders:
        prefix = f"{folder}/" if folder else ""
        config = fetch(f"{prefix}config.json")
        metrics = {**fetch(f"{prefix}eval_results.json"), **_comsem_metrics(fetch(f"{prefix}comsem.json"))}
        plots = sorted(f for f in state.files if f.startswith(prefix + "plots/") and f.lower().endswith(PLOT_SUFFIXES))
        saelens = f"{SAELENS_FOLDER}/{folder}" if f"{SAELENS_FOLDER}/{folder}/cfg.json" in state.files else None
        entries.append(CardEntry(folder, folder or config_hookpoint(config) or "dictionary", config, metrics, plots, saelens))
    return entries


# -- staging the upload folder -----------------------------------------------------------------
def _stage(targets: dict[str, LocalDictionary], stage: Path, saelens: bool) -> list[CardEntry]:
    """Write every dictionary into the upload folder; returns their card entries.

    Each is loaded and re-saved with save_pretrained, so that a folder that cannot be loaded fails
    here, before any upload, and the modeling code and auto_map are those of the installed hf_bae.
    """
    from transformers import AutoModel

    from .saelens import export_saelens, saelens_architecture

    entries = []
    for folder, d in targets.items():
        dest = stage / folder if folder else stage
        model = AutoModel.from_pretrained(d.path)
        model.save_pretrained(dest)
        for name in RUN_FILES:
            if (d.path / name).is_file():
                shutil.copy2(d.path / name, dest / name)
        if d.training_args is not None:
            shutil.copy2(d.training_args, dest / "training_args.json")
        prefix = f"{folder}/" if folder else ""
        for plot in d.plots:
            (dest / "plots").mkdir(exist_ok=True)
            shutil.copy2(plot, dest / "plots" / plot.name)
        name = folder or config_hookpoint(d.config) or _safe_name(d.name)
        saelens_folder = None
        if saelens:
            try:
                saelens_architecture(model.config)
            except ValueError as err:
                logger.info("No SAELens copy of %s: %s", name, err)
            else:
                saelens_folder = f"{SAELENS_FOLDER}/{name}"
                export_saelens(model, stage / saelens_folder)
        plots = [f"{prefix}plots/{p.name}" for p in d.plots]
        entries.append(CardEntry(folder, name, d.config, d.metrics, plots, saelens_folder))
    if "" not in targets:
        # transformers fetches remote code from the repo root even with `subfolder=` (its dynamic
        # module loader takes no subfolder), so the root needs the modeling files of every kind too.
        for folder in targets:
            for py in sorted((stage / folder).glob("*.py")):
                shutil.copy2(py, stage / py.name)
    return entries


def _sort_key(entry: CardEntry) -> tuple:
    layer, site = entry.config.get("layer"), entry.config.get("site", "resid_post")
    return (layer is None, layer or 0, SITES.index(site) if site in SITES else len(SITES), entry.name)


def _stale_files(state: RemoteState, replaced: Iterable[str], uploading: set[str]) -> list[str]:
    """Files of replaced dictionaries that the new versions do not have (old plots, shards, SAELens copies)."""
    stale = []
    for path in state.files:
        if path in uploading or path == ".gitattributes":
            continue
        for folder in replaced:
            if folder:
                owned = path.startswith((f"{folder}/", f"{SAELENS_FOLDER}/{folder}/"))
            else:
                owned = path.startswith(("plots/", f"{SAELENS_FOLDER}/")) or (path.startswith("model") and ".safetensors" in path)
            if owned:
                stale.append(path)
                break
    return stale


# -- pushing -----------------------------------------------------------------------------------
def _require_token(token: str | bool | None) -> None:
    from huggingface_hub import get_token

    if token is False or (token in (None, True) and get_token() is None):
        raise ValueError(
            "No Hugging Face token: log in with `hf auth login`, or set the HF_TOKEN environment variable to a write token "
            "from https://huggingface.co/settings/tokens."
        )


def _push_atlas(atlas: str, atlas_repo: str, opts: PushOptions, token: str | bool | None) -> None:
    from datasets import load_from_disk
    from huggingface_hub import HfApi


    path = Path(atlas)
    if not path.is_dir():
        raise ValueError(f"atlas={atlas}: not a directory; pass the folder written by `hf-bae atlas` (Dataset.save_to_disk).")
    try:
        dataset = load_from_disk(str(path))
    except FileNotFoundError as err:
        raise ValueError(f"atlas={atlas}: not a saved datasets.Dataset ({err}).") from err
    with_retries(
        lambda: dataset.push_to_hub(atlas_repo, private=opts.private or None, token=token, commit_message=f"Upload feature atlas with hf_bae {__version__}"),
        f"Uploading the feature atlas to {atlas_repo}",
        opts.max_retries,
        opts.retry_wait,
    )
    # The atlas's metadata (dictionary fingerprint, base model, layer, site, selection settings) is a
    # file beside the Arrow data that Dataset.push_to_hub does not carry; the Space checks it.
    info = path / ATLAS_INFO_FILE
    if info.is_file():
        with_retries(
            lambda: HfApi(token=token).upload_file(path_or_fileobj=str(info), path_in_repo=ATLAS_INFO_FILE, repo_id=atlas_repo,
                                                   repo_type="dataset", commit_message="Upload atlas metadata"),
            f"Uploading {ATLAS_INFO_FILE} to {atlas_repo}",
            opts.max_retries,
            opts.retry_wait,
        )


def push_run(run_dir: str | Path, repo_id: str, *, token: str | bool | None = None, **options: Any) -> PushResult:
    """Upload the trained dictionaries of a run to a Hub model repo, with a model card.

    Args:
        run_dir: the output directory of `hf-bae train` (one subfolder per dictionary) or one
            dictionary folder (save_pretrained output).
        repo_id: `namespace/name` of the model repo (created when missing).
        token: a Hub token; by default huggingface_hub's (`hf auth login` or `HF_TOKEN`).
        **options: fields of [`PushOptions`]: `layout`, `overwrite`, `suffix`, `saelens`, `atlas`, ...

    Returns:
        A [`PushResult`]: the commit and the repo folder of each dictionary.

    Raises:
        ValueError: a run with no trained dictionary, a malformed repo id, no token, or a push that would
            replace dictionaries of the repo without `overwrite=True`.
        HubUploadError: the upload failed; nothing was committed.
    """
    opts = PushOptions(**options)
    validate_repo_id(repo_id)
    dictionaries = find_dictionaries(run_dir, opts.only)
    return _push(assign_names(dictionaries, opts.suffix), repo_id, opts, token)


def _push(names: dict[str, LocalDictionary], repo_id: str, opts: PushOptions, token: str | bool | None) -> PushResult:
    atlas_repo = opts.atlas_repo or (f"{repo_id}-atlas" if opts.atlas else None)
    if atlas_repo:
        validate_repo_id(atlas_repo, "dataset repo id for the feature atlas")
    if opts.layout == "root" and len(names) > 1:
        raise ValueError(f"layout='root' holds one dictionary but there are {len(names)}: use layout='subfolders' or pick one with --only.")

    dry_run = opts.output_dir is not None
    api, state = None, RemoteState(None, [])
    if not dry_run:
        from huggingface_hub import HfApi

        _require_token(token)
        api = HfApi(token=token)
        url = with_retries(lambda: api.create_repo(repo_id, private=opts.private or None, exist_ok=True), f"Creating {repo_id}",
                           opts.max_retries, opts.retry_wait)
        repo_id = url.repo_id  # a bare name resolves to the token owner's namespace
        state = with_retries(lambda: _remote_state(api, repo_id, opts.revision), f"Reading {repo_id}", opts.max_retries, opts.retry_wait)

    remote = state.dictionaries
    layout = opts.layout
    if layout == "auto":
        layout = "root" if len(names) == 1 and not any(remote) else "subfolders"
    if layout == "root" and any(remote):
        raise ValueError(f"{repo_id} holds dictionaries in subfolders ({', '.join(f for f in remote if f)}): push with layout='subfolders'.")
    if layout == "subfolders" and "" in remote:
        raise ValueError(
            f"{repo_id} holds one dictionary at its root (loaded without subfolder=), so it cannot take more without breaking "
            "that. Push these to another repo, or replace it with layout='root' and overwrite=True; a repo meant to grow "
            "hookpoint by hookpoint starts with layout='subfolders' (--layout subfolders)."
        )
    targets = {("" if layout == "root" else name): d for name, d in names.items()}
    clashes = [t for t in targets if t in remote]
    if clashes and not opts.overwrite:
        shown = ", ".join(t or "the repo root" for t in clashes)
        raise ValueError(f"{repo_id} already has a dictionary at {shown}: pass overwrite=True (--overwrite) to replace it, "
                         "or suffix=NAME (--suffix) to push next to it.")

    stage = Path(opts.output_dir) if dry_run else Path(tempfile.mkdtemp(prefix="hf_bae_push_"))
    try:
        if dry_run:
            stage.mkdir(parents=True, exist_ok=True)
            if any(stage.iterdir()):
                raise ValueError(f"output_dir={stage} is not empty: choose a new folder.")
        entries = _stage(targets, stage, opts.saelens)
        if api is not None:
            entries += _remote_entries(api, repo_id, state, [f for f in remote if f not in targets])
        entries.sort(key=_sort_key)
        render_card(entries, repo_id, license=opts.license, atlas_repo=atlas_repo, tags=opts.tags or ()).save(stage / "README.md")
        subfolders = {d.name: folder for folder, d in targets.items()}
        if dry_run:
            logger.info("Wrote the upload folder to %s; nothing was uploaded.", stage)
            return PushResult(repo_id, None, None, subfolders, atlas_repo, folder=stage)
        if opts.atlas:
            _push_atlas(opts.atlas, atlas_repo, opts, token)
        commit = _commit(api, repo_id, stage, state, [t for t in targets if t in remote], opts, len(targets))
        return PushResult(repo_id, commit.oid, commit.commit_url, subfolders, atlas_repo)
    finally:
        if not dry_run:
            shutil.rmtree(stage, ignore_errors=True)


def _commit(api, repo_id: str, stage: Path, state: RemoteState, replaced: list[str], opts: PushOptions, count: int):
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    local = sorted(p.relative_to(stage).as_posix() for p in stage.rglob("*") if p.is_file())
    stale = _stale_files(state, replaced, set(local))
    if opts.revision and not opts.create_pr:
        with_retries(lambda: api.create_branch(repo_id, branch=opts.revision, exist_ok=True), f"Creating branch {opts.revision}",
                     opts.max_retries, opts.retry_wait)

    def attempt():
        # Fresh operations each time: huggingface_hub refuses to reuse committed ones.
        operations = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(stage / p)) for p in local]
        operations += [CommitOperationDelete(path_in_repo=p) for p in stale]
        return api.create_commit(
            repo_id,
            operations,
            commit_message=opts.commit_message or f"Upload {count} {'dictionary' if count == 1 else 'dictionaries'} with hf_bae {__version__}",
            commit_description=opts.commit_description,
            revision=opts.revision,
            create_pr=opts.create_pr,
            # The Hub refuses the commit (412) if someone pushed since we read the repo: the overwrite
            # checks above stay true.
            parent_commit=None if opts.create_pr else state.sha,
        )

    commit = with_retries(attempt, f"Uploading {len(local)} files to {repo_id}", opts.max_retries, opts.retry_wait)
    present = set(with_retries(lambda: api.list_repo_files(repo_id, revision=commit.oid), f"Checking commit {commit.oid}",
                               opts.max_retries, opts.retry_wait))
    missing = [p for p in local if p not in present]
    if missing:
        raise HubUploadError(
            f"The Hub reports commit {commit.oid} on {repo_id}, but {len(missing)} of the files sent are not in it "
            f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}): the push is incomplete. Push again with --overwrite."
        )
    logger.info("Pushed %d files to %s: %s", len(local), repo_id, commit.commit_url)
    return commit


def push_dictionary(model, repo_id: str, *, subfolder: str | None = None, eval_results: dict[str, Any] | None = None,
                    token: str | bool | None = None, overwrite: bool = True, **options: Any) -> PushResult:
    """Push one in-memory dictionary with a model card (what `model.push_to_hub` does).

    Args:
        model: a `BinaryAutoencoder` or `SparseAutoencoder`.
        repo_id: `namespace/name` of the model repo.
        subfolder: the repo folder to push into (e.g. `layers.5.resid_post`). By default: the root of a
            repo without subfolders, else the dictionary's hookpoint.
        eval_results: metrics for the card (`fvu`, `l0`, ... as in a run's `eval_results.json`).
        overwrite: replace a dictionary already there (True, like `PreTrainedModel.push_to_hub`).
        **options: other [`PushOptions`] fields.
    """
    validate_repo_id(repo_id)
    if subfolder is not None and (not _NAME.fullmatch(subfolder) or ".." in subfolder or subfolder == SAELENS_FOLDER):
        raise ValueError(f"subfolder={subfolder!r}: give one folder name of letters, digits, '.', '-' and '_'.")
    opts = PushOptions(**{"overwrite": overwrite, **({"layout": "subfolders"} if subfolder else {}), **options})
    with tempfile.TemporaryDirectory(prefix="hf_bae_model_") as tmp:
        name = subfolder or config_hookpoint(model.config) or "dictionary"
        folder = Path(tmp) / name
        model.save_pretrained(folder)
        if eval_results:
            (folder / "eval_results.json").write_text(json.dumps(eval_results, indent=2))
        (dictionary,) = find_dictionaries(folder)
        names = {subfolder: dictionary} if subfolder else assign_names([dictionary], opts.suffix)
        return _push(names, repo_id, opts, token)


# -- loading -----------------------------------------------------------------------------------
def list_dictionaries(repo_or_path: str | Path, *, revision: str | None = None, token: str | bool | None = None) -> dict[str, str]:
    """Name -> folder (`""` = root) of every dictionary in a Hub repo or a local folder.

    Names are the repo's subfolders (`layers.5.resid_post`); a dictionary at a repo's root is named
    after its hookpoint. A local run directory is named as `hf-bae push` would name it.
    """
    path = Path(repo_or_path)
    if path.is_dir():
        if (path / "config.json").is_file():
            (d,) = find_dictionaries(path)
            return {config_hookpoint(d.config) or _safe_name(d.name): ""}
        return {name: d.path.name for name, d in assign_names(find_dictionaries(path)).items()}
    from huggingface_hub import HfApi, hf_hub_download

    repo_id = validate_repo_id(str(repo_or_path))
    folders = dictionary_folders(HfApi(token=token).list_repo_files(repo_id, revision=revision))
    if not folders:
        raise ValueError(f"{repo_id} holds no hf_bae dictionary (no config.json + model.safetensors at its root or in a subfolder).")
    out = {}
    for folder in folders:
        if not folder:
            config = _read_json(Path(hf_hub_download(repo_id, "config.json", revision=revision, token=token)))
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
    from transformers import AutoModel  # hf_bae/__init__ has registered our classes with it

    path = Path(repo_or_path)
    models = {}
    for name, folder in list_dictionaries(repo_or_path, revision=revision, token=token).items():
        if path.is_dir():
            models[name] = AutoModel.from_pretrained(path / folder, **kwargs)
        else:
            where = {"subfolder": folder} if folder else {}
            models[name] = AutoModel.from_pretrained(str(repo_or_path), revision=revision, token=token, **where, **kwargs)
    return models
