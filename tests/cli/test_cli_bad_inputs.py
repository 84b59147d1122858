"""Issue 17, the CLI's data and file inputs: each bad input below exits with the policy's code
(`hf_bae.cli`: 2 bad input, 1 run-time failure), prints one line on stderr that names the input, and
no traceback; `--debug` / HF_BAE_DEBUG=1 bring the traceback back. A second table checks the
library calls behind them raise a ValueError / FileNotFoundError that says what to do."""

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from error_cases import EXIT_USAGE, Case, assert_clear_error, run_cli

FILES: dict[str, Path] = {}  # filled once by `_files`; the argv callables read it


@pytest.fixture(scope="module", autouse=True)
def _files(tmp_path_factory, tiny_lm):
    root = tmp_path_factory.mktemp("bad-inputs")
    model, _ = tiny_lm()
    FILES["lm"] = Path(model.name_or_path)
    FILES["root"] = root
    (root / "empty.jsonl").write_text("")
    (root / "ok.jsonl").write_text("".join(f'{{"text": "text number {i} with a few more words in it"}}\n' for i in range(50)))
    (root / "a_file").write_text("not a folder")
    pickle.dump({"a": np.zeros((3, 4))}, open(root / "dict.pkl", "wb"))
    pickle.dump([np.zeros(4), np.zeros(5)], open(root / "ragged.pkl", "wb"))
    (root / "truncated.pkl").write_bytes(pickle.dumps([np.zeros(4)] * 3)[:20])
    bad_cache = root / "bad_cache"
    bad_cache.mkdir()
    (bad_cache / "manifest.json").write_text('{"sites": [')
    original = root / "original"
    original.mkdir()
    torch.save({"encoder.weight": torch.zeros(8, 4), "decoder.weight": torch.zeros(4, 8)}, original / "model_x.pt")
    (original / "truncated.pt").write_bytes((original / "model_x.pt").read_bytes()[:50])
    (original / "latin1_params.txt").write_bytes("inner_expand_rate: 2\nnote: caf\xe9\n".encode("latin-1"))
    (original / "experiment_params.txt").write_text("inner_expand_rate: 2\nbinarization_type: sign_s\n")
    yield


def _f(name: str) -> str:
    return str(FILES["root"] / name)


def _harvest(*extra: str, out: str = "out") -> callable:
    """argv of a harvest on the tiny LM and ok.jsonl, with `extra` flags overriding."""
    return lambda: ["harvest", "--output_dir", _f(out), "--base_model", str(FILES["lm"]), "--dataset", _f("ok.jsonl"),
                    "--sites", "layers.1.resid_post", "--num_tokens", "64", "--context_length", "16", *extra]


