"""The run folder and its checkpoints: whether a folder holds a run, its newest complete checkpoint, the
refusal to overwrite another run, clearing a run, the options file, and saving / restoring a checkpoint
(accelerate's `save_state` plus each process's data position and the trainer's counters).

Layout of a checkpoint (`OUTPUT_DIR/checkpoints/checkpoint_<step:08d>/`): accelerate's files,
`data_state_<rank>.json` / `.safetensors` (the data position and tensors of each process) and
`trainer_state.json`, written last: a checkpoint without it is incomplete and never resumed from.
"""

from __future__ import annotations

import json
import logging
import shutil
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..formats import CHECKPOINT_PREFIX, CHECKPOINTS_DIR, CONFIG_FILE, METRICS_FILE, TRAINER_STATE_FILE, TRAINING_ARGS_FILE
from ..version import __version__
from .arguments import RESUMABLE_CHANGES, TrainingArguments


logger = logging.getLogger(__name__)


def _data_state_file(rank: int, suffix: str) -> str:
    return f"data_state_{rank}.{suffix}"


def _step_of(path: Path) -> int:
    return int(path.name[len(CHECKPOINT_PREFIX):])


def json_default(value: Any) -> Any:
    """`json.dumps(default=...)` for the values a run records: tensors as lists, paths as strings."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value)}")


def holds_run(output_dir: str | Path) -> bool:
    """Whether `output_dir` already holds a training run (its options or checkpoints)."""
    path = Path(output_dir)
    return (path / TRAINING_ARGS_FILE).exists() or (path / CHECKPOINTS_DIR).is_dir()


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run (complete = its trainer_state.json was written last)."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return None
    done = [p for p in root.iterdir() if p.name.startswith(CHECKPOINT_PREFIX) and (p / TRAINER_STATE_FILE).exists()]
    return max(done, key=_step_of, default=None)


def checkpoint_problem(path: Path) -> str | None:
    """What is wrong with a complete checkpoint's files (truncated or corrupt), or None when it reads back.

    Checked without unpickling anything: JSON files parse, safetensors files open and their tensors read,
    accelerate's torch.save archives (zip) pass their CRC check, and no file is empty."""
    try:
        state = json.loads((path / TRAINER_STATE_FILE).read_text())
        if not isinstance(state, dict) or not {"step", "world_size", "dictionaries"} <= set(state):
            return f"{path / TRAINER_STATE_FILE} lacks the trainer's counters"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return f"{path / TRAINER_STATE_FILE} is not valid JSON ({error})"
    for file in sorted(path.iterdir()):
        if not file.is_file():
            continue
        try:
            if file.stat().st_size == 0:
                return f"{file} is empty"
            if file.suffix == ".json":
                json.loads(file.read_text())
            elif file.suffix == ".safetensors":
                with safe_open(str(file), framework="pt") as f:
                    for key in f.keys():
                        f.get_tensor(key)
            elif zipfile.is_zipfile(file):
                with zipfile.ZipFile(file) as archive:
                    bad = archive.testzip()
                if bad is not None:
                    return f"{file} is corrupt (member {bad})"
            elif file.suffix in (".bin", ".pt", ".pth"):  # torch.save writes zip archives
                return f"{file} is truncated or corrupt (not a torch archive)"
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, SafetensorError, zipfile.BadZipFile) as error:
            return f"{file} is truncated or corrupt ({error})"
    return None


def intact_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint whose files read back; each newer one that does not is skipped with a
    warning that names it (a run keeps `--save_total_limit` checkpoints, so an older one is usually there)."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return None
    done = [p for p in root.iterdir() if p.name.startswith(CHECKPOINT_PREFIX) and (p / TRAINER_STATE_FILE).exists()]
    skipped = []
    for path in sorted(done, key=_step_of, reverse=True):
        problem = checkpoint_problem(path)
        if problem is None:
            if skipped:
                logger.warning("--resume: skipped %s; resuming from %s instead.", "; ".join(skipped), path)
            return path
        skipped.append(f"{path.name} ({problem})")
    if skipped:
        raise ValueError(f"--resume: no intact checkpoint in {root}: {'; '.join(skipped)}. Start the run again with "
                         "--overwrite (or delete the damaged checkpoints).")
    return None


