"""Feature-set entropy: the estimator, its streaming, compression, synthetic recovery, ICL prompts, the CLI."""

import csv
import json
import math
import warnings

import pytest
import torch

from hf_bae import BAEConfig, BinaryAutoencoder
from hf_bae.entropy import (
    EntropyAccumulator,
    EntropyWarning,
    check_bae_fits,
    compress_codes,
    compressed_size_bits,
    decompress_codes,
    feature_set_entropy,
    poisson_bootstrap_weights,
)
from hf_bae.entropy.icl import ICLTask, list_tasks, load_task, run_prompts, sample_prompts
from hf_bae.losses import binary_entropy_bits


def _bernoulli_codes(n, p, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, len(p), generator=g) < torch.tensor(p)).float()


# ---------------------------------------------------------------------------------------------
# The estimator
# ---------------------------------------------------------------------------------------------
def test_streaming_counts_equal_the_in_memory_computation_exactly():
    codes = _bernoulli_codes(3000, [0.02, 0.1, 0.3, 0.5, 0.7, 0.0, 1.0] * 6, seed=1)
    groups = torch.arange(3000) // 7  # 7 tokens per "text": a cluster bootstrap
    whole = EntropyAccumulator(codes.shape[1], num_bootstrap=50, seed=3, correlation_codes=20)
    whole.update(codes, groups)
    streamed = EntropyAccumulator(codes.shape[1], num_bootstrap=50, seed=3, correlation_codes=20)
    for start, stop in [(0, 1), (1, 500), (500, 1234), (1234, 3000)]:  # cuts through groups
        streamed.update(codes[start:stop], groups[start:stop])
    assert torch.equal(whole.counts, streamed.counts)
    assert torch.equal(whole.cooccurrence, streamed.cooccurrence)
    assert torch.equal(whole.boot_counts, streamed.boot_counts)
    a, b = whole.report(), streamed.report()
    assert a.to_dict() == b.to_dict()
    assert torch.equal(a.per_code_bits, b.per_code_bits)
    assert a.num_groups == math.ceil(3000 / 7)
    # The plug-in total is exactly the sum of per-code binary entropies of the in-memory rates.
    p = codes.double().mean(0)
    expected = binary_entropy_bits(p, eps=0.0).nan_to_num(0.0).sum()
    assert a.total_bits == pytest.approx(float(expected), abs=1e-9)


def test_known_entropy_bias_correction_and_interval():
    p = [0.05, 0.2, 0.5, 0.35, 0.1] * 4
    truth = float(binary_entropy_bits(torch.tensor(p, dtype=torch.float64), eps=0).sum())
    covered, errors = 0, []
    for seed in range(10):
        acc = EntropyAccumulator(len(p), num_bootstrap=200, seed=seed)
        acc.update(_bernoulli_codes(2000, p, seed))
        r = acc.report()
        assert r.miller_madow_bits > r.total_bits  # the correction adds live / (2 N ln 2)
        assert r.miller_madow_bits - r.total_bits == pytest.approx(r.live_codes / (2 * 2000 * math.log(2)))
        assert r.ci_low < r.miller_madow_bits < r.ci_high
        covered += r.ci_low <= truth <= r.ci_high
        errors.append(r.miller_madow_bits - truth)
        assert r.mean_abs_correlation < 0.05 and r.max_pairwise_mutual_information_bits < 0.01
    assert covered >= 8  # nominal 95 %
    assert abs(sum(errors) / len(errors)) < 0.05


def test_independence_diagnostic_sees_duplicated_codes():
    base = _bernoulli_codes(4000, [0.3, 0.5, 0.2], seed=2)
    codes = torch.cat([base, base[:, :1], 1 - base[:, 1:2]], dim=1)  # a copy and a complement
    acc = EntropyAccumulator(5, num_bootstrap=0)
    acc.update(codes)
    r = acc.report()
    assert r.max_abs_correlation == pytest.approx(1.0)
    h0 = float(r.per_code_bits[0])
    # The largest pairwise MI is the duplicated code's full entropy: the sum over-counts at least that much.
    assert r.max_pairwise_mutual_information_bits == pytest.approx(max(h0, float(r.per_code_bits[1])), rel=1e-6)
    assert r.ci_low == r.ci_high == r.miller_madow_bits  # no bootstrap asked for


