"""Noise streams: seeds, blocks, and the noise of sample s of an input's stream."""

import itertools
import math

import numpy as np
import pytest
import torch
from conftest import gens

from rsmooth._engine.streams import (
    NoiseSource,
    Stream,
    auxiliary_uniform,
    block_seed,
    block_size,
    input_seeds,
    mix,
    run_seed,
    splitmix64,
)


def legacy_seeding(seed: int, stream: int, block: int, device_type: str) -> int:
    """rsmooth 0.2's block seeds: a 63-bit mix, of which the CPU generator keeps 32 bits."""
    return mix(seed, stream, block)


def test_block_size_depends_only_on_the_number_of_elements_and_the_device_type():
    assert block_size(2) == 512 and block_size(64) == 512
    assert block_size(784) == 2**16 // 784
    assert block_size(3 * 224 * 224) == 1
    assert block_size(784, "cuda") == 2**20 // 784
    assert block_size(2, "cuda") == 4096


def test_streams_are_distinct_and_certify_keeps_its_numbers():
    assert len({int(s) for s in Stream}) == len(Stream)
    assert (Stream.SELECTION, Stream.ESTIMATION, Stream.AUXILIARY) == (0, 1, 2)


@pytest.mark.parametrize(
    ("seeding", "distinct"), [(block_seed, True), (legacy_seeding, False)], ids=["new", "0.2"]
)
def test_no_two_blocks_of_an_input_share_a_seed_on_the_cpu(seeding, distinct):
    # An ImageNet-size input draws one sample per block: 100,000 blocks per stream. torch's CPU
    # generator keeps the low 32 bits of a seed, so those are what must differ. 0.2's 63-bit
    # mix collides about once per input there (a duplicated noise sample); the new seeds never.
    blocks = 100_000
    collisions = 0
    for seed in range(10):
        low = {
            seeding(seed, stream, b, "cpu") & 0xFFFFFFFF
            for stream in (Stream.SELECTION, Stream.ESTIMATION)
            for b in range(blocks)
        }
        collisions += 2 * blocks - len(low)
    assert (collisions == 0) is distinct


def test_distinct_block_seeds_give_distinct_noise():
    source = NoiseSource((3, 224, 224), torch.float32, torch.device("cpu"), 1.0)
    assert source.block == 1
    rows = torch.cat([source.noise(5, Stream.ESTIMATION, s, s + 1) for s in range(50)])
    firsts = rows.flatten(1)[:, 0]
    assert len(set(firsts.tolist())) == 50


def test_a_cpu_block_beyond_the_encoding_is_refused():
    with pytest.raises(ValueError, match="at most 268435456 noise blocks per stream"):
        block_seed(1, Stream.ESTIMATION, 2**28, "cpu")


@pytest.mark.parametrize("cuts", [[0, 700], [0, 300, 700], [0, 1, 256, 513, 700]])
def test_the_noise_of_a_range_does_not_depend_on_how_it_is_split(cuts):
    clean = torch.rand(1, 16, 16)  # 256 elements: blocks of 256 samples, so cuts fall inside
    source = NoiseSource((1, 16, 16), torch.float32, torch.device("cpu"), 0.5)
    whole = torch.empty(700, 1, 16, 16)
    source.fill(whole, 0, clean, 11, Stream.ESTIMATION, 0, 700)
    pieces = torch.empty(700, 1, 16, 16)
    for a, b in itertools.pairwise(cuts):
        other = NoiseSource((1, 16, 16), torch.float32, torch.device("cpu"), 0.5)
        other.fill(pieces, a, clean, 11, Stream.ESTIMATION, a, b)
    assert torch.equal(whole, pieces)
    assert abs(float((whole - clean).std()) - 0.5) < 0.01


def test_each_noise_block_is_drawn_once_for_consecutive_samples():
    drawn = []

    def counting(seed, stream, block, device_type):
        drawn.append((seed, stream, block))
        return block_seed(seed, stream, block, device_type)

    source = NoiseSource((1, 16, 16), torch.float32, torch.device("cpu"), 0.5, counting)
    out = torch.empty(700, 1, 16, 16)
    for start in range(0, 700, 7):  # consecutive pieces of one stream
        source.fill(out, start, torch.zeros(1, 16, 16), 1, Stream.ESTIMATION, start, start + 7)
    assert drawn == [(1, Stream.ESTIMATION, b) for b in range(3)]


def test_input_seeds_forms():
    one = input_seeds(3, torch.Generator().manual_seed(0))
    assert one == input_seeds(3, torch.Generator().manual_seed(0))
    assert len(set(one)) == 3 and all(0 <= s < 2**63 for s in one)
    per_input = input_seeds(3, gens([1, 2, 1]))
    assert per_input[0] == per_input[2] != per_input[1]
    assert per_input[1] == input_seeds(1, gens([2]))[0]
    torch.manual_seed(5)  # test-only: the global RNG is the documented default
    first = input_seeds(3, None)
    torch.manual_seed(5)
    assert input_seeds(3, None) == first


def test_run_seeds_are_splitmix64_and_distinct():
    # the same in every process and Python version (no hash()): SplitMix64's published first
    # output for seed 0 is 0xE220A8397B1DCDAF
    assert splitmix64(0) == 0xE220A8397B1DCDAF
    assert run_seed(3, 5) == splitmix64(splitmix64(3) ^ 5) >> 1
    assert len({run_seed(7, i) for i in range(1000)}) == 1000
    assert run_seed(1, 5) != run_seed(2, 5)


def test_auxiliary_uniform_is_per_seed_and_in_the_half_open_unit_interval():
    u = auxiliary_uniform(list(range(2000)))
    assert u.dtype == np.float64 and u.shape == (2000,)
    assert bool(((u > 0) & (u <= 1)).all())
    assert abs(u.mean() - 0.5) < 4 * math.sqrt(1 / 12 / 2000)
    assert np.array_equal(auxiliary_uniform([7, 3]), u[[7, 3]])