def check_output_dir(args: TrainingArguments) -> Path | None:
    """Refuse an output folder that holds another run (unless --overwrite / --resume); the checkpoint to resume
    (the newest intact one, see `intact_checkpoint`)."""
    out = Path(args.output_dir)
    if args.resume:
        checkpoint = intact_checkpoint(out)
        if checkpoint is None:
            raise ValueError(f"--resume: {out} holds no complete checkpoint (looked in {out / CHECKPOINTS_DIR}). Start "
                             "a new run without --resume.")
        return checkpoint
    if holds_run(out) and not args.overwrite:
        raise ValueError(f"{out} already holds a training run ({TRAINING_ARGS_FILE} or {CHECKPOINTS_DIR}/). Pass "
                         "--resume to continue it, --overwrite to replace it, or choose another --output_dir.")
    return None


# Options renamed since a run may have been written (old name -> new): a run from before resumes.
RENAMED_OPTIONS = {"model_name_or_path": "base_model", "model_revision": "base_model_revision",
                   "lm_dtype": "base_model_dtype"}


def read_run_options(path: Path) -> dict[str, Any]:
    """The options a run recorded in its training_args.json, under today's names."""
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}): restore it, or start a new run with --overwrite.") from error
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds no options (a JSON object): restore it, or start a new run with --overwrite.")
    return {RENAMED_OPTIONS.get(k, k): v for k, v in data.items()}


def check_resumed_options(output_dir: Path, options: dict[str, Any]) -> list[str]:
    """Refuse to resume with options that would not continue the same run (see `RESUMABLE_CHANGES`); returns
    the allowed changes ("learning_rate: 0.0005 -> 0.0001"), for the resumed run to say."""
    path = output_dir / TRAINING_ARGS_FILE
    if not path.exists():
        return []
    old = read_run_options(path)
    options = json.loads(json.dumps(options, default=json_default))
    changed = sorted(k for k in set(old) | set(options)
                     if old.get(k) != options.get(k) and k not in RESUMABLE_CHANGES | {"hf_bae_version"})
    if changed:
        details = ", ".join(f"{k}: {old.get(k)!r} -> {options.get(k)!r}" for k in changed)
        raise ValueError(f"--resume with different options would not continue the same run ({details}). "
                         "Resume with the original options, or start a new run in another --output_dir.")
    quiet = {"resume", "overwrite", "output_dir", "hf_bae_version", "progress"}
    return [f"{k}: {old.get(k)!r} -> {options.get(k)!r}" for k in sorted(set(old) | set(options))
            if old.get(k) != options.get(k) and k not in quiet]


def clear_run(out: Path, names: Sequence[str]) -> None:
    """Remove a previous run from `out`: its dictionaries' folders (these and the ones it recorded), checkpoints
    and options; other files are left alone."""
    previous = []
    if (out / TRAINING_ARGS_FILE).exists():
        try:
            previous = json.loads((out / TRAINING_ARGS_FILE).read_text()).get("dictionaries", [])
        except (json.JSONDecodeError, AttributeError):
            previous = []
    for name in set(names) | set(previous):
        if (out / name / CONFIG_FILE).exists() or (out / name / METRICS_FILE).exists():
            shutil.rmtree(out / name)
    shutil.rmtree(out / CHECKPOINTS_DIR, ignore_errors=True)
    (out / TRAINING_ARGS_FILE).unlink(missing_ok=True)


def write_run_options(out: Path, options: dict[str, Any]) -> None:
    """`training_args.json`: every option of the run and the hf_bae version."""
    (out / TRAINING_ARGS_FILE).write_text(
        json.dumps({**options, "hf_bae_version": __version__}, indent=2, default=json_default) + "\n")


