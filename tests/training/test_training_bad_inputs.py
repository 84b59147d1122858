"""Bad inputs of training (issue 17): `hf-bae train` flags and damaged run files as table rows (exit code of
the policy, one line naming the input, no traceback); damaged checkpoints and NaN activations through the
library, with the fallback to an intact checkpoint bitwise equal to an uninterrupted run."""

import json
import logging
import math

import pytest
import torch
from error_cases import EXIT_USAGE, Case, assert_clear_error
from safetensors.torch import load_file

from hf_bae import BAEConfig, BinaryAutoencoder
from hf_bae.sources import CacheSource, TensorSource
from hf_bae.training import NonFiniteActivationsError, Trainer, TrainingArguments

D = 8


pytestmark = pytest.mark.usefixtures("fresh_accelerator_state")


def train_argv(out, *extra):
    return ["train", "--output_dir", str(out), "--max_steps", "1", "--progress", "false", *extra]


def damaged_run(tmp_path, damage):
    """A finished tiny run in tmp_path/run (two checkpoints), damaged by `damage(run folder)`; the argv resuming it."""
    out = tmp_path / "run"
    x = torch.randn(2000, D, generator=torch.Generator().manual_seed(0))
    Trainer(args(out, max_steps=4, checkpoint_every=2), bae(), TensorSource({"x": x})).train()
    damage(out)
    return train_argv(out, "--resume")


def corrupt_training_args(out):
    (out / "training_args.json").write_text("{not json")


def corrupt_every_trainer_state(out):
    for checkpoint in (out / "checkpoints").iterdir():
        (checkpoint / "trainer_state.json").write_text("{")


