"""Turn the notebooks in nbs/ into the Sphinx source tree docs/_nbs/ (run by tools/docs.sh).

1. nbdev's notebook processor (what `nbdev-proc-nbs` runs) writes _proc/: hidden cells gone,
   `show_doc` cells inserted and executed for every exported symbol, the title and summary
   moved into a Quarto-style raw YAML front-matter cell (and the rest of the title cell dropped).
2. Each processed page is rewritten for myst-nb, which knows neither Quarto front matter nor
   Quarto's `#|` cell options (the title cell's other text is restored from nbs/), and written
   to docs/_nbs/<page>.ipynb, <page> being nbdev's own page name (`00_core.ipynb` -> `core`),
   so the URLs match the ones in `_modidx.py`.
3. The landing page (index.ipynb) gets a hidden toctree of the other pages in notebook
   filename order, so a new notebook shows up in the navigation without editing the docs,
   followed by the hand-written pages of docs/pages/ (deviations, changelog).
4. Every `show_doc` entry gets a "source" link to the exported code: a page per module that
   docs/conf.py renders from megalodon_lit/ (`_modules/megalodon_lit/<mod>.html#L-<line>`).

Files are only rewritten when their content changed, so Sphinx's incremental build works.
"""
import json, os, re, shutil, sys, warnings
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "_nbs"
# Quarto-only files nbdev stages in _proc/; Sphinx must not see them.
SKIP_FILES = {"_quarto.yml", "nbdev.yml", "sidebar.yml", "_brand.yml", "styles.css"}
# Text sources other than notebooks are not pages here (they would be orphan documents).
SKIP_SUFFIXES = {".md", ".qmd", ".py", ".rst", ".yml", ".yaml"}
# `show_doc` markdown opens with a `---` rule; docutils rejects a transition there.
RE_LEADING_RULE = re.compile(r"\A\s*---+\s*\n")
# show_doc of a symbol from another module adds a Quarto-styled GitHub link
# (`[source](…#L…){target=…}`): Quarto syntax, and a link off an offline site.
RE_SOURCE_LINK = re.compile(r"^\[source\]\([^)]*\)(\{[^}]*\})?[ \t]*\n*", re.M)
RE_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$", re.M)
RE_FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
# Hand-written pages (markdown), listed after the notebooks in this order; others follow by name.
PAGES = ROOT / "docs" / "pages"
PAGE_ORDER = ["reference", "limits", "deviations", "changelog"]
RE_PAGE_LINK = re.compile(r"\]\(\.\./docs/pages/([\w.-]+\.md)")


def run_proc_nbs(force: bool) -> Path:
    """nbdev's processor, called directly: the `nbdev-proc-nbs` CLI would also write
    nbs/_quarto.yml, nbs/nbdev.yml, nbs/sidebar.yml, rebuild _modidx.py and try to install
    Quarto with sudo and curl. The result (and its cache) is the same _proc/ folder."""
    # Workers are spawned and inherit the environment: keep nbdev's style hint
    # ("Found cells containing imports and other code") out of the build log. It matters
    # for speed, though: to fill in show_doc, nbdev runs every exported cell and every cell
    # with an import in it, so a test cell that imports and then does real work runs here too.
    os.environ["PYTHONWARNINGS"] = "ignore::UserWarning:nbdev.processors"
    warnings.filterwarnings("ignore", category=UserWarning, module="nbdev.processors")
    import nbdev.serve_drv
    from nbdev.serve import proc_nbs
    os.chdir(ROOT)
    # proc_nbs hands `nbdev.serve_drv.main` to its (spawned) workers; ours, from an importable module
    # beside this script, first stops nbdev from running the cells that nbdev-test skips.
    from docs_skip import serve_without_flagged_cells
    nbdev.serve_drv.main = serve_without_flagged_cells
    return Path(proc_nbs(force=force, n_workers=min(8, os.cpu_count() or 1)))


