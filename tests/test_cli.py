import importlib.util
import json
import re
import subprocess
import sys
import warnings

import pytest
import torch
from runner_helpers import CERTIFY, ROOT, TinyLinear, rows, subprocess_env, tiny_dataset

from rsmooth import SmoothedClassifier
from rsmooth.cli import build_parser, main
from rsmooth.procedures import Certify
from rsmooth.runner import Shard, certify_dataset, part_path

REFERENCE = ROOT / "tests" / "data" / "reference-certify"  # copies of shared/data/reference-certify
# From shared/data/reference-certify/README.md: ACR and certified accuracy % at r = 0, .25, .5, .75, 1
EXPECTED = {
    "cifar10-smoothmix-sigma0.25": (0.553, [77.1, 67.9, 57.9, 46.7, 0.0]),
    "cifar10-smoothmix-onestep-sigma0.5": (0.736, [63.5, 57.2, 50.5, 43.4, 36.7]),
    "mnist-smoothmix-onestep-eta5-sigma1.0": (1.823, [93.3, 90.9, 87.5, 83.0, 77.5]),
}
MODEL = "runner_helpers:tiny_model"
DATASET = "runner_helpers:tiny_dataset"


def certify_args(out, *extra, model=MODEL, dataset=DATASET):
    # a factory model needs --checkpoint or --factory-loads-weights (tiny_model is untrained)
    own = ["--factory-loads-weights"] if ":" in model and "--checkpoint" not in extra else []
    return [
        "certify", "--model", model, "--dataset", dataset, "--sigma", "0.25", "--n", "200",
        "--n0", "20", "--batch-size", "200", "--out", str(out), "--no-progress", *own, *extra,
    ]  # fmt: skip


def run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def expected_rows(tmp_path, model=None, stop=None):
    out = tmp_path / f"expected-{id(model)}-{stop}.tsv"
    smoothed = SmoothedClassifier(model or TinyLinear(), sigma=0.25, batch_size=200)
    certify_dataset(smoothed, tiny_dataset(), out, stop=stop, progress=False, procedure=CERTIFY)
    return rows(out)


def parse_markdown(table):
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return {
        cells[0]: dict(zip(header[1:], cells[1:], strict=True))
        for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines[1:])
    }


# ---------------------------------------------------------------------------- help
def test_help_texts(capsys):
    code, out, _ = run(["--help"], capsys)
    assert code == 0 and all(command in out for command in ("certify", "report", "merge"))
    code, out, _ = run(["certify", "--help"], capsys)
    assert code == 0
    for option in ("--model", "--checkpoint", "--dataset", "--sigma", "--n ", "--n0", "--alpha",
                   "--batch-size", "--seed", "--skip", "--max", "--out", "--device",
                   "--progress", "--no-progress", "--shard", "--no-merge", "examples:", "resume"):  # fmt: skip
        assert option in out, option
    code, out, _ = run(["report", "--help"], capsys)
    assert code == 0 and all(o in out for o in ("--radii", "--plot", "--format", "--labels"))
    code, out, _ = run(["merge", "--help"], capsys)
    assert code == 0 and "gaps" in out
    assert build_parser().prog == "rsmooth"


@pytest.mark.slow
def test_python_dash_m_rsmooth(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "rsmooth", "report", "missing.tsv"],
        env=subprocess_env(), capture_output=True, text=True, cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr == "rsmooth report: error: no such file: missing.tsv\n"


# ---------------------------------------------------------------------------- end to end
def test_certify_then_report_then_resume(tmp_path, capsys):
    out = tmp_path / "run.tsv"
    code, stdout, err = run(certify_args(out), capsys)
    assert code == 0, err
    assert rows(out) == expected_rows(tmp_path)
    assert parse_markdown(stdout)["run.tsv"]["inputs"] == "24"
    code, report, err = run(["report", str(out), "--radii", "0", "0.25", "--format", "csv"], capsys)
    assert code == 0, err
    lines = report.splitlines()
    assert lines[0] == "model,inputs,ACR,r=0.00,r=0.25"
    assert lines[1].startswith("run,24,")
    # a rerun resumes: nothing to do, same file
    before = out.read_text()
    assert run(certify_args(out), capsys)[0] == 0
    assert out.read_text() == before


def test_skip_max_and_seed(tmp_path, capsys):
    out = tmp_path / "r.tsv"
    assert run(certify_args(out, "--skip", "3", "--max", "10", "--seed", "0"), capsys)[0] == 0
    reference = expected_rows(tmp_path)
    assert rows(out) == [reference[i] for i in (0, 3, 6, 9)]


