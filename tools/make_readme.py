"""README.md from nbs/index.ipynb, nbdev's README convention (`nbdev-readme` itself needs Quarto).

    python tools/make_readme.py            write README.md
    python tools/make_readme.py --check    exit 1 (and say why) when README.md is not what would be written

What goes in: markdown cells as they are; code cells as Python blocks followed by their stored
text outputs. What stays out: cells flagged `#| hide`, `#| export…`, `#| include: false`
(and the code of `#| echo: false` cells). Relative links are rebased from nbs/ to the root.
tools/docs.sh writes it; tools/check_sync.py checks it (so `make test` fails when it is stale)."""
import json, os, re, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "nbs" / "index.ipynb"
README = ROOT / "README.md"
HEADER = "<!-- Generated from nbs/index.ipynb by tools/make_readme.py (make docs): edit the notebook, not this file. -->\n"
DROP = {"hide", "export", "exports", "exporti", "default_exp"}
# A markdown link or image target that is a relative path (no scheme, no anchor-only, no absolute path).
RE_LINK = re.compile(r"(\]\()(?![a-zA-Z][a-zA-Z0-9+.-]*:|#|/)([^)\s]+)(\))")


def text(x) -> str:
    return "".join(x) if isinstance(x, list) else (x or "")


def directives(source: str) -> dict:
    """Leading `#| key: value` lines -> {key: value}; a bare `#| hide` -> {"hide": ""}."""
    out = {}
    for line in source.splitlines():
        if not line.startswith("#|"):
            break
        key, _, value = line[2:].strip().partition(":")
        for word in key.split():  # `#| export` and `#| hide` may share a line
            out[word] = value.strip().lower()
    return out


def rebase(md: str) -> str:
    """Links written relative to nbs/ (where the notebook lives), rewritten relative to the root."""
    def fix(m):
        path, _, anchor = m[2].partition("#")
        new = os.path.relpath(os.path.normpath(os.path.join("nbs", path)), ".").replace(os.sep, "/")
        return f"{m[1]}{new}{'#' + anchor if anchor else ''}{m[3]}"
    return RE_LINK.sub(fix, md)


def outputs_md(outputs) -> list[str]:
    parts = []
    for o in outputs:
        kind, data = o.get("output_type"), o.get("data", {})
        if kind == "error":
            sys.exit(f"make_readme: {SOURCE.name} has a stored error output ({o.get('ename')}); re-run the notebook")
        if kind == "stream" and o.get("name") == "stdout":
            parts.append("```\n" + text(o.get("text")).rstrip("\n") + "\n```")
        elif "text/markdown" in data:
            parts.append(text(data["text/markdown"]).strip("\n"))
        elif "text/plain" in data:
            parts.append("```\n" + text(data["text/plain"]).rstrip("\n") + "\n```")
        # Images and HTML have no stable place in a README: they live on the site.
    return parts


def render(nb: dict) -> str:
    parts = []
    for cell in nb["cells"]:
        src = text(cell.get("source"))
        opts = directives(src)
        if DROP & opts.keys() or opts.get("include") == "false":
            continue
        if cell["cell_type"] == "markdown":
            if src.strip():
                parts.append(rebase(src.strip("\n")))
        elif cell["cell_type"] == "code":
            code = "\n".join(l for l in src.splitlines() if not l.startswith("#|")).strip("\n")
            if code and opts.get("echo") != "false":
                parts.append("```python\n" + code + "\n```")
            if opts.get("output") != "false":
                parts += outputs_md(cell.get("outputs", []))
    return HEADER + "\n" + "\n\n".join(parts) + "\n"


def main(argv):
    want = render(json.loads(SOURCE.read_text(encoding="utf-8")))
    if "--check" in argv:
        have = README.read_text(encoding="utf-8") if README.exists() else ""
        if have != want:
            print("README.md is stale: it is generated from nbs/index.ipynb. Run `make docs` "
                  "(or `python tools/make_readme.py`) and commit README.md.")
            return 1
        print("README.md matches nbs/index.ipynb")
        return 0
    if not README.exists() or README.read_text(encoding="utf-8") != want:
        README.write_text(want, encoding="utf-8")
        print("make_readme: README.md written from nbs/index.ipynb")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
