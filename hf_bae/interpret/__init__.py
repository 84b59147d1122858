"""Feature interpretation: the feature atlas, LLM backends, and the ComSem protocol.

    from hf_bae.interpret import AtlasConfig, build_atlas, save_atlas, LLMClient, OpenAIBackend, run_comsem

- `atlas`: each feature's samples (tokens in context), frequencies, dead/dense flags → a `datasets.Dataset`;
  `atlas_scoring` (per-token feature scores), `atlas_samples` (which samples are kept, their contexts),
  `atlas_format` (the Arrow schema, save / load, the dictionary check).
- `chat`: requests, results, error kinds and the `ChatBackend` interface a judge backend implements.
- `openai_backend` / `transformers_backend`: an OpenAI-compatible endpoint, a local chat model.
- `response_cache` / `ledger`: the SQLite response cache; calls, tokens and cost.
- `client`: `LLMClient` (cache, budget, concurrency), `LLMConfig` (the LLM flags), `make_backend`.
- `prompts`: the explainer and judge prompts (few-shot examples written for hf_bae).
- `comsem`: explain, judge, score; `summarize_verdicts` is the logic of the `metrics/comsem` evaluate module;
  `bootstrap`: the intervals over features of its means and of the difference between two dictionaries.
- `pipeline`: what `hf-bae atlas` and `hf-bae interpret` run; `report`: their comsem.json, table and plot.
"""

from ..formats import AtlasInfo
from .atlas import AtlasConfig, build_atlas, build_atlases
from .atlas_format import check_atlas_matches, load_atlas, save_atlas
from .atlas_scoring import RandomBaseline, dictionary_fingerprint
from .comsem import ComSemConfig, ComSemRun, parse_answer, parse_explanation, run_comsem, summarize_verdicts
from .chat import ChatRequest, ChatResult, LLMSetupError
from .client import LLMClient, LLMConfig, make_backend
from .openai_backend import OpenAIBackend
from .response_cache import ResponseCache
from .transformers_backend import TransformersBackend

__all__ = [
    "AtlasConfig", "AtlasInfo", "RandomBaseline", "build_atlas", "build_atlases", "check_atlas_matches",
    "dictionary_fingerprint", "load_atlas", "save_atlas", "ComSemConfig", "ComSemRun", "parse_answer",
    "parse_explanation", "run_comsem", "summarize_verdicts", "ChatRequest", "ChatResult", "LLMClient", "LLMConfig",
    "LLMSetupError", "OpenAIBackend", "ResponseCache", "TransformersBackend", "make_backend",
]
