"""Copy the notebooks into a scratch folder for nbval, the one run that executes every notebook in `make test`.

nbval executes each notebook's code cells top to bottom and fails on a cell that raises; run with `--nbval-lax` it
does not compare outputs (our outputs hold timings and plots). That is what nbdev-test checked, so nbdev-test is not
run as well. The notebooks and cells are the ones nbdev-test would run, chosen by nbdev's own functions: every
notebook `nbglob` finds under `nbs/` (recursive, names starting with `_` or `.` left out, folders holding a `.notest`
file left out), and in each only the cells `nb_test_cells` keeps (flags from `tst_flags`, e.g. `#| gpu` and
`#| slow`, `#| eval: false`, a notebook's `skip_exec`); every other code cell gets nbval's `# NBVAL_SKIP` marker.

`nbdev-clean` strips execution counts, and nbval then reports every cell with stored outputs as "Unrun reference
cell has outputs": the copy numbers the code cells."""
import json, re, shutil, sys, tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEST = ".notest"  # nbdev-test's default `ignore_fname`


def skip_flags():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["nbdev"]
    return set(cfg.get("tst_flags", "").split())


def should_skip(src, flags):
    "Whether a cell with source `src` is left out when `flags` are skipped (for `run_nb.py` and `docs_skip.py`)."
    for line in src.splitlines():
        m = re.match(r"\s*#\|\s*(.*)", line)
        if not m: continue
        words = m.group(1).replace(":", " ").split()
        if words and (words[0] in flags or (words[0] == "eval" and "false" in words[1:])): return True
    return False


def notebooks(nbs=None):
    "The notebooks nbdev-test would run, sorted by path."
    from fastcore.xtras import working_directory
    from nbdev.doclinks import nbglob
    nbs = Path(nbs or ROOT / "nbs").resolve()
    with working_directory(ROOT): files = nbglob(nbs, as_path=True)  # the project's nbdev settings (recursive) apply
    return sorted(f for f in files if not (f.parent / NOTEST).exists())


def prep(nb_path, out_path, flags):
    "Write the nbval copy of one notebook: code cells numbered, the cells nbdev-test would not run marked NBVAL_SKIP."
    from fastcore.xtras import working_directory
    from nbdev.test import nb_test_cells
    nb = json.loads(nb_path.read_text())
    with working_directory(ROOT): run = {c.idx_ for c in nb_test_cells(nb_path, sorted(flags))}  # indices into nb["cells"]
    n = 0
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code": continue
        n += 1
        cell["execution_count"] = n
        for out in cell.get("outputs", []):
            if "execution_count" in out: out["execution_count"] = n
        if i not in run: cell["source"] = "# NBVAL_SKIP\n" + "".join(cell["source"])
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(nb, indent=1))
    return len(run), n


def main(out_dir, nbs=None):
    nbs, out_dir = Path(nbs or ROOT / "nbs").resolve(), Path(out_dir).resolve()
    if out_dir.exists(): shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    flags, found, cells = skip_flags(), notebooks(nbs), 0
    for p in found: cells += prep(p, out_dir / p.relative_to(nbs), flags)[0]
    # Notebooks read data relative to their folder; keep the other files beside the copies.
    for p in nbs.rglob("*"):
        if p.is_file() and p.suffix != ".ipynb" and ".ipynb_checkpoints" not in p.parts:
            (out_dir / p.relative_to(nbs)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(p, out_dir / p.relative_to(nbs))
    print(f"nbval copies of {len(found)} notebooks ({cells} cells to run, the rest marked NBVAL_SKIP) in {out_dir}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "build/nbval")
