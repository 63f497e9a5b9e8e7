#!/usr/bin/env bash
# The whole test suite, as `make test` runs it (and CI, through .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
source .venv/bin/activate
# Triton kernels run through the interpreter on CPU; it must be set before kernels are defined.
export TRITON_INTERPRET=1 MPLBACKEND=Agg PYTHONHASHSEED=0
# torch.compile's caches in a folder of this run only (a cache from another checkout can hold stale kernel calls)
export TORCHINDUCTOR_CACHE_DIR="$(mktemp -d -t megalodon-lit-inductor-XXXXXX)"
trap 'rm -rf "$TORCHINDUCTOR_CACHE_DIR"' EXIT
start=$SECONDS
step() { echo; echo "=== $1 ($((SECONDS - start)) s elapsed)"; }

step "1/6 notebooks, package and README in sync (nbdev-export, nbdev-clean, make_readme change nothing)"
python tools/check_sync.py

step "2/6 pytest tests/ (the browser tests run alone in step 5)"
python -m pytest tests/ -n 2 -q -p no:cacheprovider --ignore=tests/test_site_browser.py

step "3/6 every notebook top to bottom, once (nbval --nbval-lax; gpu and slow cells skipped)"
# nbval runs the notebooks and cells nbdev-test would (nbval_prep.py asks nbdev which) and fails on any cell that
# raises, so nbdev-test is not run as well. --nbval-lax: outputs are not compared (they hold timings and plots);
# 600 s per cell is nbdev-test's limit. One notebook per worker (--dist loadfile keeps a notebook's cells, and so its
# kernel, together); --durations lists the slowest cells.
python tools/nbval_prep.py build/nbval
python -m pytest --nbval-lax --nbval-current-env --nbval-cell-timeout 600 build/nbval -q -p no:cacheprovider \
  -n 2 --dist loadfile --durations 10

step "4/6 documentation site: sphinx-build -W (warnings are errors), README.md from nbs/index.ipynb"
bash tools/docs.sh

step "5/6 the site and JupyterLab in headless Chromium (screenshots in build/screenshots/)"
bash tools/ensure_chromium.sh
python -m pytest tests/test_site_browser.py -q -p no:cacheprovider

step "6/6 every Triton kernel compiles for an H100 (sm_90, cubin, shared memory), without a GPU"
env -u TRITON_INTERPRET python tools/aot_check.py

echo; echo "all test steps passed in $((SECONDS - start)) s"
