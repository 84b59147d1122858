"""Training throughput: our loop against the original code's loop, and our TopK against EleutherAI sparsify.

Part 1 — BAE step, samples/s, d=768, m=3072, batch 512, the same losses (element-mean MSE +
1e-7·entropy + 1e-7·Σ|off-diagonal cov|, Adam): the original loop (a list of 1-D tensors in a
`DataLoader`, `torch.cov`, `.item()` every step, as `train/trainer.py` of hc495/Binary_Autoencoder)
against `hf_bae.training.Trainer` on the same tensors, both from the same initial weights. Measured
twice: at initialisation (codes ~50 % dense) and with codes as sparse as a trained BAE's (the
encoder bias shifted so that ~`--trained-density` of the codes fire), since our covariance penalty
may follow the codes' sparsity and `torch.cov` cannot.

Part 2 — TopK SAE training, tokens/s, end to end from text on the embedded model (SmolLM2-135M,
layer `--layer` resid_post, k=32, m=4d, Adam, fp32 on CPU), on the same packed token rows:
`eai-sparsify` (`pip install eai-sparsify`; it runs the whole LM and trains in a forward hook)
against `hf-bae train --dictionaries topk` (stops the LM after the layer). Steady-state throughput
is taken from the progress-bar updates of both trainers, skipping the first steps.

Part 3 — the TopK step alone (no LM, same activations): sparsify's SparseCoder against our
SparseAutoencoder on its dense and its sparse `topk_implementation`, at d=576, m=2304, 1024 tokens and at
d=768, m=24576, 2048 tokens.

Part 4 — TopK training from an activation cache (`hf-bae harvest`) against the step alone at the same
sizes, on fresh batches of the same activations: how much of the step's rate is left once the cache is read.

    python benchmarks/train_step.py              # all parts (several minutes on 2 CPU cores)
    python benchmarks/train_step.py --part topk-step    # or topk-cache
    python benchmarks/train_step.py --part bae   # or --part topk

Part 5 — the allocator (`--part allocator`): the step alone of both libraries and our trainer from a cache,
each in a fresh process, with glibc's default malloc and with freed memory retained
(`hf_bae.training.host_memory`, what `hf-bae train` does on the CPU), alternating, best of each kept.
Parts 1-4 run with freed memory retained for every library measured (the setting is process-wide), so
their ratios compare the libraries, not the allocators; `--default-allocator` runs them without it.

Prints a table; ratios are measured within one run. Part 2 needs `pip install -e ".[bench]"` (eai-sparsify).
"""

import argparse
import importlib
import json
import math
import platform
import tempfile
import time
from pathlib import Path

import torch


# -------------------------------------------------------------------------------------------------
# Part 1: the original loop, written from its description (train/trainer.py + training_objective.py)
# -------------------------------------------------------------------------------------------------


class _SignS(torch.autograd.Function):
    """The original `sign_s` binarisation: step forward, g·(1 − g) backward on the upstream gradient."""

    @staticmethod
    def forward(ctx, x):
        return (x > 0).float()

    @staticmethod
    def backward(ctx, g):
        return g * (1 - g)


class OriginalBAE(torch.nn.Module):
    def __init__(self, d, m):
        super().__init__()
        self.encoder = torch.nn.Linear(d, m)
        self.decoder = torch.nn.Linear(m, d, bias=True)

    def forward(self, x):
        hidden = _SignS.apply(self.encoder(x))
        return self.decoder(hidden), hidden


