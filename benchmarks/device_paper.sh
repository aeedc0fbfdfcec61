#!/usr/bin/env bash
# One device run (GPU): the modular experiment's paper config, then (BENCH=1) the estimator
# benchmark at paper size. Writes the summary, plots and logs under $OUT. Usage (repo root):
#   OUT=/tmp/out CONFIG=paper bash benchmarks/device_paper.sh
# Extra arguments for the run go in SET, e.g. SET="--config.train.num_steps=20 --config.surrogates.cv=3" (CPU smoke test).
# The device image has jax/flax/optax/orbax but not ml-collections: carry its wheel in
# .device_wheels/ (pip download --no-deps -d .device_wheels ml-collections).
set -uo pipefail
OUT=${OUT:-/tmp/ksurrogate_out}
CONFIG=${CONFIG:-paper}
mkdir -p "$OUT"
WORK=${WORK:-$(mktemp -d /tmp/ks_paper.XXXX)}   # a fresh run directory unless WORK names one to resume
python3 -c "import ml_collections" 2>/dev/null || python3 -m pip install -q --no-deps --no-index .device_wheels/*.whl
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
python3 -c "import jax; print('jax', jax.__version__, jax.devices())" 2>&1 | tee "$OUT/device.txt"
nvidia-smi --query-gpu=name,memory.total --format=csv >> "$OUT/device.txt" 2>&1
start=$(date +%s)
timeout ${MODULAR_TIMEOUT:-480} python3 -m experiments.main --experiment=modular --config="$CONFIG" \
  --workdir="$WORK" ${SET:-} 2>&1 | grep -v -E "Warning|warn\(|^  " | tee "$OUT/modular.log"
echo "modular wall seconds: $(( $(date +%s) - start ))" | tee -a "$OUT/modular.log"
cp "$WORK"/summary.json "$OUT/summary.json" 2>/dev/null
cp "$WORK"/modular/*.png "$OUT/" 2>/dev/null
if [ "${BENCH:-0}" = 1 ]; then
  timeout ${BENCH_TIMEOUT:-120} python3 benchmarks/estimate.py --p=97 --bar=20 --d_model=128 --dim=1024 \
    --pretrain_steps=1000 --sizes=100,1000,5000 --newton_max=1000 2>&1 | grep -v -E "Warning|warn\(" | tee "$OUT/estimate.log"
fi
exit 0
