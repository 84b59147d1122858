"""The training metrics of a step: what each forward adds to a dictionary's device-side window (one
vector, so that logging syncs the device once per log), and the `metrics.jsonl` record made from a window.
Which penalty terms a record holds comes from the model (`penalty_terms`)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..modeling_base import DictionaryPreTrainedModel

WINDOW_FIELDS = ("loss", "reconstruction_loss", "entropy_bits", "covariance", "l1", "l0", "squared_error",
                 "target_variance")
# The output fields of the penalty slots of `WINDOW_FIELDS` (a model without one adds zero there).
_PENALTY_FIELDS = ("entropy_loss", "covariance_loss", "l1_loss")


@torch.no_grad()
def step_window(output: Any, l0: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The `WINDOW_FIELDS` of one forward: its losses, mean L0 and the sums behind the FVU.

    Args:
        output: the model's forward output (with its loss).
        l0: features fired per token, averaged (`DictionaryPreTrainedModel.firing`).
        target: `[n, d]` what was reconstructed.
    """
    t = target.float()
    zero = output.loss.new_zeros(())
    penalties = [getattr(output, name, None) for name in _PENALTY_FIELDS]
    # mse_loss(reduction="sum") is one pass without temporaries (this runs on every step).
    return torch.stack([
        output.loss.detach().float(), output.reconstruction_loss.detach().float(),
        *[(v.detach().float() if v is not None else zero) for v in penalties],
        l0.float(),
        F.mse_loss(output.reconstruction.detach().float(), t, reduction="sum"),
        F.mse_loss(t, t.mean(0, keepdim=True).expand_as(t), reduction="sum"),
    ])


def window_record(model: DictionaryPreTrainedModel, window: list[float], micro_steps: int, dead_fraction: float,
                  learning_rate: float) -> dict[str, float]:
    """The train record of a window summed over `micro_steps` forwards (means per forward)."""
    s = dict(zip(WINDOW_FIELDS, window))
    record = {
        "loss": s["loss"] / micro_steps, "mse": s["reconstruction_loss"] / micro_steps, "l0": s["l0"] / micro_steps,
        "fvu": s["squared_error"] / s["target_variance"] if s["target_variance"] > 0 else float("nan"),
        "dead_fraction": dead_fraction, "learning_rate": learning_rate,
    }
    terms = model.penalty_terms
    if "entropy_loss" in terms:
        record["entropy_bits"] = s["entropy_bits"] / micro_steps
    if "covariance_loss" in terms and s["covariance"] > 0:
        m = model.config.num_codes
        record["mean_abs_offdiagonal_cov"] = s["covariance"] / micro_steps / (m * (m - 1))
    if "l1_loss" in terms and s["l1"] > 0:
        record["l1"] = s["l1"] / micro_steps
    return record
