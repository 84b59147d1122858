"""Activation normalisation (estimate, train in normalised units, fold into the weights) and the BAE's
encoder-bias initialisation to a target firing rate."""

import pytest
import torch
from accelerate.state import AcceleratorState

from hf_bae import BAEConfig, BinaryAutoencoder, SAEConfig, SparseAutoencoder
from hf_bae.normalization import encoder_bias_for_rate, normalization_statistics
from hf_bae.sources import TensorSource
from hf_bae.training import Trainer, TrainingArguments

D = 16


pytestmark = pytest.mark.usefixtures("fresh_accelerator_state")


def raw_states(n=3000, d=D, seed=0):
    # Far from normalised: a large mean and a scale of 40, as real residual streams are.
    g = torch.Generator().manual_seed(seed)
    return 40.0 * torch.randn(n, d, generator=g) + 15.0 * torch.randn(d, generator=g)


def args_for(out, **kw):
    base = dict(output_dir=str(out), batch_size=100, max_steps=20, validate_every=0, log_every=5, checkpoint_every=0,
                progress=False, splice_rows=0, seed=0, plots=False, initialization_tokens=1000)
    base.update(kw)
    return TrainingArguments(**base)


def test_statistics_make_the_mean_squared_norm_d():
    x = raw_states()
    for center in (False, True):
        mean, scale = normalization_statistics(x, center)
        normalised = (x - mean) * scale
        assert normalised.pow(2).sum(-1).mean().item() == pytest.approx(D, rel=1e-5)
        assert (mean.abs().max() > 1) == center
    with pytest.raises(ValueError, match="mean squared norm"):
        normalization_statistics(torch.ones(10, D) * 0.0, center=True)


@pytest.mark.parametrize("kind", ["bae", "topk", "relu"])
def test_folding_keeps_the_outputs_on_raw_states(kind):
    torch.manual_seed(0)
    x = raw_states(200)
    config = dict(hidden_size=D, normalize_activations="center_scale")
    model = (BinaryAutoencoder(BAEConfig(**config)) if kind == "bae"
             else SparseAutoencoder(SAEConfig(**config, activation=kind, k=4)))
    mean, scale = normalization_statistics(x, center=True)
    model.set_normalization(mean, scale)
    before = model(x)
    model.fold_normalization()
    after = model(x)
    assert model.config.activation_scale == pytest.approx(scale)
    assert model.normalization is None
    assert torch.allclose(before.reconstruction, after.reconstruction, rtol=1e-4, atol=1e-3)
    assert torch.allclose(before.pre_activations, after.pre_activations, rtol=1e-4, atol=1e-4)
    # The loss stays in normalised units after folding: the same number, not s^-2 times it.
    assert after.reconstruction_loss.item() == pytest.approx(before.reconstruction_loss.item(), rel=1e-4)
    with pytest.raises(ValueError, match="already folded"):
        model.set_normalization(mean, scale)


def test_a_trained_model_saved_and_reloaded_matches_the_in_memory_one_on_raw_states(tmp_path):
    x = raw_states()
    torch.manual_seed(0)
    models = {"bae": BinaryAutoencoder(BAEConfig(hidden_size=D, covariance_weight=0.0)),
              "topk": SparseAutoencoder(SAEConfig(hidden_size=D, activation="topk", k=4))}
    Trainer(args_for(tmp_path, learning_rate=1e-2, max_steps=50), models,
            TensorSource({"x": x[:2500]}, {"x": x[2500:]})).train()
    held_out = x[2500:]
    for name, model in models.items():
        reloaded = type(model).from_pretrained(tmp_path / name)
        assert reloaded.config.activation_scale == model.config.activation_scale is not None
        assert reloaded.config.normalize_activations == "center_scale"
        a, b = model(held_out), reloaded(held_out)
        assert torch.equal(a.reconstruction, b.reconstruction)
        # The dictionary learned something on raw inputs of scale 40 (the reconstruction beats the mean).
        fvu = (held_out - a.reconstruction).pow(2).sum() / (held_out - held_out.mean(0)).pow(2).sum()
        assert fvu < 0.9


def test_loss_weights_mean_the_same_at_any_input_scale(tmp_path):
    # Normalised training is invariant to the input's scale: the same codes at scale 1 and 1000.
    x = raw_states()
    codes = []
    for i, factor in enumerate((1.0, 1000.0)):
        AcceleratorState._reset_state(True)
        torch.manual_seed(0)
        model = BinaryAutoencoder(BAEConfig(hidden_size=D, entropy_weight=1e-2, covariance_weight=1e-4,
                                            normalize_activations="scale"))
        Trainer(args_for(tmp_path / str(i), max_steps=10), {"bae": model},
                TensorSource({"x": x * factor})).train()
        codes.append(model.encode(x[:500] * factor))
    assert (codes[0] != codes[1]).float().mean() < 0.01


