#!/usr/bin/env bash
# Builds the pinned environment in which neural-tangents 0.6.5 still imports (0.6.5 imports JAX internals removed in jax 0.6):
# its last release needs JAX internals removed in jax 0.6 and TensorFlow + tf2jax at import time.
# Usage: bash tests/golden/build_legacy_env.sh /tmp/ntenv   (about 1.5 GB; a few minutes)
set -euo pipefail
env_dir=${1:-/tmp/ntenv}
python3 -m venv "$env_dir"
"$env_dir/bin/pip" install -q "jax==0.4.30" "jaxlib==0.4.30" frozendict dm-tree absl-py "tensorflow-cpu==2.21.0" "numpy<2.1"
"$env_dir/bin/pip" install -q --no-deps neural-tangents==0.6.5 tf2jax==0.3.6
"$env_dir/bin/python" -c "import neural_tangents as nt; print('neural-tangents', nt.__version__, 'ok')"
