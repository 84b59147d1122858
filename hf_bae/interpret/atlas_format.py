"""The on-disk format of a feature atlas: the Arrow schema of its rows, `save_atlas` / `load_atlas`,
and the check that an atlas belongs to a dictionary. Its metadata (`AtlasInfo`, `atlas.json`) is
`hf_bae.formats`'.

Schema (a `datasets.Dataset`, one row per feature, saved with `save_to_disk`; `atlas.json` beside
it holds the run's metadata, `AtlasInfo`):

- feature (int): the feature index.
- frequency (float): firing frequency over the corpus tokens (BAE: code 1, or any bit for k bits;
  SAE: latent ≠ 0; random: picked). is_dead (bool): never fired. is_dense (bool): frequency >
  dense_threshold (metadata).
- selection_count (int): how many tokens picked this feature among their top_k.
- samples (list): the kept samples, in corpus order (selection "corpus", the paper's) or by
  decreasing score (selection "top"), at most `samples_per_feature`. Each sample is
  {token (str), token_id (int), position (int), context (str), start (int), end (int) — character
  offsets of the token in `context` (start == end for a special token, which is not in the
  context text) —, score (float: the selection score above), activation (float: the code or
  latent value), row (int) and row_position (int): where the token sits in the packed corpus,
  token_values (list of {start (int), end (int), value (float)}): the feature's value (BAE: the
  code value; SAE: the latent) at every token of `context`, offsets as start/end (the sample's own
  token is the entry with its start/end and its `activation`); empty for non_activating samples,
  the random baseline and atlases built with token_values=False; None in atlases written before it}.
- non_activating (list, same struct): up to `num_non_activating` tokens, uniformly sampled
  (seeded), where the feature is in its usual state (does not fire; is on for event "off") and
  was not picked; used by the beyond-paper specificity test. Their `activation` is the feature's
  value there.
- event (str | None): what the samples show: "on" (tokens where the feature fires: SAE latents,
  usually-off BAE codes) or "off" (a usually-on BAE code: tokens where it switches off; its
  non_activating samples are then tokens in its usual state, on); None for the random baseline
  (`atlas_scoring`). Atlases written before this column have none: read it as "on".
- logit_effects ({promoted, suppressed} | None): the top tokens of W_U · d_j, each list of
  {token (str), token_id (int), value (float)} (`logit_effects`); None when not computable (random
  baseline, transcoder, a width other than the unembedding's). Older atlases have no such column.
- explanation (str | None), comsem_score (float | None), verdicts (list of {sample_index (int),
  split ("positive" | "negative"), answer ("yes" | "no" | "unparseable")}): empty until
  `hf-bae interpret` fills them; sample_index indexes `samples` (positive) or `non_activating`
  (negative).
- comsem_status (str | None): "scored", "too_few_samples", "explain_failed",
  "explanation_unparseable", "no_verdicts", "pending" or "not_selected" (see `comsem.py`);
  balanced_accuracy (float | None, beyond the paper); judge_failures (int).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..formats import ATLAS_STATE_FILE, AtlasInfo, atlas_mismatches, read_atlas_info, save_atlas_info


def atlas_features():
    """The `datasets.Features` of an atlas."""
    import datasets

    sample = {
        "token": datasets.Value("string"), "token_id": datasets.Value("int64"), "position": datasets.Value("int64"),
        "context": datasets.Value("string"), "start": datasets.Value("int64"), "end": datasets.Value("int64"),
        "score": datasets.Value("float64"), "activation": datasets.Value("float64"),
        "row": datasets.Value("int64"), "row_position": datasets.Value("int64"),
        "token_values": datasets.List({"start": datasets.Value("int64"), "end": datasets.Value("int64"), "value": datasets.Value("float64")}),
    }
    verdict = {"sample_index": datasets.Value("int64"), "split": datasets.Value("string"), "answer": datasets.Value("string")}
    effect = {"token": datasets.Value("string"), "token_id": datasets.Value("int64"), "value": datasets.Value("float64")}
    return datasets.Features({
        "feature": datasets.Value("int64"),
        "frequency": datasets.Value("float64"),
        "is_dead": datasets.Value("bool"),
        "is_dense": datasets.Value("bool"),
        "selection_count": datasets.Value("int64"),
        "samples": datasets.List(sample),
        "non_activating": datasets.List(sample),
        "event": datasets.Value("string"),
        "logit_effects": {"promoted": datasets.List(effect), "suppressed": datasets.List(effect)},
        "explanation": datasets.Value("string"),
        "comsem_score": datasets.Value("float64"),
        "verdicts": datasets.List(verdict),
        "comsem_status": datasets.Value("string"),
        "balanced_accuracy": datasets.Value("float64"),
        "judge_failures": datasets.Value("int64"),
    })


def save_atlas(dataset, info: AtlasInfo, path: str | os.PathLike) -> Path:
    """Save the atlas with `save_to_disk` and its metadata as `atlas.json` in the same folder."""
    if len(dataset) == 0:
        raise ValueError("The atlas is empty (no features): nothing to save.")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"Cannot save the atlas to {path}: it is a file. Give a folder (new or an atlas to replace).")
    dataset.save_to_disk(str(path))
    save_atlas_info(info, path)
    return path


def load_atlas(path: str | os.PathLike):
    """Load an atlas saved by `save_atlas`: returns `(datasets.Dataset, AtlasInfo)`."""
    import datasets

    path = Path(path)
    info = read_atlas_info(path)
    state = json.loads((path / ATLAS_STATE_FILE).read_text()) if (path / ATLAS_STATE_FILE).is_file() else {}
    # datasets cannot load a saved dataset with no rows (it has no data files).
    dataset = datasets.load_from_disk(str(path)) if state.get("_data_files", [None]) else []
    if len(dataset) == 0:
        raise ValueError(f"The atlas at {path} is empty (no features): rebuild it with `hf-bae atlas` over a non-empty corpus.")
    return with_current_columns(dataset), info


# Columns added to the schema after atlases were first written, with the value an older atlas reads as.
ADDED_COLUMNS = ("event", "logit_effects")
# Fields added to the sample struct (`samples`, `non_activating`) since; an older atlas reads them as None.
ADDED_SAMPLE_FIELDS = ("token_values",)


def atlas_from_rows(rows: list[dict[str, Any]]):
    """A `datasets.Dataset` in the atlas schema from row dicts (hand-made atlases, tests); the columns added
    after the first atlases (`ADDED_COLUMNS`) may be left out of the rows: they are None."""
    import datasets

    rows = [{**{c: None for c in ADDED_COLUMNS}, **r} for r in rows]
    return datasets.Dataset.from_list(rows, features=atlas_features())


def with_current_columns(dataset):
    """`dataset` with the columns an older atlas lacks (`ADDED_COLUMNS`) added as None and its samples
    given the fields added since (`ADDED_SAMPLE_FIELDS`, None), so that it has the
    current schema (`atlas_features`) and everything that writes results back into it works unchanged.
    An old atlas's `event` stays None: it was built before events were recorded (read it as "on")."""
    missing = [c for c in ADDED_COLUMNS if c not in dataset.column_names]
    features = atlas_features()
    for column in missing:
        dataset = dataset.add_column(column, [None] * len(dataset), feature=features[column])
    sample_fields = set(dataset.features["samples"].feature) if "samples" in dataset.features else set()
    if any(f not in sample_fields for f in ADDED_SAMPLE_FIELDS):
        # An Arrow cast fills the missing struct fields with None (no row is read in Python).
        dataset = dataset.cast(features)
    return dataset


def check_atlas_matches(info: AtlasInfo, dictionary: Any, atlas_path: str | os.PathLike = "the atlas") -> None:
    """Raise ValueError if the atlas was not built from `dictionary` (`hf_bae.formats.atlas_mismatches`:
    width, provenance, kind, then the config + weights fingerprint, which must be recorded)."""
    problems = atlas_mismatches(info, dictionary)
    if not problems and not info.dictionary_fingerprint:
        problems = ["the atlas records no dictionary fingerprint"]
    if problems:
        raise ValueError(
            f"{atlas_path} was built from another dictionary than the one given: {'; '.join(problems)}. "
            "Rebuild it with `hf-bae atlas` for this dictionary, or pass the matching dictionary."
        )
