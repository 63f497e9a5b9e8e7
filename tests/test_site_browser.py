"""The documentation site and the notebooks as a reader meets them, in headless Chromium driven over
the Chrome DevTools Protocol (tools/cdp.py; Debian's `chromium`, installed by
tools/ensure_chromium.sh when missing).

Site: built by tools/docs.sh (incremental, so a build made earlier in the run is reused), served
on 127.0.0.1; every notebook page and hand-written page must load without console errors or
failed requests, show its plots as loaded images, have its math typeset by the local MathJax
(no raw `$$`, no MathJax errors), and carry an API entry with a working "source" link for every
public symbol nbdev indexed for that page. Search must find a symbol.

JupyterLab: started as `make lab` starts it (loopback, a token, --allow-root as root) on a copy
of nbs/ (the run must not rewrite the tracked notebooks); 02_cema_paths.ipynb is run with the
menu's Run → Run All Cells and must finish with every cell executed and no error output. A control
notebook that raises shows that the check sees errors.

Screenshots (home page, one notebook page, JupyterLab after the run) go to build/screenshots/."""
import ast, json, os, re, secrets, shutil, subprocess, sys, time, urllib.request
import functools, http.server, threading
from html import unescape
from pathlib import Path

import pytest

from conftest import ROOT, free_port  # noqa: E402
sys.path.insert(0, str(ROOT / "tools"))
from cdp import Browser, CDPError  # noqa: E402

HTML = ROOT / "docs" / "_build" / "html"
SRC = ROOT / "docs" / "_nbs"
SHOTS = ROOT / "build" / "screenshots"
LAB = ROOT / "build" / "lab"
LAB_NOTEBOOK = "02_cema_paths.ipynb"


def page_names() -> list[str]:
    """nbdev's page name of every notebook in nbs/ (`02_cema_paths.ipynb` -> `cema_paths`)."""
    from nbdev.config import nbpath2html
    return [nbpath2html(Path(p.name)).with_suffix("").as_posix() for p in sorted((ROOT / "nbs").glob("*.ipynb"))]


def extra_pages() -> list[str]:
    return sorted(p.stem for p in (ROOT / "docs" / "pages").glob("*.md"))


def screenshot_page() -> str:
    """A kernel page once nbs/1x_triton_* exists, else the CEMA paths page."""
    from nbdev.config import nbpath2html
    kernels = sorted((ROOT / "nbs").glob("1?_triton_*.ipynb"))
    return nbpath2html(Path(kernels[0].name)).with_suffix("").as_posix() if kernels else "cema_paths"


def public_symbols(page: str) -> list[str]:
    """Top-level public names that nbdev's index (`_modidx.py`) documents on `page`."""
    tree = ast.parse((ROOT / "megalodon_lit" / "_modidx.py").read_text(encoding="utf-8"))
    d = next(ast.literal_eval(n.value) for n in tree.body
             if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "d")
    out = []
    for mod, syms in d["syms"].items():
        for qual, (url, _) in syms.items():
            short = qual[len(mod) + 1:]
            if url.split("#")[0] == f"{page}.html" and "." not in short and not short.startswith("_"):
                out.append(short)
    return sorted(out)


def expected_images(page: str) -> int:
    """Plots the page must show: image outputs kept on the page, plus markdown images."""
    nb = json.loads((SRC / f"{page}.ipynb").read_text(encoding="utf-8"))
    n = 0
    for c in nb["cells"]:
        if c["cell_type"] == "markdown":
            n += len(re.findall(r"!\[[^\]]*\]\(", "".join(c["source"])))
        elif "remove-output" not in c.get("metadata", {}).get("tags", []):
            n += sum(any(k.startswith("image/") for k in o.get("data", {})) for o in c.get("outputs", []))
    return n


# ---------------------------------------------------------------------------------------------
# fixtures

