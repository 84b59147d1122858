"""In-context learning (ICL) with a BAE: entropy against the number of demonstrations, and steering.

A *task* is a list of labelled items (`{"input": ..., "label": ...}` per line of a JSONL file); a few
small offline ones ship in `hf_bae/tasks/` (`list_tasks()`): antonyms, country_capital, sentiment.

Prompts: k demonstrations then the query,

    Input: hot\\nOutput: cold\\n\\nInput: up\\nOutput: down\\n\\nInput: fast\\nOutput:

and the hidden state read is the one at the last prompt token (the ":" of the label prefix, as in
the paper). The LM's answer is correct when greedy decoding would produce the label: the label's
tokens are appended and every one of them must be the argmax of the preceding position
(teacher-forced exact match, one forward pass per prompt).

Sampling (`sample_prompts`) fixes two bugs of the original code: its k demonstrations were always
the first k items of the set whatever was sampled (`util/load_data.py`), and its steering script
let the query's own labelled line appear among its demonstrations (`ICL_steer.py`). Here each query
gets its own seeded random order of the *other* items (never one with the same input), and its
k-shot demonstrations are the first k of that order, so the k-shot prompts of one query are nested
and the curve over k compares like with like.

`icl_entropy` gives the entropy curve over k (with accuracy); `icl_steering` builds a task vector
from the BAE features whose firing rate differs most between k-shot and 0-shot prompts, adds it at
the BAE's site in 0-shot prompts, and compares the accuracy gain with the centroid-difference
task vector.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..activations import model_device
from ..sites import Site, replace_site
from .estimator import DEFAULT_MIN_SAMPLES, DEFAULT_NUM_BOOTSTRAP, EntropyAccumulator, EntropyReport
from .measure import encode_codes

DEMO_TEMPLATE = "Input: {input}\nOutput: {label}\n\n"
QUERY_TEMPLATE = "Input: {input}\nOutput:"


# ---------------------------------------------------------------------------------------------
# Tasks
# ---------------------------------------------------------------------------------------------
@dataclass
class ICLTask:
    """A labelled task: `items` are (input, label) pairs."""

    name: str
    items: list[tuple[str, str]]

    @property
    def labels(self) -> list[str]:
        """The distinct labels, in order of appearance."""
        return list(dict.fromkeys(label for _, label in self.items))


def list_tasks() -> list[str]:
    """Names of the task files shipped with hf_bae (`hf_bae/tasks/*.jsonl`)."""
    folder = resources.files("hf_bae") / "tasks"
    return sorted(p.name[:-6] for p in folder.iterdir() if p.name.endswith(".jsonl"))


def load_task(name_or_path: str) -> ICLTask:
    """A task from a JSONL file (one `{"input": ..., "label": ...}` object per line) or a shipped name.

    Raises:
        ValueError: unknown name, unreadable line, or an item without a non-empty `input` / `label`
            (the message names the line).
    """
    path = Path(name_or_path)
    if not path.is_file():
        shipped = resources.files("hf_bae") / "tasks" / f"{name_or_path}.jsonl"
        if not shipped.is_file():
            raise ValueError(f"No task file {name_or_path!r}: give a JSONL path or one of {', '.join(list_tasks())}.")
        path, text = Path(str(name_or_path)), shipped.read_text(encoding="utf-8")
    else:
        text = path.read_text(encoding="utf-8")
    items = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}, line {number}: not JSON ({exc.msg}).") from exc
        if not isinstance(record, dict):
            raise ValueError(f"{path}, line {number}: expected an object with 'input' and 'label'.")
        for key in ("input", "label"):
            value = record.get(key)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{path}, line {number}: missing or empty {key!r} (each line needs "
                                 f"{{\"input\": ..., \"label\": ...}}).")
        items.append((record["input"].strip(), record["label"].strip()))
    if len(items) < 2:
        raise ValueError(f"{path}: a task needs at least 2 items (queries and demonstrations), found {len(items)}.")
    return ICLTask(path.stem if path.suffix == ".jsonl" else str(name_or_path), items)


# ---------------------------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------------------------
@dataclass
class ICLPrompt:
    """One prompt: its text, the expected label, the query's item index and the demonstrations' indices."""

    text: str
    label: str
    query: int
    demonstrations: list[int] = field(default_factory=list)


def format_prompt(task: ICLTask, demonstrations: Sequence[int], query: int) -> str:
    """The prompt text: the demonstrations (input and label) then the query's input and the label prefix."""
    demos = "".join(DEMO_TEMPLATE.format(input=task.items[i][0], label=task.items[i][1]) for i in demonstrations)
    return demos + QUERY_TEMPLATE.format(input=task.items[query][0])


