"""`hf-bae train` / `train.py` flags: generated from the dataclasses, with the original code's names as aliases;
and the downstream-fidelity metrics (pure functions)."""

import math
import runpy
import sys
from pathlib import Path

import pytest
import torch

from hf_bae.cli import train as train_cli
from hf_bae.metrics import (
    DownstreamStats,
    ce_loss_score,
    mean_abs_offdiagonal_covariance,
    next_token_divergences,
)
from hf_bae.training import BAEArguments, SAEArguments, TrainingArguments, build_dictionary

ROOT = Path(__file__).resolve().parents[2]


def test_original_flags_are_accepted():
    args, dictionary, bae, sae = train_cli.parse_args([
        "--lr", "1e-3", "--covarience_weight", "1e-6", "--inner_expand_rate", "2", "--dataset_split", "0.7",
        "--save_dir", "out", "--topk", "5", "--theta", "0.3", "--l1_norm_weight", "1e-7", "--bias",
        "--binarization_type", "sign", "--entropy_start_epoch", "3", "--l1_start_epoch", "1", "--cache", "c",
        "--inner_activation", "jumprelu", "--cycle_for_squarewave", "4", "--weight_decay", "0.01", "--batch_size", "256",
        "--num_epochs", "7", "--entropy_weight", "2e-7", "--entropy_threshold", "1.5", "--output_activation", "tanh",
        "--no_save_dictionaries", "--dictionaries", "bae", "sae",
    ])
    assert (args.learning_rate, args.train_fraction, args.output_dir, args.cache) == (1e-3, 0.7, "out", "c")
    assert (args.entropy_start_epoch, args.l1_start_epoch, args.num_epochs, args.batch_size) == (3, 1, 7, 256)
    assert (args.weight_decay, args.save_dictionaries, args.dictionaries) == (0.01, False, ["bae", "sae"])
    assert (dictionary.expansion_factor, dictionary.decoder_bias, dictionary.output_activation) == (2, True, "tanh")
    assert (bae.covariance_weight, bae.entropy_weight, bae.entropy_threshold, bae.squarewave_cycle) == (1e-6, 2e-7, 1.5, 4)
    assert (sae.k, sae.jumprelu_threshold, sae.l1_weight, sae.activation) == (5, 0.3, 1e-7, "jumprelu")
    built = build_dictionary("bae", 8, None, vars(dictionary), vars(bae), vars(sae), {"layer": 1})
    assert built.config.estimator == "identity" and built.config.num_latents == 16  # 'sign' -> identity


def test_preset_original_gives_the_original_setting_and_flags_still_win():
    args, dictionary, bae, sae = train_cli.parse_args(["--preset", "original", "--entropy_weight", "3e-7"])
    assert (dictionary.normalize_activations, bae.initial_firing_rate, bae.estimator) == ("none", None, "legacy_sign_s")
    assert (bae.entropy_weight, bae.covariance_weight) == (3e-7, 1e-7)
    assert (sae.l1_weight, sae.l1_reduction, sae.l1_decoder_norm, sae.auxk_weight) == (0.0, "sum", False, 0.0)
    # Without the preset: the measured recipe.
    _, dictionary, bae, sae = train_cli.parse_args([])
    assert (dictionary.normalize_activations, bae.initial_firing_rate, bae.estimator) == ("auto", 0.05, "identity")
    with pytest.raises(SystemExit):
        train_cli.parse_args(["--preset", "nope"])


def test_original_preset_step_is_the_original_loss_bit_for_bit():
    # With the preset, the model is the original's: raw states, MSE + 1e-7 H + 1e-7 sum|cov|, sign_s backward.
    from hf_bae import BAEConfig, BinaryAutoencoder
    from hf_bae.binarize import binarize
    from hf_bae.losses import covariance_penalty, minibatch_entropy, reconstruction_loss

    torch.manual_seed(0)
    bae = BinaryAutoencoder(BAEConfig.from_preset("original", hidden_size=12))
    x = 7.0 * torch.randn(64, 12)
    out = bae(x)
    out.loss.backward()
    ours = [p.grad.clone() for p in bae.parameters()]
    bae.zero_grad()
    codes = binarize(x @ bae.encoder.weight.T + bae.encoder.bias, "legacy_sign_s")
    reference = (reconstruction_loss(x, bae.decoder(codes)) + 1e-7 * minibatch_entropy(codes)
                 + 1e-7 * covariance_penalty(codes, binary=True))
    reference.backward()
    assert torch.equal(out.loss, reference)
    assert all(torch.equal(a, p.grad) for a, p in zip(ours, bae.parameters()))