@pytest.fixture(scope="module")
def chromium():
    res = subprocess.run(["bash", str(ROOT / "tools" / "ensure_chromium.sh")], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, f"no chromium:\n{res.stderr[-3000:]}"
    return res.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def browser(chromium):
    with Browser(chromium, width=1280, height=900) as b:
        yield b


@pytest.fixture(scope="module")
def site():
    """Base URL of the built site, served from docs/_build/html on a free loopback port."""
    res = subprocess.run(["bash", str(ROOT / "tools" / "docs.sh")], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, f"docs build failed:\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}"

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(HTML)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def page(browser):
    p = browser.new_page()
    yield p
    p.close()


def open_page(page, url: str) -> dict:
    """Load `url`, let MathJax finish typesetting, and describe what the reader sees."""
    page.goto(url)
    page.eval("window.MathJax && MathJax.startup && MathJax.startup.promise"
              " ? MathJax.startup.promise.then(() => true) : false", await_promise=True, timeout=60)
    return page.eval("""(() => {
      const a = document.querySelector('article') || document.body;
      const text = (() => { const c = a.cloneNode(true);
        c.querySelectorAll('pre, code, script, style, mjx-container').forEach(e => e.remove()); return c.innerText; })();
      return {
        h1: (a.querySelector('h1') || {}).innerText || '',
        images: [...a.querySelectorAll('img')].map(i => ({src: i.getAttribute('src'), complete: i.complete,
                  w: i.naturalWidth, h: i.naturalHeight, shown: i.getBoundingClientRect().width})),
        math: a.querySelectorAll('.math').length,
        typeset: [...a.querySelectorAll('.math')].filter(m => m.querySelector('mjx-container')).length,
        merror: a.querySelectorAll('mjx-merror').length,
        raw_dollars: (text.match(/\\$\\$/g) || []).length,
        mathjax_src: [...document.scripts].map(s => s.src).filter(s => /mathjax/i.test(s)),
      }; })()""")


# ---------------------------------------------------------------------------------------------
# the site

@pytest.mark.parametrize("name", ["index"] + [n for n in page_names() if n != "index"] + extra_pages())
def test_page_reads_in_a_browser(site, page, name):
    seen = open_page(page, f"{site}/{name}.html")
    assert page.problems() == [], f"{name}.html: console errors or failed loads: {page.problems()}"
    assert seen["h1"].strip(), f"{name}.html has no visible title"

    want = expected_images(name) if (SRC / f"{name}.ipynb").exists() else 0
    assert len(seen["images"]) >= want, f"{name}.html shows {len(seen['images'])} images, the notebook has {want} plots"
    for img in seen["images"]:
        assert img["complete"] and img["w"] > 0 and img["h"] > 0 and img["shown"] > 0, f"{name}.html: image not shown: {img}"

    assert seen["typeset"] == seen["math"], f"{name}.html: {seen['math'] - seen['typeset']} of {seen['math']} formulas not typeset"
    assert seen["merror"] == 0, f"{name}.html: {seen['merror']} MathJax errors"
    assert seen["raw_dollars"] == 0, f"{name}.html: raw $$ left in the text"
    if seen["math"]:
        assert seen["mathjax_src"] and all(s.startswith(site) for s in seen["mathjax_src"]), seen["mathjax_src"]


@pytest.mark.parametrize("name", [n for n in page_names() if public_symbols(n)])
def test_api_entries_with_source_links(site, page, name):
    page.goto(f"{site}/{name}.html")
    symbols = public_symbols(name)
    entries = page.eval("""((names) => names.map(n => {
        const e = document.getElementById(n) || document.getElementById(n.toLowerCase());
        const sec = e && (e.tagName === 'SECTION' ? e : e.closest('section'));
        const link = sec && sec.querySelector(':scope > p > a.source-link');
        return [n, !!e, link ? link.getAttribute('href') : null];
      }))(%s)""" % json.dumps(symbols))
    missing = [n for n, found, _ in entries if not found]
    assert not missing, f"{name}.html: no API entry for {missing}"
    unlinked = [n for n, _, href in entries if not href]
    assert not unlinked, f"{name}.html: API entries without a source link: {unlinked}"
    for n, _, href in entries:
        path, _, anchor = href.partition("#")
        target = HTML / path
        assert target.exists(), f"{name}.html: source link of {n} points to a missing page {href}"
        html = target.read_text(encoding="utf-8")
        m = re.search(rf'<a id="{re.escape(anchor)}"[^>]*></a>((?:.*\n){{1,6}})', html)
        assert m, f"{name}.html: source link of {n}: no line {anchor} in {path}"
        # The linked line is the definition of n, or the first of its decorators.
        lines = [unescape(re.sub(r"<[^>]+>", "", re.sub(r'<span class="linenos">[^<]*</span>', "", l))) for l in m[1].splitlines()]
        k = next((i for i, l in enumerate(lines) if re.match(rf"(async\s+)?(def|class)\s+{re.escape(n)}\b|{re.escape(n)}\s*[:=]", l)), None)
        assert k is not None and all(l.startswith("@") for l in lines[:k]), f"{name}.html: source link of {n} lands on: {lines}"


def test_source_link_opens_the_code(site, page):
    page.goto(f"{site}/cema_paths.html")
    page.click_element("document.querySelector('#cema_fft').closest('section').querySelector('a.source-link')")
    page.wait_for("location.pathname.includes('_modules/megalodon_lit/cema.html') && document.readyState === 'complete'", 30)
    # The text of the anchored line and the two after it: the siblings after its anchor, up to the third line anchor.
    line = page.eval("""(() => { const a = document.getElementById(location.hash.slice(1)); if (!a) return null;
      let t = '', k = 0, n = a.nextSibling; while (n && k < 3) { if (n.tagName === 'A' && n.id.startsWith('L-')) k += 1; else t += n.textContent; n = n.nextSibling; }
      return t; })()""")
    assert line is not None, "the source page has no anchor for the linked line"
    # the definition itself, or its decorators and then the definition (each line starts with its line number)
    lines = [re.sub(r"^\d+", "", l) for l in line.splitlines()]
    k = next((i for i, l in enumerate(lines) if re.match(r"\s*def cema_fft\(", l)), None)
    assert k is not None and all(l.lstrip().startswith("@") for l in lines[:k]), f"the link lands on {line!r}"
    assert page.problems() == [], page.problems()


def test_search_finds_a_symbol(site, page):
    page.goto(f"{site}/search.html?q=TimestepNorm")
    # Sphinx lists hits one at a time; its status line says "Search finished" when the list is complete.
    page.wait_for("document.querySelector('p.search-summary') !== null && "
                  "document.querySelector('p.search-summary').innerText.includes('Search finished')", 30)
    hits = page.eval("[...document.querySelectorAll('ul.search li a')].map(a => a.getAttribute('href'))")
    assert any(h.startswith("timestep_norm.html") for h in hits), hits
    assert page.problems() == [], page.problems()


def test_screenshots(site, page):
    """The home page, and one notebook page at its first plot and at its first displayed formula."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    open_page(page, f"{site}/index.html")
    page.screenshot(SHOTS / "site_home.png")
    name = screenshot_page()
    open_page(page, f"{site}/{name}.html")
    for what, sel in [("plot", "article img"), ("math", "article div.math mjx-container")]:
        assert page.eval(f"(() => {{ const e = document.querySelector({json.dumps(sel)}); if (!e) return false;"
                         " e.scrollIntoView({block: 'center'}); return true; })()"), f"{name}.html: no {sel}"
        time.sleep(0.3)
        page.screenshot(SHOTS / f"site_{name}_{what}.png")
    for f in ["site_home.png", f"site_{name}_plot.png", f"site_{name}_math.png"]:
        assert (SHOTS / f).stat().st_size > 10_000, f"{f} looks empty"


# ---------------------------------------------------------------------------------------------
# JupyterLab

@pytest.fixture(scope="module")
def lab():
    """JupyterLab as `make lab` starts it, on a copy of nbs/ in build/lab/, with its own settings:
    every cell rendered (no windowing, so the DOM holds the whole notebook) and no news pop-up."""
    shutil.rmtree(LAB, ignore_errors=True)
    shutil.copytree(ROOT / "nbs", LAB / "nbs", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    settings = LAB / "settings" / "@jupyterlab"
    (settings / "notebook-extension").mkdir(parents=True)
    (settings / "notebook-extension" / "tracker.jupyterlab-settings").write_text('{"windowingMode": "none"}')
    (settings / "apputils-extension").mkdir(parents=True)
    (settings / "apputils-extension" / "notification.jupyterlab-settings").write_text('{"fetchNews": "false", "checkForUpdates": false}')
    control = {"cells": [{"cell_type": "code", "execution_count": None, "id": f"c{i}", "metadata": {}, "outputs": [], "source": s}
                         for i, s in enumerate(["x = 1", "1 / 0", "x + 1"])],
               "metadata": {"kernelspec": {"display_name": "python3", "language": "python", "name": "python3"}},
               "nbformat": 4, "nbformat_minor": 5}
    (LAB / "nbs" / "control_error.ipynb").write_text(json.dumps(control))

    port, token = free_port(), secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}  # plots inline, as for a reader
    env["JUPYTER_CONFIG_DIR"] = str(LAB / "config")
    cmd = [str(ROOT / ".venv" / "bin" / "jupyter"), "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
           "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=None",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
           f"--LabServerApp.user_settings_dir={LAB / 'settings'}", f"--LabServerApp.workspaces_dir={LAB / 'workspaces'}"]
    if os.geteuid() == 0:
        cmd.append("--allow-root")
    log = open(LAB / "jupyter.log", "w")
    proc = subprocess.Popen(cmd, cwd=LAB / "nbs", env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5).read()
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail(f"JupyterLab did not start:\n{(LAB / 'jupyter.log').read_text()[-3000:]}")
            time.sleep(0.5)
    yield base, token
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def run_all_in_lab(page, base: str, token: str, notebook: str, timeout: float = 600) -> dict:
    """Open `notebook` in JupyterLab, wait for its kernel, click Run → Run All Cells, wait until
    nothing runs any more, and report what the notebook shows."""
    page.goto(f"{base}/lab/tree/{notebook}?reset&token={token}", timeout=120)
    kernel = """(() => { if (document.querySelector('.jp-Dialog .jp-mod-accept')) return 'dialog';
      const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
      const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
      return k ? k.status : 'none'; })()"""
    deadline = time.time() + 180
    while (state := page.eval(kernel)) != "idle":
        if state == "dialog":  # "Select Kernel": accept the proposed one, as a reader would
            page.click_element("document.querySelector('.jp-Dialog .jp-mod-accept')")
        if time.time() > deadline:
            raise CDPError(f"{notebook}: kernel not ready (state {state})")
        time.sleep(0.5)
    page.wait_for("document.querySelectorAll('.jp-Notebook .jp-CodeCell').length > 0", 60)

    # Whether a cell was ever queued ([*]) after the click, however quickly the run ends.
    page.eval("""(() => { window.__queued = false; const nb = document.querySelector('.jp-Notebook');
      const look = () => { if ([...nb.querySelectorAll('.jp-InputPrompt')].some(e => e.innerText.includes('*'))) window.__queued = true; };
      new MutationObserver(look).observe(nb, {subtree: true, childList: true, characterData: true}); })()""")
    page.click_element("[...document.querySelectorAll('.lm-MenuBar-item')].find(e => e.innerText.trim() === 'Run')")
    item = "[...document.querySelectorAll('.lm-Menu-item')].find(e => (e.querySelector('.lm-Menu-itemLabel') || {}).innerText === 'Run All Cells')"
    page.wait_for(f"!!{item}", 10)
    page.click_element(item)
    page.wait_for("window.__queued", 30, 0.1)
    page.wait_for(f"{kernel} === 'idle' && ![...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].some(e => e.innerText.includes('*'))", timeout, 1)
    time.sleep(1)  # the last outputs render
    return page.eval("""(() => {
      const cells = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell')];
      const model = window.jupyterapp.shell.currentWidget.context.model.toJSON().cells.filter(c => c.cell_type === 'code');
      return {
        prompts: cells.map(c => (c.querySelector('.jp-InputPrompt') || {}).innerText || ''),
        empty: cells.map(c => !(c.querySelector('.jp-InputArea-editor') || {}).innerText?.trim()),
        tracebacks: [...document.querySelectorAll('.jp-OutputArea-output')].filter(o => /Traceback|Error\\b.*\\n/.test(o.innerText)
                      && o.getAttribute('data-mime-type') === 'application/vnd.jupyter.stderr').length,
        errors: model.flatMap(c => (c.outputs || []).filter(o => o.output_type === 'error').map(o => o.ename + ': ' + o.evalue)),
        model_images: model.flatMap(c => c.outputs || []).filter(o => o.data && o.data['image/png']).length,
        dom_images: [...document.querySelectorAll('.jp-RenderedImage img')].filter(i => i.naturalWidth > 0).length,
      }; })()""")


def test_lab_check_sees_errors(browser, lab):
    """The control: a notebook whose second cell raises is reported, and run-all stops there."""
    page = browser.new_page()
    try:
        seen = run_all_in_lab(page, *lab, "control_error.ipynb", timeout=120)
    finally:
        page.close()
    assert seen["errors"] == ["ZeroDivisionError: division by zero"], seen
    assert seen["tracebacks"] == 1, seen
    assert re.fullmatch(r"\[\s*\]:", seen["prompts"][2].strip()), seen["prompts"]


def test_lab_run_all_cema_paths(browser, lab):
    page = browser.new_page()
    try:
        seen = run_all_in_lab(page, *lab, LAB_NOTEBOOK)
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(SHOTS / f"lab_{Path(LAB_NOTEBOOK).stem}.png")
        problems = page.problems()
    finally:
        page.close()
    assert seen["errors"] == [] and seen["tracebacks"] == 0, seen
    unrun = [i for i, (p, empty) in enumerate(zip(seen["prompts"], seen["empty"])) if not empty and not re.search(r"\[\d+\]", p)]
    assert not unrun, f"{LAB_NOTEBOOK}: code cells not run: {unrun} ({seen['prompts']})"
    assert seen["model_images"] > 0 and seen["dom_images"] == seen["model_images"], seen
    assert problems == [], problems
