"""Dictionary-quality metrics: reconstruction (FVU, explained variance), sparsity (L0), feature
firing frequencies, dead and dense features, and the entropy of the codes.

Definitions (stated here once; cards, plots and the Space refer to them):

- A feature *fires* on a token when its code is 1 (BAE; with k bits, when any of its bits is 1) or
  its latent is > 0 (SAEs).
- *Frequency* p_j: fraction of evaluated tokens on which feature j fires.
- *Dead*: fired on none of the evaluated tokens.
- *Dense*: p_j > `dense_threshold` (default 0.1, i.e. firing on more than one token in ten). The paper
  does not give its threshold; change it with `--dense_threshold`.
- *FVU*: Σ‖h − ĥ‖² / Σ‖h − mean(h)‖², the fraction of variance unexplained; explained variance = 1 − FVU.
- *L0*: mean number of features firing per token.
- *Dense by deviation* (BAE): a code is 1 on most tokens as easily as 0 (the entropy term pushes
  rates towards either end), and the paper's interpretation scores a code by its deviation from its
  usual value; `dense_deviation_fraction` counts codes with min(q_j, 1 − q_j) > `dense_threshold`,
  `constant_code_fraction` those that never leave their usual value (q_j = 0 or 1).
- *Code entropy*: Σ_j H_b(q_j) in bits over the binary codes, q_j the rate of code j (for a BAE
  with k bits per feature, over all m·k codes): the paper's feature-set entropy estimator.
- *Mean |off-diagonal covariance|*: Σ_{i≠j} |Cov(c_i, c_j)| / (m(m − 1)) over a batch of codes, the
  BAE's covariance penalty per pair (0 for independent codes).

Downstream fidelity, with the reconstruction spliced into the language model at the hooked site:

- *KL divergence*: KL(P_clean ‖ P_spliced) of the next-token distributions, in nats, averaged over
  positions; *JS divergence*: the Jensen–Shannon divergence of the same pair (nats, ≤ ln 2).
- *CE-loss score*: (CE_zero − CE_spliced) / (CE_zero − CE_clean), where CE_zero is the next-token
  loss with the site's activation zero-ablated: 1 means the splice costs nothing, 0 that it is as
  bad as deleting the activation.

`FeatureStats` accumulates the dictionary statistics over a stream of batches in O(m) memory;
`DownstreamStats` the downstream ones.
"""

import math
from dataclasses import dataclass, field

import torch

from .losses import binary_entropy_bits, covariance_penalty

DEFAULT_DENSE_THRESHOLD = 0.1


def fraction_of_variance_unexplained(target: torch.Tensor, reconstruction: torch.Tensor) -> float:
    """Σ‖h − ĥ‖² / Σ‖h − mean(h)‖² over a batch of `[n, d]` vectors."""
    target, reconstruction = target.double(), reconstruction.double()
    residual = (target - reconstruction).pow(2).sum()
    total = (target - target.mean(0, keepdim=True)).pow(2).sum()
    return (residual / total).item()


def features_fired(activations: torch.Tensor, bits: int = 1) -> torch.Tensor:
    """Which features fire, as booleans `[..., m]`.

    Args:
        activations: BAE codes `[..., m·bits]` or SAE latents `[..., m]`.
        bits: bits per feature (BAE); a multi-bit feature fires when any of its bits is 1.
    """
    fired = activations != 0
    if bits > 1:
        fired = fired.unflatten(-1, (-1, bits)).any(-1)
    return fired


