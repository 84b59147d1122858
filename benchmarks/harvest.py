"""Harvest speed: our streamer against the original code's way of getting hidden states, same texts,
same model, same layer, one run.

- original: one forward per text (State of the Union paragraph), the whole model with
  `output_hidden_states=True`, then every token's vector of `hidden_states[L+1]` taken one by one
  (`util/interp_score.py`: `feature_extractor_*.encode_sentences`, and how its `.pkl` feature sets are made).
- ours, full forward: our packing (rows of 128 tokens, batches of 8) but the whole model runs.
- ours: `stream_activations` (packed rows, hooks, forward stopped after layer L).

Tokens/s counts text tokens whose activation was produced (our BOS at each row start is not
counted). Run: `python benchmarks/harvest.py [--layer 14] [--num_texts 300] [--threads 2]`.
"""

import argparse
import itertools
import time

import torch

from hf_bae.activations import Site, load_language_model, load_texts, pack_tokens, stream_activations


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
    parser.add_argument("--num_texts", type=int, default=300)
    parser.add_argument("--context_length", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of each method; the best is reported")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = load_language_model(args.model)
    texts = list(load_texts("embedded", max_texts=args.num_texts))
    n_text_tokens = sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
    print(f"model {args.model} ({len(model.model.layers)} layers), layer {args.layer} resid_post, {len(texts)} texts, "
          f"{n_text_tokens} tokens, {args.threads} threads, torch {torch.__version__}")
    methods = {
        "original (per text, full forward, all hidden states)": lambda: original_method(model, tokenizer, texts, args.layer),
        "ours, packed+batched, full forward": lambda: ours_full_forward(model, tokenizer, texts, args.layer, args.context_length, args.batch_size),
        "ours (stream_activations, early stop)": lambda: ours(model, tokenizer, texts, args.layer, args.context_length, args.batch_size),
    }
    ours(model, tokenizer, texts[:20], args.layer, args.context_length, args.batch_size)  # warm-up
    original_method(model, tokenizer, texts[:5], args.layer)
    best: dict[str, tuple[float, int]] = {}
    for _ in range(args.repeats):
        for name, fn in methods.items():
            start = time.perf_counter()
            n = fn()
            seconds = time.perf_counter() - start
            if name not in best or n / seconds > best[name][1] / best[name][0]:
                best[name] = (seconds, n)
    base = best[next(iter(methods))]
    base_rate = base[1] / base[0]
    print(f"\n| method | tokens | seconds | tokens/s | vs original |\n|---|---:|---:|---:|---:|")
    for name, (seconds, n) in best.items():
        print(f"| {name} | {n} | {seconds:.1f} | {n / seconds:,.0f} | {n / seconds / base_rate:.2f}x |")


if __name__ == "__main__":
    main()
