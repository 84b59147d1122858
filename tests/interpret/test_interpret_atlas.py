"""The feature atlas: the paper's per-token quota with our tie-breaking, checked against brute-force
references; contexts and offsets; metadata; bad input."""

import pytest
import torch

from interp_fixtures import corpus, word_lm

from hf_bae import BAEConfig, BinaryAutoencoder, SAEConfig, SparseAutoencoder
from hf_bae.activations import stream_activations
from hf_bae.interpret.atlas import AtlasConfig, build_atlas, build_atlases
from hf_bae.interpret.atlas_format import check_atlas_matches, load_atlas, save_atlas
from hf_bae.interpret.atlas_scoring import RandomBaseline, dictionary_fingerprint, top_k_features

CTX = 32
KW = dict(context_length=CTX, batch_size=4, progress=False)


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    return word_lm()


@pytest.fixture(scope="module")
def texts():
    return corpus(40)


def make_bae(seed=1, layer=1):
    torch.manual_seed(seed)
    return BinaryAutoencoder(BAEConfig(hidden_size=16, expansion_factor=4, layer=layer)).eval()


def make_sae(seed=2, **kw):
    torch.manual_seed(seed)
    return SparseAutoencoder(SAEConfig(hidden_size=16, expansion_factor=4, layer=0, **kw)).eval()


def all_tokens(lm, texts, site):
    """Every token of the stream: (seq ids, activations)."""
    model, tok = lm
    seqs, acts = [], []
    for b in stream_activations(model, tok, texts, [site], exclude_special_tokens=False, **{k: v for k, v in KW.items() if k != "progress"}):
        seqs.append((b.first_row + b.row_index) * CTX + b.positions)
        acts.append(b.activations[site])
    return torch.cat(seqs), torch.cat(acts)


def reference_picks(scores, tie, k):
    """Brute force: per token, the k features by (score desc, tie desc)."""
    scores, tie = scores.tolist(), tie.tolist()
    return [sorted(range(len(s)), key=lambda j: (-s[j], -u[j], j))[:k] for s, u in zip(scores, tie)]


def reference_samples(scores, tie, seqs, k, capacity, events=None):
    """The first `capacity` tokens (corpus order) that picked each feature (and, given `events` [n, m],
    where it is in its event state)."""
    lists = {j: [] for j in range(scores.shape[1])}
    for t, picks in enumerate(reference_picks(scores, tie, k)):
        for j in picks:
            if len(lists[j]) < capacity and (events is None or events[t, j]):
                lists[j].append(int(seqs[t]))
    return lists


def seqs_of(samples):
    return [s["row"] * CTX + s["row_position"] for s in samples]


def test_top_k_breaks_ties_by_the_secondary_key():
    primary = torch.tensor([[1.0, 2.0, 2.0, 2.0, 0.5], [3.0, 3.0, 3.0, 3.0, 3.0]])
    secondary = torch.tensor([[9.0, 0.1, 0.3, 0.2, 9.0], [0.0, 5.0, 1.0, 4.0, 2.0]])
    got = top_k_features(primary, 2, secondary).sort(-1).values
    assert got.tolist() == [[2, 3], [1, 3]]
    # Without a secondary key, ties fall to topk's order; the secondary key is what decides.
    assert top_k_features(primary, 5, secondary).sort(-1).values.tolist() == [[0, 1, 2, 3, 4]] * 2


def test_bae_atlas_matches_the_paper_protocol(lm, texts):
    bae = make_bae()
    config = AtlasConfig(top_k=3, samples_per_feature=6, num_non_activating=4)
    ds, info = build_atlas(bae, *lm, texts, config, **KW)
    seqs, h = all_tokens(lm, texts, "layers.1.resid_post")
    with torch.no_grad():
        pre = bae.pre_activations(h)
        codes = (pre > 0).float()
    p = codes.double().mean(0)
    score = (codes.double() - p).abs()  # |h1 - mean|: the paper's burstiness
    usual = (p > 0.5).double()  # the usual state: on for a usually-on code
    events = codes.double() != usual  # a deviation event: off for a usually-on code, on otherwise
    # The paper's quota, keeping only the picks that are events (new: a pick in the usual state shows nothing).
    ref = reference_samples(score, pre.abs(), seqs, 3, 6, events)
    picks = reference_picks(score, pre.abs(), 3)
    position = {int(q): t for t, q in enumerate(seqs)}
    assert info.num_tokens == len(seqs) and info.dictionary_type == "BAE" and info.site == "layers.1.resid_post"
    assert 0 < int((p > 0.5).sum()) < len(p)  # both kinds of codes are checked
    for row in ds:
        j = row["feature"]
        assert seqs_of(row["samples"]) == ref[j], j
        assert row["event"] == ("off" if p[j] > 0.5 else "on")
        assert all(s["activation"] == 1 - usual[j].item() for s in row["samples"])
        assert row["frequency"] == pytest.approx(p[j].item())
        assert row["is_dead"] == (p[j].item() == 0) and row["is_dense"] == (p[j].item() > config.dense_threshold)
        # non-activating: the feature is in its usual state there and the token did not pick it
        eligible = [t for t in range(len(seqs)) if codes[t, j] == usual[j] and j not in picks[t]]
        assert len(row["non_activating"]) == min(4, len(eligible))
        for s in row["non_activating"]:
            t = position[s["row"] * CTX + s["row_position"]]
            assert codes[t, j] == usual[j] and j not in picks[t] and s["activation"] == usual[j].item()
    assert sum(r["selection_count"] for r in ds) == 3 * len(seqs)
    assert info.extra["usually_on_features"] == int((p > 0.5).sum())


