#!/usr/bin/env bash
# Fetch, on a machine with PyPI, the wheels that tools/run_nb.py needs on a GPU machine that has PyTorch, Triton,
# matplotlib and numpy but no Jupyter and no network (this workplace's lent H100/H200: Python 3.12, x86-64).
# They land in .whl/ (git-ignored), about 12 MB; tools/gpu_session.sh installs them there with --no-index.
#   bash tools/gpu_wheels.sh            # Python 3.12 (the lent machines)
#   PYVER=3.11 bash tools/gpu_wheels.sh # another Python, e.g. to try the set on this machine
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER=${PYVER:-3.12}
# run_nb.py's closure (nbclient, nbformat, ipykernel, and fastcore for the notebooks' test helpers) minus what
# the image already holds; versions from constraints.txt, the same as the project's own environment
names="asttokens comm debugpy executing fastcore fastjsonschema ipykernel ipython ipython-pygments-lexers jedi
jsonschema jsonschema-specifications jupyter-client jupyter-core matplotlib-inline nbclient nbformat nest-asyncio2
parso pexpect platformdirs prompt-toolkit ptyprocess pure-eval pyzmq referencing rpds-py stack-data tornado
traitlets wcwidth"
pins=()
for n in $names; do
  pin=$(grep -i -E "^${n//-/[-_.]}==" constraints.txt || true)
  [ -n "$pin" ] || { echo "no pin for $n in constraints.txt" >&2; exit 1; }
  pins+=("$pin")
done
rm -rf .whl && mkdir -p .whl
plats=(); for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_26_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do plats+=(--platform "$p"); done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp "${plats[@]}" -d .whl "${pins[@]}"
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo '/.whl/' >> .git/info/exclude; }
echo "$(ls .whl | wc -l) wheels, $(du -sh .whl | cut -f1), in .whl/ for Python $PYVER"
