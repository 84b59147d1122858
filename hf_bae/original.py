"""Bring models trained with the original research code (hc495/Binary_Autoencoder) into hf_bae.

The original `feature_reconstruction.py` / `feature_reconstruction_SAE.py` save, per run,
`report_<time>/model_<time>.pt` (a `state_dict`), `experiment_params.txt` (one `key: value` per line)
and `log_<time>.pkl` (a pickle whose `"params"` entry `evaluate_interp.py --config_path` reads).
`convert_original_checkpoint` turns such a run into a `BinaryAutoencoder` / `SparseAutoencoder`
with a full config (provenance included), ready for `save_pretrained`, `hf-bae interpret` or the
Space. Parameter names are the same in both codes, so the weights load unchanged.

Only the text file and the `.pt` (with `torch.load(weights_only=True)`) are read by default; the
`.pkl` is unpickled only with `allow_pickle=True`, because unpickling runs arbitrary code.
"""

from __future__ import annotations

import ast
import pickle
from pathlib import Path
from typing import Any

import torch

from .configuration import ORIGINAL_BINARIZATION_NAMES, BAEConfig, SAEConfig
from .modeling_bae import BinaryAutoencoder
from .modeling_sae import SparseAutoencoder

# The original SAE's activations, mapped onto ours. Its `topk` keeps every pre-activation >= the
# k-th largest, negatives and ties included: that is our `legacy_topk`, not `topk`.
LEGACY_SAE_ACTIVATIONS = {
    "relu": "relu",
    "topk": "legacy_topk",
    "jumprelu": "jumprelu",
    "none": "none",
    "sigmoid": "sigmoid",
    "tanh": "tanh",
}


def _parse_value(text: str) -> Any:
    """`experiment_params.txt` holds Python reprs written with `f"{key}: {value}"`: read them safely."""
    text = text.strip()
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # bare strings such as `sign_s` or a path are written without quotes