def test_resume_restores_the_normalisation(tmp_path):
    x = raw_states()

    def run(out, **kw):
        AcceleratorState._reset_state(True)
        torch.manual_seed(0)
        model = BinaryAutoencoder(BAEConfig(hidden_size=D, entropy_weight=1e-2, covariance_weight=1e-4))
        Trainer(args_for(out, **kw), {"bae": model}, TensorSource({"x": x})).train()
        return model

    whole = run(tmp_path / "a", max_steps=20)
    run(tmp_path / "b", max_steps=10)
    resumed = run(tmp_path / "b", max_steps=20, resume=True)
    assert resumed.config.activation_scale == whole.config.activation_scale
    for key, value in whole.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


def test_bias_initialisation_hits_the_target_rate():
    g = torch.Generator().manual_seed(0)
    pre = torch.randn(4000, 50, generator=g) * torch.rand(50, generator=g) * 10 + torch.randn(50, generator=g)
    for rate in (0.02, 0.3):
        bias = encoder_bias_for_rate(pre, rate)
        fired = ((pre + bias) > 0).float().mean(0)
        assert torch.allclose(fired, torch.full_like(fired, rate), atol=1.5 / 4000 + 1e-6)
    with pytest.raises(ValueError, match="firing rate"):
        encoder_bias_for_rate(pre, 1.0)


def test_trainer_starts_bae_codes_at_the_configured_rate(tmp_path):
    x = raw_states()
    torch.manual_seed(0)
    model = BinaryAutoencoder(BAEConfig(hidden_size=D, expansion_factor=8, initial_firing_rate=0.05,
                                        entropy_weight=0.0, covariance_weight=0.0))
    trainer = Trainer(args_for(tmp_path, max_steps=1, learning_rate=1e-12), {"bae": model}, TensorSource({"x": x}))
    trainer.train()
    rate = model.encode(x[:1000]).float().mean().item()
    assert rate == pytest.approx(0.05, abs=0.01)
    # Without it (PyTorch's init, as the original code), about half of the codes fire.
    AcceleratorState._reset_state(True)
    torch.manual_seed(0)
    plain = BinaryAutoencoder(BAEConfig(hidden_size=D, expansion_factor=8, initial_firing_rate=None,
                                        entropy_weight=0.0, covariance_weight=0.0))
    Trainer(args_for(tmp_path / "p", max_steps=1, learning_rate=1e-12), {"bae": plain}, TensorSource({"x": x})).train()
    assert plain.encode(x[:1000]).float().mean().item() > 0.3


@pytest.mark.parametrize("kwargs, message", [
    (dict(normalize_activations="center_scale", output_activation="relu"), "output_activation"),
    (dict(normalize_activations="center_scale", decoder_bias=False), "decoder_bias"),
    (dict(activation_scale=float("nan")), "activation_scale"),
    (dict(initial_firing_rate=1.5), "initial_firing_rate"),
])
def test_bad_normalisation_options_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BAEConfig(hidden_size=D, **kwargs)


def test_auxk_gives_dead_latents_a_gradient():
    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(hidden_size=D, activation="topk", k=2, expansion_factor=4))
    x = torch.randn(64, D)
    dead = torch.zeros(sae.config.num_latents, dtype=torch.bool)
    dead[:20] = True
    out = sae(x, dead_mask=dead)
    assert out.auxk_loss is not None and out.auxk_loss > 0
    out.loss.backward()
    grads = sae.encoder.weight.grad.abs().sum(-1)
    plain = SparseAutoencoder(sae.config)
    plain.load_state_dict(sae.state_dict())
    plain(x).loss.backward()
    # Dead latents that never make the top k get a gradient only through AuxK.
    never = (plain.encode(x) == 0).all(0) & dead
    assert never.any()
    assert (grads[never] > 0).all() and (plain.encoder.weight.grad.abs().sum(-1)[never] == 0).all()


def test_unit_norm_encoder_rows_leave_the_codes_unchanged():
    torch.manual_seed(0)
    bae = BinaryAutoencoder(BAEConfig(hidden_size=D))
    x = torch.randn(500, D)
    before = bae.encode(x)
    bae.normalize_encoder_rows()
    assert torch.allclose(bae.encoder.weight.norm(dim=1), torch.ones(bae.config.num_codes))
    assert (bae.encode(x) != before).float().mean() < 1e-3  # only rounding at an exact tie could flip a code


def test_training_keeps_unit_rows_and_gives_the_bias_its_own_learning_rate(tmp_path):
    x = raw_states()
    for scale in (1.0, 30.0):
        AcceleratorState._reset_state(True)
        torch.manual_seed(0)
        model = BinaryAutoencoder(BAEConfig(hidden_size=D, encoder_bias_lr_scale=scale, normalize_activations="scale"))
        trainer = Trainer(args_for(tmp_path / str(scale), max_steps=5), {"bae": model}, TensorSource({"x": x}))
        trainer._finish = lambda: None  # keep the unfolded weights to look at
        trainer.train()
        norms = model.encoder.weight.norm(dim=1)
        assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
        groups = trainer.entries[0].optimizer.param_groups
        assert [g["lr"] for g in groups] == ([5e-4] if scale == 1.0 else [5e-4, 5e-4 * scale])
    with pytest.raises(ValueError, match="encoder_bias_lr_scale"):
        BAEConfig(encoder_bias_lr_scale=0.0)