def entropy_bits_from_counts(counts: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Per-code binary entropy in bits, from how often each code was 1 among `num_samples` samples."""
    if num_samples < 1:
        raise ValueError("No samples: the entropy of an empty set of codes is undefined.")
    p = counts.double() / num_samples
    return binary_entropy_bits(p, eps=0.0).nan_to_num(0.0)  # 0·log 0 = 0


@dataclass
class FeatureStats:
    """Streaming accumulator of reconstruction and firing statistics.

    Args:
        num_features: m, the number of features.
        num_codes: number of binary codes (m·bits for a BAE, m for an SAE); `code_counts` is kept
            only for binary dictionaries.
        binary: whether the dictionary emits binary codes (BAE), which enables the code entropy.
    """

    num_features: int
    num_codes: int | None = None
    binary: bool = False
    num_tokens: int = 0
    fire_counts: torch.Tensor = field(default=None)
    code_counts: torch.Tensor | None = field(default=None)
    active_sum: float = 0.0
    squared_error: float = 0.0
    # Σh and Σh² per dimension give the target's total variance without a second pass.
    target_sum: torch.Tensor | None = None
    target_sq_sum: float = 0.0

    def __post_init__(self):
        if self.fire_counts is None:
            self.fire_counts = torch.zeros(self.num_features, dtype=torch.float64)
        if self.binary and self.code_counts is None:
            self.code_counts = torch.zeros(self.num_codes or self.num_features, dtype=torch.float64)

    @torch.no_grad()
    def update(self, fired: torch.Tensor, target: torch.Tensor | None = None, reconstruction: torch.Tensor | None = None,
               codes: torch.Tensor | None = None) -> None:
        """Add a batch.

        Args:
            fired: `[n, m]` booleans (or 0/1): which features fired on each token.
            target / reconstruction: `[n, d]` to accumulate the FVU.
            codes: `[n, m·bits]` binary codes (binary dictionaries).
        """
        fired = fired.reshape(-1, self.num_features)
        self.num_tokens += fired.shape[0]
        self.fire_counts += fired.double().sum(0).cpu()
        self.active_sum += fired.double().sum().item()
        if codes is not None and self.code_counts is not None:
            self.code_counts += codes.reshape(-1, self.code_counts.numel()).double().sum(0).cpu()
        if target is not None and reconstruction is not None:
            t = target.reshape(-1, target.shape[-1]).double()
            self.squared_error += (t - reconstruction.reshape(t.shape).double()).pow(2).sum().item()
            s = t.sum(0).cpu()
            self.target_sum = s if self.target_sum is None else self.target_sum + s
            self.target_sq_sum += t.pow(2).sum().item()

    def merge(self, other: "FeatureStats") -> None:
        """Add another accumulator's counts (e.g. from another process)."""
        self.num_tokens += other.num_tokens
        self.fire_counts += other.fire_counts
        self.active_sum += other.active_sum
        self.squared_error += other.squared_error
        self.target_sq_sum += other.target_sq_sum
        if other.code_counts is not None:
            self.code_counts = other.code_counts.clone() if self.code_counts is None else self.code_counts + other.code_counts
        if other.target_sum is not None:
            self.target_sum = other.target_sum.clone() if self.target_sum is None else self.target_sum + other.target_sum

    @property
    def frequencies(self) -> torch.Tensor:
        """Firing frequency of each feature."""
        return self.fire_counts / max(self.num_tokens, 1)

    def dead_mask(self) -> torch.Tensor:
        return self.fire_counts == 0

    def dense_mask(self, threshold: float = DEFAULT_DENSE_THRESHOLD) -> torch.Tensor:
        return self.frequencies > threshold

    def summary(self, dense_threshold: float = DEFAULT_DENSE_THRESHOLD) -> dict[str, float]:
        """The metrics as plain floats: l0, dead/dense counts and fractions, FVU, code entropy."""
        if self.num_tokens == 0:
            raise ValueError("FeatureStats is empty: no tokens were evaluated.")
        out = {
            "num_tokens": self.num_tokens,
            "l0": self.active_sum / self.num_tokens,
            "dead_features": int(self.dead_mask().sum()),
            "dead_fraction": float(self.dead_mask().double().mean()),
            "dense_features": int(self.dense_mask(dense_threshold).sum()),
            "dense_fraction": float(self.dense_mask(dense_threshold).double().mean()),
            "dense_threshold": dense_threshold,
        }
        if self.target_sum is not None:
            total_var = self.target_sq_sum - self.target_sum.pow(2).sum().item() / self.num_tokens
            out["mse"] = self.squared_error / (self.num_tokens * self.target_sum.numel())
            out["fvu"] = self.squared_error / total_var if total_var > 0 else float("nan")
            out["explained_variance"] = 1 - out["fvu"]
        if self.code_counts is not None:
            out["code_entropy_bits"] = float(entropy_bits_from_counts(self.code_counts, self.num_tokens).sum())
            deviation = torch.minimum(self.code_counts, self.num_tokens - self.code_counts) / self.num_tokens
            out["dense_deviation_fraction"] = float((deviation > dense_threshold).double().mean())
            out["constant_code_fraction"] = float((deviation == 0).double().mean())
        return out


@torch.no_grad()
def mean_abs_offdiagonal_covariance(codes: torch.Tensor) -> float:
    """Σ_{i≠j} |Cov(c_i, c_j)| / (m(m − 1)) over a `[n, m]` batch of codes (unbiased covariance)."""
    m = codes.shape[-1]
    if m < 2:
        return 0.0
    return float(covariance_penalty(codes.reshape(-1, m).float())) / (m * (m - 1))


def next_token_divergences(clean_logits: torch.Tensor, other_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position KL(P_clean ‖ P_other) and Jensen–Shannon divergence, in nats, from `[..., vocab]` logits."""
    lp = torch.log_softmax(clean_logits.float(), dim=-1)
    lq = torch.log_softmax(other_logits.float(), dim=-1)
    p, q = lp.exp(), lq.exp()
    kl = (p * (lp - lq)).sum(-1)
    lm = torch.logaddexp(lp, lq) - math.log(2)  # log of the mixture (P + Q) / 2
    js = 0.5 * (p * (lp - lm)).sum(-1) + 0.5 * (q * (lq - lm)).sum(-1)
    return kl.clamp_min(0.0), js.clamp_min(0.0)


def next_token_cross_entropy(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Per-position next-token loss (nats) of `[rows, T, vocab]` logits against `[rows, T]` ids: `[rows, T − 1]`."""
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].float().flatten(0, 1), input_ids[:, 1:].flatten(), reduction="none"
    ).view(input_ids.shape[0], -1)


