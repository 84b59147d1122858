"""Push to and load from a Hub, offline: a loopback fake Hub (tests/fake_hub.py) serves the HTTP API
that huggingface_hub, transformers, datasets and sae_lens use. Clients run in fresh processes with
HF_ENDPOINT pointing at it (huggingface_hub reads its endpoint at import)."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from fake_hub import FakeHub
from huggingface_hub import ModelCard
from trained_runs import D, activations, make_run

REPO = Path(__file__).resolve().parents[2]
MULTI, SINGLE, PUSHED = "tester/smollm2-dictionaries", "tester/smollm2-bae-l1", "tester/pushed-from-python"
NAMES = {"bae": "layers.1.resid_post.bae", "topk": "layers.1.resid_post.topk", "relu": "layers.0.mlp_out"}


def run_python(code: str, env: dict, cwd: Path, *args: str, pythonpath: bool = True) -> subprocess.CompletedProcess:
    env = dict(env)
    if pythonpath:
        env["PYTHONPATH"] = str(REPO)
    else:
        env.pop("PYTHONPATH", None)
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    return out


PUSH = """
    import json, os, sys, torch
    torch.set_num_threads(1)
    from hf_bae.cli import main
    from hf_bae import SparseAutoencoder
    run, new_run, atlas, out = sys.argv[1:5]
    codes = {
        "run": main(["push", run, "%(multi)s", "--saelens", "--atlas", atlas, "--retry_wait", "0.05", "--tags", "smoke-test"]),
        "single": main(["push", run + "/bae", "%(single)s"]),
    }
    model = SparseAutoencoder.from_pretrained(run + "/topk")
    result = model.push_to_hub("%(pushed)s", subfolder="layers.1.resid_post", eval_results={"fvu": 0.125, "l0": 4.0})
    # A repo that grows run by run, then has one dictionary replaced by a version without plots:
    codes["grow_1"] = main(["push", run, "tester/grow", "--only", "relu", "--layout", "subfolders"])
    codes["grow_2"] = main(["push", run, "tester/grow", "--only", "bae", "topk"])
    import shutil
    shutil.copytree(run, out + ".run")
    shutil.rmtree(out + ".run/relu/plots")
    codes["grow_overwrite"] = main(["push", out + ".run", "tester/grow", "--only", "relu", "--overwrite"])
    # Then pushes that must fail, each with its own fault injected by the test:
    codes["commit_always_fails"] = main(["push", run, "tester/flaky", "--max_retries", "2", "--retry_wait", "0"])
    codes["lfs_refused"] = main(["push", new_run, "tester/lfs-refused", "--retry_wait", "0"])
    codes["file_lost"] = main(["push", run, "tester/lossy", "--retry_wait", "0"])
    codes["exists"] = main(["push", run, "tester/lossy", "--only", "relu", "--retry_wait", "0"])
    del os.environ["HF_TOKEN"]
    codes["no_token"] = main(["push", run, "tester/no-token"])
    json.dump({"codes": codes, "pushed": result.subfolders}, open(out, "w"))
