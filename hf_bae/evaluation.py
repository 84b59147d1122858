"""Evaluation of trained dictionaries on held-out activations: what validation and `eval_results.json` report.

- `evaluate_dictionary(model, activations, target=None)`: reconstruction (FVU, explained variance,
  MSE), sparsity (L0, dead and dense features, firing frequencies), code entropy and the codes'
  mean |off-diagonal covariance| (BAE), L1 (SAE). Definitions in `hf_bae.metrics`.
- `downstream_fidelity(lm, tokenizer, dictionaries, input_ids)`: each dictionary's reconstruction
  spliced into the language model at its site: next-token KL and Jensen–Shannon divergence and the
  CE-loss score against zero-ablating the same tokens.

Both are used by the training loop and work on any trained dictionary:

    >>> bae = AutoModel.from_pretrained("runs/demo/bae")
    >>> evaluate_dictionary(bae, held_out_activations)["fvu"]
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

import torch

from .formats import DEFAULT_DENSE_THRESHOLD
from .metrics import DownstreamStats, FeatureStats, mean_abs_offdiagonal_covariance
from .sites import replace_site


@torch.no_grad()
def evaluate_dictionary(model, activations: torch.Tensor, target: torch.Tensor | None = None, *,
                        batch_size: int = 512, dense_threshold: float = DEFAULT_DENSE_THRESHOLD,
                        covariance_batches: int = 4, autocast=None) -> dict:
    """Validation metrics of one dictionary on `[n, d]` activations (and `target` for a transcoder).

    Batch statistics (the BAE's minibatch entropy and covariance) use batches of `batch_size`, as in
    training; the covariance is averaged over the first `covariance_batches` batches (it costs
    O(batch · m²) each). The result also holds `frequencies`, the per-feature firing rates (a tensor).
    """
    # Binary codes (a BAE) add the code entropy, the minibatch entropy and the codes' covariance.
    binary = model.kind == "BAE"
    c = model.config
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    autocast = autocast or contextlib.nullcontext
    stats = FeatureStats(c.num_latents, num_codes=getattr(c, "num_codes", c.num_latents), binary=binary)
    entropy = l1 = 0.0
    covariances, batches = [], 0
    try:
        for start in range(0, activations.shape[0], batch_size):
            x = activations[start:start + batch_size].to(device)
            t = target[start:start + batch_size].to(device) if target is not None else None
            with autocast():
                if binary:
                    out = model(x, target=t, covariance_weight=0.0)
                    stats.update(model.features_fired(out), x if t is None else t, out.reconstruction,
                                 codes=out.codes)
                    entropy += float(out.entropy_loss)
                    if len(covariances) < covariance_batches and out.codes.shape[0] > 1:
                        covariances.append(mean_abs_offdiagonal_covariance(out.codes))
                else:
                    out = model(x, target=t)
                    stats.update(model.features_fired(out), x if t is None else t, out.reconstruction)
                    l1 += float(out.l1_loss)
            batches += 1
    finally:
        model.train(was_training)
    summary = stats.summary(dense_threshold)
    summary["frequencies"] = stats.frequencies
    if binary:
        summary["entropy_bits_batch"] = entropy / batches
        if covariances:
            summary["mean_abs_offdiagonal_cov"] = sum(covariances) / len(covariances)
        m = c.num_codes
        summary["loss"] = (summary["mse"] * model.loss_scale + c.entropy_weight * summary["entropy_bits_batch"]
                           + c.covariance_weight * summary.get("mean_abs_offdiagonal_cov", 0.0) * m * (m - 1))
    else:
        summary["l1"] = l1 / batches
        summary["loss"] = summary["mse"] * model.loss_scale + c.l1_weight * summary["l1"]
    return summary


@torch.no_grad()
def downstream_fidelity(lm, tokenizer, dictionaries: Mapping[str, tuple], input_ids: torch.Tensor, *,
                        exclude_special_tokens: bool = True, rows_per_pass: int = 2, autocast=None) -> dict[str, dict]:
    """Splice each dictionary's reconstruction into the LM at its site; KL, JS and the CE-loss score.

    Args:
        lm, tokenizer: the language model the dictionaries read.
        dictionaries: name → (model, input site, target site or None), sites as ``"layers.5.resid_post"``;
            a transcoder (target site given) reads its input site and replaces its target site.
        input_ids: `[rows, T]` held-out token rows.
        exclude_special_tokens: special tokens keep their own activation (as they were left out of
            training); the zero-ablation baseline zeroes the same tokens as the splice replaces.
        rows_per_pass: rows per forward (each keeps several `[rows, T, vocab]` logits alive).
    """
    autocast = autocast or contextlib.nullcontext
    special = sorted(set(getattr(tokenizer, "all_special_ids", None) or []))
    stats = {name: DownstreamStats() for name in dictionaries}
    lm_device = next(lm.parameters()).device
    for start in range(0, input_ids.shape[0], rows_per_pass):
        ids = input_ids[start:start + rows_per_pass].to(lm_device)
        keep = torch.ones_like(ids, dtype=torch.bool)
        if exclude_special_tokens and special:
            keep &= ~torch.isin(ids, torch.tensor(special, device=lm_device))
        keep = keep.unsqueeze(-1)
        clean = lm(input_ids=ids).logits
        zero_logits: dict[str, torch.Tensor] = {}
        for name, (model, input_site, target_site) in dictionaries.items():
            replaced = target_site or input_site
            if replaced not in zero_logits:
                with replace_site(lm, replaced, lambda h: h.masked_fill(keep, 0.0)):
                    zero_logits[replaced] = lm(input_ids=ids).logits
            original: dict[str, torch.Tensor] = {}

            def remember(h, original=original):
                original["h"] = h
                return h

            def splice(x, model=model, original=original):
                # x: the activation at the dictionary's input site (another site than h for a transcoder)
                with autocast():
                    rec = model(x.reshape(-1, x.shape[-1]).to(model.device).float(), return_loss=False)
                h = original["h"]
                return torch.where(keep, rec.reconstruction.reshape(h.shape).to(h.device, h.dtype), h)

            source = input_site if target_site is not None else None
            with replace_site(lm, replaced, remember), replace_site(lm, replaced, splice, source=source):
                spliced = lm(input_ids=ids).logits
            stats[name].update(ids, clean, zero_logits[replaced], spliced)
    return {name: s.summary() for name, s in stats.items()}