def test_sae_rescaled_and_active_only_and_top_selection(lm, texts):
    sae = make_sae(activation="relu")
    seqs, h = all_tokens(lm, texts, "layers.0.resid_post")
    with torch.no_grad():
        pre = sae.pre_activations(h)
        lat = torch.relu(pre).double()
    z = (lat - lat.mean(0)) / (lat.std(0, unbiased=False) + 1e-6)
    ds, _ = build_atlas(sae, *lm, texts, AtlasConfig(top_k=4, samples_per_feature=5, sae_rescale=True), **KW)
    ref = reference_samples(z, pre.double(), seqs, 4, 5)
    assert all(seqs_of(r["samples"]) == ref[r["feature"]] for r in ds)

    ds, _ = build_atlas(sae, *lm, texts, AtlasConfig(top_k=4, samples_per_feature=5, active_only=True), **KW)
    assert all(s["activation"] > 0 for r in ds for s in r["samples"])
    dead = (lat.sum(0) == 0).nonzero().flatten().tolist()
    assert all(ds[j]["samples"] == [] and ds[j]["is_dead"] for j in dead)

    ds, _ = build_atlas(sae, *lm, texts, AtlasConfig(top_k=4, samples_per_feature=5, selection="top"), **KW)
    for r in ds:
        scores = [s["score"] for s in r["samples"]]
        assert scores == sorted(scores, reverse=True)
        if len(scores) == 5:  # nothing better was left out
            best = lat[:, r["feature"]].sort(descending=True).values[:5]
            assert scores[0] == pytest.approx(best[0].item(), rel=1e-5)


def test_two_passes_without_memory_equal_one_stream_for_several_dictionaries(lm, texts):
    dicts = [make_bae(), make_sae(activation="topk", k=3), RandomBaseline(64, seed=3)]
    config = AtlasConfig(top_k=3, samples_per_feature=4)
    together = build_atlases(dicts, *lm, texts, config, **KW)
    restream = build_atlases(dicts, *lm, lambda: iter(texts), AtlasConfig(top_k=3, samples_per_feature=4, cache_activations_gb=0), **KW)
    for (a, ia), (b, ib) in zip(together, restream):
        assert a.to_list() == b.to_list() and ia.dictionary_fingerprint == ib.dictionary_fingerprint
    alone = build_atlas(dicts[2], *lm, texts, config, **KW)[0]
    assert alone.to_list() == together[2][0].to_list()  # the random baseline is seeded
    assert together[2][1].dictionary_type == "random" and together[2][1].num_features == 64


def test_contexts_offsets_and_positions(lm, texts):
    model, tok = lm
    rows = torch.cat([b.input_ids for b in stream_activations(model, tok, texts, ["layers.0.resid_post"], context_length=CTX,
                                                              batch_size=4, exclude_special_tokens=False)])
    ds, info = build_atlas(make_sae(activation="relu"), model, tok, texts, AtlasConfig(top_k=5, samples_per_feature=30), **KW)
    assert info.num_rows == len(rows)
    checked = 0
    for r in ds:
        for s in r["samples"] + r["non_activating"]:
            row = rows[s["row"]].tolist()
            assert row[s["row_position"]] == s["token_id"]
            start = s["row_position"] - s["position"]  # first token of the stretch
            stretch = row[start:]
            stop = next((i for i, t in enumerate(stretch[1:], 1) if t == tok.bos_token_id), len(stretch))
            stretch = stretch[:stop]
            assert tok.bos_token_id not in stretch[1:] and (start == 0 or stretch[0] == tok.bos_token_id)
            assert s["context"] == tok.decode(stretch, skip_special_tokens=True)
            if s["token_id"] == tok.bos_token_id:
                assert s["start"] == s["end"] == 0 and s["position"] == 0
            else:
                assert s["context"][s["start"]:s["end"]] == s["token"]
                checked += 1
    assert checked > 50
    cut, _ = build_atlas(make_sae(activation="relu"), model, tok, texts,
                         AtlasConfig(top_k=5, samples_per_feature=30, max_context_tokens=2), **KW)
    assert max(len(s["context"].split()) for r in cut for s in r["samples"]) <= 5


