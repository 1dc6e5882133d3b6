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


def test_plot_reads_in_percent_and_its_legend_leaves_the_plot_its_width():
    pytest.importorskip("matplotlib")
    runs = {f"run {i}": random_results(i) for i in range(4)}
    ax = plot_certified_accuracy(runs, radius_caps=dict.fromkeys(runs, 1.5))
    ax.figure.canvas.draw()
    ticks = [label.get_text() for label in ax.get_yticklabels()]
    assert "40%" in ticks and "100%" in ticks  # the tables' unit, not fractions
    figure_box = ax.figure.bbox
    axes_box = ax.get_window_extent()
    legend_box = ax.get_legend().get_window_extent()
    assert legend_box.y1 <= axes_box.y0  # under the axes, so that it hides no curve
    assert axes_box.width >= 0.7 * figure_box.width  # not squeezed by a legend beside it
    assert legend_box.x0 >= figure_box.x0 and legend_box.x1 <= figure_box.x1


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
        (
            {"results": {"x": 3}},
            TypeError,
            "cert must be a Certificate, RadiusCertificate or CertificationResults",
        ),
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
    assert png_size(path) == (700, 500)
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
    assert (width, height) == (1050, 750) and png.stat().st_size > 5000
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


# ---------------------------------------------------------------------------- radius cap marker
def cap_lines(ax):
    """(x, label, colour, dashed) of each vertical line collection on the axes."""
    from matplotlib.collections import LineCollection
    from matplotlib.colors import to_hex

    found = []
    for collection in ax.collections:
        assert isinstance(collection, LineCollection)
        ((x0, y0), (x1, y1)) = collection.get_segments()[0]
        assert x0 == x1 and (y0, y1) == (0.0, 1.0)
        _, dashes = collection.get_linestyle()[0]
        found.append(
            (x0, collection.get_label(), to_hex(collection.get_color()[0]), dashes is not None)
        )
    return found


def test_radius_cap_of_a_certificate_is_a_labelled_dashed_line():
    pytest.importorskip("matplotlib")
    from matplotlib.colors import to_hex
    from scipy.stats import norm

    cert = Certificate(
        prediction=torch.tensor([1, 0]), radius=torch.tensor([0.5, 0.9]), p_lower=torch.zeros(2),
        count=torch.zeros(2), n=1000, n0=10, alpha=0.001, sigma=0.25,
    )  # fmt: skip
    ax = plot_certified_accuracy({"run": cert}, targets={"run": torch.tensor([1, 0])})
    cap = 0.25 * norm.ppf(0.001 ** (1 / 1000))  # sigma * Phi^-1(alpha^(1/N)), about 0.64
    ((x, label, color, dashed),) = cap_lines(ax)
    assert x == pytest.approx(cap, rel=1e-9)
    assert label == f"run: radius cap {cap:.2f} (sigma=0.25, n=1,000 samples, alpha=0.001)"
    assert dashed and color == to_hex(ax.get_lines()[0].get_color())
    assert label in [t.get_text() for t in ax.get_legend().get_texts()]
    assert ax.get_xlim()[1] == pytest.approx(1.05 * 0.9)  # the largest radius is past the cap here


def test_radius_cap_of_a_results_file_comes_from_its_sidecar(tmp_path):
    pytest.importorskip("matplotlib")
    from runner_helpers import TinyLinear, tiny_dataset

    from rsmooth import SmoothedClassifier
    from rsmooth.procedures import Certify
    from rsmooth.runner import certify_dataset
    from rsmooth.stats import max_certified_radius

    smoothed = SmoothedClassifier(TinyLinear(), sigma=0.25, batch_size=200)
    certify_dataset(
        smoothed,
        tiny_dataset(6),
        tmp_path / "r.tsv",
        procedure=Certify(n=200, n0=20, alpha=0.01),
        progress=False,
    )
    released = results_file(tmp_path / "released.tsv", [0.2, 0.3], [1, 1])  # no sidecar
    runs = {"ours": read_results(tmp_path / "r.tsv"), "released": read_results(released)}
    ax = plot_certified_accuracy(runs)
    cap = max_certified_radius(200, 0.01, 0.25)
    assert [(x, label) for x, label, _, _ in cap_lines(ax)] == [
        (pytest.approx(cap), f"ours: radius cap {cap:.2f} (sigma=0.25, n=200 samples, alpha=0.01)")
    ]
    assert ax.get_xlim()[1] == pytest.approx(1.05 * cap)  # the cap is in view
    # a file without settings: give its cap; or draw none
    ax = plot_certified_accuracy(runs, radius_caps={"released": 3.81})
    assert sorted(label for _, label, _, _ in cap_lines(ax)) == [
        f"ours: radius cap {cap:.2f} (sigma=0.25, n=200 samples, alpha=0.01)",
        "released: radius cap 3.81",
    ]
    assert cap_lines(plot_certified_accuracy(runs, show_caps=False)) == []


@pytest.mark.parametrize(
    ("caps", "match"),
    [
        ({"other": 1.0}, "radius_caps names 'other', which is not in results"),
        ({"a": 0.0}, r"radius_caps\['a'\] must be positive and finite, got 0.0"),
    ],
)
def test_radius_caps_errors(caps, match):
    pytest.importorskip("matplotlib")
    with pytest.raises(ValueError, match=match):
        plot_certified_accuracy({"a": random_results(0)}, radius_caps=caps)


def test_runs_with_the_same_cap_share_one_grey_line():
    pytest.importorskip("matplotlib")
    from rsmooth.stats import max_certified_radius

    def cert(n):
        return Certificate(
            prediction=torch.tensor([1]), radius=torch.tensor([0.2]), p_lower=torch.zeros(1),
            count=torch.zeros(1), n=n, n0=10, alpha=0.001, sigma=0.5,
        )  # fmt: skip

    runs = {"a": cert(1000), "b": cert(1000), "c": cert(100_000)}
    targets = dict.fromkeys(runs, torch.tensor([1]))
    lines = cap_lines(plot_certified_accuracy(runs, targets=targets))
    small, large = max_certified_radius(1000, 0.001, 0.5), max_certified_radius(100_000, 0.001, 0.5)
    assert [(x, label, color) for x, label, color, _ in lines] == [
        (pytest.approx(small), f"a, b: radius cap {small:.2f} (sigma=0.5, n=1,000 samples, alpha=0.001)", "#595959"),
        (pytest.approx(large), f"c: radius cap {large:.2f} (sigma=0.5, n=100,000 samples, alpha=0.001)", "#2ca02c"),
    ]  # fmt: skip
    ((_, label, _, _),) = cap_lines(
        plot_certified_accuracy(dict(list(runs.items())[:2]), targets=targets)
    )
    assert label == f"radius cap {small:.2f} (sigma=0.5, n=1,000 samples, alpha=0.001)"
