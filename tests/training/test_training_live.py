"""Training on a language model's activations: live streams, shard caches, the command line, the splice metrics."""

import json
from collections import Counter

import pytest
import torch
from accelerate.state import AcceleratorState

from hf_bae import BAEConfig, BinaryAutoencoder, SAEConfig, SparseAutoencoder
from hf_bae.cache import harvest
from hf_bae.cli import train as train_cli
from hf_bae.evaluation import downstream_fidelity
from hf_bae.sources import CacheSource, LiveSource
from hf_bae.testing import small_corpus, tiny_causal_lm
from hf_bae.training import Trainer, TrainingArguments


pytestmark = pytest.mark.usefixtures("fresh_accelerator_state")


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    """A tiny random Llama saved to disk, its tokenizer, and a text file of the small corpus."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    model, tokenizer = tiny_causal_lm("llama", folder)
    corpus = folder.parent / "corpus.txt"
    corpus.write_text("\n".join(small_corpus()))
    return model, tokenizer, folder, corpus


def cli(lm, out, *extra, layer=1):
    _, _, folder, corpus = lm
    return ["--model_name_or_path", str(folder), "--dataset", str(corpus), *(["--layer", str(layer)] if layer is not None else []), "--context_length", "32",
            "--lm_batch_size", "4", "--shuffle_rows", "8", "--batch_size", "64", "--validation_texts", "40",
            "--validation_tokens", "512", "--splice_rows", "4", "--log_every", "2", "--no_progress", "--no_plots",
            "--output_dir", str(out), *extra]


def test_live_source_resumes_on_the_same_tokens(lm):
    model, tokenizer, _, _ = lm
    texts = lambda: iter(small_corpus()[:300])  # noqa: E731
    site = "layers.1.resid_post"
    source = LiveSource(model, tokenizer, texts, [site], context_length=32, lm_batch_size=4, shuffle_rows=8, seed=3)
    run = list(source.batches(50))
    assert len(run) > 12
    assert {b.state["chunk"] for b in run[:12]} != {0}  # crosses chunks, so a carry is exercised
    for k in (3, 11):
        again = list(source.batches(50, run[k].state, run[k].tensors))
        assert len(again) == len(run) - k - 1
        assert all(torch.equal(a.activations[site], b.activations[site]) for a, b in zip(again, run[k + 1:]))
    # Every token of the stream is used once, however the chunks were cut (only the last < 50 are left).
    used = [tuple(r.tolist()) for b in run for r in b.activations[site]]
    stream = LiveSource(model, tokenizer, texts, [site], context_length=32, lm_batch_size=4)._stream(texts())
    every = [tuple(r.tolist()) for b in stream for r in b.activations[site]]
    assert not Counter(used) - Counter(every) and len(every) - len(used) < 50  # a multiset: contexts repeat


def test_cli_trains_bae_topk_and_a_transcoder_with_splice_metrics(lm, tmp_path):
    out = tmp_path / "run"
    code = train_cli.main(cli(lm, out, "--dictionaries", "bae", "topk", "transcoder", "--max_steps", "8",
                              "--validate_every", "4", "--k", "4", "--entropy_start_step", "2", "--plots"))
    assert code == 0
    options = json.loads((out / "training_args.json").read_text())
    assert options["layer"] == 1 and options["k"] == 4 and options["dictionaries"] == ["bae", "topk", "transcoder"]
    for name in ("bae", "topk", "transcoder"):
        final = json.loads((out / name / "eval_results.json").read_text())
        for key in ("fvu", "explained_variance", "mse", "l0", "dead_fraction", "dense_fraction", "dense_threshold",
                    "ce_loss_score", "kl_divergence", "js_divergence", "num_tokens"):
            assert isinstance(final[key], (int, float)), (name, key)
        assert final["kl_divergence"] >= 0 and 0 <= final["js_divergence"] <= 0.6932
        config = json.loads((out / name / "config.json").read_text())
        assert config["base_model"] == str(lm[2]) and config["layer"] == 1 and config["context_length"] == 32
        assert config["dataset"] == str(lm[3]) and config["token_filter"] == "special"
        assert (out / name / "plots" / "frequency_histogram.png").exists()
    assert "code_entropy_bits" in json.loads((out / "bae" / "eval_results.json").read_text())
    transcoder = json.loads((out / "transcoder" / "config.json").read_text())
    assert (transcoder["site"], transcoder["output_site"]) == ("mlp_in", "mlp_out")
    topk = SparseAutoencoder.from_pretrained(out / "topk")
    assert topk.config.activation == "topk" and topk.config.site == "resid_post"
    records = [json.loads(line) for line in (out / "bae" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "validation"] == [4, 8]
    assert all("ce_loss_score" in r for r in records if r["split"] == "validation")


def test_splice_metrics_are_exact_for_a_perfect_and_a_null_reconstruction(lm, tmp_path):
    model, tokenizer, _, _ = lm
    site = "layers.1.resid_post"

    class Identity(SparseAutoencoder):
        def forward(self, hidden_states, target=None, return_loss=True, l1_weight=None):
            out = super().forward(hidden_states, target, return_loss, l1_weight)
            out.reconstruction = hidden_states if self.config.activation == "none" else torch.zeros_like(hidden_states)
            return out

    ids = torch.randint(5, 500, (4, 32))
    metrics = {}
    for name, activation in (("perfect", "none"), ("null", "relu")):
        sae = Identity(SAEConfig(hidden_size=32, activation=activation))
        metrics[name] = downstream_fidelity(model, tokenizer, {name: (sae, site, None)}, ids)[name]
    assert metrics["perfect"]["kl_divergence"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["perfect"]["ce_loss_score"] == pytest.approx(1.0, abs=1e-4)
    assert metrics["null"]["ce_loss_score"] == pytest.approx(0.0, abs=1e-6)  # splicing zeros = zero-ablation


def test_training_from_a_shard_cache(lm, tmp_path):
    model, tokenizer, folder, _ = lm
    cache = tmp_path / "cache"
    harvest(cache, model, tokenizer, small_corpus(), ["layers.2.resid_post"], num_tokens=3000, context_length=32,
            batch_size=4, model_name=str(folder), progress=False)
    out = tmp_path / "run"
    assert train_cli.main(cli(lm, out, "--cache", str(cache), "--dictionaries", "bae", "relu", "--max_steps", "6",
                              "--validate_every", "0", "--dataset_split", "0.75", layer=None)) == 0
    config = json.loads((out / "relu" / "config.json").read_text())
    assert (config["layer"], config["site"], config["base_model"]) == (2, "resid_post", str(folder))
    final = json.loads((out / "relu" / "eval_results.json").read_text())
    assert final["num_tokens"] == 512 and "ce_loss_score" in final  # validation from the held-out 25 %
    # A dictionary of another width is refused with a message that says why.
    AcceleratorState._reset_state(True)
    with pytest.raises(ValueError, match="expects hidden size 48 .* is 32 wide"):
        Trainer(TrainingArguments(output_dir=str(tmp_path / "w"), progress=False),
                {"bae": BinaryAutoencoder(BAEConfig(hidden_size=48, layer=2))}, CacheSource(cache, ["layers.2.resid_post"]))
    with pytest.raises(ValueError, match="hidden size 48"):
        CacheSource(cache, ["layers.2.resid_post"], hidden_size=48)
    # --validation_tokens 0 asks for no held-out split (it used to fail with KeyError: 'rows').
    assert CacheSource(cache, ["layers.2.resid_post"]).validation(0, context_rows=8) is None
    AcceleratorState._reset_state(True)
    assert train_cli.main(cli(lm, tmp_path / "noval", "--cache", str(cache), "--dictionaries", "relu", "--max_steps", "3",
                              "--validate_every", "0", "--validation_tokens", "0", layer=None)) == 0


def test_empty_dataset_and_bad_layer_are_clear_errors(lm, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n   \n")
    assert train_cli.main(cli(lm, tmp_path / "a", "--dataset", str(empty), "--max_steps", "3")) == 2  # bad input (the exit-code policy of hf_bae.cli)
    assert "Not enough text for one row" in capsys.readouterr().err
    few = tmp_path / "few.txt"  # all of it held out for validation: nothing left to train on
    few.write_text("\n".join(" ".join(t.split()) for t in small_corpus()[:30]))
    assert train_cli.main(cli(lm, tmp_path / "c", "--dataset", str(few), "--max_steps", "3")) == 2
    assert "Not enough text for one row" in capsys.readouterr().err
    assert train_cli.main(cli(lm, tmp_path / "b", "--layer", "9", "--max_steps", "3")) == 2
    assert "--layer 9 is out of range" in capsys.readouterr().err
    # The refusal lost nothing: no run folder was written.
    assert not (tmp_path / "b" / "training_args.json").exists()


@pytest.mark.slow
def test_demo_runs_on_the_embedded_model_and_says_where_things_are(tmp_path, capsys):
    from hf_bae.activations import EMBEDDED_MODEL_ID
    from hf_bae.cli import demo

    out = tmp_path / "demo"
    assert demo.main(["--output-dir", str(out), "--max-tokens", "2048"]) == 0
    printed = capsys.readouterr().out
    for name in ("bae", "topk"):
        config = json.loads((out / name / "config.json").read_text())
        assert (config["base_model"], config["dataset"], config["layer"]) == (EMBEDDED_MODEL_ID, "sotu", 6)
        final = json.loads((out / name / "eval_results.json").read_text())
        assert final["training_tokens"] >= 2048 and "ce_loss_score" in final
        assert (out / name / "plots" / "loss.png").exists()
        assert f"{out}/{name}/plots" in printed
    assert "eval_results.json" in printed and "from_pretrained" in printed
    # A second demo replaces the first; a folder holding another kind of run is left alone.
    assert demo.main(["--output-dir", str(out), "--max-tokens", "1024"]) == 0
    assert json.loads((out / "bae" / "eval_results.json").read_text())["training_tokens"] == 1024
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "training_args.json").write_text("{}")
    assert demo.main(["--output-dir", str(tmp_path / "other")]) == 2
    assert "not a demo" in capsys.readouterr().err
