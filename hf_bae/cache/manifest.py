"""The manifest of an activation cache (`manifest.json`, `CacheManifest`): what the cache holds, where it
came from and which complete shards it lists (`ShardInfo`), with the format's name, version and storage
dtypes. Saved atomically, so a reader never sees half a manifest."""

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..formats import CACHE_MANIFEST_FILE
from ..sites import Site
from ..version import __version__

__all__ = ["FORMAT", "FORMAT_VERSION", "STORAGE_DTYPES", "CacheManifest", "ShardInfo"]

FORMAT = "hf_bae.activation_cache"  # the on-disk format's name (in manifests and shard metadata): never changes
FORMAT_VERSION = 1
STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class ShardInfo:
    """One complete shard: its file, token count, byte size and the rows its tokens came from."""

    file: str
    num_tokens: int
    num_bytes: int
    first_row: int | None = None
    end_row: int | None = None  # row stream position after this shard (where a resumed harvest starts)


@dataclass
class CacheManifest:
    """What a cache holds and where it came from (`manifest.json`)."""

    model: str | None
    sites: list[str]
    hidden_sizes: dict[str, int]
    dtype: str = "float32"
    revision: str | None = None
    num_tokens: int = 0
    target_tokens: int | None = None
    complete: bool = False
    exhausted: bool = False  # the text ran out before target_tokens
    context_length: int | None = None
    text_source: dict[str, Any] | None = None
    token_filter: str | None = None
    has_tokens: bool = True
    shards: list[ShardInfo] = field(default_factory=list)
    hf_bae_version: str = __version__
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    @property
    def layers(self) -> list[int]:
        """Decoder layers of the cached sites."""
        return sorted({Site.parse(s).layer for s in self.sites})

    @property
    def parsed_sites(self) -> list[Site]:
        return [Site.parse(s) for s in self.sites]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "manifest") -> "CacheManifest":
        if data.get("format") != FORMAT:
            raise ValueError(f"{where} is not an hf_bae activation cache manifest (format={data.get('format')!r}).")
        if int(data.get("format_version", 0)) > FORMAT_VERSION:
            raise ValueError(
                f"{where} has cache format {data['format_version']}, newer than this hf_bae reads ({FORMAT_VERSION}): "
                "upgrade hf_bae."
            )
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in data.items() if k in known}
        values["shards"] = [ShardInfo(**s) for s in data.get("shards", [])]
        return cls(**values)

    @classmethod
    def load(cls, cache_dir: "str | os.PathLike") -> "CacheManifest":
        path = Path(cache_dir) / CACHE_MANIFEST_FILE
        if not path.is_file():
            hint = (
                " The folder exists but has no manifest: a harvest that never finished its first shard, or not a cache."
                if Path(cache_dir).is_dir()
                else ""
            )
            raise FileNotFoundError(
                f"No activation cache at {cache_dir}: {CACHE_MANIFEST_FILE} is missing.{hint} "
                "Create one with `hf-bae harvest --output_dir ...`."
            )
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON ({err}); the cache is damaged: harvest it again.") from err
        return cls.from_dict(data, where=str(path))

    def save(self, cache_dir: "str | os.PathLike") -> None:
        path = Path(cache_dir) / CACHE_MANIFEST_FILE
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2))
        os.replace(tmp, path)
