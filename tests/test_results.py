"""Results know their kind: CERTIFY or a radius grid, in Python, in files and in every summary."""

import json

import numpy as np
import pytest
import torch
from conftest import LinearTwoClass
from runner_helpers import TinyLinear, tiny_dataset

from rsmooth import SmoothedClassifier
from rsmooth.certificates import CERTIFIED, RULED_OUT, UNDECIDED, UNREACHABLE, float32_safe
from rsmooth.cli import main
from rsmooth.metrics import average_certified_radius, certified_accuracy, format_table
from rsmooth.procedures import Certify
from rsmooth.results import RunSettings, format_row, radius_text, read_results, write_results
from rsmooth.runner import certify_dataset
from rsmooth.sequential import RadiusGrid

GRID = (0.25, 0.5, 0.75)


def linear():
    return SmoothedClassifier(
        LinearTwoClass(torch.tensor([1.0]), 0.0), 0.5, batch_size=4096, input_range=None
    )


def both(trials=40):
    """A CERTIFY certificate and a grid certificate of the same inputs, and their labels."""
    x = torch.linspace(-0.5, 2.0, trials)[:, None]
    labels = torch.zeros(trials, dtype=torch.long)
    smoothed = linear()
    cert = smoothed.certify(x, n=2000, n0=50, generator=torch.Generator().manual_seed(0))
    grid = smoothed.certify_radius(
        x, GRID, max_n=2000, n0=50, generator=torch.Generator().manual_seed(0)
    )
    return cert, grid, labels


# ---------------------------------------------------------------------------- Python metrics
def test_a_grid_result_has_no_acr_and_accuracy_only_at_its_radii():
    cert, grid, labels = both()
    assert cert.kind == "certify" and grid.kind == "grid"
    assert average_certified_radius(cert, labels) > 0
    with pytest.raises(ValueError, match="no ACR for grid results.*use SmoothedClassifier.certify"):
        average_certified_radius(grid, labels)
    accuracy = certified_accuracy(grid, labels)  # default: the grid
    correct = grid.prediction == labels
    expected = [float((correct & grid.certified[:, j]).double().mean()) for j in range(3)]
    assert 0 < expected[-1] < expected[0] < 1
    assert accuracy.tolist() == expected
    assert certified_accuracy(grid, labels, radii=[0.5]).tolist() == [expected[1]]
    with pytest.raises(ValueError, match=r"radii \[1.0\] are not on the grid"):
        certified_accuracy(grid, labels, radii=[0.5, 1.0])
    with pytest.raises(ValueError, match="not on the grid"):
        certified_accuracy(grid, labels, [2.0])


def test_a_table_never_puts_an_acr_next_to_a_grid_result():
    cert, grid, labels = both()
    targets = {"seq": labels, "cert": labels}
    table = format_table({"seq": grid, "cert": cert}, targets=targets)
    header = table.splitlines()[0]
    assert "ACR" not in header and header.endswith("| r=0.25 | r=0.50 | r=0.75 |")
    with pytest.raises(ValueError, match="not on the grid"):
        format_table({"seq": grid, "cert": cert}, [0.0, 2.0], targets=targets)
    alone = format_table({"cert": cert}, targets={"cert": labels})
    assert "ACR" in alone.splitlines()[0]


def test_the_default_certify_columns_stop_at_the_radius_cap():
    cert, _, labels = both()  # n = 2000: cap 0.5 * Phi^-1(0.001 ** (1 / 2000)) = 1.47
    header = format_table({"c": cert}, targets={"c": labels}).splitlines()[0]
    assert "r=1.25" in header and "r=1.50" not in header


