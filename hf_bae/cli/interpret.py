"""`hf-bae interpret`: ComSem. Build the feature atlases (or read them), explain each feature with an
LLM, judge the explanations on held-out samples, score them, and write a table that compares the
dictionaries side by side (always include the random baseline: ComSem's chance level is high).

    export OPENAI_API_KEY=...    # never written anywhere
    hf-bae interpret --dictionary runs/bae runs/topk random --num_texts 8192 --output_dir interp/
    hf-bae interpret --dictionary runs/bae random --backend transformers --max_features 50   # local, offline
    hf-bae interpret --dictionary runs/bae random --dry_run      # how many calls, what cost
    hf-bae interpret --dictionary runs/bae --base_url http://localhost:8000/v1 --llm my-model   # vLLM etc.
"""

from dataclasses import dataclass, field

from ..arguments import parse
from ._common import run_or_explain, setup_logging


@dataclass
class InterpretArguments:
    output_dir: str = field(default="interpret", metadata={"help": "Where results go (see hf_bae.interpret.pipeline).",
                                                           "aliases": ["--save_path"]})
    atlas: list[str] = field(default_factory=list, metadata={
        "help": "Interpret these saved atlases instead of building them; with --dictionary, one dictionary per atlas, "
                "checked to be the one each atlas was built from."})
    no_interpret: bool = field(default=False, metadata={"help": "Only build the atlases (the original's --no_interpret)."})
    no_write_dictionary: bool = field(default=False, metadata={
        "help": "Ignored, kept for old command lines: comsem.json is written only under --output_dir, beside the atlas "
                "that produced it (give it to `hf-bae push --comsem`), never into the dictionaries' folders."})


def main(argv: list[str]) -> int:
    from ..interpret.atlas import AtlasConfig
    from ..interpret.comsem import ComSemConfig
    from ..interpret.client import LLMConfig
    from ..interpret.pipeline import CorpusArguments, DictionarySelection, run_interpret

    def run() -> int:
        # Parsed inside the error policy: the option dataclasses validate their values as they are built.
        corpus, dicts, atlas, llm, comsem, args = parse(
            [CorpusArguments, DictionarySelection, AtlasConfig, LLMConfig, ComSemConfig, InterpretArguments], argv,
            prog="hf-bae interpret", description=__doc__,
        )
        setup_logging()
        run_interpret(corpus, dicts, atlas, llm, comsem, args.output_dir, atlas_paths=args.atlas,
                      no_interpret=args.no_interpret)
        return 0

    return run_or_explain("hf-bae interpret", run)
