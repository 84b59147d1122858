"""Sparse-autoencoder baselines (ReLU+L1, TopK, JumpReLU) and transcoders as a transformers `PreTrainedModel`.

    pre     = h W_encᵀ + b_enc
    latents = σ(pre)                          σ chosen by `config.activation`
    ĥ       = act(latents W_decᵀ + b_dec)

A transcoder is the same model whose config names a different `output_site`: it reads the MLP
input and is trained to reconstruct the MLP output (pass that as `target`).
"""

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers.utils import ModelOutput

from .configuration import SAEConfig
from .losses import l1_penalty, reconstruction_loss
from .modeling_base import DictionaryPreTrainedModel, FeatureActivity, output_activation


@dataclass
class SAEOutput(ModelOutput):
    """Output of [`SparseAutoencoder.forward`].

    Args:
        loss: reconstruction loss + l1_weight · L1, when computed.
        reconstruction: ĥ.
        latents: feature activations after the sparsifying non-linearity, `[..., m]`.
        pre_activations: encoder outputs, `[..., m]`.
        reconstruction_loss: element-mean squared error against the target.
        l1_loss: L1 norm of the latents (before weighting; weighted by decoder norms with `l1_decoder_norm`).
        auxk_loss: TopK's auxiliary dead-latent loss (before weighting), when dead latents were given.
    """

    loss: torch.FloatTensor | None = None
    reconstruction: torch.FloatTensor | None = None
    latents: torch.FloatTensor | None = None
    pre_activations: torch.FloatTensor | None = None
    reconstruction_loss: torch.FloatTensor | None = None
    l1_loss: torch.FloatTensor | None = None
    auxk_loss: torch.FloatTensor | None = None


def topk_activation(pre: torch.Tensor, k: int) -> torch.Tensor:
    """Keep exactly the k largest ReLU(pre) per row, zero elsewhere."""
    values, indices = torch.topk(torch.relu(pre), k, dim=-1, sorted=False)
    return torch.zeros_like(pre).scatter(-1, indices, values)


def legacy_topk_activation(pre: torch.Tensor, k: int) -> torch.Tensor:
    """The original code's TopK: keep pre where pre >= the k-th largest value (negatives and ties survive)."""
    kth = torch.topk(pre, k, dim=-1).values[..., -1:]
    return pre * (pre >= kth).to(pre.dtype)


def auxk_loss(pre: torch.Tensor, dead_mask: torch.Tensor, residual: torch.Tensor, target: torch.Tensor,
              decoder_weight: torch.Tensor, k_aux: int) -> torch.Tensor:
    """Gao et al. (2024)'s auxiliary loss, as EleutherAI sparsify computes it.

    The `k_aux` largest ReLU pre-activations among the dead latents reconstruct `residual` (target −
    reconstruction, detached) through the decoder without its bias; the squared error is divided by
    the target's total variance and scaled by min(#dead / k_aux, 1).
    """
    num_dead = int(dead_mask.sum())
    if num_dead == 0:
        return pre.new_zeros(())
    scale = min(num_dead / k_aux, 1.0)
    k = min(k_aux, num_dead)
    masked = torch.where(dead_mask, torch.relu(pre), torch.full_like(pre, -torch.inf))
    values, indices = masked.topk(k, dim=-1, sorted=False)
    latents = torch.zeros_like(pre).scatter(-1, indices, values)
    estimate = latents @ decoder_weight.T
    total_variance = (target - target.mean(0, keepdim=True)).pow(2).sum().clamp_min(1e-12)
    return scale * (estimate - residual).pow(2).sum() / total_variance


def latent_activation(config: SAEConfig):
    """The sparsifying non-linearity named by `config.activation`."""
    name = config.activation
    if name == "relu":
        return torch.relu
    if name == "topk":
        return lambda pre: topk_activation(pre, config.k)
    if name == "legacy_topk":
        return lambda pre: legacy_topk_activation(pre, config.k)
    if name == "jumprelu":
        theta = config.jumprelu_threshold
        return lambda pre: pre * (pre > theta).to(pre.dtype)
    return output_activation(name)  # none, sigmoid, tanh