def original_loop(model, vectors, batch_size, steps, entropy_weight=1e-7, covariance_weight=1e-7, lr=5e-4):
    """The original trainer's inner loop; returns (seconds per step after the first, last loss)."""
    loader = torch.utils.data.DataLoader(vectors, batch_size=batch_size, shuffle=True, drop_last=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    times, log = [], []
    batches = iter(loader)
    for _ in range(steps):
        start = time.perf_counter()
        inputs = next(batches)
        optimizer.zero_grad()
        outputs, hidden = model(inputs)
        p = hidden.mean(0)
        entropy = -torch.sum(p * torch.log2(p + 1e-10) + (1 - p) * torch.log2(1 - p + 1e-10))
        if entropy < 0:  # the original's entropy_threshold test (a sync)
            entropy = torch.tensor(0.0)
        cov = torch.cov(hidden.T)
        covariance = cov.abs().sum() - cov.diag().abs().sum()
        loss = torch.mean((inputs - outputs) ** 2) + entropy_weight * entropy + covariance_weight * covariance
        loss.backward()
        optimizer.step()
        log.append((loss.item(), entropy.item(), covariance.item()))
        times.append(time.perf_counter() - start)
    return sum(times[1:]) / (len(times) - 1), log[-1][0]


def _update_times(module):
    """Patch `module.tqdm` so that every progress-bar update records a timestamp (one per training step)."""
    stamps = []
    original = module.tqdm

    class Timed(original):
        def update(self, n=1):
            stamps.append(time.perf_counter())
            return super().update(n)

    module.tqdm = Timed
    return stamps, lambda: setattr(module, "tqdm", original)


def steady_rate(stamps, per_step, skip):
    """Throughput between the `skip`-th and the last step."""
    if len(stamps) <= skip + 1:
        return float("nan")
    return per_step * (len(stamps) - 1 - skip) / (stamps[-1] - stamps[skip])


def ours_loop(model, vectors, batch_size, steps, workdir, mixed_precision="no"):
    from accelerate.state import AcceleratorState

    import hf_bae.training as training
    from hf_bae.sources import TensorSource

    AcceleratorState._reset_state(True)
    args = training.TrainingArguments(output_dir=str(workdir), batch_size=batch_size, max_steps=steps,
                                      learning_rate=5e-4, validate_every=0, validation_tokens=0, log_every=10**9,
                                      checkpoint_every=0, plots=False, save_dictionaries=False, progress=False,
                                      mixed_precision=mixed_precision)
    stamps, restore = _update_times(importlib.import_module("hf_bae.training.loop"))
    try:
        training.Trainer(args, {"bae": model}, TensorSource({"x": vectors})).train()
    finally:
        restore()
    return 1 / steady_rate(stamps, 1, 1), None


def bench_bae(d=768, m=3072, batch=512, steps=8, trained_density=0.03, repeats=2, bf16=True):
    from hf_bae import BAEConfig, BinaryAutoencoder

    torch.manual_seed(0)
    data = torch.randn(batch * (steps + 2), d)
    vectors = list(data)  # the original keeps a list of 1-D tensors
    rows = []
    for label, density in (("initialisation", None), (f"trained-like ({trained_density:.0%} of codes fire)", trained_density)):
        ours = BinaryAutoencoder(BAEConfig(hidden_size=d, latent_size=m, estimator="legacy_sign_s",
                                           entropy_weight=1e-7, covariance_weight=1e-7))
        if density is not None:
            with torch.no_grad():  # shift each code's threshold to the (1 - density) quantile of its pre-activation
                pre = ours.encoder(data[:2048])
                ours.encoder.bias -= torch.quantile(pre, 1 - density, dim=0)
        original = OriginalBAE(d, m)
        original.load_state_dict(ours.state_dict())
        with torch.no_grad():
            codes = ours.encode(data[:batch])
        measured_density = float(codes.mean())
        start_state = {k: v.clone() for k, v in ours.state_dict().items()}
        t_orig = t_ours = t_bf16 = float("inf")
        for _ in range(repeats):  # alternate, keep the best of each: the machine is shared
            original.load_state_dict(start_state)
            t_orig = min(t_orig, original_loop(original, vectors, batch, steps)[0])
            ours.load_state_dict(start_state)
            with tempfile.TemporaryDirectory() as tmp:
                t_ours = min(t_ours, ours_loop(ours, data, batch, steps, Path(tmp) / "run")[0])
            if bf16:
                ours.load_state_dict(start_state)
                with tempfile.TemporaryDirectory() as tmp:
                    t_bf16 = min(t_bf16, ours_loop(ours, data, batch, steps, Path(tmp) / "run", "bf16")[0])
        rows.append({"codes": label, "density": measured_density, "original_samples_per_s": batch / t_orig,
                     "ours_samples_per_s": batch / t_ours, "speedup": t_orig / t_ours,
                     "ours_bf16_samples_per_s": batch / t_bf16 if bf16 else None,
                     "speedup_bf16": t_orig / t_bf16 if bf16 else None})
    return rows


# -------------------------------------------------------------------------------------------------
# Part 2: TopK tokens/s against EleutherAI sparsify, end to end on the embedded model
# -------------------------------------------------------------------------------------------------


def packed_rows(tokenizer, num_rows, context_length, skip_texts):
    import itertools

    from hf_bae.activations import load_texts, pack_tokens

    texts = itertools.islice(load_texts("embedded"), skip_texts, None)
    rows = list(itertools.islice(pack_tokens(texts, tokenizer, context_length), num_rows))
    return torch.stack(rows)


def bench_sparsify(model, tokenizer, layer, k, steps, rows_per_step, context_length, workdir):
    import datasets
    import sparsify
    import sparsify.trainer as sparsify_trainer

    rows = packed_rows(tokenizer, steps * rows_per_step, context_length, skip_texts=64)
    dataset = datasets.Dataset.from_dict({"input_ids": rows.tolist()}).with_format("torch")
    cfg = sparsify.TrainConfig(sparsify.SaeConfig(expansion_factor=4, k=k), batch_size=rows_per_step,
                               layers=[layer], loss_fn="fvu", optimizer="adam", lr=5e-4, lr_warmup_steps=0,
                               log_to_wandb=False, save_every=10**9, save_dir=str(workdir), run_name="sparsify")
    stamps, restore = _update_times(sparsify_trainer)
    try:
        trainer = sparsify.Trainer(cfg, dataset, model)
        start = time.perf_counter()
        trainer.fit()
        total = time.perf_counter() - start
    finally:
        restore()
    tokens_per_step = rows_per_step * context_length  # sparsify trains on every token, BOS included
    return steady_rate(stamps, tokens_per_step, 2), tokens_per_step * steps / total


def bench_ours_topk(model_name, layer, k, steps, tokens_per_step, context_length, workdir):
    from accelerate.state import AcceleratorState

    import hf_bae.training as training

    AcceleratorState._reset_state(True)
    args = training.TrainingArguments(
        base_model=model_name, layer=layer, dictionaries=["topk"], batch_size=tokens_per_step,
        context_length=context_length, lm_batch_size=8, shuffle_rows=8, max_steps=steps, learning_rate=5e-4,
        validate_every=0, validation_tokens=256, validation_texts=64, splice_rows=0, log_every=10**9,
        checkpoint_every=0, plots=False, save_dictionaries=False, output_dir=str(workdir), progress=False)
    stamps, restore = _update_times(importlib.import_module("hf_bae.training.loop"))
    try:
        start = time.perf_counter()
        training.train(args, training.DictionaryArguments(expansion_factor=4), None, training.SAEArguments(k=k))
        total = time.perf_counter() - start
    finally:
        restore()
    return steady_rate(stamps, tokens_per_step, 2), tokens_per_step * steps / total


def bench_topk(layer=6, k=32, steps=12, rows_per_step=8, context_length=128, repeats=2):
    from hf_bae.activations import load_language_model

    try:
        import sparsify  # noqa: F401
    except ImportError as exc:
        return {"error": f"eai-sparsify is not installed ({exc}); `pip install eai-sparsify`"}
    model, tokenizer = load_language_model("embedded")
    theirs, ours = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):  # alternate, keep the best of each: the machine is shared
            theirs.append(bench_sparsify(model, tokenizer, layer, k, steps, rows_per_step, context_length,
                                         Path(tmp) / f"sparsify{r}"))
            # Our batches hold as many tokens per step as sparsify's rows (BOS excluded from ours).
            ours.append(bench_ours_topk("embedded", layer, k, steps, rows_per_step * context_length, context_length,
                                        Path(tmp) / f"ours{r}"))
    (theirs_steady, theirs_total), (ours_steady, ours_total) = max(theirs), max(ours)
    return {"layer": layer, "k": k, "latents": 4 * 576, "tokens_per_step": rows_per_step * context_length,
            "steps": steps, "repeats": repeats, "sparsify_tokens_per_s": theirs_steady, "ours_tokens_per_s": ours_steady,
            "speedup": ours_steady / theirs_steady, "sparsify_tokens_per_s_incl_startup": theirs_total,
            "ours_tokens_per_s_incl_startup": ours_total}


