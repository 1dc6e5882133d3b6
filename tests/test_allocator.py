"""rsmooth.allocator: which thresholds it sets, when it leaves the allocator alone, and that on
glibc it stops the page faults of memory freed and allocated again (in subprocesses, so that this
test process's allocator stays as it was)."""

import platform
import subprocess
import sys
import textwrap

import pytest
from runner_helpers import subprocess_env

from rsmooth.allocator import MMAP_THRESHOLD, TRIM_THRESHOLD, keep_freed_memory

GLIBC = platform.libc_ver()[0] == "glibc"


class FakeLibc:
    """Records ``mallopt`` calls; returns ``result`` (glibc: 1 on success, 0 on failure)."""

    def __init__(self, result=1):
        self.calls = []
        self.result = result

    def mallopt(self, parameter, value):
        self.calls.append((parameter, value))
        return self.result


def test_it_sets_the_mmap_and_the_trim_threshold():
    libc = FakeLibc()
    assert keep_freed_memory(libc=libc, environ={}) is True
    # M_MMAP_THRESHOLD (-3) first, M_TRIM_THRESHOLD (-1): both fixed, glibc's adaptation off
    assert libc.calls == [(-3, 32 * 2**20), (-1, 2**30)]
    assert (MMAP_THRESHOLD, TRIM_THRESHOLD) == (33554432, 1073741824)


@pytest.mark.parametrize(
    "environ",
    [
        {"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"},
        {"LD_PRELOAD": "libtcmalloc_minimal.so.4"},
        {"MALLOC_TRIM_THRESHOLD_": "131072"},
        {"MALLOC_MMAP_THRESHOLD_": "0"},
        {"MALLOC_TOP_PAD_": "67108864"},
        {"MALLOC_MMAP_MAX_": "0"},
        {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"},
        {"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F:glibc.malloc.mmap_threshold=0"},
    ],
)
def test_an_environment_that_chose_is_left_alone(environ):
    libc = FakeLibc()
    assert keep_freed_memory(libc=libc, environ=environ) is False
    assert libc.calls == []


@pytest.mark.parametrize(
    "environ",
    [{"LD_PRELOAD": "libsandbox.so"}, {"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F"},
     {"MALLOC_ARENA_MAX": "2"}, {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}],
)  # fmt: skip
def test_unrelated_settings_do_not_count_as_a_choice(environ):
    libc = FakeLibc()
    assert keep_freed_memory(libc=libc, environ=environ) is True
    assert len(libc.calls) == 2


def test_environ_must_be_a_mapping():
    with pytest.raises(TypeError, match="environ must be a mapping of names to values, got list"):
        keep_freed_memory(libc=FakeLibc(), environ=["MALLOC_TRIM_THRESHOLD_=0"])


def test_libc_must_have_mallopt():
    with pytest.raises(TypeError, match="libc must be a C library with a mallopt function, got"):
        keep_freed_memory(libc="libc.so.6", environ={})


def test_a_c_library_refusing_the_setting():
    refusing = FakeLibc(result=0)
    assert keep_freed_memory(libc=refusing, environ={}) is False


#: Frees 80 MiB at the top of the heap and allocates it again: more than glibc's adaptive trim
#: threshold can reach (twice its 32 MiB mmap maximum), whatever the process did before.
PROBE = """
import ctypes, resource
import numpy as np

# transparent huge pages off for this process (PR_SET_THP_DISABLE), so that a fault is one 4 KiB
# page whatever the machine's THP mode
prctl = getattr(ctypes.CDLL(None), "prctl", None)
if prctl is not None:
    prctl(41, 1, 0, 0, 0)

def faults(rounds):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(rounds):
        blocks = [np.ones(2**20, dtype=np.float32) for _ in range(20)]  # 4 MiB each
        del blocks
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

faults(2)
print(faults(10))
"""


def clean_env():
    """The subprocesses' environment without any allocator setting of the machine's."""
    env = subprocess_env()
    for name in [
        n for n in env if n.startswith("MALLOC_") or n in ("LD_PRELOAD", "GLIBC_TUNABLES")
    ]:
        del env[name]
    return env


def probe_faults(setup):
    code = textwrap.dedent(setup) + PROBE
    done = subprocess.run(
        [sys.executable, "-c", code], env=clean_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[-1])


@pytest.mark.slow
def test_on_glibc_freed_memory_is_reused_without_page_faults():
    called = "from rsmooth.allocator import keep_freed_memory\nprint(keep_freed_memory())\n"
    if not GLIBC:
        done = subprocess.run(
            [sys.executable, "-c", called], env=clean_env(), capture_output=True, text=True
        )
        assert done.stdout.split() == ["False"], done.stderr
        return
    untouched = probe_faults("")
    kept = probe_faults(called)
    # 10 rounds of 20 blocks of 1,024 pages: glibc's defaults trim and fault them again
    assert untouched > 100_000, untouched
    assert kept < 1_000, kept


CERTIFY = [
    "certify", "--model", "runner_helpers:tiny_model", "--factory-loads-weights", "--dataset",
    "runner_helpers:tiny_dataset", "--sigma", "0.25", "--n", "50", "--n0", "10", "--max", "2",
    "--no-progress",
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("as_program", [True, False])
def test_the_certify_program_keeps_freed_memory_and_main_from_python_does_not(tmp_path, as_program):
    """``rsmooth certify`` as a program (``main()`` reading the process's command line) keeps
    freed memory; ``main([...])`` called from Python leaves the caller's allocator alone."""
    argv = [*CERTIFY, "--out", str(tmp_path / "out.tsv")]
    call = "sys.argv = ['rsmooth', *argv]; code = main()" if as_program else "code = main(argv)"
    command = f"""
        import sys
        from rsmooth.cli import main
        argv = {argv!r}
        {call}
        assert code == 0, code
    """
    faults = probe_faults(command)
    assert (tmp_path / "out.tsv").exists()
    if GLIBC:
        if as_program:
            assert faults < 1_000, faults
        else:
            assert faults > 100_000, faults