class SparseAutoencoder(DictionaryPreTrainedModel):
    r"""Sparse autoencoder (ReLU+L1, TopK, JumpReLU, ...) or transcoder.

    Example:
    ```python
    >>> import torch
    >>> from hf_bae import SAEConfig, SparseAutoencoder
    >>> sae = SparseAutoencoder(SAEConfig(hidden_size=64, activation="topk", k=8))
    >>> int((sae(torch.randn(4, 64)).latents > 0).sum(-1).max())
    8
    ```
    """

    config_class = SAEConfig

    def __init__(self, config: SAEConfig):
        super().__init__(config)
        self.encoder = nn.Linear(config.hidden_size, config.num_latents, bias=config.encoder_bias)
        self.decoder = nn.Linear(config.num_latents, config.reconstruction_size, bias=config.decoder_bias)
        self.post_init()

    def pre_activations(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Encoder outputs before the non-linearity, `[..., m]`."""
        return self.encoder(self._normalize_input(self._check(hidden_states, self.config.hidden_size, "hidden_states")))

    def encode(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Feature activations `[..., m]` of `[..., d]` hidden states."""
        return latent_activation(self.config)(self.pre_activations(hidden_states))

    score_is_deviation = False

    @property
    def kind(self) -> str:
        return "TRC" if self.config.is_transcoder else "SAE"

    @torch.no_grad()
    def feature_activity(self, hidden_states: torch.Tensor) -> FeatureActivity:
        pre = self.pre_activations(hidden_states)
        latents = latent_activation(self.config)(pre).float()
        return FeatureActivity(latents, latents != 0, pre.float())

    warmup_penalty = "l1"
    penalty_terms = ("l1_loss",)

    def training_kwargs(self, penalty_on: bool, since_fired: torch.Tensor | None = None) -> dict[str, Any]:
        c = self.config
        auxk = c.activation == "topk" and c.auxk_weight > 0 and since_fired is not None
        return {"l1_weight": None if penalty_on else 0.0,
                "dead_mask": since_fired >= c.auxk_dead_tokens if auxk else None}

    def features_fired(self, output: SAEOutput) -> torch.Tensor:
        return output.latents != 0

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Reconstruction from `[..., m]` feature activations."""
        latents = self._check(latents, self.config.num_latents, "latents")
        return output_activation(self.config.output_activation)(self._denormalize_output(self.decoder(latents)))

    def forward(
        self,
        hidden_states: torch.Tensor,
        target: torch.Tensor | None = None,
        return_loss: bool = True,
        l1_weight: float | None = None,
        dead_mask: torch.Tensor | None = None,
    ) -> SAEOutput:
        """Encode, decode and (by default) compute the loss.

        Args:
            hidden_states: `[..., d]` activations at `config.site`.
            target: what to reconstruct: the activations at `config.output_site` for a transcoder;
                defaults to `hidden_states`.
            return_loss: compute the loss terms.
            l1_weight: override the config's L1 weight for this call (used by the L1 warm-up).
            dead_mask: `[m]` booleans, the latents that count as dead (the trainer's count); with a topk
                activation and `auxk_weight` > 0, adds the auxiliary loss on them.
        """
        pre = self.pre_activations(hidden_states)
        latents = latent_activation(self.config)(pre)
        reconstruction = self.decode(latents)
        output = SAEOutput(reconstruction=reconstruction, latents=latents, pre_activations=pre)
        if not return_loss:
            return output
        c = self.config
        if target is None:
            if c.is_transcoder:
                raise ValueError(
                    f"This transcoder reconstructs {c.output_site} from {c.site}: pass the {c.output_site} activations as `target`."
                )
            target = hidden_states
        else:
            target = self._check(target, c.reconstruction_size, "target")
        output.reconstruction_loss = reconstruction_loss(target, reconstruction) * self.loss_scale
        penalised = latents * self._decoder_norms() if c.l1_decoder_norm else latents
        output.l1_loss = l1_penalty(penalised, c.l1_reduction)
        l1_weight = c.l1_weight if l1_weight is None else l1_weight
        loss = output.reconstruction_loss + l1_weight * output.l1_loss
        if c.activation == "topk" and c.auxk_weight > 0 and dead_mask is not None:
            flat_pre = pre.reshape(-1, pre.shape[-1])
            flat_target = target.reshape(flat_pre.shape[0], -1).to(reconstruction.dtype)
            scale = self.loss_scale ** 0.5  # the residual in normalised units, as the decoder weight is
            residual = ((flat_target - reconstruction.reshape(flat_target.shape)) * scale).detach()
            output.auxk_loss = auxk_loss(flat_pre, dead_mask.to(pre.device), residual, flat_target * scale,
                                         self.decoder.weight, c.auxk_k or max(1, c.hidden_size // 2))
            loss = loss + c.auxk_weight * output.auxk_loss
        output.loss = loss
        return output

    def _decoder_norms(self) -> torch.Tensor:
        """Norm of each latent's decoder column, in normalised units (as in training) once normalisation is folded."""
        norms = self.decoder.weight.norm(dim=0)
        folded = self._normalization is None and (self.config.target_scale or self.config.activation_scale)
        return norms * (self.loss_scale ** 0.5) if folded else norms


SparseAutoencoder.register_for_auto_class("AutoModel")