# ---------------------------------------------------------------------------- files
def test_a_grid_file_says_its_kind_without_its_settings_file(tmp_path):
    _, grid, labels = both()
    out = tmp_path / "seq.tsv"
    write_results(out, grid, labels)
    header = out.read_text().splitlines()[0].split("\t")
    assert header[-1] == "grid:0.25,0.5,0.75"
    (tmp_path / "seq.tsv.json").unlink()  # the settings file is gone
    results = read_results(out)
    assert results.kind == "grid" and results.radii == GRID and results.settings is None
    assert torch.equal(results.status, grid.status)
    with pytest.raises(ValueError, match="no ACR"):
        average_certified_radius(results)
    assert certified_accuracy(results).tolist() == certified_accuracy(grid, labels).tolist()


def test_research_files_read_as_certify(tmp_path):
    out = tmp_path / "released.tsv"
    out.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t3\t3\t0.5\t1\t0:00:01\n")
    results = read_results(out)
    assert results.kind == "certify" and results.radii is None
    assert average_certified_radius(results) == 0.5


def test_status_letters_round_trip_every_status():
    line = format_row(
        3, 0, 0, 0.5, 1.0, 90, 100, status=(CERTIFIED, RULED_OUT, UNDECIDED, UNREACHABLE)
    )
    assert line.rstrip("\n").split("\t")[-1] == "CRUX"


def test_a_settings_file_of_the_other_kind_is_an_error(tmp_path):
    cert, _, labels = both()
    out = tmp_path / "r.tsv"
    write_results(out, cert, labels)
    side = json.loads((tmp_path / "r.tsv.json").read_text())
    side["config"] = {**side["config"], "kind": "grid", "radii": [0.25]}
    (tmp_path / "r.tsv.json").write_text(json.dumps(side))
    with pytest.raises(
        ValueError, match="records a grid run but its columns are those of a certify"
    ):
        read_results(out)


def test_settings_of_rsmooth_0_2_still_read():
    old = {"mode": "sequential", "radii": [0.1, 0.2], "max_n": 2000, "beta": 0.01, "growth": 1.5,
           "looks": [17, 26], "sigma": 0.25, "n": None, "n0": 20, "alpha": 0.01, "seed": 0,
           "batch_size": 1000, "fold_batchnorm": "auto"}  # fmt: skip
    settings = RunSettings.from_config(old)
    assert settings.kind == "grid" and settings.radii == (0.1, 0.2) and settings.looks == (17, 26)
    assert settings.recorded == {"batch_size": 1000, "fold_batchnorm": "auto"}
    certify = RunSettings.from_config({"sigma": 0.5, "n": 100, "n0": 10, "alpha": 0.01})
    assert certify.kind == "certify" and certify.radius_cap == pytest.approx(0.5 * 1.7, abs=0.05)


# ---------------------------------------------------------------------------- radii in float64
def test_a_radius_is_written_from_its_float64_value():
    # count 60,427 of n = 100,000 at sigma = 0.5: the radius is 0.12599999937570072 in float64;
    # rounded to float32 first (to nearest, as on a float32 device) it read 0.126 in the file
    exact = 0.12599999937570072
    assert radius_text(exact) == "0.125"
    assert radius_text(float(np.float32(exact))) == "0.126"  # the broken variant
    safe = float32_safe(np.array([exact]), bound="lower")
    assert safe.dtype == np.float32 and float(safe[0]) <= exact
    assert radius_text(float(safe[0])) == "0.125"
    assert float(float32_safe(np.array([exact]), bound="upper")[0]) >= exact


def test_the_runner_writes_rows_from_the_float64_results(tmp_path):
    from rsmooth.runner import input_seed

    data = tiny_dataset(6)
    smoothed = SmoothedClassifier(TinyLinear(), 0.25, batch_size=200)
    out = tmp_path / "r.tsv"
    certify_dataset(smoothed, data, out, Certify(n=200, n0=20), progress=False)
    written = {
        int(f[0]): f[3] for f in (line.split("\t") for line in out.read_text().splitlines()[1:])
    }
    x = torch.stack([data[i][0] for i in range(6)])
    generators = [torch.Generator().manual_seed(input_seed(0, i)) for i in range(6)]
    cert = smoothed.certify(x, n=200, n0=20, generator=generators)
    assert cert.radius.dtype == torch.float64
    assert [written[i] for i in range(6)] == [radius_text(r) for r in cert.radius.tolist()]


