"""`hf-bae atlas`: collect each feature's samples (tokens in context, frequencies, dead/dense flags,
non-activating contexts) into a feature atlas, a `datasets.Dataset` saved to disk.

    hf-bae atlas --dictionary runs/bae --num_texts 2000 --output atlases/bae
    hf-bae atlas --dictionary runs/bae runs/topk random --output atlases/   # one stream, one atlas each
"""

from dataclasses import dataclass, field
from pathlib import Path

from ..arguments import parse
from ._common import run_or_explain, setup_logging


@dataclass
class AtlasOutputArguments:
    output: str = field(
        default="atlas",
        metadata={"help": "Where to save: the atlas folder for one dictionary, a parent folder (one sub-folder per "
                          "dictionary name) for several.", "aliases": ["--save_path"]},
    )


def main(argv: list[str]) -> int:
    from ..interpret.atlas import AtlasConfig
    from ..interpret.atlas_format import save_atlas
    from ..interpret.pipeline import CorpusArguments, DictionarySelection, build_or_reuse_atlases

    def run() -> int:
        # Parsed inside the error policy: the option dataclasses validate their values as they are built.
        corpus, dicts, atlas, output = parse(
            [CorpusArguments, DictionarySelection, AtlasConfig, AtlasOutputArguments], argv, prog="hf-bae atlas",
            description=__doc__,
        )
        setup_logging()
        items = build_or_reuse_atlases(corpus, dicts, atlas)
        out = Path(output.output)
        for entry, dataset, info, _ in items:
            path = out if len(items) == 1 else out / entry.name
            info.extra["name"] = entry.name
            save_atlas(dataset, info, path)
            print(f"{entry.name} ({info.dictionary_type}, {info.num_features} features): {info.num_tokens} tokens, "
                  f"{info.dead_features} dead, {info.dense_features} dense (> {info.dense_threshold}) -> {path}")
        return 0

    return run_or_explain("hf-bae atlas", run)
