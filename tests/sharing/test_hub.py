"""Model cards, naming, layouts and bad input of `hf-bae push`, without a server: a dry run
(`output_dir`) stages exactly the folder that would be uploaded. The Hub round trip is in
test_hub_roundtrip.py."""

import json
import shutil

import pytest
import torch
from huggingface_hub import ModelCard, metadata_load
from huggingface_hub.repocard_data import model_index_to_eval_results
from trained_runs import BASE_MODEL, D, activations, make_run

import hf_bae
from hf_bae import BAEConfig, BinaryAutoencoder, SAEConfig, SparseAutoencoder
from hf_bae.cli import main as cli
from hf_bae.hub import push_run
from hf_bae.loading import LocalDictionary, assign_names, find_dictionaries
from hf_bae.model_card import model_cards_dir


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("run") / "run"
    make_run(path)
    return path


def test_dry_run_stages_one_subfolder_per_hookpoint_with_everything(run, tmp_path):
    result = push_run(run, "tester/dicts", output_dir=tmp_path / "out", saelens=True)
    assert result.commit_oid is None
    assert result.subfolders == {"bae": "layers.1.resid_post.bae", "relu": "layers.0.mlp_out", "topk": "layers.1.resid_post.topk"}
    out = tmp_path / "out"
    for name, folder in result.subfolders.items():
        staged = out / folder
        assert json.loads((staged / "config.json").read_text())["auto_map"]["AutoModel"].startswith("modeling_")
        assert (staged / "eval_results.json").read_bytes() == (run / name / "eval_results.json").read_bytes()
        assert (staged / "training_args.json").read_bytes() == (run / "training_args.json").read_bytes()
        assert (staged / "plots" / "loss.png").is_file() and (staged / "metrics.jsonl").is_file()
    assert (out / "modeling_bae.py").is_file() and (out / "modeling_sae.py").is_file()  # root code for trust_remote_code
    assert sorted(p.name for p in (out / "saelens").iterdir()) == ["layers.0.mlp_out", "layers.1.resid_post.topk"]
    assert not (out / "checkpoints").exists()
    # what was staged loads back to the same dictionaries, under the same names load_all gives the run
    x = activations(5, seed=3)
    staged, original = hf_bae.load_all(out), hf_bae.load_all(run)
    assert set(staged) == set(original) == set(result.subfolders.values())
    for name in staged:
        assert torch.equal(staged[name](x, return_loss=False).reconstruction, original[name](x, return_loss=False).reconstruction)


def test_card_metadata_validates_and_model_index_is_readable(run, tmp_path):
    push_run(run, "tester/dicts", output_dir=tmp_path / "out")
    readme = tmp_path / "out" / "README.md"
    card = ModelCard.load(readme)
    data = card.data
    assert data.library_name == "hf_bae" and data.license == "mit" and data.base_model == BASE_MODEL
    assert data.datasets == ["acme/tiny-corpus"]
    assert {"binary-autoencoder", "sparse-autoencoder", "interpretability", "topk", "relu"} <= set(data.tags)
    # ModelCardData round-trips its own YAML, and metadata_load + model_index_to_eval_results read the model-index
    assert type(data)(**data.to_dict()).to_dict() == data.to_dict()
    meta = metadata_load(readme)
    name, results = model_index_to_eval_results(meta["model-index"])
    assert name == "dicts"
    got = {(r.dataset_config, r.metric_type): r.metric_value for r in results}
    for run_name, folder in {"bae": "layers.1.resid_post.bae", "topk": "layers.1.resid_post.topk", "relu": "layers.0.mlp_out"}.items():
        expected = json.loads((run / run_name / "eval_results.json").read_text())
        for key in ("fvu", "l0", "dead_fraction", "dense_fraction", "num_tokens"):
            assert got[(folder, key)] == pytest.approx(expected[key])
    assert got[("layers.1.resid_post.bae", "code_entropy_bits")] > 0
    assert ("layers.1.resid_post.topk", "code_entropy_bits") not in got  # BAE only
    assert got[("layers.1.resid_post.bae", "comsem_score")] == 0.42
    text = card.text
    # usage (both loading paths), provenance, metrics table, plots, citation
    assert 'AutoModel.from_pretrained("tester/dicts", subfolder="layers.1.resid_post.bae")' in text  # a residual-stream BAE
    assert "output_hidden_states=True).hidden_states[2]" in text and "codes = dictionary.encode(hidden)" in text
    assert "trust_remote_code=True" in text and 'hf_bae.load_all("tester/dicts")' in text
    assert "the output of layer 0's MLP" in text and "`hidden_states[2]`" in text
    assert "| FVU |" in text and "| Code entropy (bits) |" in text and "| ComSem |" in text
    assert "![loss](layers.1.resid_post.bae/plots/loss.png)" in text
    assert "arXiv 2509.20997" in text.replace(":", " ") and "Cho, Hakaze" in text
    assert "A binary autoencoder has no SAELens equivalent" in text


