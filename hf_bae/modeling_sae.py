"""Sparse-autoencoder baselines (ReLU+L1, TopK, JumpReLU) and transcoders as a transformers `PreTrainedModel`.

    pre     = h W_encᵀ + b_enc
    latents = σ(pre)                          σ chosen by `config.activation`
    ĥ       = act(latents W_decᵀ + b_dec)

A transcoder is the same model whose config names a different `output_site`: it reads the MLP
input and is trained to reconstruct the MLP output (pass that as `target`).

TopK has a sparse path (`config.topk_implementation`): the k values and indices per token are kept, the
decoder is an embedding bag over the k decoder columns, and the encoder's backward touches only the k
selected rows (`SelectedPreActivations`), so only the encoder's forward matmul is O(n·m·d). It computes the
same values and gradients as the dense path (scatter into `[n, m]`, dense matmuls), which is kept.
"""

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
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
        latents: feature activations after the sparsifying non-linearity, `[..., m]` (None from the sparse
            TopK path called with `return_dense_latents=False`: then `latent_values` / `latent_indices` hold them).
        pre_activations: encoder outputs, `[..., m]` (without gradient on the sparse TopK path: only the
            selected entries carry one, through `latent_values`).
        latent_values: the sparse TopK path: the k kept activations per token, `[..., k]`.
        latent_indices: the sparse TopK path: their latent indices, `[..., k]`.
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
    latent_values: torch.FloatTensor | None = None
    latent_indices: torch.LongTensor | None = None


def topk_activation(pre: torch.Tensor, k: int) -> torch.Tensor:
    """Keep exactly the k largest ReLU(pre) per row, zero elsewhere."""
    values, indices = torch.topk(torch.relu(pre), k, dim=-1, sorted=False)
    return torch.zeros_like(pre).scatter(-1, indices, values)


def legacy_topk_activation(pre: torch.Tensor, k: int) -> torch.Tensor:
    """The original code's TopK: keep pre where pre >= the k-th largest value (negatives and ties survive)."""
    kth = torch.topk(pre, k, dim=-1).values[..., -1:]
    return pre * (pre >= kth).to(pre.dtype)


class SelectedPreActivations(torch.autograd.Function):
    """`pre.gather(-1, indices)` for `pre = x Wᵀ + b` computed without autograd, with the gradient of
    `x Wᵀ + b` at those entries only: the backward is an embedding bag (to x) and two index_adds (to W, b),
    O(n·k·d), instead of the dense backward's two O(n·m·d) matmuls (as EleutherAI sparsify's fused encoder).

    Args (of `apply`): x `[n, d]`, weight `[m, d]`, bias `[m]` or None, pre `[n, m]`, indices `[n, k]`.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, pre, indices):
        ctx.save_for_backward(x, weight, indices)
        ctx.has_bias = bias is not None
        return pre.gather(-1, indices)

    @staticmethod
    def backward(ctx, grad):
        x, weight, indices = ctx.saved_tensors
        grad = grad.to(weight.dtype)
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = F.embedding_bag(indices, weight, per_sample_weights=grad, mode="sum").to(x.dtype)
        if ctx.needs_input_grad[1]:
            # Gᵀx with G the [n, m] gradient of pre, n·k nonzeros: a sparse-dense product, never [n, k, d]
            # (6x faster than index_add of the n·k outer products at m = 2304, 1.8x at m = 24576; 2 CPU cores).
            n, k = indices.shape
            tokens = torch.arange(n, device=indices.device).repeat_interleave(k)
            grad_t = torch.sparse_coo_tensor(torch.stack([indices.reshape(-1), tokens]), grad.reshape(-1),
                                             (weight.shape[0], n), check_invariants=False)
            grad_weight = torch.sparse.mm(grad_t, x.to(weight.dtype))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = weight.new_zeros(weight.shape[0]).index_add_(0, indices.reshape(-1), grad.reshape(-1))
        return grad_x, grad_weight, grad_bias, None, None


def sparse_decode(values: torch.Tensor, indices: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Σ_j values[:, j] · weight[:, indices[:, j]] (a decoder without bias): `[n, k]` × `[d_out, m]` → `[n, d_out]`.

    The columns are gathered from the weight's transpose `[m, d_out]`, made contiguous: free for a column-major
    weight (`SparseAutoencoder.lay_out_parameters`), else one O(m·d) copy per call, still far cheaper than
    gathering strided columns (or the O(n·m·d) dense product it replaces).
    """
    return F.embedding_bag(indices, weight.t().contiguous(), per_sample_weights=values.to(weight.dtype), mode="sum")


