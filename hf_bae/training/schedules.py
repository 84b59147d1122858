"""Schedules of a training run: the learning rate per optimiser step and the warm-ups that switch a
penalty (the BAE's entropy, an SAE's L1) on after a number of steps, tokens or epochs. Pure functions."""

from __future__ import annotations

import math
from typing import Any

SCHEDULES = ("constant", "linear", "cosine")


def learning_rate_at(step: int, base: float, schedule: str = "constant", warmup_steps: int = 0,
                     total_steps: int | None = None) -> float:
    """Learning rate of optimiser step `step` (0-based): linear warm-up, then constant / linear / cosine to 0."""
    if warmup_steps and step < warmup_steps:
        return base * (step + 1) / warmup_steps
    if schedule == "constant" or not total_steps:
        return base
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "linear":
        return base * (1.0 - progress)
    if schedule == "cosine":
        return base * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"Unknown learning-rate schedule {schedule!r}; choose from {', '.join(SCHEDULES)}.")


def penalty_active(step: int, tokens: int, epoch: int, start_step: int = 0, start_tokens: int = 0,
                   start_epoch: int = 0) -> bool:
    """Whether a warm-up-delayed penalty is on at this step: every given start (step, tokens, epoch) is reached."""
    return step >= start_step and tokens >= start_tokens and epoch >= start_epoch


def warmup_starts(args: Any, penalty: str | None) -> tuple[int, int, int]:
    """(start step, start tokens, start epoch) of `penalty`'s warm-up, read from the options
    `{penalty}_start_step` / `_tokens` / `_epoch` (a dictionary names its penalty: `model.warmup_penalty`);
    no warm-up for a dictionary without one."""
    if penalty is None:
        return 0, 0, 0
    return (getattr(args, f"{penalty}_start_step"), getattr(args, f"{penalty}_start_tokens"),
            getattr(args, f"{penalty}_start_epoch"))
