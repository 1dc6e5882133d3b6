"""Every number the docs quote from a tool is the tool's: these tests recompute each one.

The outputs of ``rsmooth plan --from`` and ``rsmooth report`` on the docs' pages are produced by
the docs build itself (the ``rsmooth-output`` directive of ``docs/conf.py``); what is quoted in the
prose and in hand-written tables is checked here.
"""

import json
import re
from pathlib import Path

import pytest

from rsmooth.cli import main
from rsmooth.stats import max_certified_radius

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def text(relative: str) -> str:
    return " ".join((ROOT / relative).read_text().split())  # lines joined: phrases may wrap


def rsmooth_output(capsys, monkeypatch, *argv: str) -> str:
    monkeypatch.chdir(ROOT)
    assert main(list(argv)) == 0
    return capsys.readouterr().out


# ------------------------------------------------------------------------------- radius caps
def test_the_radius_cap_table_of_concepts():
    page = (DOCS / "concepts.rst").read_text()
    rows = re.findall(r"^([\d,]+)\s+(\d\.\d{3})\s+(\d\.\d{3})\s+(\d\.\d{3})$", page, re.M)
    assert [row[0] for row in rows] == ["100", "1,000", "10,000", "100,000", "1,000,000"]
    for n, *caps in rows:
        for alpha, cap in zip((0.001, 0.01, 0.05), caps, strict=True):
            assert f"{max_certified_radius(int(n.replace(',', '')), alpha, 1.0):.3f}" == cap


@pytest.mark.parametrize(
    ("relative", "phrase", "n", "alpha", "sigma", "digits"),
    [
        ("docs/concepts.rst", "sigma=0.5) # {cap}", 100_000, 0.001, 0.5, 3),
        ("docs/concepts.rst", "the {cap} seen in every sigma=0.5 log", 100_000, 0.001, 0.5, 2),
        ("README.md", "({cap}σ at n = 100,000, alpha = 0.001)", 100_000, 0.001, 1.0, 2),
        ("docs/results.rst", ": {cap} here instead", 10_000, 0.001, 0.5, 2),
        ("docs/results.rst", "here instead of {cap}", 100_000, 0.001, 0.5, 2),
        ("docs/results.rst", "certified beyond {cap}", 10_000, 0.001, 0.5, 2),
        ("docs/howto/recertify.rst", "the cap is {cap} at n = 100,000", 100_000, 0.001, 0.25, 3),
        ("docs/howto/recertify.rst", "{cap} at n = 10,000", 10_000, 0.001, 0.25, 3),
        ("docs/howto/recertify.rst", "{cap} at n = 1,000 noise", 1_000, 0.001, 0.25, 3),
        ("docs/howto/recertify.rst", "its largest radius is {cap}", 100_000, 0.001, 0.25, 3),
        ("docs/index.rst", "= {cap} can be certified", 1_000, 0.001, 0.5, 2),
        ("examples/demo.py", "no radius above {cap} can be", 10_000, 0.001, 0.5, 2),
    ],
)
def test_quoted_radius_caps(relative, phrase, n, alpha, sigma, digits):
    cap = f"{max_certified_radius(n, alpha, sigma):.{digits}f}"
    assert phrase.format(cap=cap) in text(relative), f"{relative}: {phrase.format(cap=cap)!r}"


# ------------------------------------------------------------------ Certify with fewer samples
def plan_ratio(capsys, monkeypatch) -> str:
    out = rsmooth_output(
        capsys, monkeypatch, "plan", "--sigma", "0.5", "--radii", "0.25", "0.5", "0.75", "1.0",
        "--from", "docs/results/gaussian.tsv",
    )  # fmt: skip
    (ratio,) = re.findall(r"against CERTIFY's 100,100: ([\d.]+)x fewer", out)
    return ratio


def test_the_fewer_samples_headline_is_what_rsmooth_plan_prints(capsys, monkeypatch):
    ratio = plan_ratio(capsys, monkeypatch)
    page = text("docs/howto/fewer_samples.rst")
    assert f"needs **{ratio}x fewer forward passes**" in page
    assert f"``certify_radius(x, radius=[...])`` (this page); {ratio}x cheaper" in page
    # the page shows the command's output from the docs build, not a copy
    assert (
        ".. rsmooth-output:: plan --sigma 0.5 --radii 0.25 0.5 0.75 1.0 --from docs/results/gaussian.tsv"
        in page
    )


def test_the_expected_cost_table_is_what_rsmooth_plan_prints(capsys, monkeypatch):
    out = rsmooth_output(
        capsys, monkeypatch, "plan", "--sigma", "0.5", "--radii", "0.25", "0.5", "0.75", "1.0"
    )
    tool = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 11 and re.fullmatch(r"0\.\d+", cells[0]):
            tool[float(cells[0])] = cells[1:7]
    page = (DOCS / "howto" / "fewer_samples.rst").read_text()
    rows = re.findall(r"^(0\.\d+)\s+([\d,]+)\s+([\d.]+)x\s+(.+)$", page, re.M)
    assert len(rows) == 7
    for p_a, samples, saving, probabilities in rows:
        expected = tool[float(p_a)]
        assert samples == expected[0], p_a
        digits = 1 if float(saving) < 10 else 0
        assert float(saving) == round(float(expected[1].rstrip("x")), digits), p_a
        for shown, value in zip(probabilities.split(), expected[2:], strict=True):
            assert float(shown) == round(float(value), 3), p_a


