"""Copy the notebooks into a scratch folder for nbval.

`nbdev-clean` strips execution counts, and nbval then reports every cell with stored outputs as
"Unrun reference cell has outputs". The copy numbers the code cells instead. Cells that nbdev-test
skips (flags from `tst_flags`, e.g. `#| gpu`, and `#| eval: false`) get nbval's own skip marker,
so both runners execute the same cells."""
import json, re, shutil, sys, tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

def skip_flags():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["nbdev"]
    return set(cfg.get("tst_flags", "").split())

def should_skip(src, flags):
    for line in src.splitlines():
        m = re.match(r"\s*#\|\s*(.*)", line)
        if not m: continue
        words = m.group(1).replace(":", " ").split()
        if words and (words[0] in flags or (words[0] == "eval" and "false" in words[1:])): return True
    return False

def prep(nb_path, out_dir, flags):
    nb = json.loads(nb_path.read_text())
    n = 0
    for cell in nb["cells"]:
        if cell["cell_type"] != "code": continue
        n += 1
        cell["execution_count"] = n
        for out in cell.get("outputs", []):
            if "execution_count" in out: out["execution_count"] = n
        src = "".join(cell["source"])
        if should_skip(src, flags): cell["source"] = "# NBVAL_SKIP\n" + src
    (out_dir / nb_path.name).write_text(json.dumps(nb, indent=1))

def main(out_dir):
    out_dir = Path(out_dir)
    if out_dir.exists(): shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    flags = skip_flags()
    nbs = sorted((ROOT / "nbs").glob("*.ipynb"))
    for p in nbs: prep(p, out_dir, flags)
    # Notebooks read data relative to nbs/; keep any non-notebook files beside the copies.
    for p in (ROOT / "nbs").iterdir():
        if p.is_file() and p.suffix != ".ipynb": shutil.copy(p, out_dir / p.name)
    print(f"nbval copies of {len(nbs)} notebooks in {out_dir}")

if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "build/nbval")
