"""How an atlas scores features: the dictionaries it reads (trained ones, `RandomBaseline`), their
identity, and the per-token feature scores (the paper's, `util/interp_score.py` of the original code):

- BAE: |v_j − mean(v_j)|, the deviation of the feature from its usual state (v = the code; for a
  k-bit feature its value in [0, 1]), the mean taken over all corpus tokens. The original ranks
  log₂(|·| + 1e-6), the same order. Ties (features of equal frequency in the same state) are broken
  by |pre-step logit|: the feature further from its threshold is more firmly in its state. (The
  original broke them by feature index, which hands spurious samples to low-index features.)
- SAE / TopK / JumpReLU / transcoder: the latent's value; with `sae_rescale` (the original's
  `--SAE_rescale`), z-scored per latent over the corpus, (a − mean) / (std + 1e-6). Ties (e.g. the
  zeros of latents that do not fire) are broken by the pre-activation.
- random (baseline): i.i.d. N(0, 1) scores, seeded; no model. Its "frequency" is how often a
  feature is picked.

The BAE score (and the rescaled SAE score) needs corpus means: `FeatureScorer` gathers them in a
first pass (`observe`, `finish_first_pass`) before it scores (`score`).

Events. What a feature's samples show is its *event* (`FeatureScorer.events` / `event_labels`, the atlas's `event` column):

- SAE / transcoder latents and usually-off BAE codes: "on", the tokens where the feature fires;
- a usually-on BAE code (mean value > 0.5 over the corpus, e.g. 1,311 of 2,304 codes of the demo BAE):
  "off", the tokens where it switches off. Its deviation score is largest exactly there, and its
  negatives are tokens in its usual state (on), so the specificity test contrasts the two states.
- Multi-bit BAE features (values in [0, 1]): the usual state is given by the mean value the same way
  (usually on when mean > 0.5), and the event is a deviation from it: a value above the mean for a
  usually-off feature ("on": it rises), below the mean for a usually-on one ("off": it drops). For
  1-bit codes this is exactly code 1 vs code 0.
- random: None; its "event" is being picked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..metrics import FeatureStats

DICTIONARY_TYPES = ("BAE", "SAE", "TRC", "random")  # what an atlas can be built from


@dataclass(frozen=True)
class RandomBaseline:
    """The random "dictionary" of the original: i.i.d. N(0, 1) scores per token and feature."""

    num_features: int
    seed: int = 0

    kind = "random"
    score_is_deviation = False

    def fingerprint(self) -> str:
        return f"random:num_features={self.num_features}:seed={self.seed}"


def dictionary_type(dictionary: Any) -> str:
    """"BAE", "SAE", "TRC" (a transcoder) or "random": the dictionary's `kind`."""
    kind = getattr(dictionary, "kind", None)
    if not isinstance(kind, str):
        raise TypeError(f"Not a dictionary: {type(dictionary).__name__}. Load one with AutoModel.from_pretrained after `import hf_bae`.")
    return kind


def dictionary_fingerprint(dictionary: Any) -> str:
    """SHA-256 of a dictionary's config and weights (its `fingerprint()`)."""
    return dictionary.fingerprint()


def bae_deviation(values: torch.Tensor, mean_values: torch.Tensor) -> torch.Tensor:
    """The paper's BAE score |v − mean(v)| (its log₂(· + 1e-6) ranks the same)."""
    return (values - mean_values).abs()


