"""tools/nbval_prep.py, which makes nbval the one run of the notebooks in `make test`: it marks exactly the cells
nbdev-test would skip, takes every notebook nbdev finds (one added later, one in a subfolder) and leaves out the ones
nbdev leaves out, and a cell that raises fails the nbval run."""
import json, sys

from _subproc import run
from conftest import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import nbval_prep  # noqa: E402


def write_nb(path, *sources):
    cells = [{"cell_type": "code", "execution_count": None, "id": f"c{i}", "metadata": {}, "outputs": [], "source": s}
             for i, s in enumerate(sources)]
    meta = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}, "language_info": {"name": "python"}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"cells": cells, "metadata": meta, "nbformat": 4, "nbformat_minor": 5}))


def skipped(path):
    return ["".join(c["source"]).startswith("# NBVAL_SKIP") for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]


def test_notebooks_and_cells_as_nbdev_test_chooses(tmp_path):
    nbs = tmp_path / "nbs"
    write_nb(nbs / "a.ipynb", "x = 1", "#| slow\nraise ValueError", "#| gpu\nraise ValueError", "#| eval: false\nraise ValueError",
             "#| export\ny = 2", "#| hide\nz = 3")
    write_nb(nbs / "sub" / "b.ipynb", "x = 1")
    write_nb(nbs / "_draft.ipynb", "x = 1")
    (nbs / "data.txt").write_text("read by a notebook")
    nbval_prep.main(tmp_path / "out", nbs)
    out = tmp_path / "out"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == ["a.ipynb", "data.txt", "sub/b.ipynb"]
    assert skipped(out / "a.ipynb") == [False, True, True, True, False, False]
    assert [c["execution_count"] for c in json.loads((out / "a.ipynb").read_text())["cells"]] == [1, 2, 3, 4, 5, 6]
    # the project's notebooks: the cells left to run are the ones nbdev-test runs
    from nbdev.test import nb_test_cells
    real = ROOT / "nbs" / "10_triton_cema.ipynb"
    nbval_prep.prep(real, tmp_path / "real.ipynb", nbval_prep.skip_flags())
    code = [c for c in json.loads(real.read_text())["cells"] if c["cell_type"] == "code"]
    runs = {"".join(c.source) for c in nb_test_cells(real, sorted(nbval_prep.skip_flags()))}
    assert [("".join(c["source"]) not in runs) for c in code] == skipped(tmp_path / "real.ipynb") and any(skipped(tmp_path / "real.ipynb"))


def test_a_raising_cell_fails_the_run(tmp_path):
    nbs = tmp_path / "nbs"
    write_nb(nbs / "good.ipynb", "x = 1", "#| slow\nraise ValueError('never run')", "assert x == 1")
    write_nb(nbs / "bad.ipynb", "x = 1", "raise ValueError('boom')")
    nbval_prep.main(tmp_path / "out", nbs)
    r = run([sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env", str(tmp_path / "out"), "-q", "-p", "no:cacheprovider"],
            timeout=300, cwd=tmp_path)
    assert r.returncode == 1 and "boom" in r.stdout and "never run" not in r.stdout, r.stdout + r.stderr
    assert "1 failed, 3 passed, 1 skipped" in r.stdout, r.stdout
