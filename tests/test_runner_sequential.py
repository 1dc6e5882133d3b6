"""The dataset runner and the command line in sequential mode (certify_dataset(radii=...))."""

import json
from pathlib import Path

import pytest
import torch
from runner_helpers import TinyLinear, rows, tiny_dataset

from rsmooth import SmoothedClassifier
from rsmooth.cli import main
from rsmooth.metrics import certified_accuracy, read_results
from rsmooth.procedures import Certify
from rsmooth.runner import Shard, certify_dataset, input_seed, part_path
from rsmooth.sequential import RadiusGrid

SEQ = {"n0": 20, "alpha": 0.01, "radii": (0.1, 0.2, 0.3), "max_n": 2_000}
GRID = RadiusGrid(**SEQ)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def smoothed(batch_size=1000, model=None):
    return SmoothedClassifier(model or TinyLinear(), sigma=0.25, batch_size=batch_size)


@pytest.fixture(scope="module")
def dataset():
    return tiny_dataset()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, dataset):
    """An uninterrupted single-process sequential run."""
    out = tmp_path_factory.mktemp("reference") / "seq.tsv"
    certify_dataset(smoothed(), dataset, out, progress=False, procedure=GRID)
    return rows(out)


def test_rows_are_the_engine_results_and_the_sidecar_records_the_schedule(tmp_path, dataset):
    out = tmp_path / "seq.tsv"
    results = certify_dataset(smoothed(), dataset, out, progress=False, procedure=GRID)
    assert len(results) == 24
    side = json.loads((tmp_path / "seq.tsv.json").read_text())["config"]
    assert side["kind"] == "grid" and side["radii"] == list(SEQ["radii"])
    assert side["max_n"] == 2_000 and side["alpha"] == side["beta"] == 0.01
    assert side["growth"] == 1.5 and side["n0"] == 20 and "n" not in side
    assert out.read_text().splitlines()[0].endswith("\tcount\tn\tgrid:0.1,0.2,0.3")
    inputs = torch.stack([dataset[i][0] for i in range(24)])
    generators = [torch.Generator().manual_seed(input_seed(0, i)) for i in range(24)]
    cert = smoothed().certify_radius(
        inputs, SEQ["radii"], alpha=0.01, max_n=2_000, n0=20, generator=generators
    )
    assert side["looks"] == list(cert.looks)
    lines = sorted(
        (line.split("\t") for line in out.read_text().splitlines()[1:]), key=lambda f: int(f[0])
    )
    assert [int(f[2]) for f in lines] == cert.prediction.tolist()
    assert [float(f[3]) for f in lines] == cert.radius.tolist()  # exact, not rounded
    assert [int(f[6]) for f in lines] == cert.count.tolist()
    assert [int(f[7]) for f in lines] == cert.num_samples.tolist()
    assert len(set(cert.num_samples.tolist())) > 1
    # certified accuracy at the grid radii read back from the file is the sequential result
    labels = torch.tensor([dataset[i][1] for i in range(24)])
    assert results.kind == "grid" and results.radii == SEQ["radii"]
    from_file = certified_accuracy(results)
    from_cert = certified_accuracy(cert, labels)
    assert torch.equal(from_file, from_cert) and from_file.max() > 0


@pytest.mark.parametrize("batch_size", [7, 64])
def test_results_do_not_depend_on_the_batch_size(tmp_path, dataset, reference, batch_size):
    out = tmp_path / "seq.tsv"
    certify_dataset(smoothed(batch_size), dataset, out, progress=False, procedure=GRID)
    assert rows(out) == reference


def test_resume_equals_an_uninterrupted_run(tmp_path, dataset, reference):
    out = tmp_path / "seq.tsv"
    certify_dataset(smoothed(), dataset, out, progress=False, stop=9, procedure=GRID)
    with open(out, "a") as handle:  # as if killed in the middle of a write
        handle.write("9\t0\t0\t0.2")
    certify_dataset(smoothed(), dataset, out, progress=False, procedure=GRID)
    assert rows(out) == reference