def test_poisson_weights_are_a_function_of_the_group_only():
    ids = torch.arange(20000)
    w = poisson_bootstrap_weights(ids, 8, seed=5)
    assert w.shape == (20000, 8)
    assert float(w.mean()) == pytest.approx(1.0, abs=0.02) and float(w.var()) == pytest.approx(1.0, abs=0.03)
    assert torch.equal(poisson_bootstrap_weights(ids[123:456], 8, seed=5), w[123:456])
    assert not torch.equal(poisson_bootstrap_weights(ids[:100], 8, seed=6), w[:100])


def test_too_few_samples_warn_with_the_count():
    acc = EntropyAccumulator(4, num_bootstrap=10)
    acc.update(_bernoulli_codes(37, [0.5] * 4))
    with pytest.warns(EntropyWarning, match="Only 37 samples"):
        acc.report(min_samples=256)
    with pytest.raises(ValueError, match="No samples"):
        EntropyAccumulator(4).report()


def test_bae_of_another_width_is_refused_with_a_clear_message(tiny_lm):
    lm, _ = tiny_lm("llama")  # hidden size 32
    bae = BinaryAutoencoder(BAEConfig(hidden_size=16, layer=1, base_model="somewhere/else"))
    with pytest.raises(ValueError, match="width 16.*32 wide"):
        check_bae_fits(bae, lm, "layers.1.resid_post")
    with pytest.raises(ValueError, match="hidden size 16"):
        feature_set_entropy(bae, torch.randn(10, 32))


def test_feature_set_entropy_on_batches_and_multibit():
    bae = BinaryAutoencoder(BAEConfig(hidden_size=8, latent_size=6, bits=2))
    x = torch.randn(600, 8)
    one = feature_set_entropy(bae, x, num_bootstrap=20)
    parts = feature_set_entropy(bae, (x[i:i + 100] for i in range(0, 600, 100)), num_bootstrap=20, batch_size=64)
    assert one.to_dict() == parts.to_dict()
    assert one.num_codes == 12 and one.per_feature_bits.shape == (6,)
    assert float(one.per_feature_bits.sum()) == pytest.approx(one.total_bits, rel=1e-6)


# ---------------------------------------------------------------------------------------------
# Compression (the original's utility, lossless)
# ---------------------------------------------------------------------------------------------
def test_compression_round_trip_and_size():
    codes = _bernoulli_codes(64, [0.05, 0.9, 0.3, 0.6] * 5, seed=4)
    codes[:, 0] = torch.arange(64) % 2  # a code whose mean is exactly 0.5: the original loses its ones
    packed = compress_codes(codes)
    assert torch.equal(decompress_codes(packed), codes)
    assert packed.size_bits() == compressed_size_bits(codes.sum(0), 64)
    acc = EntropyAccumulator(codes.shape[1], num_bootstrap=0)
    acc.update(codes)
    assert acc.report(min_samples=0).compressed_bits_per_sample == pytest.approx(packed.size_bits() / 64)
    again = compress_codes(codes[:10], reference=packed.reference)  # reuse a reference (later batches)
    assert torch.equal(decompress_codes(again), codes[:10])


# ---------------------------------------------------------------------------------------------
# Synthetic validation (Sec. 4.1 of the paper): known entropy, trained BAE
# ---------------------------------------------------------------------------------------------
def _synthetic(seed, factors=6, d=16, n=2048, noise=0.05):
    """h = Σ_k (z_k − p_k) u_k + noise with z_k ~ Bernoulli(p_k) independent; true entropy Σ H_b(p_k)."""
    g = torch.Generator().manual_seed(seed)
    p = torch.linspace(0.15, 0.5, factors)
    directions = torch.randn(factors, d, generator=g)
    directions = directions / directions.norm(dim=1, keepdim=True) * 3
    z = (torch.rand(2 * n, factors, generator=g) < p).float()
    h = (z - p) @ directions + noise * torch.randn(2 * n, d, generator=g)
    return h[:n], h[n:], float(binary_entropy_bits(p.double(), eps=0).sum())


