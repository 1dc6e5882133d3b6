"""The benchmark scripts run, and what they report is computed from what they measured."""

import json

import pytest
from conftest import load_script


@pytest.mark.slow
def test_certify_table_reports_savings_from_its_own_measurements(tmp_path):
    bench = load_script("benchmarks/certify_table.py", "rsmooth_bench_certify_table")
    out = tmp_path / "table"
    argv = ["--quick", "--parts", "table", "projection", "--out", str(out)]
    assert bench.main(argv) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    table = result["table"]
    certify, grid = table["arms"]["certify"], table["arms"]["grid"]
    # the samples come from the results files; the model saw them (and the layout check's rows)
    assert certify["samples"] == 8 * (600 + 100)
    assert certify["samples"] <= certify["model_rows"] <= certify["samples"] + 2 * 8
    assert grid["samples"] <= grid["model_rows"] <= grid["samples"] + 2 * 8
    assert table["sample_saving"] == certify["samples"] / grid["samples"]
    assert table["efficiency"] == table["wall_saving"] / table["sample_saving"]
    # the grid's certified accuracy at its radii is never above CERTIFY's by more than chance
    assert len(table["accuracy"]["grid"]) == len(result["meta"]["radii"])
    projection = result["projection"]["sigmas"]
    for s in projection.values():
        assert s["certify_samples"] == 40 * 100_100 and 1 < s["saving"] < 100
    assert "Sample saving" in out.with_suffix(".md").read_text()


def test_the_released_logs_give_the_vote_shares_their_radii_come_from():
    bench = load_script("benchmarks/certify_table.py", "rsmooth_bench_certify_table")
    from rsmooth.certificates import ABSTAIN
    from rsmooth.metrics import read_results
    from rsmooth.stats import certified_radius, clopper_pearson_lower

    path = bench.LOGS[0.25]
    shares = bench.vote_shares(path, 0.25)
    rows = read_results(path)
    certified = rows.prediction != ABSTAIN
    counts = (shares * (bench.LOG_N + 1) - 0.5).round().astype(int)
    n, alpha = bench.LOG_N, bench.LOG_ALPHA
    radius = certified_radius(clopper_pearson_lower(counts, n, alpha), 0.25)
    below = certified_radius(clopper_pearson_lower(counts - 1, n, alpha), 0.25)
    # each count is the smallest whose radius reaches the written one (3 digits, to nearest)
    written, mask = rows.radius.numpy(), certified.numpy()
    assert (radius[mask] >= written[mask] - 0.0005).all()
    assert (below[mask] < written[mask] + 0.0005).all()
    assert (shares[~certified.numpy()] == (bench.LOG_N // 2 + 0.5) / (bench.LOG_N + 1)).all()


@pytest.mark.slow
def test_certify_throughput_ratios_are_those_of_its_measurements(tmp_path):
    bench = load_script("benchmarks/certify_throughput.py", "rsmooth_bench_certify_throughput")
    out = tmp_path / "perf"
    argv = ["--quick", "--no-compile", "--models", "lenet", "--floor-samples", "256"]
    assert bench.main([*argv, "--out", str(out)]) == 0
    (row,) = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert set(map(int, row["floor"])) == set(bench.FLOOR_BATCH_SIZES)
    assert set(map(int, row["floor_channels_last"])) == set(bench.FLOOR_BATCH_SIZES)
    best = max([*row["floor"].values(), *row["floor_channels_last"].values()])
    assert row["best_floor_any"] == best
    assert row["ratio_certify_best_floor"] == row["certify"] / best
    assert row["batch_size"] == 128 and row["channels_last"] is True  # the CPU's defaults
    text = out.with_suffix(".md").read_text()
    assert (
        f"| lenet | certify, defaults (batch 128, channels_last) | {row['certify']:,.0f} |" in text
    )


@pytest.mark.slow
def test_allocator_benchmark_reports_its_own_measurements(tmp_path):
    bench = load_script("benchmarks/allocator.py", "rsmooth_bench_allocator")
    out = tmp_path / "alloc"
    if __import__("platform").libc_ver()[0] != "glibc":
        assert bench.main(["--quick", "--out", str(out)]) == 1
        return
    assert bench.main(["--quick", "--models", "lenet", "--compile", "--out", str(out)]) == 0
    (row,) = json.loads(out.with_suffix(".json").read_text())["rows"]
    (default,), (kept,) = row["rounds"]["default"], row["rounds"]["keep_freed_memory"]
    assert row["default"] == default["certify"]["rate"]
    assert row["keep_freed_memory"] == kept["certify"]["rate"]
    assert row["ratio"] == kept["certify"]["rate"] / default["certify"]["rate"]
    assert row["ratio"] == row["ratio range"][0]
    for config, measured in (("default", default), ("keep_freed_memory", kept)):
        ratio = measured["compile"]["rate"] / measured["floor"]["rate"]
        assert row[f"{config} compile ÷ floor"] == ratio
    # with freed memory kept, a warmed-up call faults (almost) no page in
    for key in ("keep_freed_memory", "keep_freed_memory floor", "keep_freed_memory compile"):
        assert row[f"{key} faults per sample"] < 0.05, key
    table = out.with_suffix(".md").read_text()
    assert f"| lenet | {row['default']:,.0f} |" in table
    assert f"| lenet | keep_freed_memory | {row['keep_freed_memory floor']:,.0f} |" in table
