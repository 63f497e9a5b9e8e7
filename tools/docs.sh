#!/usr/bin/env bash
# The documentation site, as `make docs` builds it: nbs/*.ipynb -> docs/_build/html/index.html.
# Quarto (nbdev's own renderer) cannot be installed from the registries this project reaches,
# so Sphinx + myst-nb render the notebooks as nbdev processes them (see docs/conf.py).
# It also writes README.md from nbs/index.ipynb (tools/make_readme.py).
# Options: --force reprocesses every notebook (nbdev's _proc/ cache is used otherwise).
set -euo pipefail
cd "$(dirname "$0")/.."
# nbdev runs the show_doc cells, importing the package: no GPU, Triton on its CPU interpreter.
export TRITON_INTERPRET=1 MPLBACKEND=Agg PYTHONHASHSEED=0

.venv/bin/python -c 'import importlib.util as u, sys; sys.exit(u.find_spec("sphinx-mathjax-offline") is None)' \
  || { echo "docs: sphinx-mathjax-offline is missing from .venv (run 'make setup')" >&2; exit 1; }

# One build at a time (pytest workers may ask for the site together): they share _proc/ and docs/.
mkdir -p docs/_build
exec 9>docs/_build/.lock
flock 9

# 0. README.md from nbs/index.ipynb (nbdev's README convention; nbdev-readme needs Quarto).
.venv/bin/python tools/make_readme.py

# 1. _proc/ (nbdev: hidden cells out, show_doc in) -> docs/_nbs/ (pages myst-nb can read).
.venv/bin/python tools/docs_prep.py "$@"

# 2. The site. -W: a warning fails the build; -q: only warnings and errors are printed;
#    doctrees outside the site so they are not published with it.
.venv/bin/sphinx-build -W --keep-going -q -b html -c docs -d docs/_build/doctrees \
  docs/_nbs docs/_build/html \
  || { echo "docs: sphinx-build failed (warnings count as errors); see above" >&2; exit 1; }

echo "docs: docs/_build/html/index.html"
