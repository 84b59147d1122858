"""What the BAE and the SAEs share: the `PreTrainedModel` base, weight init and input checks."""

import importlib
import math
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init

from .configuration import DictionaryConfig

_OUTPUT_ACTIVATIONS = {
    "none": lambda x: x,
    "relu": torch.relu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
}


def output_activation(name: str):
    """The function applied to the reconstruction (`none`, `relu`, `sigmoid` or `tanh`)."""
    return _OUTPUT_ACTIVATIONS[name]


class DictionaryPreTrainedModel(PreTrainedModel):
    """Base class of hf_bae dictionaries: an `encoder` Linear(d, ·) and a `decoder` Linear(·, d_out).

    Parameter names match the original code's `state_dict` (`encoder.weight`, `decoder.bias`, ...),
    so original checkpoints load with `load_state_dict`.
    """

    config_class = DictionaryConfig
    base_model_prefix = "dictionary"
    main_input_name = "hidden_states"
    supports_gradient_checkpointing = False
    # Validating inputs (width, NaN/inf) costs a device sync; a training loop that checks its loss
    # instead may switch it off.
    check_inputs: bool = True

    def _init_weights(self, module: nn.Module) -> None:
        # PyTorch's default Linear init (what the original code trained from), via transformers'
        # init functions so that weights loaded by from_pretrained are never overwritten.
        if isinstance(module, nn.Linear):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                bound = 1 / math.sqrt(module.in_features)
                init.uniform_(module.bias, -bound, bound)

    def _check(self, tensor: torch.Tensor, expected: int, name: str) -> torch.Tensor:
        """Raise a clear ValueError for a wrong width or non-finite values; cast to the weights' dtype."""
        if tensor.dim() == 0 or tensor.shape[-1] != expected:
            shape = tuple(tensor.shape)
            raise ValueError(
                f"expected {name} of hidden size {expected} from {self.config.describe_source()}, got shape {shape}: "
                "was this dictionary trained on another model, layer or site?"
            )
        if self.check_inputs and not torch.isfinite(tensor).all():
            bad = (~torch.isfinite(tensor)).sum().item()
            raise ValueError(
                f"{name} contains {bad} NaN or infinite values; check the language model's dtype "
                "(fp16 overflows on some layers: use bf16 or fp32) or filter those tokens."
            )
        return tensor.to(self.encoder.weight.dtype)

    def push_to_hub(self, repo_id: str, *, subfolder: str | None = None, eval_results: dict[str, Any] | None = None,
                    commit_message: str | None = None, commit_description: str | None = None, private: bool | None = None,
                    token: bool | str | None = None, revision: str | None = None, create_pr: bool = False,
                    tags: list[str] | None = None, **kwargs: Any):
        """Upload this dictionary to the Hub with a model card (metadata, usage, provenance, metrics, citation).

        Extends `PreTrainedModel.push_to_hub` (same arguments) with `subfolder`, to keep several
        hookpoints in one repo, and `eval_results`, the metrics shown on the card. Other keyword
        arguments are `hf_bae.hub.PushOptions` fields (`license`, `saelens`, ...). Like transformers,
        it replaces what is already at that place. Returns an `hf_bae.hub.PushResult`.
        """
        try:
            # A string import: transformers copies relative imports of this file into saved folders,
            # and hf_bae.hub is not part of the remote code.
            hub = importlib.import_module("hf_bae.hub")
        except ImportError:  # loaded with trust_remote_code where hf_bae is not installed
            return super().push_to_hub(repo_id, commit_message=commit_message, commit_description=commit_description,
                                       private=private, token=token, revision=revision, create_pr=create_pr, tags=tags, **kwargs)
        return hub.push_dictionary(self, repo_id, subfolder=subfolder, eval_results=eval_results, token=token,
                                   commit_message=commit_message, commit_description=commit_description, private=private,
                                   revision=revision, create_pr=create_pr, tags=tags, **kwargs)