def _train_synthetic_bae(h, seed):
    # 2x over-complete; the sigmoid estimator; entropy and covariance penalties, then a short phase with
    # a small entropy weight so the surviving codes settle on the factors (recipe and seeds in RESULTS.md).
    torch.manual_seed(seed)
    bae = BinaryAutoencoder(BAEConfig(hidden_size=16, latent_size=12, estimator="sigmoid", entropy_weight=3e-2,
                                      covariance_weight=1e-2))
    opt = torch.optim.Adam(bae.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(seed)
    for step in range(1200):
        batch = h[torch.randint(0, h.shape[0], (256,), generator=g)]
        loss = bae(batch, entropy_weight=3e-2 if step < 800 else 1e-3).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return bae


@pytest.mark.slow
def test_trained_bae_recovers_the_known_entropy_of_independent_factors():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        covered, results = 0, []
        for seed in range(4):
            train, held_out, truth = _synthetic(seed)
            report = feature_set_entropy(_train_synthetic_bae(train, seed), held_out, num_bootstrap=200, seed=seed)
            results.append((truth, report.miller_madow_bits, report.ci_low, report.ci_high))
            assert abs(report.miller_madow_bits - truth) / truth < 0.10, results
            assert report.mean_abs_correlation < 0.1
            covered += report.ci_low <= truth <= report.ci_high
        assert covered >= 3, results
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------
# ICL tasks and prompts
# ---------------------------------------------------------------------------------------------
def test_shipped_tasks_load():
    assert {"antonyms", "country_capital", "sentiment"} <= set(list_tasks())
    for name in list_tasks():
        task = load_task(name)
        assert 30 <= len(task.items) <= 60 and all(a and b for a, b in task.items)
    assert load_task("sentiment").labels == ["positive", "negative"]


def test_task_file_with_a_missing_label_is_refused(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"input": "hot", "label": "cold"}\n{"input": "up"}\n')
    with pytest.raises(ValueError, match="line 2: missing or empty 'label'"):
        load_task(str(path))
    with pytest.raises(ValueError, match="No task file"):
        load_task("no_such_task")


def test_demonstrations_are_sampled_nested_and_never_the_query():
    task = ICLTask("t", [(f"w{i}", f"l{i}") for i in range(30)] + [("w3", "dup")])
    queries = [3, 7, 11, 20]
    for k in range(5):
        for prompt in sample_prompts(task, k, queries, seed=1):
            assert prompt.query not in prompt.demonstrations and len(prompt.demonstrations) == k
            assert all(task.items[d][0] != task.items[prompt.query][0] for d in prompt.demonstrations)
            assert prompt.text.endswith(f"Input: {task.items[prompt.query][0]}\nOutput:")
    three = sample_prompts(task, 3, queries, seed=1)
    four = sample_prompts(task, 4, queries, seed=1)
    assert all(a.demonstrations == b.demonstrations[:3] for a, b in zip(three, four))  # nested over k
    assert len({tuple(p.demonstrations) for p in four}) == 4  # not the first k items for everyone (original bug)
    assert [p.demonstrations for p in sample_prompts(task, 4, queries, seed=1)] == [p.demonstrations for p in four]
    assert [p.demonstrations for p in sample_prompts(task, 4, queries, seed=2)] != [p.demonstrations for p in four]


def test_run_prompts_reads_the_last_prompt_token_and_steers_it(tiny_lm):
    from hf_bae.sites import HookedForward

    lm, tok = tiny_lm("llama")
    task = ICLTask("t", [(f"the word {i}", "of") for i in range(10)])
    prompts = sample_prompts(task, 2, [0, 1, 2], seed=0)
    hidden, correct = run_prompts(lm, tok, prompts, "layers.1.resid_post", batch_size=2)
    assert hidden.shape == (3, 32) and correct.dtype == torch.bool
    ids = [tok.bos_token_id] + tok(prompts[1].text, add_special_tokens=False)["input_ids"]
    alone = HookedForward(lm, ["layers.1.resid_post"])(torch.tensor([ids]))["layers.1.resid_post"][0, -1]
    assert torch.allclose(hidden[1], alone, atol=1e-5)  # padding and the appended label change nothing
    vector = torch.randn(32)
    steered, _ = run_prompts(lm, tok, prompts, "layers.1.resid_post", batch_size=2, steering=vector)
    assert torch.allclose(steered, hidden + vector, atol=1e-5)


def test_icl_entropy_and_steering_on_a_tiny_model(tiny_lm):
    from hf_bae.entropy.icl import icl_entropy, icl_steering

    lm, tok = tiny_lm("llama")
    bae = BinaryAutoencoder(BAEConfig(hidden_size=32, latent_size=16, layer=1))
    task = load_task("antonyms")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EntropyWarning)
        points = icl_entropy(lm, tok, bae, task, 2, num_queries=6, num_bootstrap=20, progress=False)
    assert [p.shots for p in points] == [0, 1, 2] and all(p.num_prompts == 6 for p in points)
    assert all(0 <= p.accuracy <= 1 and p.report.num_groups == 6 for p in points)
    result = icl_steering(lm, tok, bae, task, shots=2, num_features=4, progress=False)
    assert result.num_build_prompts + result.num_eval_prompts == len(task.items)
    assert len(result.features) == 4 and all(0 <= a <= 1 for a in (result.accuracy_bae_vector,
                                                                   result.accuracy_centroid_vector))


