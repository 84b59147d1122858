"""bf16 against float32 on the CPU: speed and numeric deviation of the LM forward (the harvest) and of the
dictionary steps, in one run, with whether this CPU has bf16 instructions (avx512_bf16 / AMX).

    PYTHONPATH=. python benchmarks/bf16_cpu.py [--threads 2] [--tokens 1024]

Rows: the embedded SmolLM2-135M up to layer 6 on packed 128-token rows (weights in bf16, against float32:
the relative deviation of the layer-6 activations), and one forward + backward + Adam step of a BAE
(d=576, m=2304) and a TopK SAE (sparse path) under bf16 autocast against float32 (the loss's relative
deviation at the same weights). The decision it feeds: bf16 is the default nowhere on a CPU; a GGUF judge
uses it only where the instructions exist (`hf_bae.interpret.transformers_backend.gguf_dtype`).
"""

from __future__ import annotations

import argparse

import torch
from timing import call_times


def best(fn, repeats=3):
    return min(call_times(fn, "cpu", repeats))


def lm_rows(tokens: int):
    from hf_bae.activations import load_language_model, load_texts, stream_activations

    fp32, tokenizer = load_language_model("embedded", dtype="float32")
    texts = load_texts("embedded")
    batches = []
    for batch in stream_activations(fp32, tokenizer, texts, "layers.6.resid_post", batch_size=8, progress=False):
        batches.append(batch.input_ids)
        if sum(b.numel() for b in batches) >= tokens:
            break
    ids = torch.cat(batches)[: max(1, tokens // 128)]
    out = {}
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        model = fp32 if dtype == torch.float32 else load_language_model("embedded", dtype="bfloat16")[0]
        acts = {}

        def hook(_module, _inputs, output, acts=acts):
            acts["h"] = (output[0] if isinstance(output, tuple) else output).float()
            raise StopIteration  # stop after layer 6, as the harvest does

        handle = model.model.layers[6].register_forward_hook(hook)

        def forward(model=model):
            try:
                with torch.no_grad():
                    model(input_ids=ids)
            except StopIteration:
                pass

        seconds = best(forward, repeats=2)
        handle.remove()
        out[name] = (ids.numel() / seconds, acts["h"])
    ref = out["float32"][1]
    deviation = float((out["bfloat16"][1] - ref).norm() / ref.norm())
    return out["float32"][0], out["bfloat16"][0], deviation


def step_rows():
    from hf_bae import BAEConfig, BinaryAutoencoder, SAEConfig, SparseAutoencoder

    rows = []
    x = torch.randn(1024, 576)
    for name, make in (("BAE step d=576 m=2304 b=1024", lambda: BinaryAutoencoder(BAEConfig(hidden_size=576, latent_size=2304))),
                       ("TopK step (sparse) d=576 m=2304 k=32 b=1024",
                        lambda: SparseAutoencoder(SAEConfig(hidden_size=576, latent_size=2304, activation="topk", k=32)))):
        torch.manual_seed(0)
        model = make()
        model.check_inputs = False
        state = {k: v.clone() for k, v in model.state_dict().items()}
        losses, rates = {}, {}
        for precision in ("float32", "bfloat16"):
            model.load_state_dict(state)
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

            def step(precision=precision, optimizer=optimizer):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bfloat16"):
                    loss = model(x).loss
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                return loss

            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bfloat16"):
                losses[precision] = float(model(x).loss)  # at the same starting weights
            rates[precision] = x.shape[0] / best(step, repeats=2)
        rows.append((name, rates["float32"], rates["bfloat16"], abs(losses["bfloat16"] - losses["float32"]) / abs(losses["float32"])))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=1024)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from hf_bae.interpret.transformers_backend import cpu_has_bf16_matmul

    print(f"CPU bf16 instructions (avx512_bf16/amx_bf16): {cpu_has_bf16_matmul()}; {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    print(f"{'path':<46} {'fp32 tok/s':>11} {'bf16 tok/s':>11} {'bf16/fp32':>10} {'rel. deviation':>15}")
    fp32, bf16, deviation = lm_rows(args.tokens)
    print(f"{'LM forward, SmolLM2-135M layers 0..6, ctx 128':<46} {fp32:>11.0f} {bf16:>11.0f} {bf16 / fp32:>9.2f}x "
          f"{deviation:>15.2e}", flush=True)
    for name, fp32, bf16, deviation in step_rows():
        print(f"{name:<46} {fp32:>11.0f} {bf16:>11.0f} {bf16 / fp32:>9.2f}x {deviation:>15.2e}", flush=True)


if __name__ == "__main__":
    main()
