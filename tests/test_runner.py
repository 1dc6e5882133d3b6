import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from runner_helpers import CERTIFY, SETTINGS, TinyLinear, rows, subprocess_env, tiny_dataset

from rsmooth import SampleSizeWarning, SmoothedClassifier
from rsmooth.procedures import Certify
from rsmooth.runner import (
    Shard,
    certify_dataset,
    detect_shard,
    input_seed,
    merge_results,
    part_path,
)


def smoothed(batch_size=1000, model=None):
    return SmoothedClassifier(model or TinyLinear(), sigma=0.25, batch_size=batch_size)


@pytest.fixture(scope="module")
def dataset():
    return tiny_dataset()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, dataset):
    """An uninterrupted single-process run (batch size 200: one input per call)."""
    out = tmp_path_factory.mktemp("reference") / "results.tsv"
    certify_dataset(smoothed(200), dataset, out, progress=False, procedure=CERTIFY)
    return rows(out)


# ---------------------------------------------------------------------------- format
def test_writes_the_reference_format(tmp_path, dataset):
    out = tmp_path / "results.tsv"
    results = certify_dataset(smoothed(), dataset, out, progress=False, procedure=CERTIFY)
    lines = out.read_text().splitlines()
    assert lines[0] == "idx\tlabel\tpredict\tradius\tcorrect\ttime\tcount\tn"
    assert len(lines) == 1 + len(dataset) == 1 + len(results)
    predictions = set()
    for i, line in enumerate(lines[1:]):
        idx, label, predict, radius, correct, elapsed, count, n = line.split("\t")
        assert int(idx) == i and int(label) == int(dataset[i][1])
        assert correct == str(int(int(predict) == int(label)))
        assert radius == f"{float(radius):.3}"  # 3 significant digits, like "{:.3}"
        assert re.fullmatch(r"\d+:\d\d:\d\d(\.\d{6})?", elapsed)
        assert int(n) == 200 and 0 <= int(count) <= 200
        if int(predict) == -1:
            assert radius == "0.0"
        predictions.add(int(predict))
    assert -1 in predictions and len(predictions) >= 3  # the tiny problem is not degenerate
    assert results.path == str(out) and results.count is not None
    side = json.loads((tmp_path / "results.tsv.json").read_text())
    assert side["config"] == {
        "kind": "certify",
        **SETTINGS,
        "sigma": 0.25,
        "seed": 0,
        "bound": "clopper-pearson",
        "batch_size": 1000,
        "memory_format": "auto",
        "channels_last": True,  # one channel: checked, then fed with channels-last strides
    }
    assert side["complete"] is True and side["shard"] is None
    assert side["selection"] == {"start": 0, "stop": 24, "step": 1}


def test_rows_match_the_engine_with_per_index_generators(tmp_path, dataset, device):
    out = tmp_path / "r.tsv"
    model = TinyLinear().to(device)
    engine = SmoothedClassifier(model, sigma=0.25, batch_size=1000)
    results = certify_dataset(
        engine, dataset, out, seed=5, device=device, progress=False, procedure=CERTIFY
    )
    row = {int(i): k for k, i in enumerate(results.idx.tolist())}
    chosen = [3, 17]
    inputs = torch.stack([dataset[i][0] for i in chosen]).to(device)
    generators = [torch.Generator(device).manual_seed(input_seed(5, i)) for i in chosen]
    cert = engine.certify(inputs, n=200, n0=20, alpha=0.001, generator=generators)
    assert [int(results.prediction[row[i]]) for i in chosen] == cert.prediction.tolist()
    assert [int(results.count[row[i]]) for i in chosen] == cert.count.tolist()


@pytest.mark.parametrize("batch_size", [1, 7, 64, 5000])
def test_results_do_not_depend_on_the_batch_size(tmp_path, dataset, reference, batch_size):
    out = tmp_path / "r.tsv"
    certify_dataset(smoothed(batch_size), dataset, out, progress=False, procedure=CERTIFY)
    assert sorted(rows(out)) == sorted(reference)


