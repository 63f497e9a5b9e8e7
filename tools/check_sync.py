"""Fail when `nbdev-export` or `nbdev-clean` would change a tracked file, or when README.md is not
what tools/make_readme.py makes of nbs/index.ipynb: the notebooks are the source, and the
committed package, notebooks and README must be exactly what those commands produce."""
import hashlib, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WATCHED = ["nbs", "megalodon_lit"]

def snapshot():
    files = {}
    for d in WATCHED:
        for p in sorted((ROOT / d).rglob("*")):
            if p.is_file() and "__pycache__" not in p.parts and ".ipynb_checkpoints" not in p.parts:
                files[str(p.relative_to(ROOT))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return files

def main():
    before = snapshot()
    # The commands installed beside this interpreter (the project's .venv), whatever PATH says.
    bindir = Path(sys.executable).parent
    for cmd in ("nbdev-export", "nbdev-clean"):
        subprocess.run([str(bindir / cmd)], cwd=ROOT, check=True)
    after = snapshot()
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    if changed:
        print("nbdev-export / nbdev-clean changed these files; run both and commit the result:")
        for k in changed: print("   ", k)
        sys.exit(1)
    print(f"sync check: {len(after)} files under {', '.join(WATCHED)} unchanged by nbdev-export and nbdev-clean")
    # README.md is generated from nbs/index.ipynb (checked after nbdev-clean, which may touch it).
    res = subprocess.run([sys.executable, str(ROOT / "tools" / "make_readme.py"), "--check"], cwd=ROOT)
    if res.returncode:
        sys.exit(1)

if __name__ == "__main__":
    main()
