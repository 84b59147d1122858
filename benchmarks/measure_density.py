"""Deviation density of a trained BAE's codes: the input of the sparse covariance penalty.

Trains a BAE on the embedded model with the demo's settings (SmolLM2-135M-Instruct, layer 6
`resid_post`, m = 4d = 2304, batch 512, entropy weight 1e-4, covariance weight 1e-7, lr 1e-3), then
encodes held-out activations in batches of `--batch` tokens and reports, per batch,

- firing density: the fraction of codes that are 1;
- deviation density: the fraction of nonzero entries of D = h − round(mean h), the deviations from
  the batch's rounded mean code, whose sparsity the sparse covariance path follows
  (`hf_bae.losses.covariance_penalty`).

    PYTHONPATH=. python benchmarks/measure_density.py --max-tokens 200000 --json density.json

The number is used by `benchmarks/scale.py --density` (and recorded in `benchmarks/RESULTS.md`).
"""

import argparse
import dataclasses
import itertools
import json
import tempfile
import time
from pathlib import Path

import torch


def deviation_density(codes: torch.Tensor) -> float:
    """Fraction of nonzero entries of codes − round(mean of codes over the batch)."""
    rounded = torch.round(codes.float().mean(0, keepdim=True))
    return float((codes.float() != rounded).float().mean())


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-tokens", type=int, default=150_000, help="training tokens")
    parser.add_argument("--eval-tokens", type=int, default=8192, help="held-out tokens the density is measured on")
    parser.add_argument("--batch", type=int, default=512, help="tokens per batch (the covariance's batch)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output-dir", default=None, help="keep the run here (default: a temporary folder)")
    parser.add_argument("--json", help="also write the results here")
    opts = parser.parse_args(argv)
    torch.set_num_threads(opts.threads)

    from hf_bae.activations import load_language_model, load_texts, stream_activations
    from hf_bae.cli.demo import demo_arguments
    from hf_bae.modeling_bae import BinaryAutoencoder
    from hf_bae.training import train

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(opts.output_dir or Path(tmp) / "run")
        args, dictionary, bae, _ = demo_arguments(str(out), opts.max_tokens, overwrite=True)
        args = dataclasses.replace(args, dictionaries=["bae"], splice_rows=0, validate_every=0, progress=False)
        started = time.perf_counter()
        train(args, dictionary, bae)
        minutes = (time.perf_counter() - started) / 60
        model = BinaryAutoencoder.from_pretrained(out / "bae").eval()
    lm, tokenizer = load_language_model("embedded")
    # Texts past the training stream's held-out head are not needed: the first validation_texts were
    # never trained on, so measure on them.
    texts = itertools.islice(load_texts("embedded"), args.validation_texts)
    acts = []
    for batch in stream_activations(lm, tokenizer, texts, f"layers.{args.layer}.resid_post",
                                    context_length=args.context_length, progress=False):
        acts.append(next(iter(batch.activations.values())))
        if sum(a.shape[0] for a in acts) >= opts.eval_tokens:
            break
    x = torch.cat(acts)[: opts.eval_tokens]
    fire, dev = [], []
    with torch.no_grad():
        for start in range(0, x.shape[0] - opts.batch + 1, opts.batch):
            codes = model.encode(x[start:start + opts.batch])
            fire.append(float(codes.mean()))
            dev.append(deviation_density(codes))
    result = {"model": "SmolLM2-135M-Instruct (embedded)", "layer": args.layer, "latents": model.config.num_latents,
              "training_tokens": opts.max_tokens, "training_minutes": minutes, "eval_tokens": x.shape[0],
              "batch": opts.batch, "batches": len(dev), "firing_density": sum(fire) / len(fire),
              "deviation_density": sum(dev) / len(dev), "deviation_density_max": max(dev),
              "l0": sum(fire) / len(fire) * model.config.num_codes}
    print(json.dumps(result, indent=2))
    if opts.json:
        Path(opts.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
