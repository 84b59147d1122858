"""benchmarks/gpu_check.sh on a machine without CUDA (as CI): it says so, runs nothing, and exits 0."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the script would run the check")
def test_gpu_check_skips_cleanly_without_cuda(tmp_path):
    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], capture_output=True, text=True,
                            timeout=120, env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "OUT": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert "no CUDA GPU" in result.stdout and "skipped" in result.stdout
    assert not list(tmp_path.iterdir())  # nothing ran, nothing written
