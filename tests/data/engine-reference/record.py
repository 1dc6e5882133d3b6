"""Records CERTIFY certificates of rsmooth 0.2's engine, for the test that the 0.3 engine keeps them.

Run once with rsmooth 0.2 (commit b237a62): ``python tests/data/engine-reference/record.py``.
The models are linear (no layout- or batch-size-dependent rounding), so the certificates depend
only on the noise scheme, the packing of samples into forward batches and the statistics.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from rsmooth import SmoothedClassifier


def case_model(shape: tuple[int, ...], classes: int, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    numel = 1
    for size in shape:
        numel *= size
    linear = nn.Linear(numel, classes)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(classes, numel, generator=g) * 4 / numel**0.5)
        linear.bias.copy_(torch.randn(classes, generator=g))
    return nn.Sequential(nn.Flatten(), linear)


def case_inputs(shape: tuple[int, ...], batch: int, seed: int) -> torch.Tensor:
    return torch.rand((batch, *shape), generator=torch.Generator().manual_seed(seed + 1))


CASES = [
    # name, input shape, classes, inputs, sigma, n0, n, batch sizes, per-input generators, bound
    ("image", (3, 8, 8), 4, 5, 0.5, 13, 777, (7, 64, 1000), False, "clopper-pearson"),
    ("image-per-input", (3, 8, 8), 4, 5, 0.5, 13, 777, (7, 1000), True, "clopper-pearson"),
    ("vector-long", (10,), 3, 4, 0.25, 100, 2000, (100, 4096), False, "clopper-pearson"),
    ("vector-randomized", (10,), 3, 4, 0.25, 100, 2000, (333,), True, "randomized"),
]


def record() -> list[dict]:
    rows = []
    for name, shape, classes, batch, sigma, n0, n, sizes, per_input, bound in CASES:
        model = case_model(shape, classes, seed=len(rows))
        inputs = case_inputs(shape, batch, seed=len(rows))
        results = []
        for size in sizes:
            smoothed = SmoothedClassifier(model, sigma, batch_size=size)
            if per_input:
                generator = [torch.Generator().manual_seed(100 + j) for j in range(batch)]
            else:
                generator = torch.Generator().manual_seed(7)
            cert = smoothed.certify(
                inputs, n=n, n0=n0, alpha=0.01, generator=generator, bound=bound
            )
            results.append(
                {
                    "batch_size": size,
                    "prediction": cert.prediction.tolist(),
                    "count": cert.count.tolist(),
                    "radius": [repr(r) for r in cert.radius.tolist()],
                    "p_lower": [repr(p) for p in cert.p_lower.tolist()],
                }
            )
        rows.append({"name": name, "results": results})
    return rows


if __name__ == "__main__":
    out = Path(__file__).with_name("certificates.json")
    out.write_text(json.dumps(record(), indent=1) + "\n")
    print(f"wrote {out}")
