"""Fixtures of the feature-browser tests: a tiny LM with a real tokenizer, a dictionary on it, atlases
in the `hf-bae atlas` schema (one built by running the LM + dictionary, one synthetic and large),
and a helper that serves the app on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import socket
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

TEXTS = [
    "The cat sat on the mat and looked at the dog.",
    "Dogs and cats are friends in the old house.",
    "The president spoke to the congress about the budget.",
    "Numbers like 12, 345 and 6789 appear in the report.",
    "She walked to the market to buy bread and milk.",
    "In 1790 the first address was given to the nation.",
    "Rain fell on the city while the river rose slowly.",
    "The committee will meet again on Monday morning.",
]


def tiny_language_model(path: Path, hidden_size: int = 32, num_layers: int = 2):
    """A random Llama with a byte-level BPE tokenizer trained on TEXTS, saved to `path`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TEXTS * 4, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tok.token_to_id("<s>"), eos_token_id=tok.token_to_id("</s>"),
    )
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model, tokenizer


def tiny_dictionary(path: Path, lm_path: Path, kind: str = "bae", hidden_size: int = 32, layer: int = 0):
    """A random BAE (or TopK SAE) recorded as reading resid_post of `layer` of the LM at `lm_path`."""
    from hf_bae import BAEConfig, BinaryAutoencoder, SAEConfig, SparseAutoencoder

    torch.manual_seed(1)
    common = dict(hidden_size=hidden_size, expansion_factor=2, base_model=str(lm_path), layer=layer, site="resid_post")
    model = BinaryAutoencoder(BAEConfig(**common)) if kind == "bae" else SparseAutoencoder(SAEConfig(activation="topk", k=4, **common))
    model.save_pretrained(path)
    return model


def _sample(context: str, start: int, end: int, token_id: int, position: int, score: float, activation: float, row: int) -> dict:
    # Each text is one row of the corpus here, so a token's position in its context is its row position.
    return dict(token=context[start:end], token_id=int(token_id), position=int(position), context=context, start=int(start), end=int(end),
                score=float(score), activation=float(activation), row=int(row), row_position=int(position))


def _comsem_fields(score: float | None, verdicts: list[dict]) -> dict:
    """The ComSem columns `hf-bae interpret` fills, for a hand-made explanation: scored when it has a
    score; balanced accuracy where negative verdicts give a specificity."""
    negatives = [v for v in verdicts if v["split"] == "negative"]
    specificity = sum(v["answer"] == "no" for v in negatives) / len(negatives) if negatives else None
    balanced = (score + specificity) / 2 if score is not None and specificity is not None else None
    return dict(comsem_status="scored" if score is not None else None, balanced_accuracy=balanced, judge_failures=0)