def auxk_indices(pre: torch.Tensor, dead_mask: torch.Tensor, k_aux: int) -> torch.Tensor | None:
    """Indices `[n, min(k_aux, #dead)]` of the largest ReLU pre-activations among the dead latents (None: none dead)."""
    num_dead = int(dead_mask.sum())
    if num_dead == 0:
        return None
    masked = torch.where(dead_mask, torch.relu(pre), torch.full_like(pre, -torch.inf))
    return masked.topk(min(k_aux, num_dead), dim=-1, sorted=False).indices


def auxk_loss(estimate: torch.Tensor, residual: torch.Tensor, target: torch.Tensor, num_dead: int, k_aux: int) -> torch.Tensor:
    """Gao et al. (2024)'s auxiliary loss, as EleutherAI sparsify computes it.

    `estimate` is the reconstruction of `residual` (target − reconstruction, detached) by the `k_aux` largest
    ReLU pre-activations among the dead latents (`auxk_indices`) through the decoder without its bias; the
    squared error is divided by the target's total variance and scaled by min(#dead / k_aux, 1).
    """
    total_variance = (target - target.mean(0, keepdim=True)).pow(2).sum().clamp_min(1e-12)
    return min(num_dead / k_aux, 1.0) * (estimate - residual).pow(2).sum() / total_variance


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
        self.lay_out_parameters()

    def lay_out_parameters(self) -> None:
        """On the sparse TopK path, keep the decoder weight `[d_out, m]` column-major, i.e. its transpose
        `[m, d_out]` contiguous, as sparsify stores its `W_dec`: the embedding-bag decode reads, and its
        gradient writes, whole feature directions, so no transposed copy of the weight is made per step (at
        m = 24576, dropping those copies took the step from 1.07x to 1.16x sparsify's rate). The saved
        `[d_out, m]` tensor is the same."""
        weight = self.decoder.weight
        if self.sparse_topk and not weight.t().is_contiguous():
            self.decoder.weight = nn.Parameter(weight.detach().t().contiguous().t(), requires_grad=weight.requires_grad)

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
                "dead_mask": since_fired >= c.auxk_dead_tokens if auxk else None,
                "return_dense_latents": not self.sparse_topk}

    def features_fired(self, output: SAEOutput) -> torch.Tensor:
        if output.latents is not None:
            return output.latents != 0
        shape = (*output.latent_indices.shape[:-1], self.config.num_latents)
        fired = torch.zeros(shape, dtype=torch.bool, device=output.latent_indices.device)
        return fired.scatter_(-1, output.latent_indices, output.latent_values != 0)

    def firing(self, output: SAEOutput) -> tuple[torch.Tensor, torch.Tensor]:
        if output.latents is not None:
            return super().firing(output)
        # From the k values and indices: no [n, m] mask (at m = 24576 and 2048 tokens, 50 MB per step).
        active = (output.latent_values != 0).reshape(-1)
        counts = output.latent_values.new_zeros(self.config.num_latents, dtype=torch.float32)
        counts.index_add_(0, output.latent_indices.reshape(-1), active.float())
        return active.float().sum() / max(1, output.latent_values[..., 0].numel()), counts > 0

    @property
    def sparse_topk(self) -> bool:
        """Whether `forward` takes the sparse TopK path (`config.topk_implementation`)."""
        c = self.config
        if c.activation != "topk" or c.topk_implementation == "dense":
            return False
        return c.topk_implementation == "sparse" or 8 * c.k <= c.num_latents

    def _sparse_topk(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(pre `[n, m]` without gradient, values `[n, k]`, indices `[n, k]`, encoder input `[n, d]`), flattened."""
        x = self._normalize_input(self._check(hidden_states, self.config.hidden_size, "hidden_states"))
        x = x.reshape(-1, x.shape[-1])
        weight, bias = self.encoder.weight, self.encoder.bias
        with torch.no_grad():
            pre = F.linear(x, weight, bias)
            # topk of pre itself, not of ReLU(pre) (a pass over [n, m] less): where fewer than k are positive
            # the extra picks differ, but ReLU makes their values and gradients 0 on both paths.
            indices = pre.topk(self.config.k, dim=-1, sorted=False).indices
        values = torch.relu(SelectedPreActivations.apply(x, weight, bias, pre, indices))
        return pre, values, indices, x

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Reconstruction from `[..., m]` feature activations."""
        latents = self._check(latents, self.config.num_latents, "latents")
        return output_activation(self.config.output_activation)(self._denormalize_output(self.decoder(latents)))

    def decode_sparse(self, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Reconstruction `[n, d_out]` from the k active latents per token: values and indices `[n, k]`
        (equal to `decode` of the scattered `[n, m]` latents, in O(n·k·d))."""
        out = sparse_decode(values, indices, self.decoder.weight)
        if self.decoder.bias is not None:
            out = out + self.decoder.bias
        return output_activation(self.config.output_activation)(self._denormalize_output(out))

    def forward(
        self,
        hidden_states: torch.Tensor,
        target: torch.Tensor | None = None,
        return_loss: bool = True,
        l1_weight: float | None = None,
        dead_mask: torch.Tensor | None = None,
        return_dense_latents: bool = True,
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
            return_dense_latents: on the sparse TopK path, also scatter the `[..., m]` latents (off in training:
                the trainer reads `latent_values` / `latent_indices`; the dense path always returns them).
        """
        c = self.config
        values = indices = x = None
        if self.sparse_topk:
            flat_pre, flat_values, flat_indices, x = self._sparse_topk(hidden_states)
            shape = hidden_states.shape[:-1]
            reconstruction = self.decode_sparse(flat_values, flat_indices).reshape(*shape, -1)
            pre, values, indices = (t.reshape(*shape, -1) for t in (flat_pre, flat_values, flat_indices))
            latents = torch.zeros_like(pre).scatter(-1, indices, values.to(pre.dtype)) if return_dense_latents else None
        else:
            pre = self.pre_activations(hidden_states)
            latents = latent_activation(c)(pre)
            reconstruction = self.decode(latents)
        output = SAEOutput(reconstruction=reconstruction, latents=latents, pre_activations=pre,
                           latent_values=values, latent_indices=indices)
        if not return_loss:
            return output
        if target is None:
            if c.is_transcoder:
                raise ValueError(
                    f"This transcoder reconstructs {c.output_site} from {c.site}: pass the {c.output_site} activations as `target`."
                )
            target = hidden_states
        else:
            target = self._check(target, c.reconstruction_size, "target")
        output.reconstruction_loss = reconstruction_loss(target, reconstruction) * self.loss_scale
        l1_weight = c.l1_weight if l1_weight is None else l1_weight
        # Logged even when unweighted (TopK: l1_weight 0), but then without a backward through the decoder norms.
        with torch.set_grad_enabled(torch.is_grad_enabled() and l1_weight != 0):
            if values is None:
                penalised = latents * self._decoder_norms() if c.l1_decoder_norm else latents
            else:  # the same sum over the k nonzero latents
                penalised = values * self._decoder_norms()[indices] if c.l1_decoder_norm else values
            output.l1_loss = l1_penalty(penalised, c.l1_reduction)
        loss = output.reconstruction_loss + l1_weight * output.l1_loss if l1_weight != 0 else output.reconstruction_loss
        if c.activation == "topk" and c.auxk_weight > 0 and dead_mask is not None:
            flat_pre = pre.reshape(-1, pre.shape[-1])
            k_aux = c.auxk_k or max(1, c.hidden_size // 2)
            dead_mask = dead_mask.to(pre.device)
            aux = auxk_indices(flat_pre.detach(), dead_mask, k_aux)
            if aux is None:
                output.auxk_loss = pre.new_zeros(())
            else:
                if x is None:
                    aux_values = torch.relu(flat_pre.gather(-1, aux))
                else:
                    aux_values = torch.relu(SelectedPreActivations.apply(x, self.encoder.weight, self.encoder.bias, flat_pre, aux))
                flat_target = target.reshape(flat_pre.shape[0], -1).to(reconstruction.dtype)
                scale = self.loss_scale ** 0.5  # the residual in normalised units, as the decoder weight is
                residual = ((flat_target - reconstruction.reshape(flat_target.shape)) * scale).detach()
                estimate = sparse_decode(aux_values, aux, self.decoder.weight)
                output.auxk_loss = auxk_loss(estimate, residual, flat_target * scale, int(dead_mask.sum()), k_aux)
            loss = loss + c.auxk_weight * output.auxk_loss
        output.loss = loss
        return output

    def _decoder_norms(self) -> torch.Tensor:
        """Norm of each latent's decoder column, in normalised units (as in training) once normalisation is folded."""
        norms = self.decoder.weight.norm(dim=0)
        folded = self._normalization is None and (self.config.target_scale or self.config.activation_scale)
        return norms * (self.loss_scale ** 0.5) if folded else norms


SparseAutoencoder.register_for_auto_class("AutoModel")
