"""What the BAE and the SAEs share: the `PreTrainedModel` base, weight init, input checks and the
activation normalisation applied in training (see `hf_bae.normalization`)."""

import hashlib
import importlib
import json
import math
import os
from dataclasses import dataclass
from typing import Any

import torch
from safetensors import SafetensorError
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init

from .configuration import DictionaryConfig
from .formats import WEIGHTS_FILE
from .normalization import fold_affine_into_decoder, fold_affine_into_encoder

_OUTPUT_ACTIVATIONS = {
    "none": lambda x: x,
    "relu": torch.relu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
}


def output_activation(name: str):
    """The function applied to the reconstruction (`none`, `relu`, `sigmoid` or `tanh`)."""
    return _OUTPUT_ACTIVATIONS[name]


def config_hash(config: Any) -> str:
    """SHA-256 of a dictionary config's content (without where it was loaded from or by which version)."""
    data = config.to_dict()
    for volatile in ("_name_or_path", "transformers_version", "hf_bae_version", "_commit_hash"):
        data.pop(volatile, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class FeatureActivity:
    """What a dictionary's features do on a batch of hidden states (`DictionaryPreTrainedModel.feature_activity`).

    values: `[..., m]` float, the latent (SAE) or the feature's code value in [0, 1] (BAE).
    fired: `[..., m]` bool, whether the feature fired (a k-bit BAE feature: any of its bits is 1).
    firmness: `[..., m]` float, how firmly it is in its state (the pre-activation; |logit| for a BAE), to break ties.
    codes: `[..., m·bits]` the BAE's binary codes (None for an SAE).
    """

    values: torch.Tensor
    fired: torch.Tensor
    firmness: torch.Tensor
    codes: torch.Tensor | None = None


class DictionaryPreTrainedModel(PreTrainedModel):
    """Base class of hf_bae dictionaries: an `encoder` Linear(d, ·) and a `decoder` Linear(·, d_out).

    Parameter names match the original code's `state_dict` (`encoder.weight`, `decoder.bias`, ...),
    so original checkpoints load with `load_state_dict`.

    What differs between kinds lives on the subclasses, so that no caller branches on the type:
    `kind` (the short name atlases and cards record), `feature_values` (which features fired, with
    what value) and `score_is_deviation` (how an atlas ranks a feature's samples).
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

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *args: Any, **kwargs: Any):
        """`PreTrainedModel.from_pretrained`, with a truncated or corrupt weights file named in the error
        (safetensors says only "incomplete metadata"), as a ValueError: the input is bad, not the code."""
        try:
            model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except SafetensorError as error:
            where = str(pretrained_model_name_or_path)
            place = os.path.join(where, kwargs.get("subfolder") or "", WEIGHTS_FILE)
            if not os.path.isdir(where):
                place = f"{WEIGHTS_FILE} of {where}" + (f"/{kwargs['subfolder']}" if kwargs.get("subfolder") else "")
            raise ValueError(f"{place} is truncated or corrupt ({error}): save or download the dictionary again "
                             "(from the Hub: force_download=True).") from error
        # Loading replaced the parameters with contiguous tensors (the result is a tuple with output_loading_info).
        (model[0] if isinstance(model, tuple) else model).lay_out_parameters()
        return model

    def lay_out_parameters(self) -> None:
        """Store parameters in the memory layout the kind's forward and backward read fastest (values and the
        saved format unchanged). A kind calls it at the end of `__init__`, and `from_pretrained` again after
        loading; a no-op by default."""

    def _check(self, tensor: torch.Tensor, expected: int, name: str) -> torch.Tensor:
        """Raise a clear ValueError for a non-tensor, a wrong width, an empty batch or non-finite values;
        cast to the weights' dtype."""
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor of shape [..., {expected}], got a {type(tensor).__name__}: "
                             "convert it with torch.as_tensor(...).")
        if tensor.dim() == 0 or tensor.shape[-1] != expected:
            shape = tuple(tensor.shape)
            raise ValueError(
                f"expected {name} of hidden size {expected} from {self.config.describe_source()}, got shape {shape}: "
                "was this dictionary trained on another model, layer or site?"
            )
        if tensor.numel() == 0:  # the loss would be a mean over nothing: nan
            raise ValueError(f"{name} is an empty batch (shape {tuple(tensor.shape)}): pass at least one hidden state.")
        if self.check_inputs and not torch.isfinite(tensor).all():
            bad = (~torch.isfinite(tensor)).sum().item()
            raise ValueError(
                f"{name} contains {bad} NaN or infinite values; check the language model's dtype "
                "(fp16 overflows on some layers: use bf16 or fp32) or filter those tokens."
            )
        return tensor.to(self.encoder.weight.dtype)

    # -- what a dictionary is, for atlases, cards and the browser ---------------------------------
    @property
    def kind(self) -> str:
        """Short name of the kind: "BAE", "SAE" or "TRC" (a transcoder)."""
        raise NotImplementedError

    @property
    def num_features(self) -> int:
        """Number of features m (for a k-bit BAE, m features of k codes each)."""
        return int(self.config.num_latents)

    @property
    def hookpoint(self) -> str | None:
        """Where the dictionary reads, `layers.{layer}.{site}` (None if the layer is not recorded)."""
        return self.config.hookpoint

    def feature_activity(self, hidden_states: torch.Tensor) -> FeatureActivity:
        """Values, firing and firmness of every feature on `[..., d]` hidden states (no gradient)."""
        raise NotImplementedError

    def feature_values(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(values `[..., m]` float, fired `[..., m]` bool) of `[..., d]` hidden states: the latent (SAE) or the
        feature's code value in [0, 1] (BAE), and whether the feature fired."""
        activity = self.feature_activity(hidden_states)
        return activity.values, activity.fired

    def fingerprint(self) -> str:
        """SHA-256 of the config and the weights: two atlases compare equal only for the same dictionary."""
        h = hashlib.sha256(config_hash(self.config).encode())
        for name, tensor in sorted(self.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        return h.hexdigest()

    # -- what the training loop does per kind (hf_bae.training) -----------------------------------
    # The penalty whose warm-up options delay it (`--{warmup_penalty}_start_step` / `_tokens` / `_epoch`).
    warmup_penalty: str | None = None
    # The fields of a `forward` output holding the penalty terms that training logs.
    penalty_terms: tuple[str, ...] = ()

    def training_kwargs(self, penalty_on: bool, since_fired: torch.Tensor | None = None) -> dict[str, Any]:
        """Keyword arguments of `forward` in one training step: the warmed-up penalty is off (weight 0) until
        `penalty_on`; `since_fired` (`[m]`, tokens since each feature last fired) feeds dead-feature terms."""
        return {}

    def features_fired(self, output: Any) -> torch.Tensor:
        """Booleans `[..., m]`: which features fired, from the output of `forward`."""
        raise NotImplementedError

    def firing(self, output: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """What a training step records of `forward`'s output: (features fired per token, averaged: a scalar;
        `[m]` booleans, which fired on any token). From `features_fired` unless a kind has a cheaper way."""
        fired = self.features_fired(output)
        return fired.sum(-1).float().mean(), fired.reshape(-1, fired.shape[-1]).any(0)

    def apply_constraints(self) -> None:
        """Restore the weights' constraints after an optimiser step (none by default)."""

    # -- normalisation ---------------------------------------------------------------------------
    # While training with `normalize_activations`, the statistics live on the model as plain
    # attributes (not buffers: the state_dict keeps the original code's names); the trainer saves
    # them in its checkpoints. After `fold_normalization` they are part of the weights.
    _normalization: tuple[torch.Tensor, float, torch.Tensor, float] | None = None

    def set_normalization(self, input_mean: torch.Tensor, input_scale: float, target_mean: torch.Tensor | None = None,
                          target_scale: float | None = None) -> None:
        """Read raw hidden states as `input_scale · (h − input_mean)` and reconstruct in the target's normalised units.

        The reconstruction is returned in raw units and the reconstruction loss is the MSE of the normalised
        vectors. `fold_normalization` later moves all of it into the weights.
        """
        if self.config.activation_scale is not None:
            raise ValueError("This dictionary's normalisation is already folded into its weights "
                             f"(activation_scale={self.config.activation_scale}).")
        if self.config.output_activation != "none":
            raise ValueError(f"Normalisation cannot be folded through output_activation={self.config.output_activation!r}:"
                             " use normalize_activations='none'.")
        device = self.encoder.weight.device
        target_mean = input_mean if target_mean is None else target_mean
        target_scale = input_scale if target_scale is None else target_scale
        for name, scale in (("input_scale", input_scale), ("target_scale", target_scale)):
            if not (math.isfinite(scale) and scale > 0):
                raise ValueError(f"{name} must be finite and > 0, got {scale}.")
        self._normalization = (input_mean.detach().float().to(device), float(input_scale),
                               target_mean.detach().float().to(device), float(target_scale))

    @property
    def normalization(self) -> tuple[torch.Tensor, float, torch.Tensor, float] | None:
        """(input mean, input scale, target mean, target scale) while training normalised, else None."""
        return self._normalization

    def _normalize_input(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self._normalization is None:
            return hidden_states
        mean, scale = self._normalization[0], self._normalization[1]
        return (hidden_states - mean.to(hidden_states.dtype)) * scale

    def _denormalize_output(self, reconstruction: torch.Tensor) -> torch.Tensor:
        if self._normalization is None:
            return reconstruction
        mean, scale = self._normalization[2], self._normalization[3]
        return reconstruction / scale + mean.to(reconstruction.dtype)

    @property
    def loss_scale(self) -> float:
        """Factor from the raw MSE to the MSE in normalised units: s_t² (1 without normalisation)."""
        if self._normalization is not None:
            return self._normalization[3] ** 2
        scale = self.config.target_scale or self.config.activation_scale
        return float(scale) ** 2 if scale else 1.0

    def fold_normalization(self) -> None:
        """Fold the training normalisation into the weights (in place): the model then reads raw hidden states
        with the same outputs, and its config records `activation_scale` / `target_scale`. No-op without one."""
        if self._normalization is None:
            return
        input_mean, input_scale, target_mean, target_scale = self._normalization
        fold_affine_into_encoder(self.encoder, input_mean, input_scale)
        fold_affine_into_decoder(self.decoder, target_mean, target_scale)
        self._normalization = None
        self.config.activation_scale = input_scale
        self.config.target_scale = target_scale if target_scale != input_scale else None

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
