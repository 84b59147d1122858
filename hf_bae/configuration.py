"""Configurations of the dictionaries: the Binary Autoencoder (BAE) and the sparse autoencoders (SAEs).

Each field carries its help text in `metadata["help"]`. These fields are the single source of truth:
the `hf-bae train` flags are generated from them (see `hf_bae/arguments.py`), so `--help` prints
the text written here.

A config also records where its activations came from (base model, revision, layer, site, dataset,
context length, token filter). Loading a dictionary then tells you exactly which hidden states it
reads, which avoids the classic off-by-one-layer mistake.
"""

import dataclasses
import math
import numbers
import os
import types
from dataclasses import field
from typing import Any

from packaging import version as _version
from transformers import PretrainedConfig

from .formats import hookpoint
from .version import __version__

SITES = ("resid_post", "mlp_in", "mlp_out")
OUTPUT_ACTIVATIONS = ("none", "relu", "sigmoid", "tanh")
ESTIMATORS = ("legacy_sign_s", "identity", "sigmoid", "squarewave")
COVARIANCE_IMPLEMENTATIONS = ("auto", "dense", "sparse")  # as hf_bae.losses (the config does not import torch code)
# The original code's `--binarization_type` values, mapped onto our estimator names.
ORIGINAL_BINARIZATION_NAMES = {"sign": "identity", "sign_s": "legacy_sign_s", "squarewave": "squarewave"}
BITS = (1, 2, 4, 8)
SAE_ACTIVATIONS = ("relu", "topk", "jumprelu", "legacy_topk", "none", "sigmoid", "tanh")
L1_REDUCTIONS = ("sum", "mean")
TOPK_IMPLEMENTATIONS = ("auto", "dense", "sparse")
DECODER_IMPLEMENTATIONS = ("dense", "sparse")
NORMALIZATIONS = ("none", "scale", "center_scale")
_NORMALIZATION_CHOICES = ("auto",) + NORMALIZATIONS
# The L1 weight an SAE gets when none is given: only the activations that rely on L1 to be sparse.
DEFAULT_L1_WEIGHTS = {"relu": 0.01, "jumprelu": 0.01}


