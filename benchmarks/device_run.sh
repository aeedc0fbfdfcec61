#!/usr/bin/env bash
# One GPU call: the modular paper config (after a check of its step count on the fit subsets) and
# the morl gpu config, side by side on one GPU, inside a 560 s budget; benchmarks/device_run.py says
# what it runs and writes (at most 8 files under $OUT). From the repository root:
#   OUT=/tmp/out bash benchmarks/device_run.sh
# The device image lacks ml-collections and gymnax (and gymnax's gymnasium, farama-notifications):
# their wheels travel in .whl/ (carried) and are installed here first. CPU smoke test, reduced:
#   OUT=/tmp/o BUDGET_S=1500 MODULAR_CONFIG=tiny MORL_CONFIG=tiny CURVE_RECIPE=train.num_steps=40 \
#     CURVE_CHECKPOINTS=4 CURVE_SUBSETS=6 DETCOST=0 bash benchmarks/device_run.sh
set -uo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site:${PYTHONPATH:-}" || { echo "device_run: installing .whl/ failed" >&2; exit 2; }
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
exec python3 benchmarks/device_run.py