CASES = [
    *[Case(f"--{flag} {value}", lambda t, f=flag, v=value: train_argv(t / "r", f"--{f}", v), EXIT_USAGE, (f"--{flag}",))
      for flag, value in (("learning_rate", "nan"), ("learning_rate", "inf"), ("learning_rate", "0"),
                          ("weight_decay", "nan"), ("max_grad_norm", "inf"), ("adam_beta1", "1"),
                          ("outlier_factor", "nan"), ("batch_size", "0"), ("max_steps", "-1"),
                          ("dense_threshold", "nan"))],
    *[Case(f"--{flag} nan", lambda t, f=flag: train_argv(t / "r", f"--{f}", "nan"), EXIT_USAGE, (flag, "finite"))
      for flag in ("entropy_weight", "covariance_weight", "estimator_temperature", "l1_weight",
                   "jumprelu_threshold", "initial_firing_rate")],
    Case("--k 0 (topk)", lambda t: train_argv(t / "r", "--dictionaries", "topk", "--k", "0"), EXIT_USAGE, ("k",)),
    Case("--resume with a corrupt training_args.json", lambda t: damaged_run(t, corrupt_training_args), EXIT_USAGE,
         ("training_args.json", "not valid JSON")),
    Case("--resume with every trainer_state.json corrupt", lambda t: damaged_run(t, corrupt_every_trainer_state),
         EXIT_USAGE, ("no intact checkpoint", "trainer_state.json")),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_a_bad_input_is_one_clear_line(case, tmp_path):
    argv = case.argv(tmp_path)
    assert_clear_error(Case(case.name, argv, case.code, case.mentions))


# -- library-level: checkpoints ------------------------------------------------------------------

def args(out, **kw):
    base = dict(output_dir=str(out), batch_size=100, max_steps=12, validate_every=0, log_every=4, checkpoint_every=4,
                save_total_limit=2, progress=False, splice_rows=0, seed=0, plots=False, initialization_tokens=200)
    return TrainingArguments(**{**base, **kw})


def bae():
    torch.manual_seed(0)
    return {"bae": BinaryAutoencoder(BAEConfig(hidden_size=D))}


def data(n=3000):
    return torch.randn(n, D, generator=torch.Generator().manual_seed(0))


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("damaged", ["model.safetensors", "optimizer.bin", "trainer_state.json", "data_state_0.json"])
def test_resume_skips_a_damaged_newest_checkpoint_bitwise(tmp_path, damaged, caplog):
    x = data()
    Trainer(args(tmp_path / "a"), bae(), TensorSource({"x": x})).train()
    # Interrupted after step 8 (checkpoints 4 and 8 kept); then the newest one is damaged.
    Trainer(args(tmp_path / "b", max_steps=8), bae(), TensorSource({"x": x})).train()
    newest = tmp_path / "b" / "checkpoints" / "checkpoint_00000008"
    truncate(newest / damaged)
    with caplog.at_level(logging.WARNING, logger="hf_bae.training.checkpoints"):
        trainer = Trainer(args(tmp_path / "b", resume=True), bae(), TensorSource({"x": x}))
    assert trainer.resume_from.name == "checkpoint_00000004"
    assert "skipped checkpoint_00000008" in caplog.text and damaged in caplog.text
    trainer.train()
    a, b = load_file(str(tmp_path / "a" / "bae" / "model.safetensors")), load_file(str(tmp_path / "b" / "bae" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_says_which_allowed_options_changed(tmp_path, capsys):
    x = data()
    Trainer(args(tmp_path, max_steps=4), bae(), TensorSource({"x": x})).train()
    Trainer(args(tmp_path, max_steps=6, learning_rate=1e-4, resume=True), bae(), TensorSource({"x": x})).train()
    assert "changed options: learning_rate: 0.0005 -> 0.0001" in capsys.readouterr().out


# -- library-level: NaN / inf activations ------------------------------------------------------------

def test_nan_in_tensors_names_the_row_and_can_be_skipped(tmp_path):
    x = data()
    x[1234, 3], x[2000, 0] = math.nan, math.inf
    with pytest.raises(NonFiniteActivationsError, match=r"1 of the 100 tokens of the batch of step 13, the first at "
                                                         r"row 1234 of the 'x' tensor.*--skip_nonfinite_tokens"):
        Trainer(args(tmp_path / "a", max_steps=30), bae(), TensorSource({"x": x}, shuffle=False)).train()
    Trainer(args(tmp_path / "b", max_steps=30, skip_nonfinite_tokens=True), bae(), TensorSource({"x": x}, shuffle=False)).train()
    final = json.loads((tmp_path / "b" / "bae" / "eval_results.json").read_text())
    assert final["nonfinite_tokens_skipped"] == 2 and math.isfinite(final["loss"] if "loss" in final else 0.0)


def test_nan_in_the_validation_split_is_named(tmp_path):
    v = data(300)
    v[7, 1] = math.nan
    with pytest.raises(NonFiniteActivationsError, match="the validation split, the first at held-out row 7"):
        Trainer(args(tmp_path, max_steps=2), bae(), TensorSource({"x": data()}, {"x": v})).train()


def poke_nan(shard, row):
    """Write NaN into element [row, 0] of the shard's 2-D float tensor, in place (same size and header)."""
    raw = bytearray(shard.read_bytes())
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + size])
    name, info = next((k, v) for k, v in header.items() if k != "__metadata__" and len(v["shape"]) == 2
                      and v["dtype"] in ("F32", "F16", "BF16"))
    dtype = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}[info["dtype"]]
    nan = torch.tensor([math.nan], dtype=dtype).view(torch.uint8).tolist()
    at = 8 + size + info["data_offsets"][0] + row * info["shape"][1] * len(nan)
    raw[at:at + len(nan)] = bytes(nan)
    shard.write_bytes(bytes(raw))


def test_nan_in_a_cache_shard_names_the_shard_and_row(tmp_path, tiny_lm):
    from hf_bae.cache import ActivationCache, harvest
    from hf_bae.testing import small_corpus

    model, tokenizer = tiny_lm()
    site = "layers.1.resid_post"
    cache = tmp_path / "cache"
    harvest(cache, model, tokenizer, small_corpus(), [site], num_tokens=1500, context_length=32, batch_size=4,
            progress=False)
    shard = cache / ActivationCache(cache).manifest.shards[0].file
    poke_nan(shard, row=5)
    width = model.config.hidden_size
    run = dict(batch_size=50, max_steps=40)
    with pytest.raises(NonFiniteActivationsError, match=rf"{shard.name}, row 5"):
        Trainer(args(tmp_path / "a", **run), {"bae": BinaryAutoencoder(BAEConfig(hidden_size=width))},
                CacheSource(cache, [site], train_fraction=1.0)).train()
    Trainer(args(tmp_path / "b", skip_nonfinite_tokens=True, **run),
            {"bae": BinaryAutoencoder(BAEConfig(hidden_size=width))}, CacheSource(cache, [site], train_fraction=1.0)).train()
    # 40 batches of 50 read the ~1,500 tokens once and then part of a second epoch: the bad token is counted
    # each time it is read.
    assert json.loads((tmp_path / "b" / "bae" / "eval_results.json").read_text())["nonfinite_tokens_skipped"] in (1, 2)
