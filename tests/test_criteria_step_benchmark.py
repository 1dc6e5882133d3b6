"""Smoke tests of benchmarks/criteria_step.py on tiny batches (ART absent; ART present if installed)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "criteria_step.py"
TINY = ["--warmup", "0", "--repeats", "1", "--batch-sizes", "8", "--art-batch", "8"]


@pytest.fixture
def bench(monkeypatch):
    spec = importlib.util.spec_from_file_location("rsmooth_bench_criteria_step", PATH)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look the module up
    spec.loader.exec_module(module)
    return module


def test_art_pairs_reuse_only_identical_entries(bench):
    for spec in bench.ART_METHODS:
        assert spec.criterion in bench.CONFIGS
        if spec.entry in bench.CONFIGS:
            assert bench.CONFIGS[spec.entry] == (spec.args, {}) and spec.chunks == 1


def test_without_art(bench, monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "art", None)  # import art -> ImportError
    out = tmp_path / "steps"
    assert bench.main([*TINY, "--out", str(out)]) == 0
    assert "ART rows skipped: ART not importable" in capsys.readouterr().out
    result = json.loads(Path(f"{out}.json").read_text())
    assert result["art"]["rows"] == [] and result["meta"]["art"] is None
    assert {row["name"] for row in result["criteria"]} == {*bench.CONFIGS, bench.REFERENCE}
    assert all(row["seconds"] > 0 for row in result["criteria"])
    assert "ART rows skipped" in Path(f"{out}.md").read_text()


@pytest.mark.slow
def test_with_art(bench, tmp_path):
    pytest.importorskip("art.estimators.certification.randomized_smoothing")
    out = tmp_path / "steps"
    assert bench.main([*TINY, "--out", str(out)]) == 0
    result = json.loads(Path(f"{out}.json").read_text())
    rows = result["art"]["rows"]
    assert [row["method"] for row in rows] == [spec.method for spec in bench.ART_METHODS]
    assert all(row["art_seconds"] > 0 and row["ratio"] > 0 for row in rows)
    assert "| MACER |" in Path(f"{out}.md").read_text()
