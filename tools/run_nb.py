"""Execute notebooks in place, the way nbdev-test chooses cells, keeping the outputs of the cells it skips.

    python tools/run_nb.py nbs/10_triton_cema.ipynb                # CPU: gpu/slow cells keep their stored outputs
    python tools/run_nb.py --flags gpu nbs/10_triton_cema.ipynb    # on a GPU machine: run the gpu cells too

`jupyter nbconvert --execute` runs every cell, so a `#| gpu` cell fails on a CPU machine and its committed GPU
outputs would be lost; this runner leaves such cells untouched. Run `nbdev-clean` on the notebook afterwards."""
import argparse, sys, time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nbval_prep import should_skip, skip_flags  # the same flag rules as the test runners


def run(path: Path, run_flags: set[str], timeout: int, partial: Path | None = None) -> None:
    nb = nbformat.read(path, as_version=4)
    skip = skip_flags() - run_flags
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    t0 = time.time()
    try:
        with client.setup_kernel():
            for i, cell in enumerate(nb.cells):
                if cell.cell_type != "code" or should_skip(cell.source, skip): continue
                t = time.time()
                client.execute_cell(cell, i)  # raises CellExecutionError on an error, leaving the file unwritten
                if time.time() - t > 5: print(f"  cell {i}: {time.time() - t:.1f} s", flush=True)
    except BaseException:  # an error or an interrupt: keep what ran, for reading, beside the notebook's own file
        if partial is not None:
            partial.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, partial / path.name)
            print(f"{path}: stopped after {time.time() - t0:.1f} s; the cells run so far are in {partial / path.name}", flush=True)
        raise
    nbformat.write(nb, path)
    print(f"{path}: executed in {time.time() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebooks", nargs="+", type=Path)
    ap.add_argument("--flags", default="", help="space-separated tst_flags to run as well (e.g. 'gpu' or 'gpu slow')")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds allowed per cell")
    ap.add_argument("--partial", type=Path, default=None, help="on an error or interrupt, write the notebook as far as it ran into this folder")
    args = ap.parse_args()
    for p in args.notebooks: run(p, set(args.flags.split()), args.timeout, args.partial)