def test_every_field_has_help_and_the_help_explains(capsys):
    import dataclasses

    for cls in (TrainingArguments, BAEArguments, SAEArguments):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help text"
    with pytest.raises(SystemExit):
        train_cli.parse_args(["--help"])
    out = capsys.readouterr().out
    for text in ("Training options", "BAE options", "SAE options", "--covarience_weight", "--entropy_start_tokens",
                 "--transcoder_target", "--resume", "accelerate launch"):
        assert text in out, text


def test_bad_flags_are_reported_not_raised(capsys):
    assert train_cli.main(["--batch_size", "0"]) == 2
    assert "--batch_size must be >= 1" in capsys.readouterr().err
    assert train_cli.main(["--no_such_flag", "1"]) == 2
    assert "--no_such_flag" in capsys.readouterr().err


def test_train_py_forwards_to_hf_bae_train(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["train.py", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(ROOT / "train.py"), run_name="__main__")
    assert exit_info.value.code == 0 and "usage: hf-bae train" in capsys.readouterr().out


# -- downstream fidelity ---------------------------------------------------------------------------


def test_divergences_match_their_definitions():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 5, 11, generator=g), torch.randn(3, 5, 11, generator=g)
    kl, js = next_token_divergences(a, b)
    p, q = a.double().softmax(-1), b.double().softmax(-1)
    m = (p + q) / 2
    torch.testing.assert_close(kl.double(), (p * (p / q).log()).sum(-1), rtol=1e-5, atol=1e-6)
    expected_js = 0.5 * (p * (p / m).log()).sum(-1) + 0.5 * (q * (q / m).log()).sum(-1)
    torch.testing.assert_close(js.double(), expected_js, rtol=1e-5, atol=1e-6)
    assert float(next_token_divergences(a, a)[0].abs().max()) < 1e-6
    assert float(js.max()) <= math.log(2)


def test_ce_loss_score_and_downstream_stats():
    assert ce_loss_score(2.0, 4.0, 2.0) == 1.0 and ce_loss_score(2.0, 4.0, 4.0) == 0.0
    assert ce_loss_score(2.0, 4.0, 3.0) == 0.5 and math.isnan(ce_loss_score(2.0, 2.0, 2.0))
    ids = torch.randint(0, 11, (2, 6))
    clean = torch.randn(2, 6, 11)
    stats = DownstreamStats()
    stats.update(ids, clean, torch.zeros(2, 6, 11), clean)  # a perfect splice against a uniform ablation
    s = stats.summary()
    assert s["kl_divergence"] == pytest.approx(0.0, abs=1e-6) and s["ce_loss_score"] == pytest.approx(1.0)
    assert s["ce_loss_zero_ablated"] == pytest.approx(math.log(11), rel=1e-5)
    assert stats.num_positions == 2 * 5  # the last position has no next token
    with pytest.raises(ValueError, match="empty"):
        DownstreamStats().summary()


def test_mean_abs_offdiagonal_covariance():
    codes = (torch.rand(64, 10) < 0.3).float()
    cov = torch.cov(codes.T).double()
    expected = (cov.abs().sum() - cov.diag().abs().sum()) / (10 * 9)
    assert mean_abs_offdiagonal_covariance(codes) == pytest.approx(float(expected), rel=1e-5)
    independent = torch.cat([torch.ones(32, 1), torch.zeros(32, 1)], 1)  # constant codes: no covariance
    assert mean_abs_offdiagonal_covariance(independent) == 0.0


def test_dense_by_deviation_counts_codes_that_leave_their_usual_value():
    from hf_bae.metrics import FeatureStats

    codes = torch.zeros(100, 4)
    codes[:, 0] = 1  # always on: dense by frequency, constant by deviation
    codes[:50, 1] = 1  # half the time: dense both ways
    codes[:5, 2] = 1  # rare
    stats = FeatureStats(4, num_codes=4, binary=True)
    stats.update(codes != 0, codes=codes)
    s = stats.summary(0.1)
    assert s["dense_fraction"] == 0.5 and s["dense_deviation_fraction"] == 0.25
    assert s["constant_code_fraction"] == 0.5  # codes 0 (always 1) and 3 (always 0)
