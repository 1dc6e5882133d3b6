"""Every criterion under DistributedDataParallel gives the gradient of the global objective.

Two gloo processes on CPU (one launch for all criteria). Rank ``r`` computes
``criterion(DDP(model), x_r, y_r).backward()`` with its own data shard and its own noise seed; DDP
averages the parameter gradients. The test checks that this equals the average over ``r`` of the
gradients that a single process gets for ``(x_r, y_r)`` with the same seed, for every entry of
``tests/criteria_table.py::CRITERIA`` (which must cover every criterion exported by
``rsmooth.losses``), including the adversarial criteria that run several forward passes (eval
mode, frozen parameters) before the training forward. The model has no BatchNorm (with
BatchNorm, each rank would normalise with its own batch statistics unless converted with
``torch.nn.SyncBatchNorm``). Everything runs in float64 so the comparison can be tight.

Run as a script (``python tests/test_ddp.py RANK STORE OUT``) it is one of the two workers.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from criteria_table import CRITERIA, missing_criteria
from torch import nn

import rsmooth

WORLD_SIZE = 2
HERE = Path(__file__).resolve().parent


def make_model() -> nn.Module:
    torch.manual_seed(0)  # identical initial weights on every rank (tests may seed globally)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 5)
    )
    return model.double()


def shard(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(10 + rank)
    x = torch.rand(4, 1, 4, 4, generator=g, dtype=torch.float64)
    return x, torch.randint(0, 5, (4,), generator=g)


def noise_seed(index: int, rank: int) -> int:
    return 1000 * index + rank


def rank_gradients(name: str, index: int, rank: int, *, ddp: bool) -> list[torch.Tensor]:
    """Gradients of one criterion's loss on ``rank``'s shard, with or without DDP."""
    entry = CRITERIA[name]
    model = make_model()
    wrapped = nn.parallel.DistributedDataParallel(model) if ddp else model
    criterion = entry.make(torch.Generator().manual_seed(noise_seed(index, rank)))
    x, y = shard(rank)
    entry.call(criterion, wrapped, x, y).backward()
    return [p.grad.detach().clone() for p in model.parameters()]


def worker(rank: int, store: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store}",
        rank=rank,
        world_size=WORLD_SIZE,
        timeout=timedelta(seconds=60),
    )
    try:
        grads = {
            name: rank_gradients(name, index, rank, ddp=True)
            for index, name in enumerate(sorted(CRITERIA))
        }
        torch.save(grads, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_every_exported_criterion_has_an_entry():
    assert missing_criteria() == [], (
        "criteria exported by rsmooth.losses without an entry in tests/criteria_table.py::CRITERIA"
    )


@pytest.mark.slow
def test_ddp_gradient_is_the_average_of_the_per_rank_gradients(tmp_path):
    assert missing_criteria() == [], "add the missing criteria to tests/criteria_table.py"
    env = dict(os.environ)
    src = str(Path(rsmooth.__file__).resolve().parents[1])  # the rsmooth under test
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), src, env.get("PYTHONPATH", "")])
    env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    store = tmp_path / "store"
    procs = [
        subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), str(rank), str(store), str(tmp_path)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(WORLD_SIZE)
    ]
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=180)[0])
    finally:
        for proc in procs:  # never leave a worker waiting on its peer
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for rank, (proc, output) in enumerate(zip(procs, outputs, strict=True)):
        assert proc.returncode == 0, f"rank {rank} failed:\n{output}"

    ddp = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD_SIZE)]
    for index, name in enumerate(sorted(CRITERIA)):
        per_rank = [rank_gradients(name, index, r, ddp=False) for r in range(WORLD_SIZE)]
        # The shards and seeds differ, so the average differs from each rank's own gradient:
        # a DDP that did not synchronise would fail below.
        assert any(not torch.allclose(a, b) for a, b in zip(*per_rank, strict=True)), name
        expected = [sum(gs) / WORLD_SIZE for gs in zip(*per_rank, strict=True)]
        for rank in range(WORLD_SIZE):
            for got, want in zip(ddp[rank][name], expected, strict=True):
                torch.testing.assert_close(
                    got, want, rtol=1e-10, atol=1e-12, msg=lambda m, n=name: f"{n}: {m}"
                )


if __name__ == "__main__":
    worker(int(sys.argv[1]), sys.argv[2], sys.argv[3])
