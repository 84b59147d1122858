"""`hf-bae demo`: a BAE and a TopK SAE trained side by side on the embedded model and corpus, offline.

A few minutes on two CPU cores. It then prints where the dictionaries, their metrics and plots are,
and how to look at them.
"""

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ..formats import CHECKPOINTS_DIR, TRAINING_ARGS_FILE
from ._common import run_or_explain

DEFAULT_OUTPUT_DIR = "hf_bae_runs/demo"


def demo_arguments(output_dir: str, max_tokens: int = 60_000, **overrides):
    """The demo's options: SmolLM2-135M-Instruct layer 6 residual stream, State of the Union texts, BAE + TopK."""
    from ..training import BAEArguments, DictionaryArguments, SAEArguments, TrainingArguments

    args = TrainingArguments(
        output_dir=output_dir, dictionaries=["bae", "topk"], layer=6, site="resid_post", context_length=128,
        lm_batch_size=8, shuffle_rows=32, batch_size=512, learning_rate=1e-3, max_tokens=max_tokens,
        validate_every=40, validation_tokens=4096, validation_texts=48, splice_rows=4, checkpoint_every=100,
        log_every=5, **overrides)
    # The BAE and the SAE take their config defaults: the recipe measured by benchmarks/sweep.py.
    return args, DictionaryArguments(expansion_factor=4), BAEArguments(), SAEArguments(k=32)


def _is_demo_run(path: Path) -> bool:
    options = path / TRAINING_ARGS_FILE
    if not options.exists():
        return not (path / CHECKPOINTS_DIR).exists()
    try:
        return bool(json.loads(options.read_text()).get("demo"))
    except json.JSONDecodeError:
        return False


def main(argv: Sequence[str]) -> int:
    """Run the demo (exit codes: `hf_bae.cli`; 2 if the output folder holds a run that is not a demo)."""
    parser = argparse.ArgumentParser(prog="hf-bae demo", description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--output-dir", "--output_dir", dest="output_dir", default=DEFAULT_OUTPUT_DIR,
                        help="Where the run is written (a previous demo there is replaced).")
    parser.add_argument("--max-tokens", "--max_tokens", dest="max_tokens", type=int, default=60_000,
                        help="Training tokens (the default takes a few minutes on 2 CPU cores).")
    opts = parser.parse_args(list(argv))

    return run_or_explain("hf-bae demo", lambda: _demo(Path(opts.output_dir), opts.max_tokens))


def _demo(out: Path, max_tokens: int) -> int:
    from ..training import summarize_run, train

    if not _is_demo_run(out):
        raise ValueError(f"{out} holds a training run that is not a demo; choose another --output-dir.")
    args, dictionary, bae, sae = demo_arguments(str(out), max_tokens, overwrite=True)
    print(f"hf-bae demo: training a BAE and a TopK SAE on layer {args.layer} ({args.site}) of SmolLM2-135M-Instruct "
          f"with {args.max_tokens:,} tokens of State of the Union addresses (offline). Output: {out}/", flush=True)
    started = time.perf_counter()
    results = train(args, dictionary, bae, sae, extra_options={"demo": True})  # lets a later demo replace it
    minutes = (time.perf_counter() - started) / 60
    print(f"\nDone in {minutes:.1f} min.\n")
    print(summarize_run(out, results))
    print(f"""
How to look at it:
  plots:    {out}/bae/plots/*.png and {out}/topk/plots/*.png (loss, L0, entropy, covariance, frequency histogram)
  metrics:  cat {out}/bae/eval_results.json            # final validation metrics
            head {out}/bae/metrics.jsonl                # one JSON line per logged step
  model:    python -c "import hf_bae, transformers; m = transformers.AutoModel.from_pretrained('{out}/bae'); print(m.config)"
""")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
