"""`hf-bae import-original MODEL_PT PARAMS OUTPUT_DIR`: turn a model trained by the original research code
(hc495/Binary_Autoencoder) into an hf_bae dictionary folder."""

import argparse
from dataclasses import dataclass, field

from ..arguments import build_parser
from ._common import run_or_explain


@dataclass
class ImportOriginalArguments:
    _argument_group_name = "import options"

    kind: str | None = field(
        default=None,
        metadata={"help": "bae or sae (the original's --type BAE / SAE / TRC); default: sae when PARAMS names an inner_activation.",
                  "choices": ["bae", "sae"]},
    )
    base_model: str | None = field(
        default=None, metadata={"help": "The LM the activations came from (the original's --LM_name), recorded as provenance.", "aliases": ["--LM_name"]}
    )
    layer: int | None = field(
        default=None,
        metadata={"help": "The original's --layer L (an index into hidden_states); recorded as decoder layer L-1, site resid_post."},
    )
    k: int = field(default=10, metadata={"help": "The original's --topk (not recorded in its parameters).", "aliases": ["--topk"]})
    jumprelu_threshold: float = field(
        default=0.5, metadata={"help": "The original's --theta (not recorded in its parameters).", "aliases": ["--theta"]}
    )
    allow_pickle: bool = field(
        default=False, metadata={"help": "Allow PARAMS to be a .pkl (log_<time>.pkl or a hand-written config .pkl): unpickling runs code."}
    )


DESCRIPTION = """Import a BAE or baseline SAE trained by the original code. MODEL_PT is its model_<time>.pt (a state_dict,
read with weights_only=True); PARAMS its experiment_params.txt (plain text, safe), or with --allow_pickle the
log_<time>.pkl / the config .pkl that evaluate_interp.py --config_path reads. OUTPUT_DIR then loads with
AutoModel.from_pretrained and works with every hf-bae command (interpret, space, push, entropy)."""


def main(argv: list[str]) -> int:
    parser = build_parser([ImportOriginalArguments], prog="hf-bae import-original", description=DESCRIPTION)
    parser.add_argument("model_pt", help="the original run's model_<time>.pt")
    parser.add_argument("params", help="the original run's experiment_params.txt (or a .pkl with --allow_pickle)")
    parser.add_argument("output_dir", help="where to write config.json + model.safetensors")
    args, positional = parser.parse_args_into_dataclasses(args=argv)
    return run_or_explain("hf-bae import-original", lambda: _import(args, positional))


def _import(args: ImportOriginalArguments, positional: argparse.Namespace) -> int:
    from ..original import convert_original_checkpoint

    model = convert_original_checkpoint(
        positional.model_pt, positional.params, allow_pickle=args.allow_pickle, kind=args.kind,
        base_model=args.base_model, layer=args.layer, k=args.k, jumprelu_threshold=args.jumprelu_threshold,
    )
    model.save_pretrained(positional.output_dir)
    config = model.config
    print(f"{type(model).__name__} (d={config.hidden_size}, m={config.num_latents}) -> {positional.output_dir}")
    return 0