def normalization_tensors(name: str, normalization: tuple[torch.Tensor, float, torch.Tensor, float] | None
                          ) -> dict[str, torch.Tensor]:
    """A dictionary's normalisation statistics (while training, before they are folded) as checkpoint tensors."""
    if normalization is None:
        return {}
    return {f"normalization.{name}.input_mean": normalization[0].cpu().clone(),
            f"normalization.{name}.target_mean": normalization[2].cpu().clone(),
            f"normalization.{name}.scales": torch.tensor([normalization[1], normalization[3]], dtype=torch.float64)}


def restored_normalization(name: str, tensors: dict[str, torch.Tensor]
                           ) -> tuple[torch.Tensor, float, torch.Tensor, float] | None:
    """The inverse of `normalization_tensors`: (input mean, input scale, target mean, target scale) or None."""
    if f"normalization.{name}.scales" not in tensors:
        return None
    scales = tensors[f"normalization.{name}.scales"].tolist()
    return (tensors[f"normalization.{name}.input_mean"], scales[0], tensors[f"normalization.{name}.target_mean"],
            scales[1])


def save_checkpoint(accelerator: Any, output_dir: Path, step: int, state: dict[str, Any], data: dict[str, Any],
                    tensors: dict[str, torch.Tensor], save_total_limit: int) -> Path:
    """Write `checkpoint_<step>` atomically (in a temporary folder renamed at the end) and keep the newest
    `save_total_limit`. Every process calls it.

    Args:
        state: the trainer's counters (main process), for `trainer_state.json`.
        data, tensors: this process's data position (JSON) and tensors (data stream, counters, normalisation).
    """
    acc = accelerator
    root = output_dir / CHECKPOINTS_DIR
    final = root / f"{CHECKPOINT_PREFIX}{step:08d}"
    tmp = root / f".tmp_{CHECKPOINT_PREFIX}{step:08d}"
    acc.wait_for_everyone()
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    acc.wait_for_everyone()
    acc.save_state(str(tmp))
    rank = acc.process_index
    save_file(tensors, str(tmp / _data_state_file(rank, "safetensors")))
    (tmp / _data_state_file(rank, "json")).write_text(json.dumps(data))
    acc.wait_for_everyone()
    if acc.is_main_process:
        (tmp / TRAINER_STATE_FILE).write_text(json.dumps({**state, "hf_bae_version": __version__}, indent=2) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        kept = sorted((p for p in root.iterdir() if p.name.startswith(CHECKPOINT_PREFIX)), key=_step_of)
        for old in kept[:-save_total_limit]:
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Any, path: Path, dictionaries: list[str]
                    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, torch.Tensor]]:
    """Restore accelerate's state from `path` and return (trainer state, this process's data position, its
    tensors); refuses a checkpoint of another number of processes or other dictionaries."""
    acc = accelerator
    problem = checkpoint_problem(path)  # also when called directly, not only through --resume
    if problem is not None:
        raise ValueError(f"Checkpoint {path} cannot be restored: {problem}.")
    state = json.loads((path / TRAINER_STATE_FILE).read_text())
    if state["world_size"] != acc.num_processes:
        raise ValueError(f"{path} was written by {state['world_size']} process(es); resume it with the same "
                         f"number (this run has {acc.num_processes}), or the data order would change.")
    if state["dictionaries"] != dictionaries:
        raise ValueError(f"{path} holds dictionaries {state['dictionaries']}, this run trains "
                         f"{dictionaries}: resume with the same --dictionaries.")
    acc.load_state(str(path))
    rank = acc.process_index
    data = json.loads((path / _data_state_file(rank, "json")).read_text())
    tensors = load_file(str(path / _data_state_file(rank, "safetensors")))
    return state, data, tensors


def truncate_metrics(folder: Path, step: int) -> None:
    """Drop the records of `folder/metrics.jsonl` logged after `step` (an interrupted run may have logged past
    its last checkpoint)."""
    log = folder / METRICS_FILE
    if log.exists():
        lines = [ln for ln in log.read_text().splitlines() if ln and json.loads(ln)["step"] <= step]
        log.write_text("".join(ln + "\n" for ln in lines))