def option(default: Any, help: str, **metadata: Any) -> Any:
    """A dataclass field that documents itself: `help` (and `choices`, `aliases`) become its command-line
    flag's help text, choices and extra names (see `hf_bae.arguments`). A list default is copied per instance."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **metadata})
    return field(default=default, metadata={"help": help, **metadata})


def own_fields(config_class: type) -> list[dataclasses.Field]:
    """The fields hf_bae adds to `PretrainedConfig` (not transformers' generic ones), in declaration order."""
    base = {f.name for f in dataclasses.fields(PretrainedConfig)}
    return [f for f in dataclasses.fields(config_class) if f.name not in base]


def type_problem(value: Any, annotation: Any) -> str | None:
    """Why `value` does not fit the field's annotation (`int`, `float | None`, `bool`, `str`), or None
    (also for annotations other than these, such as `list[str]`: not checked here).

    Booleans are not numbers here (`hidden_size=True` is a mistake), numbers must be finite (NaN passes
    every `x < 0` check), and a float field takes an int (JSON writes 1.0 as 1)."""
    args = annotation.__args__ if isinstance(annotation, types.UnionType) else (annotation,)
    if value is None:
        return None if type(None) in args else "must be set (got None)"
    kinds = [a for a in args if a is not type(None)]
    if not set(kinds) <= {bool, int, float, str}:
        return None
    if bool in kinds and isinstance(value, bool):
        return None
    if str in kinds and isinstance(value, (str, os.PathLike)):  # a folder may be given as a Path
        return None
    number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if int in kinds and number and isinstance(value, numbers.Integral):
        return None
    if float in kinds and number:
        return None if math.isfinite(value) else "must be a finite number"
    wanted = " or ".join({bool: "true/false", int: "an integer", float: "a finite number", str: "a string"}.get(k, k.__name__)
                         for k in kinds)
    return f"must be {wanted}{' or None' if type(None) in args else ''}"


def _check_range(name: str, value: Any, low: float | None = None, high: float | None = None, *,
                 open_low: bool = False, open_high: bool = False) -> None:
    """Raise a ValueError naming `name` unless `value` (None passes: optional fields) lies in the range."""
    if value is None:
        return
    inside = ((low is None or (value > low if open_low else value >= low))
              and (high is None or (value < high if open_high else value <= high)))
    if not inside:
        bounds = []
        if low is not None:
            bounds.append(f"{'>' if open_low else '>='} {low}")
        if high is not None:
            bounds.append(f"{'<' if open_high else '<='} {high}")
        raise ValueError(f"{name} must be {' and '.join(bounds)}, got {value!r}.")


def _check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not supported; choose one of {', '.join(map(repr, choices))}.")


class DictionaryConfig(PretrainedConfig):
    """Fields shared by every dictionary: sizes, biases, and the provenance of the activations."""

    hidden_size: int = option(768, "Width d of the hidden states the dictionary reads (the LM's hidden size).")
    latent_size: int | None = option(
        None, "Number of features m. If unset, m = expansion_factor * hidden_size."
    )
    expansion_factor: int = option(
        4, "m = expansion_factor * d when latent_size is unset.", aliases=["--inner_expand_rate"]
    )
    output_size: int | None = option(
        None, "Width of the reconstructed vector; defaults to hidden_size (differs only for a transcoder between sites of different width)."
    )
    encoder_bias: bool = option(True, "Bias in the encoder Linear (the original code always has one; the paper's formula has none).")
    decoder_bias: bool = option(
        True, "Bias b in the decoder Linear (the original's --bias flag, used by all its published commands).", aliases=["--bias"]
    )
    output_activation: str = option(
        "none", "Activation applied to the reconstruction: none, relu, sigmoid or tanh.", choices=OUTPUT_ACTIVATIONS
    )
    normalize_activations: str = option(
        "auto",
        "How training normalises the activations (hf_bae.normalization): center_scale (subtract the mean and scale so "
        "that E||x||^2 = d, estimated on the first batches), scale (only the scale), none (raw hidden states, as "
        "the original code), or auto (center_scale; scale without both biases; none with an output_activation, "
        "through which nothing can be folded). The loss weights are then in the same units on every model and "
        "layer. The statistics are folded into the saved weights, so a saved dictionary always reads raw hidden states.",
        choices=_NORMALIZATION_CHOICES,
    )
    activation_scale: float | None = option(
        None, "Set by training with normalize_activations: the scale s folded into the weights; the reconstruction "
        "loss is reported in normalised units (s^2 times the raw MSE)."
    )
    target_scale: float | None = option(
        None, "Set by training a transcoder with normalize_activations: the scale of its target (when it differs "
        "from activation_scale)."
    )
    # Provenance: where the training activations came from.
    base_model: str | None = option(None, "Hub id or path of the language model whose hidden states are encoded.")
    base_model_revision: str | None = option(None, "Revision (commit or branch) of base_model.")
    layer: int | None = option(None, "Decoder layer index L (0-based) of the hooked site.")
    site: str = option(
        "resid_post",
        "Hooked site: resid_post (output of layer L = hidden_states[L+1]), mlp_in (input of layer L's MLP, after its norm) or mlp_out.",
        choices=SITES,
    )
    output_site: str | None = option(
        None, "Transcoder only: the site the dictionary reconstructs (e.g. mlp_out) when it reads `site` (e.g. mlp_in)."
    )
    dataset: str | None = option(None, "Dataset the training activations were taken from.")
    context_length: int | None = option(None, "Token length of the packed rows the activations were taken from.")
    token_filter: str | None = option(None, "Which tokens were left out of training (e.g. 'special,outliers>10xmedian').")
    hf_bae_version: str = option(__version__, "hf_bae version that wrote this config.")

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        if self.normalize_activations == "auto":  # resolved once, so the saved config says what was done
            self.normalize_activations = ("none" if self.output_activation != "none" else
                                          "center_scale" if self.encoder_bias and self.decoder_bias else "scale")
        self._validate()

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> "DictionaryConfig":
        """A config read back (`from_pretrained`, `AutoConfig`): unlike `BAEConfig()` in Python, whose
        768 is a documented default, a saved config must say its width, or the dictionary would silently
        be built at another size than its weights."""
        if "hidden_size" not in config_dict and "hidden_size" not in kwargs:
            where = config_dict.get("_name_or_path") or "this config.json"
            raise ValueError(f"{where} has no hidden_size (the width d of the hidden states the dictionary reads): "
                             "add it to the config.json (the language model's hidden size), or re-save the dictionary.")
        return super().from_dict(config_dict, **kwargs)

    @classmethod
    def from_preset(cls, name: str, **kwargs: Any) -> "DictionaryConfig":
        """A config from preset `name` (`hf_bae.presets`: "default", "original"), with `kwargs` over it."""
        from .presets import preset_values

        fields = {f.name for f in own_fields(cls)}
        return cls(**{**{k: v for k, v in preset_values(name).items() if k in fields}, **kwargs})

    # -- derived sizes -------------------------------------------------------------------------
    @property
    def num_latents(self) -> int:
        """Number of dictionary features m."""
        return self.latent_size if self.latent_size is not None else self.expansion_factor * self.hidden_size

    @property
    def reconstruction_size(self) -> int:
        """Width of the reconstructed vector."""
        return self.output_size if self.output_size is not None else self.hidden_size

    @property
    def is_transcoder(self) -> bool:
        """True when the dictionary reads one site and reconstructs another."""
        return self.output_site is not None and self.output_site != self.site

    @property
    def hookpoint(self) -> str | None:
        """Where the dictionary reads, `layers.{layer}.{site}` (None if the layer is not recorded)."""
        return hookpoint(self.layer, self.site)

    @property
    def output_hookpoint(self) -> str | None:
        """Where it reconstructs (a transcoder's `output_site`; else its `hookpoint`)."""
        return hookpoint(self.layer, self.output_site or self.site)

    def describe_source(self) -> str:
        """Human-readable provenance, used in error messages ('layer 5 (resid_post) of meta-llama/...')."""
        parts = []
        if self.layer is not None:
            parts.append(f"layer {self.layer} ({self.site})")
        if self.base_model:
            parts.append(f"of {self.base_model}")
        return " ".join(parts) if parts else "an unrecorded source"

    # -- validation ---------------------------------------------------------------------------
    def _validate(self) -> None:
        if _version.parse(str(self.hf_bae_version)) > _version.parse(__version__):
            raise ValueError(
                f"This config was written by hf_bae {self.hf_bae_version}, newer than the installed {__version__}. "
                "Upgrade with `pip install -U hf_bae` to load it."
            )
        for f in own_fields(type(self)):  # every field, the subclasses' too: types before ranges
            problem = type_problem(getattr(self, f.name), f.type)
            if problem:
                raise ValueError(f"{f.name} {problem}, got {getattr(self, f.name)!r} ({type(getattr(self, f.name)).__name__}).")
        for name in ("hidden_size", "expansion_factor", "latent_size", "output_size", "context_length"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be a positive integer{'' if name in ('hidden_size', 'expansion_factor') else ' or None'}, "
                                 f"got {value!r}.")
        _check_range("layer", self.layer, 0)
        _check_choice("output_activation", self.output_activation, OUTPUT_ACTIVATIONS)
        _check_choice("normalize_activations", self.normalize_activations, NORMALIZATIONS)
        if self.normalize_activations != "none" and self.output_activation != "none":
            raise ValueError(f"normalize_activations={self.normalize_activations!r} cannot be folded through "
                             f"output_activation={self.output_activation!r}: set normalize_activations='none'.")
        if self.normalize_activations == "center_scale" and not (self.encoder_bias and self.decoder_bias):
            raise ValueError("normalize_activations='center_scale' folds the mean into the encoder and decoder biases: "
                             "keep encoder_bias and decoder_bias on, or use normalize_activations='scale'.")
        for name in ("activation_scale", "target_scale"):
            _check_range(name, getattr(self, name), 0, open_low=True)
        _check_choice("site", self.site, SITES)
        if self.output_site is not None:
            _check_choice("output_site", self.output_site, SITES)

    def to_diff_dict(self) -> dict[str, Any]:
        # transformers drops values equal to the class defaults; a dictionary's config should say
        # everything about it (and its hf_bae_version), so our own fields are always written.
        diff = super().to_diff_dict()
        for f in own_fields(type(self)):
            diff[f.name] = getattr(self, f.name)
        return diff


class BAEConfig(DictionaryConfig):
    r"""Configuration of a [`BinaryAutoencoder`].

    The BAE of Cho et al. (arXiv 2509.20997) encodes a hidden state h into binary codes
    Γ(h W_in + b_in) ∈ {0,1}^{m·bits} and decodes them linearly. Training adds a minibatch entropy
    term and a covariance penalty to the reconstruction loss (see `hf_bae.losses`).

    Defaults follow the published commands of the original code: 4x expansion, decoder bias,
    estimator `legacy_sign_s` (what the published results used), entropy and covariance weights 1e-7.

    Example:
    ```python
    >>> from hf_bae import BAEConfig, BinaryAutoencoder
    >>> config = BAEConfig(hidden_size=576, expansion_factor=4, layer=5, base_model="HuggingFaceTB/SmolLM2-135M-Instruct")
    >>> model = BinaryAutoencoder(config)
    ```
    """

    model_type = "binary_autoencoder"

    bits: int = option(
        1,
        "Bits per feature (1, 2, 4 or 8). With k > 1 bits, feature j decodes from sum_i 2^i b_ji / (2^k - 1), least significant bit first.",
        choices=BITS,
    )
    estimator: str = option(
        "identity",
        "Gradient estimator of the step function: identity (straight-through; default), legacy_sign_s (the original "
        "code's g*(1-g), in practice straight-through; used by the published results), sigmoid (derivative of "
        "sigmoid(x/T)), squarewave (periodic step).",
        aliases=["--binarization_type"],
    )
    estimator_temperature: float = option(1.0, "Temperature T of the sigmoid estimator.")
    encoder_bias_lr_scale: float = option(
        10.0, "The encoder bias learns at this multiple of the learning rate. The biases set the codes' firing rates, "
        "which the entropy term lowers one Adam step (about lr) at a time, while the reconstruction turns the "
        "encoder rows towards high-variance directions, where a given bias fires more often.")
    unit_norm_encoder: bool = option(
        True,
        "After each optimiser step, rescale each code's encoder row and bias to a unit-norm row. The step function "
        "does not see the scale (1[w.x + b > 0] = 1[c w.x + c b > 0] for c > 0), so the codes are unchanged; but "
        "without it the reconstruction grows the rows' norms faster than the entropy term lowers the biases, "
        "and the codes become denser as training goes on. The original code has no such step.",
    )
    initial_firing_rate: float | None = option(
        0.05,
        "At the start of training, set the encoder bias so that each code fires on this fraction of the first "
        "batches' tokens (None: PyTorch's default init, as the original code). Codes that start rare stay rare "
        "under the entropy term, whose gradient pushes every code away from a rate of 0.5.",
    )
    squarewave_cycle: float = option(2.0, "Period c of the squarewave binarization.", aliases=["--cycle_for_squarewave"])
    entropy_weight: float = option(
        1e-3, "Weight of the minibatch entropy term (bits, summed over codes), against the MSE of normalised "
        "activations (normalize_activations); the original code's 1e-7 was for raw Llama-3.2 hidden states.")
    covariance_weight: float = option(
        1e-5, "Weight of the covariance penalty sum_{i!=j} |Cov(h_i, h_j)| (original code: 1e-7).",
        aliases=["--covarience_weight"]
    )
    entropy_threshold: float = option(
        0.0, "The entropy term is switched off (0) while the batch entropy is below this many bits (0 keeps it always on)."
    )
    covariance_chunk_size: int = option(
        1024, "Columns per chunk of the covariance penalty: peak memory is O(chunk * m), never O(m^2)."
    )
    covariance_implementation: str = option(
        "auto",
        "How the covariance penalty is computed (same value and gradient): dense (blocks of D^T D, O(batch * m^2) "
        "time), sparse (the sparse part of D^T D plus rank-one terms, D = codes - round(batch mean); cost follows "
        "the deviations' density), or auto (sparse when at most 1 percent of D is nonzero, else dense).",
        choices=COVARIANCE_IMPLEMENTATIONS,
    )
    decoder_implementation: str = option(
        "dense",
        "How 1-bit codes are decoded (same result): dense (codes @ W) or sparse (r @ W + D @ W, with D = codes - "
        "round(batch mean) a sparse matrix). On a CPU at d = 768 the sparse path does not win even for very sparse "
        "deviations (benchmarks/sparse_decode.py: its passes over the codes cost as much as the product); try it on "
        "wide models or a GPU.",
        choices=DECODER_IMPLEMENTATIONS,
    )

    def __post_init__(self, **kwargs: Any) -> None:
        self.estimator = ORIGINAL_BINARIZATION_NAMES.get(self.estimator, self.estimator)
        super().__post_init__(**kwargs)

    @property
    def num_codes(self) -> int:
        """Number of binary codes per hidden state: m * bits."""
        return self.num_latents * self.bits

    def _validate(self) -> None:
        super()._validate()
        _check_choice("estimator", self.estimator, ESTIMATORS)
        _check_choice("bits", self.bits, BITS)
        # (finite and of the right type already: DictionaryConfig._validate)
        for name in ("encoder_bias_lr_scale", "estimator_temperature", "squarewave_cycle"):
            _check_range(name, getattr(self, name), 0, open_low=True)
        _check_range("initial_firing_rate", self.initial_firing_rate, 0, 1, open_low=True, open_high=True)
        for name in ("entropy_weight", "covariance_weight", "entropy_threshold"):
            _check_range(name, getattr(self, name), 0)
        _check_choice("covariance_implementation", self.covariance_implementation, COVARIANCE_IMPLEMENTATIONS)
        _check_choice("decoder_implementation", self.decoder_implementation, DECODER_IMPLEMENTATIONS)
        _check_range("covariance_chunk_size", self.covariance_chunk_size, 1)


class SAEConfig(DictionaryConfig):
    r"""Configuration of a [`SparseAutoencoder`]: the ReLU+L1, TopK and JumpReLU baselines, and transcoders.

    `activation` selects the latent non-linearity:

    - `relu`: ReLU, sparsified by the L1 penalty (`l1_weight`).
    - `topk`: the k largest ReLU pre-activations are kept, exactly k (Gao et al. 2024).
    - `legacy_topk`: the original code's TopK: keeps every pre-activation >= the k-th largest, with no
      ReLU (negatives survive and ties keep more than k). Only for reproducing published numbers.
    - `jumprelu`: x if x > θ else 0, with a fixed θ = `jumprelu_threshold` (as in the original code).
    - `none`, `sigmoid`, `tanh`: dense activations, as offered by the original code.

    A transcoder is the same model trained to reconstruct `output_site` from `site`.
    """

    model_type = "sparse_autoencoder"

    activation: str = option(
        "relu",
        "Latent activation: relu, topk, jumprelu, legacy_topk, none, sigmoid or tanh.",
        choices=SAE_ACTIVATIONS,
        aliases=["--inner_activation"],
    )
    k: int = option(10, "Number of active latents for topk / legacy_topk.", aliases=["--topk"])
    jumprelu_threshold: float = option(0.5, "Fixed threshold θ of the jumprelu activation.", aliases=["--theta"])
    l1_weight: float | None = option(
        None, "Weight of the L1 penalty on the latents. Default: 0.01 for relu and jumprelu (it suits normalised "
        "activations with l1_reduction=mean and l1_decoder_norm; benchmarks/sweep.py), 0 for the others (topk is "
        "sparse by construction). The original code's default was 0.", aliases=["--l1_norm_weight"])
    l1_reduction: str = option(
        "mean",
        "How the L1 penalty is reduced: mean (over tokens, summed over latents: independent of the batch size) or sum "
        "(over tokens and latents, as the original code).",
        choices=L1_REDUCTIONS,
    )
    l1_decoder_norm: bool = option(
        True, "Weight each latent's L1 by the norm of its decoder column (Anthropic's 2024 recipe), so that the penalty "
        "cannot be dodged by shrinking the latents and growing the decoder (the original code does not).")
    auxk_weight: float = option(
        1 / 32, "topk only: weight of the auxiliary loss of Gao et al. (2024): the auxk_k largest pre-activations of "
        "dead latents reconstruct the residual of the main reconstruction, which gives dead latents a gradient. "
        "0 turns it off (as the original code).")
    auxk_k: int | None = option(None, "topk only: latents used by the auxiliary loss (default: hidden_size / 2).")
    auxk_dead_tokens: int = option(
        100_000, "topk only: a latent counts as dead for the auxiliary loss when it fired on none of the last this "
        "many training tokens (per process).")

    topk_implementation: str = option(
        "auto",
        "topk only, how the latents are computed (same values and gradients): dense (scatter into [n, m] latents, "
        "decode and backpropagate with dense matmuls) or sparse (keep the k values and indices; the decoder is an "
        "embedding bag and the encoder's backward touches only the k selected rows: O(n*k*d) instead of three "
        "O(n*m*d) matmuls). auto: sparse when k <= m / 8 (benchmarks/train_step.py).",
        choices=TOPK_IMPLEMENTATIONS,
    )

    def __post_init__(self, **kwargs: Any) -> None:
        if self.l1_weight is None:  # resolved once, so the saved config says what was trained
            self.l1_weight = DEFAULT_L1_WEIGHTS.get(self.activation, 0.0)
        super().__post_init__(**kwargs)

    def _validate(self) -> None:
        super()._validate()
        _check_choice("activation", self.activation, SAE_ACTIVATIONS)
        _check_choice("l1_reduction", self.l1_reduction, L1_REDUCTIONS)
        if self.activation in ("topk", "legacy_topk") and not 1 <= self.k <= self.num_latents:
            raise ValueError(f"k={self.k} must be between 1 and the number of latents m={self.num_latents}.")
        _check_range("k", self.k, 1)
        for name in ("l1_weight", "auxk_weight"):
            _check_range(name, getattr(self, name), 0)
        if self.auxk_k is not None and not 1 <= self.auxk_k <= self.num_latents:
            raise ValueError(f"auxk_k={self.auxk_k} must be between 1 and the number of latents m={self.num_latents}.")
        _check_range("auxk_dead_tokens", self.auxk_dead_tokens, 1)
        _check_choice("topk_implementation", self.topk_implementation, TOPK_IMPLEMENTATIONS)


BAEConfig.register_for_auto_class()
SAEConfig.register_for_auto_class()
