"""Harvest speed: our streamer against the original code's way of getting hidden states, same texts,
same model, same layer, one run.

- original: one forward per sentence (as the original feeds BookCorpus sentences), the whole model with
  `output_hidden_states=True`, then every token's vector of `hidden_states[L+1]` taken one by one
  (`util/interp_score.py`: `feature_extractor_*.encode_sentences`, and how its `.pkl` feature sets are made).
- ours, full forward: our packing (rows of 128 tokens, batches of 8) but the whole model runs.
- ours: `stream_activations` (packed rows, hooks, forward stopped after layer L).

The texts are sentences of the embedded corpus (State of the Union paragraphs split after . ! ?;
`--unit paragraph` keeps whole paragraphs, ~3x longer, which favours the original). Tokens/s counts text tokens whose activation was produced (our BOS at each row start is not
counted). The machine may be shared: the texts are cut into chunks and the three methods take
turns on each chunk, so that load changes hit all of them alike; both wall-clock and CPU time
(`time.process_time`, which other processes' load does not inflate) are reported.

Run: `python benchmarks/harvest.py [--layer 14] [--num_texts 300] [--threads 2]`.
"""

import argparse
import itertools
import re
import time

import torch

from hf_bae.activations import Site, load_language_model, load_texts, pack_tokens, stream_activations


def sentences(paragraphs):
    """Split paragraphs after . ! ? followed by a capital or a quote."""
    return [s for p in paragraphs for s in re.split(r"(?<=[.!?])\s+(?=[A-Z\"'])", p) if s.strip()]


def original_method(model, tokenizer, texts, layer):
    """The original: per text, full forward with all hidden states, per-token vectors into a list."""
    features = []
    with torch.no_grad():
        for text in texts:
            input_ids = tokenizer(text, return_tensors="pt")["input_ids"]
            hidden_states = model(input_ids, output_hidden_states=True).hidden_states
            for t in range(hidden_states[layer + 1].shape[1]):
                features.append(hidden_states[layer + 1][0, t, :].detach())
    return len(features)


def ours_full_forward(model, tokenizer, texts, layer, context_length, batch_size):
    """Our packing and batching, but the whole model (no early stop), as a hooks-free ablation."""
    n = 0
    rows = pack_tokens(texts, tokenizer, context_length)
    with torch.inference_mode():
        while batch := list(itertools.islice(rows, batch_size)):
            hidden = model(torch.stack(batch), output_hidden_states=True).hidden_states[layer + 1]
            n += hidden[:, 1:].reshape(-1, hidden.shape[-1]).float().shape[0]
    return n


def ours(model, tokenizer, texts, layer, context_length, batch_size):
    return sum(
        b.num_tokens
        for b in stream_activations(
            model, tokenizer, texts, [Site(layer, "resid_post")], context_length=context_length, batch_size=batch_size, progress=False
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--layer", type=int, default=14, help="decoder layer (resid_post of 14 = hidden_states[15], the middle of SmolLM2's 30)")
    parser.add_argument("--extra_layers", type=int, nargs="*", default=[], help="also time our streamer at these layers (the original's cost does not depend on the layer)")
    parser.add_argument("--num_texts", type=int, default=200, help="paragraphs of the embedded corpus to use")
    parser.add_argument("--unit", choices=["sentence", "paragraph"], default="sentence", help="what one text (one forward of the original) is")
    parser.add_argument("--context_length", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--chunk_texts", type=int, default=150, help="texts per chunk; the methods take turns chunk by chunk")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = load_language_model(args.model)
    texts = list(load_texts("embedded", max_texts=args.num_texts))
    if args.unit == "sentence":
        texts = sentences(texts)
    n_text_tokens = sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
    print(f"model {args.model} ({len(model.model.layers)} layers), layer {args.layer} resid_post, {len(texts)} {args.unit}s, "
          f"{n_text_tokens} tokens, {args.threads} threads, torch {torch.__version__}")
    methods = {
        "original (per text, full forward, all hidden states)": lambda t: original_method(model, tokenizer, t, args.layer),
        "ours, packed+batched, full forward": lambda t: ours_full_forward(model, tokenizer, t, args.layer, args.context_length, args.batch_size),
        "ours (stream_activations, early stop)": lambda t: ours(model, tokenizer, t, args.layer, args.context_length, args.batch_size),
    }
    for layer in args.extra_layers:
        methods[f"ours at layer {layer}"] = lambda t, layer=layer: ours(model, tokenizer, t, layer, args.context_length, args.batch_size)
    ours(model, tokenizer, texts[:20], args.layer, args.context_length, args.batch_size)  # warm-up
    original_method(model, tokenizer, texts[:5], args.layer)
    totals = {name: [0.0, 0.0, 0] for name in methods}  # wall s, cpu s, tokens
    chunks = [texts[i : i + args.chunk_texts] for i in range(0, len(texts), args.chunk_texts)]
    for c, chunk in enumerate(chunks):
        names = list(methods)
        names = names[c % len(names) :] + names[: c % len(names)]  # rotate who goes first
        for name in names:
            wall, cpu = time.perf_counter(), time.process_time()
            n = methods[name](chunk)
            totals[name][0] += time.perf_counter() - wall
            totals[name][1] += time.process_time() - cpu
            totals[name][2] += n
    base_wall, base_cpu = (totals[next(iter(methods))][2] / totals[next(iter(methods))][i] for i in (0, 1))
    print("\n| method | tokens | wall s | tokens/s (wall) | vs original | CPU s | tokens/CPU-s | vs original |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, (wall, cpu, n) in totals.items():
        print(f"| {name} | {n} | {wall:.1f} | {n / wall:,.0f} | {n / wall / base_wall:.2f}x | {cpu:.1f} | {n / cpu:,.0f} | {n / cpu / base_cpu:.2f}x |")


if __name__ == "__main__":
    main()