@pytest.mark.parametrize(
    "form", ["state_dict", "wrapped_state_dict", "wrapped_model", "data_parallel"]
)
def test_checkpoint_forms(tmp_path, capsys, form):
    trained = TinyLinear(scale=3.0)
    state = trained.state_dict()
    payload = {
        "state_dict": state,
        "wrapped_state_dict": {"state_dict": state, "epoch": 3, "arch": "tiny"},
        "wrapped_model": {"model": state},
        "data_parallel": {"state_dict": {f"module.{k}": v for k, v in state.items()}},
    }[form]
    torch.save(payload, tmp_path / "ckpt.pt")
    out = tmp_path / "r.tsv"
    code, _, err = run(
        certify_args(out, "--checkpoint", str(tmp_path / "ckpt.pt"), "--max", "6"), capsys
    )
    assert code == 0, err
    assert rows(out) == expected_rows(tmp_path, trained, stop=6)
    assert rows(out) != expected_rows(tmp_path, stop=6)


@pytest.mark.parametrize("kind", ["torchscript", pytest.param("export", marks=pytest.mark.slow)])
def test_model_files(tmp_path, capsys, kind):
    model = TinyLinear().eval()
    if kind == "torchscript":
        path = tmp_path / "model.pt"
        with warnings.catch_warnings():  # deprecated in torch 2.13, still loadable
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.script(model).save(str(path))
    else:
        path = tmp_path / "model.pt2"
        batch = torch.export.Dim("batch", min=1, max=4096)
        program = torch.export.export(
            model, (torch.zeros(2, 1, 8, 8),), dynamic_shapes=({0: batch},)
        )
        torch.export.save(program, path)
    out = tmp_path / "r.tsv"
    code, _, err = run(certify_args(out, "--max", "6", model=str(path)), capsys)
    assert code == 0, err
    assert rows(out) == expected_rows(tmp_path, stop=6)


def test_named_dataset_digits(tmp_path, capsys):
    if importlib.util.find_spec("rsmooth.datasets") is None:
        pytest.skip("rsmooth.datasets is not in this tree")
    datasets = importlib.import_module("rsmooth.datasets")
    data = datasets.load_dataset("digits", "test")
    shape = tuple(data[0][0].shape)
    out = tmp_path / "digits.tsv"
    numel = int(torch.tensor(shape).prod())
    argv = [
        "certify", "--model", "runner_helpers:flat_linear", "--dataset", "digits",
        "--model-kwargs", json.dumps({"in_features": numel, "num_classes": 10}),
        "--sigma", "0.25", "--n", "100", "--n0", "10", "--max", "3", "--out", str(out),
        "--no-progress", "--factory-loads-weights",
    ]  # fmt: skip
    code, _, err = run(argv, capsys)
    assert code == 0, err
    assert len(rows(out)) == 3


def test_merge_command(tmp_path, capsys):
    out = tmp_path / "r.tsv"
    smoothed = SmoothedClassifier(TinyLinear(), sigma=0.25, batch_size=200)
    for index in range(2):
        certify_dataset(
            smoothed,
            tiny_dataset(),
            out,
            shard=(index, 2),
            merge=False,
            progress=False,
            procedure=CERTIFY,
        )
    code, _, err = run(["merge", str(out)], capsys)
    assert code == 0 and "24 rows" in err
    assert rows(out) == expected_rows(tmp_path)
    out.unlink()
    code, _, err = run(["merge", str(out), str(part_path(out, Shard(1, 2)))], capsys)
    assert code == 2 and "rows missing from the parts (gaps)" in err


def test_sharded_certify_without_merge(tmp_path, capsys):
    out = tmp_path / "r.tsv"
    code, _, err = run(certify_args(out, "--shard", "1/2", "--no-merge"), capsys)
    assert code == 0 and "12 rows in" in err and "rsmooth merge" in err
    assert not out.exists() and part_path(out, Shard(1, 2)).exists()
    code, stdout, err = run(certify_args(out, "--shard", "0/2"), capsys)
    assert code == 0, err
    assert rows(out) == expected_rows(tmp_path) and "| r.tsv | 24 |" in stdout