# ---------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------
def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_cli_positions_and_errors_on_a_tiny_model(tiny_lm, tmp_path, capsys):
    from hf_bae.cli import entropy as cli
    from hf_bae.testing import small_corpus

    lm, _ = tiny_lm("llama")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(small_corpus()))
    common = ["--model", lm.name_or_path, "--dataset", str(corpus), "--no_progress", "--num_bootstrap", "20",
              "--latent_size", "16", "--train_steps", "5", "--train_batch_size", "32", "--min_samples", "0"]
    out = tmp_path / "pos"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert cli.main(["positions", "--train", "--layer", "1", "--max_position", "5", "--num_rows", "80",
                         "--output_dir", str(out), *common]) == 0
    rows = _rows(out / "positions.csv")
    assert [int(r["position"]) for r in rows] == [1, 2, 3, 4] and (out / "positions.png").stat().st_size > 10_000
    # The trained per-position BAEs are reusable.
    assert cli.main(["positions", "--bae_dir", str(out / "baes"), "--max_position", "5", "--num_rows", "40",
                     "--output_dir", str(tmp_path / "pos2"), *common[:7], "--min_samples", "0"]) == 0
    # Bad input: a task file without a label, a BAE of another width, nothing to read.
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": "a", "label": "b"}\n{"input": "c", "label": ""}\n')
    assert cli.main(["icl", "--task", str(bad), "--bae", str(out / "baes" / "position_1"), *common[:4]]) == 2
    assert "line 2" in capsys.readouterr().err
    other = BinaryAutoencoder(BAEConfig(hidden_size=24, layer=1))
    other.save_pretrained(tmp_path / "other")
    assert cli.main(["estimate", "--bae", str(tmp_path / "other"), *common[:4]]) == 2
    assert "width 24" in capsys.readouterr().err
    assert cli.main(["layers", *common[:4]]) == 2
    assert cli.main(["nonsense"]) == 2


@pytest.mark.slow
def test_cli_layer_and_icl_curves_on_the_embedded_model(tmp_path):
    """End to end on SmolLM2-135M: train 2 small BAEs, the layer curve, then the ICL curve with one of them."""
    from hf_bae.cli import entropy as cli

    out = tmp_path / "layers"
    small = ["--no_progress", "--num_bootstrap", "50", "--context_length", "64", "--min_samples", "0"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert cli.main(["layers", "--train", "--layers", "3", "9", "--latent_size", "128", "--train_steps", "20",
                         "--train_batch_size", "128", "--eval_texts", "20", "--num_tokens", "1024",
                         "--output_dir", str(out), *small]) == 0
        rows = _rows(out / "layers.csv")
        assert [int(r["layer"]) for r in rows] == [3, 9]
        for r in rows:
            assert float(r["ci_low"]) <= float(r["miller_madow_bits"]) <= float(r["ci_high"])
            assert int(r["num_samples"]) == 1024 and 0 < float(r["miller_madow_bits"]) <= 128
        assert (out / "layers.png").stat().st_size > 10_000
        icl = tmp_path / "icl"
        assert cli.main(["icl", "--bae", str(out / "baes" / "layer_9"), "--task", "country_capital", "--max_shots", "2",
                         "--num_queries", "8", "--output_dir", str(icl), *small]) == 0
    rows = _rows(icl / "icl_country_capital.csv")
    assert [int(r["shots"]) for r in rows] == [0, 1, 2]
    assert all(0 <= float(r["accuracy"]) <= 1 for r in rows)
    assert (icl / "icl_country_capital.png").stat().st_size > 10_000
    config = json.loads((out / "baes" / "layer_9" / "config.json").read_text())
    assert config["layer"] == 9 and config["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