def test_two_shards_merge_into_the_single_process_rows(tmp_path, dataset, reference):
    out = tmp_path / "seq.tsv"
    first = certify_dataset(smoothed(), dataset, out, shard=(1, 2), progress=False, procedure=GRID)
    assert not out.exists() and sorted(first.idx.tolist()) == list(range(1, 24, 2))
    side = json.loads(Path(f"{part_path(out, Shard(1, 2))}.json").read_text())
    assert side["shard"] == [1, 2] and side["config"]["kind"] == "grid"
    certify_dataset(smoothed(), dataset, out, shard=(0, 2), progress=False, procedure=GRID)
    assert rows(out) == reference
    merged = json.loads((tmp_path / "seq.tsv.json").read_text())
    assert merged["config"]["kind"] == "grid" and merged["complete"] is True


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"radii": (0.1, 0.2)}, "radii="),
        ({"max_n": 3_000}, "max_n="),
        ({"growth": 2.0}, "growth="),
        ({"beta": 0.05}, "beta="),
    ],
)
def test_resuming_with_another_grid_or_schedule_is_refused(tmp_path, dataset, change, match):
    out = tmp_path / "seq.tsv"
    certify_dataset(smoothed(), dataset, out, progress=False, stop=3, procedure=GRID)
    with pytest.raises(ValueError, match=match):
        certify_dataset(smoothed(), dataset, out, RadiusGrid(**{**SEQ, **change}), progress=False)


def test_a_file_of_one_kind_is_not_resumed_as_the_other(tmp_path, dataset):
    out = tmp_path / "r.tsv"
    certify_dataset(smoothed(), dataset, out, Certify(n=200, n0=20), progress=False, stop=2)
    with pytest.raises(ValueError, match="kind='certify' in the file, 'grid' now"):
        certify_dataset(smoothed(), dataset, out, progress=False, procedure=GRID)
    seq = tmp_path / "seq.tsv"
    certify_dataset(smoothed(), dataset, seq, progress=False, stop=2, procedure=GRID)
    with pytest.raises(ValueError, match="kind='grid' in the file, 'certify' now"):
        certify_dataset(smoothed(), dataset, seq, Certify(n=200, n0=20), progress=False)


def test_bad_sequential_arguments(tmp_path, dataset):
    with pytest.raises(ValueError, match="max_n must be at least"):
        certify_dataset(
            smoothed(), dataset, tmp_path / "x.tsv", RadiusGrid(**{**SEQ, "max_n": 5}),
            progress=False,
        )  # fmt: skip
    assert not (tmp_path / "x.tsv").exists()
    with pytest.raises(ValueError, match="radius must be sorted"):
        RadiusGrid(**{**SEQ, "radii": (0.3, 0.1)})
    with pytest.raises(ValueError, match="growth must be greater than 1"):
        RadiusGrid(**{**SEQ, "growth": 0.5})


# ---------------------------------------------------------------------------- command line
def _cli_certify(out, *extra):
    return [
        "certify", "--model", "runner_helpers:tiny_model", "--dataset",
        "runner_helpers:tiny_dataset", "--sigma", "0.25", "--n0", "20", "--alpha", "0.01",
        "--radii", "0.1", "0.2", "0.3", "--max-n", "2000", "--out", str(out), "--no-progress", "--factory-loads-weights",
        "--device", "cpu", *extra,
    ]  # fmt: skip