def build_atlas(path: Path, model, tokenizer, dictionary, layer: int = 0, per_feature: int = 8, explanations: dict | None = None,
                info: dict | None = None, rich: bool = False) -> list[dict]:
    """Run the LM + dictionary over TEXTS and write an atlas in the `hf-bae atlas` schema
    (`atlas_features`, metadata saved with `hf_bae.formats.save_atlas_info`).

    Samples of a feature are the tokens where it fires, strongest first (BAE: all firing tokens
    score 1 - frequency; SAE: the latent). Returns the rows written.

    `rich`: also the columns of the newer schema — `event` ("off" for a usually-on BAE code, whose
    samples are then the tokens where it is off, scored by its deviation p), `logit_effects` (top 10
    of W_U · d_j through the LM's unembedding) — and per-token `token_values` in each sample (the
    feature's value, BAE: the code, at every token of the context, as `hf-bae atlas` stores them);
    samples are kept in corpus order (the paper's selection), so the browser has to sort them."""
    import datasets

    from hf_bae.formats import AtlasInfo, save_atlas_info

    records = []  # (text, start, end, token_id, position, row, fired, value)
    with torch.inference_mode():
        for row, text in enumerate(TEXTS):
            enc = tokenizer(text, return_offsets_mapping=True)
            ids = torch.tensor([enc["input_ids"]])
            hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[layer + 1][0]
            value, fired = dictionary.feature_values(hidden)
            for pos, (tid, (s, e)) in enumerate(zip(enc["input_ids"], enc["offset_mapping"])):
                if tid in tokenizer.all_special_ids:
                    continue
                records.append((text, s, e, tid, pos, row, fired[pos], value[pos]))
    fired = torch.stack([r[6] for r in records])
    value = torch.stack([r[7] for r in records])
    freq = fired.float().mean(0)
    rows = []
    explanations = explanations or {}

    def sample(i: int, j: int, score: float) -> dict:
        text, s, e, tid, pos, row = records[i][:6]
        return _sample(text, s, e, tid, pos, score, value[i, j].item(), row)

    deviation = dictionary.score_is_deviation
    if rich:
        w_u = model.get_output_embeddings().weight.detach().float()  # [V, d]
        effects = w_u @ dictionary.decoder.weight.detach().float()  # [V, m]: column j is W_U · d_j
        token_rows: dict[int, list[int]] = {}
        for i, rec in enumerate(records):
            token_rows.setdefault(rec[5], []).append(i)

    for j in range(dictionary.num_features):
        event = "off" if rich and deviation and freq[j] > 0.5 else "on"
        hits = fired[:, j] if event == "on" else ~fired[:, j]
        idx = hits.nonzero().flatten().tolist()
        score = ((1 - freq[j]) if event == "on" else freq[j]).item() if deviation else None
        if not rich:
            idx.sort(key=lambda i: -(value[i, j].item() if score is None else score))
        samples = [sample(i, j, score if score is not None else value[i, j].item()) for i in idx[:per_feature]]
        quiet = (~hits).nonzero().flatten().tolist()[:2]
        non_activating = [sample(i, j, 0.0) for i in quiet]
        expl, comsem, verdicts = explanations.get(j, (None, None, []))
        row = dict(
            feature=j, frequency=float(freq[j]), is_dead=bool(freq[j] == 0), is_dense=bool(freq[j] > 0.1), selection_count=len(idx),
            samples=samples, non_activating=non_activating, explanation=expl, comsem_score=comsem, verdicts=verdicts,
            **_comsem_fields(comsem, verdicts),
        )
        if rich:
            for s, i in zip(samples, idx):
                s["token_values"] = [dict(start=records[t][1], end=records[t][2], value=float(value[t, j])) for t in token_rows[records[i][5]]]
            for s in non_activating:
                s["token_values"] = []
            top, bottom = effects[:, j].topk(10), (-effects[:, j]).topk(10)
            row["event"] = event
            row["logit_effects"] = {
                "promoted": [dict(token=tokenizer.decode([t]), token_id=int(t), value=float(v)) for v, t in zip(top.values.tolist(), top.indices.tolist())],
                "suppressed": [dict(token=tokenizer.decode([t]), token_id=int(t), value=-float(v)) for v, t in zip(bottom.values.tolist(), bottom.indices.tolist())],
            }
        rows.append(row)
    datasets.Dataset.from_list(rows, features=rich_atlas_features() if rich else atlas_features()).save_to_disk(str(path))
    meta = AtlasInfo(
        dictionary_type=dictionary.kind, num_features=dictionary.num_features, base_model=dictionary.config.base_model,
        base_model_revision=dictionary.config.base_model_revision, layer=layer, site="resid_post", num_texts=len(TEXTS),
        num_tokens=len(records), num_rows=len(TEXTS), dense_threshold=0.1, samples_per_feature=per_feature, num_non_activating=2,
        dead_features=sum(r["is_dead"] for r in rows), dense_features=sum(r["is_dense"] for r in rows),
    )
    save_atlas_info(AtlasInfo.from_dict({**dataclasses.asdict(meta), **(info or {})}), path)
    return rows


def atlas_features():
    """The atlas schema of an atlas built before the `event` / `logit_effects` columns and the samples'
    `token_values` (what a browser must still read), from where `hf-bae atlas` defines the current one."""
    import datasets

    from hf_bae.interpret.atlas_format import atlas_features

    current = atlas_features()
    sample = datasets.List({k: v for k, v in current["samples"].feature.items() if k != "token_values"})
    old = {k: v for k, v in current.items() if k not in ("event", "logit_effects")}
    return datasets.Features({**old, "samples": sample, "non_activating": sample})


def rich_atlas_features():
    """The atlas schema with the `event` / `logit_effects` columns of the shared contract and per-token
    `token_values` in samples (what a browser must read when present)."""
    import datasets

    base = atlas_features()
    sample = dict(base["samples"].feature)
    sample["token_values"] = datasets.List({"start": datasets.Value("int64"), "end": datasets.Value("int64"), "value": datasets.Value("float64")})
    effect = {"token": datasets.Value("string"), "token_id": datasets.Value("int64"), "value": datasets.Value("float64")}
    return datasets.Features({
        **base, "samples": datasets.List(sample), "non_activating": datasets.List(sample), "event": datasets.Value("string"),
        "logit_effects": {"promoted": datasets.List(effect), "suppressed": datasets.List(effect)},
    })


