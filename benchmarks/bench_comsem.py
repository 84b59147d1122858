"""ComSem benchmarks: each row compares our implementation with a naive baseline in the same run.

1. Sample selection (the per-token top-k quota over m features): ours (two `topk` calls with the
   tie-break key, vectorised sample lists) vs the original code's per-token Python
   `sorted(range(m), key=...)[:k]` and list appends.
2. LLM calls to an OpenAI-compatible server with simulated latency: the original's one blocking
   call at a time vs our bounded concurrency, and a rerun answered by the response cache.
3. With --local N: N ComSem judge prompts on the embedded SmolLM2-135M-Instruct, left-padded
   batches of 8 vs one at a time reusing the KV cache of the shared prompt prefix.

    python benchmarks/bench_comsem.py [--tokens 2000] [--features 4096] [--calls 64] [--latency 0.05] [--local 16]
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the loopback server fixture

from hf_bae.interpret.atlas_samples import SampleSelector  # noqa: E402
from hf_bae.interpret.atlas_scoring import bae_deviation, top_k_features  # noqa: E402
from hf_bae.interpret import ChatRequest, LLMClient, OpenAIBackend  # noqa: E402


def bench_selection(n: int, m: int, k: int, capacity: int) -> tuple[float, float]:
    torch.manual_seed(0)
    pre = torch.randn(n, m) - 1.5
    codes = (pre > 0).float()
    mean = codes.mean(0)
    # ours
    t = time.perf_counter()
    score = bae_deviation(codes, mean)
    top = top_k_features(score, k, pre.abs())
    selector = SampleSelector(m, capacity, "corpus")
    tok, feat = torch.zeros_like(score, dtype=torch.bool).scatter_(1, top, True).nonzero(as_tuple=True)
    selector.add(feat.numpy(), tok.numpy(), score[tok, feat].double().numpy(), pre[tok, feat].double().numpy(),
                 codes[tok, feat].double().numpy())
    ours = time.perf_counter() - t
    # the original: log2(|code - mean| + 1e-6) per token, Python sort, list appends
    t = time.perf_counter()
    lists = {j: [] for j in range(m)}
    codes_np, mean_np = codes.numpy(), mean.numpy()
    for i in range(n):
        s = np.log2(np.abs(codes_np[i] - mean_np) + 1e-6)
        for j in sorted(range(m), key=lambda j: s[j], reverse=True)[:k]:
            lists[j].append(i)
    naive = time.perf_counter() - t
    return ours, naive


def bench_calls(calls: int, latency: float, concurrency: int) -> tuple[float, float, float]:
    from fake_openai import FakeOpenAI

    def slow(body):
        time.sleep(latency)
        return "Yes"

    requests = [ChatRequest.from_messages([{"role": "user", "content": f"q{i}"}]) for i in range(calls)]
    with FakeOpenAI(responder=slow) as server, tempfile.TemporaryDirectory() as tmp:
        def run(conc, cache):
            backend = OpenAIBackend(model="fake", base_url=server.base_url, api_key="k", concurrency=conc)
            t = time.perf_counter()
            LLMClient(backend, cache, progress=False).complete_many(requests)
            return time.perf_counter() - t

        sequential = run(1, None)
        concurrent = run(concurrency, Path(tmp) / "c.sqlite")
        cached = run(concurrency, Path(tmp) / "c.sqlite")
    return sequential, concurrent, cached


def bench_local(n: int) -> tuple[float, float]:
    from hf_bae.activations import load_language_model
    from hf_bae.interpret import TransformersBackend
    from hf_bae.interpret.prompts import judge_prompt

    model, tok = load_language_model("embedded")
    words = ["Senate", "apple", "1865", "said", "tree", "House", "quickly", "three"]
    requests = [ChatRequest.from_messages(judge_prompt((words[i % 8], 2, f"The {words[i % 8]} was there ({i})."),
                                                       "legislative bodies"), max_tokens=3) for i in range(n)]
    times = []
    for prefix_cache in (False, True):
        backend = TransformersBackend("embedded", model_obj=model, tokenizer=tok, batch_size=8, prefix_cache=prefix_cache)
        t = time.perf_counter()
        backend.generate(requests)
        times.append(time.perf_counter() - t)
    return times[0], times[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=2000)
    parser.add_argument("--features", type=int, default=4096)
    parser.add_argument("--calls", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.05, help="seconds the fake server takes per answer")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--local", type=int, default=0, help="judge prompts for the local-backend row (0: skip it)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (1 gives steadier timings on a busy machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    ours, naive = bench_selection(args.tokens, args.features, 10, 20)
    seq, conc, cached = bench_calls(args.calls, args.latency, args.concurrency)
    rows = [
        (f"selection, {args.tokens} tokens x {args.features} features, top-10", "original per-token sort", naive, ours),
        (f"{args.calls} LLM calls, {args.latency * 1000:.0f} ms each", "one call at a time", seq, conc),
        (f"{args.calls} LLM calls, rerun", "one call at a time", seq, cached),
    ]
    if args.local:
        batched, prefixed = bench_local(args.local)
        rows.append((f"{args.local} judge prompts, SmolLM2-135M local", "batches of 8", batched, prefixed))
    print("| task | baseline | baseline s | ours s | speed-up |\n|---|---|---|---|---|")
    for task, base, b, o in rows:
        print(f"| {task} | {base} | {b:.3f} | {o:.3f} | {b / o:.1f}x |")


if __name__ == "__main__":
    main()
