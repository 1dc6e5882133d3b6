from pathlib import Path

import pytest
import torch

from rsmooth import Certificate
from rsmooth.metrics import (
    DEFAULT_RADII,
    CertificationResults,
    average_certified_radius,
    certified_accuracy,
    format_table,
    read_results,
)

# Copies of ../shared/data/reference-certify/ (the SmoothMix authors' released logs), kept in the
# repository so these checks never skip. Expected values from its README.md: ACR and certified
# accuracy % at r = 0, .25, .5, .75, 1
REFERENCE = Path(__file__).resolve().parent / "data" / "reference-certify"
EXPECTED = {
    "cifar10-smoothmix-sigma0.25.tsv": (0.553, [77.1, 67.9, 57.9, 46.7, 0.0]),
    "cifar10-smoothmix-onestep-sigma0.5.tsv": (0.736, [63.5, 57.2, 50.5, 43.4, 36.7]),
    "mnist-smoothmix-onestep-eta5-sigma1.0.tsv": (1.823, [93.3, 90.9, 87.5, 83.0, 77.5]),
}


def reference(name):
    return REFERENCE / name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_reproduces_the_reference_logs(name):
    results = read_results(reference(name))
    acr, accuracy = EXPECTED[name]
    assert len(results) == 10_000
    assert round(average_certified_radius(results), 3) == acr
    got = certified_accuracy(results, radii=[0.0, 0.25, 0.5, 0.75, 1.0])
    assert [round(100 * float(a), 1) for a in got] == accuracy
    # labels given explicitly give the same answer as the file's correct column
    assert torch.equal(certified_accuracy(results, results.label, [0.0, 0.5]), got[[0, 2]])


def make_cert(prediction, radius):
    n = len(prediction)
    return Certificate(
        prediction=torch.tensor(prediction),
        radius=torch.tensor(radius, dtype=torch.float64),
        p_lower=torch.zeros(n),
        count=torch.zeros(n, dtype=torch.long),
        n=100,
        n0=10,
        alpha=0.001,
        sigma=0.5,
    )


def test_definitions_count_abstentions_and_errors_as_zero_and_are_inclusive():
    cert = make_cert([0, 1, -1, 2, 0], [0.5, 0.25, 0.0, 1.0, 0.0])
    targets = torch.tensor([0, 1, 0, 1, 0])  # row 3 wrong, row 2 abstains
    acc = certified_accuracy(cert, targets, radii=[0.0, 0.25, 0.5, 0.51])
    assert acc.tolist() == [3 / 5, 2 / 5, 1 / 5, 0.0]
    assert average_certified_radius(cert, targets) == pytest.approx((0.5 + 0.25) / 5)


def test_abstention_never_counts_even_with_label_minus_one():
    cert = make_cert([-1], [0.0])
    assert certified_accuracy(cert, torch.tensor([-1]), [0.0]).tolist() == [0.0]


def write(tmp_path, text, name="r.tsv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_read_results_optional_columns(tmp_path):
    path = write(
        tmp_path,
        "idx\tlabel\tpredict\tradius\tcount\tn\n0\t1\t1\t0.5\t90\t100\n3\t2\t-1\t0.0\t40\t100\n\n",
    )
    res = read_results(path)
    assert res.idx.tolist() == [0, 3]
    assert res.correct.tolist() == [True, False]
    assert res.count.tolist() == [90, 40] and res.n.tolist() == [100, 100]
    assert isinstance(res, CertificationResults) and res.path == str(path)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "empty"),
        ("idx\tlabel\tradius\n", r"missing \['predict'\]"),
        ("idx\tlabel\tpredict\tradius\n0\t1\t1\n", "line 2: expected 4"),
        (
            "idx\tlabel\tpredict\tradius\n0\t1\tx\t0.5\n",
            "line 2: column 'predict' must be int, got 'x'",
        ),
        ("idx\tlabel\tpredict\tradius\n0\t1\t1\tnan\n", "must be finite"),
        ("idx\tlabel\tpredict\tradius\n0\t1\t1\t-0.5\n", "non-negative"),
    ],
)
def test_read_results_errors(tmp_path, text, match):
    with pytest.raises(ValueError, match=match):
        read_results(write(tmp_path, text))


def test_read_results_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_results(tmp_path / "nope.tsv")


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda c: certified_accuracy(c, None), TypeError, "targets are required"),
        (
            lambda c: certified_accuracy(c, torch.zeros(3, dtype=torch.long)),
            ValueError,
            "targets must have shape",
        ),
        (lambda c: certified_accuracy(c, [0, 0]), TypeError, "targets must be a torch.Tensor"),
        (
            lambda c: certified_accuracy(c, torch.zeros(2, dtype=torch.long), [-0.1]),
            ValueError,
            "radii must be non-negative",
        ),
        (lambda c: certified_accuracy(object(), None), TypeError, "cert must be a Certificate"),
        (lambda c: format_table({}), ValueError, "at least one"),
        (
            lambda c: format_table(
                {"a": c}, fmt="html", targets={"a": torch.zeros(2, dtype=torch.long)}
            ),
            ValueError,
            "fmt must be",
        ),
    ],
)
def test_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call(make_cert([0, 1], [0.1, 0.2]))


def test_format_table_shapes():
    a = make_cert([0, 1], [0.1, 0.6])
    t = {"a": torch.tensor([0, 1]), "b": torch.tensor([0, 0])}
    md = format_table({"a": a, "b": a}, [0.0, 0.5], targets=t)
    assert md.splitlines()[2] == "| a | 2 | 0.350 | 100.0 | 50.0 |"
    assert md.splitlines()[3] == "| b | 2 | 0.050 | 50.0 | 0.0 |"
    csv = format_table({"a": a}, [0.0], targets=t, fmt="csv")
    assert csv.splitlines() == ["model,inputs,ACR,r=0.00", "a,2,0.350,100.0"]
    text = format_table({"a": a}, DEFAULT_RADII, targets=t, fmt="text")
    assert len(text.splitlines()) == 2