def test_the_measured_savings_are_the_benchmarks(capsys, monkeypatch):
    result = json.loads((DOCS / "results" / "efficiency" / "certify_efficiency.json").read_text())
    page = text("docs/howto/fewer_samples.rst")
    measured = f"{result['samples_ratio']:.1f}"
    with_labels = f"{result['label_mode']['samples_ratio']:.1f}"
    assert f"{measured}x measured on a GPU, {with_labels}x when the labels" in page
    assert f"**{measured}×**" in page and f"{with_labels}× fewer than CERTIFY" in page
    mean = result["samples_per_input"]["sequential"]["mean"]
    assert f"- {mean:,.0f}" in page


# ------------------------------------------------------------------------------ the CLI page
def test_the_command_line_page_says_each_thing_once():
    page = (DOCS / "api" / "cli.rst").read_text()
    module_doc = __import__("rsmooth.cli").cli.__doc__
    assert "RSMOOTH_DEBUG" in module_doc  # rendered on the page by automodule
    assert page.count("RSMOOTH_DEBUG") == 1  # the page's own example, no second explanation
    assert "four subcommands" not in page  # the module docstring names them


# --------------------------------------------------------------------------- the CPU table
def _csv_row(caption: str, label: str) -> list[str]:
    """The cells after the label of the row ``label`` in the Performance page's csv-table whose
    caption starts with ``caption``."""
    page = (DOCS / "performance.rst").read_text()
    table = page[page.index(f".. csv-table:: {caption}") :].split("\n\n")[1]
    (line,) = [ln.strip() for ln in table.splitlines() if ln.strip().startswith(f"{label},")]
    return [cell.strip('"') for cell in re.findall(r'"[^"]*"|[^,]+', line)][1:]


def _throughput_row(name: str) -> list[str]:
    row = json.loads((DOCS / "performance" / f"cpu_{name}.json").read_text())["rows"][0]
    std, last = row["best_floor"], row["best_floor_channels_last"]
    last_batch = max(row["floor_channels_last"], key=row["floor_channels_last"].get)
    certify, compiled, art = row["certify"], row["certify_compile"], row["art_default"]
    return [
        f"{std:,.0f} ({row['best_floor_batch']})",
        f"{last:,.0f} ({last_batch})",
        f"{certify:,.0f}",
        f"{certify / std:.2f}",
        f"{certify / last:.2f}",
        f"{compiled:,.0f}",
        f"{compiled / std:.2f}",
        f"{art:,.0f}",
        f"{certify / art:.2f}",
    ]


@pytest.mark.parametrize(("label", "name"), [("LeNet", "lenet"), ("ResNet-20", "resnet20")])
def test_the_cpu_throughput_table_is_the_benchmarks(label, name):
    """The Performance page's CPU row is the medians of ``docs/performance/cpu_*.json``."""
    shown = _csv_row("2 CPU cores: samples per second", label)
    assert shown == _throughput_row(name)
    page = text("docs/performance.rst")
    row = json.loads((DOCS / "performance" / f"cpu_{name}.json").read_text())["rows"][0]
    assert f"{row['ratio_certify_art_default']:.2f}×" in page


# ------------------------------------------------------------------------ the allocator table
@pytest.mark.parametrize(("label", "name"), [("LeNet", "lenet"), ("ResNet-20", "cifar_resnet20")])
def test_the_allocator_table_is_the_benchmark(label, name):
    """The Performance page's allocator rows, and the ratios quoted elsewhere, are
    ``docs/performance/cpu_allocator.json``'s."""
    rows = json.loads((DOCS / "performance" / "cpu_allocator.json").read_text())["rows"]
    (row,) = [r for r in rows if r["model"] == name]
    shown = _csv_row("2 CPU cores, glibc", label)
    low, high = row["ratio range"]
    assert shown == [
        f"{row['default']:,.0f}",
        f"{row['default faults per sample']:.2f}",
        f"{row['keep_freed_memory']:,.0f}",
        f"{row['keep_freed_memory faults per sample']:.2f}",
        f"{row['ratio']:.2f}",
        f"{low:.2f}–{high:.2f}",
    ]
    module_doc = " ".join(__import__("rsmooth.allocator").allocator.__doc__.split())
    assert f"{row['ratio']:.2f} times" in module_doc


def test_the_allocator_compile_table_is_the_benchmark():
    (row,) = json.loads((DOCS / "performance" / "cpu_allocator_compile.json").read_text())["rows"]
    page = text("docs/performance.rst")
    for config in ("default", "keep_freed_memory"):
        assert _csv_row("ResNet-20 in fresh processes", config) == [
            f"{row[f'{config} floor']:,.0f}",
            f"{row[f'{config} floor faults per sample']:.2f}",
            f"{row[f'{config} compile']:,.0f}",
            f"{row[f'{config} compile faults per sample']:.2f}",
            f"{row[f'{config} compile ÷ floor']:.2f}",
        ]
        assert f"{row[f'{config} compile ÷ floor']:.2f}×" in page


def test_the_allocator_ratios_quoted_in_prose_are_the_benchmarks():
    rows = json.loads((DOCS / "performance" / "cpu_allocator.json").read_text())["rows"]
    ratio = {row["model"]: f"{row['ratio']:.2f}" for row in rows}
    lenet, resnet = ratio["lenet"], ratio["cifar_resnet20"]
    assert f"certify {lenet}× and {resnet}× slower for LeNet and ResNet-20" in text(
        "docs/howto/certify.rst"
    )
    assert f"certify {lenet}× faster for LeNet and {resnet}× for the CIFAR ResNet-20" in text(
        "CHANGELOG.md"
    )
    compiled = json.loads((DOCS / "performance" / "cpu_allocator_compile.json").read_text())
    (row,) = compiled["rows"]
    changelog = text("CHANGELOG.md")
    assert f"{row['default compile ÷ floor']:.2f}× against a floor that pays" in changelog
    assert f"{row['keep_freed_memory compile ÷ floor']:.2f}× on a heap" in changelog
