"""Calibrate the offline judges on the shipped calibration set (hf_bae/interpret/calibration.py).

    python benchmarks/calibrate_judges.py                       # SmolLM2 (embedded) and the packaged Qwen judges
    python benchmarks/calibrate_judges.py --judges embedded --max_items 64
    python benchmarks/calibrate_judges.py --regenerate          # rebuild the shipped set from the embedded corpus

Each judge runs through the response cache ($HF_BAE_CACHE/calibration_cache.sqlite), so a rerun is free;
the calibrations are saved under benchmarks/calibration_results/ and the table is printed (pasted into RESULTS.md).
The packaged judges need their part packages (`packaged_judges.PACKAGED_JUDGES[...].install_line`); a missing one is skipped.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from hf_bae.embedded import cache_root
from hf_bae.interpret.calibration import (CALIBRATION_SET_PATH, build_calibration_set, calibrate, calibration_table,
                                          load_calibration_set, save_calibration, save_calibration_set, subset)
from hf_bae.interpret.client import LLMClient
from hf_bae.interpret.transformers_backend import TransformersBackend

RESULTS = Path(__file__).parent / "calibration_results"


def regenerate() -> None:
    from transformers import AutoTokenizer

    from hf_bae.activations import load_texts
    from hf_bae.embedded import embedded_model_path

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_path())
    items = build_calibration_set(load_texts("embedded"), tokenizer)
    save_calibration_set(items, CALIBRATION_SET_PATH)
    print(f"wrote {len(items)} items to {CALIBRATION_SET_PATH}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--judges", nargs="+", default=["embedded", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"])
    parser.add_argument("--max_items", nargs="+", type=int, default=[0],
                        help="items per judge (0 = all), one value for all judges or one per judge")
    parser.add_argument("--regenerate", action="store_true")
    args = parser.parse_args()
    if args.regenerate:
        regenerate()
        return
    RESULTS.mkdir(exist_ok=True)
    items_all = load_calibration_set()
    rows = []
    limits = args.max_items * len(args.judges) if len(args.max_items) == 1 else args.max_items
    for judge, limit in zip(args.judges, limits):
        items = subset(items_all, limit or None)
        backend = TransformersBackend(model=judge)
        t0 = time.perf_counter()
        try:
            backend.load()
        except ValueError as err:
            print(f"skipping {judge}: {err}")
            continue
        load_s = time.perf_counter() - t0
        client = LLMClient(backend, cache_root() / "calibration_cache.sqlite", progress=False)
        cal = calibrate(items, client)
        cal["load_s"] = load_s
        save_calibration(cal, RESULTS / f"calibration_{judge}.json")
        rows.append(cal)
        print(f"{judge}: load {load_s:.0f} s; " + json.dumps({k: cal[k] for k in ("items", "accuracy", "yes_rate",
              "balanced_accuracy", "balanced_accuracy_interval", "verdict", "cpu_s_per_item", "wall_s_per_item")}), flush=True)
        print(json.dumps(cal["per_category"]), flush=True)
        del backend, client
    print(calibration_table(rows))
    print("load s: " + ", ".join(f"{r['judge']} {r['load_s']:.0f}" for r in rows))


if __name__ == "__main__":
    main()
