"""Named presets: sets of option values that `hf-bae train --preset NAME` (and `BAEConfig.from_preset`)
apply before the flags given on the command line, which still win.

- `default`: nothing changed: the config defaults are the recipe measured in `benchmarks/sweep.py`
  (normalised activations, codes started rare, identity estimator; see benchmarks/RESULTS.md).
- `original`: the original code's published setting (hc495/Binary_Autoencoder): raw hidden states,
  PyTorch's default init, the `sign_s` estimator, entropy and covariance weights 1e-7; SAEs with the
  original L1 (a sum, weight 0 unless given) and no AuxK. With it the BAE step is bit-exact to the original's.
"""

from __future__ import annotations

from typing import Any

# Fields of every dictionary config.
ORIGINAL_DICTIONARY: dict[str, Any] = {"normalize_activations": "none"}
ORIGINAL_BAE: dict[str, Any] = {**ORIGINAL_DICTIONARY, "initial_firing_rate": None, "unit_norm_encoder": False,
                                "encoder_bias_lr_scale": 1.0,
                                "estimator": "legacy_sign_s",
                                "entropy_weight": 1e-7, "covariance_weight": 1e-7}
ORIGINAL_SAE: dict[str, Any] = {**ORIGINAL_DICTIONARY, "l1_weight": 0.0, "l1_reduction": "sum",
                                "l1_decoder_norm": False, "auxk_weight": 0.0}

PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "original": {**ORIGINAL_BAE, **ORIGINAL_SAE},
}


def preset_values(name: str) -> dict[str, Any]:
    """The option values of preset `name` (a copy); a ValueError names the presets that exist."""
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; choose one of {', '.join(PRESETS)}.")
    return dict(PRESETS[name])