def test_a_subset_gives_the_same_rows_and_seeds_matter(tmp_path, dataset, reference):
    certify_dataset(
        smoothed(200),
        dataset,
        tmp_path / "a.tsv",
        skip=5,
        stop=20,
        progress=False,
        procedure=CERTIFY,
    )
    assert rows(tmp_path / "a.tsv") == [reference[i] for i in (0, 5, 10, 15)]
    certify_dataset(
        smoothed(200),
        dataset,
        tmp_path / "b.tsv",
        indices=[7, 2],
        progress=False,
        procedure=CERTIFY,
    )
    assert rows(tmp_path / "b.tsv") == [reference[2], reference[7]]
    certify_dataset(
        smoothed(200), dataset, tmp_path / "c.tsv", seed=1, progress=False, procedure=CERTIFY
    )
    assert rows(tmp_path / "c.tsv") != reference
    assert input_seed(0, 1) != input_seed(1, 0)


# ---------------------------------------------------------------------------- resume
class CountingLinear(TinyLinear):
    def __init__(self):
        super().__init__()
        self.samples = 0

    def forward(self, x):
        self.samples += x.shape[0]
        return super().forward(x)


def test_resume_certifies_only_missing_rows(tmp_path, dataset, reference):
    out = tmp_path / "r.tsv"
    certify_dataset(smoothed(200), dataset, out, stop=10, progress=False, procedure=CERTIFY)
    assert rows(out) == reference[:10]
    model = CountingLinear()
    results = certify_dataset(smoothed(200, model), dataset, out, progress=False, procedure=CERTIFY)
    assert model.samples == 14 * 220 + 2 * 24  # and the layout check: the selection's first 32
    assert rows(out) == reference and len(results) == 24
    model.samples = 0
    certify_dataset(smoothed(200, model), dataset, out, progress=False, procedure=CERTIFY)
    assert model.samples == 0 and rows(out) == reference


@pytest.mark.parametrize("cut", [1, 7, 30])
def test_a_half_written_last_line_is_repaired(tmp_path, dataset, reference, cut):
    out = tmp_path / "r.tsv"
    certify_dataset(smoothed(200), dataset, out, stop=12, progress=False, procedure=CERTIFY)
    data = out.read_bytes()
    last = data.rstrip(b"\n").rfind(b"\n") + 1
    out.write_bytes(data[: last + min(cut, len(data) - last - 2)])  # cut inside row 11
    certify_dataset(smoothed(200), dataset, out, progress=False, procedure=CERTIFY)
    assert rows(out) == reference
    assert out.read_bytes().endswith(b"\n")


def test_a_half_written_header_starts_afresh(tmp_path, dataset, reference):
    out = tmp_path / "r.tsv"
    out.write_text("idx\tlab")
    certify_dataset(smoothed(200), dataset, out, progress=False, procedure=CERTIFY)
    assert rows(out) == reference


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"n": 300}, "n=200 in the file, 300 now"),
        ({"n0": 10}, "n0=20 in the file, 10 now"),
        ({"alpha": 0.01}, "alpha=0.001 in the file, 0.01 now"),
        ({"seed": 3}, "seed=0 in the file, 3 now"),
        ({"sigma": 0.5}, "sigma=0.25 in the file, 0.5 now"),
    ],
)
def test_resuming_with_other_settings_is_refused(tmp_path, dataset, change, match):
    out = tmp_path / "r.tsv"
    certify_dataset(smoothed(200), dataset, out, stop=2, progress=False, procedure=CERTIFY)
    before = out.read_bytes()
    engine = SmoothedClassifier(TinyLinear(), change.pop("sigma", 0.25), batch_size=200)
    seed = change.pop("seed", 0)
    procedure = Certify(**{**SETTINGS, **change})
    with pytest.raises(ValueError, match=re.escape(match)):
        certify_dataset(engine, dataset, out, procedure, seed=seed, progress=False)
    assert out.read_bytes() == before


def test_resuming_with_another_batch_size_gives_the_same_rows(tmp_path, dataset, reference):
    out = tmp_path / "r.tsv"
    certify_dataset(smoothed(200), dataset, out, stop=2, progress=False, procedure=CERTIFY)
    certify_dataset(smoothed(7), dataset, out, progress=False, procedure=CERTIFY)
    assert rows(out) == reference
    assert json.loads((tmp_path / "r.tsv.json").read_text())["config"]["batch_size"] == 7


