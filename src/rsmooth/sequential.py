r"""Sequential certification at fixed radii: decide "certified at r?" with far fewer samples.

:meth:`rsmooth.SmoothedClassifier.certify_radius` answers the question that certified-accuracy
tables ask (is the smoothed classifier's prediction robust at radius :math:`r`, or at each radius
of a grid?) with a group-sequential test (:cite:`horvath2022boosting`,
:cite:`voracek2024confidence`): one candidate class per input (from ``n0`` fresh selection
samples, or given), cumulative estimation counts checked at geometric looks
:math:`N_1 < \dots < N_K = \texttt{max\_n}` (:func:`rsmooth.stats.sequential_looks`), alpha split
equally over the looks, and integer certify / futility thresholds
(:func:`rsmooth.stats.sequential_thresholds`). An input stops as soon as every radius of the grid
is either certified or ruled out; inputs still open at ``max_n`` are undecided.

The running lower bound :math:`L = \max_k \mathrm{CP}_{lo}(A_k, N_k, \alpha/K)` is a lower
confidence sequence: with probability at least :math:`1-\alpha` it is below the candidate's
vote share at every look at once, so all claims an input reports hold together, and
:math:`\sigma\Phi^{-1}(L)` is itself a valid certified radius.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy.stats import norm
from torch import Tensor

from rsmooth._validation import check_int, check_open_unit, check_real
from rsmooth.stats import (
    clopper_pearson_lower,
    clopper_pearson_upper,
    min_sequential_max_n,
    radius_to_probability,
    sequential_looks,
    sequential_thresholds,
)

if TYPE_CHECKING:
    from rsmooth.smoothing import GeneratorArg, SmoothedClassifier

__all__ = ["CERTIFIED", "RULED_OUT", "UNDECIDED", "RadiusCertificate"]

#: :attr:`RadiusCertificate.status` of a radius that is certified.
CERTIFIED: int = 1
#: :attr:`RadiusCertificate.status` of a radius that is ruled out: with probability at least
#: ``1 - beta`` the candidate's vote share is below the one the radius needs. **Not** a
#: certificate of non-robustness.
RULED_OUT: int = 0
#: :attr:`RadiusCertificate.status` of a radius still open after ``max_n`` samples.
UNDECIDED: int = -1


@dataclass(frozen=True, eq=False, slots=True)
class RadiusCertificate:
    r"""The result of :meth:`rsmooth.SmoothedClassifier.certify_radius` for ``B`` inputs and ``J`` radii.

    Tensors live on the inputs' device. **Guarantee:** for each input, with probability at least
    ``1 - alpha`` over the noise, every claim it reports holds at once: the smoothed classifier
    predicts ``prediction`` and is constant on the L2 ball of radius ``radius`` (hence of every
    certified ``radii[j]``). The guarantee holds at the pre-set ``looks``; sampling beyond
    ``max_n`` would need a new alpha. Re-analysing ``count`` and ``num_samples`` with a plain
    Clopper–Pearson bound is **not** valid (the sample size was chosen from the data).

    Attributes:
        prediction: The candidate class where the running lower bound is at least 1/2 (``int64``
            ``[B]``), :data:`~rsmooth.ABSTAIN` elsewhere.
        certified: ``bool`` ``[B, J]``, True where ``radii[j]`` is certified (monotone: a
            certified radius implies every smaller one).
        status: ``int8`` ``[B, J]``: :data:`CERTIFIED` (1), :data:`RULED_OUT` (0) or
            :data:`UNDECIDED` (-1).
        radius: A certified radius :math:`\sigma\Phi^{-1}(L)` per input (``[B]``), at least every
            certified ``radii[j]`` and below every uncertified one; 0 where it abstains.
        p_lower: Running lower bound :math:`L` on the candidate's vote share (``[B]``).
        p_upper: Running upper bound (at level ``beta``) on the candidate's vote share (``[B]``).
        count: Votes for the candidate among the estimation samples drawn (``int64`` ``[B]``).
        num_samples: Estimation samples drawn per input (``int64`` ``[B]``; selection excluded).
        candidate: The class tested per input (selected with ``n0`` samples, or given).
        nonfinite: Samples per input whose logits were not finite (selection and estimation).
        radii: The grid of radii, sorted.
        looks: The cumulative sample sizes at which the counts were checked.
        alpha: Failure probability of the certificates.
        beta: Failure probability of the "ruled out" decisions.
        sigma: Noise level.
        n0: Selection samples per input (0 when the candidates were given).
        max_n: The last look.
        growth: Ratio of consecutive looks.
    """

    prediction: Tensor
    certified: Tensor
    status: Tensor
    radius: Tensor
    p_lower: Tensor
    p_upper: Tensor
    count: Tensor
    num_samples: Tensor
    candidate: Tensor
    nonfinite: Tensor
    radii: tuple[float, ...]
    looks: tuple[int, ...]
    alpha: float
    beta: float
    sigma: float
    n0: int
    max_n: int
    growth: float

    @property
    def abstained(self) -> Tensor:
        """Boolean mask ``[B]``, True where no class is certified."""
        return self.prediction == -1

    def __len__(self) -> int:
        return int(self.prediction.shape[0])


def _check_radii(radius: float | Sequence[float]) -> tuple[float, ...]:
    if isinstance(radius, (Tensor, np.ndarray)):
        radius = radius.tolist()
    values = [radius] if isinstance(radius, numbers.Real) else radius
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(
            f"radius must be a number or a sorted sequence of numbers, got {type(radius).__name__}"
        )
    radii = tuple(check_real("radius", r) for r in values)
    if not radii:
        raise ValueError("radius must name at least one radius, got an empty sequence")
    if any(r < 0 for r in radii):
        raise ValueError(f"radius must be non-negative, got {list(radii)}")
    if any(b <= a for a, b in itertools.pairwise(radii)):
        raise ValueError(
            f"radius must be sorted in increasing order without repeats, got {list(radii)}"
        )
    return radii


def _grid_schedule(
    radii: Sequence[float], sigma: float, alpha: float, beta: float, max_n: int, growth: float
) -> tuple[tuple[int, ...], np.ndarray, np.ndarray]:
    """Looks and thresholds of a grid; ``ValueError`` naming the smallest ``max_n`` if too small."""
    p = radius_to_probability(np.asarray(radii), sigma)
    if not np.all(p < 1.0):
        raise ValueError(f"radius {max(radii)} is too large for sigma={sigma}: Phi(r/sigma) == 1")
    needed = min_sequential_max_n(float(p[-1]), alpha, float(p[0]), growth)
    if max_n < needed:
        raise ValueError(
            f"max_n must be at least {needed} to certify the radius {radii[-1]} at sigma={sigma}, "
            f"alpha={alpha}, growth={growth}, got {max_n}"
        )
    looks = sequential_looks(max_n, alpha, float(p[0]), growth)
    cert, fut = sequential_thresholds(looks, p, alpha, beta)
    return looks, cert, fut


def _certify_radius(
    smoothed: SmoothedClassifier,
    inputs: Tensor,
    radius: float | Sequence[float],
    *,
    alpha: float = 0.001,
    max_n: int = 100_000,
    n0: int = 100,
    beta: float | None = None,
    growth: float = 1.5,
    candidates: Tensor | None = None,
    generator: GeneratorArg = None,
) -> RadiusCertificate:
    """Implementation of :meth:`rsmooth.SmoothedClassifier.certify_radius` (see there)."""
    inputs, generator = smoothed._validate_call(inputs, generator)
    radii = _check_radii(radius)
    alpha = check_open_unit("alpha", alpha)
    beta = alpha if beta is None else check_open_unit("beta", beta)
    max_n = check_int("max_n", max_n)
    n0 = check_int("n0", n0)
    growth = check_real("growth", growth)
    if not growth > 1:
        raise ValueError(f"growth must be greater than 1, got {growth}")
    batch = inputs.shape[0]
    if candidates is not None:
        if not isinstance(candidates, Tensor):
            raise TypeError(f"candidates must be a LongTensor, got {type(candidates).__name__}")
        if candidates.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
            raise TypeError(f"candidates must be an integer tensor, got dtype {candidates.dtype}")
        if tuple(candidates.shape) != (batch,):
            raise ValueError(
                f"candidates must have shape [{batch}] (one class per input), got "
                f"{tuple(candidates.shape)}"
            )
        low = int(candidates.min()) if batch else 0
        high = int(candidates.max()) if batch else 0
        limit = smoothed.num_classes
        if low < 0 or (limit is not None and high >= limit):
            bad = low if low < 0 else high
            raise ValueError(
                f"candidates must be classes in [0, {limit if limit is not None else 'K'}), "
                f"got {bad}"
            )
    looks, cert, fut = _grid_schedule(radii, smoothed.sigma, alpha, beta, max_n, growth)
    seeds = smoothed._input_seeds(inputs, generator)
    return _run(
        smoothed, inputs, seeds, radii, alpha, beta, n0, growth, looks, cert, fut, candidates
    )


def _run(
    smoothed: SmoothedClassifier,
    inputs: Tensor,
    seeds: Sequence[int],
    radii: tuple[float, ...],
    alpha: float,
    beta: float,
    n0: int,
    growth: float,
    looks: tuple[int, ...],
    cert: np.ndarray,
    fut: np.ndarray,
    candidates: Tensor | None,
) -> RadiusCertificate:
    from rsmooth.smoothing import ABSTAIN, ESTIMATION, SELECTION, _float_dtype

    device, batch = inputs.device, inputs.shape[0]
    num_looks, num_radii = len(looks), len(radii)
    if candidates is None:
        selection = smoothed._counts(inputs, seeds, stream=SELECTION, start=0, stop=n0)
        candidate = selection.argmax(dim=1)
        nonfinite = (n0 - selection.sum(dim=1)).cpu().numpy()
    else:
        candidate = candidates.to(device=device, dtype=torch.int64)
        nonfinite = np.zeros(batch, dtype=np.int64)
        n0 = 0
    count = np.zeros(batch, dtype=np.int64)
    used = np.zeros(batch, dtype=np.int64)
    jc = np.zeros(batch, dtype=np.int64)  # certified prefix: radii[:jc] are certified
    ju = np.full(batch, num_radii, dtype=np.int64)  # radii[ju:] are ruled out
    lower = np.zeros(batch, dtype=np.float64)
    upper = np.ones(batch, dtype=np.float64)
    active = np.arange(batch)
    previous = 0
    for k, n_k in enumerate(looks):
        if active.size == 0:
            break
        index = torch.from_numpy(active).to(device)
        part = inputs if active.size == batch else inputs.index_select(0, index)
        counts = smoothed._counts(
            part, [seeds[i] for i in active.tolist()], stream=ESTIMATION, start=previous, stop=n_k
        )
        mine = candidate if active.size == batch else candidate.index_select(0, index)
        if candidates is not None and int(mine.max()) >= counts.shape[1]:
            raise ValueError(
                f"candidates must be classes in [0, {counts.shape[1]}), got {int(mine.max())}"
            )
        votes = counts.gather(1, mine[:, None])[:, 0]
        step = torch.stack([votes, (n_k - previous) - counts.sum(dim=1)]).cpu().numpy()  # one sync
        count[active] += step[0]
        nonfinite[active] += step[1]
        used[active] = n_k
        current = count[active]
        jc[active] = np.maximum(jc[active], (current[:, None] >= cert[k]).sum(axis=1))
        ju[active] = np.minimum(ju[active], (current[:, None] > fut[k]).sum(axis=1))
        lower[active] = np.maximum(
            lower[active], clopper_pearson_lower(current, n_k, alpha / num_looks)
        )
        upper[active] = np.minimum(
            upper[active], clopper_pearson_upper(current, n_k, beta / num_looks)
        )
        active = active[jc[active] < ju[active]]
        previous = n_k

    grid = np.asarray(radii, dtype=np.float64)
    j = np.arange(num_radii)[None, :]
    certified = j < jc[:, None]
    status = np.where(
        certified, CERTIFIED, np.where(j >= np.maximum(ju, jc)[:, None], RULED_OUT, UNDECIDED)
    ).astype(np.int8)
    predicted = (lower >= 0.5) | (jc > 0)
    radius = smoothed.sigma * norm.ppf(np.maximum(lower, 0.5))
    # make the radius agree exactly with the integer decisions (only ever within float rounding):
    # at least the largest certified radius, below the smallest uncertified one
    top = np.where(jc > 0, grid[np.maximum(jc - 1, 0)], 0.0)
    radius = np.maximum(radius, top)
    cap = np.where(jc < num_radii, grid[np.minimum(jc, num_radii - 1)], math.inf)
    radius = np.where(radius >= cap, np.nextafter(cap, -math.inf), radius)
    radius = np.where(predicted, np.maximum(radius, 0.0), 0.0)
    prediction = torch.where(
        torch.from_numpy(predicted).to(device), candidate, torch.full_like(candidate, ABSTAIN)
    )
    dtype = _float_dtype(device)
    return RadiusCertificate(
        prediction=prediction,
        certified=torch.from_numpy(certified).to(device),
        status=torch.from_numpy(status).to(device),
        radius=torch.from_numpy(radius).to(device, dtype),
        p_lower=torch.from_numpy(lower).to(device, dtype),
        p_upper=torch.from_numpy(upper).to(device, dtype),
        count=torch.from_numpy(count).to(device),
        num_samples=torch.from_numpy(used).to(device),
        candidate=candidate,
        nonfinite=torch.from_numpy(nonfinite.astype(np.int64)).to(device),
        radii=radii,
        looks=tuple(looks),
        alpha=alpha,
        beta=beta,
        sigma=smoothed.sigma,
        n0=n0,
        max_n=looks[-1],
        growth=growth,
    )


def _plug_in_probabilities(
    count: np.ndarray, n: np.ndarray, label: np.ndarray, prediction: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Plug-in vote share of the candidate class per row of a CERTIFY results file.

    Returns ``(p, correct)``: ``p = (count + 1/2) / (n + 1)`` is the share of the class CERTIFY
    selected (the sequential certifier selects the same class from the same selection samples),
    which sets the cost; a certificate counts for certified accuracy only where that class is the
    label (``correct``; abstentions count as wrong).
    """
    share = (count + 0.5) / (n + 1.0)
    return share, (prediction == label) & (prediction >= 0)


