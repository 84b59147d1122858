"""How a CPU training process keeps the memory it frees (glibc's `mallopt`).

A training step allocates the same large tensors every step (the encoder's `[n, m]` output, gradients,
the batch) and frees them at its end. By default glibc serves blocks over its mmap threshold with fresh
`mmap`s and hands them back to the kernel when freed, and trims the top of its heap, so every step faults
its pages in afresh: the kernel zero-fills each one (~3.5 GB/s on the 2-core VMs measured, 20-35 % of a CPU
dictionary step; `benchmarks/RESULTS.md`). Told to serve every block from its heap and never trim it,
malloc hands the freed pages straight to the next step, as PyTorch's caching allocator does on a GPU.

The settings are process-wide and the process keeps its peak memory until it exits, which is what a
training process wants and a notebook may not: `TrainingArguments.retain_freed_memory` switches it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4
_TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: 2 GiB of free heap top before anything goes back
_TOP_PAD = 2**28  # grow the heap 256 MiB at a time: fewer brk calls while the first steps find their peak

_applied = False


def retain_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed memory for reuse; True when it is (now or earlier) in effect.

    A no-op returning False where the C library is not glibc (macOS, musl, Windows): their allocators
    have their own policies.
    """
    global _applied
    if _applied:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # mallopt returns 1 on success; setting M_MMAP_MAX to 0 sends every block to the (reused) heap.
    _applied = all(mallopt(param, value) == 1 for param, value in (
        (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, _TRIM_THRESHOLD), (M_TOP_PAD, _TOP_PAD)))
    return _applied
