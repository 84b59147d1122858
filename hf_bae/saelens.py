"""Export of ReLU / TopK / JumpReLU sparse autoencoders (and ReLU / JumpReLU transcoders) to the SAELens
folder format: `cfg.json` + `sae_weights.safetensors`, as written by `sae_lens.SAE.save_model` (SAELens
6.x) and read by `SAE.load_from_disk`, SAEBench and Neuronpedia's tooling.

The export is exact: SAELens' encoders compute σ((x - b_dec·apply_b_dec_to_input) W_enc + b_enc) and
ours σ(x W_encᵀ + b_enc), so we write `apply_b_dec_to_input = false` and transposed weights, and the
encodings are the same numbers.

A Binary Autoencoder has **no SAELens equivalent**: its features are binary codes from a step function
(with up to 8 bits per feature), which none of SAELens' architectures computes. Use hf_bae (or
`trust_remote_code=True`) to load a BAE.

Hook names follow TransformerLens, which SAELens uses: resid_post of layer L is
`blocks.L.hook_resid_post` (= `hidden_states[L+1]` of a transformers model), mlp_in is
`blocks.L.ln2.hook_normalized` (the MLP's input after its norm), mlp_out is `blocks.L.hook_mlp_out`.
"""

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from .configuration import BAEConfig, SAEConfig
from .formats import SAELENS_CONFIG_FILE, SAELENS_WEIGHTS_FILE
from .version import __version__

# The cfg.json layout we write is SAELens 6's (metadata block, `architecture` field).
SAELENS_FORMAT_VERSION = "6.0.0"
TRANSFORMER_LENS_HOOKS = {
    "resid_post": "blocks.{layer}.hook_resid_post",
    "mlp_in": "blocks.{layer}.ln2.hook_normalized",
    "mlp_out": "blocks.{layer}.hook_mlp_out",
}
BAE_HAS_NO_SAELENS_EQUIVALENT = (
    "A Binary Autoencoder has no SAELens equivalent: its features are binary codes of a step function, "
    "which no SAELens architecture computes. Share it with `hf-bae push` and load it with hf_bae or "
    "`AutoModel.from_pretrained(..., trust_remote_code=True)` instead."
)
# Dictionary kinds (by config model_type) that no SAELens architecture computes, and why.
NO_SAELENS_EQUIVALENT = {BAEConfig.model_type: BAE_HAS_NO_SAELENS_EQUIVALENT}


def hook_name(site: str, layer: int | None) -> str | None:
    """The TransformerLens hook name of `site` at `layer` (None when the layer is unrecorded)."""
    return None if layer is None else TRANSFORMER_LENS_HOOKS[site].format(layer=layer)


def saelens_architecture(config: Any) -> str:
    """The SAELens architecture name equivalent to a dictionary config; ValueError when there is none."""
    model_type = getattr(config, "model_type", None)
    if model_type in NO_SAELENS_EQUIVALENT:
        raise ValueError(NO_SAELENS_EQUIVALENT[model_type])
    if model_type != SAEConfig.model_type:
        raise ValueError(f"Only hf_bae sparse autoencoders can be exported to SAELens, got model_type={model_type!r}.")
    if config.output_activation != "none":
        raise ValueError(
            f"output_activation={config.output_activation!r} has no SAELens equivalent (SAELens decoders are affine); "
            "only dictionaries trained with output_activation='none' can be exported."
        )
    activation = config.activation
    if activation == "jumprelu" and config.jumprelu_threshold < 0:
        raise ValueError(
            f"jumprelu_threshold={config.jumprelu_threshold} < 0 lets negative activations through, which SAELens' "
            "JumpReLU (ReLU then threshold) does not; it cannot be exported exactly."
        )
    if config.is_transcoder:
        names = {"relu": "transcoder", "jumprelu": "jumprelu_transcoder"}
    else:
        names = {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu"}
    if activation not in names:
        kind = "transcoder" if config.is_transcoder else "sparse autoencoder"
        raise ValueError(
            f"A {kind} with activation={activation!r} has no SAELens equivalent; exportable activations: "
            f"{', '.join(sorted(names))}."
            + (" (legacy_topk keeps negative values and ties, unlike SAELens' TopK.)" if activation == "legacy_topk" else "")
        )
    return names[activation]


def saelens_config(config: SAEConfig, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """The `cfg.json` content for a dictionary config (SAELens 6 layout, with its metadata block)."""
    architecture = saelens_architecture(config)
    metadata: dict[str, Any] = {
        "sae_lens_version": SAELENS_FORMAT_VERSION,
        "sae_lens_training_version": None,
        "model_name": config.base_model,
        "hook_name": hook_name(config.site, config.layer),
        "hook_head_index": None,
        "context_size": config.context_length,
        "dataset_path": config.dataset,
        # Where hf_bae's own provenance lives, so that nothing is lost in translation.
        "hf_bae_version": __version__,
        "hf_bae_site": config.site,
        "hf_bae_layer": config.layer,
        "hf_bae_base_model_revision": config.base_model_revision,
        "hf_bae_token_filter": config.token_filter,
    }
    if config.is_transcoder:
        metadata["hook_name_out"] = hook_name(config.output_site, config.layer)
        metadata["hook_head_index_out"] = None
        metadata["hf_bae_output_site"] = config.output_site
    cfg: dict[str, Any] = {
        "architecture": architecture,
        "d_in": config.hidden_size,
        "d_sae": config.num_latents,
        "dtype": str(dtype).removeprefix("torch."),
        "device": "cpu",
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": metadata,
    }
    if config.is_transcoder:
        cfg["d_out"] = config.reconstruction_size
    if architecture == "topk":
        cfg["k"] = config.k
        cfg["rescale_acts_by_decoder_norm"] = False
    return cfg


def saelens_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """W_enc [d, m], b_enc [m], W_dec [m, d_out], b_dec [d_out] (+ threshold [m] for JumpReLU), contiguous on CPU."""
    config = model.config
    saelens_architecture(config)
    encoder, decoder = model.encoder, model.decoder
    dtype = encoder.weight.dtype
    state = {
        "W_enc": encoder.weight.detach().T,
        "b_enc": encoder.bias.detach() if encoder.bias is not None else torch.zeros(config.num_latents, dtype=dtype),
        "W_dec": decoder.weight.detach().T,
        "b_dec": decoder.bias.detach() if decoder.bias is not None else torch.zeros(config.reconstruction_size, dtype=dtype),
    }
    if config.activation == "jumprelu":
        state["threshold"] = torch.full((config.num_latents,), float(config.jumprelu_threshold), dtype=dtype)
    return {name: t.to("cpu").contiguous().clone() for name, t in state.items()}


def export_saelens(model: torch.nn.Module, output_dir: str | Path) -> Path:
    """Write `model` (a ReLU / TopK / JumpReLU `SparseAutoencoder`) as a SAELens folder; returns it.

    Load the result with `sae_lens.SAE.load_from_disk(output_dir)`; its `encode` gives the same
    feature activations as `model.encode`. Raises ValueError for a BAE (no SAELens equivalent) and for
    SAE variants SAELens cannot express (legacy_topk, dense activations, output activations).
    """
    cfg = saelens_config(model.config, model.encoder.weight.dtype)
    state = saelens_state_dict(model)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    save_file(state, output_dir / SAELENS_WEIGHTS_FILE, metadata={"format": "pt"})
    (output_dir / SAELENS_CONFIG_FILE).write_text(json.dumps(cfg, indent=2) + "\n")
    return output_dir
