#!/usr/bin/env bash
# The GPU comparison (benchmarks/gpu.py) on a machine with no network: the Python packages
# that it lacks travel as wheels in .whl/ (benchmarks/gpu_wheels.sh downloads them here) and
# are installed into /tmp/site first. Any arguments go to gpu.py (e.g. --dry_run).
set -euo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
exec python3 benchmarks/gpu.py "$@"
