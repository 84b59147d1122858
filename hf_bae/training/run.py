"""The library entry points of a training run:

- `train(args, dictionary, bae, sae)`: what `hf-bae train` does: the inputs the options name
  (`hf_bae.training.inputs`), fresh dictionaries of the kinds `--dictionaries` lists, then the loop.
- `train_dictionaries(dictionaries, source, output_dir, ...)`: train dictionaries built by the caller on
  the source keys it names, with brief options (`brief_arguments`: no intermediate validation,
  checkpoints or plots), for callers that assemble a short run of their own.
- `summarize_run(output_dir, results)`: the table `hf-bae train` and `hf-bae demo` print at the end.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from accelerate.utils import set_seed

from ..formats import EVAL_RESULTS_FILE, METRICS_FILE, PLOTS_DIR
from ..modeling_base import DictionaryPreTrainedModel
from ..sources import ActivationSource
from .arguments import BAEArguments, DictionaryArguments, SAEArguments, TrainingArguments
from .checkpoints import check_output_dir
from .factory import build_dictionary, check_dictionary_options
from .inputs import build_inputs
from .loop import DictionaryTrainer, make_accelerator

# The options of a brief run: the final validation only, no intermediate checkpoints, no plots, and a
# previous run in the folder is replaced.
BRIEF_OPTIONS: dict[str, Any] = {"overwrite": True, "validate_every": 0, "splice_rows": 0, "checkpoint_every": 0,
                                 "save_total_limit": 1, "plots": False}


def brief_arguments(output_dir: str | Path, **options: Any) -> TrainingArguments:
    """`TrainingArguments` of a brief run into `output_dir`: `BRIEF_OPTIONS`, then `options` (which win)."""
    return TrainingArguments(output_dir=str(output_dir), **{**BRIEF_OPTIONS, **options})


def train(args: TrainingArguments, dictionary: Any = None, bae: Any = None, sae: Any = None, *,
          extra_options: dict[str, Any] | None = None) -> dict[str, dict]:
    """Build the source, language model and dictionaries named by the options, then train them.

    Args:
        args: training options.
        dictionary, bae, sae: instances of `DictionaryArguments`, `BAEArguments`, `SAEArguments`
            (defaults when None).
        extra_options: more entries for `training_args.json` (e.g. a tag).

    Returns:
        name → final validation metrics (also written to `<output_dir>/<name>/eval_results.json`).
    """
    dictionary = dictionary if dictionary is not None else DictionaryArguments()
    bae = bae if bae is not None else BAEArguments()
    sae = sae if sae is not None else SAEArguments()
    check_output_dir(args)  # fail before loading anything
    check_dictionary_options(args.dictionaries, dataclasses.asdict(dictionary), dataclasses.asdict(bae),
                             dataclasses.asdict(sae))
    accelerator = make_accelerator(args)
    options = {**dataclasses.asdict(args), **dataclasses.asdict(dictionary), **dataclasses.asdict(bae),
               **dataclasses.asdict(sae), **(extra_options or {})}
    run = build_inputs(args, accelerator)
    options["layer"] = run.layer
    set_seed(args.seed)
    dictionaries, inputs = {}, {}
    for kind, sites in run.sites.items():
        provenance = {**run.provenance, "site": sites.site, "output_site": sites.output_site}
        dictionaries[kind] = build_dictionary(
            kind, run.source.hidden_size(sites.input_key),
            run.source.hidden_size(sites.target_key) if sites.target_key else None,
            dataclasses.asdict(dictionary), dataclasses.asdict(bae), dataclasses.asdict(sae), provenance)
        inputs[kind] = (sites.input_key, sites.target_key)
    trainer = DictionaryTrainer(args, dictionaries, run.source, inputs=inputs, language_model=run.language_model,
                                tokenizer=run.tokenizer, run_options=options, accelerator=accelerator)
    return trainer.train()


def train_dictionaries(dictionaries: Mapping[str, DictionaryPreTrainedModel], source: ActivationSource,
                       output_dir: str | Path, *, inputs: Mapping[str, tuple[str, str | None]] | None = None,
                       language_model: Any = None, tokenizer: Any = None, **options: Any) -> dict[str, dict]:
    """Train freshly built dictionaries on `source` with brief options; they are trained in place and saved
    in `output_dir/<name>/`.

    Args:
        dictionaries: name → dictionary (e.g. from `hf_bae.training.dictionaries_for_keys`).
        source: the activations.
        output_dir: the run folder (a previous run there is replaced).
        inputs: name → (source key, target key or None); default: from each config's layer and site.
        language_model, tokenizer: the LM, for the splice metrics (with `splice_rows`).
        options: `TrainingArguments` fields over `BRIEF_OPTIONS` (e.g. `max_steps`, `batch_size`, `seed`).

    Returns:
        name → final validation metrics.
    """
    args = brief_arguments(output_dir, **options)
    trainer = DictionaryTrainer(args, dict(dictionaries), source, inputs=dict(inputs) if inputs else None,
                                language_model=language_model, tokenizer=tokenizer)
    return trainer.train()


def summarize_run(output_dir: str | Path, results: dict[str, dict[str, float]]) -> str:
    """A short table of the final metrics and where each dictionary, its metrics and plots are."""
    out = Path(output_dir)
    columns = [("fvu", "FVU", "{:.3f}"), ("l0", "L0", "{:.1f}"), ("dead_fraction", "dead", "{:.1%}"),
               ("dense_fraction", "dense", "{:.1%}"), ("dense_deviation_fraction", "dense (dev)", "{:.1%}"),
               ("constant_code_fraction", "constant", "{:.1%}"), ("code_entropy_bits", "entropy (bits)", "{:.1f}"),
               ("ce_loss_score", "CE score", "{:.3f}"), ("kl_divergence", "KL (nats)", "{:.4f}")]
    header = ["dictionary"] + [c[1] for c in columns]
    rows = [[name] + [fmt.format(r[k]) if isinstance(r.get(k), (int, float)) else "-" for k, _, fmt in columns]
            for name, r in results.items()]
    widths = [max(len(str(row[i])) for row in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(row, widths)) for row in [header] + rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines += ["", f"Run folder: {out.resolve()}"]
    for name in results:
        lines.append(f"  {name}/: model (AutoModel.from_pretrained('{out / name}')), {EVAL_RESULTS_FILE}, "
                     f"{METRICS_FILE}, {PLOTS_DIR}/*.png")
    return "\n".join(lines)
