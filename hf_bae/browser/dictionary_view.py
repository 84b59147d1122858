"""A dictionary as the browser uses it: loaded with `hf_bae.loading.load_dictionary`, its firing
features (`model.feature_values`), its decoder neighbours and the site its decoder writes; and the check
that an atlas belongs to it."""

from __future__ import annotations

import math
import os
from functools import cached_property

import torch

from ..formats import atlas_mismatches
from ..loading import load_dictionary
from ..sites import Site
from .atlas_view import Atlas


class Dictionary:
    """A loaded BAE / SAE with what the browser needs: firing features and decoder neighbours.

    Args:
        model: an hf_bae dictionary (it says its `kind`, `num_features`, `feature_values`, `fingerprint`).
        source: where it was loaded from (folder or Hub id), for messages.
    """

    def __init__(self, model: torch.nn.Module, source: str = "<memory>"):
        self.model = model.eval()
        self.config = model.config
        self.source = source

    @classmethod
    def load(cls, path_or_repo: str | os.PathLike, revision: str | None = None) -> Dictionary:
        """Load a BAE / SAE from a folder, a Hub repo id, or "namespace/name/subfolder" (a repo holding several)."""
        return cls(load_dictionary(path_or_repo, revision=revision), str(path_or_repo))

    @property
    def kind(self) -> str:
        """The model's kind ("BAE", "SAE", "TRC"), what atlases record."""
        return self.model.kind

    @property
    def score_is_deviation(self) -> bool:
        """Whether features rank by |value - usual rate| (BAE codes) rather than by value (SAE latents)."""
        return self.model.score_is_deviation

    @property
    def num_features(self) -> int:
        return self.model.num_features

    def fingerprint(self) -> str:
        return self.model.fingerprint()

    @cached_property
    def unit_decoder(self) -> torch.Tensor:
        """Decoder columns as unit rows `[m, d]` (computed once)."""
        w = self.model.decoder.weight.detach().float().T  # [m, d]
        return w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def neighbours(self, feature: int, k: int = 10) -> list[tuple[int, float]]:
        """The k features whose decoder directions have the largest cosine with `feature`'s."""
        u = self.unit_decoder
        sims = u @ u[feature]
        sims[feature] = -math.inf
        values, indices = torch.topk(sims, min(k, len(sims) - 1))
        return [(int(i), float(v)) for i, v in zip(indices, values)]

    @torch.inference_mode()
    def activations(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(fired `[n, m]` booleans, value `[n, m]`): the model's `feature_values` (latent or code value)."""
        values, fired = self.model.feature_values(hidden_states.to(self.model.dtype))
        return fired, values


def write_site(atlas: Atlas, dictionary: Dictionary) -> Site:
    """Where the dictionary's decoder writes (a transcoder's `output_site`, else the site it reads); the
    layer from its config, else from the atlas."""
    c = dictionary.config
    layer = c.layer if c.layer is not None else atlas.meta("layer")
    if layer is None:
        raise ValueError("Neither the dictionary nor the atlas records the layer it reads; set `layer` in the dictionary's config.json.")
    return Site(int(layer), getattr(c, "output_site", None) or c.site)


def check_compatible(atlas: Atlas, dictionary: Dictionary) -> None:
    """Raise a ValueError if `atlas` was not built from `dictionary` (`hf_bae.formats.atlas_mismatches`, and
    the atlas's feature ids must be the dictionary's)."""
    problems = atlas_mismatches(atlas.info, dictionary, num_rows=len(atlas))
    ids = atlas.index.feature
    if not problems and (int(ids.max()) >= dictionary.num_features or int(ids.min()) < 0):
        problems.append(f"the atlas's feature ids run outside 0–{dictionary.num_features - 1}")
    if problems:
        raise ValueError(
            f"The atlas {atlas.source} does not belong to the dictionary {dictionary.source}: "
            + "; ".join(problems)
            + ". Pass the atlas built from this dictionary (`hf-bae atlas --dictionary ...`)."
        )
