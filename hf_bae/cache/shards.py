"""The shard files of an activation cache: standard safetensors files (`safetensors.torch.load_file` reads
them) holding one tensor per site plus the token tensors, written under a temporary name and renamed,
and read back row range by row range with plain reads (no mmap), so memory stays what the reader keeps."""

import json
import math
import os
import struct
from pathlib import Path
from typing import Any

import torch

from .manifest import FORMAT, CacheManifest, ShardInfo

__all__ = ["TOKEN_KEYS", "read_header", "read_rows", "shard_name", "shard_problem", "tensor_info", "validate_shards",
           "write_shard"]

_SAFETENSORS_DTYPES = {
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I32": torch.int32,
    "I64": torch.int64,
    "I16": torch.int16,
}
# Per-token tensors besides the sites' (a shard also holds `input_ids`, its packed rows).
TOKEN_KEYS = ("token_ids", "positions", "rows")


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def read_header(f: Any, path: Path) -> tuple[dict[str, Any], int]:
    raw = f.read(8)
    if len(raw) < 8:
        raise ValueError(f"{path} is truncated (no safetensors header).")
    (length,) = struct.unpack("<Q", raw)
    text = f.read(length)
    if len(text) < length:
        raise ValueError(f"{path} is truncated (incomplete safetensors header).")
    return json.loads(text), 8 + length


def tensor_info(header: dict[str, Any], name: str) -> tuple[torch.dtype, list[int], int]:
    entry = header[name]
    dtype = _SAFETENSORS_DTYPES[entry["dtype"]]
    shape = entry["shape"]
    return dtype, shape[1:], math.prod(shape[1:]) * dtype.itemsize


def read_rows(
    f: Any, header: dict[str, Any], data_start: int, name: str, lo: int, hi: int, path: Path, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Rows [lo, hi) of tensor `name`, read into `out` (or a new tensor) by plain reads.

    No mmap: resident memory is what we keep, not the pages of a multi-GB file we touched.
    """
    dtype, row_shape, row_bytes = tensor_info(header, name)
    if out is None:
        out = torch.empty((hi - lo, *row_shape), dtype=dtype)
    count = (hi - lo) * row_bytes
    if count == 0:
        return out
    f.seek(data_start + header[name]["data_offsets"][0] + lo * row_bytes)
    if f.readinto(memoryview(out.view(torch.uint8).numpy()).cast("B")) != count:
        raise ValueError(f"{path} is truncated: tensor {name!r} ends early. Resume the harvest to rewrite it.")
    return out


def write_shard(path: Path, tensors: dict[str, torch.Tensor]) -> int:
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".partial")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata={"format": FORMAT})
    os.replace(tmp, path)
    return path.stat().st_size


def validate_shards(cache_dir: Path, manifest: CacheManifest) -> int | None:
    """Index of the first listed shard that is missing or truncated, or None if all are whole."""
    for i, shard in enumerate(manifest.shards):
        path = cache_dir / shard.file
        if not path.is_file() or path.stat().st_size != shard.num_bytes:
            return i
    return None


def shard_problem(cache_dir: Path, shard: ShardInfo) -> str:
    path = cache_dir / shard.file
    if not path.is_file():
        return f"shard {shard.file} is missing"
    return f"shard {shard.file} is truncated ({path.stat().st_size} of {shard.num_bytes} bytes)"