def bench_topk_step(d=576, m=2304, k=32, n=1024, steps=20, only=None, normalized=False, data=None):
    """The SAE step alone (no LM) on the same activations: sparsify's SparseCoder vs our SparseAutoencoder on
    each `topk_implementation`, each with PyTorch's per-tensor Adam and with fused Adam (our trainer's default;
    sparsify's model takes either, its own trainer defaults to signum). tokens/s of the faster half of the
    steps (a shared machine), keyed "name" (per-tensor Adam) and "name fused"; `only` picks some keys.
    `normalized`: our models read normalised inputs as the trainer's do (`set_normalization`).
    `data`: `[N, d]` real activations to draw a fresh batch of `n` rows from at every step (as training does);
    by default one batch of Gaussian noise, reused (the step on real activations is ~5 % faster: its TopK
    selections and their gradients are cheaper)."""
    import sparsify

    from hf_bae import SAEConfig, SparseAutoencoder
    from hf_bae.training.optimizers import Adam as OurAdam

    torch.manual_seed(0)
    if data is None:
        pool = [torch.randn(n, d)]
    else:
        d, order = data.shape[1], torch.randperm(data.shape[0])
        pool = [data[order[i * n:(i + 1) * n]].float() for i in range(max(1, min(32, data.shape[0] // n)))]
    turn = [0]

    def batch():
        turn[0] += 1
        return pool[turn[0] % len(pool)]

    x = torch.cat(pool)  # for the normalisation statistics
    theirs = sparsify.SparseCoder(d, sparsify.SaeConfig(num_latents=m, k=k))
    models = {"sparsify": (theirs, lambda: theirs(batch()).fvu)}
    for implementation in ("dense", "sparse"):
        ours = SparseAutoencoder(SAEConfig(hidden_size=d, latent_size=m, activation="topk", k=k,
                                           topk_implementation=implementation))
        ours.check_inputs = False
        if normalized:
            ours.set_normalization(x.mean(0), 1 / float(x.norm(dim=-1).mean()))
        models[f"hf_bae {implementation}"] = (ours, lambda ours=ours: ours(batch(), return_dense_latents=False).loss)
    runs = [(name, fused) for name in models for fused in (False, True)
            if name != "hf_bae dense" or not fused]  # the dense path is 3x slower whatever the optimiser
    runs = [(name, fused) for name, fused in runs if only is None or name + " fused" * fused in only]
    out = {}
    for _ in range(2):  # alternate, keep each one's best round
        for name, fused in runs:
            model, step = models[name]
            cls = torch.optim.Adam if name == "sparsify" else OurAdam  # ours: the trainer's (no copies when fused)
            optimizer = cls(model.parameters(), lr=5e-4, fused=fused or None)
            times = []
            for _ in range(steps):
                start = time.perf_counter()
                step().backward()
                optimizer.step()
                optimizer.zero_grad()
                times.append(time.perf_counter() - start)
            rate = n / (sum(sorted(times)[: steps // 2]) / (steps // 2))
            key = name + " fused" * fused
            out[key] = max(out.get(key, 0.0), rate)
    return out


def bench_topk_from_cache(workdir, tokens=65536, k=32, batch=1024, steps=80):
    """TopK training from an activation cache (`hf-bae harvest`, layer 6 of the embedded model) against the
    step alone of the same model on fresh batches of the same activations (normalised, as the trainer's; fused
    Adam): the fraction says how much of the step's rate the cache I/O and the trainer's own work (metrics,
    checks, counters) leave."""
    import subprocess
    import sys

    from accelerate.state import AcceleratorState

    import hf_bae.training as training

    cache = Path(workdir) / "cache"
    if not (cache / "manifest.json").exists():
        subprocess.run([sys.executable, "-m", "hf_bae", "harvest", "--sites", "layers.6.resid_post", "--num_tokens",
                        str(tokens), "--output_dir", str(cache)], check=True, capture_output=True)

    from hf_bae.cache import ActivationCache

    # The step alone on fresh batches of the same activations (Gaussian noise would flatter the fraction: the
    # step on real activations is faster).
    real = ActivationCache(cache).read(0, 32 * batch, sites=["layers.6.resid_post"])["layers.6.resid_post"]

    def step_alone():
        return bench_topk_step(576, 2304, k, batch, steps=24, only={"hf_bae sparse fused"}, normalized=True,
                               data=real)["hf_bae sparse fused"]

    before = step_alone()  # measured before and after the run, the best kept: the machine's speed drifts
    AcceleratorState._reset_state(True)
    args = training.TrainingArguments(
        cache=str(cache), dictionaries=["topk"], batch_size=batch, max_steps=steps, learning_rate=5e-4,
        validate_every=0, log_every=10**9, checkpoint_every=0, plots=False, save_dictionaries=False,
        output_dir=str(Path(workdir) / "run"), progress=False, num_epochs=0, overwrite=True)
    stamps, restore = _update_times(importlib.import_module("hf_bae.training.loop"))
    try:
        training.train(args, training.DictionaryArguments(expansion_factor=4), None, training.SAEArguments(k=k))
    finally:
        restore()
    gaps = sorted(b - a for a, b in zip(stamps[4:], stamps[5:]))  # one loop iteration each, data included
    return {"from_cache_tokens_per_s": batch / (sum(gaps[: len(gaps) // 2]) / (len(gaps) // 2)),
            "from_cache_tokens_per_s_all_steps": steady_rate(stamps, batch, 4),
            "step_alone_tokens_per_s": max(before, step_alone())}


# -------------------------------------------------------------------------------------------------
# Part 5: glibc's default malloc against freed memory retained, each in a fresh process
# -------------------------------------------------------------------------------------------------


def _in_fresh_process(call: str, retain: bool, threads: int) -> dict:
    """`call` (an expression over this module) evaluated in a fresh interpreter, with freed memory retained
    or glibc's default; its JSON-able result."""
    import subprocess
    import sys

    code = (f"import json, sys, torch; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            f"torch.set_num_threads({threads})\n"
            + ("from hf_bae.training.host_memory import retain_freed_memory; assert retain_freed_memory()\n"
               if retain else "")
            + f"import train_step as t\nprint('RESULT ' + json.dumps(t.{call}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{call} failed:\n{done.stderr[-2000:]}")
    out = done.stdout
    return json.loads(out.rsplit("RESULT ", 1)[1])


def bench_allocator(threads=2, rounds=2, steps=12):
    """tokens/s of the fused-Adam step alone (sparsify, ours sparse) at both sizes and of our trainer from a
    cache, under glibc's default malloc and with freed memory retained; alternating rounds, best kept."""
    only = "{'sparsify fused', 'hf_bae sparse fused'}"
    best: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as workdir:
        for _ in range(rounds):
            for retain in (False, True):
                mode = "retained" if retain else "default"
                rows = {}
                for d, m, n in ((576, 2304, 1024), (768, 24576, 2048)):
                    r = _in_fresh_process(f"bench_topk_step({d}, {m}, 32, {n}, steps={steps}, only={only})",
                                          retain, threads)
                    rows.update({f"{name} step, m={m}": v for name, v in r.items()})
                r = _in_fresh_process(f"bench_topk_from_cache({workdir!r})", retain, threads)
                rows["hf_bae trainer from a cache, m=2304"] = r["from_cache_tokens_per_s"]
                rows["hf_bae step alone (normalised), m=2304"] = r["step_alone_tokens_per_s"]
                for key, v in rows.items():
                    best.setdefault(key, {})[mode] = max(best.get(key, {}).get(mode, 0.0), v)
    return best


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("all", "bae", "topk", "topk-step", "topk-cache", "allocator"), default="all",
                        help="topk: from text against sparsify, then the step alone; topk-step / topk-cache: only "
                        "those; allocator: glibc's default against freed memory retained (not in all)")
    parser.add_argument("--default-allocator", action="store_true",
                        help="run parts 1-4 with glibc's default malloc instead of retaining freed memory")
    parser.add_argument("--topk-step-steps", type=int, default=12, help="steps per model and round of the step-alone part")
    parser.add_argument("--steps", type=int, default=8, help="BAE steps per loop (the first is not timed)")
    parser.add_argument("--topk-steps", type=int, default=12, help="TopK steps per trainer (the first 2 not timed)")
    parser.add_argument("--layer", type=int, default=6)
    parser.add_argument("--trained-density", type=float, default=0.03)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="alternating repeats; the best of each is kept")
    parser.add_argument("--no-bf16", action="store_true", help="skip our loop under bf16 autocast")
    parser.add_argument("--json", help="also write the results here")
    opts = parser.parse_args(argv)
    torch.set_num_threads(opts.threads)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch "
          f"{torch.__version__}")
    results = {}
    if opts.part == "allocator":
        best = bench_allocator(opts.threads, steps=opts.topk_step_steps)
        results["allocator"] = best
        print("\ntokens/s, each in a fresh process, fused Adam (k=32; m=2304: d=576, 1024 tokens; m=24576: d=768, "
              "2048 tokens)")
        print(f"{'measurement':<42} {'glibc default':>14} {'retained':>10} {'gain':>6}")
        for key, r in best.items():
            print(f"{key:<42} {r['default']:>14.0f} {r['retained']:>10.0f} {r['retained'] / r['default']:>5.2f}x")
        for mode in ("default", "retained"):
            fraction = (best["hf_bae trainer from a cache, m=2304"][mode]
                        / best["hf_bae step alone (normalised), m=2304"][mode])
            print(f"trainer from a cache / step alone, {mode}: {fraction:.0%}")
    elif not opts.default_allocator:
        from hf_bae.training.host_memory import retain_freed_memory

        print("allocator: freed memory retained for every library measured "
              f"({'in effect' if retain_freed_memory() else 'not available here: glibc default'})")
    if opts.part in ("all", "bae"):
        rows = bench_bae(steps=opts.steps, trained_density=opts.trained_density, repeats=opts.repeats,
                         bf16=not opts.no_bf16)
        results["bae_step"] = rows
        print("\nBAE step, d=768, m=3072, batch 512, MSE + 1e-7 entropy + 1e-7 covariance, Adam")
        print(f"{'codes':<38} {'density':>8} {'original':>9} {'ours':>9} {'ratio':>6} {'ours bf16':>10} {'ratio':>6}"
              "   (samples/s)")
        for r in rows:
            bf = (f"{r['ours_bf16_samples_per_s']:>10.0f} {r['speedup_bf16']:>5.2f}x" if r["speedup_bf16"]
                  else f"{'-':>10} {'-':>6}")
            print(f"{r['codes']:<38} {r['density']:>8.3f} {r['original_samples_per_s']:>9.0f} "
                  f"{r['ours_samples_per_s']:>9.0f} {r['speedup']:>5.2f}x {bf}")
    if opts.part in ("all", "topk"):
        r = bench_topk(layer=opts.layer, steps=opts.topk_steps, repeats=opts.repeats)
        results["topk_vs_sparsify"] = r
        print(f"\nTopK SAE training from text, SmolLM2-135M layer {opts.layer} resid_post, k=32, m=2304, "
              "1024 tokens/step, fp32")
        if "error" in r:
            print("  sparsify:", r["error"])
        else:
            print(f"{'trainer':<22} {'tokens/s (steady)':>18} {'tokens/s (with startup)':>24}")
            print(f"{'eai-sparsify':<22} {r['sparsify_tokens_per_s']:>18.0f} {r['sparsify_tokens_per_s_incl_startup']:>24.0f}")
            print(f"{'hf_bae':<22} {r['ours_tokens_per_s']:>18.0f} {r['ours_tokens_per_s_incl_startup']:>24.0f}")
            print(f"ratio (steady): {r['speedup']:.2f}x")
    if opts.part in ("all", "topk", "topk-step"):
        print("\nSAE step alone (no LM): forward + backward + Adam, same activations, tokens/s; "
              "per-tensor Adam | fused Adam (our trainer's default)")
        print(f"{'d':>5} {'m':>6} {'k':>3} {'tokens':>6} {'sparsify':>9} {'ours dense':>11} {'ours sparse':>12} "
              f"{'ratio':>6} | {'sparsify':>9} {'ours sparse':>12} {'ratio':>6}")
        results["topk_step_only"] = []
        for d, m, n in ((576, 2304, 1024), (768, 24576, 2048)):
            r = bench_topk_step(d, m, 32, n, steps=opts.topk_step_steps)
            results["topk_step_only"].append({"d": d, "m": m, "k": 32, "tokens": n, **r})
            print(f"{d:>5} {m:>6} {32:>3} {n:>6} {r['sparsify']:>9.0f} {r['hf_bae dense']:>11.0f} "
                  f"{r['hf_bae sparse']:>12.0f} {r['hf_bae sparse'] / r['sparsify']:>5.2f}x | "
                  f"{r['sparsify fused']:>9.0f} {r['hf_bae sparse fused']:>12.0f} "
                  f"{r['hf_bae sparse fused'] / r['sparsify fused']:>5.2f}x", flush=True)
    if opts.part in ("all", "topk-cache"):
        with tempfile.TemporaryDirectory() as workdir:
            r = bench_topk_from_cache(workdir)
        results["topk_from_cache"] = r
        print(f"\nTopK from a cache (d=576, m=2304, k=32, 1024 tokens/step, fused Adam both), tokens/s of the faster "
              f"half of the steps: {r['from_cache_tokens_per_s']:.0f} (mean of all steps after the 4th: "
              f"{r['from_cache_tokens_per_s_all_steps']:.0f}); the step alone, best of before and after: "
              f"{r['step_alone_tokens_per_s']:.0f} ({r['from_cache_tokens_per_s'] / r['step_alone_tokens_per_s']:.0%})")
    if opts.json:
        Path(opts.json).write_text(json.dumps(results, indent=2, default=lambda v: None if isinstance(v, float) and math.isnan(v) else v))
    return results


if __name__ == "__main__":
    main()
