#!/usr/bin/env bash
# The device check and the real DiT's GPU training, as one prepared command for the
# device tool's `run` (after `bash scripts/device_stage.sh stage`; see there):
#
#   bash scripts/device_real_dit.sh [MINUTES]        # default 6 minutes of training
#
# 1. installs the package there (builds the CUDA extension for that machine's torch)
#    and the carried pypng wheel;
# 2. runs the CUDA tests (`pytest tests -m cuda`) -> $OUT/cuda_tests.log;
# 3. trains the `real` set's Patch-DiT from the bicubic one on real-degradation crops of
#    .devdata/train (12 DataLoader workers degrade while the GPU trains) for MINUTES,
#    and exports its EMA weights -> $OUT/dit_x4.safetensors and $OUT/dit_real/train.log.
# Then, here on the CPU: copy the file to patchscaler/weights/real/dit_x4.safetensors,
# calibrate (python -m patchscaler.train.calibrate_pgs --degradation real) and evaluate
# (README, "Training"). DEVICE=cpu MINUTES=0.2 CROPS=4 WORKERS=1 runs it as a smoke test here.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/patchscaler-device-out}
MINUTES=${1:-${MINUTES:-6}}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"

if [ "$DEVICE" = cuda ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
    nproc
    nvidia-smi --query-gpu=name,memory.total --format=csv
    python3 -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | tail -3
    python3 -m patchscaler.info | tee "$OUT/info.txt"
    python3 -m pytest -q -x tests -m cuda 2>&1 | tee "$OUT/cuda_tests.log" | tail -5 || true
fi

python3 -m patchscaler.train.dit --device "$DEVICE" --degradation real --data .devdata/train \
    --out "$OUT/dit_real" --cache "$OUT/pool.pt" \
    --init patchscaler/weights/bicubic/dit_x4.safetensors --anchor-sigma auto \
    --crops "${CROPS:-128}" --workers "${WORKERS:-12}" --lr 2e-4 --warmup 200 --ema 0.999 \
    --val-every 500 --val-patches "${VAL_PATCHES:-1024}" --minutes "$MINUTES" --threads 2
python3 -m patchscaler.train.dit --out "$OUT/dit_real" --export --export-to "$OUT/dit_x4.safetensors"
# The checkpoint (183 MB) and the pool cache are too large to come back.
rm -f "$OUT/dit_real/last.pt" "$OUT/pool.pt"
ls -la "$OUT" "$OUT/dit_real"
