# Sphinx configuration for the megalodon-lit documentation site.
# The pages are the notebooks in nbs/, prepared by tools/docs_prep.py into docs/_nbs/, which is
# the source folder (`sphinx-build -c docs docs/_nbs ...`, see tools/docs.sh); this file
# stays in docs/ so the generated folder can be wiped at will.
project = "megalodon-lit"
author = "megalodon-lit developers"
copyright = "megalodon-lit developers"

extensions = [
    "myst_nb",
    # MathJax 3.2.2 from a PyPI package, copied into _static/mathjax/: the site reads offline
    # (Sphinx's default loads MathJax from a CDN).
    "sphinx-mathjax-offline",
]
mathjax_path = "mathjax/tex-chtml.js"  # relative to _static/; the extension ships this file

root_doc = "index"  # the processed nbs/index.ipynb, with the toctree of all other notebooks
exclude_patterns = ["**.ipynb_checkpoints"]

# Notebooks are shown with the outputs stored in them (plots, GPU tables): never re-run here.
nb_execution_mode = "off"
nb_merge_streams = True
# Markdown outputs (ErrorTable and the like) are parsed like the page's markdown: tables, math.
nb_render_markdown_format = "myst"
myst_enable_extensions = ["dollarmath", "amsmath"]
# Anchors for headings down to `###` (show_doc entries), so links like page.ipynb#rel_err work.
myst_heading_anchors = 3

html_theme = "sphinx_book_theme"
html_title = "megalodon-lit"
html_theme_options = {
    "home_page_in_toc": True,  # the landing page leads the navigation, then 00_core, 01_…
    "show_navbar_depth": 1,
    "show_toc_level": 2,  # right-hand "on this page": sections and show_doc entries
    "use_download_button": False,  # _sources is not shipped (below)
}
# The processed notebooks (with every PNG inline) need not be shipped a second time.
html_copy_source = False
html_show_sourcelink = False


def setup(app):
    # The sources are the generated docs/_nbs/, not docs/: say so instead of failing obscurely.
    if app.srcdir == app.confdir:
        from sphinx.errors import ConfigError
        raise ConfigError("build the site with `make docs` (tools/docs.sh): "
                          "the sources are docs/_nbs/, generated from nbs/ (sphinx-build -c docs docs/_nbs ...)")
