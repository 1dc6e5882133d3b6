"""Command-line mistakes caught (issue 12): missing checkpoint, resuming another model, input
range, fixed-batch torch.export, whole error messages, early validation, warnings, report."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from runner_helpers import ROOT, TinyLinear

from rsmooth import SmoothedClassifier
from rsmooth.cli import main
from rsmooth.runner import write_results

BASE = [
    "--dataset", "runner_helpers:tiny_dataset", "--sigma", "0.25", "--n", "200", "--n0", "20",
    "--batch-size", "200", "--no-progress",
]  # fmt: skip


def run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def checkpoint(tmp_path, seed):
    torch.manual_seed(seed)  # the test's own weights
    path = tmp_path / f"ckpt{seed}.pt"
    torch.save(TinyLinear().state_dict(), path)
    return str(path)


# ---------------------------------------------------------------------------- item 3
def test_factory_without_checkpoint_is_refused(tmp_path, capsys):
    out = tmp_path / "r.tsv"
    code, _, err = run(
        ["certify", "--model", "runner_helpers:tiny_model", *BASE, "--out", str(out)], capsys
    )
    assert code == 2
    assert "needs --checkpoint" in err and "--factory-loads-weights" in err
    assert not out.exists()
    argv = [
        "certify",
        "--model",
        "runner_helpers:tiny_model",
        *BASE,
        "--out",
        str(out),
        "--max",
        "2",
    ]
    assert run([*argv, "--factory-loads-weights"], capsys)[0] == 0
    code, _, err = run(
        [*argv, "--factory-loads-weights", "--checkpoint", checkpoint(tmp_path, 0)], capsys
    )
    assert code == 2 and "not both" in err


# ---------------------------------------------------------------------------- item 1
def test_resume_with_another_checkpoint_is_refused_unless_forced(tmp_path, capsys):
    out = tmp_path / "r.tsv"
    argv = ["certify", "--model", "runner_helpers:tiny_model", *BASE, "--out", str(out)]
    assert run([*argv, "--checkpoint", checkpoint(tmp_path, 0), "--max", "3"], capsys)[0] == 0
    before = out.read_text()
    other = checkpoint(tmp_path, 1)
    code, _, err = run([*argv, "--checkpoint", other, "--max", "6"], capsys)
    assert code == 2 and "checkpoint_sha256" in err and "--force" in err
    assert out.read_text() == before
    sidecar = json.loads((tmp_path / "r.tsv.json").read_text())
    assert sidecar["identity"]["model"] == "runner_helpers:tiny_model"
    assert sidecar["identity"]["dataset"] == "runner_helpers:tiny_dataset"
    assert run([*argv, "--checkpoint", other, "--max", "6", "--force"], capsys)[0] == 0
    assert len(out.read_text().splitlines()) == 7


# ---------------------------------------------------------------------------- item 4
def test_input_range_option(tmp_path, capsys):
    out = tmp_path / "r.tsv"
    argv = [
        "certify", "--model", "runner_helpers:tiny_model", "--factory-loads-weights",
        "--dataset", "runner_helpers:tiny_dataset", "--sigma", "0.25", "--n", "100", "--n0", "10",
        "--no-progress", "--max", "2", "--out", str(out),
    ]  # fmt: skip
    code, _, err = run([*argv, "--input-range", "0.2,0.3"], capsys)
    assert code == 2 and "must lie in [0.2, 0.3]" in err and "--input-range none" in err
    assert not out.exists()
    assert run([*argv, "--input-range", "none"], capsys)[0] == 0
    code, _, err = run([*argv, "--input-range", "1,0"], capsys)
    assert code == 2 and "needs LOW < HIGH" in err


# ---------------------------------------------------------------------------- item 9
def test_fixed_batch_export_gives_one_message(tmp_path, capsys):
    model = TinyLinear()
    program = torch.export.export(model, (torch.rand(2, 1, 8, 8),))
    path = tmp_path / "fixed.pt2"
    torch.export.save(program, path)
    out = tmp_path / "r.tsv"
    code, _, err = run(["certify", "--model", str(path), *BASE, "--out", str(out)], capsys)
    assert code == 2
    assert "fixed batch size of 2" in err and "dynamic_shapes" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


# ---------------------------------------------------------------------------- item 10
def test_whole_error_messages_without_escape_codes(tmp_path, capsys, monkeypatch):
    import runner_helpers

    def broken(**_):
        raise ValueError("\x1b[31mfirst line\x1b[0m\nsecond line with the instructions")

    monkeypatch.setattr(runner_helpers, "broken_factory", broken, raising=False)
    argv = ["certify", "--model", "runner_helpers:broken_factory", "--factory-loads-weights"]
    code, _, err = run([*argv, *BASE, "--out", str(tmp_path / "r.tsv")], capsys)
    assert code == 2
    assert "first line\nsecond line with the instructions" in err
    assert "\x1b" not in err


def test_weights_only_failure_keeps_its_instructions(tmp_path, capsys):
    path = tmp_path / "pickled.pt"
    torch.save({"state_dict": TinyLinear().state_dict(), "args": SlotsLike()}, path)
    argv = ["certify", "--model", "runner_helpers:tiny_model", "--checkpoint", str(path)]
    code, _, err = run([*argv, *BASE, "--out", str(tmp_path / "r.tsv")], capsys)
    assert code == 2
    assert "--checkpoint: cannot load" in err
    assert len(err.strip().splitlines()) > 1  # torch's explanation is kept, not cut
    assert "weights_only" in err


class SlotsLike:
    """An object weights_only loading refuses."""


def test_max_zero_fails_before_creating_files(tmp_path, capsys):
    out = tmp_path / "r.tsv"
    argv = ["certify", "--model", "runner_helpers:tiny_model", "--factory-loads-weights", *BASE]
    code, _, err = run([*argv, "--out", str(out), "--max", "0"], capsys)
    assert code == 2 and "--max must be -1 (all) or a positive dataset index" in err
    assert not out.exists() and not (tmp_path / "r.tsv.json").exists()


def test_help_documents_the_debug_switch(capsys):
    code, out, _ = run(["--help"], capsys)
    assert code == 0 and "RSMOOTH_DEBUG=1" in out


def test_warnings_are_attributed_to_the_command(tmp_path, capsys):
    out = tmp_path / "r.tsv"
    argv = ["certify", "--model", "runner_helpers:tiny_model", "--factory-loads-weights", *BASE]
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        code, _, err = run([*argv, "--out", str(out), "--max", "2", "--n", "5"], capsys)
    assert code == 0
    assert "rsmooth certify: warning: certify with n=5" in err and "SampleSizeWarning" in err
    assert "runner.py" not in err and "smoothing.py" not in err


# ---------------------------------------------------------------------------- item 11
def _results(path, n, alpha, sigma=0.25):
    smoothed = SmoothedClassifier(TinyLinear(), sigma)
    x = torch.full((4, 1, 8, 8), 0.5)
    cert = smoothed.certify(x, n0=10, n=n, alpha=alpha, generator=torch.Generator().manual_seed(0))
    write_results(path, cert, [0, 1, 2, 0])
    return str(path)


def test_report_shows_settings_warns_on_mismatch_and_stops_radii_at_the_cap(tmp_path, capsys):
    a = _results(tmp_path / "a.tsv", 100, 0.001)
    b = _results(tmp_path / "b.tsv", 1000, 0.001)
    code, out, err = run(["report", a, b], capsys)
    assert code == 0
    from scipy.stats import norm

    cap_a, cap_b = (0.25 * norm.ppf(0.001 ** (1 / n)) for n in (100, 1000))  # sigma Phi^-1(a^(1/n))
    assert f"a: sigma 0.25, n 100, alpha 0.001, radius cap {cap_a:.3f}" in err
    assert f"b: sigma 0.25, n 1000, alpha 0.001, radius cap {cap_b:.3f}" in err
    assert "warning: the runs differ in n (a: 100, b: 1000)" in err
    assert 0.5 < cap_b < 0.75
    header = next(line for line in out.splitlines() if line.startswith("| model"))
    assert "r=0.50" in header and "r=0.75" not in header  # stops at the largest cap
    code, out, err = run(["report", a, "--radii", "0", "1"], capsys)
    assert code == 0 and "r=1.00" in out and "warning" not in err


def test_report_without_settings_keeps_default_radii(tmp_path, capsys):
    path = tmp_path / "ref.tsv"
    path.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t1\t1\t0.5\t1\t0\n")
    code, out, err = run(["report", str(path)], capsys)
    assert code == 0 and "r=2.00" in out and "no settings file" in err


# ---------------------------------------------------------------------------- issue 20
# items 5, 10, 11: the command line loads checkpoints through rsmooth.models.load_model
RESEARCH = ROOT / "tests" / "data" / "reference-archs"


def fake_cifar10(root, size=2):
    """A CIFAR-10 python-pickle folder with `size` test images (the layout of the real one)."""
    import pickle

    import numpy as np

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(0).integers(0, 256, size=(size, 3072), dtype=np.uint8)
    batch = {"data": pixels, "labels": [i % 10 for i in range(size)]}
    (folder / "test_batch").write_bytes(pickle.dumps(batch))
    return root


def _cifar(tmp_path, *extra, checkpoint):
    fake_cifar10(tmp_path / "data")
    return [
        "certify", "--checkpoint", str(checkpoint), "--dataset", "cifar10",
        "--data-root", str(tmp_path / "data"), "--sigma", "0.25", "--n", "20", "--n0", "10",
        "--batch-size", "30", "--out", str(tmp_path / "r.tsv"), "--no-progress", *extra,
    ]  # fmt: skip


def _reference_state():
    path = RESEARCH / "cifar_resnet20.checkpoint.pth.tar"
    return torch.load(path, weights_only=True)["state_dict"]


@pytest.mark.parametrize(("dataset", "classes"), [("cifar100", 100), ("imagenet", 1000)])
def test_another_datasets_normalisation_is_refused(tmp_path, capsys, dataset, classes):
    argv = _cifar(
        tmp_path,
        "--normalization",
        dataset,
        checkpoint=RESEARCH / "cifar_resnet20.checkpoint.pth.tar",
    )
    code, _, err = run(argv, capsys)
    assert code == 2
    assert f"dataset '{dataset}' has {classes} classes but arch 'cifar_resnet20' has 10" in err
    assert not (tmp_path / "r.tsv").exists()


def test_a_research_checkpoint_saved_under_data_parallel_certifies(tmp_path, capsys):
    # it was refused with a Python snippet, while the factory path stripped the prefix
    state = {f"module.{k}": v for k, v in _reference_state().items()}
    path = tmp_path / "dp.pth.tar"
    torch.save({"epoch": 1, "arch": "cifar_resnet20", "state_dict": state}, path)
    code, _, err = run(_cifar(tmp_path, checkpoint=path), capsys)
    assert code == 0, err


def test_a_checkpoint_weights_only_refuses_names_the_opt_in(tmp_path, capsys):
    import argparse

    path = tmp_path / "args.pth.tar"
    saved = {"arch": "cifar_resnet20", "state_dict": _reference_state()}
    torch.save({**saved, "args": argparse.Namespace(lr=0.1)}, path)
    code, _, err = run(_cifar(tmp_path, checkpoint=path), capsys)
    assert code == 2
    assert "Unsupported global: GLOBAL argparse.Namespace" in err and "\x1b" not in err
    assert "--trust-checkpoint" in err and "not a PyTorch checkpoint" not in err
    assert run(_cifar(tmp_path, "--trust-checkpoint", checkpoint=path), capsys)[0] == 0


def test_trust_checkpoint_is_documented_as_running_code(capsys):
    assert main(["certify", "--help"]) == 0
    assert "RUNS CODE FROM THE FILE" in " ".join(capsys.readouterr().out.split())


def test_a_plain_state_dict_names_the_factory_that_builds_it(tmp_path, capsys):
    path = tmp_path / "bare.pt"
    torch.save({k[2:]: v for k, v in _reference_state().items()}, path)  # the bare network
    code, _, err = run(_cifar(tmp_path, checkpoint=path), capsys)
    assert code == 2 and "--model rsmooth.models:get_model --model-kwargs" in err
    kwargs = json.dumps({"arch": "cifar_resnet20", "dataset": "cifar10"})
    argv = _cifar(
        tmp_path, "--model", "rsmooth.models:get_model", "--model-kwargs", kwargs, checkpoint=path
    )
    code, _, err = run(argv, capsys)
    assert code == 0, err


def test_a_factory_checkpoint_saved_by_torch_compile_loads(tmp_path, capsys):
    torch.manual_seed(0)
    path = tmp_path / "compiled.pt"
    torch.save({f"_orig_mod.{k}": v for k, v in TinyLinear().state_dict().items()}, path)
    argv = ["certify", "--model", "runner_helpers:tiny_model", "--checkpoint", str(path)]
    code, _, err = run([*argv, *BASE, "--out", str(tmp_path / "r.tsv"), "--max", "2"], capsys)
    assert code == 0, err
