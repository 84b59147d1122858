import math

import pytest
import torch

from hf_bae.metrics import FeatureStats, entropy_bits_from_counts, features_fired, fraction_of_variance_unexplained


def test_fvu_of_perfect_and_mean_reconstructions():
    x = torch.randn(100, 8)
    assert fraction_of_variance_unexplained(x, x) == 0.0
    assert fraction_of_variance_unexplained(x, x.mean(0, keepdim=True).expand_as(x)) == pytest.approx(1.0)


def test_streaming_stats_equal_the_in_memory_computation():
    torch.manual_seed(1)
    codes = (torch.rand(300, 12) < torch.linspace(0, 0.6, 12)).float()  # feature 0 is dead
    x, xhat = torch.randn(300, 5), torch.randn(300, 5)
    stats = FeatureStats(num_features=12, binary=True)
    for i in range(0, 300, 64):
        stats.update(features_fired(codes[i : i + 64]), x[i : i + 64], xhat[i : i + 64], codes=codes[i : i + 64])
    s = stats.summary(dense_threshold=0.3)
    p = codes.double().mean(0)
    assert s["num_tokens"] == 300 and s["dead_features"] == 1
    assert s["dense_features"] == int((p > 0.3).sum())
    assert s["l0"] == pytest.approx(codes.sum(1).mean().item())
    assert s["fvu"] == pytest.approx(fraction_of_variance_unexplained(x, xhat), rel=1e-9)
    assert s["mse"] == pytest.approx(((x - xhat) ** 2).mean().item(), rel=1e-6)
    ref = sum(0 if q in (0, 1) else -(q * math.log2(q) + (1 - q) * math.log2(1 - q)) for q in p.tolist())
    assert s["code_entropy_bits"] == pytest.approx(ref, rel=1e-9)


def test_merge_adds_counts():
    a, b = FeatureStats(num_features=3), FeatureStats(num_features=3)
    a.update(torch.tensor([[1, 0, 0]]))
    b.update(torch.tensor([[1, 1, 0], [0, 1, 0]]))
    a.merge(b)
    assert a.num_tokens == 3 and a.fire_counts.tolist() == [2, 2, 0]


def test_multibit_feature_fires_when_any_bit_is_set():
    codes = torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    assert features_fired(codes, bits=2).tolist() == [[True, False]]


def test_empty_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="no tokens were evaluated"):
        FeatureStats(num_features=2).summary()
    with pytest.raises(ValueError, match="empty set"):
        entropy_bits_from_counts(torch.zeros(2), 0)