# ---------------------------------------------------------------------------- the command line
def cli_certify(out, *extra):
    return [
        "certify", "--model", "runner_helpers:tiny_model", "--dataset",
        "runner_helpers:tiny_dataset", "--sigma", "0.25", "--n0", "20", "--alpha", "0.01",
        "--out", str(out), "--no-progress", "--factory-loads-weights", "--device", "cpu", *extra,
    ]  # fmt: skip


def test_certify_with_radii_prints_the_grid_table_without_acr(tmp_path, capsys):
    out = tmp_path / "seq.tsv"
    assert main(cli_certify(out, "--radii", "0.1", "0.2", "--max-n", "2000")) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert "ACR" not in header and header.endswith("| r=0.10 | r=0.20 |")


def test_certify_summary_stops_at_the_radius_cap(tmp_path, capsys):
    out = tmp_path / "r.tsv"
    assert main(cli_certify(out, "--n", "200")) == 0  # cap 0.25 * Phi^-1(0.01 ** (1/200)) = 0.4999
    header = capsys.readouterr().out.splitlines()[0]
    assert "r=0.25" in header and "r=0.50" not in header and "ACR" in header


def test_n_with_radii_points_to_max_n(tmp_path, capsys):
    out = tmp_path / "seq.tsv"
    assert main(cli_certify(out, "--radii", "0.1", "--n", "1000")) == 2
    err = capsys.readouterr().err
    assert "--n is CERTIFY's fixed sample size" in err and "--max-n" in err
    assert not out.exists()


def test_a_grid_file_without_settings_is_refused_by_plot_and_plan(tmp_path, capsys):
    _, grid, labels = both()
    out = tmp_path / "seq.tsv"
    write_results(out, grid, labels)
    (tmp_path / "seq.tsv.json").unlink()
    capsys.readouterr()
    assert main(["report", str(out), "--plot", str(tmp_path / "p.png")]) == 2
    assert "grid file" in capsys.readouterr().err
    argv = ["plan", "--sigma", "0.5", "--radii", "0.25", "--from", str(out)]
    assert main(argv) == 2
    assert "a grid results file" in capsys.readouterr().err
    assert main(["report", str(out)]) == 0
    assert "ACR" not in capsys.readouterr().out.splitlines()[0]


def test_certify_radius_with_n_suggests_max_n():
    with pytest.raises(TypeError, match="takes max_n, the most estimation samples"):
        linear().certify_radius(torch.zeros(1, 1), 0.5, n=1000)
    with pytest.raises(TypeError, match="did you mean 'alpha'"):
        linear().certify_radius(torch.zeros(1, 1), 0.5, alhpa=0.01)


def test_plan_tabulates_the_exact_threshold_share():
    # the row for p* = Phi(r / sigma) is the test's size: the probability of certifying r when
    # the share is exactly p*, below alpha; computed at a share rounded up it was far larger
    grid = RadiusGrid((0.5,), alpha=0.01, max_n=5000)
    schedule = grid.bind(0.5)
    from rsmooth.stats import radius_to_probability, sequential_operating_characteristic

    p_star = float(radius_to_probability(0.5, 0.5))
    oc = sequential_operating_characteristic(
        p_star, schedule.looks, schedule.certify, schedule.futile
    )
    rounded = sequential_operating_characteristic(
        round(p_star, 4) + 1e-4, schedule.looks, schedule.certify, schedule.futile
    )
    assert oc.certify[0] <= 0.01 < rounded.certify[0] or oc.certify[0] < rounded.certify[0]
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert (
            main(["plan", "--sigma", "0.5", "--radii", "0.5", "--alpha", "0.01", "--max-n", "5000"])
            == 0
        )
    row = next(
        line for line in buffer.getvalue().splitlines() if line.startswith(f"| {p_star:.6g} |")
    )
    assert row.split("|")[4].strip() == f"{oc.certify[0]:.4f}"