def test_save_load_and_wrong_dictionary(lm, texts, tmp_path):
    bae = make_bae()
    ds, info = build_atlas(bae, *lm, texts, AtlasConfig(top_k=2, samples_per_feature=3), **KW, dictionary_paths=["runs/x"])
    path = save_atlas(ds, info, tmp_path / "atlas")
    ds2, info2 = load_atlas(path)
    assert ds2.to_list() == ds.to_list() and info2 == info and info2.dictionary_path == "runs/x"
    check_atlas_matches(info2, bae)
    other = make_bae(seed=7)
    assert dictionary_fingerprint(other) != dictionary_fingerprint(bae)
    with pytest.raises(ValueError, match="built from another dictionary"):
        check_atlas_matches(info2, other, path)
    with pytest.raises(ValueError, match="not a feature atlas"):
        load_atlas(tmp_path)
    empty = ds.select([])
    with pytest.raises(ValueError, match="empty"):
        save_atlas(empty, info, tmp_path / "empty")
    empty.save_to_disk(str(tmp_path / "empty"))  # written by other means
    (tmp_path / "empty" / "atlas.json").write_text((path / "atlas.json").read_text())
    with pytest.raises(ValueError, match="empty"):
        load_atlas(tmp_path / "empty")


def test_bad_input(lm, texts):
    with pytest.raises(ValueError, match="no tokens|Not enough text"):
        build_atlas(make_bae(), *lm, [], AtlasConfig(), **KW)
    with pytest.raises(ValueError, match="hidden size"):
        bad = BinaryAutoencoder(BAEConfig(hidden_size=8, layer=0))
        build_atlas(bad, *lm, texts, AtlasConfig(), **KW)
    with pytest.raises(ValueError, match="does not record its layer"):
        build_atlas(BinaryAutoencoder(BAEConfig(hidden_size=16)), *lm, texts, AtlasConfig(), **KW)
    with pytest.raises(ValueError, match="selection"):
        AtlasConfig(selection="best")


@pytest.mark.parametrize("kind", ["sae", "bae"])
def test_token_values_are_the_feature_values_at_every_context_token(lm, texts, kind):
    """Each sample's `token_values` are the dictionary's value (latent, code) recomputed at every token of
    its context, in order, with the token's character span; the sample's own entry is its activation."""
    model, tok = lm
    if kind == "sae":
        dictionary, config = make_sae(activation="relu"), AtlasConfig(top_k=5, samples_per_feature=8)
    else:  # "top" replaces samples as the stream goes: the stored rows must follow
        dictionary, config = make_bae(), AtlasConfig(top_k=3, samples_per_feature=6, selection="top")
    site = f"layers.{dictionary.config.layer}.resid_post"
    seqs, h = all_tokens(lm, texts, site)
    with torch.no_grad():
        values = dictionary.feature_values(h)[0]
    at = {int(q): t for t, q in enumerate(seqs)}
    rows = torch.cat([b.input_ids for b in stream_activations(model, tok, texts, [site], context_length=CTX, batch_size=4,
                                                              exclude_special_tokens=False)])
    for cut in (None, 2):
        config.max_context_tokens = cut
        ds, _ = build_atlas(dictionary, model, tok, texts, config, **KW)
        checked = 0
        for r in ds:
            j = r["feature"]
            assert all(s["token_values"] == [] for s in r["non_activating"])
            for s in r["samples"]:
                tv, first = s["token_values"], s["row_position"] - s["position"]
                row = rows[s["row"]].tolist()
                # One entry per token of the context, which ends at the next BOS, the row's end or the cut.
                stop = next((p for p in range(first + 1, CTX) if row[p] == tok.bos_token_id), CTX)
                if cut is not None:
                    stop = min(stop, s["row_position"] + cut + 1)
                assert len(tv) == stop - first
                for p, t in enumerate(tv, first):
                    assert t["value"] == pytest.approx(values[at[s["row"] * CTX + p], j].item(), rel=1e-5, abs=1e-6)
                    if row[p] != tok.bos_token_id:
                        assert s["context"][t["start"]:t["end"]] == tok.decode([row[p]])
                    else:
                        assert t["start"] == t["end"]
                own = tv[s["position"]]
                assert (own["start"], own["end"]) == (s["start"], s["end"]) and own["value"] == s["activation"]
                checked += 1
        assert checked > 20
    random = build_atlas(RandomBaseline(16, seed=3), model, tok, texts, AtlasConfig(top_k=2, samples_per_feature=2), **KW)[0]
    assert all(s["token_values"] == [] for r in random for s in r["samples"])
    off = build_atlas(dictionary, model, tok, texts, AtlasConfig(top_k=2, samples_per_feature=2, token_values=False), **KW)[0]
    assert all(s["token_values"] == [] for r in off for s in r["samples"])
