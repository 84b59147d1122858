#!/usr/bin/env bash
# The one GPU check (issue 18), under 8 minutes on one GPU: install what the GPU image lacks, run the
# GPU-marked tests (tests/gpu: bf16 autocast training, covariance dense/sparse on CUDA = float64 CPU, sparse
# TopK on CUDA = dense CPU, harvest CUDA = CPU, `accelerate launch` on 1 GPU) and the sparse-TopK equality
# tests, then the benchmarks: benchmarks/scale.py (d = 2048, m = 16384 and 65536, batch 4096, bf16) and
# benchmarks/roofline.py (harvest, BAE step, covariance, TopK dense/sparse, % of the measured GEMM peaks),
# each printing its table; everything is also saved under $OUT (or gpu_check_out/). Without CUDA it says
# so and exits 0 (as on CI: tests/gpu skip themselves too).
#
#   bash benchmarks/gpu_wheels.sh      # here, once: the wheels the GPU image lacks, into .whl/
#   device run: carry [".whl"], command "bash benchmarks/gpu_check.sh", timeout_s 560
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check: no CUDA GPU visible to $PY; nothing to check here (skipped)."
    exit 0
fi
out=${OUT:-gpu_check_out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_BAE_CACHE=/tmp/hf_bae_cache
if [ -d .whl ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
"$PY" -c "import torch; print('device:', torch.cuda.get_device_name(), '| torch', torch.__version__)" | tee "$out/device.txt"
start=$SECONDS
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $out/NAME.log, keep going on failure
    local name=$1 limit=$2; shift 2
    echo "== $name (limit ${limit}s)"
    timeout "$limit" "$@" 2>&1 | tee "$out/$name.log"
    echo "== $name: exit ${PIPESTATUS[0]} at $((SECONDS - start)) s" | tee -a "$out/summary.txt"
}
step tests 200 "$PY" -m pytest -q -p no:cacheprovider -o addopts="" tests/gpu tests/models/test_sparse_topk.py -rs
step scale 150 "$PY" benchmarks/scale.py --device cuda --d 2048 --batch 4096 --latents 16384 65536 --bf16 \
    --covariance none dense auto --steps 3 --json "$out/scale.json"
step roofline 120 "$PY" benchmarks/roofline.py --device cuda --scale 8 --harvest_tokens 65536
cat "$out/summary.txt"