def test_a_single_dictionary_goes_to_the_repo_root(run, tmp_path):
    result = push_run(run / "bae", "tester/one", output_dir=tmp_path / "out")
    out = tmp_path / "out"
    assert result.subfolders == {"bae": ""}
    assert {"config.json", "model.safetensors", "README.md", "eval_results.json", "training_args.json"} <= {p.name for p in out.iterdir()}
    text = (out / "README.md").read_text()
    assert 'AutoModel.from_pretrained("tester/one")' in text and "subfolder=" not in text
    assert hf_bae.list_dictionaries(out) == {"layers.1.resid_post": ""}


def test_names_are_hookpoints_and_shared_hookpoints_get_every_owner_suffixed(tmp_path):
    def local(name, **config):
        return LocalDictionary(name, tmp_path / name, {"model_type": "binary_autoencoder", **config}, tmp_path)

    dictionaries = [local("bae", layer=5), local("topk", layer=5), local("mlp", layer=5, site="mlp_out"), local("odd/name!")]
    assert list(assign_names(dictionaries)) == ["layers.5.resid_post.bae", "layers.5.resid_post.topk", "layers.5.mlp_out", "odd-name"]
    assert list(assign_names(dictionaries[2:3], suffix="v2")) == ["layers.5.mlp_out.v2"]


def test_push_to_hub_keeps_transformers_signature_and_validates_first():
    model = SparseAutoencoder(SAEConfig(hidden_size=D))
    with pytest.raises(ValueError, match="not a valid Hub repo id"):
        model.push_to_hub("bad repo id")
    with pytest.raises(ValueError, match="subfolder='a/b'"):
        model.push_to_hub("tester/x", subfolder="a/b")


@pytest.mark.parametrize("repo_id", ["no spaces/allowed", "a/b/c", "double--dash/x", "x/" + "n" * 100, "", " lead/space", "dots../x"])
def test_malformed_repo_ids_are_refused_before_any_work(run, repo_id, tmp_path):
    with pytest.raises(ValueError, match="is not a valid Hub repo id.*namespace/name"):
        push_run(run, repo_id)
    assert cli(["push", str(run), repo_id]) == 2  # bad input


