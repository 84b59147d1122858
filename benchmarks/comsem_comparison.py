"""The paper's interpretability comparison, offline, in one command: ComSem of the BAE, TopK, ReLU, JumpReLU
and a random baseline on the same tokens of the embedded model, judged by one calibrated local judge.

    python benchmarks/comsem_comparison.py --train                 # train the four dictionaries first (~6 min)
    python benchmarks/comsem_comparison.py --dictionaries DIR      # DIR/bae DIR/topk ... from `hf-bae train`
    python benchmarks/comsem_comparison.py --dictionaries DIR --max_features 10 \
        --calibration benchmarks/calibration_results/calibration_qwen2.5-coder-1.5b.json   # a first look

Cost on 2 CPU cores: with the float32 judge (a CPU without bf16 instructions) ~46 s per explanation and
~4 s per judged sample, so ~28 min for 10 features of each of the five and ~8 h for 100; with the bf16 judge
(a CPU with avx512_bf16) ~4.4 s and ~2.0-2.2 s, so ~20 min for 10 and ~2.6 h for 100 (measured: 60 features
of each of the five in 5,554 s; benchmarks/RESULTS.md).
Raising --max_features later reuses every cached call.

A thin driver of the CLI (each step is the command a user would type, printed before it runs, and timed):

1. `hf-bae train` (with --train): the four kinds side by side on the same activations of layer 6 of the
   embedded SmolLM2-135M (resid_post), 250k tokens, expansion 4, k = 32.
2. `hf-bae calibrate`: the judge on the shipped calibration set, saved beside the response cache, where
   `interpret` finds it and states it beside the scores.
3. `hf-bae interpret`: atlases over the same corpus, one explainer/judge (default: the packaged
   Qwen2.5-Coder-1.5B, bf16 where the CPU has bf16 kernels), the same --max_features subset for every
   dictionary of equal width, with bootstrap intervals over features.

Everything goes through the response cache (OUT/llm.sqlite), so an interrupted run resumes where it
stopped and a rerun costs nothing. The results table is printed and written to OUT/comparison.md
(pasted into benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

KINDS = ("bae", "topk", "relu", "jumprelu")
TRAIN_ARGS = ["--layer", "6", "--site", "resid_post", "--context_length", "128", "--batch_size", "512",
              "--learning_rate", "1e-3", "--max_tokens", "250000", "--expansion_factor", "4", "--k", "32",
              "--validation_tokens", "8192"]


def hf_bae(*args: str) -> float:
    """Run one `hf-bae` command (same interpreter), echoing it; returns its wall seconds; exits on failure."""
    command = [sys.executable, "-m", "hf_bae", *args]
    print("$ hf-bae " + " ".join(shlex.quote(a) for a in args), flush=True)
    start = time.perf_counter()
    rc = subprocess.call(command)
    if rc:
        sys.exit(f"hf-bae {args[0]} failed (exit {rc}); rerun this script to resume from the cache.")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--output_dir", type=Path, default=Path("comsem_comparison"), help="Where everything goes.")
    parser.add_argument("--dictionaries", type=Path, default=None,
                        help="Folder holding bae/ topk/ relu/ jumprelu/ (default: OUTPUT_DIR/dictionaries).")
    parser.add_argument("--train", action="store_true", help="Train the four dictionaries into --dictionaries first.")
    parser.add_argument("--llm", default="qwen2.5-coder-1.5b", help="Explainer and judge (a local model).")
    parser.add_argument("--max_features", type=int, default=100, help="Features interpreted per dictionary.")
    parser.add_argument("--max_test_samples", type=int, default=4, help="Held-out activating samples judged per feature.")
    parser.add_argument("--num_negatives", type=int, default=4, help="Non-activating samples judged per feature.")
    parser.add_argument("--num_texts", type=int, default=2048, help="Corpus paragraphs the atlases are built from.")
    parser.add_argument("--max_context_tokens", type=int, default=16,
                        help="Context shown either side of a sample's token (the prompts' length is the judge's cost).")
    parser.add_argument("--calibration_items", type=int, default=None, help="Calibrate on a subset (None = all 308).")
    parser.add_argument("--calibration", type=Path, default=None,
                        help="A saved calibration of this same judge (hf-bae calibrate --output; e.g. "
                             "benchmarks/calibration_results/calibration_qwen2.5-coder-1.5b.json): skip calibrating.")
    args = parser.parse_args()

    out = args.output_dir
    dictionaries = args.dictionaries or out / "dictionaries"
    cache = out / "llm.sqlite"
    llm = ["--backend", "transformers", "--llm", args.llm, "--cache", str(cache)]
    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    if args.train:
        times["train (4 dictionaries)"] = hf_bae("train", "--dictionaries", *KINDS, *TRAIN_ARGS, "--output_dir", str(dictionaries))
    missing = [k for k in KINDS if not (dictionaries / k / "config.json").is_file()]
    if missing:
        sys.exit(f"{dictionaries}: no trained {', '.join(missing)}; pass --train or --dictionaries DIR.")
    if args.calibration:
        calibration = ["--judge_calibration", str(args.calibration)]
    else:
        times["calibrate the judge"] = hf_bae(
            "calibrate", *llm, *(["--max_items", str(args.calibration_items)] if args.calibration_items else []))
        calibration = []  # interpret finds the calibration saved beside the cache
    times["interpret (atlases, explain, judge)"] = hf_bae(
        "interpret", "--dictionary", *(str(dictionaries / k) for k in KINDS), "random", *llm, *calibration,
        "--num_texts", str(args.num_texts), "--max_context_tokens", str(args.max_context_tokens),
        "--max_features", str(args.max_features), "--max_test_samples", str(args.max_test_samples),
        "--num_negatives", str(args.num_negatives), "--output_dir", str(out / "interpret"))

    table = (out / "interpret" / "results.md").read_text()
    ledger = json.loads((out / "interpret" / "ledger.json").read_text())
    timing = "\n".join(f"| {step} | {seconds:,.0f} s |" for step, seconds in times.items())
    report = (f"{table}\n\n| step | wall time |\n|---|---|\n{timing}\n\nLedger: `{json.dumps(ledger)[:600]}`\n")
    (out / "comparison.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
