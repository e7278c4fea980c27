#!/bin/sh
# One-shot GPU check on a bare machine (no network): installs the carried wheels of `make wheels-gpu`
# into a private folder (never over the machine's own torch / transformers), then runs gpu_check.py
# with the machine's python. Usage, from the repository root:
#     sh benchmarks/gpu_check.sh [--fraction 0.05] [--work DIR]        (WHEELS=build/wheels-gpu PYTHON=python3)
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WHEELS=${WHEELS:-$ROOT/build/wheels-gpu}
PYTHON=${PYTHON:-python3}
SITE=${SITE:-${TMPDIR:-/tmp}/db3d-gpu-check-site}
if [ -d "$WHEELS" ] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    "$PYTHON" -m pip install -q --no-index --no-deps --target "$SITE" "$WHEELS"/*.whl
    export PYTHONPATH="$ROOT:$SITE${PYTHONPATH:+:$PYTHONPATH}"
else
    echo "gpu_check.sh: no wheels in $WHEELS (make wheels-gpu); using what $PYTHON has" >&2
    export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
fi
export HF_HUB_OFFLINE=1 TQDM_DISABLE=1
exec timeout 480 "$PYTHON" "$ROOT/benchmarks/gpu_check.py" "$@"