def read_original_params(path: str | Path, *, allow_pickle: bool = False) -> dict[str, Any]:
    """Read the original code's run parameters.

    Args:
        path: `experiment_params.txt` (safe: parsed as text), or the `log_<time>.pkl` /
            a hand-written config `.pkl` of `evaluate_interp.py --config_path` (a dict, or a dict
            whose `"params"` entry is that dict).
        allow_pickle: required for a `.pkl`: unpickling runs arbitrary code, so only for files you trust.

    Returns:
        The parameters as a dict (`inner_expand_rate`, `binarization_type`, `output_activation`, ...).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: pass the run's experiment_params.txt (or its log .pkl).")
    if path.suffix == ".pkl":
        if not allow_pickle:
            raise ValueError(
                f"Refusing to unpickle {path}: loading a pickle runs arbitrary code. Pass the run's "
                "experiment_params.txt instead (same parameters, plain text), or allow_pickle=True "
                "(--allow_pickle) if you made this file or trust it."
            )
        with open(path, "rb") as f:
            data = pickle.load(f)  # noqa: S301 - explicitly allowed by the caller
        if isinstance(data, dict) and isinstance(data.get("params"), dict):
            data = data["params"]
        if not isinstance(data, dict):
            raise ValueError(f"{path} holds {type(data).__name__}, not a dict of parameters.")
        return dict(data)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not UTF-8 text (byte {error.start}: {error.reason}): pass the run's experiment_params.txt "
                         "as the original code wrote it (plain text), or its log .pkl with --allow_pickle.") from None
    params: dict[str, Any] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise ValueError(f"{path}:{number}: expected `key: value`, got {line!r}.")
        params[key.strip()] = _parse_value(value)
    if not params:
        raise ValueError(f"{path} holds no parameters.")
    return params


def config_from_original_params(
    params: dict[str, Any],
    hidden_size: int,
    *,
    kind: str | None = None,
    k: int = 10,
    jumprelu_threshold: float = 0.5,
    decoder_bias: bool | None = None,
    base_model: str | None = None,
    layer: int | None = None,
) -> BAEConfig | SAEConfig:
    """Build our config from the original's parameters.

    Args:
        params: from `read_original_params`.
        hidden_size: width d of the hidden states (the original reads it from the LM or the data).
        kind: `bae` or `sae`; default: `sae` when the parameters name an `inner_activation`.
        k, jumprelu_threshold: the original does not record `--topk` / `--theta`; give the values used.
        decoder_bias: the original's `--bias`; default: the recorded value, else True (every published
            command used it; `evaluate_interp.py` always builds with a bias).
        base_model: the LM the activations came from (recorded as provenance).
        layer: the original's `--layer` L, an index into `output_hidden_states`; stored as decoder
            layer L-1, site `resid_post` (hidden_states[L] is the output of decoder layer L-1).
    """
    kind = kind or ("sae" if "inner_activation" in params else "bae")
    if kind not in ("bae", "sae"):
        raise ValueError(f"kind={kind!r}: choose 'bae' or 'sae'.")
    if "inner_expand_rate" not in params:
        raise ValueError("The parameters do not name inner_expand_rate: is this the original code's experiment_params?")
    bias = params.get("bias", True) if decoder_bias is None else decoder_bias
    common: dict[str, Any] = dict(
        hidden_size=int(hidden_size),
        expansion_factor=int(params["inner_expand_rate"]),
        output_activation=str(params.get("output_activation", "none")),
        decoder_bias=bool(bias),
        encoder_bias=True,
        base_model=base_model,
        normalize_activations="none",  # the original trained on raw hidden states
    )
    if layer is not None:
        if layer < 1:
            raise ValueError(f"layer={layer}: the original's --layer indexes hidden_states, where 0 is the embeddings; "
                             "a decoder site needs L >= 1.")
        common.update(layer=layer - 1, site="resid_post")
    if kind == "bae":
        estimator = str(params.get("binarization_type", "sign_s"))
        if estimator not in ORIGINAL_BINARIZATION_NAMES:
            raise ValueError(f"binarization_type={estimator!r} is not one of the original's {sorted(ORIGINAL_BINARIZATION_NAMES)}.")
        cycle = params.get("cycle_for_squarewave")
        return BAEConfig(
            **common,
            estimator=ORIGINAL_BINARIZATION_NAMES[estimator],
            squarewave_cycle=float(cycle) if cycle is not None else 2.0,
            bits=int(params.get("bits", 1)),
            entropy_weight=float(params.get("entropy_weight", 1e-7)),
            covariance_weight=float(params.get("covarience_weight", params.get("covariance_weight", 1e-7))),
            entropy_threshold=float(params.get("entropy_threshold", 0.0)),
            initial_firing_rate=None,
            unit_norm_encoder=False,
            encoder_bias_lr_scale=1.0,
        )
    activation = str(params.get("inner_activation", "relu"))
    if activation not in LEGACY_SAE_ACTIVATIONS:
        raise ValueError(f"inner_activation={activation!r} is not one of the original's {sorted(LEGACY_SAE_ACTIVATIONS)}.")
    return SAEConfig(
        **common,
        activation=LEGACY_SAE_ACTIVATIONS[activation],
        k=int(k),
        jumprelu_threshold=float(jumprelu_threshold),
        l1_weight=float(params.get("l1_norm_weight", 0.0)),
        l1_reduction="sum", l1_decoder_norm=False, auxk_weight=0.0,
    )


def convert_original_checkpoint(
    checkpoint: str | Path,
    params: dict[str, Any] | str | Path,
    *,
    allow_pickle: bool = False,
    **config_kwargs: Any,
) -> BinaryAutoencoder | SparseAutoencoder:
    """Load a model trained by the original code as an hf_bae model.

    Args:
        checkpoint: the original's `model_<time>.pt` (a `state_dict`; read with `weights_only=True`).
        params: the run's parameters (a dict) or the path of `experiment_params.txt` / a config `.pkl`.
        allow_pickle: allow reading a `.pkl` parameters file.
        **config_kwargs: `kind`, `k`, `jumprelu_threshold`, `decoder_bias`, `base_model`, `layer`
            (see `config_from_original_params`).

    Returns:
        The model, in eval mode; `save_pretrained` it to get a folder every hf_bae command reads.

    Example:
    ```python
    >>> from hf_bae.original import convert_original_checkpoint
    >>> bae = convert_original_checkpoint("logs/report_x/model_x.pt", "logs/report_x/experiment_params.txt",
    ...                                   base_model="meta-llama/Llama-3.2-1B", layer=6)
    >>> bae.save_pretrained("runs/bae-l6")
    ```
    """
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint} does not exist: pass the original run's model_<time>.pt.")
    if not isinstance(params, dict):
        params = read_original_params(params, allow_pickle=allow_pickle)
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated file, or one that needs unpickling of arbitrary objects
        raise ValueError(
            f"Could not read {checkpoint} as a state_dict ({type(error).__name__}: {error}). The original code saves "
            "`model.state_dict()` with torch.save; a whole pickled model is not read (unsafe)."
        ) from error
    if not isinstance(state, dict) or "encoder.weight" not in state:
        raise ValueError(f"{checkpoint} is not a BAE/SAE state_dict (no encoder.weight); keys: {sorted(state)[:8]}.")
    hidden_size = int(state["encoder.weight"].shape[1])
    config_kwargs.setdefault("decoder_bias", "decoder.bias" in state)
    config = config_from_original_params(params, hidden_size, **config_kwargs)
    model_class = BinaryAutoencoder if isinstance(config, BAEConfig) else SparseAutoencoder
    model = model_class(config)
    expected = {name: tuple(p.shape) for name, p in model.state_dict().items()}
    found = {name: tuple(t.shape) for name, t in state.items()}
    if expected != found:
        raise ValueError(
            f"{checkpoint} does not match its parameters: the model built from them has {expected}, the file holds "
            f"{found}. Check inner_expand_rate (and bits) in the parameters file."
        )
    model.load_state_dict(state)
    return model.eval()