def source_index() -> dict:
    """{short name (`cema_fft`, `ComplexEMA.forward`): [(doc page, module file, first line), …]}
    for every symbol in nbdev's index (`_modidx.py`) found in its module. Read with `ast`, so
    the package is not imported."""
    import ast
    tree = ast.parse((ROOT / "megalodon_lit" / "_modidx.py").read_text(encoding="utf-8"))
    d = next(ast.literal_eval(n.value) for n in tree.body
             if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "d")
    index = {}
    for mod, syms in d["syms"].items():
        f = ROOT / (mod.replace(".", "/") + ".py")
        if not f.exists():
            continue
        defs = definition_lines(ast.parse(f.read_text(encoding="utf-8")))
        for qual, (url, _) in syms.items():
            short = qual[len(mod) + 1:]
            if short in defs:
                page = url.split("#")[0].removesuffix(".html")
                index.setdefault(short, []).append((page, f.relative_to(ROOT).as_posix(), defs[short]))
    return index


def definition_lines(tree) -> dict:
    """{name or Class.method: first line (decorators included)} of a module's definitions; a
    fastcore `@patch` function `def f(self:Cls)` is also listed as `Cls.f`."""
    import ast
    out = {}
    def first(n): return min([n.lineno] + [x.lineno for x in getattr(n, "decorator_list", [])])
    for n in tree.body:
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out[n.name] = first(n)
            if isinstance(n, ast.ClassDef):
                for m in n.body:
                    if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        out[f"{n.name}.{m.name}"] = first(m)
            elif n.args.args and isinstance(n.args.args[0].annotation, ast.Name):
                out.setdefault(f"{n.args.args[0].annotation.id}.{n.name}", first(n))
        elif isinstance(n, (ast.Assign, ast.AnnAssign)):
            for t in (n.targets if isinstance(n, ast.Assign) else [n.target]):
                if isinstance(t, ast.Name):
                    out.setdefault(t.id, n.lineno)
    return out


def source_link(name: str, page: str, index: dict) -> str:
    """Raw-HTML "source" link for the API entry `name` shown on `page`, or "" if unknown. A name
    defined in two modules resolves to the one documented on this page."""
    cands = index.get(name, [])
    if not cands:
        return ""
    _, file, line = next((c for c in cands if c[0] == page), cands[0])
    href = os.path.relpath(f"_modules/{file.removesuffix('.py')}.html", os.path.dirname(page) or ".")
    return f'<a class="reference external source-link" href="{href}#L-{line}">[source]</a>\n'


def src(cell) -> str:
    s = cell.get("source", "")
    return "".join(s) if isinstance(s, list) else s


def md_cell(text: str) -> dict:
    return {"cell_type": "markdown", "metadata": {}, "source": text}


def text_of(data) -> str:
    return "".join(data) if isinstance(data, list) else data


def split_directives(source: str):
    """Leading Quarto `#| key: value` lines -> (dict, remaining source)."""
    opts, lines = {}, source.split("\n")
    while lines and lines[0].startswith("#|"):
        k, _, v = lines.pop(0)[2:].partition(":")
        opts[k.strip()] = v.strip().lower()
    return opts, "\n".join(lines)


def headings(text: str):
    """(level, title) of the markdown headings in `text`, ignoring fenced code."""
    return [(len(m[1]), m[2]) for m in RE_HEADING.finditer(RE_FENCE.sub("", text))]


def front_matter_cell(cell):
    """The title/summary dict of nbdev's raw YAML front-matter cell, else None."""
    if cell["cell_type"] != "raw":
        return None
    m = re.match(r"\A---\s*\n(.*?)\n---\Z", src(cell).strip(), re.S)
    return (yaml.safe_load(m.group(1)) or {}) if m else None


