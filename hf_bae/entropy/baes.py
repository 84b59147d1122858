"""The BAEs an entropy study reads: found in a folder (`find_baes`), or trained now (`train_baes`, with
`hf_bae.training.train_dictionaries`, the brief run every caller shares) on the study's language model or on
activations already read."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..configuration import BAEConfig
from ..formats import CONFIG_FILE
from ..loading import load_dictionary
from .arguments import EstimatorArguments, SourceArguments, TrainOptions, study_texts


def _holds_bae(folder: Path) -> bool:
    return json.loads((folder / CONFIG_FILE).read_text()).get("model_type") == BAEConfig.model_type


def find_baes(folder: str | Path) -> dict[str, Any]:
    """name → BAE for every sub-folder (or the folder itself) holding a saved BAE."""
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"--bae_dir {folder} is not a folder.")
    candidates = ([root] if (root / CONFIG_FILE).is_file()
                  else sorted(p for p in root.iterdir() if (p / CONFIG_FILE).is_file()))
    out = {path.name: load_dictionary(path, kind="BAE") for path in candidates if _holds_bae(path)}
    if not out:
        raise ValueError(f"No BAE found in {folder}: expected sub-folders with a {CONFIG_FILE} of model_type "
                         f"{BAEConfig.model_type} (train them with --train).")
    return out


def train_baes(output_dir: str | Path, language_model: Any, tokenizer: Any, source: SourceArguments,
               est: EstimatorArguments, train: TrainOptions, dictionary: Any, bae: Any, *,
               sites: Mapping[str, str] | None = None, tensors: Mapping[str, Any] | None = None,
               provenance: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Train one BAE per name and save it to `output_dir/<name>`; returns name → the saved BAE, reloaded.

    Args:
        sites: name → hookpoint read live from `language_model`, on the texts after the first
            `train.eval_texts` (those are held out for evaluation).
        tensors: name → `[n, d]` activations already read (instead of `sites`); `provenance` then says
            where they come from (layer, site).
        dictionary, bae: the `DictionaryArguments` / `BAEArguments` of `hf_bae.training`.
    """
    from ..activations import model_device
    from ..sources import LiveSource, TensorSource, activation_provenance
    from ..training import dictionaries_for_keys, train_dictionaries

    if (sites is None) == (tensors is None):
        raise ValueError("train_baes needs either sites= (live activations) or tensors=, not both.")
    if tensors is not None:
        data = TensorSource(dict(tensors))
        keys = {name: name for name in tensors}
    else:
        data = LiveSource(language_model, tokenizer, lambda: study_texts(source, skip=train.eval_texts),
                          sorted(set(sites.values())), context_length=source.context_length,
                          lm_batch_size=source.lm_batch_size, shuffle_rows=source.lm_batch_size * 4,
                          device=model_device(language_model), seed=est.seed)
        keys = dict(sites)
    recorded = {**activation_provenance(source.base_model, source.base_model_revision, dataset=source.dataset,
                                        context_length=source.context_length), **(provenance or {})}
    dictionaries, inputs = dictionaries_for_keys(keys, {k: data.hidden_size(k) for k in keys.values()}, kind="bae",
                                                 dictionary=dataclasses.asdict(dictionary), bae=dataclasses.asdict(bae),
                                                 provenance=recorded)
    train_dictionaries(dictionaries, data, output_dir, inputs=inputs, max_steps=train.train_steps,
                       batch_size=train.train_batch_size, learning_rate=train.train_learning_rate, seed=est.seed,
                       validation_tokens=0, progress=est.progress, log_every=max(1, train.train_steps // 10),
                       cpu=(source.device == "cpu"))
    return {name: load_dictionary(Path(output_dir) / name, kind="BAE") for name in keys}
