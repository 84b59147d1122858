"""Timing for the benchmark scripts: wall-clock seconds of repeated calls, synchronising a GPU around each."""

from __future__ import annotations

import time

import torch


def sync(device) -> None:
    """Wait for queued GPU work (a no-op on the CPU); `device` is a string or a torch.device."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def call_times(fn, device="cpu", repeats: int = 5, warmup: int = 1) -> list[float]:
    """Seconds of each of `repeats` calls of `fn` after `warmup` untimed ones. Callers pick the statistic:
    the minimum on a shared machine (the least disturbed call), the median for a typical step."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times
