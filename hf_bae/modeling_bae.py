"""The Binary Autoencoder (Cho et al., "Binary Autoencoder for Mechanistic Interpretability of
Large Language Models", arXiv 2509.20997) as a transformers `PreTrainedModel`.

    pre   = h W_inᵀ + b_in                      [..., m·bits]
    codes = Γ(pre) ∈ {0, 1}                      (step forward, estimator backward: `hf_bae.binarize`)
    ĥ     = act(values(codes) W_outᵀ + b)        values = codes when bits = 1

Training minimises  MSE(h, ĥ) + λ_e · H(codes) + λ_c · Σ_{i≠j} |Cov(codes)|  over minibatches, where
H is the sum of the codes' binary entropies in the batch (`hf_bae.losses`).
"""

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers.utils import ModelOutput

from .binarize import binarize, bits_to_values
from .configuration import BAEConfig
from .losses import covariance_penalty, minibatch_entropy, reconstruction_loss, rounded_mean_code
from .modeling_base import DictionaryPreTrainedModel, FeatureActivity, output_activation


class _DeviationDecode(torch.autograd.Function):
    """`codes @ Wᵀ + bias` for 0/1 codes as `r @ Wᵀ + D @ Wᵀ + bias`, with r the batch's rounded mean code
    and D = codes − r a sparse matrix: the forward product and the weight gradient cost O(nnz(D)·d)
    instead of O(b·m·d). The gradient to the codes (for the estimator) is the dense `grad @ W` as usual."""

    @staticmethod
    def forward(ctx, codes, weight, bias):
        rounded = rounded_mean_code(codes)[0].to(codes.dtype)
        deviations = codes - rounded
        with warnings.catch_warnings():  # "sparse CSR support is in beta": the products used here are tested
            warnings.simplefilter("ignore", UserWarning)
            d_csr = deviations.to_sparse_csr()
            out = torch.sparse.mm(d_csr, weight.T.contiguous()) + (rounded @ weight.T)
        if bias is not None:
            out = out + bias
        ctx.save_for_backward(deviations, rounded, weight)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, grad_out):
        deviations, rounded, weight = ctx.saved_tensors
        grad_codes = grad_out @ weight if ctx.needs_input_grad[0] else None
        grad_weight = None
        if ctx.needs_input_grad[1]:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                d_t = deviations.T.to_sparse_csr()
                grad_weight = (torch.sparse.mm(d_t, grad_out) + rounded[:, None] * grad_out.sum(0)[None, :]).T
        grad_bias = grad_out.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_codes, grad_weight, grad_bias


@dataclass
class BAEOutput(ModelOutput):
    """Output of [`BinaryAutoencoder.forward`].

    Args:
        loss: the weighted training loss (reconstruction + λ_e·entropy + λ_c·covariance), when computed.
        reconstruction: ĥ, shaped like the input (or the target).
        codes: binary codes in {0, 1}, `[..., m·bits]`.
        pre_activations: encoder outputs before the step, `[..., m·bits]`.
        reconstruction_loss: element-mean squared error (of the normalised vectors when the dictionary was
            trained with `normalize_activations`: s² times the raw MSE).
        entropy_loss: minibatch entropy of the codes in bits (before weighting).
        covariance_loss: Σ_{i≠j} |Cov| of the codes (before weighting).
    """

    loss: torch.FloatTensor | None = None
    reconstruction: torch.FloatTensor | None = None
    codes: torch.FloatTensor | None = None
    pre_activations: torch.FloatTensor | None = None
    reconstruction_loss: torch.FloatTensor | None = None
    entropy_loss: torch.FloatTensor | None = None
    covariance_loss: torch.FloatTensor | None = None


