"""Sharing dictionaries on the Hugging Face Hub: `push_run` and `push_dictionary` (behind
`model.push_to_hub`). Finding and loading them (`find_dictionaries`, `list_dictionaries`,
`load_all`) is `hf_bae.loading`'s.

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

The ComSem results of a dictionary live beside the atlas that produced them (`hf-bae interpret`
writes OUT/NAME/comsem.json); `comsem=` (`--comsem`) names them, and the push copies each one as
comsem.json into its dictionary's repo folder. A comsem.json that an older hf_bae wrote into a
dictionary folder is still read when none is given. A card never shows a ComSem result that was not
measured (`model_card.comsem_unmeasured`: no feature scored, or not a report of `hf-bae interpret`):
`--comsem` naming one is an error; one found in a dictionary folder or already in the repo is skipped
with a warning.

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
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .configuration import SITES, option
from .formats import (ATLAS_INFO_FILE, COMSEM_FILE, CONFIG_FILE, DICTIONARY_RUN_FILES, EVAL_RESULTS_FILE, MODEL_CARD_FILE,
                      PLOTS_DIR, SAELENS_CONFIG_FILE, SAELENS_DIR, TRAINING_ARGS_FILE, config_hookpoint)
from .loading import (PLOT_SUFFIXES, LocalDictionary, assign_names, comsem_metrics, dictionary_folders, find_dictionaries,
                      load_dictionary, read_json, safe_name, validate_repo_id)
from .model_card import CardEntry, comsem_unmeasured, render_card
from .version import __version__

logger = logging.getLogger(__name__)
T = TypeVar("T")

LAYOUTS = ("auto", "root", "subfolders")
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
    comsem: list[str] | None = option(
        None, "ComSem results for the card: comsem.json files of `hf-bae interpret`, or folders holding them (its --output_dir, "
        "or OUT/NAME); matched to the dictionaries by name (default: the comsem.json beside --atlas, if any)."
    )
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
        return read_json(Path(hf_hub_download(repo_id, path, revision=state.sha, token=api.token)))

    entries = []
    for folder in folders:
        prefix = f"{folder}/" if folder else ""
        config = fetch(f"{prefix}{CONFIG_FILE}")
        comsem = card_comsem(fetch(f"{prefix}{COMSEM_FILE}"), f"{repo_id}/{prefix}{COMSEM_FILE}")
        metrics = {**fetch(f"{prefix}{EVAL_RESULTS_FILE}"), **comsem}
        plots = sorted(f for f in state.files if f.startswith(f"{prefix}{PLOTS_DIR}/") and f.lower().endswith(PLOT_SUFFIXES))
        saelens = f"{SAELENS_DIR}/{folder}" if f"{SAELENS_DIR}/{folder}/{SAELENS_CONFIG_FILE}" in state.files else None
        entries.append(CardEntry(folder, folder or config_hookpoint(config) or "dictionary", config, metrics, plots, saelens))
    return entries


# -- ComSem results (beside the atlas that produced them) ---------------------------------------
def card_comsem(report: dict[str, Any], source: str | Path) -> dict[str, Any]:
    """The ComSem metrics of `report` for a card; {} (with a warning naming `source`) when it measured nothing."""
    if not report:
        return {}
    problem = comsem_unmeasured(report, require_fields=False)
    if problem:
        logger.warning("Not showing the ComSem result of %s on the card: %s.", source, problem)
        return {}
    return comsem_metrics(report)


def _read_comsem_file(file: Path) -> dict[str, Any]:
    """The report in a comsem.json the user named; ValueError naming the file when it is not one."""
    try:
        report = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{file} is not valid JSON ({err}): pass a comsem.json written by `hf-bae interpret`.") from None
    if not isinstance(report, dict) or "comsem_score" not in report:
        raise ValueError(f"{file} is not a ComSem result of `hf-bae interpret` (no comsem_score).")
    problem = comsem_unmeasured(report)
    if problem:
        raise ValueError(f"{file} holds no measured ComSem result ({problem}); rerun `hf-bae interpret` until it scores "
                         "features, or push without --comsem.")
    return report


def read_comsem_reports(paths: Iterable[str | Path]) -> list[tuple[Path, dict[str, Any]]]:
    """(file, report) of every ComSem result named: a comsem.json, a folder holding one (OUT/NAME of
    `hf-bae interpret`, an atlas folder), or an `hf-bae interpret` output folder (one per subfolder).

    A file named (or the one comsem.json of a folder named) that is not a measured result is a ValueError;
    among the subfolders of an output folder, such a file is skipped with a warning.
    """
    found = []
    for path in map(Path, paths):
        if path.is_file() or (path / COMSEM_FILE).is_file():
            file = path if path.is_file() else path / COMSEM_FILE
            found.append((file, _read_comsem_file(file)))
            continue
        if not path.is_dir():
            raise ValueError(f"comsem={path}: no such file or folder.")
        files = sorted(path.glob(f"*/{COMSEM_FILE}"))
        if not files:
            raise ValueError(f"comsem={path}: it holds no {COMSEM_FILE} (`hf-bae interpret` writes one per dictionary under its --output_dir).")
        usable = []
        for file in files:
            try:
                usable.append((file, _read_comsem_file(file)))
            except ValueError as err:
                logger.warning("Skipping %s", err)
        if not usable:
            raise ValueError(f"comsem={path}: none of its {len(files)} {COMSEM_FILE} files holds a measured ComSem result "
                             "(see the warnings); rerun `hf-bae interpret`, or push without --comsem.")
        found += usable
    return found


def attach_comsem(dictionaries: list[LocalDictionary], paths: Iterable[str | Path]) -> None:
    """Give each dictionary its ComSem report among those at `paths`: by name (the dictionary's folder name,
    as `hf-bae interpret` names it), or the only report when one dictionary is pushed."""
    reports = [(file, r) for file, r in read_comsem_reports(paths) if r.get("dictionary_type") != "random"]
    by_name = {d.name: d for d in dictionaries}
    if len(dictionaries) == 1 and len(reports) == 1:
        matched = [(dictionaries[0], *reports[0])]
    else:
        matched = [(by_name[r.get("name")], file, r) for file, r in reports if r.get("name") in by_name]
        for file, r in reports:
            if r.get("name") not in by_name:
                logger.warning("Not using %s: it is for dictionary %r, which is not pushed.", file, r.get("name"))
    for d, file, report in matched:
        d.comsem_report, d.comsem_path = report, file


def check_comsem_matches(report: dict[str, Any], model: Any, path: Path) -> None:
    """Raise ValueError if a ComSem report records another dictionary (config + weights fingerprint) than `model`."""
    recorded = report.get("dictionary_fingerprint")
    if recorded and not str(recorded).startswith("random:") and recorded != model.fingerprint():
        raise ValueError(
            f"{path} holds the ComSem results of another dictionary (fingerprint {str(recorded)[:12]}…) than the one pushed "
            f"(fingerprint {model.fingerprint()[:12]}…): pass the results of this dictionary's `hf-bae interpret` run."
        )


# -- staging the upload folder -----------------------------------------------------------------
def _stage(targets: dict[str, LocalDictionary], stage: Path, saelens: bool) -> list[CardEntry]:
    """Write every dictionary into the upload folder; returns their card entries.

    Each is loaded and re-saved with save_pretrained, so that a folder that cannot be loaded fails
    here, before any upload, and the modeling code and auto_map are those of the installed hf_bae.
    """
    from .saelens import export_saelens, saelens_architecture

    entries = []
    for folder, d in targets.items():
        dest = stage / folder if folder else stage
        model = load_dictionary(d.path)
        model.save_pretrained(dest)
        for name in DICTIONARY_RUN_FILES:
            if (d.path / name).is_file():
                shutil.copy2(d.path / name, dest / name)
        comsem = card_comsem(d.comsem, d.comsem_path or d.path / COMSEM_FILE)  # {} when nothing was measured
        if d.comsem_report is not None:
            check_comsem_matches(d.comsem_report, model, d.comsem_path)
            (dest / COMSEM_FILE).write_text(json.dumps(d.comsem_report, indent=2) + "\n")
        elif comsem:  # written into the dictionary folder by an older hf_bae
            shutil.copy2(d.path / COMSEM_FILE, dest / COMSEM_FILE)
        if d.training_args is not None:
            shutil.copy2(d.training_args, dest / TRAINING_ARGS_FILE)
        prefix = f"{folder}/" if folder else ""
        for plot in d.plots:
            (dest / PLOTS_DIR).mkdir(exist_ok=True)
            shutil.copy2(plot, dest / PLOTS_DIR / plot.name)
        name = folder or config_hookpoint(d.config) or safe_name(d.name)
        saelens_folder = None
        if saelens:
            try:
                saelens_architecture(model.config)
            except ValueError as err:
                logger.info("No SAELens copy of %s: %s", name, err)
            else:
                saelens_folder = f"{SAELENS_DIR}/{name}"
                export_saelens(model, stage / saelens_folder)
        plots = [f"{prefix}{PLOTS_DIR}/{p.name}" for p in d.plots]
        metrics = {**d.json(EVAL_RESULTS_FILE), **comsem}
        entries.append(CardEntry(folder, name, d.config, metrics, plots, saelens_folder))
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
                owned = path.startswith((f"{folder}/", f"{SAELENS_DIR}/{folder}/"))
            else:
                owned = path.startswith((f"{PLOTS_DIR}/", f"{SAELENS_DIR}/")) or (path.startswith("model") and ".safetensors" in path)
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
        **options: fields of [`PushOptions`]: `layout`, `overwrite`, `suffix`, `saelens`, `atlas`, `comsem`, ...

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
    comsem = opts.comsem or ([opts.atlas] if opts.atlas and (Path(opts.atlas) / COMSEM_FILE).is_file() else [])
    if comsem:
        attach_comsem(dictionaries, comsem)
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
        render_card(entries, repo_id, license=opts.license, atlas_repo=atlas_repo, tags=opts.tags or ()).save(stage / MODEL_CARD_FILE)
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
    if subfolder is not None and (not _NAME.fullmatch(subfolder) or ".." in subfolder or subfolder == SAELENS_DIR):
        raise ValueError(f"subfolder={subfolder!r}: give one folder name of letters, digits, '.', '-' and '_'.")
    opts = PushOptions(**{"overwrite": overwrite, **({"layout": "subfolders"} if subfolder else {}), **options})
    with tempfile.TemporaryDirectory(prefix="hf_bae_model_") as tmp:
        name = subfolder or config_hookpoint(model.config) or "dictionary"
        folder = Path(tmp) / name
        model.save_pretrained(folder)
        if eval_results:
            (folder / EVAL_RESULTS_FILE).write_text(json.dumps(eval_results, indent=2))
        (dictionary,) = find_dictionaries(folder)
        names = {subfolder: dictionary} if subfolder else assign_names([dictionary], opts.suffix)
        return _push(names, repo_id, opts, token)