def title_cell_rest(source_nb: Path) -> str:
    """What nbdev drops with a notebook's title cell. Its front-matter processor takes the title
    (`# …`), the summary (`> …`) and any `- key: value` lines from the first markdown cell with an
    H1, then removes the whole cell, so the rest of that cell (the "after this notebook you can…"
    paragraph) would be missing from the page. The same patterns as nbdev's `md_frontmatter`."""
    if not source_nb.exists():
        return ""
    for c in json.loads(source_nb.read_text(encoding="utf-8"))["cells"]:
        if c["cell_type"] == "markdown" and re.search(r"^#\s+(\S.*?)\s*$", s := src(c), re.M):
            used = [re.search(r"^#\s+(\S.*?)\s*$", s, re.M), re.search(r"^>\s+(\S.*?)\s*$", s, re.M),
                    *re.finditer(r"^-\s+(\S.*:.*\S)\s*$", s, re.M)]
            for m in sorted((m for m in used if m), key=lambda m: -m.start()):
                s = s[:m.start()] + s[m.end():]
            return re.sub(r"\n{3,}", "\n\n", s).strip()
    return ""


def convert(nb: dict, default_title: str, page: str = "", sources: dict | None = None, rest: str = "") -> dict:
    """Rewrite one processed notebook (nbdev page name `page`) for myst-nb; `sources` is
    `source_index()`, for the "source" links of API entries; `rest` is `title_cell_rest()`."""
    cells, fm = [], {}
    for i, cell in enumerate(nb["cells"]):
        if i == 0 and (d := front_matter_cell(cell)) is not None:
            fm = d
            continue
        t = cell["cell_type"]
        if t == "markdown":
            s = src(cell)
            if s.strip() and s.strip() != "<!-- WARNING: THIS FILE WAS AUTOGENERATED! DO NOT EDIT! -->":
                cells.append(md_cell(s))
            continue
        if t == "raw":  # Quarto passes raw cells through; Sphinx would show them as text.
            continue
        opts, code = split_directives(src(cell))
        if opts.get("include") == "false":
            continue
        outs = cell.get("outputs", [])
        for o in outs:  # widget views need a widget state the page does not have
            o.get("data", {}).pop("application/vnd.jupyter.widget-view+json", None)
        if opts.get("echo") == "false" and opts.get("output") == "asis" and outs \
                and all("text/markdown" in o.get("data", {}) for o in outs):
            # `show_doc` and friends: the markdown output becomes page markdown, so API
            # entries are real headings (anchors, in-page table of contents, search).
            for o in outs:
                text = RE_SOURCE_LINK.sub("", RE_LEADING_RULE.sub("", text_of(o["data"]["text/markdown"]), 1))
                cells.append(md_cell(with_source_link(text, page, sources or {})))
            continue
        tags = []
        if opts.get("echo") == "false": tags.append("remove-input")
        if opts.get("output") == "false": tags.append("remove-output")
        if opts.get("code-fold") in ("true", "show"): tags.append("hide-input")
        if opts.get("echo") == "false" and not outs:
            continue
        for o in outs:  # an asis output keeps no leading rule either
            if "text/markdown" in o.get("data", {}):
                o["data"]["text/markdown"] = RE_LEADING_RULE.sub("", text_of(o["data"]["text/markdown"]), 1)
        cells.append({"cell_type": "code", "execution_count": cell.get("execution_count"),
                      "metadata": {"tags": tags} if tags else {}, "outputs": outs,
                      "source": code.strip("\n")})

    # Title and summary back as markdown, unless the notebook already opens with an H1.
    first = headings(src(cells[0])) if cells and cells[0]["cell_type"] == "markdown" else []
    if not (first and first[0][0] == 1):
        head = f"# {fm.get('title') or default_title}\n"
        if fm.get("description"):
            head += f"\n{str(fm['description']).strip()}\n"
        cells.insert(0, md_cell(head))
        if fm and rest:
            cells.insert(1, md_cell(rest))
    fix_heading_levels(cells)
    meta = {k: v for k, v in nb.get("metadata", {}).items() if k in ("kernelspec", "language_info")}
    meta.setdefault("language_info", {"name": "python"})  # myst-nb picks the code lexer from it
    return {"cells": cells, "metadata": meta, "nbformat": 4, "nbformat_minor": 5}


