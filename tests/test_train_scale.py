"""examples/train.py at scale: torchrun with 2 CPU processes, --amp, --compile, the batch split.

The CUDA recipe of ``--amp`` (float16 autocast with a ``GradScaler``) is exercised on CPU, where
torch supports both, through the same ``training_step`` the loop uses.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import rsmooth
from rsmooth.losses import GaussianAugmentationLoss

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("sklearn", reason="the training tests use scikit-learn's digits")


@pytest.fixture(scope="module")
def train():
    name = "rsmooth_script_train"  # the name tests/test_examples.py uses: one copy per session
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / "train.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def flags(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "--dataset", "digits", "--arch", "mlp", "--criterion", "gaussian", "--limit", "64",
        "--epochs", "1", "--batch-size", "32", "--out", str(tmp_path / "run.pt"), *extra,
    ]  # fmt: skip


@pytest.fixture
def single_process(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)


def test_amp_settings(train):
    assert train.amp_settings("cuda") == (torch.float16, True)
    assert train.amp_settings("cpu") == (torch.bfloat16, False)


def test_noise_seeds_differ_per_rank_and_rank0_matches_a_single_process(train):
    assert train.noise_seed(0, 0) == 1  # the single-process seed, args.seed + 1
    seeds = {train.noise_seed(seed, rank) for seed in range(100) for rank in range(8)}
    assert len(seeds) == 800


@pytest.mark.parametrize(
    ("num_examples", "batch", "world", "explicit", "expected"),
    [
        (64, 32, 1, True, 32),
        (64, 33, 1, True, 33),
        (64, 32, 2, True, 16),
        (64, 64, 4, True, 16),
        (64, 85, 2, False, 42),  # a default batch (256 // 3) is rounded down
        (64, 1, 2, False, 1),
    ],
)
def test_split_batch(train, num_examples, batch, world, explicit, expected):
    assert train.split_batch(num_examples, batch, world, explicit=explicit) == expected


@pytest.mark.parametrize(
    ("num_examples", "batch", "world", "match"),
    [
        (64, 33, 2, r"--batch-size 33 is the global batch and must be a multiple of the world "
         r"size 2 \(e.g. 32\)"),
        (3, 4, 4, "cannot split 3 training examples over 4 processes"),
    ],
)  # fmt: skip
def test_split_batch_errors(train, num_examples, batch, world, match):
    with pytest.raises(SystemExit, match=match):
        train.split_batch(num_examples, batch, world)


def test_unsplittable_batch_fails_before_the_process_group(train, tmp_path, monkeypatch):
    # What every torchrun worker sees: the error comes before init_process_group, on each rank
    # alike, so the launch fails at once instead of leaving a rank waiting for its peers.
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(SystemExit, match="must be a multiple of the world size 2"):
        train.main(flags(tmp_path, "--quiet", "--batch-size", "33"))
    assert not torch.distributed.is_initialized()
    assert not (tmp_path / "run.pt").exists()


def test_sync_batchnorm_needs_cuda(train, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(SystemExit, match="--sync-batchnorm needs CUDA devices"):
        train.main(flags(tmp_path, "--quiet", "--sync-batchnorm"))
    assert not torch.distributed.is_initialized()


def _step_setup():
    torch.manual_seed(0)  # tests may seed globally
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    criterion = GaussianAugmentationLoss(0.25, generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.rand(8, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    return model, criterion, optimizer, x, torch.arange(8) % 3


def test_training_step_float16_with_grad_scaler(train):
    # --amp's CUDA recipe, run on CPU: float16 autocast and an enabled GradScaler.
    model, criterion, optimizer, x, y = _step_setup()
    before = [p.detach().clone() for p in model.parameters()]
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    loss = train.training_step(criterion, model, x, y, optimizer, scaler, torch.float16)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert scaler.get_scale() == 2.0**10  # finite gradients: the step is taken, scale kept
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    # An absurd scale overflows float16 in the backward pass: the scaler must skip the step
    # (an optimizer.step() called directly would write inf/nan into the weights) and back off.
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**60)
    before = [p.detach().clone() for p in model.parameters()]
    train.training_step(criterion, model, x, y, optimizer, scaler, torch.float16)
    assert scaler.get_scale() == 2.0**59
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_training_step_without_amp_is_a_plain_step(train):
    model, criterion, optimizer, x, y = _step_setup()
    loss = criterion(model, x, y)
    loss.backward()
    with torch.no_grad():
        reference = [p - 0.1 * p.grad for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    criterion.generator.manual_seed(0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    train.training_step(criterion, model, x, y, optimizer, scaler, None)
    for got, want in zip(model.parameters(), reference, strict=True):
        torch.testing.assert_close(got, want)


def test_train_with_amp_bfloat16(train, tmp_path, single_process, capsys):
    assert train.main(flags(tmp_path, "--amp")) == 0
    assert "autocast torch.bfloat16" in capsys.readouterr().out
    _, checkpoint = train.load_checkpoint(tmp_path / "run.pt")
    assert checkpoint["args"]["amp"] is True
    assert torch.isfinite(torch.tensor(checkpoint["history"][0]["loss"]))
    assert "scaler" not in checkpoint  # bfloat16 needs no loss scaling


def test_train_with_compile(train, tmp_path, single_process, monkeypatch):
    # Real compilation (inductor) takes minutes on this CPU; the "eager" backend goes through
    # torch.compile and TorchDynamo's tracing but runs the captured graphs eagerly.
    calls = []
    real_compile = torch.compile

    def spy(model, **kwargs):
        calls.append(kwargs)
        return real_compile(model, **kwargs)

    monkeypatch.setattr(torch, "compile", spy)
    assert train.main(flags(tmp_path, "--quiet", "--compile", "eager")) == 0
    assert calls == [{"backend": "eager"}]
    _, checkpoint = train.load_checkpoint(tmp_path / "run.pt")  # no _orig_mod. prefixes
    assert checkpoint["args"]["compile"] == "eager"
    assert train.build_parser().parse_args(["--compile"]).compile == "inductor"
    assert train.build_parser().parse_args([]).compile is None


@pytest.mark.slow
def test_train_under_torchrun_with_two_cpu_processes(tmp_path):
    env = dict(os.environ)
    src = str(Path(rsmooth.__file__).resolve().parents[1])  # the rsmooth under test
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        str(ROOT / "examples" / "train.py"), *flags(tmp_path, "--amp"),
    ]  # fmt: skip
    proc = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # its own process group: on a timeout, end the workers too
    )  # fmt: skip
    try:
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, stdout + stderr
    # Rank 0 alone logs and saves.
    assert stdout.count("epoch   1/1") == 1, stdout
    assert stdout.count("saved ") == 1
    assert "2 processes" in stdout
    assert not list(tmp_path.glob("*.partial"))
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        from models import load_checkpoint
    finally:
        sys.path.remove(str(ROOT / "examples"))
    model, checkpoint = load_checkpoint(tmp_path / "run.pt")  # plain keys, no "module."
    assert checkpoint["args"]["world_size"] == 2
    assert checkpoint["args"]["batch_size"] == 32  # global; 16 per process
    (record,) = checkpoint["history"]
    assert torch.isfinite(torch.tensor(record["loss"]))
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, 10)
