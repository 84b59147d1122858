"""Feature-set entropy: how many bits a set of hidden states carries, read off a trained BAE's codes.

The paper's first application (Cho et al., arXiv 2509.20997, Sec. 4): a BAE turns hidden states into
binary codes whose features the training objective makes (nearly) independent, so the entropy of the
set is the sum of per-code Bernoulli entropies (the original code's `entropy_eval`), here with a
bias correction, a bootstrap error bar and an independence diagnostic.

    >>> from hf_bae.entropy import feature_set_entropy
    >>> report = feature_set_entropy(bae, hidden_states)      # doctest: +SKIP
    >>> report.miller_madow_bits, (report.ci_low, report.ci_high)  # doctest: +SKIP

This package is the public boundary; its modules, in the order they build on each other:

- `bootstrap`: counter-based Poisson(1) weights (the replicates do not depend on batching).
- `codes`: lossless compression of binary codes and its size in bits.
- `estimator`: `EntropyAccumulator` (streaming counts) and `EntropyReport`.
- `measure`: a BAE's codes and `feature_set_entropy` over a tensor or a stream.
- `curves`: bits per layer and per token position.
- `plots`: CSV rows and the entropy-curve plot.
- `icl`: in-context learning tasks, prompts, the entropy-vs-shots curve and steering.
- `arguments`, `baes`, `studies`: the experiments of `hf-bae entropy` (layers / positions / icl /
  steer / estimate), each finding or training its BAEs and writing its CSV / JSON / PNG.
"""

from .bootstrap import poisson_bootstrap_weights
from .codes import CompressedCodes, compress_codes, compressed_size_bits, decompress_codes
from .curves import document_prefixes, layer_entropy, position_activations, position_entropy
from .estimator import (
    DEFAULT_CORRELATION_CODES,
    DEFAULT_MIN_SAMPLES,
    DEFAULT_NUM_BOOTSTRAP,
    EntropyAccumulator,
    EntropyReport,
    EntropyWarning,
)
from .icl import (
    ICLPoint,
    ICLPrompt,
    ICLTask,
    SteeringResult,
    bae_task_vector,
    icl_entropy,
    icl_steering,
    list_tasks,
    load_task,
    run_prompts,
    sample_prompts,
)
from .measure import bae_site, check_bae_fits, check_is_bae, encode_codes, feature_set_entropy
from .plots import plot_entropy_curve, write_csv

__all__ = [
    "DEFAULT_CORRELATION_CODES",
    "DEFAULT_MIN_SAMPLES",
    "DEFAULT_NUM_BOOTSTRAP",
    "CompressedCodes",
    "EntropyAccumulator",
    "EntropyReport",
    "EntropyWarning",
    "ICLPoint",
    "ICLPrompt",
    "ICLTask",
    "SteeringResult",
    "bae_site",
    "bae_task_vector",
    "check_bae_fits",
    "check_is_bae",
    "compress_codes",
    "compressed_size_bits",
    "decompress_codes",
    "document_prefixes",
    "encode_codes",
    "feature_set_entropy",
    "icl_entropy",
    "icl_steering",
    "layer_entropy",
    "list_tasks",
    "load_task",
    "plot_entropy_curve",
    "poisson_bootstrap_weights",
    "position_activations",
    "position_entropy",
    "run_prompts",
    "sample_prompts",
    "write_csv",
]
