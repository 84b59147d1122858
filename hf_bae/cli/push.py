"""`hf-bae push RUN_DIR REPO_ID`: upload a run's dictionaries to the Hub with a model card."""

import argparse
import dataclasses

from ..arguments import build_parser
from ..hub import PushOptions, push_run
from ._common import run_or_explain, setup_logging

DESCRIPTION = """Upload the trained dictionaries of a run to a Hugging Face Hub model repo: config, weights,
modeling code (for trust_remote_code), training arguments, metrics, plots and a generated model card.
One dictionary goes to the repo root; several go to one subfolder per hookpoint (layers.5.resid_post/).
The token is huggingface_hub's: run `hf auth login` first or set HF_TOKEN."""

EPILOG = """examples:
  hf-bae push runs/smollm2-l5 your-name/bae-smollm2-l5
  hf-bae push runs/sweep your-name/smollm2-dictionaries --saelens --atlas runs/sweep/atlas
  hf-bae push runs/sweep your-name/smollm2-dictionaries --output_dir preview/   # look before uploading

then load with:
  AutoModel.from_pretrained("your-name/bae-smollm2-l5")                        # with hf_bae imported
  AutoModel.from_pretrained(REPO, subfolder="layers.5.resid_post", trust_remote_code=True)
  hf_bae.load_all(REPO)"""


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def main(argv: list[str]) -> int:
    parser = build_parser([PushOptions], prog="hf-bae push", description=DESCRIPTION)
    parser.formatter_class, parser.epilog = _Formatter, EPILOG
    parser.add_argument("run_dir", help="output directory of `hf-bae train`, or one dictionary folder (save_pretrained output)")
    parser.add_argument("repo_id", help="Hub model repo, namespace/name (created if missing)")
    try:
        options, positional = parser.parse_args_into_dataclasses(args=argv)
    except ValueError as err:
        parser.error(str(err))
    setup_logging()
    return run_or_explain("hf-bae push", lambda: _push(options, positional))


def _push(options: PushOptions, positional: argparse.Namespace) -> int:
    result = push_run(positional.run_dir, positional.repo_id, **dataclasses.asdict(options))
    for name, folder in result.subfolders.items():
        where = f"{result.repo_id}, subfolder {folder}" if folder else f"{result.repo_id} (repo root)"
        print(f"{name} -> {where}")
    if result.folder is not None:
        print(f"Dry run: the upload folder is {result.folder}; nothing was uploaded.")
    else:
        print(f"Committed {result.commit_url}")
    if result.atlas_repo:
        print(f"Feature atlas: dataset {result.atlas_repo}")
    return 0
