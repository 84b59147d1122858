#!/usr/bin/env bash
# Run HERE (with network to PyPI), before a GPU check: downloads into .whl/ (git-ignored) the wheels that
# hf_bae needs and the GPU machine's image lacks (it has torch, transformers, accelerate, numpy, pyarrow,
# pandas, xxhash, ...; not datasets, dill, multiprocess, gguf). Python 3.12, manylinux x86-64, ~12 MB.
# Then: the device tool's `run` with carry [".whl"] and command "bash benchmarks/gpu_check.sh".
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 gguf==0.19.0
ls -la .whl
