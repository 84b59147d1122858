"""`hf-bae export-saelens SOURCE OUTPUT_DIR`: write ReLU / TopK / JumpReLU dictionaries in the SAELens
folder format (cfg.json + sae_weights.safetensors). A BAE has no SAELens equivalent and is skipped."""

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..arguments import build_parser
from ._common import run_or_explain


@dataclass
class ExportSAELensArguments:
    _argument_group_name = "export options"

    revision: str | None = field(default=None, metadata={"help": "Revision of SOURCE when it is a Hub repo."})
    only: list[str] | None = field(default=None, metadata={"help": "Export only these dictionaries (names as `hf_bae.list_dictionaries` gives them)."})


DESCRIPTION = """Export sparse autoencoders to the SAELens folder format, for SAELens, SAEBench and Neuronpedia
tooling: `SAE.load_from_disk(OUTPUT_DIR)` then gives the same encodings as hf_bae. SOURCE is a dictionary
folder, a run directory or a Hub repo id; several dictionaries go to OUTPUT_DIR/NAME/. A binary autoencoder
has no SAELens equivalent (no SAELens architecture computes binary codes): BAEs are skipped."""


def main(argv: list[str]) -> int:
    parser = build_parser([ExportSAELensArguments], prog="hf-bae export-saelens", description=DESCRIPTION)
    parser.add_argument("source", help="dictionary folder, run directory, or Hub repo id")
    parser.add_argument("output_dir", help="where to write the SAELens folder(s)")
    args, positional = parser.parse_args_into_dataclasses(args=argv)
    return run_or_explain("hf-bae export-saelens", lambda: _export(args, positional))


def _export(args: ExportSAELensArguments, positional: argparse.Namespace) -> int:
    from ..loading import load_all
    from ..saelens import export_saelens, saelens_architecture

    dictionaries = load_all(positional.source, revision=args.revision)
    if args.only:
        unknown = sorted(set(args.only) - set(dictionaries))
        if unknown:
            raise ValueError(f"no dictionary named {', '.join(unknown)}; there are {', '.join(dictionaries)}.")
        dictionaries = {name: model for name, model in dictionaries.items() if name in args.only}
    output = Path(positional.output_dir)
    exported, skipped = [], []
    for name, model in dictionaries.items():
        try:
            saelens_architecture(model.config)
        except ValueError as err:
            skipped.append(f"{name}: {err}")
            continue
        target = export_saelens(model, output / name if len(dictionaries) > 1 else output)
        exported.append(target)
        print(f"{name} -> {target}")
    for line in skipped:
        print(f"skipped {line}", file=sys.stderr)
    if not exported:
        raise ValueError("nothing to export (no dictionary here has a SAELens equivalent).")
    return 0
