"""`hf-bae harvest`: cache a language model's activations to disk in shards (or import the original
code's pickled feature sets), for training dictionaries on the same tokens many times.

Examples:

    hf-bae harvest --output_dir runs/cache --sites layers.14.resid_post --num_tokens 2000000
    hf-bae harvest --output_dir runs/cache --base_model meta-llama/Llama-3.2-1B --dataset HuggingFaceFW/fineweb \\
        --sites layers.10.resid_post layers.10.mlp_in --num_tokens 100000000 --base_model_dtype bfloat16 --storage_dtype bfloat16
    hf-bae harvest --output_dir runs/original --from_pickle feature.pkl --allow_pickle --layer 6

Run the same command again after an interruption: it resumes after the last complete shard.
"""

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from ..arguments import base_model_dtype_option, base_model_option, base_model_revision_option, parse
from ..configuration import option
from ._common import run_or_explain

_STORAGE = ("float32", "float16", "bfloat16")


@dataclass
class HarvestArguments:
    output_dir: str | None = option(None, "Folder of the cache (created). Running again with the same folder resumes an interrupted harvest.")
    sites: list[str] | None = option(
        None,
        "Sites to harvest in one pass, e.g. layers.14.resid_post layers.14.mlp_in. resid_post of layer L is "
        "hidden_states[L+1] (the original code's --layer L+1); mlp_in is the MLP input after its norm; mlp_out the MLP output.",
    )
    num_tokens: int = option(1_000_000, "Tokens to store (special tokens and outliers are not counted: they are left out).")
    base_model: str = base_model_option("embedded")
    base_model_revision: str | None = base_model_revision_option()
    dataset: str = option(
        "embedded",
        "Text: 'embedded' (State of the Union paragraphs, offline), a Hub dataset id, a local .txt/.jsonl/.csv/.parquet file or folder.",
    )
    dataset_config: str | None = option(None, "Configuration name of a Hub dataset.")
    split: str = option("train", "Dataset split.")
    text_column: str = option("text", "Column holding the text.")
    max_texts: int | None = option(None, "Read at most this many texts.")
    context_length: int = option(128, "Tokens per packed row (each row starts with BOS when the tokenizer has one).")
    batch_size: int = option(8, "Rows per forward pass.")
    shard_tokens: int | None = option(None, "Tokens per shard (default: shards of about 64 MiB).")
    storage_dtype: str = option("float32", "Storage dtype of the cache (reading always gives float32). Old name: --dtype.",
                                choices=list(_STORAGE), aliases=["--dtype"])
    base_model_dtype: str | None = base_model_dtype_option()
    device: str | None = option(None, "Device of the forward pass (default: cuda if available, else cpu).")
    exclude_special_tokens: bool = option(True, "Leave out BOS/EOS/pad and other special tokens (--no_exclude_special_tokens keeps them).")
    outlier_factor: float | None = option(None, "Leave out tokens whose activation norm exceeds this many times the batch median.")
    overwrite: bool = option(False, "Delete an existing cache in output_dir first.")
    resume: bool = option(True, "Resume an interrupted harvest in output_dir (--no_resume: refuse to touch an existing cache).")
    from_pickle: str | None = option(None, "Instead of running a model: import the original code's .pkl feature set (see --allow_pickle).")
    allow_pickle: bool = option(False, "Allow unpickling --from_pickle. Unpickling runs code: only for files you trust.")
    layer: int | None = option(None, "With --from_pickle of a layered file (the original's --layered_feature --layer): the layer to import.")
    model_name: str | None = option(None, "With --from_pickle: the model the vectors came from (recorded in the manifest).")

    def __post_init__(self) -> None:
        """Every check that needs no model or text, so a bad flag fails before minutes of loading."""
        from ..sites import parse_sites

        for flag in ("num_tokens", "context_length", "batch_size", "shard_tokens", "max_texts"):
            value = getattr(self, flag)
            if value is not None and value < 1:
                raise ValueError(f"--{flag} must be at least 1, got {value}.")
        if self.outlier_factor is not None and not (math.isfinite(self.outlier_factor) and self.outlier_factor > 0):
            raise ValueError(f"--outlier_factor must be a positive number, got {self.outlier_factor}.")
        if self.sites:
            parse_sites(self.sites)


def main(argv: Sequence[str] | None = None) -> int:
    def run() -> int:
        (args,) = parse([HarvestArguments], argv, prog="hf-bae harvest", description=__doc__.split("\n\n")[0])
        return _harvest(args)

    return run_or_explain("hf-bae harvest", run)


def _harvest(args: HarvestArguments) -> int:
    if not args.output_dir:
        raise ValueError("--output_dir is required.")
    from ..cache import ActivationCache, harvest, import_original_pickle

    start = time.perf_counter()
    if args.from_pickle:
        manifest = import_original_pickle(
            args.from_pickle,
            args.output_dir,
            allow_pickle=args.allow_pickle,
            layer=args.layer,
            site=args.sites[0] if args.sites else None,
            model_name=args.model_name,
            shard_tokens=args.shard_tokens,
            dtype=args.storage_dtype,
            overwrite=args.overwrite,
        )
    else:
        if not args.sites:
            raise ValueError("name the sites to harvest, e.g. --sites layers.14.resid_post.")
        import torch

        from ..activations.language_models import load_language_model
        from ..activations.texts import load_texts

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        texts = load_texts(  # first: a missing or empty data file fails before the model loads
            args.dataset, args.split, args.text_column, config_name=args.dataset_config, max_texts=args.max_texts
        )
        model, tokenizer = load_language_model(args.base_model, revision=args.base_model_revision, dtype=args.base_model_dtype,
                                               device=device)
        manifest = harvest(
            args.output_dir,
            model,
            tokenizer,
            texts,
            args.sites,
            num_tokens=args.num_tokens,
            shard_tokens=args.shard_tokens,
            context_length=args.context_length,
            batch_size=args.batch_size,
            dtype=args.storage_dtype,
            model_name=args.base_model,
            revision=args.base_model_revision,
            resume=args.resume,
            overwrite=args.overwrite,
            exclude_special_tokens=args.exclude_special_tokens,
            outlier_factor=args.outlier_factor,
        )
    seconds = time.perf_counter() - start
    cache = ActivationCache(args.output_dir)
    size = sum(s.num_bytes for s in manifest.shards)
    print(
        f"{cache.num_tokens:,} tokens of {', '.join(manifest.sites)} from {manifest.model} in {len(manifest.shards)} shards "
        f"({size / 2**20:,.1f} MiB, {manifest.dtype}) at {args.output_dir} [{seconds:.1f} s]"
    )
    return 0