def with_source_link(text: str, page: str, sources: dict) -> str:
    """A `show_doc` entry with a "source" link under its heading (when the symbol is indexed)."""
    m = RE_HEADING.search(text)
    if not m or not (link := source_link(m[2].strip(), page, sources)):
        return text
    return f"{text[:m.end()]}\n\n{link}{text[m.end():]}"


def fix_heading_levels(cells):
    """`show_doc` writes `###` (`####` for methods); under an H1 with no H2 yet that skips
    a level, which MyST reports (a warning, so an error under -W). Renumber headings by
    their depth in the outline instead: a heading sits one below its nearest shallower
    ancestor. A notebook whose levels do not skip is left as it is."""
    open_levels, fence = [], None  # original levels of the enclosing headings
    for c in cells:
        if c["cell_type"] != "markdown":
            continue
        lines = c["source"].split("\n")
        for k, line in enumerate(lines):
            if fence:  # inside fenced code: no headings
                fence = None if line.startswith(fence) else fence
                continue
            if line.startswith(("```", "~~~")):
                fence = line[:3]
                continue
            if m := RE_HEADING.match(line):
                lvl = len(m[1])
                while open_levels and open_levels[-1] >= lvl:
                    open_levels.pop()
                open_levels.append(lvl)
                lines[k] = "#" * len(open_levels) + line[lvl:]
        c["source"] = "\n".join(lines)


def link_rewriter(pages: dict, renames: dict):
    """Markdown links that would not resolve in this site, pointed at the local page:
    nbdev links fully qualified names (`megalodon_lit.core.rel_err`) to the hosted site, and
    authors link notebooks by file name (`01_cema.ipynb`), while pages carry nbdev's page
    names (`cema`). Anchors are kept where the page has that heading."""
    from nbdev.config import get_config
    from myst_parser.slugs import github_slugify
    cfg = get_config()
    host = f"{cfg.get('doc_host', '')}{cfg.get('doc_baseurl', '')}".rstrip("/")
    slugs = {name: {github_slugify(t) for c in nb["cells"] if c["cell_type"] == "markdown"
                    for _, t in headings(c["source"])} for name, nb in pages.items()}
    hosted = re.compile(r"\]\(" + re.escape(host) + r"/([^)#\s]+?)\.html(?:#([^)\s]*))?\)") if host else None
    local = re.compile(r"\]\((?![a-zA-Z][a-zA-Z0-9+.-]*:)([^)#\s]+?\.ipynb)(?:#([^)\s]*))?\)")

    def link(page, anchor, here):
        target = os.path.relpath(page, os.path.dirname(here) or ".") + ".ipynb"
        slug = github_slugify(anchor) if anchor else ""
        return f"]({target}#{slug})" if slug and slug in slugs[page] else f"]({target})"

    def fix_hosted(m, here):
        return link(m[1], m[2], here) if m[1] in slugs else m[0]

    def fix_local(m, here):
        src_here = next((k for k, v in renames.items() if v == here), here)
        page = renames.get(os.path.normpath(os.path.join(os.path.dirname(src_here), m[1])))
        return link(page, m[2], here) if page else m[0]

    def fix(s, here):
        if hosted:
            s = hosted.sub(lambda m: fix_hosted(m, here), s)
        return local.sub(lambda m: fix_local(m, here), s)
    return fix


