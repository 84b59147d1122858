"""The shuffle buffer that mixes activations from many rows before training batches are cut."""

from collections.abc import Iterable, Iterator, Mapping

import torch

from .streaming import ActivationBatch

__all__ = ["ShuffleBuffer"]


class ShuffleBuffer:
    """Mix activations from many rows before training batches are cut.

    Tokens of one row are strongly correlated; a dictionary trained on consecutive tokens sees
    highly non-i.i.d. batches. The buffer keeps up to `capacity` tokens; once full, it shuffles them,
    emits batches until half remain, and refills. Deterministic given `seed` and the input order.

    ```python
    >>> buffer = ShuffleBuffer(capacity=65536, batch_size=4096, seed=0)
    >>> for batch in buffer(stream_activations(model, tokenizer, texts, ["layers.5.resid_post"])):
    ...     train_step(batch["layers.5.resid_post"])
    ```

    Inputs are `ActivationBatch`es (their `activations`) or dicts of tensors sharing their first
    dimension; outputs are dicts with the same keys and `batch_size` rows (the last may be smaller
    unless `drop_last`).
    """

    def __init__(self, capacity: int, batch_size: int, *, seed: int = 0, drop_last: bool = False) -> None:
        if batch_size < 1 or capacity < batch_size:
            raise ValueError(f"Need 1 <= batch_size <= capacity, got batch_size={batch_size}, capacity={capacity}.")
        self.capacity = capacity
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.generator = torch.Generator().manual_seed(seed)
        self._chunks: list[dict[str, torch.Tensor]] = []
        self._size = 0

    def __len__(self) -> int:
        """Tokens held."""
        return self._size

    def push(self, batch: "ActivationBatch | Mapping[str, torch.Tensor]") -> Iterator[dict[str, torch.Tensor]]:
        """Add tokens; yields the training batches that became ready."""
        tensors = dict(batch.activations if isinstance(batch, ActivationBatch) else batch)
        sizes = {v.shape[0] for v in tensors.values()}
        if len(sizes) != 1:
            raise ValueError(f"All tensors of a batch must have the same number of rows, got {sorted(sizes)}.")
        if self._chunks and set(tensors) != set(self._chunks[0]):
            raise ValueError(f"Keys changed from {sorted(self._chunks[0])} to {sorted(tensors)}.")
        n = sizes.pop()
        if n:
            self._chunks.append(tensors)
            self._size += n
        if self._size >= self.capacity:
            yield from self._emit(keep=self.capacity // 2)

    def flush(self) -> Iterator[dict[str, torch.Tensor]]:
        """Shuffle and emit everything left."""
        yield from self._emit(keep=0)
        self._chunks, self._size = [], 0

    def __call__(self, batches: Iterable["ActivationBatch | Mapping[str, torch.Tensor]"]) -> Iterator[dict[str, torch.Tensor]]:
        """Shuffle a whole stream of batches."""
        for batch in batches:
            yield from self.push(batch)
        yield from self.flush()

    def _emit(self, keep: int) -> Iterator[dict[str, torch.Tensor]]:
        if not self._chunks:
            return
        data = {k: torch.cat([c[k] for c in self._chunks]) for k in self._chunks[0]}
        size = self._size
        perm = torch.randperm(size, generator=self.generator).to(next(iter(data.values())).device)
        out = size - keep
        n_full = out // self.batch_size
        for b in range(n_full):
            idx = perm[b * self.batch_size : (b + 1) * self.batch_size]
            yield {k: v[idx] for k, v in data.items()}
        rest = perm[n_full * self.batch_size :]
        if keep == 0:
            if len(rest) and not self.drop_last:
                yield {k: v[rest] for k, v in data.items()}
            self._chunks, self._size = [], 0
        else:
            self._chunks = [{k: v[rest] for k, v in data.items()}]
            self._size = len(rest)
