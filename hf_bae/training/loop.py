"""The training loop: `DictionaryTrainer` trains several dictionaries side by side from one activation
stream on `accelerate`, each with its own optimiser, output folder and metrics, so that they are compared
on exactly the same tokens.

`accelerate` does device placement, DDP across processes, mixed precision (autocast with fp32 master
weights), gradient accumulation, trackers and `save_state` checkpoints; the loop adds the schedules
(`hf_bae.training.schedules`), the data position (so that `--resume` continues bitwise identically on
CPU), validation with downstream fidelity, NaN detection, signal handling and progress. What differs
between kinds (which penalty warms up, the forward's arguments, which features fired, the logged terms,
weight constraints) comes from the models, so the loop does not branch on the kind.
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from ..evaluation import downstream_fidelity, evaluate_dictionary
from ..formats import EVAL_RESULTS_FILE, METRICS_FILE
from ..modeling_base import DictionaryPreTrainedModel
from ..sources import ActivationSource, SourceBatch, ValidationData, first_nonfinite_row
from ..training_plots import plot_dictionary_run
from . import checkpoints
from .arguments import TrainingArguments
from .host_memory import retain_freed_memory
from .initialization import initialize_from_data
from .inputs import source_keys
from .optimizers import make_optimizer
from .schedules import learning_rate_at, penalty_active, warmup_starts
from .step_metrics import step_window, window_record


class NonFiniteLossError(RuntimeError):
    """Raised when a loss or gradient became NaN/inf; the message names the step and the checkpoint."""


class NonFiniteActivationsError(ValueError):
    """Raised when the source's activations hold NaN/inf (bad data, not a bad step): the message names the
    shard and row (or the step) and the flag that drops such tokens instead (`--skip_nonfinite_tokens`)."""


class TrainingInterrupted(RuntimeError):
    """Raised after SIGINT/SIGTERM once a checkpoint is saved; `--resume` continues from it."""

    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.signal_number = signal_number


@dataclass
class _Entry:
    """A dictionary in training: model (as prepared), optimiser, the source keys it reads, its counters."""

    name: str
    model: Any
    optimizer: Any
    input_key: str
    target_key: str | None
    since_fired: torch.Tensor | None = None
    window: torch.Tensor | None = None  # device-side sums of the train metrics since the last log


def make_accelerator(args: TrainingArguments) -> Accelerator:
    """The `Accelerator` of a run: device, mixed precision, gradient accumulation and trackers from `args`."""
    log_with = None if args.report_to == "none" else args.report_to
    return Accelerator(cpu=args.cpu, mixed_precision=args.mixed_precision, log_with=log_with,
                       dynamo_backend="inductor" if args.compile else "no",
                       gradient_accumulation_steps=args.gradient_accumulation_steps, project_dir=args.output_dir)


class DictionaryTrainer:
    """Trains several dictionaries from one `ActivationSource` with `accelerate` (see the module docstring).

    Args:
        args: the run's options.
        dictionaries: name → fresh (or pretrained) dictionary; the name is its output folder.
        source: where the training (and validation) activations come from.
        inputs: name → (input site key, target site key or None); default: the source's only site, or
            the keys named by each config's layer/site/output_site.
        language_model, tokenizer: the LM, for the splice metrics (optional).
        run_options: what `training_args.json` records (default: `args`).
        accelerator: an existing `Accelerator` (default: one made from `args`).
        initialize: at the start of a new run, estimate each dictionary's normalisation and set a BAE's
            initial firing rate from the first batches (False for dictionaries that are already trained).
    """

    def __init__(self, args: TrainingArguments, dictionaries: dict[str, DictionaryPreTrainedModel],
                 source: ActivationSource, *, inputs: dict[str, tuple[str, str | None]] | None = None,
                 language_model=None, tokenizer=None, run_options: dict[str, Any] | None = None,
                 accelerator: Accelerator | None = None, initialize: bool = True):
        if not dictionaries:
            raise ValueError("No dictionaries to train.")
        self.args, self.source, self.initialize = args, source, initialize
        self.language_model, self.tokenizer = language_model, tokenizer
        self.run_options = dict(run_options) if run_options is not None else dataclasses.asdict(args)
        self.run_options["dictionaries"] = list(dictionaries)
        self.output_dir = Path(args.output_dir)
        # Every process checks everything (read-only) before any process writes, so that a refusal
        # is raised everywhere, leaves the output folder as it was, and no process waits at a barrier.
        self.resume_from = checkpoints.check_output_dir(args)
        self.resumed_changes: list[str] = []
        if self.resume_from is not None:
            self.resumed_changes = checkpoints.check_resumed_options(self.output_dir, self.run_options)
        inputs = inputs or source_keys(dictionaries, source.sites)
        for name, model in dictionaries.items():
            key, target = inputs[name]
            width = source.hidden_size(key)
            if width != model.config.hidden_size:
                raise ValueError(
                    f"Dictionary {name!r} expects hidden size {model.config.hidden_size} "
                    f"({model.config.describe_source()}) but the source's {key} is {width} wide: was it made for "
                    "another model, layer or site?")
            if target is not None and source.hidden_size(target) != model.config.reconstruction_size:
                raise ValueError(f"Dictionary {name!r} reconstructs {model.config.reconstruction_size} values but "
                                 f"the source's {target} is {source.hidden_size(target)} wide.")
        self.accelerator = accelerator or make_accelerator(args)
        acc = self.accelerator
        acc.wait_for_everyone()
        if acc.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            if args.overwrite:
                checkpoints.clear_run(self.output_dir, list(dictionaries))
            checkpoints.write_run_options(self.output_dir, self.run_options)
        acc.wait_for_everyone()

        self.entries: list[_Entry] = []
        for name, model in dictionaries.items():
            key, target = inputs[name]
            model.check_inputs = False  # the loop checks the loss instead of syncing on every input
            model.train()
            optimizer = make_optimizer(model, args)
            model, optimizer = acc.prepare(model, optimizer)
            self.entries.append(_Entry(name, model, optimizer, key, target))
        for e in self.entries:
            e.since_fired = torch.zeros(self._unwrap(e).config.num_latents, dtype=torch.long, device=acc.device)

        self.step, self.tokens, self.epoch = 0, 0, 0
        self.data_state: dict[str, Any] | None = None
        self.data_tensors: dict[str, torch.Tensor] = {}
        self.tokens_per_step = args.batch_size * args.gradient_accumulation_steps * acc.num_processes
        self.validation: ValidationData | None = None
        self.last_results: dict[str, dict[str, float]] = {}
        self._signal: int | None = None
        self._first_bad: torch.Tensor | None = None
        self._last_checkpoint_step = -1
        self._last_validation_step = -1
        self.nonfinite_tokens_skipped = 0  # this process's training tokens dropped by --skip_nonfinite_tokens
        self.validation_nonfinite_tokens_skipped = 0

    # -- small utilities ------------------------------------------------------------------------
    def _unwrap(self, entry: _Entry) -> DictionaryPreTrainedModel:
        return self.accelerator.unwrap_model(entry.model)

    def _total_steps(self) -> int | None:
        a = self.args
        limits = []
        if a.max_steps:
            limits.append(a.max_steps)
        if a.max_tokens:
            limits.append(math.ceil(a.max_tokens / self.tokens_per_step))
        per_epoch = self.source.batches_per_epoch(a.batch_size)
        if self.source.finite and per_epoch:
            epochs = a.num_epochs or (0 if limits else 1)
            if epochs:
                limits.append(epochs * per_epoch // a.gradient_accumulation_steps)
        return min(limits) if limits else None

    def _agree(self, *flags: bool) -> list[bool]:
        """Any-reduce boolean flags over processes (no communication in a single process)."""
        if self.accelerator.num_processes == 1:
            return list(flags)
        t = torch.tensor([int(f) for f in flags], device=self.accelerator.device)
        t = self.accelerator.reduce(t, reduction="sum")
        return [bool(v) for v in t.tolist()]

    def _on_signal(self, signum, frame) -> None:
        if self._signal is not None:  # a second signal: stop at once, without a checkpoint
            raise KeyboardInterrupt
        self._signal = signum
        if self.accelerator.is_main_process:
            sys.stderr.write(f"\n{signal.Signals(signum).name}: saving a checkpoint after this step (send it again to "
                             "stop at once without saving).\n")

    def _log(self, entry_name: str, record: dict[str, Any]) -> None:
        path = self.output_dir / entry_name / METRICS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(json.dumps(record, default=checkpoints.json_default) + "\n")

    # -- checkpoints ----------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Save models, optimisers, RNG (accelerate) and the data position of every process; returns the folder."""
        acc = self.accelerator
        tensors = {f"data.{k}": v.detach().cpu().contiguous() for k, v in self.data_tensors.items()}
        tensors.update({f"since_fired.{e.name}": e.since_fired.cpu() for e in self.entries})
        for e in self.entries:
            tensors.update(checkpoints.normalization_tensors(e.name, self._unwrap(e).normalization))
        state = {"step": self.step, "tokens": self.tokens, "epoch": self.epoch, "world_size": acc.num_processes,
                 "dictionaries": [e.name for e in self.entries]}
        tensors["nonfinite_tokens_skipped"] = torch.tensor([self.nonfinite_tokens_skipped], dtype=torch.int64)
        final = checkpoints.save_checkpoint(acc, self.output_dir, self.step, state,
                                            {"state": self.data_state, "epoch": self.epoch}, tensors,
                                            self.args.save_total_limit)
        self._last_checkpoint_step = self.step
        return final

    def load_checkpoint(self, path: Path) -> None:
        """Restore a checkpoint written by `save_checkpoint` (same dictionaries and number of processes)."""
        acc = self.accelerator
        state, data, tensors = checkpoints.load_checkpoint(acc, path, [e.name for e in self.entries])
        self.step, self.tokens, self.epoch = state["step"], state["tokens"], data["epoch"]
        self.data_state = data["state"]
        self.data_tensors = {k[len("data."):]: v for k, v in tensors.items() if k.startswith("data.")}
        self.nonfinite_tokens_skipped = int(tensors.get("nonfinite_tokens_skipped", torch.zeros(1))[0])
        for e in self.entries:
            e.since_fired = tensors[f"since_fired.{e.name}"].to(acc.device)
            normalization = checkpoints.restored_normalization(e.name, tensors)
            if normalization is not None:
                self._unwrap(e).set_normalization(*normalization)
        self._last_checkpoint_step = self.step
        if acc.is_main_process:  # the interrupted run may have logged past its last checkpoint
            for e in self.entries:
                checkpoints.truncate_metrics(self.output_dir / e.name, self.step)
        acc.wait_for_everyone()

    # -- data-dependent initialisation -------------------------------------------------------------
    def _initialize_from_data(self, batches: Iterator[SourceBatch]) -> Iterator[SourceBatch]:
        """Normalisation statistics and the BAE's initial firing rate, from the first training batches
        (see `hf_bae.training.initialization`)."""
        return initialize_from_data([(self._unwrap(e), e.input_key, e.target_key) for e in self.entries], batches,
                                    self.accelerator, self.args)

    # -- non-finite activations ------------------------------------------------------------------
    def _nonfinite_error(self, site: str, bad: int, total: int, where: str | None, what: str) -> NonFiniteActivationsError:
        return NonFiniteActivationsError(
            f"The activations at {site} hold NaN/inf: {bad} of the {total} tokens of {what}"
            + (f", the first at {where}" if where else "") + ". Harvest them again (check the language model's "
            "dtype: fp16 overflows on some layers, use bf16 or fp32), or pass --skip_nonfinite_tokens to drop "
            "such tokens (counted in eval_results.json).")

    def _finite_rows(self, activations: dict[str, torch.Tensor]) -> tuple[torch.Tensor | None, str | None]:
        """(rows whose activations are finite at every site, the first site with a bad row), or (None, None)
        when every value is finite."""
        # A sum is finite when every term is (unless it overflows: then the row check below decides): one
        # reduction per site instead of a mask on every step.
        if all(bool(torch.isfinite(values.sum())) for values in activations.values()):
            return None, None
        finite, first = None, None
        for site, values in activations.items():
            ok = torch.isfinite(values).all(-1)
            if first is None and not bool(ok.all()):
                first = site
            finite = ok if finite is None else finite & ok
        return finite, first

    def _screened(self, batches: Iterator[SourceBatch]) -> Iterator[SourceBatch]:
        """The training stream with NaN/inf activations caught before they reach a dictionary: an error naming
        the shard and row (a cache), the row (tensors) or the step (a live stream); or, with
        `skip_nonfinite_tokens`, the batch without those tokens (counted). A check of CPU batches costs one
        pass over them; the loss check alone would only say "lower the learning rate"."""
        try:
            for batch in batches:
                finite, site = self._finite_rows(batch.activations)
                if site is None:
                    yield batch
                    continue
                bad = int((~finite).sum())
                if not self.args.skip_nonfinite_tokens:
                    raise self._nonfinite_error(site, bad, finite.numel(), self.source.locate_nonfinite(site),
                                                f"the batch of step {self.step + 1}")
                self.nonfinite_tokens_skipped += bad
                if bad < finite.numel():
                    yield dataclasses.replace(batch, activations={k: v[finite] for k, v in batch.activations.items()})
        finally:
            batches.close()  # an activation stream removes its hooks from the LM

    def _screen_validation(self, validation: ValidationData | None) -> ValidationData | None:
        """Held-out activations without NaN/inf (or the error that names them): metrics over them would be nan."""
        if validation is None or validation.num_tokens == 0:
            return validation
        finite, site = self._finite_rows(validation.activations)
        if site is None:
            return validation
        bad = int((~finite).sum())
        if not self.args.skip_nonfinite_tokens:
            row = first_nonfinite_row(validation.activations[site])
            raise self._nonfinite_error(site, bad, finite.numel(), f"held-out row {row}", "the validation split")
        self.validation_nonfinite_tokens_skipped = bad
        return dataclasses.replace(validation, activations={k: v[finite] for k, v in validation.activations.items()})

    # -- one step -------------------------------------------------------------------------------
    def _forward_backward(self, batch: SourceBatch) -> list[torch.Tensor]:
        """Forward and backward of every dictionary on one batch; returns their detached losses."""
        a, acc = self.args, self.accelerator
        acts = {k: v.to(acc.device, non_blocking=True) for k, v in batch.activations.items()}
        n = next(iter(acts.values())).shape[0]
        losses = []
        for e in self.entries:
            x = acts[e.input_key]
            target = acts[e.target_key] if e.target_key is not None else None
            model = self._unwrap(e)
            on = penalty_active(self.step, self.tokens, batch.epoch, *warmup_starts(a, model.warmup_penalty))
            # Through the prepared model: DDP syncs the gradients of its forward.
            out = e.model(x, target=target, **model.training_kwargs(on, e.since_fired))
            acc.backward(out.loss)
            with torch.no_grad():
                l0, fired = model.firing(out)
                stats = step_window(out, l0, x if target is None else target)
                e.window = stats if e.window is None else e.window + stats
                e.since_fired += n
                e.since_fired.masked_fill_(fired, 0)
            losses.append(out.loss.detach())
        return losses

    def _grad_norms(self) -> list[torch.Tensor]:
        norms = []
        for e in self.entries:
            grads = [p.grad for p in e.model.parameters() if p.grad is not None]
            if self.args.max_grad_norm > 0:
                norms.append(self.accelerator.clip_grad_norm_(e.model.parameters(), self.args.max_grad_norm))
            elif self.accelerator.num_processes > 1 and self.args.mixed_precision != "fp16":
                norms.append(torch.nn.utils.get_total_norm(grads))
        return norms

    def _check_finite(self, losses: list[torch.Tensor], norms: list[torch.Tensor], check_now: bool) -> None:
        values = torch.stack([v.float().reshape(()) for v in losses + norms])
        bad_now = ~torch.isfinite(values).all()
        if self.args.nan_check_every > 1:
            # Remember the first bad step on the device; look at it only every N steps.
            step = torch.tensor(self.step + 1, device=values.device)
            if self._first_bad is None:
                self._first_bad = torch.tensor(-1, device=values.device)
            self._first_bad = torch.where(bad_now & (self._first_bad < 0), step, self._first_bad)
            if not check_now:
                return
            first = int(self._first_bad)
            if first < 0:
                return
            last = checkpoints.latest_checkpoint(self.output_dir)
            raise NonFiniteLossError(
                f"The loss or gradient became NaN/inf at step {first} (found at step {self.step + 1}; checks every "
                f"{self.args.nan_check_every} steps, so the weights are no longer finite and were not saved). "
                f"Last good checkpoint: {last or 'none'}. Lower --learning_rate, set --max_grad_norm, use bf16 "
                "instead of fp16, or check the activations for outliers (--outlier_factor).")
        if not check_now or not bool(bad_now):
            return
        which = [e.name for e, v in zip(self.entries, losses) if not torch.isfinite(v).all()] or ["(gradients)"]
        path = self.save_checkpoint()
        raise NonFiniteLossError(
            f"The loss of {', '.join(which)} became NaN/inf at step {self.step + 1}; the step was not applied and "
            f"the last good state (step {self.step}) is saved in {path}. Lower --learning_rate, set --max_grad_norm, "
            "use bf16 instead of fp16, or check the activations for outliers (--outlier_factor); then --resume.")

    def _set_learning_rate(self, total: int | None) -> float:
        a = self.args
        lr = learning_rate_at(self.step, a.learning_rate, a.lr_scheduler, a.warmup_steps, total)
        for e in self.entries:
            for group in e.optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr

    # -- logging --------------------------------------------------------------------------------
    def _flush_train_metrics(self, steps: int, seconds: float, lr: float) -> dict[str, dict[str, float]]:
        acc = self.accelerator
        windows = torch.stack([e.window for e in self.entries])
        if acc.num_processes > 1:
            windows = acc.reduce(windows, reduction="mean")
        since = torch.stack([(e.since_fired >= min(self.args.dead_window_tokens, self.tokens_seen_local))
                             .float().mean() for e in self.entries])
        values = windows.cpu().double().tolist()
        dead = since.cpu().tolist()
        out = {}
        micro = steps * self.args.gradient_accumulation_steps
        for e, row, dead_fraction in zip(self.entries, values, dead):
            out[e.name] = window_record(self._unwrap(e), row, micro, dead_fraction, lr)
            e.window = None
        tokens_per_s = steps * self.tokens_per_step / max(seconds, 1e-9)
        if acc.is_main_process:
            for name, record in out.items():
                self._log(name, {"step": self.step, "tokens": self.tokens, "epoch": self.epoch, "split": "train",
                                 **record, "tokens_per_second": tokens_per_s})
        acc.log({f"{name}/train/{k}": v for name, r in out.items() for k, v in r.items()}, step=self.step)
        self._tokens_per_s = tokens_per_s
        return out

    # -- validation -----------------------------------------------------------------------------
    def evaluate(self, validation: ValidationData | None = None) -> dict[str, dict[str, float]]:
        """Validation metrics of every dictionary (see `hf_bae.evaluation`), downstream fidelity included."""
        validation = validation or self.validation
        if validation is None or validation.num_tokens == 0:
            return {}
        a, acc = self.args, self.accelerator
        results = {}
        for e in self.entries:
            target = validation.activations[e.target_key] if e.target_key is not None else None
            results[e.name] = evaluate_dictionary(self._unwrap(e), validation.activations[e.input_key], target,
                                                  batch_size=a.batch_size, dense_threshold=a.dense_threshold,
                                                  autocast=acc.autocast)
        if self.language_model is not None and validation.input_ids is not None and len(validation.input_ids):
            spliced = downstream_fidelity(
                self.language_model, self.tokenizer,
                {e.name: (self._unwrap(e), e.input_key, e.target_key) for e in self.entries}, validation.input_ids,
                exclude_special_tokens=a.exclude_special_tokens, autocast=acc.autocast)
            for name, values in spliced.items():
                results[name].update(values)
        return results

    def _run_validation(self) -> None:
        acc = self.accelerator
        if acc.is_main_process and self.validation is not None:
            results = self.evaluate()
            for name, summary in results.items():
                record = {k: v for k, v in summary.items() if k != "frequencies"}
                self._log(name, {"step": self.step, "tokens": self.tokens, "epoch": self.epoch,
                                 "split": "validation", **record})
            acc.log({f"{name}/validation/{k}": v for name, r in results.items() for k, v in r.items()
                     if k != "frequencies" and isinstance(v, (int, float))}, step=self.step)
            self.last_results = results
        self._last_validation_step = self.step
        acc.wait_for_everyone()

    # -- the loop -------------------------------------------------------------------------------
    def train(self) -> dict[str, dict[str, float]]:
        """Train until the budget (or the data) ends; save the dictionaries; return the final validation metrics."""
        a, acc = self.args, self.accelerator
        set_seed(a.seed)
        if a.retain_freed_memory and acc.device.type == "cpu":
            retain_freed_memory()
        if self.resume_from is not None:
            self.load_checkpoint(self.resume_from)
            acc.print(f"Resuming from {self.resume_from} (step {self.step}, {self.tokens:,} tokens)"
                      + (f" with changed options: {', '.join(self.resumed_changes)}." if self.resumed_changes else "."))
        if acc.is_main_process:
            self.validation = self._screen_validation(self.source.validation(
                a.validation_tokens, a.splice_rows if self.language_model is not None else 0))
        if a.report_to != "none":
            acc.init_trackers("hf_bae", config={k: v for k, v in self.run_options.items()
                                                if isinstance(v, (int, float, str, bool))})
        total = self._total_steps()
        self.tokens_seen_local = self.step * a.batch_size * a.gradient_accumulation_steps
        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                previous[sig] = signal.signal(sig, self._on_signal)
            except ValueError:  # not the main thread
                pass
        bar = tqdm(total=total, initial=self.step, desc="training", unit="step", dynamic_ncols=True,
                   disable=not (a.progress and acc.is_main_process))
        batches = self._screened(self.source.batches(a.batch_size, self.data_state, self.data_tensors))
        if self.resume_from is None and self.initialize:
            batches = self._initialize_from_data(batches)
        window_start, window_steps, self._tokens_per_s = time.perf_counter(), 0, 0.0
        lr = a.learning_rate
        try:
            while total is None or self.step < total:
                stop, batch = False, None
                pending: list[SourceBatch] = []
                for micro in range(a.gradient_accumulation_steps):
                    batch = next(batches, None)
                    over = batch is None or (a.num_epochs and batch.epoch >= a.num_epochs)
                    flags = self._agree(bool(over), micro == 0 and self._signal is not None)
                    if flags[1]:
                        path = self.save_checkpoint()
                        signum = self._signal or signal.SIGTERM
                        raise TrainingInterrupted(
                            f"Stopped by {signal.Signals(signum).name} at step {self.step}; checkpoint saved in "
                            f"{path}. Continue with the same command and --resume.", signum)
                    if flags[0]:
                        stop = True
                        break
                    pending.append(batch)
                if stop:
                    if pending:  # a partial accumulation is dropped: its gradients must not leak into a step
                        for e in self.entries:
                            e.optimizer.zero_grad(set_to_none=True)
                    break
                lr = self._set_learning_rate(total)
                losses = []
                for micro, b in enumerate(pending):
                    self.epoch = b.epoch
                    with acc.accumulate(*[e.model for e in self.entries]):
                        losses = self._forward_backward(b)
                        if micro == len(pending) - 1:
                            norms = self._grad_norms()
                            check = (self.step + 1) % a.nan_check_every == 0 or (total and self.step + 1 >= total)
                            self._check_finite(losses, norms, bool(check))
                            for e in self.entries:
                                e.optimizer.step()
                                e.optimizer.zero_grad(set_to_none=True)
                                self._unwrap(e).apply_constraints()
                self.data_state, self.data_tensors = pending[-1].state, pending[-1].tensors
                self.step += 1
                self.tokens += self.tokens_per_step
                self.tokens_seen_local += a.batch_size * a.gradient_accumulation_steps
                window_steps += 1
                bar.update(1)
                if self.step % a.log_every == 0:
                    now = time.perf_counter()
                    logged = self._flush_train_metrics(window_steps, now - window_start, lr)
                    window_start, window_steps = now, 0
                    bar.set_postfix_str(self._postfix(logged), refresh=False)
                if a.validate_every and self.step % a.validate_every == 0:
                    self._run_validation()
                    window_start = time.perf_counter()  # validation time is not training throughput
                if a.checkpoint_every and self.step % a.checkpoint_every == 0:
                    self.save_checkpoint()
                    window_start = time.perf_counter()
            if self.step == 0:
                raise ValueError("Training ended before its first step: the source yielded no full batch of "
                                 f"{a.batch_size} tokens per process. Provide more data or lower --batch_size.")
            if window_steps and any(e.window is not None for e in self.entries):
                self._flush_train_metrics(window_steps, time.perf_counter() - window_start, lr)
            batches.close()  # an activation stream removes its hooks from the LM
            if self._last_validation_step != self.step:
                self._run_validation()
            if self._last_checkpoint_step != self.step:
                self.save_checkpoint()
            self._finish()
        finally:
            batches.close()
            bar.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if a.report_to != "none":
            acc.end_training()
        return {name: {k: v for k, v in r.items() if k != "frequencies"} for name, r in self.last_results.items()}

    def _postfix(self, logged: dict[str, dict[str, float]]) -> str:
        parts = [f"{self._tokens_per_s:,.0f} tok/s"]
        for name, r in logged.items():
            parts.append(f"{name} loss={r['loss']:.4g} L0={r['l0']:.1f}")
        return " | ".join(parts)

    def _finish(self) -> None:
        acc = self.accelerator
        for e in self.entries:  # the saved (and in-memory) dictionaries read raw hidden states
            self._unwrap(e).fold_normalization()
        skipped = {}
        if self.args.skip_nonfinite_tokens:  # over all processes
            count = torch.tensor(self.nonfinite_tokens_skipped, device=acc.device)
            if acc.num_processes > 1:
                count = acc.reduce(count, reduction="sum")
            skipped = {"nonfinite_tokens_skipped": int(count),
                       "validation_nonfinite_tokens_skipped": self.validation_nonfinite_tokens_skipped}
        if acc.is_main_process:
            for e in self.entries:
                folder = self.output_dir / e.name
                folder.mkdir(parents=True, exist_ok=True)
                model = self._unwrap(e)
                if self.args.save_dictionaries:
                    model.save_pretrained(folder, safe_serialization=True)
                results = self.last_results.get(e.name, {})
                frequencies = results.get("frequencies")
                final = {k: v for k, v in results.items() if k != "frequencies"}
                final.update({"step": self.step, "training_tokens": self.tokens, **skipped})
                (folder / EVAL_RESULTS_FILE).write_text(json.dumps(final, indent=2, default=checkpoints.json_default) + "\n")
                if self.args.plots:
                    plot_dictionary_run(folder, frequencies=frequencies, dense_threshold=self.args.dense_threshold,
                                        title=f"{e.name}: {model.config.describe_source()}")
