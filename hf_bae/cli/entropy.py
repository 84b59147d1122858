"""`hf-bae entropy`: feature-set entropy of a language model's hidden states, read by trained BAEs.

Sub-commands (each has its own --help):

    estimate   entropy of a BAE on a dataset, at the BAE's own site: one number with an error bar
    layers     bits per layer (one BAE per layer; --train trains them first): CSV + PNG
    icl        bits and LM accuracy against the number of in-context demonstrations k = 0..K: CSV + PNG
    positions  bits per token position (one BAE per position, as the paper; --train trains them): CSV + PNG
    steer      ICL steering: a task vector from the BAE features that k-shot prompts switch, added in
               0-shot prompts, against the centroid-difference vector: JSON

Examples (offline, on the embedded model and corpus):

    hf-bae entropy layers --train --layers 3 9 15 21 --output_dir runs/entropy_layers
    hf-bae entropy layers --bae_dir runs/entropy_layers/baes --output_dir runs/entropy_layers
    hf-bae entropy icl --bae runs/entropy_layers/baes/layer_15 --task antonyms --max_shots 4
    hf-bae entropy positions --train --layer 9 --max_position 32 --output_dir runs/entropy_positions
    hf-bae entropy steer --bae runs/entropy_layers/baes/layer_15 --task country_capital --shots 4
    hf-bae entropy estimate --bae runs/demo/bae --num_tokens 50000

Numbers are in bits: the Miller–Madow corrected sum of per-code binary entropies with a Poisson
bootstrap interval (texts or prompts are the resampled units). The sum equals the joint entropy only
for independent codes: check `mean_abs_correlation` and `max_pairwise_mutual_information_bits`.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence

from ..arguments import parse
from ..entropy.arguments import (
    EstimateArguments,
    EstimatorArguments,
    ICLArguments,
    LayersArguments,
    PositionsArguments,
    SourceArguments,
    SteerArguments,
    TrainOptions,
)
from ._common import EXIT_OK, EXIT_USAGE, run_or_explain, setup_logging

SUBCOMMANDS = ("estimate", "layers", "icl", "positions", "steer")
_SPECIFIC = {"estimate": EstimateArguments, "layers": LayersArguments, "icl": ICLArguments,
             "positions": PositionsArguments, "steer": SteerArguments}
_DESCRIPTIONS = {
    "estimate": "Entropy of a trained BAE's codes over a dataset's tokens at the BAE's own site.",
    "layers": "Bits per layer: one BAE per layer (from --bae_dir, or --train --layers ...), the same tokens for all.",
    "icl": "Entropy at the last prompt token and the LM's accuracy against the number of demonstrations k = 0..K.",
    "positions": "Bits per token position, one BAE per position (the paper's setting).",
    "steer": "ICL steering with a BAE task vector against the centroid-difference task vector (0-shot accuracy).",
}


# One printed line per point of a curve (positions prints only where its files are).
_POINT_LINES = {
    "layers": lambda r: (f"layer {r['layer']:>3}: {r['miller_madow_bits']:9.2f} bits [{r['ci_low']:.2f}, "
                         f"{r['ci_high']:.2f}]  mean|corr| {r['mean_abs_correlation']:.3f}"),
    "icl": lambda r: (f"k={r['shots']}: {r['miller_madow_bits']:8.2f} bits [{r['ci_low']:.2f}, {r['ci_high']:.2f}]  "
                      f"accuracy {r['accuracy']:.2f}"),
}


def _run(name: str, source, est, train, dictionary, bae, specific) -> int:
    """Call the study and print what it measured."""
    from ..entropy import studies

    if name == "estimate":
        estimate = studies.estimate_study(source, est, specific)
        print(f"{estimate.site}: {estimate.report.summary()}\nWritten: {estimate.path}")
        return EXIT_OK
    if name == "steer":
        steer = studies.steer_study(source, est, train, dictionary, bae, specific)
        r = steer.result
        print(f"{steer.task} at {steer.site}, {r.num_eval_prompts} held-out queries: 0-shot {r.accuracy_zero_shot:.2f}, "
              f"{r.shots}-shot {r.accuracy_k_shot:.2f}, 0-shot + BAE vector {r.accuracy_bae_vector:.2f} "
              f"({r.bae_gain:+.2f}), 0-shot + centroid vector {r.accuracy_centroid_vector:.2f} "
              f"({r.centroid_gain:+.2f})\nWritten: {steer.path}")
        return EXIT_OK
    study = {"layers": studies.layers_study, "icl": studies.icl_study, "positions": studies.positions_study}[name]
    curve = study(source, est, train, dictionary, bae, specific)
    if name in _POINT_LINES:
        for row in curve.rows:
            print(_POINT_LINES[name](row))
    print(f"Written: {curve.csv}, {curve.plot} [{curve.seconds:.1f} s]")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """`hf-bae entropy SUBCOMMAND [options]`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return EXIT_OK
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"hf-bae entropy: unknown sub-command {name!r}; choose one of {', '.join(SUBCOMMANDS)}.", file=sys.stderr)
        return EXIT_USAGE
    from ..training import BAEArguments, DictionaryArguments

    classes = [_SPECIFIC[name], SourceArguments, EstimatorArguments]
    if name != "estimate":
        classes += [TrainOptions, DictionaryArguments, BAEArguments]
    setup_logging()

    def run() -> int:
        # parsed inside run_or_explain: an option out of range (--confidence 1.5) is one line, exit 2
        parsed = parse(classes, rest, prog=f"hf-bae entropy {name}", description=_DESCRIPTIONS[name])
        specific, source, est = parsed[:3]
        train, dictionary, bae = parsed[3:] if name != "estimate" else (TrainOptions(), None, None)
        with warnings.catch_warnings():
            warnings.simplefilter("default")  # EntropyWarnings are printed once each, not raised
            return _run(name, source, est, train, dictionary, bae, specific)

    return run_or_explain(f"hf-bae entropy {name}", run)


if __name__ == "__main__":
    sys.exit(main())
