"""hf_bae: Binary Autoencoders and sparse-dictionary baselines as Hugging Face models.

`import hf_bae` registers the dictionaries with `AutoConfig` / `AutoModel`, so that
`AutoModel.from_pretrained(path_or_repo)` returns a `BinaryAutoencoder` or `SparseAutoencoder`;
`hf_bae.load_all(repo)` loads every dictionary of a repo.
"""

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
]
