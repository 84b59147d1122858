"""Training in separate processes: SIGKILL then --resume, and two ranks under `accelerate launch`.

Both start `tests/training/train_worker.py`, which logs the row indices of every batch it hands to the trainer.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

WORKER = Path(__file__).with_name("train_worker.py")
ROOT = Path(__file__).resolve().parents[2]


def env():
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e["OMP_NUM_THREADS"] = "1"
    return e


def worker(out, log, *extra):
    return [sys.executable, str(WORKER), "--output_dir", str(out), "--log", str(log), *extra]


def batches(log):
    return [json.loads(line) for line in Path(f"{log}.rank0").read_text().splitlines()]


def same_weights(a, b):
    for name in ("bae", "relu"):
        wa, wb = load_file(str(a / name / "model.safetensors")), load_file(str(b / name / "model.safetensors"))
        if wa.keys() != wb.keys() or not all(wa[k].equal(wb[k]) for k in wa):
            return False
    return True


@pytest.mark.slow
def test_sigkill_after_a_checkpoint_then_resume_equals_an_uninterrupted_run(tmp_path):
    subprocess.run(worker(tmp_path / "clean", tmp_path / "clean.log"), env=env(), check=True, timeout=300,
                   capture_output=True)

    killed, log = tmp_path / "killed", tmp_path / "killed.log"
    proc = subprocess.Popen(worker(killed, log, "--sleep", "0.15"), env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    marker = killed / "checkpoints" / "checkpoint_00000010" / "trainer_state.json"
    deadline = time.monotonic() + 240
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), "the run never reached its step-10 checkpoint"
    time.sleep(0.5)  # let it train past the checkpoint, so that the kill loses work
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    first = batches(log)
    assert len(first) > 10, "killed before it trained past the checkpoint"
    checkpoints = sorted(p.name for p in (killed / "checkpoints").iterdir() if p.name.startswith("checkpoint_"))
    resumed_from = int(checkpoints[-1].split("_")[1])
    assert resumed_from < len(first) < 40  # killed mid-run, after a checkpoint
    shutil.move(f"{log}.rank0", f"{log}.first.rank0")

    subprocess.run(worker(killed, log, "--resume"), env=env(), check=True, timeout=300, capture_output=True)
    second = batches(log)

    assert same_weights(tmp_path / "clean", killed)  # bitwise
    # The data: the first run's batches up to the checkpoint, then the resumed run's, are exactly the
    # uninterrupted run's batches: nothing repeated, nothing skipped.
    clean = [b["ids"] for b in batches(tmp_path / "clean.log")]
    stitched = [b["ids"] for b in first[:resumed_from]] + [b["ids"] for b in second]
    assert stitched == clean and len(clean) == 40
    assert second[0]["ids"] == clean[resumed_from] and first[resumed_from - 1]["ids"] == clean[resumed_from - 1]
    seen = [i for ids in stitched for i in ids]
    assert len(seen) == len(set(seen))  # 40 batches of 64 from 4000 rows: one epoch, no row twice
    assert {b["pid"] for b in second}.isdisjoint({b["pid"] for b in first})


@pytest.mark.slow
def test_two_cpu_processes_keep_identical_replicas_and_save_once(tmp_path):
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")
    assert accelerate, "the accelerate launcher is not installed"
    out, log = tmp_path / "run", tmp_path / "run.log"
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(29500 + os.getpid() % 1000),
           str(WORKER), "--output_dir", str(out), "--log", str(log), "--cpu"]
    result = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]

    ranks = [json.loads((out / f"rank_{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world_size"] == 2 for r in ranks)
    assert ranks[0]["pid"] != ranks[1]["pid"]  # two processes really ran
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]  # replicas identical after training
    # Each rank trained on its own half of every epoch: disjoint rows within an epoch.
    for epoch in (0, 1):
        ids = [{i for line in Path(f"{log}.rank{r}").read_text().splitlines() for i in json.loads(line)["ids"]
                if json.loads(line)["epoch"] == epoch} for r in (0, 1)]
        assert ids[0] and ids[1] and ids[0].isdisjoint(ids[1])
    # Saved once: one copy of the weights per checkpoint and per dictionary, metrics logged once per step.
    checkpoint = out / "checkpoints" / "checkpoint_00000040"
    names = sorted(p.name for p in checkpoint.iterdir())
    assert names.count("model.safetensors") == 1 and "model_1.safetensors" in names
    assert {"data_state_0.json", "data_state_1.json", "random_states_0.pkl", "random_states_1.pkl"} <= set(names)
    steps = [json.loads(line)["step"] for line in (out / "bae" / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["split"] == "train"]
    assert steps == sorted(set(steps)) and steps[-1] == 40
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and state["tokens"] == 40 * 64 * 2
