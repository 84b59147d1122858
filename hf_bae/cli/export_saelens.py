"""`hf-bae export-saelens SOURCE OUTPUT_DIR`: write ReLU / TopK / JumpReLU dictionaries in the SAELens
folder format (cfg.json + sae_weights.safetensors). A BAE has no SAELens equivalent and is skipped."""

import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..arguments import build_parser


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

    from ..loading import load_all
    from ..saelens import export_saelens, saelens_architecture

    try:
        dictionaries = load_all(positional.source, revision=args.revision)
    except (ValueError, OSError) as err:
        print(f"hf-bae export-saelens: error: {err}", file=sys.stderr)
        return 1
    if args.only:
        unknown = sorted(set(args.only) - set(dictionaries))
        if unknown:
            print(f"hf-bae export-saelens: error: no dictionary named {', '.join(unknown)}; there are {', '.join(dictionaries)}.", file=sys.stderr)
            return 1
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
        print("hf-bae export-saelens: error: nothing to export.", file=sys.stderr)
        return 1
    return 0
