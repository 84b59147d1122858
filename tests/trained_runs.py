"""Small trained-looking runs for the Hub tests, in the layout `hf-bae train` writes:

    RUN/training_args.json
    RUN/<name>/config.json, model.safetensors, *.py, eval_results.json, metrics.jsonl, plots/*.png, [comsem.json]

The dictionaries are tiny but really trained (a few Adam steps on synthetic low-rank activations) and
their metrics really computed with `hf_bae.metrics.FeatureStats`.
"""

import json
from pathlib import Path

import torch

from hf_bae import BAEConfig, BinaryAutoencoder, SAEConfig, SparseAutoencoder
from hf_bae.metrics import FeatureStats

D = 16
BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
PROVENANCE = dict(base_model=BASE_MODEL, dataset="acme/tiny-corpus", context_length=32, token_filter="special")


def activations(n: int, seed: int) -> torch.Tensor:
    """Low-rank activations with a little noise: something a dictionary can learn in a few steps."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(4, D, generator=torch.Generator().manual_seed(123))
    return torch.randn(n, 4, generator=g) @ basis + 0.05 * torch.randn(n, D, generator=g)


def train(model, steps: int = 15) -> list[dict]:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    log = []
    for step in range(steps):
        out = model(activations(64, seed=step))
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        log.append({"step": step, "loss": out.loss.item(), "reconstruction_loss": out.reconstruction_loss.item()})
    return log


@torch.no_grad()
def evaluate(model) -> dict:
    model.eval()
    x = activations(256, seed=999)
    out = model(x, return_loss=False)
    binary = model.kind == "BAE"
    codes = out.codes if binary else None
    stats = FeatureStats(model.num_features, num_codes=getattr(model.config, "num_codes", None), binary=binary)
    stats.update(model.features_fired(out), x, out.reconstruction, codes=codes)
    return stats.summary()


def write_plot(path: Path, values: list[float], ylabel: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot(values)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=50)
    plt.close(fig)


def make_dictionary(folder: Path, model, comsem: dict | None = None) -> None:
    log = train(model)
    model.save_pretrained(folder)
    (folder / "eval_results.json").write_text(json.dumps(evaluate(model), indent=2))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in log))
    write_plot(folder / "plots" / "loss.png", [row["loss"] for row in log], "loss")
    if comsem is not None:
        (folder / "comsem.json").write_text(json.dumps(comsem))


def make_run(run: Path) -> dict[str, torch.nn.Module]:
    """A run with a BAE and a TopK SAE at layer 1 (resid_post) and a ReLU SAE at layer 0 (mlp_out)."""
    torch.manual_seed(0)
    models = {
        "bae": BinaryAutoencoder(BAEConfig(hidden_size=D, layer=1, entropy_weight=1e-3, covariance_weight=1e-4, **PROVENANCE)),
        "topk": SparseAutoencoder(SAEConfig(hidden_size=D, layer=1, activation="topk", k=4, **PROVENANCE)),
        "relu": SparseAutoencoder(SAEConfig(hidden_size=D, layer=0, site="mlp_out", activation="relu", l1_weight=1e-3, **PROVENANCE)),
    }
    run.mkdir(parents=True, exist_ok=True)
    (run / "training_args.json").write_text(json.dumps({"learning_rate": 1e-2, "max_steps": 15, "batch_size": 64}))
    for name, model in models.items():
        make_dictionary(run / name, model, comsem={"comsem_score": 0.42, "interpretable_fraction": 0.5} if name == "bae" else None)
    (run / "checkpoints" / "step-10").mkdir(parents=True)  # a run also holds checkpoints: never pushed
    return {name: model.eval() for name, model in models.items()}
