"""tools/gpu_session.sh, the script a GPU session runs on a lent machine, tried here with its CPU stand-in (GPU_SIM=1,
GPU_BENCH_SIZE=cpu) in a scratch copy: parts, time budget, results packed into $OUT, and --resume on the next call."""
import json, os, shutil, subprocess, sys, tarfile
from pathlib import Path

from conftest import ROOT


def _session(tree: Path, out: Path, *parts: str, budget: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "GPU_SIM": "1", "TRITON_INTERPRET": "1", "GPU_BENCH_SIZE": "cpu",
           "OUT": str(out), "GPU_BUDGET": str(budget), "OMP_NUM_THREADS": "1"}
    return subprocess.run(["bash", str(tree / "tools" / "gpu_session.sh"), *parts], capture_output=True, text=True, env=env,
                          timeout=600)


def test_gpu_session_flow_on_cpu(tmp_path):
    tree = tmp_path / "repo"
    for d in ("tools", "megalodon_lit"): shutil.copytree(ROOT / d, tree / d, ignore=shutil.ignore_patterns("__pycache__"))
    r = _session(tree, tmp_path / "out1", "decode", budget=400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    with tarfile.open(tmp_path / "out1" / "gpu_decode.tgz") as t:
        name = next(n for n in t.getnames() if n.endswith("end_to_end.json"))
        res = json.load(t.extractfile(name))
    assert (tmp_path / "out1" / "log.txt").read_text().count("=== decode") == 2  # the part's start and end lines
    measured = [d for d in res["decode"] if "decode_s" in d]
    assert len(measured) == 6 and {d["impl"] for d in measured} == {"megalodon/torch", "transformer"}
    # the next call with the stored results in the tree measures nothing again
    r = _session(tree, tmp_path / "out2", "decode", budget=400)
    # (on a CPU each model's three contexts are one measurement, timed side by side: one line per model)
    assert r.returncode == 0 and r.stdout.count("stored earlier, not run again") == 2, r.stdout[-3000:]
    assert all(f"context={c}" in r.stdout for c in (256, 1024, 4096)), r.stdout[-3000:]
    # an unknown part fails the call, and says so
    r = _session(tree, tmp_path / "out3", "nonsense", budget=100)
    assert r.returncode != 0 and "unknown part nonsense" in r.stdout
