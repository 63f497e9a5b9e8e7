"""Run the grid of nbs/08_vs_transformer.ipynb (Megalodon against a same-size Transformer) from the repository root.

    nohup nice -n 10 python tools/run_vs_transformer.py > vs_transformer.log 2>&1 &

Rows are saved to experiments/vs_transformer/results.json as each run finishes; a second call runs only the rows
still missing, so the grid can be stopped and continued. Checkpoints go to runs/vs_transformer (not committed)."""
import argparse, sys, time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from megalodon_lit.vs_transformer import RESULTS, run_grid

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phases", default="1,2,3,4,5", help="1 small sweep, 2 long context, 3 large size, 4 ablations, 5 the large size's lr neighbours and the second seeds (default: all, in that order)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    res = run_grid(tuple(int(p) for p in a.phases.split(",")), log=lambda s: print(f"[{time.perf_counter() - t0:7.0f} s] {s}", flush=True))
    print(f"done: {len(res['runs'])} runs, {len(res['long_context'])} long-context rows in {RESULTS}, {time.perf_counter() - t0:.0f} s", flush=True)