def zscore(latents: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """The original's SAE rescaling (a − mean) / (std + eps), population std."""
    return (latents - mean) / (std + eps)


def top_k_features(primary: torch.Tensor, k: int, secondary: torch.Tensor | None = None) -> torch.Tensor:
    """Indices `[n, k]` of the k largest `primary` scores per row, ties broken by the larger `secondary`.

    Exact lexicographic top-k with two `topk` calls: every feature strictly above the k-th value is
    in; the remaining slots go to the features equal to it, by `secondary`.
    """
    k = min(k, primary.shape[-1])
    if secondary is None:
        return primary.topk(k, dim=-1).indices
    kth = primary.topk(k, dim=-1).values[..., -1:]
    key = torch.where(primary > kth, torch.full_like(secondary, math.inf),
                      torch.where(primary == kth, secondary, torch.full_like(secondary, -math.inf)))
    return key.topk(k, dim=-1).indices


class FeatureScorer:
    """Turns a batch of activations into per-token feature scores for one dictionary (state: corpus statistics)."""

    needs_first_pass = False

    def __init__(self, dictionary: Any, sae_rescale: bool = False):
        self.dictionary = dictionary
        self.kind = dictionary_type(dictionary)
        self.sae_rescale = sae_rescale
        self.site: str | None = None
        if self.kind == "random":
            self.num_features = dictionary.num_features
            self.bits = 1
            self._gen = torch.Generator().manual_seed(dictionary.seed)
        else:
            c = dictionary.config
            if c.layer is None:
                raise ValueError(
                    "This dictionary's config does not record its layer: set `layer` and `site` in its config.json "
                    "(the hidden states it was trained on) before building an atlas."
                )
            self.site = c.hookpoint
            self.num_features = c.num_latents
            self.bits = getattr(c, "bits", 1)
            self.needs_first_pass = dictionary.score_is_deviation or sae_rescale
        self.stats = FeatureStats(num_features=self.num_features, num_codes=self.num_features * self.bits,
                                  binary=self.kind == "BAE")
        self._sum = torch.zeros(self.num_features, dtype=torch.float64)
        self._sq_sum = torch.zeros(self.num_features, dtype=torch.float64)
        self._count = 0
        self.mean: torch.Tensor | None = None
        self.std: torch.Tensor | None = None

    @torch.no_grad()
    def _encode(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(values [n, m] float32, fired [n, m] bool, tie-break key [n, m], codes [n, m·bits] | None)."""
        a = self.dictionary.feature_activity(hidden.to(self.dictionary.device))
        return a.values.cpu(), a.fired.cpu(), a.firmness.cpu(), None if a.codes is None else a.codes.cpu()

    def observe(self, activations: dict[str, torch.Tensor]) -> None:
        """First pass: corpus statistics."""
        values, fired, _, codes = self._encode(activations[self.site])
        self.stats.update(fired, codes=codes)
        v = values.double()
        self._sum += v.sum(0)
        self._sq_sum += v.pow(2).sum(0)
        self._count += v.shape[0]

    def finish_first_pass(self) -> None:
        if self._count == 0:
            raise ValueError("The corpus gave no tokens: check the dataset, split and text column.")
        self.mean = self._sum / self._count
        self.std = (self._sq_sum / self._count - self.mean.pow(2)).clamp_min(0).sqrt()

    def score(self, activations: dict[str, torch.Tensor], n: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        """(primary score [n, m], tie-break [n, m] | None, fired [n, m] | None, activation value [n, m])."""
        if self.kind == "random":
            scores = torch.randn(n, self.num_features, generator=self._gen)
            return scores, None, None, scores
        values, fired, tie, codes = self._encode(activations[self.site])
        if not self.needs_first_pass:
            self.stats.update(fired, codes=codes)
        if self.dictionary.score_is_deviation:
            primary = bae_deviation(values, self.mean.float())
        elif self.sae_rescale:
            primary = zscore(values, self.mean.float(), self.std.float())
        else:
            primary = values
        return primary, tie, fired, values

    @property
    def samples_are_events(self) -> bool:
        """Whether every kept sample must be an event (deviation scorers: a BAE token in its usual state
        has nothing to explain, so the quota's picks there are not kept as samples)."""
        return self.kind != "random" and bool(self.dictionary.score_is_deviation)

    def events(self, values: torch.Tensor, fired: torch.Tensor) -> torch.Tensor:
        """`[n, m]` bool: where each feature is in its event state (see the module docstring)."""
        if not self.samples_are_events:
            return fired
        mean = self.mean.to(torch.float64)
        v = values.to(torch.float64)
        return torch.where(self.usually_on, v < mean, v > mean)

    @property
    def usually_on(self) -> torch.Tensor:
        """`[m]` bool: deviation features whose mean value exceeds 0.5 (their event is switching off)."""
        if self.mean is None:
            return torch.zeros(self.num_features, dtype=torch.bool)
        return self.mean > 0.5

    def event_labels(self) -> list[str | None]:
        """Per feature, what its samples show: "on", "off" (a usually-on BAE code) or None (random)."""
        if self.kind == "random":
            return [None] * self.num_features
        if not self.samples_are_events:
            return ["on"] * self.num_features
        return ["off" if on else "on" for on in self.usually_on.tolist()]


_SCORE_DEFINITIONS = {
    "BAE": "|code - mean code| (the paper's deviation from the usual state), ties by |pre-step logit|; samples are "
           "deviation events (code on for a usually-off code, off for a usually-on one), negatives the usual state",
    "SAE": "latent value, ties by pre-activation",
    "SAE_rescaled": "(latent - mean) / (std + 1e-6) per latent, ties by pre-activation",
    "random": "i.i.d. N(0, 1)",
}


def score_definition(kind: str, rescale: bool) -> str:
    """The score an atlas of `kind` ranks by, in words (recorded in `AtlasInfo.score`)."""
    if kind in ("SAE", "TRC"):
        return _SCORE_DEFINITIONS["SAE_rescaled" if rescale else "SAE"]
    return _SCORE_DEFINITIONS[kind]
