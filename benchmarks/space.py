"""Responsiveness of the feature browser on large atlases: ours vs recomputing per click.

For synthetic atlases of 10^4 and 10^5 features (10 samples each, the `hf-bae atlas` schema) this
times, in one run:

- ours: start-up (load + scalar index), a table query (explanation search + sort by ComSem score,
  one page), a feature page (cold: one Arrow row read + render; warm: cached), neighbours by
  decoder cosine (d = 576, the embedded model's width);
- the new pages (issue 16; the atlas with `event` / `logit_effects` columns): the feature page with
  histogram, logit effects, sorted / shaded contexts and bands (cold), a token search
  (`token:budget`: first query builds the inverted index, then warm) and a context search
  (`context:word river`: first query lowers the contexts, then warm);
- naive: what an app that keeps nothing between clicks does: a table query that materialises the
  atlas with `Dataset.to_pandas()` and filters/sorts it, and a feature page found with
  `Dataset.filter(feature == j)`;

and prints a table with the ratios; then the same clicks as HTTP round trips through the running
app (gradio_client), on the first size. Usage: `python benchmarks/space.py [--sizes 10000 100000]`.

`--compare_only`: the Compare tab alone (two random BAEs of m features, d = 576): the nearest-feature
table, computed once (m × m × d multiply-adds in row blocks, top 5), then a page of it (warm).
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from space_fixtures import synthetic_atlas  # noqa: E402

from hf_bae import BAEConfig, BinaryAutoencoder  # noqa: E402
from hf_bae.browser import Atlas, Dictionary, FeatureBrowser  # noqa: E402


def timed(fn, repeat: int = 5) -> float:
    """Median wall time of `fn()` in ms."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def naive_table(dataset, query: str) -> list:
    df = dataset.to_pandas()
    df = df[df["explanation"].fillna("").str.lower().str.contains(query, regex=False)]
    return df.sort_values("comsem_score", ascending=False).head(50).values.tolist()


def naive_token_search(dataset, token: str) -> list:
    """Token search without an index: decode every row's samples in Python."""
    return [r["feature"] for r in dataset if any(s["token"].strip().lower() == token for s in r["samples"])]


def naive_feature(dataset, feature: int) -> dict:
    return dataset.filter(lambda r: r["feature"] == feature, keep_in_memory=True)[0]


def run(num_features: int, root: Path, hidden_size: int = 576) -> list[tuple[str, float, float | None]]:
    path = root / f"atlas-{num_features}"
    synthetic_atlas(path, num_features=num_features, rich=True)
    t0 = time.perf_counter()
    atlas = Atlas.load(path)
    _ = atlas.index
    startup = (time.perf_counter() - t0) * 1e3
    dictionary = None
    if num_features * hidden_size <= 64 * 2**20:  # keep the benchmark's memory moderate
        model = BinaryAutoencoder(BAEConfig(hidden_size=hidden_size, latent_size=num_features))
        dictionary = Dictionary(model)
    browser = FeatureBrowser([atlas], [dictionary])
    browser.table(None, "budget", "comsem_score", True)  # sort orders are computed on first use
    features = iter(range(1, num_features, max(1, num_features // 50)))

    def feature_cold():
        browser._pages.clear()
        atlas._rows.clear()
        browser.feature(None, next(features))

    rows = [
        ("start-up: load + index", startup, None),
        ("table query (search + sort, 1 page)", timed(lambda: browser.table(None, "budget", "comsem_score", True)),
         timed(lambda: naive_table(atlas.dataset, "budget"), repeat=3)),
        ("feature page, cold", timed(feature_cold), timed(lambda: naive_feature(atlas.dataset, 8), repeat=3)),
        ("feature page, cached", timed(lambda: browser.feature(None, 8)), None),
    ]
    t0 = time.perf_counter()
    browser.table(None, "token:budget")
    rows.append(("token search, first (builds the index)", (time.perf_counter() - t0) * 1e3, None))
    rows.append(("token search (token:budget), warm", timed(lambda: browser.table(None, "token:Budget")),
                 timed(lambda: naive_token_search(atlas.dataset, "budget"), repeat=1)))
    t0 = time.perf_counter()
    browser.table(None, "context:word river")
    rows.append(("context search, first (lowers contexts)", (time.perf_counter() - t0) * 1e3, None))
    rows.append(("context search (context:word river), warm", timed(lambda: browser.table(None, "context:word river")), None))
    if dictionary is not None:
        _ = dictionary.unit_decoder
        rows.append((f"neighbours (d={hidden_size}, top 10)", timed(lambda: dictionary.neighbours(8, 10)), None))
    return rows


def compare_run(num_features: int, root: Path, hidden_size: int = 576) -> list[tuple[str, float, float | None]]:
    """The Compare tab: nearest features of B for every feature of A (once), then one page (warm)."""
    path = root / f"atlas-{num_features}"
    if not path.exists():
        synthetic_atlas(path, num_features=num_features, rich=True)
    torch.manual_seed(0)
    a, b = (Dictionary(BinaryAutoencoder(BAEConfig(hidden_size=hidden_size, latent_size=num_features, layer=6))) for _ in range(2))
    browser = FeatureBrowser([Atlas.load(path, name="A"), Atlas.load(path, name="B")], [a, b])
    _ = a.unit_decoder, b.unit_decoder
    t0 = time.perf_counter()
    browser.nearest("A", "B")
    first = (time.perf_counter() - t0) * 1e3
    return [(f"compare: nearest table (d={hidden_size}, top 5), once", first, None),
            ("compare: one page (25 features), warm", timed(lambda: browser.compare("A", "B", "", 3)), None)]


def over_http(num_features: int, root: Path) -> list[tuple[str, float]]:
    """Round trips through the running app with gradio_client (what a user's click costs, end to end)."""
    from gradio_client import Client

    from space_fixtures import serve

    atlas = Atlas.load(root / f"atlas-{num_features}")
    model = BinaryAutoencoder(BAEConfig(hidden_size=576, latent_size=num_features))
    demo, url = serve(FeatureBrowser([atlas], [Dictionary(model)]))
    try:
        client = Client(url, verbose=False)
        name = atlas.name
        features = iter(range(3, num_features, max(1, num_features // 50)))
        return [
            ("HTTP: table query", timed(lambda: client.predict(name, "budget", "comsem_score", True, False, 1, api_name="/table"))),
            ("HTTP: feature page, cold", timed(lambda: client.predict(name, next(features), api_name="/feature"))),
            ("HTTP: feature page, cached", timed(lambda: client.predict(name, 8, api_name="/feature"))),
        ]
    finally:
        demo.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--compare_only", action="store_true", help="Time only the Compare tab.")
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        if args.compare_only:
            print("| features | operation | ms |\n|---:|---|---:|")
            for n in args.sizes:
                for name, ours, _ in compare_run(n, Path(tmp)):
                    print(f"| {n:,} | {name} | {ours:.1f} |")
            return
        print("| features | operation | ours (ms) | naive (ms) | naive / ours |\n|---:|---|---:|---:|---:|")
        for n in args.sizes:
            for name, ours, naive in run(n, Path(tmp)):
                ratio = f"{naive / ours:,.0f}x" if naive else ""
                print(f"| {n:,} | {name} | {ours:.2f} | {'' if naive is None else f'{naive:,.0f}'} | {ratio} |")
        for name, ours in over_http(args.sizes[0], Path(tmp)):
            print(f"| {args.sizes[0]:,} | {name} | {ours:.1f} | | |")


if __name__ == "__main__":
    main()
