"""Resuming refuses another model's or dataset's results file (issue 12, item 1)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from rsmooth import SmoothedClassifier
from rsmooth.procedures import Certify
from rsmooth.runner import certify_dataset

DATA = TensorDataset(
    torch.rand(6, 3, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2] * 2)
)


def _smoothed(seed: int) -> SmoothedClassifier:
    torch.manual_seed(seed)  # the test's own weights
    return SmoothedClassifier(nn.Linear(3, 3), 0.25)


def _run(smoothed, out, **kw):
    return certify_dataset(
        smoothed, DATA, out, procedure=Certify(n=50, n0=10), progress=False, **kw
    )


def test_resume_with_another_model_is_refused(tmp_path) -> None:
    out = tmp_path / "r.tsv"
    _run(_smoothed(0), out, stop=3)
    before = out.read_text()
    with pytest.raises(ValueError, match=r"another run .*model_hash: .* in the file, .* now"):
        _run(_smoothed(1), out)
    assert out.read_text() == before  # nothing appended
    assert len(_run(_smoothed(0), out)) == 6  # the same model resumes


def test_resume_with_another_identity_is_refused_unless_forced(tmp_path) -> None:
    out = tmp_path / "r.tsv"
    _run(_smoothed(0), out, stop=3, identity={"dataset": "mnist", "split": "test"})
    recorded = json.loads((tmp_path / "r.tsv.json").read_text())["identity"]
    assert recorded["dataset"] == "mnist" and len(recorded["model_hash"]) == 64
    with pytest.raises(ValueError, match=r'split: "test" in the file, "train" now'):
        _run(_smoothed(0), out, identity={"dataset": "mnist", "split": "train"})
    results = _run(_smoothed(1), out, identity={"dataset": "mnist", "split": "train"}, force=True)
    assert len(results) == 6


def test_model_hash_ignores_device_and_tracks_weights(tmp_path) -> None:
    from rsmooth.runner import _state_dict_hash

    a, b = nn.Linear(3, 3), nn.Linear(3, 3)
    b.load_state_dict(a.state_dict())
    assert _state_dict_hash(a) == _state_dict_hash(b)
    with torch.no_grad():
        b.bias[0] += 1e-6
    assert _state_dict_hash(a) != _state_dict_hash(b)
    c = nn.Sequential(nn.BatchNorm1d(2))  # integer buffers too
    assert len(_state_dict_hash(c)) == 64


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"identity": [1]}, TypeError, "identity must be a mapping"),
        ({"identity": {"x": object()}}, TypeError, "identity must hold JSON values"),
        ({"force": 1}, TypeError, "force must be a bool"),
    ],
)
def test_identity_arguments_validated(tmp_path, kwargs, exc, match) -> None:
    with pytest.raises(exc, match=match):
        _run(_smoothed(0), tmp_path / "r.tsv", **kwargs)
    assert not (tmp_path / "r.tsv").exists()