# ---------------------------------------------------------------------------- report on the reference logs
def test_report_reproduces_the_reference_logs(capsys):
    files = [REFERENCE / f"{name}.tsv" for name in EXPECTED]
    code, out, err = run(
        ["report", *map(str, files), "--radii", "0", "0.25", "0.5", "0.75", "1.0"], capsys
    )
    assert code == 0, err
    table = parse_markdown(out)
    assert list(table) == list(EXPECTED)
    for name, (acr, accuracy) in EXPECTED.items():
        assert table[name]["ACR"] == f"{acr:.3f}"
        assert table[name]["inputs"] == "10000"
        assert [float(table[name][f"r={r:.2f}"]) for r in (0, 0.25, 0.5, 0.75, 1.0)] == accuracy


# ---------------------------------------------------------------------------- errors
def write(path, text):
    path.write_text(text)
    return str(path)


HEADER = "idx\tlabel\tpredict\tradius\tcorrect\ttime\n"


@pytest.mark.parametrize(
    ("make_argv", "message"),
    [
        (lambda t: ["certify", "--model", MODEL, "--dataset", DATASET, "--out", str(t / "r.tsv")], "the following arguments are required: --sigma"),
        (lambda t: ["frobnicate"], "invalid choice: 'frobnicate'"),
        (lambda t: [], "the following arguments are required: COMMAND"),
        (lambda t: certify_args(t / "r.tsv", model="no_such_module_xyz:f"), "--model: cannot import 'no_such_module_xyz'"),
        (lambda t: certify_args(t / "r.tsv", model="runner_helpers:missing"), "--model: 'runner_helpers' has no attribute 'missing'"),
        (lambda t: certify_args(t / "r.tsv", model="runner_helpers:not_a_model"), "returned str, not a torch.nn.Module"),
        (lambda t: certify_args(t / "r.tsv", model="runner_helpers:NUM_CLASSES"), "'runner_helpers:NUM_CLASSES' is not callable"),
        (lambda t: certify_args(t / "r.tsv", model="model_file_that_does_not_exist.pt"), "--model must be package.module:factory or an existing model file"),
        (lambda t: certify_args(t / "r.tsv", model=write(t / "m.pt", "garbage")), "is not a TorchScript file"),
        (lambda t: certify_args(t / "r.tsv", model=write(t / "m.pt2", "garbage")), "is not a torch.export file"),
        (lambda t: certify_args(t / "r.tsv", "--checkpoint", str(t / "none.pt")), "--checkpoint: no such file"),
        (lambda t: certify_args(t / "r.tsv", "--checkpoint", write(t / "c.pt", "garbage")), "--checkpoint: cannot load"),
        (lambda t: certify_args(t / "r.tsv", "--model-kwargs", "{oops"), "argument --model-kwargs: not valid JSON"),
        (lambda t: certify_args(t / "r.tsv", "--model-kwargs", "[1]"), "argument --model-kwargs: must be a JSON object"),
        (lambda t: certify_args(t / "r.tsv", "--model-kwargs", '{"depth": 3}'), "unexpected keyword argument 'depth'"),
        (lambda t: certify_args(t / "r.tsv", dataset="runner_helpers:tiny_model"), "not a dataset"),
        (lambda t: certify_args(t / "r.tsv", "--sigma", "-1"), "sigma must be positive and finite, got -1.0"),
        (lambda t: certify_args(t / "r.tsv", "--n", "0"), "n must be a positive integer, got 0"),
        (lambda t: certify_args(t / "r.tsv", "--n", "many"), "argument --n/--num-samples: invalid int value: 'many'"),
        (lambda t: certify_args(t / "r.tsv", "--alpha", "2"), r"alpha must be in the open interval (0, 1), got 2.0"),
        (lambda t: certify_args(t / "r.tsv", "--batch-size", "0"), "batch_size must be a positive integer, got 0"),
        (lambda t: certify_args(t / "r.tsv", "--seed", "-3"), "seed must be an integer >= 0, got -3"),
        (lambda t: certify_args(t / "r.tsv", "--skip", "0"), "skip must be a positive integer, got 0"),
        (lambda t: certify_args(t / "r.tsv", "--max", "-5"), "--max must be -1 (all) or a positive dataset index (certify inputs 0..MAX-1), got -5"),
        (lambda t: certify_args(t / "r.tsv", "--shard", "3/2"), "argument --shard: needs 0 <= INDEX < COUNT"),
        (lambda t: certify_args(t / "r.tsv", "--shard", "x"), "argument --shard: must be INDEX/COUNT"),
        (lambda t: certify_args(t / "r.tsv", "--device", "warp-drive"), "--device: not a device: 'warp-drive'"),
        (lambda t: certify_args(write(t / "r.tsv", HEADER)), "exists with a different header"),
        (lambda t: ["report", str(t / "missing.tsv")], "no such file: "),
        (lambda t: ["report", write(t / "bad.tsv", HEADER + "0\t1\t1\t0.5\t1\t0\n1\t1\t1\tbig\t1\t0\n")], "line 3: column 'radius' must be float, got 'big'"),
        (lambda t: ["report", write(t / "short.tsv", HEADER + "0\t1\t1\n")], "line 2: expected 6 tab-separated fields, got 3"),
        (lambda t: ["report", write(t / "cols.tsv", "a\tb\n1\t2\n")], "header must contain the columns"),
        (lambda t: ["report", write(t / "empty.tsv", "")], "the file is empty"),
        (lambda t: ["report", write(t / "none.tsv", HEADER)], "no rows"),
        (lambda t: ["report", write(t / "a.tsv", HEADER + "0\t1\t1\t0.5\t1\t0\n"), "--labels", "x", "y"], "--labels must give one name per file (1), got 2"),
        (lambda t: ["report", write(t / "a.tsv", HEADER + "0\t1\t1\t0.5\t1\t0\n"), "--radii", "-1"], "--radii must be non-negative finite numbers, got -1.0"),
        (lambda t: ["report", write(t / "a.tsv", HEADER + "0\t1\t1\t0.5\t1\t0\n"), "--format", "html"], "argument --format: invalid choice: 'html'"),
        (lambda t: ["report", write(t / "a.tsv", HEADER + "0\t1\t1\t0.5\t1\t0\n"), "--plot", str(t / "p.png"), "--max-radius", "0"], "max_radius must be positive and finite, got 0.0"),
        (lambda t: ["merge", str(t / "r.tsv")], "no part files"),
    ],
)  # fmt: skip
def test_errors_are_one_line_with_status_2(tmp_path, capsys, monkeypatch, make_argv, message):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(make_argv(tmp_path), capsys)
    assert code == 2
    assert message in err, err
    # one message (whole, possibly several lines), no traceback, no terminal colour codes
    assert sum(line.startswith("rsmooth") and "error:" in line for line in err.splitlines()) == 1
    assert err.startswith("rsmooth") and "Traceback" not in err and "\x1b" not in err


