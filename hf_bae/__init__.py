"""hf_bae: Binary Autoencoders and sparse-dictionary baselines as Hugging Face models.

`import hf_bae` registers the dictionaries with `AutoConfig` / `AutoModel`, so that
`AutoModel.from_pretrained(path_or_repo)` returns a `BinaryAutoencoder` or `SparseAutoencoder`;
`hf_bae.load_all(repo)` loads every dictionary of a repo.

The research entry points are exported here too, and imported only when first used (as transformers'
`_LazyModule` does), so that `import hf_bae` stays light:

    hf_bae.train, hf_bae.train_dictionaries, hf_bae.TrainingArguments, hf_bae.DictionaryTrainer  (training)
    hf_bae.load_language_model, hf_bae.load_texts, hf_bae.stream_activations                     (activations)
    hf_bae.harvest, hf_bae.ActivationCache                                                       (cache)
    hf_bae.TensorSource, hf_bae.CacheSource, hf_bae.LiveSource                                   (sources)
    hf_bae.feature_set_entropy, hf_bae.EntropyAccumulator                                        (entropy)
    hf_bae.AtlasConfig, hf_bae.build_atlas, hf_bae.load_atlas, hf_bae.run_comsem,
    hf_bae.ComSemConfig, hf_bae.LLMClient, hf_bae.LLMConfig                                       (interpret)
    hf_bae.FeatureBrowser                                                                        (browser)
    hf_bae.load_dictionary                                                                       (loading)
"""

import importlib
from typing import Any

from transformers import AutoConfig, AutoModel

from .configuration import BAEConfig, DictionaryConfig, SAEConfig
from .hub import push_run
from .loading import list_dictionaries, load_all
from .modeling_bae import BAEOutput, BinaryAutoencoder
from .modeling_sae import SAEOutput, SparseAutoencoder
from .version import __version__

AutoConfig.register(BAEConfig.model_type, BAEConfig, exist_ok=True)
AutoConfig.register(SAEConfig.model_type, SAEConfig, exist_ok=True)
AutoModel.register(BAEConfig, BinaryAutoencoder, exist_ok=True)
AutoModel.register(SAEConfig, SparseAutoencoder, exist_ok=True)

# name -> the module that defines it (imported on first access).
_LAZY = {
    **dict.fromkeys(("train", "train_dictionaries", "TrainingArguments", "DictionaryTrainer"), "training"),
    **dict.fromkeys(("load_language_model", "load_texts", "stream_activations"), "activations"),
    **dict.fromkeys(("harvest", "ActivationCache"), "cache"),
    **dict.fromkeys(("TensorSource", "CacheSource", "LiveSource"), "sources"),
    **dict.fromkeys(("feature_set_entropy", "EntropyAccumulator"), "entropy"),
    **dict.fromkeys(("AtlasConfig", "build_atlas", "load_atlas", "run_comsem", "ComSemConfig", "LLMClient", "LLMConfig"),
                    "interpret"),
    "FeatureBrowser": "browser",
    "load_dictionary": "loading",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value  # later accesses skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "BAEConfig",
    "BAEOutput",
    "BinaryAutoencoder",
    "DictionaryConfig",
    "SAEConfig",
    "SAEOutput",
    "SparseAutoencoder",
    "__version__",
    "list_dictionaries",
    "load_all",
    "push_run",
    *_LAZY,
]
