"""The documentation site builds (`make docs`, Sphinx with warnings as errors), has a page for every
notebook plus the hand-written pages, and its pages carry what a reader needs: rendered math, the
stored plots, API entries with source links, and a local MathJax. README.md is generated from
nbs/index.ipynb. (tests/test_site_browser.py looks at the same site in a real browser.)"""
import re, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
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


@pytest.mark.parametrize("name,needle", [("deviations", "RoPE"), ("deviations", "megalodon-hf"), ("changelog", "Unreleased")])
def test_hand_written_pages(site, name, needle):
    html = page(site, name)
    assert needle in html
    # they are in the navigation of the landing page
    assert f'href="{name}.html"' in page(site, "index")


def test_navigation_in_notebook_order(site):
    from nbdev.config import nbpath2html
    names = [nbpath2html(Path(nb.name)).with_suffix("").as_posix() for nb in sorted((ROOT / "nbs").glob("*.ipynb"))]
    names = [n for n in names if n != "index"]
    nav = re.findall(r'<a class="reference internal" href="([\w/.-]+)\.html">', page(site, "index").split('class="bd-links')[1])
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
