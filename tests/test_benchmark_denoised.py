"""The denoised-smoothing results in the docs are the benchmark's, and cannot drift from its files."""

import json
from pathlib import Path

from conftest import load_script

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "docs" / "results" / "denoised"


def test_the_docs_table_is_rendered_from_the_json_and_the_json_from_the_results_files():
    benchmark = load_script("benchmarks/denoised.py", "denoised_benchmark")
    results = json.loads((FOLDER / "results.json").read_text())
    assert (FOLDER / "summary.rst.inc").read_text() == benchmark.render_summary(results)
    assert benchmark.table(FOLDER, results["settings"]["sigmas"]) == results["table"]
    assert list(results["table"]) == ["0.25", "0.5"]
    for rows in results["table"].values():
        assert list(rows) == list(benchmark.MODELS)
        assert {row["images"] for row in rows.values()} == {results["settings"]["num_certify"]}
    assert (
        ".. include:: results/denoised/summary.rst.inc"
        in (ROOT / "docs" / "results.rst").read_text()
    )
    assert (FOLDER / "certified_accuracy.png").is_file()