def test_cli_certify_sequential_then_report(tmp_path, reference, capsys):
    out = tmp_path / "seq.tsv"
    assert main(_cli_certify(out)) == 0
    assert rows(out) == reference
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    captured = capsys.readouterr()
    header = captured.out.splitlines()[0]
    assert "0.1" in header and "0.3" in header and "ACR" not in header
    assert "no ACR for grid files" in captured.err
    accuracy = float(certified_accuracy(read_results(out), radii=[0.2])[0])
    assert f"{100 * accuracy:.1f}" in captured.out


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--radii", "0.15"], "are not on the grid"),
        (["--plot", "x.png"], "grid file"),
    ],
)
def test_report_refuses_what_a_sequential_file_cannot_give(tmp_path, dataset, capsys, extra, match):
    out = tmp_path / "seq.tsv"
    certify_dataset(smoothed(), dataset, out, progress=False, stop=4, procedure=GRID)
    capsys.readouterr()
    assert main(["report", str(out), *extra]) == 2
    assert match in capsys.readouterr().err


# ---------------------------------------------------------------------------- rsmooth plan
def test_plan_prints_the_schedule_and_the_exact_table(capsys):
    from rsmooth.stats import (
        radius_to_probability,
        sequential_looks,
        sequential_operating_characteristic,
        sequential_thresholds,
    )

    argv = ["plan", "--sigma", "0.5", "--radii", "0.25", "0.5", "--alpha", "0.01"]
    assert main([*argv, "--max-n", "5000", "--p", "0.9", "0.6"]) == 0
    out = capsys.readouterr().out
    targets = radius_to_probability([0.25, 0.5], 0.5)
    looks = sequential_looks(5000, 0.01, float(targets[0]))
    assert f"schedule: {len(looks)} looks at {looks[0]:,}" in out
    cert, fut = sequential_thresholds(looks, targets, 0.01, 0.01)
    oc = sequential_operating_characteristic(0.9, looks, cert, fut)
    row = next(line for line in out.splitlines() if line.startswith("| 0.9 |"))
    assert f"| {oc.expected_samples:,.0f} |" in row
    assert out.index("| 0.6 |") < out.index("| 0.9 |")


def test_plan_from_a_certify_file_predicts_its_cost(tmp_path, dataset, capsys):
    out = tmp_path / "r.tsv"
    certify_dataset(
        smoothed(), dataset, out, progress=False, procedure=Certify(n=500, n0=20, alpha=0.01)
    )
    capsys.readouterr()
    argv = ["plan", "--sigma", "0.25", "--radii", "0.1", "0.2", "--alpha", "0.01"]
    assert main([*argv, "--max-n", "500", "--n0", "20", "--from", str(out)]) == 0
    text = capsys.readouterr().out
    assert "24 inputs of r.tsv: expected samples per input" in text
    assert "against CERTIFY's 520" in text
    seq = tmp_path / "seq.tsv"
    certify_dataset(smoothed(), dataset, seq, progress=False, stop=2, procedure=GRID)
    capsys.readouterr()
    assert main([*argv, "--from", str(seq)]) == 2
    assert "a grid results file" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--radii", "0.5", "0.25"], "radius must be sorted"),
        (["--radii", "0.5", "--alpha", "2"], "--alpha must be in (0, 1)"),
        (["--radii", "2.0", "--max-n", "100"], "max_n must be at least"),
        (["--radii", "0.5", "--p", "1.5"], "--p must be probabilities"),
        (["--radii", "0.5", "--p", "0.9", "--from", "x.tsv"], "either --p or --from"),
    ],
)
def test_plan_errors(capsys, extra, match):
    assert main(["plan", "--sigma", "0.5", *extra]) == 2
    assert match in capsys.readouterr().err


@pytest.mark.slow
def test_two_process_torchrun_sequential_equals_a_single_process_run(tmp_path, reference):
    import subprocess
    import sys

    from runner_helpers import subprocess_env

    out = tmp_path / "seq.tsv"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
    ]
    command += ["-m", "rsmooth", *_cli_certify(out)]
    done = subprocess.run(
        command, env=subprocess_env(), capture_output=True, text=True, timeout=240, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for index in range(2):
        side = json.loads(Path(f"{part_path(out, Shard(index, 2))}.json").read_text())
        assert side["shard"] == [index, 2] and side["complete"] is True
        assert side["config"]["kind"] == "grid"
    assert rows(out) == reference