def synthetic_atlas(path: Path, num_features: int = 10_000, samples_per_feature: int = 10, seed: int = 0, rich: bool = False) -> None:
    """A large atlas with random content, written column-wise through Arrow (seconds, not minutes).
    `rich`: with the `event` and `logit_effects` columns (10 promoted / 10 suppressed random tokens)."""
    import datasets

    from hf_bae.formats import AtlasInfo, save_atlas_info

    rng = np.random.default_rng(seed)
    n, k = num_features, samples_per_feature
    freq = 10 ** rng.uniform(-5, -0.5, n)
    freq[rng.random(n) < 0.05] = 0.0
    words = np.array(["alpha", "beta", "gamma", "delta", "budget", "nation", "river", "cat", "<b>bold</b>", "&amp;"])
    contexts = [f"sample {i} of the synthetic atlas with word {words[i % len(words)]} inside" for i in range(n * k)]
    starts = np.array([c.index("word ") + 5 for c in contexts])
    ends = np.array([s + len(str(words[i % len(words)])) for i, s in enumerate(starts)])
    positions = rng.integers(0, 128, n * k)
    sample_struct = pa.StructArray.from_arrays(
        [pa.array([str(words[i % len(words)]) for i in range(n * k)]), pa.array(rng.integers(0, 50_000, n * k)),
         pa.array(positions), pa.array(contexts), pa.array(starts), pa.array(ends), pa.array(rng.random(n * k)),
         pa.array(rng.random(n * k)), pa.array(rng.integers(0, 100_000, n * k)), pa.array(positions)],
        names=["token", "token_id", "position", "context", "start", "end", "score", "activation", "row", "row_position"],
    )
    offsets = pa.array(np.arange(0, n * k + 1, k, dtype=np.int32))
    samples = pa.ListArray.from_arrays(offsets, sample_struct)
    empty = pa.ListArray.from_arrays(pa.array(np.zeros(n + 1, dtype=np.int32)), sample_struct.slice(0, 0))
    verdict_struct = pa.StructArray.from_arrays(
        [pa.array(np.tile(np.arange(5), n)), pa.array(["positive"] * (5 * n)), pa.array(rng.choice(["yes", "no"], 5 * n))],
        names=["sample_index", "split", "answer"],
    )
    verdicts = pa.ListArray.from_arrays(pa.array(np.arange(0, 5 * n + 1, 5, dtype=np.int32)), verdict_struct)
    score = rng.random(n)
    explained = rng.random(n) < 0.9
    table = pa.table({
        "feature": pa.array(np.arange(n)), "frequency": pa.array(freq), "is_dead": pa.array(freq == 0), "is_dense": pa.array(freq > 0.1),
        "selection_count": pa.array(np.where(freq > 0, k, 0)), "samples": samples, "non_activating": empty,
        "explanation": pa.array([f"feature {j} explanation about {words[j % len(words)]}" if e else None for j, e in enumerate(explained)]),
        "comsem_score": pa.array(np.where(explained, score, np.nan), from_pandas=True), "verdicts": verdicts,
        "comsem_status": pa.array(["scored" if e else None for e in explained], pa.string()), "balanced_accuracy": pa.nulls(n, pa.float64()),
        "judge_failures": pa.array(np.zeros(n, dtype=np.int64)),
    })
    features = atlas_features()
    if rich:
        e = 10 * n
        effect = pa.StructArray.from_arrays(
            [pa.array([str(words[i % len(words)]) for i in range(e)]), pa.array(rng.integers(0, 50_000, e)), pa.array(rng.normal(size=e))],
            names=["token", "token_id", "value"],
        )
        lists = pa.ListArray.from_arrays(pa.array(np.arange(0, e + 1, 10, dtype=np.int32)), effect)
        table = table.append_column("event", pa.array(np.where(freq > 0.5, "off", "on"))).append_column(
            "logit_effects", pa.StructArray.from_arrays([lists, lists], names=["promoted", "suppressed"]))
        features = rich_atlas_features()
        sample = features["samples"]  # the synthetic samples carry no per-token values
        features["samples"] = features["non_activating"] = datasets.List({k: v for k, v in sample.feature.items() if k != "token_values"})
    ds = datasets.Dataset(table).cast(features)
    ds.save_to_disk(str(path))
    save_atlas_info(AtlasInfo(dictionary_type="BAE", num_features=n, num_tokens=1_000_000, dense_threshold=0.1,
                              dead_features=int((freq == 0).sum()), dense_features=int((freq > 0.1).sum())), path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(browser):
    """Launch the app on 127.0.0.1 (in this process, non-blocking); returns (demo, url)."""
    from hf_bae.space import launch

    port = free_port()
    demo = launch(browser, host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True)
    url = f"http://127.0.0.1:{port}/"
    for _ in range(100):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return demo, url
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"the app did not start on {url}")
