#!/usr/bin/env bash
# One call's worth of GPU work on a lent machine that has python3 with PyTorch and Triton but no network and no
# Jupyter (this workplace's H100/H200): installs the carried wheels (.whl/, from tools/gpu_wheels.sh), runs the named
# parts in order within a time budget, and packs what they produced into $OUT/gpu_<parts>.tgz plus $OUT/log.txt.
#
#   bash tools/gpu_session.sh check cema tsn      # parts run in this order; see the list below
#   GPU_BUDGET=560 ...                            # seconds for the whole call (default 560: the device tool allows 600)
#
# parts:  check      nvidia-smi, versions, megalodon-lit verify (every path and kernel against its reference)
#         tests      the kernel and dispatch tests on CUDA (pytest; every kernel specialisation compiles: minutes)
#         cema tsn attention benchmarks   nbs/10, 11, 12, 20 with their #| gpu cells (tools/run_nb.py --flags gpu)
#         paths      megalodon-lit bench --what paths (each path timed, kernels included)
#         train decode profile   megalodon-lit bench --what PART --size gpu --resume, saved after every row, merged
#                    into kernels/results/<gpu>/end_to_end.json; measurements not started in time are recorded as
#                    skipped, and the next call with the same part measures only those (carry kernels/results along)
#         compiled   the train and decode rows again through torch.compile (impl "...+compile"), same budget and resume rules
# Back on the development machine: tar xzf <files_at>/gpu_<parts>.tgz in the repository root, then nbdev-clean the
# notebooks, look at `git diff`, commit notebooks and kernels/results together. Nothing here is needed on a GPU
# machine with network access, where `make gpu` does the same in one go.
set -uo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || { sed -n '2,20p' "$0"; exit 2; }
OUT=${OUT:-build/gpu_out}; mkdir -p "$OUT"
PY=${PYTHON:-python3}
BUDGET=${GPU_BUDGET:-560}
end=$((SECONDS + BUDGET))
log="$OUT/log.txt"
exec > >(tee -a "$log") 2>&1
export PYTHONUNBUFFERED=1
if ! "$PY" -c "import nbclient, ipykernel, fastcore" 2>/dev/null; then
  ls .whl/*.whl >/dev/null 2>&1 || { echo "no Jupyter here and no .whl/ carried: run tools/gpu_wheels.sh and carry .whl"; exit 1; }
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}   # the package from this tree, no install needed
[ -n "${GPU_SIM:-}" ] || unset TRITON_INTERPRET   # GPU_SIM=1: try this script on a CPU machine, kernels interpreted
CLI=("$PY" -c "import sys; from megalodon_lit.cli import main; sys.exit(main(sys.argv[1:]))")   # megalodon-lit, uninstalled
declare -A NB=([cema]=nbs/10_triton_cema.ipynb [tsn]=nbs/11_triton_timestep_norm.ipynb
               [attention]=nbs/12_triton_attention.ipynb [benchmarks]=nbs/20_benchmarks.ipynb)
ran=() status=0 i=0
for part in "$@"; do
  i=$((i + 1))   # "${@:$i}": this part and the ones after it
  left=$((end - SECONDS))
  if [ "$left" -lt 30 ]; then echo "=== $part: not started, the call's budget is spent"; status=1; continue; fi
  echo; echo "=== $part ($left s left in this call, $(date -u +%H:%M:%S) UTC)"
  t0=$SECONDS
  case $part in
    check)
      nvidia-smi -L 2>/dev/null || echo "(no nvidia-smi)"
      "$PY" -c "import torch, triton, sys; print('python', sys.version.split()[0], '| torch', torch.__version__, '| triton', triton.__version__, '| cuda', torch.cuda.is_available() and torch.cuda.get_device_name())"
      timeout -s INT -k 15 "$left" "${CLI[@]}" verify || status=1 ;;
    tests)
      timeout -s INT -k 15 "$left" "$PY" -m pytest -q -p no:cacheprovider tests/test_ops_cema.py tests/test_ops_timestep_norm.py \
        tests/test_ops_attention.py tests/test_dispatch.py || status=1 ;;
    cema|tsn|attention|benchmarks)
      timeout -s INT -k 15 "$left" "$PY" tools/run_nb.py --flags gpu --partial build/gpu_partial "${NB[$part]}" || status=1
      ran+=("${NB[$part]}") ;;
    paths)
      timeout -s INT -k 15 "$left" "${CLI[@]}" bench --what paths || status=1 ;;
    train|decode|profile|compiled)
      # the bench parts still to run share the time left, less 120 s: one row (a 32K training step timed a few
      # times, or a 128K prefill) can take a minute after its start
      nb=0; for p in "${@:$i}"; do case $p in train|decode|profile|compiled) nb=$((nb + 1)) ;; esac; done
      what=$part; flags=(); [ "$part" = compiled ] && { what=train,decode; flags=(--compile); }
      timeout -s INT -k 15 "$left" "${CLI[@]}" bench --what "$what" "${flags[@]}" --size "${GPU_BENCH_SIZE:-gpu}" --out kernels/results --resume \
        --budget $(((left - 120) / nb)) || status=1 ;;
    *) echo "unknown part $part"; status=1 ;;
  esac
  echo "=== $part: $((SECONDS - t0)) s"
done
tag=$(IFS=_; echo "$*")
files=("${ran[@]}"); [ -d kernels/results ] && files+=(kernels/results); [ -d build/gpu_partial ] && files+=(build/gpu_partial)
tar czf "$OUT/gpu_$tag.tgz" "${files[@]}" 2>/dev/null && echo "packed: $OUT/gpu_$tag.tgz (${files[*]})"
exit $status