""" % {"multi": MULTI, "single": SINGLE, "pushed": PUSHED}


@pytest.fixture(scope="module")
def pushed(tmp_path_factory):
    """One process pushes a trained run three ways: the whole run (with SAELens copies and an atlas;
    its first commit fails with HTTP 500), one dictionary to a repo root, and `model.push_to_hub` into a
    subfolder; then four pushes that must fail."""
    from datasets import Dataset

    from hf_bae import SAEConfig, SparseAutoencoder

    tmp = tmp_path_factory.mktemp("hub")
    models = make_run(tmp / "run")
    # Weights the Hub has not seen yet, so that their push needs an LFS upload (objects are kept by content).
    SparseAutoencoder(SAEConfig(hidden_size=D, layer=3)).save_pretrained(tmp / "new_run" / "relu")
    Dataset.from_dict({"feature": [0, 1], "top_contexts": [["the cat"], ["a dog"]]}).save_to_disk(str(tmp / "atlas"))
    (tmp / "atlas" / "atlas.json").write_text('{"layer": 1, "site": "resid_post"}')
    x = activations(8, seed=7)
    torch.save(x, tmp / "x.pt")
    with FakeHub() as hub:
        hub.fail("POST", f"^/api/models/{MULTI}/commit/", status=500, times=1)
        hub.fail("POST", "^/api/models/tester/flaky/commit/", status=503, times=None)
        hub.fail("PUT", "^/__lfs__/models/tester/lfs-refused/", status=413, times=None, message="object too large")
        hub.drop_on_commit.add(("tester/lossy", "layers.0.mlp_out/eval_results.json"))
        args = [str(tmp / "run"), str(tmp / "new_run"), str(tmp / "atlas"), str(tmp / "push.json")]
        out = run_python(PUSH, hub.env(tmp / "home-push"), tmp, *args)
        assert out.returncode == 0, out.stdout + out.stderr
        hub.faults.clear()
        hub.drop_on_commit.clear()
        result = json.loads((tmp / "push.json").read_text())
        yield {"hub": hub, "tmp": tmp, "models": models, "x": x, "result": result, "stdout": out.stdout, "stderr": out.stderr}


def test_push_commits_each_repo_once_and_retries_a_failed_commit(pushed):
    hub, result = pushed["hub"], pushed["result"]
    assert result["codes"]["run"] == 0 and result["codes"]["single"] == 0
    commit_calls = [r for r in hub.requests if r[0] == "POST" and r[1].startswith(f"/api/models/{MULTI}/commit/")]
    assert [status for *_, status in commit_calls] == [500, 200]  # failed once, retried, then committed
    assert "retrying" in pushed["stderr"]
    # one push = one commit (after the repo's initial one), whatever the number of files
    assert hub.commits(MULTI) == ["initial commit", "Upload 3 dictionaries with hf_bae 0.1.0"]
    files = hub.files(MULTI)
    for name, folder in NAMES.items():
        run_folder = pushed["tmp"] / "run" / name
        for f in ("config.json", "model.safetensors", "modeling_base.py", "eval_results.json", "metrics.jsonl", "plots/loss.png", "training_args.json"):
            assert f"{folder}/{f}" in files, f"{folder}/{f}"
        assert files[f"{folder}/eval_results.json"] == (run_folder / "eval_results.json").read_bytes()
        assert files[f"{folder}/plots/loss.png"] == (run_folder / "plots" / "loss.png").read_bytes()
    assert "layers.1.resid_post.bae/comsem.json" in files
    assert {"configuration.py", "modeling_bae.py", "modeling_sae.py"} <= set(files)  # root code for trust_remote_code
    assert not any("checkpoints" in f for f in files)
    # SAELens copies for the SAEs only; a BAE has no SAELens equivalent
    assert "saelens/layers.1.resid_post.topk/cfg.json" in files and "saelens/layers.0.mlp_out/sae_weights.safetensors" in files
    assert not any(f.startswith("saelens/layers.1.resid_post.bae") for f in files)
    # binaries went through LFS, not inline in the commit
    assert any(r[0] == "PUT" and r[1].startswith("/__lfs__/") for r in hub.requests)
    # the single dictionary sits at the root of its repo; push_to_hub used the given subfolder
    assert {"config.json", "model.safetensors", "README.md"} <= set(hub.files(SINGLE))
    assert result["pushed"] == {"layers.1.resid_post": "layers.1.resid_post"}
    assert "layers.1.resid_post/model.safetensors" in hub.files(PUSHED)


def test_a_repo_grows_push_by_push_and_overwrite_replaces_stale_files(pushed):
    hub, codes = pushed["hub"], pushed["result"]["codes"]
    assert codes["grow_1"] == codes["grow_2"] == codes["grow_overwrite"] == 0
    assert len(hub.commits("tester/grow")) == 4
    files = hub.files("tester/grow")
    assert "layers.0.mlp_out/plots/loss.png" not in files  # gone with the replaced version
    assert "layers.0.mlp_out/model.safetensors" in files and "layers.1.resid_post.bae/plots/loss.png" in files
    card = ModelCard(files["README.md"].decode())  # rewritten by each push, it lists all three
    configs = {r.dataset_config for r in card.data.eval_results}
    assert configs == set(NAMES.values())
    assert "layers.0.mlp_out/plots/loss.png" not in card.text and "layers.1.resid_post.topk/plots/loss.png" in card.text


def test_feature_atlas_is_a_dataset_linked_from_the_card(pushed):
    hub = pushed["hub"]
    atlas_files = hub.files(f"{MULTI}-atlas", repo_type="dataset")
    assert any(f.endswith(".parquet") for f in atlas_files)
    assert "atlas.json" in atlas_files  # the metadata the Space checks travels with the data
    card = ModelCard(hub.files(MULTI)["README.md"].decode())
    assert f"{MULTI}-atlas" in card.data.datasets
    assert f"https://huggingface.co/datasets/{MULTI}-atlas" in card.text


def test_pushed_card_describes_every_dictionary(pushed):
    card = ModelCard(pushed["hub"].files(MULTI)["README.md"].decode())
    assert card.data.library_name == "hf_bae" and card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert {"binary-autoencoder", "sparse-autoencoder", "topk", "saelens", "smoke-test"} <= set(card.data.tags)
    for folder in NAMES.values():
        assert f'subfolder="{folder}"' in card.text or f"`{folder}`" in card.text
        assert f"{folder}/plots/loss.png" in card.text
    assert "hidden_states[2]" in card.text  # resid_post of layer 1
    fvu = {r.dataset_config: r.metric_value for r in card.data.eval_results if r.metric_type == "fvu"}
    for name, folder in NAMES.items():
        expected = json.loads((pushed["tmp"] / "run" / name / "eval_results.json").read_text())["fvu"]
        assert fvu[folder] == pytest.approx(expected)
    comsem = [r.metric_value for r in card.data.eval_results if r.metric_type == "comsem_score"]
    assert comsem == [0.42]


LOAD_WITH_HF_BAE = """
    import sys, torch
    import hf_bae
    from transformers import AutoModel
    x = torch.load(sys.argv[1])
    outs = {}
    for name, model in hf_bae.load_all("%s").items():
        outs["load_all/" + name] = model.eval()(x, return_loss=False).reconstruction
    for name in %r:
        model = AutoModel.from_pretrained("%s", subfolder=name).eval()
        assert type(model).__module__.startswith("hf_bae."), type(model)
        outs["auto/" + name] = model(x, return_loss=False).reconstruction
    root = AutoModel.from_pretrained("%s").eval()
    outs["root"] = root(x, return_loss=False).reconstruction
    outs["root_load_all"] = list(hf_bae.load_all("%s"))
    torch.save(outs, sys.argv[2])
