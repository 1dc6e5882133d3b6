"""Results of certification: what each procedure returns, and what kind of result it is.

Two kinds of result exist, and every consumer (metrics, results files, plots, the command line)
asks a result for its :attr:`~Certificate.kind` before using it:

- ``"certify"``: :class:`Certificate`, from CERTIFY (:meth:`~rsmooth.SmoothedClassifier.certify`):
  a radius per input that can be compared at any radius and averaged (ACR).
- ``"grid"``: :class:`RadiusCertificate`, from the sequential procedure
  (:meth:`~rsmooth.SmoothedClassifier.certify_radius`): decisions at a grid of radii only. Its
  radius is a valid lower bound, but each input stopped as soon as the grid was decided, so it
  is not comparable with CERTIFY's: no ACR, and certified accuracy at grid radii only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "ABSTAIN",
    "CERTIFIED",
    "KINDS",
    "RULED_OUT",
    "UNDECIDED",
    "UNREACHABLE",
    "Certificate",
    "RadiusCertificate",
    "ResultKind",
]

#: Label returned by PREDICT and CERTIFY where the smoothed classifier abstains.
ABSTAIN: int = -1

#: :attr:`RadiusCertificate.status` of a radius that is certified.
CERTIFIED: int = 1
#: :attr:`RadiusCertificate.status` of a radius that is ruled out: with probability at least
#: ``1 - beta`` the candidate's vote share is below the one the radius needs. **Not** a
#: certificate of non-robustness.
RULED_OUT: int = 0
#: :attr:`RadiusCertificate.status` of a radius still open after ``max_n`` samples.
UNDECIDED: int = -1
#: :attr:`RadiusCertificate.status` of a radius that no count could certify within ``max_n``
#: samples on this schedule (never tested; it counts as not certified, as CERTIFY reports 0%).
UNREACHABLE: int = -2

#: The kinds of result: CERTIFY's certificates and the sequential procedure's grid decisions.
ResultKind = Literal["certify", "grid"]
KINDS: tuple[str, ...] = ("certify", "grid")


def float32_safe(values: np.ndarray, *, bound: str = "lower") -> np.ndarray:
    """``float64`` values as ``float32``, rounded towards the safe side.

    A lower bound or a radius (``bound="lower"``) is rounded down, an upper bound (``"upper"``)
    up: rounding to nearest could claim a radius the float64 computation did not certify.

    Example:
        >>> float(float32_safe(np.array([0.12599999937570072]))[0]) <= 0.12599999937570072
        True
    """
    values = np.asarray(values, dtype=np.float64)
    single = values.astype(np.float32)
    towards = np.float32(-np.inf if bound == "lower" else np.inf)
    off = single > values if bound == "lower" else single < values
    return np.where(off, np.nextafter(single, towards), single).astype(np.float32)


def float_tensor(values: np.ndarray, device: torch.device, *, bound: str = "lower") -> Tensor:
    """``float64`` values as a tensor on ``device`` (as :func:`float32_safe` without float64).

    Example:
        >>> t = float_tensor(np.array([0.12599999937570072]), torch.device("cpu"))
        >>> t.dtype, t.item()
        (torch.float64, 0.12599999937570072)
    """
    values = np.asarray(values, dtype=np.float64)
    if device.type != "mps":
        return torch.from_numpy(values.copy()).to(device)
    return torch.from_numpy(float32_safe(values, bound=bound)).to(device)


@dataclass(frozen=True, eq=False, slots=True)
class Certificate:
    """The result of :meth:`~rsmooth.SmoothedClassifier.certify` (CERTIFY) for ``B`` inputs.

    All tensors have shape ``[B]`` and live on the inputs' device.

    Attributes:
        prediction: Certified class per input (``int64``), :data:`ABSTAIN` (-1) where it abstains.
        radius: Certified L2 radius per input (``float64``; ``float32`` rounded down on devices
            without float64); 0.0 where it abstains.
        p_lower: One-sided lower confidence bound on the selected class's vote share.
        count: Number of the ``n`` estimation samples that voted for the selected class.
        n: Number of estimation samples per input.
        n0: Number of selection samples per input.
        alpha: Failure probability of the certificate.
        sigma: Noise level the certificate is for.
        nonfinite: Number of the ``n0 + n`` samples per input whose logits were not finite
            (``int64`` ``[B]``), counted for no class under ``nonfinite="count_against"``;
            None for a certificate built by hand.
        kind: ``"certify"`` (a class attribute): radii comparable at every radius, ACR defined.
    """

    kind: ClassVar[ResultKind] = "certify"

    prediction: Tensor
    radius: Tensor
    p_lower: Tensor
    count: Tensor
    n: int
    n0: int
    alpha: float
    sigma: float
    nonfinite: Tensor | None = None

    @property
    def abstained(self) -> Tensor:
        """Boolean mask ``[B]``, True where the smoothed classifier abstained."""
        return self.prediction == ABSTAIN

    def __len__(self) -> int:
        return int(self.prediction.shape[0])


@dataclass(frozen=True, eq=False, slots=True)
class RadiusCertificate:
    r"""The result of :meth:`~rsmooth.SmoothedClassifier.certify_radius` for ``B`` inputs, ``J`` radii.

    Tensors live on the inputs' device. **Guarantee:** for each input, with probability at least
    ``1 - alpha`` over the noise, every claim it reports holds at once: the smoothed classifier
    predicts ``prediction`` and is constant on the L2 ball of radius ``radius`` (hence of every
    certified ``radii[j]``). The guarantee holds at the pre-set ``looks``; sampling beyond
    ``max_n`` would need a new alpha. Re-analysing ``count`` and ``num_samples`` with a plain
    Clopper–Pearson bound is **not** valid (the sample size was chosen from the data).

    Attributes:
        prediction: The candidate class where the running lower bound is at least 1/2 (``int64``
            ``[B]``), :data:`ABSTAIN` elsewhere.
        certified: ``bool`` ``[B, J]``, True where ``radii[j]`` is certified (monotone: a
            certified radius implies every smaller one).
        status: ``int8`` ``[B, J]``: :data:`CERTIFIED` (1), :data:`RULED_OUT` (0),
            :data:`UNDECIDED` (-1) or :data:`UNREACHABLE` (-2, the same for every input).
        radius: A certified radius :math:`\sigma\Phi^{-1}(L)` per input (``[B]``), at least every
            certified ``radii[j]`` and below every uncertified one; 0 where it abstains. A lower
            bound only: not comparable with CERTIFY's radius (no ACR).
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
        kind: ``"grid"`` (a class attribute): decisions at ``radii`` only.
    """

    kind: ClassVar[ResultKind] = "grid"

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
        return self.prediction == ABSTAIN

    @property
    def reachable(self) -> tuple[float, ...]:
        """The grid radii that some count could certify within ``max_n`` samples."""
        status = self.status.detach().cpu()
        if status.shape[0] == 0:
            return self.radii
        return tuple(r for j, r in enumerate(self.radii) if int(status[0, j]) != UNREACHABLE)

    def __len__(self) -> int:
        return int(self.prediction.shape[0])