@pytest.mark.parametrize(
    ("content", "sidecar", "match"),
    [
        (
            "idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t1\t1\t0.5\t1\t0:00:01\n",
            False,
            "different header",
        ),
        ("something else\n", False, "different header"),
        (
            "idx\tlabel\tpredict\tradius\tcorrect\ttime\tcount\tn\n0\t0\t0\t0.3\t1\t0:00:00\t190\t200\n",
            False,
            "no settings file",
        ),
        (
            "idx\tlabel\tpredict\tradius\tcorrect\ttime\tcount\tn\n0\t0\t0\n1\t0\t0\t0.3\t1\t0:00:00\t190\t200\n",
            True,
            "line 2: expected 8",
        ),
        (
            "idx\tlabel\tpredict\tradius\tcorrect\ttime\tcount\tn\nx\t0\t0\t0.3\t1\t0:00:00\t190\t200\n",
            True,
            "column 'idx' must be int",
        ),
        (
            "idx\tlabel\tpredict\tradius\tcorrect\ttime\tcount\tn\n1\t0\t0\t0.3\t1\t0\t190\t200\n1\t0\t0\t0.3\t1\t0\t190\t200\n",
            True,
            "more than once",
        ),
    ],
)
def test_foreign_or_damaged_files_are_refused(tmp_path, dataset, content, sidecar, match):
    out = tmp_path / "r.tsv"
    out.write_text(content)
    if sidecar:
        config = {**SETTINGS, "sigma": 0.25, "seed": 0, "batch_size": 200}
        (tmp_path / "r.tsv.json").write_text(json.dumps({"config": config}))
    with pytest.raises(ValueError, match=match):
        certify_dataset(smoothed(200), dataset, out, progress=False, procedure=CERTIFY)
    assert out.read_text() == content


# ---------------------------------------------------------------------------- arguments
@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"procedure": "certify"}, TypeError, "procedure must be rsmooth.procedures.Certify or"),
        ({"seed": -1}, ValueError, "seed must be an integer >= 0, got -1"),
        ({"skip": 0}, ValueError, "skip must be a positive integer, got 0"),
        ({"stop": -1}, ValueError, "stop must be an integer >= 0, got -1"),
        ({"indices": [1], "skip": 2}, ValueError, "either indices or skip/stop"),
        ({"indices": [24]}, ValueError, "smaller than the dataset's length 24, got 24"),
        ({"indices": [1, 1]}, ValueError, "must not repeat"),
        (
            {"shard": (2, 2)},
            ValueError,
            "shard index must be smaller than the shard count 2, got 2",
        ),
        ({"shard": 3}, TypeError, "shard must be a Shard"),
        ({"out": 3}, TypeError, "out must be a path, got int"),
        (
            {"smoothed": TinyLinear()},
            TypeError,
            "smoothed must be a SmoothedClassifier, got TinyLinear",
        ),
        ({"dataset": 5}, TypeError, "dataset must support len"),
        (
            {"dataset": [(torch.zeros(1, 8, 8), 0.5)]},
            TypeError,
            r"dataset\[0\] must give an integer class label, got float",
        ),
        (
            {"dataset": [(torch.full((1, 8, 8), float("nan")), 0)]},
            ValueError,
            "dataset inputs must be finite",
        ),
    ],
)
def test_bad_arguments(tmp_path, dataset, kwargs, exc, match):
    call = {
        "smoothed": smoothed(),
        "dataset": dataset,
        "out": tmp_path / "r.tsv",
        "procedure": CERTIFY,
        "progress": False,
    }
    call.update(kwargs)
    with pytest.raises(exc, match=match):
        certify_dataset(call.pop("smoothed"), call.pop("dataset"), call.pop("out"), **call)


def test_warns_when_n_can_never_certify(tmp_path, dataset):
    with pytest.warns(SampleSizeWarning, match="always abstains"):
        results = certify_dataset(
            smoothed(), dataset, tmp_path / "r.tsv", Certify(n=5, n0=5), stop=2, progress=False
        )
    assert results.prediction.tolist() == [-1, -1]