def choose_queries(task: ICLTask, num_queries: int, seed: int = 0, exclude: Sequence[int] = ()) -> list[int]:
    """`num_queries` distinct item indices drawn with `seed` (all items, in a seeded order, if fewer)."""
    pool = [i for i in range(len(task.items)) if i not in set(exclude)]
    rng = random.Random(seed)
    rng.shuffle(pool)
    return pool[:num_queries]


def demonstration_order(task: ICLTask, query: int, seed: int = 0, pool: Sequence[int] | None = None) -> list[int]:
    """The seeded order from which `query`'s demonstrations are taken: every item of `pool` (default
    all) except the query itself and any item with the same input."""
    query_input = task.items[query][0]
    candidates = [i for i in (pool if pool is not None else range(len(task.items)))
                  if i != query and task.items[i][0] != query_input]
    random.Random(f"{seed}:{query}").shuffle(candidates)
    return candidates


def sample_prompts(task: ICLTask, shots: int, queries: Sequence[int], seed: int = 0,
                   pool: Sequence[int] | None = None) -> list[ICLPrompt]:
    """k-shot prompts for each query; demonstrations are the first k of `demonstration_order`, so the
    prompts for k and k+1 shots of a query share their first k demonstrations."""
    prompts = []
    for q in queries:
        order = demonstration_order(task, q, seed, pool)
        if len(order) < shots:
            raise ValueError(f"Task {task.name!r} has only {len(order)} possible demonstrations for a query; "
                             f"asked for {shots} shots.")
        demos = order[:shots]
        prompts.append(ICLPrompt(format_prompt(task, demos, q), task.items[q][1], q, demos))
    return prompts


# ---------------------------------------------------------------------------------------------
# Running prompts: hidden state at the last prompt token + teacher-forced exact match
# ---------------------------------------------------------------------------------------------
def _encode(tokenizer: Any, prompt: str, label: str) -> tuple[list[int], list[int]]:
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if tokenizer.bos_token_id is not None:
        ids = [tokenizer.bos_token_id] + ids  # as packed rows: BOS first
    label_ids = tokenizer(" " + label, add_special_tokens=False)["input_ids"]
    return ids, label_ids