def write_if_changed(path: Path, data: bytes):
    if path.exists() and path.read_bytes() == data:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def main():
    # show_doc output comes from the package, and a page may document another notebook's
    # symbols: when the package changed after the last run, process every notebook again.
    proc_dir = ROOT / "_proc"
    lib_mtime = max((p.stat().st_mtime for p in (ROOT / "megalodon_lit").rglob("*.py")), default=0)
    force = "--force" in sys.argv or not proc_dir.exists() or lib_mtime > proc_dir.stat().st_mtime
    proc = run_proc_nbs(force)
    # Rewriting files in _proc/ leaves the folder's own mtime alone: stamp it, or every later
    # build would count the package as newer and process all notebooks again.
    proc.touch()
    from nbdev.config import get_config, nbpath2html

    sources = source_index()
    pages, order, assets, renames = {}, [], [], {}
    for f in sorted(p for p in proc.rglob("*") if p.is_file()):
        rel = f.relative_to(proc)
        if rel.name in SKIP_FILES or any(part.startswith((".", "_")) for part in rel.parts):
            continue
        if f.suffix == ".ipynb":
            name = nbpath2html(rel).with_suffix("").as_posix()
            if name in pages:  # two notebooks mapping to one page name: keep the stem
                name = rel.with_suffix("").as_posix()
            title = re.sub(r"^\d+[a-zA-Z0-9]*_", "", rel.stem).replace("_", " ").capitalize()
            rest = title_cell_rest(ROOT / get_config().get("nbs_path", "nbs") / rel)
            pages[name] = convert(json.loads(f.read_text(encoding="utf-8")), title, name, sources, rest)
            order.append(name)
            renames[rel.as_posix()] = name
        elif f.suffix not in SKIP_SUFFIXES:  # images and other files the notebooks link to
            assets.append(rel)

    fix_links = link_rewriter(pages, renames)
    for name, nb in pages.items():
        for c in nb["cells"]:
            if c["cell_type"] == "markdown":
                # nbs/ links to the hand-written pages as ../docs/pages/<page>.md (works in Jupyter)
                c["source"] = RE_PAGE_LINK.sub(r"](\1", fix_links(c["source"], name))

    # Hand-written pages: they link notebooks as ../../nbs/<file>.ipynb (works on a forge).
    extra = {}
    rank = lambda f: (PAGE_ORDER.index(f.stem) if f.stem in PAGE_ORDER else len(PAGE_ORDER), f.stem)
    for f in sorted(PAGES.glob("*.md"), key=rank):
        text = f.read_text(encoding="utf-8").replace("](../../nbs/", "](")
        extra[f.stem] = fix_links(text, f.stem)

    # Navigation: the landing page holds hidden toctrees with every other page in order.
    others = [n for n in order if n != "index"]
    def toctree(caption, names, hidden=True):
        opts = (":hidden:\n" if hidden else "") + f":caption: {caption}\n:maxdepth: 2\n"
        return "```{toctree}\n" + opts + "\n" + "\n".join(names) + "\n```\n"
    nav = [toctree("Notebooks", others)] + ([toctree("About this project", list(extra))] if extra else [])
    if "index" in pages:
        pages["index"]["cells"] += [md_cell(t) for t in nav]
    else:  # no index.ipynb yet: a plain landing page listing the pages
        pages["index"] = {"cells": [md_cell(f"# {get_config().get('lib_name', 'Documentation')}\n")]
                                   + [md_cell(t.replace(":hidden:\n", "")) for t in nav],
                          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}

    wanted = set()
    for name, nb in pages.items():
        for i, c in enumerate(nb["cells"]):  # nbformat 4.5 wants ids; stable ones keep files unchanged
            c["id"] = f"cell-{i}"
        dst = OUT / f"{name}.ipynb"
        write_if_changed(dst, (json.dumps(nb, indent=1, ensure_ascii=False) + "\n").encode())
        wanted.add(dst)
    for stem, text in extra.items():
        dst = OUT / f"{stem}.md"
        write_if_changed(dst, text.encode())
        wanted.add(dst)
    for rel in assets:
        dst = OUT / rel
        write_if_changed(dst, (proc / rel).read_bytes())
        wanted.add(dst)
    stale = [f for f in OUT.rglob("*") if f.is_file() and f not in wanted]
    for f in stale:  # pages whose notebook is gone
        f.unlink()
    if stale:  # Sphinx would leave their HTML behind: build the site afresh
        shutil.rmtree(ROOT / "docs" / "_build", ignore_errors=True)
    for d in sorted((p for p in OUT.rglob("*") if p.is_dir()), reverse=True):
        if not any(d.iterdir()):
            d.rmdir()


if __name__ == "__main__":  # the guard matters: nbdev's workers are spawned processes
    main()
