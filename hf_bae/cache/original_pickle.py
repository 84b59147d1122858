"""Importing the original code's pickled feature sets (`.pkl`) into an activation cache. Unpickling runs
arbitrary code, so `import_original_pickle` refuses unless the caller passes `allow_pickle=True`."""

import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..activations.language_models import model_name_of
from ..sites import Site
from .manifest import STORAGE_DTYPES, CacheManifest
from .writer import ShardWriter, default_shard_tokens, nothing_left_on_failure, open_for_writing

__all__ = ["import_original_pickle"]


@nothing_left_on_failure
def import_original_pickle(
    pkl_path: "str | os.PathLike",
    cache_dir: "str | os.PathLike",
    *,
    allow_pickle: bool = False,
    layer: int | None = None,
    site: "Site | str | None" = None,
    model_name: str | None = None,
    shard_tokens: int | None = None,
    dtype: str = "float32",
    overwrite: bool = False,
) -> CacheManifest:
    """Convert the original code's `.pkl` feature set into a shard cache.

    The original `feature_reconstruction.py --feature_path X.pkl [--layered_feature --layer L]` reads
    a pickled list of 1-D tensors `[d]`, or (layered) a list of such lists, one per entry of the
    model's `output_hidden_states` (0 = embeddings).

    Args:
        allow_pickle: must be True: unpickling runs arbitrary code, so only import files you trust.
        layer: the original's `--layer` (with `--layered_feature`); negative counts from the end.
        site: the site the vectors are from. Default with `layer`: `layers.{L-1}.resid_post`
            (hidden_states[L] is the output of decoder layer L-1); without `layer` it must be given.
        model_name: the model they came from, if known (recorded, checked by `check_compatible`).
    """
    pkl_path = Path(pkl_path)
    if not allow_pickle:
        raise ValueError(
            f"Refusing to unpickle {pkl_path}: loading a pickle runs arbitrary code. If you made this file or trust it, "
            "pass allow_pickle=True (hf-bae harvest --from_pickle ... --allow_pickle)."
        )
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"dtype={dtype!r} is not supported; choose one of {', '.join(STORAGE_DTYPES)}.")
    if not pkl_path.is_file():
        raise FileNotFoundError(f"Pickle {pkl_path} does not exist: pass the original code's feature .pkl (--from_pickle).")
    try:
        with open(pkl_path, "rb") as f:
            data = pickle.load(f)  # noqa: S301 - explicitly allowed by the caller
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError) as error:
        raise ValueError(f"Cannot unpickle {pkl_path} ({type(error).__name__}: {error}): it is truncated or not a "
                         "pickle of the original code's feature set.") from error
    if not isinstance(data, (list, tuple)) or len(data) == 0:
        raise ValueError(f"{pkl_path} holds {type(data).__name__}, not a non-empty list of vectors.")
    if layer is not None:
        if not _is_layered(data):
            raise ValueError(f"{pkl_path} is not layered (a list of lists of vectors): drop layer= / --layer.")
        index = layer if layer >= 0 else len(data) + layer
        if not 0 <= index < len(data):
            raise ValueError(f"layer={layer} is out of range: {pkl_path} holds {len(data)} layers.")
        data = data[index]
        if site is None:
            if index == 0:
                raise ValueError("Layer 0 of a layered pickle is the embeddings, not a decoder site: pass site= explicitly.")
            site = Site(index - 1, "resid_post")
    elif _is_layered(data):
        raise ValueError(f"{pkl_path} is layered (one list of vectors per layer): choose one with layer= (--layer).")
    if site is None:
        raise ValueError(
            "Say which site these vectors are from, e.g. site='layers.10.resid_post' (the original's hidden_states[11]); "
            "for a layered pickle, layer= sets it."
        )
    site = Site.parse(site)
    if len(data) == 0:
        raise ValueError(f"{pkl_path} holds no vectors at that layer.")
    rows = _checked_rows(data, pkl_path)  # every item checked before anything is written
    d = rows[0].shape[-1]
    key = str(site)
    manifest = CacheManifest(
        model=model_name_of(model_name) if model_name else None,
        sites=[key],
        hidden_sizes={key: int(d)},
        dtype=dtype,
        context_length=None,
        text_source={"dataset": f"legacy pickle {pkl_path.name}"},
        has_tokens=False,
    )
    cache_dir = Path(cache_dir)
    manifest = open_for_writing(cache_dir, manifest, resume=False, overwrite=overwrite, compare=())
    writer = ShardWriter(cache_dir, manifest)
    per_shard = shard_tokens or default_shard_tokens(d * STORAGE_DTYPES[dtype].itemsize)
    pending: list[torch.Tensor] = []
    count = 0
    for vec in rows:
        pending.append(vec)
        count += vec.shape[0]
        while count >= per_shard:
            block = torch.cat(pending)
            writer.write({key: block[:per_shard]}, {})
            pending, count = [block[per_shard:]], count - per_shard
    if count:
        writer.write({key: torch.cat(pending)}, {})
    manifest.target_tokens = manifest.num_tokens
    manifest.complete = True
    manifest.save(cache_dir)
    return manifest


def _checked_rows(data: Sequence[Any], pkl_path: Path) -> list[torch.Tensor]:
    """The items as `[n, d]` float32 tensors, all of the first item's width; an error names the first bad one."""
    rows = []
    for i, item in enumerate(data):
        try:
            vec = torch.as_tensor(item).detach().to("cpu", torch.float32)
        except (TypeError, ValueError, RuntimeError) as error:
            raise ValueError(f"Item {i} of {pkl_path} is not a vector ({type(item).__name__}: {error}).") from error
        vec = vec[None] if vec.dim() == 1 else vec
        if vec.dim() != 2 or (rows and vec.shape[-1] != rows[0].shape[-1]):
            expected = f"vectors of width {rows[0].shape[-1]}, as the first" if rows else "1-D vectors"
            raise ValueError(f"Item {i} of {pkl_path} has shape {tuple(vec.shape)}: expected {expected}.")
        rows.append(vec)
    return rows


def _is_layered(data: Sequence[Any]) -> bool:
    """A list of lists of vectors (one list per layer), as opposed to a list of vectors."""
    item = data[0]
    if not isinstance(item, (list, tuple)) or len(item) == 0:
        return False
    return not isinstance(item[0], (int, float))  # a vector given as a plain list of numbers is not a layer