# ---------------------------------------------------------------------------- progress
def test_progress_uses_tqdm_when_installed(tmp_path, dataset, capsys):
    pytest.importorskip("tqdm")
    certify_dataset(smoothed(), dataset, tmp_path / "r.tsv", procedure=CERTIFY)
    err = capsys.readouterr().err
    assert "24/24" in err and "samples/s" in err


def test_progress_falls_back_to_a_plain_line(tmp_path, dataset, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    certify_dataset(smoothed(), dataset, tmp_path / "r.tsv", procedure=CERTIFY)
    err = capsys.readouterr().err
    assert re.search(r"certify: 24/24 rows, [\d,]+ samples/s, 0:00:00 left", err)


def test_quiet_without_progress(tmp_path, dataset, capsys):
    certify_dataset(smoothed(), dataset, tmp_path / "r.tsv", progress=False, procedure=CERTIFY)
    assert capsys.readouterr().err == ""


# ---------------------------------------------------------------------------- signals
class SignallingLinear(TinyLinear):
    """Sends a signal to its own process in the forward pass number `at`."""

    def __init__(self, signum, at):
        super().__init__()
        self.signum, self.at, self.calls = signum, at, 0

    def forward(self, x):
        self.calls += 1
        if self.calls == self.at:
            os.kill(os.getpid(), self.signum)
        return super().forward(x)


def test_sigterm_stops_the_stream_with_the_finished_rows_then_runs_the_previous_handler(
    tmp_path, dataset, reference
):
    received = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        # two forward passes of the layout check, then batches of 200 of the 220 samples per
        # input: the signal comes in the 6th batch (samples 1000..1200), after input 4 is done
        model = SignallingLinear(signal.SIGTERM, at=8)
        results = certify_dataset(
            smoothed(200, model), dataset, tmp_path / "r.tsv", progress=False, procedure=CERTIFY
        )
        assert received == [signal.SIGTERM]
        assert signal.getsignal(signal.SIGTERM) is not None
        assert signal.getsignal(signal.SIGTERM).__name__ == "<lambda>"  # restored
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert len(results) == 5 and rows(tmp_path / "r.tsv") == reference[:5]
    assert json.loads((tmp_path / "r.tsv.json").read_text())["complete"] is False
    certify_dataset(smoothed(200), dataset, tmp_path / "r.tsv", progress=False, procedure=CERTIFY)
    assert rows(tmp_path / "r.tsv") == reference  # resumed: nothing lost, nothing twice


@pytest.fixture
def sigint_handler():
    """Install `handler` for SIGINT for one test, whatever the test process inherited.

    A process started in the background by a non-interactive shell (`nohup pytest &`) inherits
    SIGINT as ignored, and Python then installs no KeyboardInterrupt handler: set it explicitly.
    """
    previous = signal.getsignal(signal.SIGINT)

    def install(handler):
        signal.signal(signal.SIGINT, handler)
        return handler

    yield install
    signal.signal(signal.SIGINT, previous)


def test_sigint_raises_keyboard_interrupt_after_the_rows_are_written(
    tmp_path, dataset, reference, sigint_handler
):
    before = sigint_handler(signal.default_int_handler)
    model = SignallingLinear(signal.SIGINT, at=5)  # input 2's call (after the layout check)
    with pytest.raises(KeyboardInterrupt):
        certify_dataset(
            smoothed(200, model), dataset, tmp_path / "r.tsv", progress=False, procedure=CERTIFY
        )
    assert signal.getsignal(signal.SIGINT) is before
    assert rows(tmp_path / "r.tsv") == reference[:2]


def test_sigint_ignored_by_the_parent_stays_ignored(tmp_path, dataset, reference, sigint_handler):
    # nohup / `cmd &`: SIGINT arrives, nothing happens, the run finishes all its rows
    sigint_handler(signal.SIG_IGN)
    model = SignallingLinear(signal.SIGINT, at=3)
    results = certify_dataset(
        smoothed(200, model), dataset, tmp_path / "r.tsv", progress=False, procedure=CERTIFY
    )
    assert model.calls > 3  # the signal was sent, and certification went on
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    assert len(results) == len(reference) and rows(tmp_path / "r.tsv") == reference
    assert json.loads((tmp_path / "r.tsv.json").read_text())["complete"] is True


def wait_for_rows(path, count, process, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().count("\n") > count:
            return
        if process.poll() is not None:
            raise AssertionError(f"process ended early: {process.communicate()}")
        time.sleep(0.02)
    process.kill()
    raise AssertionError("timed out waiting for rows")


def cli_certify(out, model="runner_helpers:slow_model", *extra):
    return [
        sys.executable, "-m", "rsmooth", "certify", "--model", model,
        "--dataset", "runner_helpers:tiny_dataset", "--sigma", "0.25", "--num-samples", "200",
        "--n0", "20", "--batch-size", "200", "--out", str(out), "--no-progress",
        "--factory-loads-weights", *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_resume_after_sigkill_equals_an_uninterrupted_run(tmp_path, reference):
    out = tmp_path / "r.tsv"
    process = subprocess.Popen(
        cli_certify(out), env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    wait_for_rows(out, 4, process)
    process.kill()
    process.communicate()
    partial = out.read_text()
    assert 4 <= partial.count("\n") - 1 < 24
    with open(out, "a") as handle:  # as if killed in the middle of a write
        handle.write("17\t2\t2\t0.4")
    done = subprocess.run(
        cli_certify(out),
        env=subprocess_env(RSMOOTH_TEST_DELAY="0"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert rows(out) == reference


@pytest.mark.slow
def test_sigterm_exits_cleanly_with_every_finished_row_on_disk(tmp_path, reference):
    out = tmp_path / "r.tsv"
    process = subprocess.Popen(
        cli_certify(out),
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_rows(out, 3, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM
    assert stderr.strip().count("\n") == 0 and "rerun the same command to resume" in stderr
    assert "Traceback" not in stderr
    assert out.read_bytes().endswith(b"\n")
    written = rows(out)
    assert 3 <= len(written) < 24 and written == reference[: len(written)]


# ---------------------------------------------------------------------------- shards and merge
def test_detect_shard_from_the_environment(monkeypatch):
    for name in (
        "RANK",
        "WORLD_SIZE",
        "SLURM_ARRAY_TASK_ID",
        "SLURM_ARRAY_TASK_COUNT",
        "SLURM_ARRAY_TASK_MIN",
    ):
        monkeypatch.delenv(name, raising=False)
    assert detect_shard() == Shard(0, 1, "single")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert detect_shard() == Shard(1, 2, "env")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "5")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "4")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
    assert detect_shard() == Shard(3, 6, "slurm-array+env")
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert detect_shard() == Shard(1, 3, "slurm-array")
    monkeypatch.setenv("WORLD_SIZE", "two")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ValueError, match="WORLD_SIZE must be an integer, got 'two'"):
        detect_shard()


def test_shards_without_a_process_group_merge_when_the_last_finishes(tmp_path, dataset, reference):
    out = tmp_path / "r.tsv"
    first = certify_dataset(
        smoothed(200), dataset, out, shard=(1, 2), progress=False, procedure=CERTIFY
    )
    assert not out.exists() and first.idx.tolist() == list(range(1, 24, 2))
    assert part_path(out, Shard(1, 2)).name == "r.tsv.part-00001-of-00002"
    merged = certify_dataset(
        smoothed(200), dataset, out, shard=(0, 2), progress=False, procedure=CERTIFY
    )
    assert merged.path == str(out) and merged.idx.tolist() == list(range(24))
    assert rows(out) == reference
    assert json.loads((tmp_path / "r.tsv.json").read_text())["shard"] is None
    # resuming the merged file single-process finds nothing to do
    model = CountingLinear()
    certify_dataset(smoothed(200, model), dataset, out, progress=False, procedure=CERTIFY)
    assert model.samples == 0


def test_merge_detects_gaps_duplicates_and_missing_parts(tmp_path, dataset, reference):
    out = tmp_path / "r.tsv"
    for index in range(3):
        certify_dataset(
            smoothed(200),
            dataset,
            out,
            shard=(index, 3),
            merge=False,
            progress=False,
            procedure=CERTIFY,
        )
    assert not out.exists()
    parts = [part_path(out, Shard(i, 3)) for i in range(3)]
    assert merge_results(out).idx.tolist() == list(range(24))
    assert rows(out) == reference
    out.unlink()

    good = parts[1].read_text()
    lines = good.splitlines(keepends=True)
    parts[1].write_text("".join(lines[:3] + lines[4:]))  # drop idx 7
    with pytest.raises(ValueError, match=r"1 rows missing from the parts \(gaps\), e.g. idx \[7\]"):
        merge_results(out)
    parts[1].write_text(good + parts[0].read_text().splitlines(keepends=True)[2])  # idx 3 again
    with pytest.raises(
        ValueError,
        match="duplicate row: idx 3 appears in .*part-00000-of-00003 and in .*part-00001-of-00003",
    ):
        merge_results(out)
    parts[1].write_text(good + "17\t2\t2\t0.4")  # a half-written line is ignored
    assert len(merge_results(out)) == 24
    parts[1].unlink()
    with pytest.raises(FileNotFoundError, match=r"missing for shards \[1\] of 3"):
        merge_results(out)
    with pytest.raises(FileNotFoundError, match="not found"):
        merge_results(out, [parts[0], parts[1]])
    with pytest.raises(FileNotFoundError, match="no part files"):
        merge_results(tmp_path / "other.tsv")


def test_merge_refuses_parts_with_other_settings(tmp_path, dataset):
    out = tmp_path / "r.tsv"
    certify_dataset(
        smoothed(200), dataset, out, shard=(0, 2), merge=False, progress=False, procedure=CERTIFY
    )
    certify_dataset(
        smoothed(200),
        dataset,
        out,
        shard=(1, 2),
        merge=False,
        seed=1,
        progress=False,
        procedure=CERTIFY,
    )
    with pytest.raises(ValueError, match="other settings .*seed=0 in the file, 1 now"):
        merge_results(out)
    certify_dataset(
        smoothed(200),
        dataset,
        out,
        shard=(0, 4),
        merge=False,
        progress=False,
        stop=1,
        procedure=CERTIFY,
    )
    with pytest.raises(ValueError, match=r"different shard counts \[2, 4\]"):
        merge_results(out)


@pytest.mark.slow
def test_two_process_torchrun_equals_a_single_process_run(tmp_path, reference):
    out = tmp_path / "r.tsv"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
    ]
    command += cli_certify(out, "runner_helpers:tiny_model")[1:]
    done = subprocess.run(
        command, env=subprocess_env(), capture_output=True, text=True, timeout=240, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for index in range(2):
        part = part_path(out, Shard(index, 2))
        side = json.loads(Path(f"{part}.json").read_text())
        assert side["shard"] == [index, 2] and side["complete"] is True
    assert rows(out) == reference
    assert done.stdout.count("| r.tsv | 24 |") == 1  # only rank 0 prints the table


# ---------------------------------------------------------------- radius column
@given(st.floats(min_value=0.0, max_value=10.0, allow_nan=False))
def test_the_written_radius_never_exceeds_the_certified_one(radius):
    from rsmooth.results import radius_text

    text = radius_text(radius)
    assert float(text) <= radius
    assert len(text.replace("0.", "").replace(".", "").lstrip("0").split("e")[0]) <= 3


def test_a_radius_just_below_a_grid_radius_is_not_written_as_the_grid_radius(tmp_path):
    # rounding to nearest (the research code's {:.3}) wrote 0.4996 as 0.5, so certified
    # accuracy at r = 0.5 read back from the file counted an input certified only below it
    from rsmooth.metrics import certified_accuracy, read_results
    from rsmooth.runner import write_results
    from rsmooth.smoothing import Certificate

    radius = torch.tensor([0.4996, 0.7], dtype=torch.float64)
    cert = Certificate(
        prediction=torch.tensor([1, 1]),
        radius=radius,
        p_lower=torch.tensor([0.84, 0.92], dtype=torch.float64),
        count=torch.tensor([99, 99]),
        n=100,
        n0=10,
        alpha=0.001,
        sigma=0.5,
    )
    write_results(tmp_path / "r.tsv", cert, torch.tensor([1, 1]))
    read_back = read_results(tmp_path / "r.tsv")
    assert read_back.radius.tolist() == pytest.approx([0.499, 0.7])
    assert certified_accuracy(read_back, radii=[0.5]) == pytest.approx([0.5])
    assert certified_accuracy(cert, torch.tensor([1, 1]), radii=[0.5]) == pytest.approx([0.5])
