"""The documentation site builds (`make docs`, Sphinx with warnings as errors) and its CEMA pages
carry what a reader needs: rendered math, the stored plots, API entries, and a local MathJax."""
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