class BinaryAutoencoder(DictionaryPreTrainedModel):
    r"""Binary Autoencoder: hidden states → binary codes → reconstruction.

    Example:
    ```python
    >>> import torch
    >>> from hf_bae import BAEConfig, BinaryAutoencoder
    >>> bae = BinaryAutoencoder(BAEConfig(hidden_size=64))
    >>> out = bae(torch.randn(32, 64))
    >>> out.codes.shape, float(out.loss) > 0
    (torch.Size([32, 256]), True)
    ```
    """

    config_class = BAEConfig

    def __init__(self, config: BAEConfig):
        super().__init__(config)
        self.encoder = nn.Linear(config.hidden_size, config.num_codes, bias=config.encoder_bias)
        self.decoder = nn.Linear(config.num_latents, config.reconstruction_size, bias=config.decoder_bias)
        self.post_init()

    def pre_activations(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Encoder outputs before the step, `[..., m·bits]`."""
        return self.encoder(self._normalize_input(self._check(hidden_states, self.config.hidden_size, "hidden_states")))

    def _binarize(self, pre: torch.Tensor) -> torch.Tensor:
        c = self.config
        return binarize(pre, c.estimator, c.estimator_temperature, c.squarewave_cycle)

    def encode(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Binary codes {0, 1} of `[..., d]` hidden states, `[..., m·bits]` (differentiable via the estimator)."""
        return self._binarize(self.pre_activations(hidden_states))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Reconstruction from `[..., m·bits]` binary codes."""
        codes = self._check(codes, self.config.num_codes, "codes")
        activation = output_activation(self.config.output_activation)
        if self._sparse_decode(codes):
            flat = codes.reshape(-1, codes.shape[-1])
            out = self._denormalize_output(_DeviationDecode.apply(flat, self.decoder.weight, self.decoder.bias))
            return activation(out.reshape(*codes.shape[:-1], out.shape[-1]))
        return activation(self._denormalize_output(self.decoder(bits_to_values(codes, self.config.bits))))

    kind = "BAE"
    # An atlas ranks a BAE feature's samples by their deviation from its usual state (the paper's score).
    score_is_deviation = True

    @torch.no_grad()
    def feature_activity(self, hidden_states: torch.Tensor) -> FeatureActivity:
        bits = self.config.bits
        pre = self.pre_activations(hidden_states)
        codes = self._binarize(pre)
        fired = codes != 0
        firmness = pre.abs()
        if bits > 1:
            fired = fired.unflatten(-1, (-1, bits)).any(-1)
            firmness = firmness.unflatten(-1, (-1, bits)).mean(-1)
        return FeatureActivity(bits_to_values(codes, bits).float(), fired, firmness.float(), codes)

    warmup_penalty = "entropy"
    penalty_terms = ("entropy_loss", "covariance_loss")

    def training_kwargs(self, penalty_on: bool, since_fired: torch.Tensor | None = None) -> dict[str, Any]:
        return {"entropy_weight": None if penalty_on else 0.0}

    def features_fired(self, output: BAEOutput) -> torch.Tensor:
        fired = output.codes != 0
        bits = self.config.bits
        return fired.unflatten(-1, (-1, bits)).any(-1) if bits > 1 else fired

    def apply_constraints(self) -> None:
        if self.config.unit_norm_encoder:
            self.normalize_encoder_rows()

    def _sparse_decode(self, codes: torch.Tensor) -> bool:
        """Whether `decode` takes the sparse path: asked for, 1-bit codes, and no autocast."""
        return (self.config.decoder_implementation == "sparse" and self.config.bits == 1 and codes.dim() >= 2
                and not torch.is_autocast_enabled(codes.device.type))

    @torch.no_grad()
    def normalize_encoder_rows(self) -> None:
        """Rescale each encoder row (and its bias) to unit norm, in place: the codes do not change (see
        `BAEConfig.unit_norm_encoder`); the training loop calls it after each optimiser step."""
        norms = self.encoder.weight.norm(dim=1, keepdim=True).clamp_min(1e-12)
        self.encoder.weight.div_(norms)
        if self.encoder.bias is not None:
            self.encoder.bias.div_(norms.squeeze(1))

    def forward(
        self,
        hidden_states: torch.Tensor,
        target: torch.Tensor | None = None,
        return_loss: bool = True,
        entropy_weight: float | None = None,
        covariance_weight: float | None = None,
    ) -> BAEOutput:
        """Encode, decode and (by default) compute the loss terms over the batch.

        Args:
            hidden_states: `[..., d]` activations; all leading dimensions form the minibatch.
            target: what to reconstruct (defaults to `hidden_states`).
            return_loss: compute the loss terms (the covariance costs O(n·m²) time).
            entropy_weight / covariance_weight: override the config's weights for this call
                (the training loop passes 0 before the entropy warm-up ends).
        """
        pre = self.pre_activations(hidden_states)
        codes = self._binarize(pre)
        reconstruction = self.decode(codes)
        output = BAEOutput(reconstruction=reconstruction, codes=codes, pre_activations=pre)
        if not return_loss:
            return output

        c = self.config
        target = hidden_states if target is None else self._check(target, c.reconstruction_size, "target")
        flat_codes = codes.reshape(-1, c.num_codes)
        output.reconstruction_loss = reconstruction_loss(target, reconstruction) * self.loss_scale
        output.entropy_loss = minibatch_entropy(flat_codes, c.entropy_threshold)
        entropy_weight = c.entropy_weight if entropy_weight is None else entropy_weight
        covariance_weight = c.covariance_weight if covariance_weight is None else covariance_weight
        loss = output.reconstruction_loss + entropy_weight * output.entropy_loss
        if covariance_weight > 0:
            # Γ's codes are 0/1 whatever the estimator, so the exact binary paths apply (no check needed).
            output.covariance_loss = covariance_penalty(flat_codes, c.covariance_chunk_size,
                                                        c.covariance_implementation, binary=True)
            loss = loss + covariance_weight * output.covariance_loss
        output.loss = loss
        return output


BinaryAutoencoder.register_for_auto_class("AutoModel")
