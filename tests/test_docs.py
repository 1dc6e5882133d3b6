"""The API reference documents every public name, and the docs build without warnings."""

import importlib
import itertools
import posixpath
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
MODULES = [
    "rsmooth",
    "rsmooth.certificates",
    "rsmooth.denoised",
    "rsmooth.losses",
    "rsmooth.metrics",
    "rsmooth.procedures",
    "rsmooth.results",
    "rsmooth.runner",
    "rsmooth.sequential",
    "rsmooth.shards",
    "rsmooth.stats",
    "rsmooth.training",
]
OPTIONAL = [
    "rsmooth.attacks",
    "rsmooth.datasets",
    "rsmooth.plotting",
    "rsmooth.functional",
    "rsmooth.models",
]


def public_names():
    names = []
    for module_name in MODULES + OPTIONAL:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            assert module_name in OPTIONAL, module_name
            continue
        names += [(module_name, name) for name in module.__all__]
    return names


def api_text():
    return "\n".join(path.read_text() for path in sorted((DOCS / "api").glob("*.rst")))


@pytest.mark.parametrize(("module_name", "name"), public_names())
def test_every_public_name_is_in_the_api_reference(module_name, name):
    text = api_text()
    named = re.search(rf"(?<![\w.]){re.escape(module_name)}\.{re.escape(name)}\b", text) or (
        re.search(rf"::\s+{re.escape(name)}\b", text) and module_name == "rsmooth"
    )
    whole_module = re.search(
        rf"\.\. automodule:: {re.escape(module_name)}\n(?:\s+:[^\n]*\n)*?\s+:members:", text
    )
    assert named or whole_module, f"{module_name}.{name} is not in docs/api/*.rst"


def test_the_user_guide_is_in_the_toctree():
    index = (DOCS / "index.rst").read_text()
    assert "api/*" in index
    for page in ["quickstart", "concepts"] + [
        f"howto/{p.stem}" for p in sorted((DOCS / "howto").glob("*.rst"))
    ]:
        assert re.search(rf"^\s+{re.escape(page)}$", index, re.M), page
    for page in ("train", "certify", "distributed", "resume"):
        assert (DOCS / "howto" / f"{page}.rst").exists()


@pytest.mark.slow
def test_the_docs_build_without_warnings_and_index_every_public_name(tmp_path):
    pytest.importorskip("sphinx")
    pytest.importorskip("furo")
    pytest.importorskip("sphinxcontrib.bibtex")
    pytest.importorskip("myst_parser")
    done = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html", "-q", str(DOCS), str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-5000:]
    assert done.stderr.strip() == ""
    from sphinx.util.inventory import InventoryFile

    with open(tmp_path / "objects.inv", "rb") as handle:
        inventory = InventoryFile.load(handle, "", posixpath.join)
    documented = {name for objects in inventory.values() for name in objects}
    missing = [f"{m}.{n}" for m, n in public_names() if f"{m}.{n}" not in documented]
    assert not missing, f"not in the built API reference: {missing}"
    html = (tmp_path / "api" / "cli.html").read_text()
    assert "--no-progress" in html and "--plot" in html and "rsmooth merge" in html


def test_no_math_in_headings():
    # a heading's math shows as raw LaTeX in the sidebar and the page title
    underline = re.compile(r"([=\-~^\"#*+])\1{3,}")
    for path in sorted(DOCS.rglob("*.rst")):
        lines = path.read_text().splitlines()
        for title, below in itertools.pairwise(lines):
            if title.strip() and underline.fullmatch(below):
                assert ":math:" not in title and "\\(" not in title, f"{path.name}: {title}"