def ce_loss_score(ce_clean: float, ce_zero_ablated: float, ce_spliced: float) -> float:
    """(CE_zero − CE_spliced) / (CE_zero − CE_clean); NaN when zero-ablating costs nothing."""
    gap = ce_zero_ablated - ce_clean
    return (ce_zero_ablated - ce_spliced) / gap if gap != 0 else float("nan")


@dataclass
class DownstreamStats:
    """Streaming sums of the splice metrics over batches of token rows (see the module docstring)."""

    num_positions: int = 0
    kl_sum: float = 0.0
    js_sum: float = 0.0
    ce_clean_sum: float = 0.0
    ce_zero_sum: float = 0.0
    ce_spliced_sum: float = 0.0

    @torch.no_grad()
    def update(self, input_ids: torch.Tensor, clean_logits: torch.Tensor, zero_logits: torch.Tensor,
               spliced_logits: torch.Tensor) -> None:
        """Add a batch of rows: `[rows, T]` ids and the three `[rows, T, vocab]` logits."""
        kl, js = next_token_divergences(clean_logits[:, :-1], spliced_logits[:, :-1])
        self.num_positions += kl.numel()
        self.kl_sum += kl.double().sum().item()
        self.js_sum += js.double().sum().item()
        self.ce_clean_sum += next_token_cross_entropy(clean_logits, input_ids).double().sum().item()
        self.ce_zero_sum += next_token_cross_entropy(zero_logits, input_ids).double().sum().item()
        self.ce_spliced_sum += next_token_cross_entropy(spliced_logits, input_ids).double().sum().item()

    def summary(self) -> dict[str, float]:
        """kl_divergence, js_divergence, ce_loss_clean / zero_ablated / spliced, ce_loss_score."""
        if self.num_positions == 0:
            raise ValueError("DownstreamStats is empty: no token positions were evaluated.")
        n = self.num_positions
        out = {
            "kl_divergence": self.kl_sum / n,
            "js_divergence": self.js_sum / n,
            "ce_loss_clean": self.ce_clean_sum / n,
            "ce_loss_zero_ablated": self.ce_zero_sum / n,
            "ce_loss_spliced": self.ce_spliced_sum / n,
        }
        out["ce_loss_score"] = ce_loss_score(out["ce_loss_clean"], out["ce_loss_zero_ablated"], out["ce_loss_spliced"])
        return out
