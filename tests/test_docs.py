"""The documentation site builds (`make docs`, Sphinx with warnings as errors), has a page for every
notebook plus the hand-written pages, and its pages carry what a reader needs: rendered math, the
stored plots, API entries with source links, and a local MathJax. README.md is generated from
nbs/index.ipynb. (tests/test_site_browser.py looks at the same site in a real browser.)"""
import re, subprocess, sys
from pathlib import Path

import pytest

from conftest import ROOT
HTML = ROOT / "docs" / "_build" / "html"


@pytest.fixture(scope="module")
def site():
    res = subprocess.run(["bash", str(ROOT / "tools" / "docs.sh")], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, f"docs build failed:\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}"
    return HTML


def page(site, name): return (site / f"{name}.html").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", ["index", "core", "cema", "cema_paths", "timestep_norm", "attention", "cli"])
def test_page_exists_with_title(site, name):
    html = page(site, name)
    assert re.search(r"<h1[^>]*>", html), f"{name}.html has no H1 title"


@pytest.mark.parametrize("name,min_images", [("cema", 3), ("cema_paths", 3), ("timestep_norm", 1), ("attention", 3)])
def test_cema_pages_show_math_and_plots(site, name, min_images):
    html = page(site, name)
    assert html.count('class="math') >= 3, f"{name}.html: too little rendered math markup"
    assert "$$" not in re.sub(r"<pre.*?</pre>", "", html, flags=re.S), f"{name}.html: raw $$ left in the text"
    images = re.findall(r'<img[^>]+src="(_images/[^"]+)"', html)
    assert len(images) >= min_images, f"{name}.html: {len(images)} plots, expected >= {min_images}"
    for src in images: assert (site / src).stat().st_size > 1000, src


def test_mathjax_is_local(site):
    for name in ("cema", "cema_paths"):
        scripts = re.findall(r'<script[^>]+src="([^"]+)"', page(site, name))
        mathjax = [s for s in scripts if "mathjax" in s.lower()]
        assert mathjax and all(not s.startswith(("http:", "https:", "//")) for s in mathjax), mathjax
        # Sphinx may append a cache-busting query (?v=...) to the file name.
        assert all((site / s.split("?")[0]).exists() for s in mathjax), mathjax


@pytest.mark.parametrize("name,symbols", [
    ("core", ["rel_err", "assert_close", "ErrorTable", "resolve_backend"]),
    ("cema", ["cema_coeffs", "CEMAParameters", "theta_ladder"]),
    ("cema_paths", ["cema_recurrent", "cema_fft", "cema_chunked", "ComplexEMA"]),
    ("timestep_norm", ["timestep_norm_ref", "timestep_norm", "TimestepNorm"]),
    ("attention", ["attention_ref", "attention_chunked", "apply_rope", "KVCache", "attention_step"]),
])
def test_api_entries(site, name, symbols):
    html = page(site, name)
    for s in symbols: assert f'id="{s.lower()}"' in html or f'id="{s}"' in html, f"no API entry for {s} in {name}.html"


def test_every_notebook_is_a_page(site):
    from nbdev.config import nbpath2html
    for nb in sorted((ROOT / "nbs").glob("*.ipynb")):
        name = nbpath2html(Path(nb.name)).with_suffix("").as_posix()
        assert (site / f"{name}.html").exists(), f"{nb.name} has no page {name}.html"


@pytest.mark.parametrize("name,needle", [("deviations", "RoPE"), ("deviations", "megalodon-hf"), ("changelog", "Unreleased"),
                                         ("reference", "cff8ba5"), ("reference", "ema_parameters"), ("limits", "GPU targets")])
def test_hand_written_pages(site, name, needle):
    html = page(site, name)
    assert needle in html
    # they are in the navigation of the landing page
    assert f'href="{name}.html"' in page(site, "index")


def test_navigation_in_notebook_order(site):
    from nbdev.config import nbpath2html
    names = [nbpath2html(Path(nb.name)).with_suffix("").as_posix() for nb in sorted((ROOT / "nbs").glob("*.ipynb"))]
    names = [n for n in names if n != "index"]
    nav = re.findall(r'<a class="reference internal" href="([\w/.-]+)\.html">', page(site, "index").split('class="bd-links')[1].split("</nav>")[0])  # the sidebar only (the page body links to pages too)
    assert [n for n in nav if n in names] == names, nav


def test_source_pages(site):
    for mod in sorted((ROOT / "megalodon_lit").glob("[!_]*.py")):
        html = (site / "_modules" / "megalodon_lit" / f"{mod.stem}.html").read_text(encoding="utf-8")
        n_lines = len(mod.read_text(encoding="utf-8").splitlines())
        assert f'id="L-{n_lines}"' in html and f'id="L-{n_lines + 1}"' not in html, mod.name


def _readme_module():
    import importlib.util
    spec = importlib.util.spec_from_file_location("make_readme", ROOT / "tools" / "make_readme.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_readme_is_generated_from_index():
    res = subprocess.run([sys.executable, str(ROOT / "tools" / "make_readme.py"), "--check"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_readme_check_fails_when_stale(tmp_path, monkeypatch):
    mr = _readme_module()
    stale = tmp_path / "README.md"
    stale.write_text((ROOT / "README.md").read_text(encoding="utf-8") + "\nedited by hand\n", encoding="utf-8")
    monkeypatch.setattr(mr, "README", stale)
    assert mr.main(["--check"]) == 1


def test_readme_rendering_rules():
    mr = _readme_module()
    nb = {"cells": [
        {"cell_type": "code", "source": "#| hide\nsecret = 1", "outputs": []},
        {"cell_type": "code", "source": "#| export\ndef f(): pass", "outputs": []},
        {"cell_type": "markdown", "source": "See [the CEMA notebook](01_cema.ipynb#top) and [the paper](https://arxiv.org/abs/2404.08801)."},
        {"cell_type": "code", "source": "1 + 1", "outputs": [{"output_type": "execute_result", "data": {"text/plain": "2"}}]},
    ]}
    out = mr.render(nb)
    assert "secret" not in out and "def f" not in out
    assert "](nbs/01_cema.ipynb#top)" in out and "](https://arxiv.org/abs/2404.08801)" in out
    assert "```python\n1 + 1\n```\n\n```\n2\n```" in out


def test_title_cell_text_is_kept(site):
    """nbdev's processor drops the whole title cell; the docs build restores what follows the summary."""
    import json
    from nbdev.config import nbpath2html
    checked = 0
    for nb in sorted((ROOT / "nbs").glob("*.ipynb")):
        cells = [c for c in json.loads(nb.read_text(encoding="utf-8"))["cells"] if c["cell_type"] == "markdown"]
        title = next(("".join(c["source"]) for c in cells if re.search(r"^#\s+\S", "".join(c["source"]), re.M)), "")
        for phrase in ("After this notebook you can", "Megalodon is a language-model architecture"):
            if phrase in title:
                name = nbpath2html(Path(nb.name)).with_suffix("").as_posix()
                assert phrase in page(site, name), f"{name}.html lost the title cell's text ({phrase!r})"
                checked += 1
    assert checked >= 5


# --- Citations a reader can follow ------------------------------------------------------------------------------
# The project's design notes live outside the repository: a reader of the site, of a clone or of the installed
# package cannot open them, so nothing may cite them (docs/pages/reference.md and docs/pages/limits.md hold
# what readers need of them). The names are assembled so that this file does not cite them itself.
_NOTES = ["upstream" + "-spec", "house" + "-style"]  # distinctive enough to count with or without ".md"
_NOTES_MD = ["performance", "architecture", "toolchain"]  # common words: only as file names
_OUTSIDE_NOTES = re.compile(r"(?<![\w./-])((?:[\w.-]+/)*)((?:%s)(?:\.md)?|(?:%s)\.md)\b" % ("|".join(_NOTES), "|".join(_NOTES_MD)))
_OUTSIDE_PATH = re.compile(r"(?:\.\./)+" + "shared" + r"\b|\b" + "shared" + r"/design\b")
_MD_LINK = re.compile(r"\]\(([^)\s]+)\)")
# A section number with no work named before it was how the design notes were cited; a section sign must follow the name
# of what it cites (the paper, a publication), or sit in a table with a "paper" column.
_SECTION = re.compile("\u00a7")
_CITED_WORK = re.compile(r"paper|Ma et al|Megalodon(?![-_])|Dao et al|FlashAttention|arXiv", re.I)  # not megalodon-lit, -hf
_TEXT_SUFFIXES = {".ipynb", ".py", ".md", ".sh", ".txt", ".toml", ".yml", ".yaml", ".cfg", ".rst"}


def _sources():
    """The hand-written text of the project: notebooks, the package, the docs sources (not the generated
    docs/_nbs/ and docs/_build/), tests, tools and the README."""
    skip = {"_build", "_nbs", "_proc", ".ipynb_checkpoints", "__pycache__"}
    for top in ("nbs", "megalodon_lit", "docs", "tests", "tools"):
        for f in sorted((ROOT / top).rglob("*")):
            if f.is_file() and f.suffix in _TEXT_SUFFIXES and not skip & set(f.relative_to(ROOT).parts):
                yield f
    yield ROOT / "README.md"


def _texts(f):
    """(text, is_markdown) pieces of a file: a notebook's cells (sources and outputs) one by one."""
    if f.suffix != ".ipynb":
        yield f.read_text(encoding="utf-8"), f.suffix == ".md"
        return
    import json
    for c in json.loads(f.read_text(encoding="utf-8"))["cells"]:
        src = c.get("source", "")
        yield ("".join(src) if isinstance(src, list) else src), c["cell_type"] == "markdown"
        for o in c.get("outputs", []):
            for v in [o.get("text", "")] + list(o.get("data", {}).values()):
                yield ("".join(v) if isinstance(v, list) else str(v)), False


def _unfollowable(f, text, is_markdown):
    """What in `text` (from file `f`) a reader cannot follow: in markdown, a relative link to a file that is
    not there or not in the repository; anywhere, a design note of the project or a path into the shared
    folder beside the repository. A link that resolves to a file of the repository is fine, whatever its name."""
    bad = []
    def link(m):
        target = m[1].split("#")[0]
        if not target or re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*:", m[1]):  # in-page anchor, URL, mailto:
            return m[0]
        path = (f.parent / target).resolve()
        if not is_markdown:
            return "](resolved)" if path.exists() and ROOT.resolve() in path.parents else m[0]
        if ROOT.resolve() not in path.parents:
            bad.append(f"link out of the repository: {m[1]}")
        elif path.exists():
            return "](resolved)"
        else:
            bad.append(f"broken link: {m[1]}")
        return m[0]
    text = _MD_LINK.sub(link, text)
    for m in _OUTSIDE_NOTES.finditer(text):
        if m[1] and any((base / (m[1] + m[2])).resolve().is_file() for base in (ROOT, f.parent)):
            continue  # a path to a page of the repository that happens to carry such a name
        bad.append(f"cites a design note outside the repository: {text[max(0, m.start() - 60):m.end() + 20]!r}")
    for m in _SECTION.finditer(text):
        line_start = text.rfind("\n", 0, m.start()) + 1
        before = text[max(0, m.start() - 120):m.start()]
        if text.startswith("|", line_start):  # a table row: its header may name the source
            lines = text[:line_start].split("\n")[:-1]
            while lines and lines[-1].startswith("|"):
                before = lines.pop() + before
        if not _CITED_WORK.search(before):
            bad.append(f"section sign without the work it cites: {text[max(0, m.start() - 60):m.end() + 20]!r}")
    for m in _OUTSIDE_PATH.finditer(text):
        bad.append(f"path outside the repository: {text[max(0, m.start() - 60):m.end() + 40]!r}")
    return bad


def test_citations_resolve_inside_the_repository():
    """Every citation leads somewhere a reader has: no file outside the repository is named (the project's
    design notes, the shared folder beside the repository), and every relative markdown link points at a file
    of the repository."""
    problems = [f"{f.relative_to(ROOT)}: {p}" for f in _sources() for text, md in _texts(f) for p in _unfollowable(f, text, md)]
    assert not problems, f"{len(problems)} citations a reader cannot follow:\n" + "\n".join(problems)


def test_citation_check_catches_what_it_should():
    """The checker itself: each kind of unfollowable citation is found, and a link that resolves is not."""
    nb, page = ROOT / "nbs" / "x.ipynb", ROOT / "docs" / "pages" / "x.md"
    note, shared = _NOTES[0], "shared"
    assert _unfollowable(nb, f"as the code does (`{note}.md` \u00a70)", True)
    assert _unfollowable(nb, f"the layer by its definition ({note} \u00a73.2)", False)
    assert _unfollowable(nb, "the final norm is a TimestepNorm (\u00a78.15)", True)
    assert not _unfollowable(nb, "Ma et al. (2024, \u00a73.2) describe it; > Megalodon, \u00a73.3 (in our words)", True)
    assert not _unfollowable(page, "| component | paper |\n|---|---|\n| CEMA | \u00a73.1 |", True)
    for name in _NOTES[1:] + _NOTES_MD:
        assert _unfollowable(page, f"targets of `{name}.md`", False), name
    assert _unfollowable(nb, f"see [the notes](../../{shared}/design/notes.md)", True)
    assert _unfollowable(nb, f"read ../{shared}/design/notes first", False)
    assert _unfollowable(nb, "see [the notes](../../outside.md)", True)
    assert _unfollowable(nb, "see [the page](../docs/pages/no-such-page.md#x)", True)
    assert not _unfollowable(nb, "see [deviations](../docs/pages/deviations.md#rope) and [CEMA](01_cema.ipynb)", True)
    assert not _unfollowable(page, "[CEMA](../../nbs/01_cema.ipynb), [paper](https://arxiv.org/abs/2404.08801), [top](#top)", True)
    assert not _unfollowable(nb, "a fast performance and a clean architecture", True)
    assert not _unfollowable(nb, "(see [limits](../docs/pages/deviations.md#x))", False)
    assert not _unfollowable(nb, "see docs/pages/changelog.md", False)
    assert _unfollowable(nb, f"see docs/nowhere/{_NOTES_MD[0]}.md or docs/{_NOTES[1]}.md", False)
