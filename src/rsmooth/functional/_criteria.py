r"""Training criteria without an adversary: Gaussian augmentation, stability, MACER, consistency.

Each function takes the noise as an argument (noise-major, already scaled by sigma), runs the
model in its current mode and returns a NamedTuple whose first field is the total ``loss`` and
whose other fields are the unweighted terms, named as in the ``term_names`` of the matching
criterion in :mod:`rsmooth.losses`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rsmooth._validation import check_nonnegative, check_positive
from rsmooth.functional._core import logits_of, normal_icdf, num_copies, replicate, split_copies

__all__ = [
    "ConsistencyTerms",
    "GaussianAugmentationTerms",
    "MACERTerms",
    "StabilityTerms",
    "consistency_loss",
    "gaussian_augmentation_loss",
    "macer_loss",
    "stability_loss",
]


class GaussianAugmentationTerms(NamedTuple):
    """Result of :func:`gaussian_augmentation_loss`."""

    #: Total loss (0-d), equal to ``natural``.
    loss: Tensor
    #: Mean cross-entropy over the ``m * B`` noisy copies (0-d).
    natural: Tensor


class StabilityTerms(NamedTuple):
    """Result of :func:`stability_loss`; ``loss = natural + lbd * stability``."""

    #: Total loss (0-d).
    loss: Tensor
    #: Mean cross-entropy on the clean inputs (0-d).
    natural: Tensor
    #: Mean soft cross-entropy from the clean to the noisy prediction (0-d).
    stability: Tensor


class MACERTerms(NamedTuple):
    """Result of :func:`macer_loss`; ``loss = classification + lbd * robustness``."""

    #: Total loss (0-d).
    loss: Tensor
    #: Cross-entropy of the mean softmax, summed over the batch and divided by ``B`` (0-d).
    classification: Tensor
    #: Hinge on the certified-radius gap, summed over the kept inputs and divided by ``B`` (0-d).
    robustness: Tensor
    #: Boolean mask ``[B]`` of the inputs that enter the robustness term.
    kept: Tensor


class ConsistencyTerms(NamedTuple):
    """Result of :func:`consistency_loss`.

    ``loss = natural + lbd * consistency + eta * entropy``.
    """

    #: Total loss (0-d).
    loss: Tensor
    #: Mean cross-entropy over the ``m * B`` noisy copies (0-d).
    natural: Tensor
    #: Mean over inputs and copies of :math:`\mathrm{KL}(\hat p \,\|\, p_i)` (0-d).
    consistency: Tensor
    #: Mean entropy of the average prediction :math:`\hat p` (0-d).
    entropy: Tensor


def gaussian_augmentation_loss(
    model: nn.Module, inputs: Tensor, targets: Tensor, noise: Tensor
) -> GaussianAugmentationTerms:
    r"""Gaussian data augmentation :cite:`cohen2019certified` on given noise.

    .. math::
        L = \frac{1}{mB} \sum_{i=1}^{m} \sum_{j=1}^{B}
            \mathrm{CE}\big(f(x_j + \delta_{ij}), y_j\big)

    One forward pass over the ``m * B`` noisy copies, in the model's current mode.

    Args:
        model: Base classifier ``f`` returning logits ``[N, K]``.
        inputs: Clean inputs ``[B, *]``.
        targets: Class indices ``[B]``.
        noise: Noise ``[m * B, *]`` in noise-major order, already scaled by :math:`\sigma`.

    Returns:
        :class:`GaussianAugmentationTerms` ``(loss, natural)``.

    Raises:
        ValueError: ``noise`` does not have shape ``[m * B, *]``.

    Example:
        >>> model = nn.Linear(4, 3)
        >>> _ = nn.init.zeros_(model.weight), nn.init.zeros_(model.bias)
        >>> terms = gaussian_augmentation_loss(
        ...     model, torch.rand(2, 4), torch.tensor([0, 2]), torch.randn(4, 4)
        ... )
        >>> round(terms.loss.item(), 4)  # uniform prediction: log 3
        1.0986
    """
    num_noise = num_copies(inputs, noise)
    logits = logits_of(model, replicate(inputs, num_noise) + noise)
    natural = F.cross_entropy(logits, replicate(targets, num_noise))
    return GaussianAugmentationTerms(natural, natural)


def stability_loss(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    noise: Tensor,
    lbd: float,
    *,
    detach_target: bool = False,
) -> StabilityTerms:
    r"""Stability training :cite:`li2019certified` on given noise (Jeong et al.'s PyTorch version).

    .. math::
        L = \frac{1}{B}\sum_{j} \mathrm{CE}\big(f(x_j), y_j\big)
          - \lambda \frac{1}{B}\sum_{j} \sum_k \mathrm{softmax}(f(x_j))_k
            \log \mathrm{softmax}(f(x_j + \delta_j))_k

    Two forward passes in the model's current mode: the clean batch first, then the noisy one.
    The soft target :math:`\mathrm{softmax}(f(x))` carries gradient unless ``detach_target``.

    Args:
        model: Base classifier ``f`` returning logits ``[N, K]``.
        inputs: Clean inputs ``[B, *]``.
        targets: Class indices ``[B]``.
        noise: Noise ``[B, *]`` (one copy), already scaled by :math:`\sigma`; zero noise is
            allowed and gives :math:`\mathrm{CE} + \lambda H(\mathrm{softmax}(f(x)))`.
        lbd: Weight :math:`\lambda \ge 0` of the stability term.
        detach_target: Stop the gradient through the clean soft target.

    Returns:
        :class:`StabilityTerms` ``(loss, natural, stability)``.

    Raises:
        ValueError: ``noise`` does not have the shape of ``inputs``, or ``lbd`` is negative.

    Example:
        >>> model = nn.Linear(4, 3)
        >>> _ = nn.init.zeros_(model.weight), nn.init.zeros_(model.bias)
        >>> x, y = torch.rand(2, 4), torch.tensor([0, 2])
        >>> terms = stability_loss(model, x, y, torch.randn(2, 4), lbd=2.0)
        >>> round(terms.natural.item(), 4), round(terms.loss.item(), 4)  # log 3, 3 log 3
        (1.0986, 3.2958)
    """
    lbd = check_nonnegative("lbd", lbd)
    if num_copies(inputs, noise) != 1:
        raise ValueError(
            f"noise must have the shape of inputs {tuple(inputs.shape)}, got {tuple(noise.shape)}"
        )
    clean_logits = logits_of(model, inputs)
    noisy_logits = logits_of(model, inputs + noise)
    natural = F.cross_entropy(clean_logits, targets)
    soft_target = clean_logits.softmax(dim=1)
    if detach_target:
        soft_target = soft_target.detach()
    stability = -(soft_target * noisy_logits.log_softmax(dim=1)).sum(dim=1).mean()
    return StabilityTerms(natural + lbd * stability, natural, stability)


def macer_loss(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    noise: Tensor,
    sigma: float,
    lbd: float,
    gamma: float,
    beta: float,
) -> MACERTerms:
    r"""MACER :cite:`zhai2020macer` on given noise, as the official code computes it.

    With logits :math:`z_{ij} = f(x_j + \delta_{ij})`,
    :math:`\hat F_j = \frac1m \sum_i \mathrm{softmax}(z_{ij})` and
    :math:`\hat G_j = \frac1m \sum_i \mathrm{softmax}(\beta z_{ij})`:

    .. math::
        L = \frac{1}{B} \Big[ \sum_j -\log\big(\hat F_j[y_j] + 10^{-10}\big)
          + \lambda \frac{\sigma}{2} \sum_{j \in \mathcal{K}}
            \big(\gamma - \Phi^{-1}(p_{A,j}) + \Phi^{-1}(p_{B,j})\big) \Big]

    where :math:`p_{A,j} \ge p_{B,j}` are the two largest entries of :math:`\hat G_j` and the kept
    set :math:`\mathcal{K}` holds the inputs whose top class is :math:`y_j` and whose gap
    :math:`d_j = \Phi^{-1}(p_{A,j}) - \Phi^{-1}(p_{B,j})` is finite and at most :math:`\gamma`.
    Inputs with a non-finite gap (a saturated :math:`p_A = 1` or :math:`p_B = 0`) are dropped
    with an explicit :func:`torch.isfinite` mask, and :math:`\Phi^{-1}` is recomputed on the
    kept inputs only, so their gradient is finite. There is no clamping of ``p``.

    Args:
        model: Base classifier ``f`` returning logits ``[N, K]`` with ``K >= 2``.
        inputs: Clean inputs ``[B, *]``.
        targets: Class indices ``[B]``.
        noise: Noise ``[m * B, *]`` in noise-major order, already scaled by :math:`\sigma`.
        sigma: Noise level :math:`\sigma` scaling the robustness term (may be 0 for tests).
        lbd: Weight :math:`\lambda \ge 0` of the robustness term.
        gamma: Hinge margin :math:`\gamma > 0`.
        beta: Inverse temperature :math:`\beta > 0` of the robustness term.

    Returns:
        :class:`MACERTerms` ``(loss, classification, robustness, kept)``.

    Raises:
        ValueError: ``noise`` has the wrong shape, a hyperparameter is out of range, or the
            model returns fewer than two classes.

    Example:
        >>> model = nn.Linear(4, 3)
        >>> x, y = torch.rand(2, 4), torch.tensor([0, 2])
        >>> terms = macer_loss(model, x, y, 0.25 * torch.randn(8, 4), 0.25, 12.0, 8.0, 16.0)
        >>> terms.loss.shape, terms.kept.shape
        (torch.Size([]), torch.Size([2]))
    """
    sigma = check_nonnegative("sigma", sigma)
    lbd = check_nonnegative("lbd", lbd)
    gamma = check_positive("gamma", gamma)
    beta = check_positive("beta", beta)
    num_noise = num_copies(inputs, noise)
    batch = inputs.shape[0]
    logits = split_copies(logits_of(model, replicate(inputs, num_noise) + noise), num_noise)
    if logits.shape[-1] < 2:
        raise ValueError(f"MACER needs at least 2 classes, got logits of shape {logits.shape}")

    # Classification: cross-entropy of the mean softmax, +1e-10 inside the log, sum / B.
    mean_probs = logits.softmax(dim=-1).mean(dim=0)
    target_probs = mean_probs.gather(1, targets.unsqueeze(1)).squeeze(1)
    classification = -torch.log(target_probs + 1e-10).sum() / batch

    # Robustness: hinge on the gap between the top two beta-smoothed probabilities.
    top2, top2_idx = (beta * logits).softmax(dim=-1).mean(dim=0).topk(2, dim=1)
    with torch.no_grad():
        gap = normal_icdf(top2[:, 0]) - normal_icdf(top2[:, 1])
        kept = (top2_idx[:, 0] == targets) & torch.isfinite(gap) & (gap.abs() <= gamma)
    p_a, p_b = top2[kept, 0], top2[kept, 1]
    gap_kept = normal_icdf(p_a) - normal_icdf(p_b)
    robustness = (gamma - gap_kept).sum() * (sigma / 2) / batch

    loss = classification if lbd == 0 else classification + lbd * robustness
    return MACERTerms(loss, classification, robustness, kept)


def consistency_loss(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    noise: Tensor,
    lbd: float,
    eta: float,
    *,
    detach_target: bool = False,
) -> ConsistencyTerms:
    r"""Consistency regularization :cite:`jeong2020consistency` on given noise.

    With :math:`p_{ij} = \mathrm{softmax}(f(x_j + \delta_{ij}))` and
    :math:`\hat p_j = \frac1m \sum_i p_{ij}`:

    .. math::
        L = \frac{1}{mB}\sum_{i,j} \mathrm{CE}\big(f(x_j + \delta_{ij}), y_j\big)
          + \frac{1}{B}\sum_j \Big[ \frac{\lambda}{m} \sum_i
            \mathrm{KL}\big(\hat p_j \,\|\, p_{ij}\big) + \eta\, H(\hat p_j) \Big]

    with :math:`H(p) = -\sum_k p_k \log \max(p_k, 10^{-20})`. One forward pass over the
    ``m * B`` noisy copies. :math:`\hat p` carries gradient in both terms, as in the official
    code; ``detach_target=True`` stops it in the KL target only.

    Args:
        model: Base classifier ``f`` returning logits ``[N, K]``.
        inputs: Clean inputs ``[B, *]``.
        targets: Class indices ``[B]``.
        noise: Noise ``[m * B, *]`` in noise-major order, already scaled by :math:`\sigma`.
        lbd: Weight :math:`\lambda \ge 0` of the KL term.
        eta: Weight :math:`\eta \ge 0` of the entropy term.
        detach_target: Stop the gradient through :math:`\hat p` as the KL target.

    Returns:
        :class:`ConsistencyTerms` ``(loss, natural, consistency, entropy)``.

    Raises:
        ValueError: ``noise`` has the wrong shape, or ``lbd`` or ``eta`` is negative.

    Example:
        >>> model = nn.Linear(4, 3)
        >>> _ = nn.init.zeros_(model.weight), nn.init.zeros_(model.bias)
        >>> x, y = torch.rand(2, 4), torch.tensor([0, 2])
        >>> terms = consistency_loss(model, x, y, torch.randn(4, 4), lbd=10.0, eta=0.5)
        >>> round(terms.consistency.item(), 4), round(terms.entropy.item(), 4)
        (0.0, 1.0986)
    """
    lbd = check_nonnegative("lbd", lbd)
    eta = check_nonnegative("eta", eta)
    num_noise = num_copies(inputs, noise)
    logits = logits_of(model, replicate(inputs, num_noise) + noise)
    natural = F.cross_entropy(logits, replicate(targets, num_noise))
    log_probs = split_copies(logits.log_softmax(dim=1), num_noise)  # [m, B, K]
    mean_probs = split_copies(logits.softmax(dim=1), num_noise).mean(dim=0)  # [B, K]
    kl_target = mean_probs.detach() if detach_target else mean_probs
    kl = F.kl_div(log_probs, kl_target.expand_as(log_probs), reduction="none").sum(dim=-1)
    consistency = kl.mean()
    entropy = -(mean_probs * mean_probs.clamp(min=1e-20).log()).sum(dim=1).mean()
    loss = natural + lbd * consistency + eta * entropy
    return ConsistencyTerms(loss, natural, consistency, entropy)