CASES = [
    # language models and texts: a local path that does not exist is about the path, not the Hub
    Case("lm ./nope", _harvest("--base_model", "./nope"), mentions=["./nope", "does not exist"]),
    Case("lm /tmp path", _harvest("--base_model", "/tmp/hf-bae-no-such-model"), mentions=["/tmp/hf-bae-no-such-model"]),
    Case("lm a/b/c", _harvest("--base_model", "runs/x/model"), mentions=["runs/x/model"]),
    Case("lm folder without config", lambda: _harvest("--base_model", _f(""))(), mentions=["config.json"]),
    Case("dataset missing file", _harvest("--dataset", "missing.jsonl"), mentions=["missing.jsonl", "does not exist"]),
    Case("dataset empty jsonl", lambda: _harvest("--dataset", _f("empty.jsonl"))(), mentions=["empty.jsonl", "empty"]),
    # harvest
    Case("site layer out of range", _harvest("--sites", "layers.99.resid_post"), mentions=["Layer 99"]),
    Case("site misspelt", _harvest("--sites", "layers.1.resid_pots"), mentions=["layers.1.resid_pots"]),
    Case("site unreadable", _harvest("--sites", "resid_post"), mentions=["resid_post"]),
    Case("corrupt manifest", _harvest(out="bad_cache"), mentions=["manifest.json"]),
    Case("output_dir under a file", lambda: _harvest(out="a_file/cache")(), mentions=["a_file", "--output_dir"]),
    Case("num_tokens 0", _harvest("--num_tokens", "0"), mentions=["--num_tokens"]),
    Case("batch_size 0", _harvest("--batch_size", "0"), mentions=["--batch_size"]),
    Case("outlier_factor nan", _harvest("--outlier_factor", "nan"), mentions=["--outlier_factor"]),
    Case("no output_dir", ["harvest", "--sites", "layers.1.resid_post"], mentions=["--output_dir"]),
    Case("pickle without permission", lambda: ["harvest", "--output_dir", _f("p0"), "--from_pickle", _f("dict.pkl")],
         mentions=["dict.pkl", "allow_pickle"]),
    Case("pickle of a dict", lambda: ["harvest", "--output_dir", _f("p1"), "--from_pickle", _f("dict.pkl"), "--allow_pickle",
                                      "--sites", "layers.1.resid_post"], mentions=["dict.pkl", "dict"]),
    Case("pickle ragged", lambda: ["harvest", "--output_dir", _f("p2"), "--from_pickle", _f("ragged.pkl"), "--allow_pickle",
                                   "--sites", "layers.1.resid_post"], mentions=["ragged.pkl", "Item 1"]),
    Case("pickle truncated", lambda: ["harvest", "--output_dir", _f("p3"), "--from_pickle", _f("truncated.pkl"),
                                      "--allow_pickle", "--sites", "layers.1.resid_post"], mentions=["truncated.pkl"]),
    Case("pickle missing", lambda: ["harvest", "--output_dir", _f("p4"), "--from_pickle", _f("nope.pkl"), "--allow_pickle",
                                    "--sites", "layers.1.resid_post"], mentions=["nope.pkl"]),
    # import-original
    Case("params not UTF-8", lambda: ["import-original", _f("original/model_x.pt"), _f("original/latin1_params.txt"), _f("imp")],
         mentions=["latin1_params.txt", "UTF-8"]),
    Case("model .pt missing", lambda: ["import-original", _f("original/none.pt"), _f("original/experiment_params.txt"), _f("imp")],
         mentions=["none.pt"]),
    Case("model .pt truncated", lambda: ["import-original", _f("original/truncated.pt"), _f("original/experiment_params.txt"),
                                         _f("imp")], mentions=["truncated.pt"]),
    # entropy: options checked at parse, before any model, text or BAE is loaded
    Case("entropy num_tokens 0", ["entropy", "estimate", "--bae", "x", "--num_tokens", "0"], mentions=["--num_tokens"]),
    Case("entropy confidence 1.5", ["entropy", "estimate", "--bae", "x", "--confidence", "1.5"], mentions=["--confidence"]),
    Case("entropy confidence 0", ["entropy", "layers", "--confidence", "0"], mentions=["--confidence"]),
    Case("entropy num_bootstrap -1", ["entropy", "estimate", "--num_bootstrap", "-1"], mentions=["--num_bootstrap"]),
    Case("entropy max_position 1", ["entropy", "positions", "--max_position", "1"], mentions=["--max_position"]),
    Case("entropy strength inf", ["entropy", "steer", "--strength", "inf"], mentions=["--strength"]),
    Case("entropy learning rate 0", ["entropy", "layers", "--train_learning_rate", "0"], mentions=["--train_learning_rate"]),
    Case("entropy bae missing", ["entropy", "estimate", "--bae", "./no-such-bae"], mentions=["./no-such-bae"]),
    # space
    Case("space atlas ./missing", ["space", "--atlas", "./no-such-atlas"], mentions=["./no-such-atlas"]),
    Case("space atlas a/b/c", ["space", "--atlas", "runs/x/atlas"], mentions=["runs/x/atlas"]),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_a_bad_input_is_one_line_with_the_policy_exit_code(case):
    assert_clear_error(case)


@pytest.mark.parametrize("name", ["p1", "p2", "p3", "p4", "a_file/cache"])
def test_a_failed_harvest_leaves_nothing_behind(name):
    assert not Path(_f(name)).exists()


def test_debug_flag_and_environment_keep_the_traceback(monkeypatch):
    argv = ["harvest", "--output_dir", _f("dbg"), "--sites", "layers.1.resid_pots"]
    for args in (["--debug", *argv], [*argv, "--debug"]):
        with pytest.raises(ValueError, match="resid_pots"):
            run_cli(args)
    monkeypatch.setenv("HF_BAE_DEBUG", "1")
    with pytest.raises(ValueError, match="resid_pots"):
        run_cli(argv)
    monkeypatch.delenv("HF_BAE_DEBUG")
    assert run_cli(argv)[0] == EXIT_USAGE  # the flag does not outlive its command


def test_entropy_estimate_evaluates_exactly_num_tokens():
    from hf_bae.activations import ActivationBatch
    from hf_bae.entropy.studies import first_tokens

    batch = ActivationBatch({"s": torch.randn(1001, 4)}, torch.zeros(8, 128, dtype=torch.long),
                            torch.arange(1001) // 126, torch.arange(1001) % 126, 0)
    cut = first_tokens(batch, 300)
    assert cut.num_tokens == 300 and cut.activations["s"].shape == (300, 4)
    assert first_tokens(batch, 2000) is batch


LIBRARY_CASES = [
    ("load_language_model ./nope", lambda: _lm("./nope"), FileNotFoundError, "does not exist"),
    ("load_texts missing file", lambda: _texts("/tmp/hf-bae-none.jsonl"), FileNotFoundError, "does not exist"),
    ("confidence 1.5", lambda: _entropy(confidence=1.5), ValueError, "confidence"),
]


def _lm(name):
    from hf_bae.activations import load_language_model

    return load_language_model(name)


def _texts(name):
    from hf_bae.activations import load_texts

    return load_texts(name)


def _entropy(**kwargs):
    from hf_bae.entropy.estimator import check_confidence

    return check_confidence(kwargs["confidence"])


@pytest.mark.parametrize("name, call, error, match", LIBRARY_CASES, ids=[c[0] for c in LIBRARY_CASES])
def test_library_calls_name_the_bad_input(name, call, error, match):
    with pytest.raises(error, match=match):
        call()
