"""Chunk parallelism (megalodon_lit.parallel) on several CPU processes with gloo over 127.0.0.1: the loss and every
parameter gradient equal a single process running the whole sequence (2 and 4 ranks, W = 1 and 2, segments that are
and are not multiples of C, float64 and float32), the data × chunk grid with DDP (2 × 2), a failing or hung rank makes
the others stop with a clear error within a bounded time, and `torchrun -m megalodon_lit.parallel` trains.

Each rank is a subprocess running this file as a script (`python tests/test_parallel.py worker …`); ranks save their
results with torch.save and the test process computes the single-process reference itself."""
import json, os, re, signal, subprocess, sys, time
from datetime import timedelta
from pathlib import Path

import pytest
import torch

from _subproc import kill_group, popen, run
from conftest import free_port, perturbed
from megalodon_lit.core import rel_err
from megalodon_lit.model import MegalodonConfig, MegalodonForCausalLM

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
# (W, L, dtype): with C = 16, L = 64 gives segments that are multiples of C on 2 and 4 ranks, L = 61 gives ones that are not.
CASES = {2: [(1, 64, torch.float64), (1, 61, torch.float64), (2, 64, torch.float64), (2, 61, torch.float64),
             (1, 61, torch.float32), (2, 64, torch.float32)],
         4: [(1, 64, torch.float64), (2, 61, torch.float64), (2, 61, torch.float32)]}
B = 2


def build(W, dtype):
    "The same model on every process: nano, zero-initialised offsets moved away from zero so every parameter matters."
    torch.manual_seed(0)
    return perturbed(MegalodonForCausalLM(MegalodonConfig.from_preset("nano", attention_chunks=W)).to(dtype), train=True)


def batch(L, seed=1):
    return torch.randint(0, 256, (B, L), generator=torch.Generator().manual_seed(seed))


def grads(model): return [p.grad.detach().clone() for p in model.parameters()]


# ---- worker side (a separate process per rank) ------------------------------------------------------------------

def fail_in_layer_1(model, how):
    "Make layer 1 raise, or hang, when the step reaches it."
    def fail(*args, **kwargs):
        if how == "raise": raise RuntimeError("injected failure in layer 1")
        time.sleep(120)
    model.layers[1].forward = fail


def failing_step(P, how, cg, res):
    "Rank 1 of `cg` fails in layer 1 of a step; every rank records how its step ended."
    model = build(1, torch.float32)
    if cg.index == 1: fail_in_layer_1(model, how)
    t0 = time.perf_counter()
    try:
        out = P.chunk_parallel_loss(model, batch(64), cg=cg)
        out.loss.backward(); P.sync_chunk_grads(model, cg)
        res[how] = dict(outcome="finished")
    except Exception as e:
        res[how] = dict(outcome=type(e).__name__, message=str(e), seconds=time.perf_counter() - t0)


def worker(out_dir):
    "One rank: the parity cases, the grid (4 ranks), then a step in which rank 1 fails (raises on 2 ranks, hangs on 4)."
    import torch.distributed as dist
    from megalodon_lit import parallel as P
    torch.set_num_threads(1)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    save = lambda: torch.save(res, Path(out_dir) / f"rank{rank}.pt")
    res = {}
    for W, L, dtype in CASES[world]:
        model = build(W, dtype)
        out = P.chunk_parallel_loss(model, batch(L))
        out.loss.backward(); P.sync_chunk_grads(model)
        res[(W, L, str(dtype))] = dict(loss=out.full_loss.item(), grads=grads(model))
    if world == 4:  # 2 data shards × 2 chunk ranks, DDP over the data group
        grid = P.parallel_grid(2)
        model = build(2, torch.float64)
        net = torch.nn.parallel.DistributedDataParallel(P.ChunkParallelLM(model, grid.chunk), process_group=grid.data)
        out = net(batch(61, seed=10 + grid.data_index))
        out.loss.backward(); P.sync_chunk_grads(model, grid.chunk)
        loss = out.full_loss.clone(); dist.all_reduce(loss, group=grid.data)
        res["grid"] = dict(loss=loss.item() / 2, grads=grads(model), data_index=grid.data_index, chunk_index=grid.chunk.index)
    dist.barrier()
    if world == 2:
        failing_step(P, "raise", P.ChunkGroup.from_group(None), res)
    else:  # ranks 0 and 1 in a group whose messages time out after 3 s; rank 1 hangs
        pair = [dist.new_group([0, 1], timeout=timedelta(seconds=3)), dist.new_group([2, 3])]
        if rank < 2: failing_step(P, "hang", P.ChunkGroup.from_group(pair[0]), res)
    save()
    if any(v.get("outcome") not in (None, "finished") for v in res.values() if isinstance(v, dict)): sys.exit(1)
    dist.destroy_process_group()


