"""ComSem: the Common-Semantics interpretability score of dictionary features (Cho et al. 2025), as an
`evaluate` metric.

A thin wrapper: the logic is `hf_bae.interpret.comsem.summarize_verdicts`, so the same numbers come
out of `hf-bae interpret`, this module and the Python API.
"""

import datasets
import evaluate

from hf_bae.interpret.comsem import BALANCED_ACCURACY_THRESHOLD, summarize_verdicts

_CITATION = """\
@article{cho2025binary,
  title   = {Binary Autoencoder for Mechanistic Interpretability of Large Language Models},
  author  = {Cho, Hakaze and Yang, Haolin and Li, Yanshu and Kurkoski, Brian M. and Inoue, Naoya},
  journal = {arXiv preprint arXiv:2509.20997},
  year    = {2025}
}
"""

_DESCRIPTION = """\
ComSem scores how interpretable the features of a sparse dictionary (Binary Autoencoder, SAE, transcoder)
are. An LLM explainer names what five activating samples of a feature have in common; an LLM judge then
answers Yes or No, for each of up to eight held-out activating samples, to "does this description fit
this token in its context?". A feature's score is its fraction of Yes; the metric averages it over
features and counts the features whose score reaches a threshold. This module turns the judge's verdicts
into that summary. Beyond the paper, verdicts on non-activating samples (split "negative") add
specificity, precision and balanced accuracy, reported apart under `beyond_paper`.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): the judge's parsed answers, one per verdict: "yes", "no" or "unparseable".
    references (`list` of `str`): what each judged sample was: "positive" (an activating sample of the
        feature, the paper's test) or "negative" (a sample where the feature does not fire; beyond the paper).
    feature_ids (`list` of `int`): the feature each verdict belongs to.
    num_features (`int`, *optional*): number of features of the dictionary. When given, the interpretable
        fraction is over all of them (features without verdicts, e.g. with too few samples, count as not
        interpretable); otherwise over the scored features.
    threshold (`float`, defaults to 0.5): a feature with score >= threshold counts as interpretable. The
        paper states no threshold; 0.5 is ours.
    num_bins (`int`, defaults to 10): bins of the score histogram on [0, 1].
    balanced_accuracy_threshold (`float`, defaults to 0.6): a feature whose balanced accuracy is >= this counts
        in `interpretable_count_balanced_accuracy`. It must be strictly above chance (0.5): an explanation judged
        Yes on everything has balanced accuracy exactly 0.5 and never counts.
Returns:
    comsem_score (`float` or `None`): mean over scored features of the fraction of Yes on positives.
    features_scored (`int`): features with at least one positive verdict.
    features_total (`int` or `None`): `num_features`.
    interpretable_count (`int`), interpretable_fraction (`float` or `None`), threshold (`float`).
    histogram (`dict`): `bin_edges` and `counts` of per-feature scores.
    verdicts (`int`), unparseable (`int`): answers that were neither yes nor no (they count as not Yes).
    beyond_paper (`dict`): features_with_negatives, specificity (fraction of No on negatives), precision,
        balanced_accuracy ((score + specificity) / 2), interpretable_count_balanced_accuracy (features with
        balanced accuracy >= balanced_accuracy_threshold), balanced_accuracy_threshold.
Examples:
    >>> comsem = evaluate.load("metrics/comsem")
    >>> comsem.compute(predictions=["yes", "yes", "no", "yes"], references=["positive"] * 4,
    ...                feature_ids=[0, 0, 1, 1])["comsem_score"]
    0.75
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ComSem(evaluate.Metric):
    """ComSem summary of LLM-judge verdicts on dictionary features."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": datasets.Value("string"),
                    "feature_ids": datasets.Value("int64"),
                }
            ),
            reference_urls=["https://arxiv.org/abs/2509.20997", "https://github.com/hc495/Binary_Autoencoder"],
        )

    def _compute(self, predictions, references, feature_ids, num_features=None, threshold=0.5, num_bins=10,
                 balanced_accuracy_threshold=BALANCED_ACCURACY_THRESHOLD):
        return summarize_verdicts(
            list(feature_ids), list(references), list(predictions),
            num_features=num_features, threshold=threshold, num_bins=num_bins,
            balanced_accuracy_threshold=balanced_accuracy_threshold,
        )
