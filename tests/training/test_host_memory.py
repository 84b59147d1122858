"""Retaining freed host memory: freed blocks come back without page faults, and the trainer asks for it on the CPU."""

import platform
import subprocess
import sys

import pytest
import torch

import hf_bae.training.loop as loop
from hf_bae import SAEConfig, SparseAutoencoder
from hf_bae.sources import TensorSource
from hf_bae.training import Trainer, TrainingArguments


# Allocates, fills and frees a 64 MiB block 30 times; prints the minor page faults of the last ten. Blocks over
# 32 MiB are beyond glibc's adaptive mmap threshold: by default each one is a fresh mapping.
_FAULTS = """
import resource, sys, torch
if sys.argv[1] == "retain":
    from hf_bae.training.host_memory import retain_freed_memory
    assert retain_freed_memory()
faults = []
for _ in range(30):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(16 * 2**20).fill_(1.0)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sum(faults[20:]))
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_freed_blocks_are_reused_without_page_faults():
    def faults(mode):  # a fresh process each: the setting is process-wide
        return int(subprocess.run([sys.executable, "-c", _FAULTS, mode], check=True, capture_output=True,
                                  text=True).stdout)

    default, retained = faults("default"), faults("retain")
    pages = 10 * 64 * 2**20 // 4096  # ten 64 MiB blocks
    assert default > pages / 2, default  # the allocator's default: fresh pages each time
    assert retained < pages / 20, (retained, default)


@pytest.mark.usefixtures("fresh_accelerator_state")
@pytest.mark.parametrize("retain", [True, False])
def test_the_trainer_retains_freed_memory_on_the_cpu_unless_told_not_to(tmp_path, monkeypatch, retain):
    calls = []
    monkeypatch.setattr(loop, "retain_freed_memory", lambda: calls.append(1) or True)
    args = TrainingArguments(output_dir=str(tmp_path), batch_size=50, max_steps=2, validate_every=0, checkpoint_every=0,
                             progress=False, splice_rows=0, plots=False, initialization_tokens=100,
                             retain_freed_memory=retain)
    sae = SparseAutoencoder(SAEConfig(hidden_size=8, activation="relu"))
    Trainer(args, {"relu": sae}, TensorSource({"x": torch.randn(400, 8)})).train()
    assert calls == ([1] if retain else [])
