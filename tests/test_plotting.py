import struct
import sys

import numpy as np
import pytest
import torch

from rsmooth import Certificate
from rsmooth.cli import main
from rsmooth.metrics import CertificationResults, certified_accuracy, read_results
from rsmooth.plotting import certified_accuracy_curve, plot_certified_accuracy, save_figure

HEADER = "idx\tlabel\tpredict\tradius\tcorrect\ttime\n"


def results_file(path, radii, correct):
    lines = [
        f"{i}\t1\t{1 if c else 0}\t{r:.3}\t{int(c)}\t0:00:01\n"
        for i, (r, c) in enumerate(zip(radii, correct, strict=True))
    ]
    path.write_text(HEADER + "".join(lines))
    return path


def random_results(seed, size=200):
    g = torch.Generator().manual_seed(seed)
    radius = torch.rand(size, generator=g, dtype=torch.float64) * 2
    correct = torch.rand(size, generator=g) < 0.7
    return CertificationResults(
        idx=torch.arange(size), label=torch.ones(size, dtype=torch.long),
        prediction=correct.long(), radius=torch.where(correct, radius, 0.0), correct=correct,
    )  # fmt: skip


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_curve_matches_certified_accuracy():
    results = random_results(0)
    radii = np.linspace(0, 2.5, 51)
    grid, accuracy = certified_accuracy_curve(results, radii=radii)
    expected = certified_accuracy(results, radii=radii.tolist()).numpy()
    np.testing.assert_allclose(accuracy, expected)
    assert np.all(np.diff(accuracy) <= 0)  # non-increasing
    grid, accuracy = certified_accuracy_curve(results, num_points=11)
    assert grid[0] == 0 and grid[-1] == pytest.approx(float(results.radius.max()))
    assert accuracy[0] == pytest.approx(float(results.correct.double().mean()))
    with pytest.raises(ValueError, match="radii must be a 1-d sequence of non-negative"):
        certified_accuracy_curve(results, radii=[-1.0])


def test_plot_has_one_step_curve_per_run():
    pytest.importorskip("matplotlib")
    runs = {"sigma 0.25": random_results(1), "sigma 0.5": random_results(2)}
    ax = plot_certified_accuracy(runs, max_radius=2.5, num_points=251)
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == ["sigma 0.25", "sigma 0.5"]
    assert ax.get_xlabel() == "radius" and ax.get_ylabel() == "certified accuracy"
    assert ax.get_xlim() == (0.0, 2.5) and ax.get_ylim() == (0.0, 1.0)
    for line, results in zip(lines, runs.values(), strict=True):
        x, y = line.get_xdata(), line.get_ydata()
        assert len(x) == 251 and line.get_drawstyle() == "steps-post"
        np.testing.assert_allclose(y, certified_accuracy(results, radii=x.tolist()).numpy())
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == list(runs)


def test_plot_into_given_axes_and_certificates():
    matplotlib = pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    ax = Figure().add_subplot()
    cert = Certificate(
        prediction=torch.tensor([1, 0, -1]), radius=torch.tensor([0.5, 1.0, 0.0]),
        p_lower=torch.zeros(3), count=torch.zeros(3), n=10, n0=1, alpha=0.1, sigma=0.5,
    )  # fmt: skip
    returned = plot_certified_accuracy(
        {"c": cert}, targets={"c": torch.tensor([1, 0, 0])}, ax=ax, title="t"
    )
    assert returned is ax and ax.get_title() == "t"
    assert ax.get_xlim()[1] == pytest.approx(1.05)
    assert isinstance(ax.figure, matplotlib.figure.Figure)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"results": {}}, ValueError, "results must name at least one result, got none"),
        ({"max_radius": -1.0}, ValueError, "max_radius must be positive and finite, got -1.0"),
        ({"num_points": 1}, ValueError, "num_points must be an integer >= 2, got 1"),
        ({"results": {"x": 3}}, TypeError, "cert must be a Certificate or CertificationResults"),
    ],
)
def test_plot_errors(kwargs, exc, match):
    pytest.importorskip("matplotlib")
    call = {"results": {"a": random_results(0)}, **kwargs}
    with pytest.raises(exc, match=match):
        plot_certified_accuracy(call.pop("results"), **call)


def test_save_figure(tmp_path):
    pytest.importorskip("matplotlib")
    ax = plot_certified_accuracy({"a": random_results(0)})
    path = save_figure(ax, tmp_path / "sub" / "plot.png", dpi=100)
    assert png_size(path) == (600, 400)
    assert save_figure(ax.figure, tmp_path / "plot.svg").read_text().lstrip().startswith("<?xml")
    with pytest.raises(TypeError, match="figure must be a matplotlib Figure or Axes, got int"):
        save_figure(3, tmp_path / "x.png")


def test_report_plot_writes_a_png_with_one_line_per_file(tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    import rsmooth.plotting

    first = results_file(tmp_path / "first.tsv", [0.2, 0.5, 0.9, 0.0], [1, 1, 1, 0])
    second = results_file(tmp_path / "second.tsv", [0.1, 1.5, 0.0, 0.0], [1, 1, 0, 0])
    drawn = []

    def spy(*args, **kwargs):
        drawn.append(plot(*args, **kwargs))
        return drawn[-1]

    plot = rsmooth.plotting.plot_certified_accuracy
    monkeypatch.setattr(rsmooth.plotting, "plot_certified_accuracy", spy)
    png = tmp_path / "curves.png"
    code = main(["report", str(first), str(second), "--plot", str(png), "--max-radius", "2"])
    out, err = capsys.readouterr()
    assert code == 0 and f"wrote {png}" in err and "| first | 4 |" in out
    width, height = png_size(png)
    assert (width, height) == (900, 600) and png.stat().st_size > 5000
    (ax,) = drawn
    assert [line.get_label() for line in ax.get_lines()] == ["first", "second"]
    assert ax.get_xlim() == (0.0, 2.0)
    y = ax.get_lines()[1].get_ydata()
    assert y[0] == 0.5 and y[-1] == 0.0
    expected = certified_accuracy(read_results(second), radii=[1.0])
    assert y[np.searchsorted(ax.get_lines()[1].get_xdata(), 1.0)] == pytest.approx(
        float(expected[0])
    )


def test_missing_matplotlib_gives_the_install_hint(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"pip install 'rsmooth\[plot\]'"):
        plot_certified_accuracy({"a": random_results(0)})
    path = results_file(tmp_path / "a.tsv", [0.5], [1])
    code = main(["report", str(path), "--plot", str(tmp_path / "p.png")])
    err = capsys.readouterr().err
    assert code == 2 and "pip install 'rsmooth[plot]'" in err and err.count("\n") == 1
    assert not (tmp_path / "p.png").exists()
