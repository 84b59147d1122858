"""`hf-bae space`: launch the Gradio feature browser on a dictionary and its atlas.

    hf-bae space --dictionary runs/bae --atlas runs/bae-atlas
    hf-bae space --dictionary runs/bae runs/topk --atlas runs/bae-atlas runs/topk-atlas   # side by side
    hf-bae space                      # a small default atlas of the embedded model (built once)

As in every command, --dictionary names the trained dictionary and --base_model the language model
(here for Try it); the old names --model and --lm are still accepted. Every flag can also come from an
environment variable HF_BAE_<FLAG> (HF_BAE_ATLAS=dir1,dir2; also the old HF_BAE_MODEL, HF_BAE_LM),
which is how the Space in spaces_app/ is configured.
"""

from collections.abc import Sequence

from ..arguments import parse
from ..space import SpaceArguments, apply_environment, browser_from_arguments, launch
from ._common import EXIT_OK, run_or_explain


def main(argv: Sequence[str] | None = None, **launch_kwargs) -> int:
    def run() -> int:
        (args,) = parse([SpaceArguments], argv, prog="hf-bae space", description=__doc__.split("\n\n")[0])
        args = apply_environment(args)
        browser = browser_from_arguments(args)
        launch(browser, host=args.host, port=args.port, share=args.share, **launch_kwargs)
        return EXIT_OK

    return run_or_explain("hf-bae space", run)
