#!/usr/bin/env bash
# The whole test suite, as `make test` runs it (and CI, through .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
source .venv/bin/activate
# Triton kernels run through the interpreter on CPU; it must be set before kernels are defined.
export TRITON_INTERPRET=1 MPLBACKEND=Agg PYTHONHASHSEED=0
start=$SECONDS
step() { echo; echo "=== $1 ($((SECONDS - start)) s elapsed)"; }

step "1/4 notebooks and package in sync (nbdev-export, nbdev-clean change nothing)"
python tools/check_sync.py

step "2/4 nbdev-test: every notebook top to bottom (gpu and slow cells skipped)"
nbdev-test --n-workers 2 --timing

step "3/4 pytest tests/"
python -m pytest tests/ -n 2 -q -p no:cacheprovider

step "4/4 nbval --nbval-lax on the notebooks"
python tools/nbval_prep.py build/nbval
python -m pytest --nbval-lax build/nbval -q -p no:cacheprovider

echo; echo "all test steps passed in $((SECONDS - start)) s"
