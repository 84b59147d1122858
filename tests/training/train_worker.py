"""A training run on synthetic in-memory activations, started as a subprocess by the tests.

Column 0 of every activation row holds the row's index, so that the log written here shows exactly
which tokens each batch held: `--log` gets one JSON line per batch the source hands to the trainer.
Run it directly or under `accelerate launch --multi_gpu --num_processes 2 ... --cpu`.
"""

import argparse
import hashlib
import json
import os
import time
from pathlib import Path

import torch


def synthetic(num: int, d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(num, d, generator=g)
    x[:, 0] = torch.arange(num, dtype=torch.float32)  # the row's identity travels with it
    return x


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--output_dir", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--max_steps", type=int, default=40)
    p.add_argument("--checkpoint_every", type=int, default=5)
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--cpu", action="store_true")
    opts = p.parse_args()
    torch.set_num_threads(1)

    from hf_bae import BAEConfig, BinaryAutoencoder, SAEConfig, SparseAutoencoder
    from hf_bae.sources import TensorSource
    from hf_bae.training import Trainer, TrainingArguments, make_accelerator

    args = TrainingArguments(output_dir=opts.output_dir, max_steps=opts.max_steps, batch_size=64, validate_every=20,
                             log_every=5, checkpoint_every=opts.checkpoint_every, resume=opts.resume, progress=False,
                             cpu=opts.cpu, seed=0, initialization_tokens=64)  # one batch: the log stays per-step
    accelerator = make_accelerator(args)
    rank, world = accelerator.process_index, accelerator.num_processes

    class LoggedSource(TensorSource):
        def batches(self, batch_size, state=None, tensors=None):
            for batch in super().batches(batch_size, state, tensors):
                ids = batch.activations["x"][:, 0].long().tolist()
                with open(f"{opts.log}.rank{rank}", "a") as f:
                    f.write(json.dumps({"pid": os.getpid(), "epoch": batch.epoch, "after": batch.state, "ids": ids}) + "\n")
                if opts.sleep:
                    time.sleep(opts.sleep)
                yield batch

    x = synthetic(4000, 16)
    source = LoggedSource({"x": x}, {"x": synthetic(300, 16, seed=1)}, seed=0, rank=rank, world_size=world)
    torch.manual_seed(0)
    dictionaries = {"bae": BinaryAutoencoder(BAEConfig(hidden_size=16, entropy_weight=1e-3, covariance_weight=1e-4)),
                    "relu": SparseAutoencoder(SAEConfig(hidden_size=16, activation="relu", l1_weight=1e-4))}
    Trainer(args, dictionaries, source, accelerator=accelerator).train()
    digest = hashlib.sha256()
    for entry in ("bae", "relu"):
        for k, v in sorted(dictionaries[entry].state_dict().items()):
            digest.update(k.encode() + v.detach().cpu().numpy().tobytes())
    Path(opts.output_dir, f"rank_{rank}.json").write_text(json.dumps(
        {"rank": rank, "world_size": world, "pid": os.getpid(), "weights_sha256": digest.hexdigest()}))


if __name__ == "__main__":
    main()
