"""From options to what a run reads: the one place that turns `TrainingArguments` into a language model,
an activation source and the provenance the dictionaries record. Used by `hf_bae.training.train` (and so
by `hf-bae train`, `hf-bae demo` and the Space's default build).

- `build_inputs(args, accelerator)`: a `RunInputs`, from an activation cache (`--cache`; the LM is loaded
  only for the splice metrics) or live from the LM over a text dataset (its held-out texts validate).
- `dictionary_sites(args, layer)`: which source keys (hookpoints) each dictionary kind reads and
  reconstructs.
- `source_keys(dictionaries, sites)`: the same, from the configs of dictionaries built elsewhere.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from ..formats import hookpoint
from ..modeling_base import DictionaryPreTrainedModel
from ..sources import ActivationSource, CacheSource, LiveSource, activation_provenance
from .arguments import TrainingArguments


class DictionarySites(NamedTuple):
    """Where one dictionary reads and what it reconstructs: source keys and the configs' site names."""

    input_key: str
    target_key: str | None  # None: it reconstructs its input
    site: str
    output_site: str | None


@dataclass
class RunInputs:
    """What `build_inputs` makes of the options: the activations, where they came from, and the LM (for the
    splice metrics; None when a cache run cannot or need not load it)."""

    source: ActivationSource
    provenance: dict[str, Any]  # recorded by every dictionary's config (its layer included)
    layer: int
    sites: dict[str, DictionarySites]  # dictionary kind → its sites
    language_model: Any = None
    tokenizer: Any = None

    @property
    def keys(self) -> list[str]:
        """The source keys the run reads, sorted."""
        return _keys(self.sites)


def _keys(sites: Mapping[str, DictionarySites]) -> list[str]:
    return sorted({k for s in sites.values() for k in (s.input_key, s.target_key) if k is not None})


def dictionary_sites(args: TrainingArguments, layer: int) -> dict[str, DictionarySites]:
    """kind → its sites: a transcoder reads the MLP input of `layer` and reconstructs `--transcoder_target`;
    every other kind reads and reconstructs `--site`."""
    out = {}
    for kind in args.dictionaries:
        if kind == "transcoder":
            out[kind] = DictionarySites(hookpoint(layer, "mlp_in"), hookpoint(layer, args.transcoder_target), "mlp_in",
                                        args.transcoder_target)
        else:
            out[kind] = DictionarySites(hookpoint(layer, args.site), None, args.site, None)
    return out


def source_keys(dictionaries: Mapping[str, DictionaryPreTrainedModel],
                sites: Sequence[str]) -> dict[str, tuple[str, str | None]]:
    """name → (input key, target key or None) of dictionaries built elsewhere: the source's only site, or the
    hookpoints their configs name (a config without a layer names its site as the key)."""
    out = {}
    for name, model in dictionaries.items():
        c = model.config
        if len(sites) == 1 and not c.is_transcoder:
            out[name] = (sites[0], None)
            continue
        key = c.site if c.layer is None else c.hookpoint
        target = (c.output_site if c.layer is None else c.output_hookpoint) if c.is_transcoder else None
        for k in (key, target):
            if k is not None and k not in sites:
                raise ValueError(f"Dictionary {name!r} reads {k}, which the source does not serve (it has "
                                 f"{', '.join(sites)}): pass `inputs=` or set the config's layer/site.")
        out[name] = (key, target)
    return out


def build_inputs(args: TrainingArguments, accelerator: Any) -> RunInputs:
    """The source, provenance and LM that the options name, for this process of `accelerator`."""
    if args.cache is not None:
        return _cache_inputs(args, accelerator)
    return _live_inputs(args, accelerator)


def _cache_inputs(args: TrainingArguments, accelerator: Any) -> RunInputs:
    from ..activations import load_language_model
    from ..cache import ActivationCache

    cache = ActivationCache(args.cache)
    layers = cache.manifest.layers
    if args.layer is None and len(layers) != 1:
        raise ValueError(f"The cache at {args.cache} holds layers {layers}: choose one with --layer.")
    layer = args.layer if args.layer is not None else layers[0]
    sites = dictionary_sites(args, layer)
    keys = _keys(sites)
    explicit_model = args.base_model if args.base_model != "embedded" else None
    source = CacheSource(cache, keys, train_fraction=args.train_fraction, seed=args.seed,
                         rank=accelerator.process_index, world_size=accelerator.num_processes, model_name=explicit_model)
    inputs = RunInputs(source, {"layer": layer, **source.provenance()}, layer, sites)
    lm_name = explicit_model or cache.manifest.model
    if args.splice_rows and cache.manifest.has_tokens and lm_name:
        # The splice metrics need the LM the cache was harvested from.
        try:
            inputs.language_model, inputs.tokenizer = load_language_model(
                lm_name, revision=args.base_model_revision or cache.manifest.revision, dtype=args.base_model_dtype,
                device=accelerator.device)
        except (OSError, ValueError) as exc:
            warnings.warn(f"Splice metrics skipped: could not load {lm_name} ({exc}). Pass --splice_rows 0 to "
                          "silence this.", stacklevel=4)
    return inputs


def _live_inputs(args: TrainingArguments, accelerator: Any) -> RunInputs:
    from ..activations import load_language_model, load_texts

    rank, world = accelerator.process_index, accelerator.num_processes
    language_model, tokenizer = load_language_model(args.base_model, revision=args.base_model_revision,
                                                    dtype=args.base_model_dtype, device=accelerator.device)
    num_layers = language_model.config.num_hidden_layers
    layer = args.layer if args.layer is not None else num_layers // 2
    if not 0 <= layer < num_layers:
        raise ValueError(f"--layer {layer} is out of range: {args.base_model} has layers 0..{num_layers - 1}.")
    sites = dictionary_sites(args, layer)

    def load(split: str, max_texts: int | None = None):
        return load_texts(args.dataset, split=split, text_column=args.text_column, config_name=args.dataset_config,
                          data_files=args.data_files, streaming=True, max_texts=max_texts)

    # Unless a validation split is named, the first --validation_texts texts are held out (never trained on).
    held_out = 0 if args.validation_split else args.validation_texts
    texts = lambda: itertools.islice(load(args.split), held_out + rank, None, world)  # noqa: E731
    if args.validation_split:
        validation_texts = lambda: load(args.validation_split, args.validation_texts)  # noqa: E731
    else:
        validation_texts = (lambda: itertools.islice(load(args.split), held_out)) if held_out else None  # noqa: E731
    provenance = {"layer": layer, **activation_provenance(
        args.base_model, args.base_model_revision, dataset=args.dataset, context_length=args.context_length,
        exclude_special_tokens=args.exclude_special_tokens, outlier_factor=args.outlier_factor)}
    keys = _keys(sites)
    source = LiveSource(language_model, tokenizer, texts, keys, validation_texts=validation_texts,
                        context_length=args.context_length, lm_batch_size=args.lm_batch_size,
                        shuffle_rows=args.shuffle_rows, exclude_special_tokens=args.exclude_special_tokens,
                        outlier_factor=args.outlier_factor, device=accelerator.device, seed=args.seed,
                        rank=rank, provenance=provenance)
    return RunInputs(source, provenance, layer, sites, language_model, tokenizer)