def test_resuming_with_other_settings_is_an_error(tmp_path, capsys):
    out = tmp_path / "r.tsv"
    assert run(certify_args(out, "--max", "2"), capsys)[0] == 0
    code, _, err = run(certify_args(out, "--sigma", "0.5"), capsys)
    assert code == 2 and "sigma=0.25 in the file, 0.5 now" in err


def test_a_dataset_name_without_rsmooth_datasets(tmp_path, capsys):
    if importlib.util.find_spec("rsmooth.datasets") is not None:
        code, _, err = run(certify_args(tmp_path / "r.tsv", dataset="no-such-dataset"), capsys)
        assert code == 2 and "--dataset must be one of" in err
    else:
        code, _, err = run(certify_args(tmp_path / "r.tsv", dataset="mnist"), capsys)
        assert code == 2 and "rsmooth.datasets is not available" in err


def test_cuda_device_without_cuda(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available")
    code, _, err = run(certify_args(tmp_path / "r.tsv", "--device", "cuda"), capsys)
    assert code == 2 and "CUDA is not available" in err


def test_interrupt_exit_status(tmp_path, capsys, monkeypatch):
    import rsmooth.runner

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(rsmooth.runner, "certify_dataset", interrupted)
    code, _, err = run(certify_args(tmp_path / "r.tsv"), capsys)
    assert code == 130 and re.fullmatch(r"rsmooth certify: interrupted .* resume\n", err)


# ---------------------------------------------------------------------------- research checkpoints
RESEARCH = ROOT / "tests" / "data" / "reference-archs"  # copies of shared/data/reference-archs


def fake_cifar10(root, size=2):
    """A CIFAR-10 python-pickle folder with `size` test images (the layout of the real one)."""
    import pickle

    import numpy as np

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    pixels = np.random.default_rng(0).integers(0, 256, size=(size, 3072), dtype=np.uint8)
    batch = {"data": pixels, "labels": [i % 10 for i in range(size)]}
    (folder / "test_batch").write_bytes(pickle.dumps(batch))
    return root


def research_args(tmp_path, *extra, checkpoint=None, dataset="cifar10"):
    checkpoint = checkpoint or RESEARCH / "cifar_resnet20.checkpoint.pth.tar"
    return [
        "certify", "--checkpoint", str(checkpoint), "--dataset", dataset,
        "--data-root", str(tmp_path / "data"), "--sigma", "0.25", "--n", "50", "--n0", "10",
        "--batch-size", "60", "--out", str(tmp_path / "r.tsv"), "--no-progress", *extra,
    ]  # fmt: skip


def test_certify_a_research_checkpoint_without_model(tmp_path, capsys):
    from rsmooth.datasets import load_dataset
    from rsmooth.models import load_research_checkpoint

    fake_cifar10(tmp_path / "data")
    code, out, err = run(research_args(tmp_path), capsys)
    assert code == 0, err
    assert "| r.tsv |" in out
    # the same rows as certifying the loaded model directly with the same settings
    model = load_research_checkpoint(RESEARCH / "cifar_resnet20.checkpoint.pth.tar", "cifar10")
    smoothed = SmoothedClassifier(model, sigma=0.25, batch_size=60)
    dataset = load_dataset("cifar10", "test", root=tmp_path / "data")
    expected = tmp_path / "expected.tsv"
    certify_dataset(
        smoothed, dataset, expected, procedure=Certify(n=50, n0=10, alpha=0.001), progress=False
    )
    assert rows(tmp_path / "r.tsv") == rows(expected) and len(rows(expected)) == 2


def test_research_checkpoint_normalisation_is_the_datasets(tmp_path, capsys):
    fake_cifar10(tmp_path / "data")
    assert run(research_args(tmp_path, "--normalization", "cifar10"), capsys)[0] == 0
    same = rows(tmp_path / "r.tsv")
    (tmp_path / "r.tsv").unlink()
    (tmp_path / "r.tsv.json").unlink()
    assert run(research_args(tmp_path), capsys)[0] == 0
    assert rows(tmp_path / "r.tsv") == same


@pytest.mark.parametrize(
    ("make_argv", "message"),
    [
        (lambda t: [a for a in research_args(t) if a != "--checkpoint" and not a.endswith(".tar")], "give --model (package.module:factory or a model file), or --checkpoint with a research-format checkpoint"),
        (lambda t: research_args(t, dataset=DATASET), "--dataset 'runner_helpers:tiny_dataset': a research checkpoint does not record its dataset"),
        (lambda t: research_args(t, "--normalization", "svhn"), "--normalization 'svhn': a research checkpoint does not record its dataset"),
        (lambda t: research_args(t, checkpoint=t / "missing.pth.tar"), "--checkpoint: no such file"),
        (lambda t: research_args(t, checkpoint=save(t / "sd.pt", {"w": torch.zeros(1)})), "holds a plain state dict (keys ['w']) without the research format's 'arch'"),
        (lambda t: research_args(t, checkpoint=save(t / "x.pt", {"arch": "vgg", "state_dict": {}})), "arch must be one of ['lenet', 'cifar_resnet20'"),
        (lambda t: research_args(t, checkpoint=RESEARCH / "lenet.checkpoint.pth.tar"), "dataset 'cifar10' has 3-channel images but arch 'lenet' takes 1"),
        (lambda t: certify_args(t / "r.tsv", "--normalization", "cifar10"), "--normalization only applies to a research checkpoint without --model"),
    ],
)  # fmt: skip
def test_research_checkpoint_errors(tmp_path, capsys, make_argv, message):
    fake_cifar10(tmp_path / "data")
    code, _, err = run(make_argv(tmp_path), capsys)
    assert code == 2
    assert message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_research_checkpoint_that_is_no_pickle(tmp_path, capsys):
    fake_cifar10(tmp_path / "data")
    argv = research_args(tmp_path, checkpoint=write(tmp_path / "c.pth.tar", "garbage"))
    code, _, err = run(argv, capsys)
    assert code == 2 and "--checkpoint: cannot load" in err and "Traceback" not in err


def save(path, obj):
    torch.save(obj, path)
    return str(path)


def test_certify_help_explains_research_checkpoints(capsys):
    code, out, _ = run(["certify", "--help"], capsys)
    assert code == 0
    assert "--normalization" in out and "research-format" in out
    assert "rsmooth certify --checkpoint released/checkpoint.pth.tar --dataset cifar10" in out


def test_help_imports_neither_torch_nor_scipy():
    code = (
        "import sys\n"
        "from rsmooth.cli import main\n"
        "for argv in (['--help'], ['certify', '--help'], ['--version']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "assert 'torch' not in sys.modules and 'scipy.stats' not in sys.modules, sorted(sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage: rsmooth" in done.stdout
