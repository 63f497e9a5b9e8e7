"""The import graph of `megalodon_lit`, read from the source (ast, nothing imported): no cycle, and every module
imports only modules of its own notebook or of earlier ones, so the package reads in notebook order.

A lazy import (inside a function) counts: it runs in the same process and ties the two modules together just as
a top-level import does, only later, so a module that imports a later one on use still reaches forward. Later
notebooks plug into earlier ones through the path registry of `core` (`register_path` / `path_for`) instead.
The package's `__init__.py` is the one module not written by a notebook: it is the root that assembles the package
(it imports the model and, on first use, the modules that register paths), so its edges are left out."""
import ast
import re
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "megalodon_lit"


def _modules() -> dict[str, Path]:
    "Dotted name -> file, for every module written by a notebook."
    out = {}
    for f in sorted(PKG.rglob("*.py")):
        if f.name in ("__init__.py", "_modidx.py"): continue
        out[".".join(f.relative_to(PKG.parent).with_suffix("").parts)] = f
    return out


def _notebook(f: Path) -> int:
    "The number of the notebook a module is exported from (its header names it)."
    m = re.search(r"File to edit: [./]*nbs/(\d+)_", f.read_text())
    assert m, f"{f} does not name its notebook"
    return int(m.group(1))


def _imports(name: str, f: Path, known: set[str]) -> set[str]:
    "The megalodon_lit modules that module `name` imports, at top level or inside functions."
    pkg = name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(f.read_text())):
        if isinstance(node, ast.Import):
            bases = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = pkg.split(".")[:len(pkg.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            bases = [base] + [f"{base}.{a.name}" for a in node.names]  # `from . import x` imports module x
        else: continue
        found |= {b for b in bases if b in known}
    return found - {name}


def _graph() -> tuple[dict[str, set[str]], dict[str, int]]:
    mods = _modules()
    return {n: _imports(n, f, set(mods)) for n, f in mods.items()}, {n: _notebook(f) for n, f in mods.items()}


def test_reader_finds_imports():
    "The reader sees a relative, an absolute and a lazy import (so the checks below cannot pass by seeing nothing)."
    graph, _ = _graph()
    assert "megalodon_lit.core" in graph["megalodon_lit.cema"]           # from .core import ...
    assert "megalodon_lit.cema" in graph["megalodon_lit.ops.cema"]       # from ..cema import ...
    assert "megalodon_lit.parallel" in graph["megalodon_lit.cli"]        # imported inside a function


def test_no_import_cycle():
    graph, _ = _graph()
    state = {}
    def visit(n, path):
        if state.get(n) == "done": return
        assert state.get(n) != "open", "import cycle: " + " -> ".join(path[path.index(n):] + [n])
        state[n] = "open"
        for m in sorted(graph[n]): visit(m, path + [n])
        state[n] = "done"
    for n in sorted(graph): visit(n, [])


def test_imports_follow_the_notebook_order():
    graph, nb = _graph()
    forward = [f"{a} (nb {nb[a]:02d}) imports {b} (nb {nb[b]:02d})" for a in sorted(graph) for b in sorted(graph[a]) if nb[b] > nb[a]]
    assert not forward, "imports that reach a later notebook:\n" + "\n".join(forward)