""" % (MULTI, list(NAMES.values()), MULTI, SINGLE, SINGLE)

LOAD_WITHOUT_HF_BAE = """
    import sys, torch
    sys.modules["hf_bae"] = None  # hf_bae cannot be imported here
    from transformers import AutoModel
    x = torch.load(sys.argv[1])
    outs = {}
    for name in %r:
        model = AutoModel.from_pretrained("%s", subfolder=name, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules."), type(model)
        outs[name] = model(x, return_loss=False).reconstruction
    outs["root"] = AutoModel.from_pretrained("%s", trust_remote_code=True).eval()(x, return_loss=False).reconstruction
    torch.save(outs, sys.argv[2])
""" % (list(NAMES.values()), MULTI, SINGLE)


def _expected(models, x):
    with torch.no_grad():
        return {name: models[name](x, return_loss=False).reconstruction for name in models}


def test_fresh_process_loads_by_repo_id_with_hf_bae(pushed):
    tmp = pushed["tmp"]
    out = run_python(LOAD_WITH_HF_BAE, pushed["hub"].env(tmp / "home-a"), tmp, str(tmp / "x.pt"), str(tmp / "a.pt"))
    assert out.returncode == 0, out.stderr
    got, expected = torch.load(tmp / "a.pt"), _expected(pushed["models"], pushed["x"])
    for name, folder in NAMES.items():
        assert torch.equal(got[f"load_all/{folder}"], expected[name])
        assert torch.equal(got[f"auto/{folder}"], expected[name])
    assert torch.equal(got["root"], expected["bae"])
    assert got["root_load_all"] == ["layers.1.resid_post"]


def test_fresh_process_loads_by_repo_id_without_hf_bae(pushed):
    tmp = pushed["tmp"]
    out = run_python(LOAD_WITHOUT_HF_BAE, pushed["hub"].env(tmp / "home-b"), tmp, str(tmp / "x.pt"), str(tmp / "b.pt"), pythonpath=False)
    assert out.returncode == 0, out.stderr
    got, expected = torch.load(tmp / "b.pt"), _expected(pushed["models"], pushed["x"])
    for name, folder in NAMES.items():
        assert torch.equal(got[folder], expected[name])
    assert torch.equal(got["root"], expected["bae"])


SAELENS = """
    import json, sys, warnings, torch
    warnings.simplefilter("ignore")
    from sae_lens import SAE
    x = torch.load(sys.argv[1])
    outs = {}
    for sae_id in ("saelens/layers.1.resid_post.topk", "saelens/layers.0.mlp_out"):
        sae = SAE.from_pretrained(release="%s", sae_id=sae_id)
        outs[sae_id] = (type(sae).__name__, sae.encode(x), sae.decode(sae.encode(x)))
    for folder in sys.argv[3:]:
        sae = SAE.load_from_disk(folder)
        outs[folder] = (type(sae).__name__, sae.encode(x), sae.decode(sae.encode(x)))
    torch.save(outs, sys.argv[2])
""" % MULTI


def test_saelens_loads_the_pushed_copies_and_local_exports_with_equal_encodings(pushed, tmp_path):
    from hf_bae import SAEConfig, SparseAutoencoder
    from hf_bae.saelens import export_saelens

    tmp, models, x = pushed["tmp"], pushed["models"], pushed["x"]
    variants = {
        "jumprelu": SparseAutoencoder(SAEConfig(hidden_size=D, activation="jumprelu", jumprelu_threshold=0.1, layer=2)),
        "nobias": SparseAutoencoder(SAEConfig(hidden_size=D, activation="relu", encoder_bias=False, decoder_bias=False, layer=2)),
        "transcoder": SparseAutoencoder(SAEConfig(hidden_size=D, output_size=8, site="mlp_in", output_site="mlp_out", layer=2)),
        "jumprelu_transcoder": SparseAutoencoder(SAEConfig(hidden_size=D, activation="jumprelu", site="mlp_in", output_site="mlp_out", layer=2)),
    }
    folders = [str(export_saelens(m.eval(), tmp_path / name)) for name, m in variants.items()]
    out = run_python(SAELENS, pushed["hub"].env(tmp / "home-c"), tmp, str(tmp / "x.pt"), str(tmp_path / "s.pt"), *folders)
    assert out.returncode == 0, out.stderr
    got = torch.load(tmp_path / "s.pt", weights_only=False)
    expected_types = {"topk": "TopKSAE", "relu": "StandardSAE", "jumprelu": "JumpReLUSAE", "nobias": "StandardSAE",
                      "transcoder": "Transcoder", "jumprelu_transcoder": "JumpReLUTranscoder"}
    pairs = [("saelens/layers.1.resid_post.topk", models["topk"], "topk"), ("saelens/layers.0.mlp_out", models["relu"], "relu")]
    pairs += [(folder, variants[Path(folder).name], Path(folder).name) for folder in folders]
    with torch.no_grad():
        for key, model, kind in pairs:
            name, encoded, decoded = got[key]
            assert name == expected_types[kind]
            assert torch.equal(encoded, model.encode(x)), key
            assert torch.allclose(decoded, model.decode(model.encode(x)), atol=1e-6), key


def test_failed_uploads_are_reported_and_leave_nothing_half_written(pushed):
    hub, codes, err = pushed["hub"], pushed["result"]["codes"], pushed["stderr"]
    # The exit-code policy of hf_bae.cli: a failed upload is a failure at run time (1); a dictionary
    # already there without --overwrite, or no token, is the user's input to fix (2).
    assert {k: codes[k] for k in ("commit_always_fails", "lfs_refused", "file_lost", "exists", "no_token")} == {
        "commit_always_fails": 1, "lfs_refused": 1, "file_lost": 1, "exists": 2, "no_token": 2}
    assert "tester/flaky failed 2 times with transient errors" in err and "Nothing was committed" in err
    assert "lfs-refused failed" in err and "413" in err  # the LFS store refused the object
    assert "are not in it" in err and "layers.0.mlp_out/eval_results.json" in err
    assert "tester/lossy already has a dictionary at layers.0.mlp_out" in err and "--overwrite" in err
    assert "No Hugging Face token" in err
    # nothing half-written: the failed repos hold only their initial commit, and no failed push claimed success
    assert hub.commits("tester/flaky") == ["initial commit"]
    assert hub.commits("tester/lfs-refused") == ["initial commit"]
    assert hub.commits("tester/no-token") == []
    for repo in ("flaky", "lfs-refused", "lossy", "no-token"):
        assert f"tester/{repo}/commit" not in pushed["stdout"]  # the lossy commit exists, but was not reported as a success