@torch.no_grad()
def run_prompts(model: Any, tokenizer: Any, prompts: Sequence[ICLPrompt], site: str | Site, *, batch_size: int = 8,
                steering: torch.Tensor | None = None, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states at `site` of the last prompt token and whether the LM answers each prompt correctly.

    Args:
        steering: a `[d]` vector added to the activation at `site` at the last prompt token (the
            run then measures the steered model; the returned hidden states include the vector).

    Returns:
        `([n, d]` float32 hidden states on the CPU, `[n]` bool correct`)`.
    """
    device = model_device(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    hidden, correct = [], []
    for start in tqdm(range(0, len(prompts), batch_size), desc="prompts", disable=not progress):
        chunk = prompts[start:start + batch_size]
        encoded = [_encode(tokenizer, p.text, p.label) for p in chunk]
        length = max(len(a) + len(b) for a, b in encoded)
        ids = torch.full((len(chunk), length), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        last = torch.tensor([len(a) - 1 for a, _ in encoded])
        for row, (a, b) in enumerate(encoded):
            ids[row, :len(a) + len(b)] = torch.tensor(a + b)
            mask[row, :len(a) + len(b)] = 1  # right padding: causal positions before it are unaffected
        ids, mask = ids.to(device), mask.to(device)
        rows = torch.arange(len(chunk), device=device)
        captured = {}

        def read(h: torch.Tensor) -> torch.Tensor:
            if steering is not None:
                h = h.clone()
                h[rows, last.to(device)] += steering.to(h.device, h.dtype)
            captured["h"] = h[rows, last.to(device)].float().cpu()
            return h

        # Only the positions that predict label tokens need the LM head (a 49k-word head costs more
        # than the whole body of a small model): ask for those logits alone where the model allows it.
        needed = sorted({i for a, b in encoded for i in range(len(a) - 1, len(a) - 1 + len(b))})
        column = {position: j for j, position in enumerate(needed)}
        with replace_site(model, site, read):
            try:
                logits = model(input_ids=ids, attention_mask=mask, use_cache=False,
                               logits_to_keep=torch.tensor(needed, device=device)).logits
            except TypeError:  # a model without logits_to_keep
                logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, needed]
        predicted = logits.argmax(-1).cpu()
        for row, (a, b) in enumerate(encoded):
            guess = predicted[row, [column[i] for i in range(len(a) - 1, len(a) - 1 + len(b))]]
            correct.append(bool(torch.equal(guess, torch.tensor(b))))
        hidden.append(captured["h"])
    return torch.cat(hidden), torch.tensor(correct)


# ---------------------------------------------------------------------------------------------
# Entropy against the number of demonstrations
# ---------------------------------------------------------------------------------------------
@dataclass
class ICLPoint:
    """Entropy and accuracy of the k-shot prompts."""

    shots: int
    report: EntropyReport
    accuracy: float
    num_prompts: int


@torch.no_grad()
def icl_entropy(model: Any, tokenizer: Any, bae: Any, task: ICLTask, max_shots: int = 4, *, num_queries: int = 64,
                seed: int = 0, batch_size: int = 8, site: str | None = None, num_bootstrap: int = DEFAULT_NUM_BOOTSTRAP,
                confidence: float = 0.95, min_samples: int = DEFAULT_MIN_SAMPLES,
                progress: bool = True) -> list[ICLPoint]:
    """Entropy of the last-prompt-token hidden states, and the LM's accuracy, for k = 0..max_shots.

    The same `num_queries` queries are used for every k (each query is one bootstrap group).
    """
    site = site or bae.hookpoint
    if site is None:
        raise ValueError("The BAE's config records no layer: pass site= (e.g. 'layers.5.resid_post').")
    queries = choose_queries(task, num_queries, seed)
    points = []
    for k in tqdm(range(max_shots + 1), desc="shots", disable=not progress):
        prompts = sample_prompts(task, k, queries, seed)
        hidden, correct = run_prompts(model, tokenizer, prompts, site, batch_size=batch_size)
        acc = EntropyAccumulator(bae.config.num_codes, bits_per_feature=bae.config.bits, num_bootstrap=num_bootstrap,
                                 seed=seed)
        acc.update(encode_codes(bae, hidden), torch.tensor([p.query for p in prompts]))
        points.append(ICLPoint(k, acc.report(confidence, min_samples), float(correct.float().mean()), len(prompts)))
    return points


# ---------------------------------------------------------------------------------------------
# Steering with a BAE task vector
# ---------------------------------------------------------------------------------------------
@dataclass
class SteeringResult:
    """Accuracy of 0-shot prompts with and without the task vectors (held-out queries)."""

    shots: int
    num_features: int
    strength: float
    num_build_prompts: int
    num_eval_prompts: int
    accuracy_zero_shot: float
    accuracy_k_shot: float
    accuracy_bae_vector: float
    accuracy_centroid_vector: float
    features: list[int]
    feature_frequency_change: list[float]

    @property
    def bae_gain(self) -> float:
        return self.accuracy_bae_vector - self.accuracy_zero_shot

    @property
    def centroid_gain(self) -> float:
        return self.accuracy_centroid_vector - self.accuracy_zero_shot

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "bae_gain": self.bae_gain, "centroid_gain": self.centroid_gain}


def bae_task_vector(bae: Any, codes_k: torch.Tensor, codes_0: torch.Tensor, num_features: int
                    ) -> tuple[torch.Tensor, list[int], list[float]]:
    """Task vector W_dec · s over the `num_features` features whose mean value differs most between
    k-shot codes and 0-shot codes, s_j = sign of the difference (the original's signed one-hot).

    Returns `(vector [d], feature indices, their differences)`.
    """
    from ..binarize import bits_to_values

    bits = bae.config.bits
    diff = bits_to_values(codes_k.float(), bits).mean(0) - bits_to_values(codes_0.float(), bits).mean(0)
    top = diff.abs().topk(min(num_features, diff.numel())).indices
    signs = torch.zeros_like(diff)
    signs[top] = torch.sign(diff[top])
    weight = bae.decoder.weight.detach().float().cpu()  # [d, m]
    return weight @ signs, top.tolist(), diff[top].tolist()


@torch.no_grad()
def icl_steering(model: Any, tokenizer: Any, bae: Any, task: ICLTask, *, shots: int = 4, num_features: int = 20,
                 strength: float = 1.0, num_build: int | None = None, seed: int = 0, batch_size: int = 8,
                 site: str | None = None, rescale: bool = True, progress: bool = True) -> SteeringResult:
    """Steer 0-shot prompts towards k-shot behaviour with a BAE task vector; compare with the centroid vector.

    The task's items are split (seeded) into a *build* half, whose k-shot and 0-shot prompts give the
    firing-rate differences and the centroid difference, and an *evaluation* half, whose queries are
    answered 0-shot with each vector added at `site` (default: the BAE's) at the last prompt token.
    Demonstrations come only from the build half, never the query itself.

    Args:
        strength: multiplier of both vectors (the original's default was 0.2).
        rescale: scale the BAE vector to the centroid difference's norm (as the original), so both
            vectors have the same size and only their directions differ.
    """
    site = site or bae.hookpoint
    if site is None:
        raise ValueError("The BAE's config records no layer: pass site= (e.g. 'layers.5.resid_post').")
    order = choose_queries(task, len(task.items), seed)
    half = num_build or len(order) // 2
    build, evaluate = order[:half], order[half:]
    if len(build) <= shots or not evaluate:
        raise ValueError(f"Task {task.name!r} has {len(task.items)} items: too few to build from {half} and evaluate "
                         f"on the rest with {shots} shots.")
    steps = tqdm(total=6, desc="steering", disable=not progress)
    h_k, _ = run_prompts(model, tokenizer, sample_prompts(task, shots, build, seed, pool=build), site,
                         batch_size=batch_size)
    steps.update()
    h_0, _ = run_prompts(model, tokenizer, sample_prompts(task, 0, build, seed), site, batch_size=batch_size)
    steps.update()
    vector, features, changes = bae_task_vector(bae, encode_codes(bae, h_k), encode_codes(bae, h_0), num_features)
    centroid = h_k.mean(0) - h_0.mean(0)
    if rescale and vector.norm() > 0:
        vector = vector / vector.norm() * centroid.norm()
    zero = sample_prompts(task, 0, evaluate, seed)
    few = sample_prompts(task, shots, evaluate, seed, pool=build)
    results = []
    for prompts, steer in ((zero, None), (few, None), (zero, strength * vector), (zero, strength * centroid)):
        _, correct = run_prompts(model, tokenizer, prompts, site, batch_size=batch_size, steering=steer)
        results.append(float(correct.float().mean()))
        steps.update()
    steps.close()
    return SteeringResult(shots, len(features), strength, len(build), len(evaluate), *results, features, changes)
