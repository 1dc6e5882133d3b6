"""Sphinx configuration for rsmooth. Builds offline: intersphinx is on only with RSMOOTH_DOCS_INTERSPHINX=1."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import rsmooth

project = "rsmooth"
author = "rsmooth developers"
copyright = "2026, rsmooth developers"
release = rsmooth.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinxcontrib.bibtex",
    "myst_parser",
]
if os.environ.get("RSMOOTH_DOCS_INTERSPHINX") == "1":
    extensions.append("sphinx.ext.intersphinx")
    intersphinx_mapping = {
        "python": ("https://docs.python.org/3", None),
        "torch": ("https://pytorch.org/docs/stable", None),
        "numpy": ("https://numpy.org/doc/stable", None),
        "scipy": ("https://docs.scipy.org/doc/scipy", None),
    }

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
bibtex_bibfiles = ["references.bib"]
bibtex_reference_style = "author_year"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_custom_sections = [("Shape", "params_style"), ("Warns", "params_style")]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": False}
# MathJax is loaded from the page at view time; nothing is fetched at build time.
html_theme = "furo"
html_title = "rsmooth"
exclude_patterns = ["_build"]
nitpicky = False
suppress_warnings = ["myst.header"]


# ``.. rsmooth-help:: COMMAND`` renders the command line's --help text, so the docs cannot drift
# from the parser (sphinx-argparse is not a dependency).
from docutils import nodes  # noqa: E402
from sphinx.util.docutils import SphinxDirective  # noqa: E402


class CommandHelp(SphinxDirective):
    optional_arguments = 1

    def run(self) -> list[nodes.Node]:
        import argparse

        from rsmooth.cli import build_parser

        os.environ["COLUMNS"] = "92"
        parser = build_parser()
        if self.arguments:
            (commands,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
            parser = commands.choices[self.arguments[0]]
        text = parser.format_help()
        return [nodes.literal_block(text, text, language="none")]


def setup(app):
    app.add_directive("rsmooth-help", CommandHelp)