# ---- test side --------------------------------------------------------------------------------------------------

def launch(n, out_dir, wait_s=120, wait_for=None):
    "Start n ranks; return (exit codes, seconds each took, stderr) once the ranks `wait_for` (default all) have exited or `wait_s` has passed; kill the rest."
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE=str(n), OMP_NUM_THREADS="1")
    t0, procs = time.perf_counter(), []
    codes, seconds, errs = [None] * n, [None] * n, [""] * n
    wait_for = range(n) if wait_for is None else wait_for
    try:
        for r in range(n):
            procs.append(popen([sys.executable, __file__, "worker", str(out_dir)],
                               env=dict(env, RANK=str(r)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        while time.perf_counter() - t0 < wait_s and any(codes[r] is None for r in wait_for):
            for r, p in enumerate(procs):
                if codes[r] is None and p.poll() is not None:
                    codes[r], seconds[r] = p.returncode, time.perf_counter() - t0
            time.sleep(0.05)
    finally:  # no rank outlives the test, whatever happened above
        for p in procs: kill_group(p)
    errs = [p.stderr.read() for p in procs]
    return codes, seconds, errs


def reference(W, L, dtype, seed=1):
    "Loss and gradients of one process running the whole sequence through the model's own forward."
    model = build(W, dtype)
    out = model(batch(L, seed), labels=batch(L, seed))
    out.loss.backward()
    return out.loss.item(), grads(model)


def check_parity(n, tmp_path, wait_for=None):
    codes, _, errs = launch(n, tmp_path, wait_for=wait_for)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (wait_for or range(n))]
    for W, L, dtype in CASES[n]:
        loss, g_ref = reference(W, L, dtype)
        for r, res in enumerate(ranks):
            got = res[(W, L, str(dtype))]
            # The model's loss is float32 (float32 logits, as upstream), whatever the weights' dtype.
            assert abs(got["loss"] - loss) <= 1e-6 * abs(loss), (W, L, dtype, r, got["loss"], loss)
            err = max(rel_err(a, b) for a, b in zip(got["grads"], g_ref))
            assert err <= TOL[dtype], (W, L, dtype, r, err)
    return codes, errs, ranks


def test_two_ranks_equal_one_process_and_a_failing_rank_stops_the_other(tmp_path):
    codes, errs, ranks = check_parity(2, tmp_path)
    # Then rank 1 raises in layer 1: rank 0 must stop soon, with an error naming the peer.
    assert codes[1] != 0 and ranks[1]["raise"]["message"] == "injected failure in layer 1", errs[1]
    assert codes[0] not in (None, 0), "rank 0 did not stop"
    got = ranks[0]["raise"]
    assert got["outcome"] == "ChunkParallelError" and re.search(r"rank 0: .* rank 1 failed", got["message"]), got
    assert got["seconds"] < 30  # the peer's death is noticed, not waited out for the 60 s timeout


def test_four_ranks_a_2x2_grid_and_a_hung_rank(tmp_path):
    codes, errs, ranks = check_parity(4, tmp_path, wait_for=[0, 2, 3])  # rank 1 hangs and is killed
    # The grid: every rank ends with the mean over the two data shards of the full-sequence gradients.
    (l0, g0), (l1, g1) = reference(2, 61, torch.float64, seed=10), reference(2, 61, torch.float64, seed=11)
    g_mean = [(a + b) / 2 for a, b in zip(g0, g1)]
    assert sorted((res["grid"]["data_index"], res["grid"]["chunk_index"]) for res in ranks) == [(0, 0), (1, 0), (1, 1)]
    for res in ranks:
        assert abs(res["grid"]["loss"] - (l0 + l1) / 2) <= 1e-6 * (l0 + l1) / 2
        assert max(rel_err(a, b) for a, b in zip(res["grid"]["grads"], g_mean)) <= 1e-10
    # Rank 1 hung in layer 1: rank 0 stops after its group's 3 s timeout with an error naming rank 1.
    assert codes[1] is None and codes[0] not in (None, 0) and codes[2] == codes[3] == 0, (codes, errs)
    got = ranks[0]["hang"]
    assert got["outcome"] == "ChunkParallelError" and "rank 1" in got["message"], got
    assert 3 <= got["seconds"] < 15, got["seconds"]


def test_chunk_parallel_train_refuses_a_sequence_too_short(tmp_path):
    "--seq-len 1 left no target: the loss was 0/0, reported as 'loss nan', and the run exited 0. Refused up front (one process, gloo)."
    import torch.distributed as dist
    from megalodon_lit.parallel import chunk_parallel_train
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        with pytest.raises(ValueError, match=r"seq_len \(1\) must be at least 2"):
            chunk_parallel_train(MegalodonConfig.from_preset("nano"), steps=1, seq_len=1, log=None)
        assert len(chunk_parallel_train(MegalodonConfig.from_preset("nano"), steps=1, seq_len=2, batch_size=1, log=None)) == 1
    finally: dist.destroy_process_group()


def test_a_frozen_peer_ends_the_job_within_the_timeout(tmp_path):
    """A rank stopped with SIGSTOP (a stalled node) used to leave the other waiting forever in a receive: the chunk group, made by
    `parallel_grid`, had torch's 30-minute default instead of the 3 s given to `init_distributed`. Rank 0 must now fail within it."""
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE="2", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "megalodon_lit.parallel", "--preset", "nano", "--steps", "100000", "--seq-len", "128", "--timeout", "3"]
    logs = [open(tmp_path / f"rank{r}.log", "w") for r in range(2)]
    procs = []
    try:
        for r in range(2): procs.append(popen(cmd, env=dict(env, RANK=str(r)), stdout=logs[r], stderr=subprocess.STDOUT))
        deadline = time.time() + 120
        while "step 3/" not in (tmp_path / "rank0.log").read_text() and time.time() < deadline and procs[0].poll() is None: time.sleep(0.1)
        assert "step 3/" in (tmp_path / "rank0.log").read_text(), (tmp_path / "rank0.log").read_text()[-2000:]
        procs[1].send_signal(signal.SIGSTOP)
        t0 = time.time()
        try: procs[0].wait(timeout=30)
        except subprocess.TimeoutExpired: pass
        waited = time.time() - t0
    finally:
        for p in procs: kill_group(p)
        for f in logs: f.close()
    log = (tmp_path / "rank0.log").read_text()
    assert procs[0].returncode not in (None, 0) and waited < 15, (waited, log[-2000:])
    # rank 0 may be waiting in a hand-off from rank 1 or in an all-reduce of the chunk group when rank 1 stops
    assert re.search(r"ChunkParallelError: rank 0: .* (rank 1|the chunk group) failed \(RuntimeError: .*Timed out", log), log[-2000:]


def test_torchrun_trains_a_few_steps(tmp_path):
    torchrun = Path(sys.executable).parent / "torchrun"
    cmd = [str(torchrun)] if torchrun.exists() else [sys.executable, "-m", "torch.distributed.run"]
    cmd += ["--standalone", "--nproc-per-node", "2", "-m", "megalodon_lit.parallel", "--preset", "nano", "--steps", "3",
            "--seq-len", "128", "--timeout", "60"]
    p = run(cmd, timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert p.returncode == 0, p.stderr[-3000:]
    losses = [float(x) for x in re.findall(r"step \d/3  loss ([0-9.]+)", p.stdout)]
    assert len(losses) == 3, p.stdout
    # A fresh byte-level model starts near ln 256 = 5.55 nats per token.
    assert all(4.0 < x < 7.0 for x in losses), losses


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "worker":
    worker(sys.argv[2])
