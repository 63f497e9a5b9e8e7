"""tools/gpu_evidence.py, the one-call GPU evidence script, tried here with its CPU stand-in (GPU_SIM=1: the
interpreter, tiny sizes): rows saved, a CUDA error ending the worker and a fresh one resuming after it, and the
merge of several calls' results under kernels/results/."""
import json, os, signal, subprocess, sys

from conftest import ROOT
SCRIPT = ROOT / "tools" / "gpu_evidence.py"


def _run(args: list[str], env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    "Run the script in its own process group, killed with its workers on any failure (a timeout included)."
    p = subprocess.Popen([sys.executable, str(SCRIPT), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, start_new_session=True)
    try:
        out, _ = p.communicate(timeout=timeout)
        return subprocess.CompletedProcess(p.args, p.returncode, out, "")
    finally:  # the parent, and any worker it left, whether or not it finished
        try: os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError: pass


def test_a_cuda_error_restarts_the_worker_at_the_next_step(tmp_path):
    env = {**os.environ, "GPU_SIM": "1", "GPU_SIM_FAULT": "verify_all", "OUT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    r = _run(["--parts", "verify", "--shares", "200", "--budget", "250"], env)
    data = json.loads((tmp_path / "evidence.json").read_text())
    # the injected CUDA error is recorded, the worker exits, and a second one runs the step after it
    assert [e["where"] for e in data["errors"]] == ["verify_all"] and "CUDA error" in data["errors"][0]["error"], r.stdout[-2000:]
    assert data["restarts"] == 1 and "exiting for a restart" in r.stdout
    probe = [row for row in data["parity"] if row.get("probe")]
    assert len(probe) == 6 and all(row["ok"] for row in probe)  # Triton's scan, forward and reversed, against a loop
    limits = [row for row in data["kernels"] if row["name"] == "machine limits"]
    assert len(limits) == 1 and limits[0]["copy_GBps"] > 0  # measured once: the restarted worker skips it
    assert r.returncode == 1 and "ERROR verify_all" in r.stdout  # the summary reports the failed step


def test_a_step_past_its_share_is_recorded_as_skipped(tmp_path):
    env = {**os.environ, "GPU_SIM": "1", "OUT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    r = _run(["--parts", "train", "--shares", "1", "--budget", "0"], env)
    data = json.loads((tmp_path / "evidence.json").read_text())
    assert data["train"] and all("skipped" in row for row in data["train"]), r.stdout[-2000:]


def _call(when: str, parity: list, errors: list) -> dict:
    return dict(record=dict(device="NVIDIA Test GPU", when=when), parts={}, restarts=0, parity=parity, kernels=[],
                train=[], decode=[], errors=errors)


def test_unpack_merges_calls_and_a_rerun_replaces_a_failed_step(tmp_path):
    sys.path.insert(0, str(ROOT / "tools"))
    before = os.environ.get("TRITON_INTERPRET")
    import gpu_evidence
    assert os.environ.get("TRITON_INTERPRET") == before  # importing it leaves the environment alone (the other tests need it)
    root = tmp_path / "repo"
    (root / "kernels").mkdir(parents=True)
    calls = [_call("t1", [dict(name="cema", error="CUDA error: illegal address"), dict(name="tsn", compared="y", err=1e-7, tol=1e-5, ok=True)],
                   [dict(where="cema", error="CUDA error")]),
             _call("t2", [dict(name="cema", compared="dx", err=2e-7, tol=1e-5, ok=True)], [])]
    old_root = gpu_evidence.ROOT
    gpu_evidence.ROOT = root
    try:
        for i, c in enumerate(calls):
            (tmp_path / f"c{i}").mkdir(); (tmp_path / f"c{i}" / "evidence.json").write_text(json.dumps(c))
            gpu_evidence.unpack(tmp_path / f"c{i}")
    finally:
        gpu_evidence.ROOT = old_root
    merged = json.loads((root / "kernels" / "results" / "nvidia-test-gpu" / "evidence.json").read_text())
    assert [(r["name"], r["call"], "error" in r) for r in merged["parity"]] == [("tsn", "t1", False), ("cema", "t2", False)]
    assert [e["call"] for e in merged["errors"]] == ["t1"] and [c["record"]["when"] for c in merged["calls"]] == ["t1", "t2"]