def _run_without_weights(path):
    BinaryAutoencoder(BAEConfig(hidden_size=D)).config.save_pretrained(path / "bae")


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: None, "No trained dictionary in"),
        (lambda p: (p / "checkpoints" / "step-100").mkdir(parents=True), "Checkpoints are not pushed"),
        (_run_without_weights, "has config.json but no model.safetensors"),
        (lambda p: (p / "config.json").write_text(json.dumps({"model_type": "llama"})), "is not an hf_bae dictionary"),
    ],
    ids=["empty", "only-checkpoints", "no-weights", "other-model"],
)
def test_a_folder_without_a_trained_dictionary_is_refused(tmp_path, make, message):
    run = tmp_path / "run"
    run.mkdir()
    make(run)
    with pytest.raises(ValueError, match=message):
        push_run(run, "tester/x", output_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()  # failed before staging anything


def test_only_picks_dictionaries_and_names_unknown_ones(run, tmp_path):
    assert [d.name for d in find_dictionaries(run, only=["topk"])] == ["topk"]
    with pytest.raises(ValueError, match="--only nope: no such dictionary folder.*bae, relu, topk"):
        find_dictionaries(run, only=["nope"])
    # a run with one unfinished dictionary can still push the finished ones
    partial = tmp_path / "partial"
    shutil.copytree(run, partial)
    (partial / "topk" / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="(?s)topk has config.json but no model.safetensors.*--only"):
        find_dictionaries(partial)
    assert [d.name for d in find_dictionaries(partial, only=["bae", "relu"])] == ["bae", "relu"]


def test_dry_run_needs_an_empty_folder_and_cli_reports_the_staged_folder(run, tmp_path, capsys):
    assert cli(["push", str(run / "relu"), "tester/x", "--output_dir", str(tmp_path / "out")]) == 0
    assert "nothing was uploaded" in capsys.readouterr().out
    assert cli(["push", str(run / "relu"), "tester/x", "--output_dir", str(tmp_path / "out")]) == 2
    assert "is not empty" in capsys.readouterr().err


def test_templates_are_found_and_cli_help_explains(capsys):
    assert (model_cards_dir() / "model_card.md.j2").is_file()
    with pytest.raises(SystemExit) as exit_info:
        cli(["push", "--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    assert "hf auth login" in help_text and "--overwrite" in help_text and "trust_remote_code" in help_text


def test_comsem_results_beside_the_atlas_reach_the_card(run, tmp_path):
    # `hf-bae interpret --output_dir OUT` writes OUT/NAME/comsem.json beside the atlas; --comsem OUT hands it to the card
    from hf_bae.loading import load_dictionary

    interp = tmp_path / "interp"
    fingerprint = load_dictionary(run / "topk").fingerprint()
    for name, score, fp in (("topk", 0.31, fingerprint), ("random", 0.2, "random:num_features=1:seed=0")):
        (interp / name).mkdir(parents=True)
        (interp / name / "comsem.json").write_text(json.dumps({"comsem_score": score, "interpretable_fraction": 0.25, "name": name, "features_scored": 4,
                                                               "dictionary_type": "random" if name == "random" else "SAE",
                                                               "dictionary_fingerprint": fp}))
    out = tmp_path / "out"
    push_run(run, "tester/dicts", output_dir=out, comsem=[str(interp)])
    got = {(r.dataset_config, r.metric_type): r.metric_value
           for r in model_index_to_eval_results(metadata_load(out / "README.md")["model-index"])[1]}
    assert got[("layers.1.resid_post.topk", "comsem_score")] == 0.31
    assert got[("layers.1.resid_post.bae", "comsem_score")] == 0.42  # an old run's comsem.json in the dictionary folder
    assert json.loads((out / "layers.1.resid_post.topk" / "comsem.json").read_text())["comsem_score"] == 0.31
    assert not (run / "topk" / "comsem.json").exists()
    # the results of another dictionary are refused
    (interp / "topk" / "comsem.json").write_text(json.dumps({"comsem_score": 0.3, "name": "topk", "features_scored": 4,
                                                         "dictionary_fingerprint": "0" * 64}))
    with pytest.raises(ValueError, match="another dictionary"):
        push_run(run, "tester/dicts", output_dir=tmp_path / "out2", comsem=[str(interp / "topk" / "comsem.json")], only=["topk"])
    assert cli(["push", str(run), "tester/dicts", "--output_dir", str(tmp_path / "out3"), "--comsem", str(tmp_path / "nowhere")]) == 2
