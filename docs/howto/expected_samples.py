"""Draw docs/howto/expected_samples.png: expected samples of certify_radius against the true p_A.

Exact (the operating characteristic of rsmooth.stats), no sampling:
``python docs/howto/expected_samples.py``.
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from rsmooth.stats import (
    radius_to_probability,
    sequential_looks,
    sequential_operating_characteristic,
    sequential_thresholds,
)

SIGMA, ALPHA, MAX_N = 0.5, 0.001, 100_000
p_values = np.concatenate([np.linspace(0.55, 0.99, 120), np.linspace(0.99, 0.9999, 20)])
fig, ax = plt.subplots(figsize=(7, 4.8), layout="constrained")
for radii in ([0.25], [0.5], [0.75], [1.0], [0.25, 0.5, 0.75, 1.0]):
    targets = radius_to_probability(radii, SIGMA)
    looks = sequential_looks(MAX_N, ALPHA, float(targets[0]))
    cert, fut = sequential_thresholds(looks, targets, ALPHA, ALPHA)
    expected = [
        sequential_operating_characteristic(p, looks, cert, fut).expected_samples for p in p_values
    ]
    label = f"r = {radii[0]}" if len(radii) == 1 else "grid 0.25-1.0"
    ax.plot(p_values, expected, label=label, lw=2.2 if len(radii) > 1 else 1.2)
ax.axhline(MAX_N + 100, color="k", ls="--", lw=1, label="CERTIFY (n0 + n = 100,100)")
ax.set_yscale("log")
ax.set_xlabel("true vote share p_A of the candidate class")
ax.set_ylabel("expected estimation samples")
ax.set_title(f"certify_radius, sigma = {SIGMA}, alpha = {ALPHA}, max_n = {MAX_N:,}")
# under the axes, where it covers no curve (inside, it hid the first peak)
ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncols=3, frameon=False)
fig.savefig(Path(__file__).with_name("expected_samples.png"), dpi=110)
