"""Peak memory of `harvest` + a full streaming read of a cache larger than 4 GB.

A tiny random Llama (hidden size 256, 4 layers) keeps the forward pass cheap, and all 12 of its
sites (resid_post, mlp_in, mlp_out of every layer) are harvested in one pass, so that each token
stores 12 x 256 float32 = 12 KiB and ~360k tokens of the embedded corpus make a > 4 GB cache. The
same process then reads every batch back with `ActivationCache.iter_batches` (shuffled, all sites)
and reports its peak resident set size (`ru_maxrss`: the largest RSS the process ever had, model,
Python, torch and page-ins included) and, sampled every 20 ms from /proc/self/status, the peak of its
anonymous memory (`RssAnon`: what the process allocated, without the file pages of shards it has
mapped, which the kernel keeps or drops depending on the rest of the machine). It needs ~4.5 GB of free
disk; the cache is deleted after.

Run: `python benchmarks/harvest_memory.py [--gib 4.2] [--json]`.
"""

import argparse
import json
import resource
import shutil
import tempfile
import threading
import time
from pathlib import Path

import torch

from hf_bae.activations import Site, load_texts
from hf_bae.cache import ActivationCache, harvest
from hf_bae.testing import tiny_causal_lm


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


class PeakSampler:
    """Peaks of the /proc/self/status fields `RssAnon` and `RssFile` (bytes), sampled in a thread."""

    def __init__(self, every: float = 0.02):
        self.every, self.peaks = every, {"RssAnon": 0, "RssFile": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    key, _, value = line.partition(":")
                    if key in self.peaks:
                        self.peaks[key] = max(self.peaks[key], int(value.split()[0]) * 1024)
        except OSError:  # not Linux: the peaks stay 0 and the caller reports ru_maxrss only
            pass

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.every)

    def __enter__(self) -> "PeakSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gib", type=float, default=4.2, help="cache size to write, GiB")
    parser.add_argument("--batch_size", type=int, default=4096, help="read batch size, tokens")
    parser.add_argument("--dir", default=None, help="where to write the cache (default: a temporary folder, deleted after)")
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of a table")
    args = parser.parse_args()
    torch.set_num_threads(1)
    hidden, layers = 256, 4
    sites = [Site(layer, name) for layer in range(layers) for name in ("resid_post", "mlp_in", "mlp_out")]
    bytes_per_token = len(sites) * hidden * 4
    num_tokens = int(args.gib * 2**30 / bytes_per_token) + 1
    root = Path(args.dir or tempfile.mkdtemp(prefix="hf_bae-memory-"))
    sampler = PeakSampler().__enter__()
    try:
        model, tokenizer = tiny_causal_lm("llama", root / "model", num_layers=layers, hidden_size=hidden, intermediate_size=64, vocab_size=4096)
        start_rss = peak_rss_bytes()
        t0 = time.perf_counter()
        manifest = harvest(root / "cache", model, tokenizer, load_texts("embedded"), sites, num_tokens=num_tokens,
                           context_length=128, batch_size=16, progress=False)
        harvest_s = time.perf_counter() - t0
        harvest_rss = peak_rss_bytes()
        size = sum((root / "cache" / s.file).stat().st_size for s in manifest.shards)
        cache = ActivationCache(root / "cache")
        t0 = time.perf_counter()
        read = 0
        for batch in cache.iter_batches(args.batch_size, seed=0):
            read += batch[str(sites[0])].shape[0]
        read_s = time.perf_counter() - t0
        result = {
            "cache_bytes": size,
            "num_tokens": manifest.num_tokens,
            "shards": len(manifest.shards),
            "sites": len(sites),
            "harvest_seconds": round(harvest_s, 1),
            "read_tokens": read,
            "read_seconds": round(read_s, 1),
            "rss_before_harvest_bytes": start_rss,
            "peak_rss_after_harvest_bytes": harvest_rss,
            "peak_rss_bytes": peak_rss_bytes(),
        }
        sampler.__exit__(None, None, None)
        result["peak_anon_bytes"] = sampler.peaks["RssAnon"]
        result["peak_file_bytes"] = sampler.peaks["RssFile"]
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    if args.json:
        print(json.dumps(result))
        return
    gib = 2**30
    print("| measure | value |\n|---|---:|")
    print(f"| cache size | {result['cache_bytes'] / gib:.2f} GiB ({result['num_tokens']:,} tokens x {len(sites)} sites x {hidden} float32, {result['shards']} shards) |")
    print(f"| harvest time | {result['harvest_seconds']} s |")
    print(f"| full shuffled read | {result['read_tokens']:,} tokens in {result['read_seconds']} s ({result['cache_bytes'] / gib / max(result['read_seconds'], 1e-9):.2f} GiB/s) |")
    print(f"| peak RSS before harvest (model + imports) | {result['rss_before_harvest_bytes'] / gib:.2f} GiB |")
    print(f"| peak RSS after harvest | {result['peak_rss_after_harvest_bytes'] / gib:.2f} GiB |")
    print(f"| peak RSS after harvest + read | {result['peak_rss_bytes'] / gib:.2f} GiB |")
    print(f"| peak anonymous memory (RssAnon) | {result['peak_anon_bytes'] / gib:.2f} GiB |")
    print(f"| peak mapped file pages (RssFile) | {result['peak_file_bytes'] / gib:.2f} GiB |")


if __name__ == "__main__":
    main()
