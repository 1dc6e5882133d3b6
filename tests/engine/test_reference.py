"""The 0.3 engine keeps 0.2's certificates: the same packing, noise layout and statistics.

``tests/data/engine-reference/certificates.json`` was recorded with rsmooth 0.2's engine. 0.3
seeds CPU noise blocks differently (no two blocks of an input share a 32-bit seed), so the test
injects 0.2's block seeds into the engine's seam; everything else is the engine as it is.
"""

import json
import sys

import pytest
import torch
from conftest import ROOT, gens

from rsmooth import SmoothedClassifier
from rsmooth._engine.batching import FixedBatch
from rsmooth._engine.forward import ForwardRunner
from rsmooth._engine.sampler import Item, Sampler
from rsmooth._engine.streams import input_seeds, mix
from rsmooth.procedures import Certify

REFERENCE = ROOT / "tests" / "data" / "engine-reference"
sys.path.insert(0, str(REFERENCE))
from record import CASES, case_inputs, case_model  # noqa: E402

RECORDED = json.loads((REFERENCE / "certificates.json").read_text())


def legacy_seeding(seed: int, stream: int, block: int, device_type: str) -> int:
    return mix(seed, stream, block)


def engine_certify(model, x, sigma, size, generator, n0, n, bound, seeding=None):
    seeds = input_seeds(x.shape[0], generator)
    sampler = Sampler(ForwardRunner(model), FixedBatch(size), sigma, seeding=seeding)
    out = {}
    items = (Item(j, x[j], seeds[j]) for j in range(x.shape[0]))
    procedure = Certify(n=n, n0=n0, alpha=0.01, bound=bound).bind(sigma, seeding)
    sampler.run(procedure, items, out.__setitem__, probe=x)
    return [out[j] for j in range(x.shape[0])]


def generator_for(case_index: int, per_input: bool, batch: int):
    if per_input:
        return gens([100 + j for j in range(batch)])
    return torch.Generator().manual_seed(7)


@pytest.mark.parametrize("case", range(len(CASES)), ids=[c[0] for c in CASES])
def test_the_engine_reproduces_the_certificates_of_0_2(case):
    _name, shape, classes, batch, sigma, n0, n, sizes, per_input, bound = CASES[case]
    model, x = case_model(shape, classes, seed=case), case_inputs(shape, batch, seed=case)
    for size, recorded in zip(sizes, RECORDED[case]["results"], strict=True):
        rows = engine_certify(
            model, x, sigma, size, generator_for(case, per_input, batch), n0, n, bound,
            legacy_seeding,
        )  # fmt: skip
        assert [r.count for r in rows] == recorded["count"]
        assert [r.prediction for r in rows] == recorded["prediction"]
        assert [repr(r.radius) for r in rows] == recorded["radius"]
        assert [repr(r.p_lower) for r in rows] == recorded["p_lower"]


def test_a_broken_packing_fails_the_reference():
    # the same check with the samples of two inputs swapped: it must fail
    _name, shape, classes, batch, sigma, n0, n, _sizes, per_input, bound = CASES[0]
    model, x = case_model(shape, classes, seed=0), case_inputs(shape, batch, seed=0)
    rows = engine_certify(
        model, x[[1, 0, 2, 3, 4]], sigma, 64, generator_for(0, per_input, batch), n0, n, bound,
        legacy_seeding,
    )  # fmt: skip
    assert [r.count for r in rows] != RECORDED[0]["results"][0]["count"]


def test_smoothed_classifier_certify_is_the_engine_with_the_library_seeds():
    _name, shape, classes, batch, sigma, n0, n, _sizes, _per_input, bound = CASES[1]
    model, x = case_model(shape, classes, seed=1), case_inputs(shape, batch, seed=1)
    rows = engine_certify(model, x, sigma, 7, generator_for(1, True, batch), n0, n, bound)
    cert = SmoothedClassifier(model, sigma, batch_size=1000).certify(
        x, n=n, n0=n0, alpha=0.01, generator=generator_for(1, True, batch)
    )
    assert cert.count.tolist() == [r.count for r in rows]
    assert cert.radius.tolist() == [r.radius for r in rows]
    assert cert.radius.dtype == torch.float64
