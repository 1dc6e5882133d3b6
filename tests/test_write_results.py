"""rsmooth.runner.write_results: a Certificate from your own loop to a results file (issue 12, 13)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from rsmooth import SmoothedClassifier
from rsmooth.metrics import read_results
from rsmooth.runner import COLUMNS, write_results


def _certificate():
    model = nn.Linear(2, 3)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[4.0, 0.0], [0.0, 4.0], [-4.0, -4.0]]))
        model.bias.zero_()
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    smoothed = SmoothedClassifier(model, 0.25)
    return smoothed.certify(x, n0=20, n=200, alpha=0.01, generator=torch.Generator().manual_seed(0))


def test_round_trip_with_labels_times_and_indices(tmp_path):
    cert = _certificate()
    out = tmp_path / "sub" / "mine.tsv"
    results = write_results(
        out, cert, torch.tensor([0, 0, 1]), times=[0.5, 1.25, 3600.0], indices=[7, 3, 9]
    )
    lines = out.read_text().splitlines()
    assert lines[0].split("\t") == list(COLUMNS)
    rows = [line.split("\t") for line in lines[1:]]
    assert [r[0] for r in rows] == ["7", "3", "9"]
    assert [r[5] for r in rows] == ["0:00:00.500000", "0:00:01.250000", "1:00:00"]
    assert [int(r[7]) for r in rows] == [200, 200, 200]
    assert [int(r[6]) for r in rows] == cert.count.tolist()
    assert results.prediction.tolist() == cert.prediction.tolist()
    assert results.radius.tolist() == pytest.approx(cert.radius.tolist(), rel=1e-2, abs=1e-3)
    expected_correct = [p == y for p, y in zip(cert.prediction.tolist(), [0, 0, 1], strict=True)]
    assert results.correct.tolist() == expected_correct
    assert read_results(out).idx.tolist() == [7, 3, 9]
    config = json.loads((tmp_path / "sub" / "mine.tsv.json").read_text())["config"]
    assert (config["sigma"], config["n"], config["n0"], config["alpha"]) == (0.25, 200, 20, 0.01)


def test_one_time_for_every_input_and_default_indices(tmp_path):
    out = tmp_path / "r.tsv"
    write_results(out, _certificate(), [0, 1, 1], times=2.0)
    rows = [line.split("\t") for line in out.read_text().splitlines()[1:]]
    assert [r[0] for r in rows] == ["0", "1", "2"] and {r[5] for r in rows} == {"0:00:02"}
    write_results(out, _certificate(), [0, 1, 1])
    assert {line.split("\t")[5] for line in out.read_text().splitlines()[1:]} == {"0:00:00"}


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"certificate": "x"}, TypeError, "certificate must be a Certificate"),
        ({"labels": [0, 1]}, ValueError, r"labels must have one entry per certified input \(3\), got 2"),
        ({"labels": torch.tensor([0.0, 1.0, 1.0])}, TypeError, "labels must hold integers"),
        ({"labels": [0, -1, 1]}, ValueError, "labels must be an integer >= 0, got -1"),
        ({"labels": "abc"}, TypeError, "labels must be a sequence or a tensor"),
        ({"times": [1.0, 2.0]}, ValueError, "times must have one entry per certified input"),
        ({"times": -1.0}, ValueError, "times must be non-negative finite seconds, got -1.0"),
        ({"indices": [0, 0, 1]}, ValueError, "indices must not repeat an index"),
        ({"path": 3}, TypeError, "path must be a path"),
    ],
)  # fmt: skip
def test_errors(tmp_path, kwargs, exc, match):
    args = {
        "path": tmp_path / "r.tsv",
        "certificate": _certificate(),
        "labels": [0, 1, 1],
        **kwargs,
    }
    path, cert, labels = args.pop("path"), args.pop("certificate"), args.pop("labels")
    with pytest.raises(exc, match=match):
        write_results(path, cert, labels, **args)
    assert not (tmp_path / "r.tsv").exists()