def _expected_cost(
    p_values: np.ndarray,
    radii: Sequence[float],
    sigma: float,
    alpha: float,
    beta: float,
    max_n: int,
    growth: float,
    certify_n: int,
) -> dict[str, np.ndarray]:
    """Per p: expected samples, P(certify r_j) sequentially and with CERTIFY at ``certify_n``.

    Exact (operating characteristic), assuming the candidate is the class whose share is p.
    Identical p values are computed once.
    """
    from scipy.stats import binom

    from rsmooth.stats import sequential_operating_characteristic

    looks, cert, fut = _grid_schedule(radii, sigma, alpha, beta, max_n, growth)
    targets = radius_to_probability(np.asarray(radii), sigma)
    certify_threshold, _ = sequential_thresholds((certify_n,), targets, alpha, beta)
    unique, inverse = np.unique(np.asarray(p_values, dtype=np.float64), return_inverse=True)
    samples = np.empty(len(unique))
    p_seq = np.empty((len(unique), len(radii)))
    for i, p in enumerate(unique.tolist()):
        oc = sequential_operating_characteristic(p, looks, cert, fut)
        samples[i], p_seq[i] = oc.expected_samples, oc.certify
    p_certify = binom.sf(certify_threshold[0][None, :] - 1, certify_n, unique[:, None])
    return {
        "looks": np.asarray(looks),
        "samples": samples[inverse],
        "certify_sequential": p_seq[inverse],
        "certify_certify": p_certify[inverse],
    }
