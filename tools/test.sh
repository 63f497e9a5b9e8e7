#!/usr/bin/env bash
# The whole test suite, as `make test` runs it (and CI, through .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
source .venv/bin/activate
# Triton kernels run through the interpreter on CPU; it must be set before kernels are defined.
export TRITON_INTERPRET=1 MPLBACKEND=Agg PYTHONHASHSEED=0
start=$SECONDS
step() { echo; echo "=== $1 ($((SECONDS - start)) s elapsed)"; }

step "1/7 notebooks, package and README in sync (nbdev-export, nbdev-clean, make_readme change nothing)"
python tools/check_sync.py

step "2/7 nbdev-test: every notebook top to bottom (gpu and slow cells skipped)"
nbdev-test --n-workers 2 --timing

step "3/7 pytest tests/ (the browser tests run alone in step 6)"
python -m pytest tests/ -n 2 -q -p no:cacheprovider --ignore=tests/test_site_browser.py

step "4/7 nbval --nbval-lax on the notebooks"
python tools/nbval_prep.py build/nbval
# one notebook per worker (--dist loadfile keeps a notebook's cells, and so its kernel, together)
python -m pytest --nbval-lax build/nbval -q -p no:cacheprovider -n 2 --dist loadfile

step "5/7 documentation site: sphinx-build -W (warnings are errors), README.md from nbs/index.ipynb"
bash tools/docs.sh

step "6/7 the site and JupyterLab in headless Chromium (screenshots in build/screenshots/)"
bash tools/ensure_chromium.sh
python -m pytest tests/test_site_browser.py -q -p no:cacheprovider

step "7/7 every Triton kernel compiles for an H100 (sm_90, cubin, shared memory), without a GPU"
env -u TRITON_INTERPRET python tools/aot_check.py

echo; echo "all test steps passed in $((SECONDS - start)) s"
