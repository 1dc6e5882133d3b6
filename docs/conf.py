"""Sphinx configuration for rsmooth. Builds offline: intersphinx is on only with RSMOOTH_DOCS_INTERSPHINX=1."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import rsmooth  # noqa: E402

project = "rsmooth"
author = "rsmooth developers"
copyright = "2026, rsmooth developers"
release = rsmooth.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # MathJax itself, copied into the build: see mathjax_path below
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
# "Shape" is a plain section: its lines are a bullet list ("- inputs: ..."), not parameters
# (as parameters each rendered as a bold "- inputs" item).
napoleon_custom_sections = ["Shape", ("Warns", "params_style")]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": False}
# Maths renders with no network: MathJax 3 comes from the sphinx-mathjax-offline package (docs
# extra) and is copied into the build's _static/mathjax, instead of being loaded from a CDN (which
# showed raw LaTeX offline). The SVG output draws every glyph as a path, so no web font has to be
# loaded either (browsers may refuse fonts on file:// pages). The extension sets its own
# mathjax_path (the CHTML output, which needs fonts) when it loads; setup() below sets ours after it.
MATHJAX_PATH = "mathjax/tex-svg.js"
# textmacros: \_ and the like inside \text{} and \texttt{} (e.g. \texttt{max\_n}) render as in LaTeX.
mathjax3_config = {
    "loader": {"load": ["[tex]/textmacros"]},
    "tex": {"packages": {"[+]": ["textmacros"]}},
}
html_theme = "furo"
html_title = "rsmooth"
html_static_path = ["_static"]
html_css_files = ["rsmooth.css"]  # wrapped code lines, one-line table headers, wide equations
exclude_patterns = [
    "_build",
    "results/*.md",
    "results/*/*.md",
    "performance/*.md",
]  # the benchmarks' own tables (benchmarks/reproduce.py, certify_throughput.py, certify_table.py)
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


class CommandOutput(SphinxDirective):
    """``.. rsmooth-output:: ARGS`` runs ``rsmooth ARGS`` in the repository root during the build.

    It shows the command and what it prints on stdout, so that the numbers a page quotes from a
    tool are the tool's (``rsmooth plan --from docs/results/gaussian.tsv``, ``rsmooth report``).
    A command that fails fails the build.
    """

    required_arguments = 1
    final_argument_whitespace = True

    def run(self) -> list[nodes.Node]:
        import contextlib
        import io
        import shlex

        from rsmooth.cli import main

        command = " ".join(self.arguments[0].split())
        argv = shlex.split(command)
        for arg in argv:  # rebuild the page when a file it reads changes
            if (ROOT / arg).is_file():
                self.env.note_dependency(str(ROOT / arg))
        out, err = io.StringIO(), io.StringIO()
        here = os.getcwd()
        os.chdir(ROOT)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                status = main(argv)
        finally:
            os.chdir(here)
        if status != 0:
            raise self.error(f"rsmooth {command} exited with {status}: {err.getvalue()}")
        text = f"$ rsmooth {command}\n{out.getvalue().rstrip()}"
        return [nodes.literal_block(text, text, language="none")]


def setup(app):
    app.config.mathjax_path = MATHJAX_PATH
    app.add_directive("rsmooth-output", CommandOutput)
    app.add_directive("rsmooth-help", CommandHelp)
