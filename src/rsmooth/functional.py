r"""Deterministic building blocks shared by the certifier, the training criteria and the attacks.

Every function here takes its noise **as an argument**, so results can be checked exactly and
differentiated with :func:`torch.autograd.gradcheck`; the modules draw the noise with
:func:`sample_noise` and delegate.

Replication order (used everywhere in rsmooth) is **noise-major**: for a batch ``x`` of ``B``
inputs and ``m`` noise copies, row ``i * B + j`` of a replicated tensor is copy ``i`` of input
``j``. :func:`replicate` builds it, :func:`sample_noise` draws noise of that shape and
:func:`split_copies` reshapes per-row outputs to ``[m, B, ...]``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rsmooth._validation import check_nonnegative, check_positive

__all__ = [
    "AdaptiveNoiseAttackResult",
    "CATRSTerms",
    "ConsistencyTerms",
    "GaussianAugmentationTerms",
    "MACERTerms",
    "StabilityTerms",
    "adaptive_noise_attack",
    "catrs_loss",
    "catrs_noise_attack",
    "consistency_loss",
    "gaussian_augmentation_loss",
    "macer_loss",
    "replicate",
    "sample_noise",
    "smooth_ddn_attack",
    "smooth_pgd_attack",
    "smoothadv_loss",
    "smoothmix_terms",
    "soft_smoothed_probs",
    "split_copies",
    "stability_loss",
    "unrestricted_smooth_attack",
]


def replicate(inputs: Tensor, num_noise: int) -> Tensor:
    """Repeat a batch ``num_noise`` times, noise-major.

    Args:
        inputs: Batch ``[B, *]``.
        num_noise: Number of copies ``m``.

    Returns:
        Tensor ``[m * B, *]`` whose row ``i * B + j`` is ``inputs[j]``.

    Example:
        >>> replicate(torch.tensor([[1.0], [2.0]]), 3).flatten().tolist()
        [1.0, 2.0, 1.0, 2.0, 1.0, 2.0]
    """
    return inputs.repeat((num_noise,) + (1,) * (inputs.dim() - 1))


def split_copies(values: Tensor, num_noise: int) -> Tensor:
    """Reshape per-row values ``[m * B, *]`` (noise-major) to ``[m, B, *]``.

    Example:
        >>> split_copies(torch.arange(6), 3).tolist()
        [[0, 1], [2, 3], [4, 5]]
    """
    return values.reshape((num_noise, -1) + tuple(values.shape[1:]))


def sample_noise(
    inputs: Tensor,
    sigma: float,
    num_noise: int = 1,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Draw isotropic Gaussian noise :math:`\delta \sim \mathcal{N}(0, \sigma^2 I)` for ``m`` copies.

    The noise is drawn on ``inputs.device`` in ``inputs.dtype``.

    Args:
        inputs: Batch ``[B, *]`` (only its shape, device and dtype are used).
        sigma: Noise standard deviation :math:`\sigma`.
        num_noise: Number of copies ``m``.
        generator: Optional generator on ``inputs.device``.

    Returns:
        Noise ``[m * B, *]`` in noise-major order (see :func:`replicate`).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> sample_noise(torch.zeros(4, 3, 8, 8), 0.5, 2, generator=g).shape
        torch.Size([8, 3, 8, 8])
    """
    shape = (num_noise * inputs.shape[0],) + tuple(inputs.shape[1:])
    noise = torch.randn(shape, generator=generator, device=inputs.device, dtype=inputs.dtype)
    return noise.mul_(sigma)


def soft_smoothed_probs(model: nn.Module, inputs: Tensor, noise: Tensor) -> Tensor:
    r"""The soft smoothed classifier :math:`\hat F(x) = \frac{1}{m}\sum_i \mathrm{softmax}(f(x + \delta_i))`.

    One forward pass over the ``m * B`` noisy copies; differentiable in ``inputs``, ``noise``
    and the model's parameters. The model's mode is used as it is.

    Args:
        model: Base classifier ``f`` returning logits ``[N, K]``.
        inputs: Batch ``[B, *]``.
        noise: Noise ``[m * B, *]`` in noise-major order, already scaled by :math:`\sigma`.

    Returns:
        Probabilities ``[B, K]``.

    Example:
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
        >>> x = torch.rand(2, 4)
        >>> p = soft_smoothed_probs(model, x, torch.zeros(6, 4))
        >>> p.shape, bool(torch.allclose(p.sum(1), torch.ones(2)))
        (torch.Size([2, 3]), True)
    """
    num_noise = noise.shape[0] // inputs.shape[0]
    logits = model(replicate(inputs, num_noise) + noise)
    return split_copies(logits.softmax(dim=1), num_noise).mean(dim=0)


# --------------------------------------------------------------------------------------------
# Training criteria without an adversary: Gaussian augmentation, stability training, MACER and
# consistency regularization. Each function takes the noise as an argument (noise-major, already
# scaled by sigma), runs the model in its current mode and returns a NamedTuple whose first field
# is the total ``loss`` and whose other fields are the unweighted terms, named as in the
# ``term_names`` of the matching criterion in :mod:`rsmooth.losses`.
# --------------------------------------------------------------------------------------------


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


def _num_copies(inputs: Tensor, noise: Tensor) -> int:
    """Return ``m`` for noise ``[m * B, *]`` matching ``inputs`` ``[B, *]``, or raise."""
    if not isinstance(noise, Tensor):
        raise TypeError(f"noise must be a torch.Tensor, got {type(noise).__name__}")
    batch = inputs.shape[0]
    if (
        noise.dim() != inputs.dim()
        or noise.shape[1:] != inputs.shape[1:]
        or noise.shape[0] == 0
        or noise.shape[0] % batch
    ):
        raise ValueError(
            f"noise must have shape [m * {batch}, *{tuple(inputs.shape[1:])}] for inputs of shape "
            f"{tuple(inputs.shape)}, got {tuple(noise.shape)}"
        )
    return noise.shape[0] // batch


def _normal_icdf(p: Tensor) -> Tensor:
    # The standard normal quantile exactly as torch.distributions.Normal(0, 1).icdf computes it
    # (the form the MACER code uses): +-inf at p = 1 and p = 0.
    return torch.erfinv(2 * p - 1) * math.sqrt(2)


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
    num_noise = _num_copies(inputs, noise)
    logits = model(replicate(inputs, num_noise) + noise)
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
    if _num_copies(inputs, noise) != 1:
        raise ValueError(
            f"noise must have the shape of inputs {tuple(inputs.shape)}, got {tuple(noise.shape)}"
        )
    clean_logits = model(inputs)
    noisy_logits = model(inputs + noise)
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
    num_noise = _num_copies(inputs, noise)
    batch = inputs.shape[0]
    logits = split_copies(model(replicate(inputs, num_noise) + noise), num_noise)  # [m, B, K]
    if logits.shape[-1] < 2:
        raise ValueError(f"MACER needs at least 2 classes, got logits of shape {logits.shape}")

    # Classification: cross-entropy of the mean softmax, +1e-10 inside the log, sum / B.
    mean_probs = logits.softmax(dim=-1).mean(dim=0)
    target_probs = mean_probs.gather(1, targets.unsqueeze(1)).squeeze(1)
    classification = -torch.log(target_probs + 1e-10).sum() / batch

    # Robustness: hinge on the gap between the top two beta-smoothed probabilities.
    top2, top2_idx = (beta * logits).softmax(dim=-1).mean(dim=0).topk(2, dim=1)
    with torch.no_grad():
        gap = _normal_icdf(top2[:, 0]) - _normal_icdf(top2[:, 1])
        kept = (top2_idx[:, 0] == targets) & torch.isfinite(gap) & (gap.abs() <= gamma)
    p_a, p_b = top2[kept, 0], top2[kept, 1]
    gap_kept = _normal_icdf(p_a) - _normal_icdf(p_b)
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
    num_noise = _num_copies(inputs, noise)
    logits = model(replicate(inputs, num_noise) + noise)
    natural = F.cross_entropy(logits, replicate(targets, num_noise))
    log_probs = split_copies(logits.log_softmax(dim=1), num_noise)  # [m, B, K]
    mean_probs = split_copies(logits.softmax(dim=1), num_noise).mean(dim=0)  # [B, K]
    kl_target = mean_probs.detach() if detach_target else mean_probs
    kl = F.kl_div(log_probs, kl_target.expand_as(log_probs), reduction="none").sum(dim=-1)
    consistency = kl.mean()
    entropy = -(mean_probs * mean_probs.clamp(min=1e-20).log()).sum(dim=1).mean()
    loss = natural + lbd * consistency + eta * entropy
    return ConsistencyTerms(loss, natural, consistency, entropy)


# ---------------------------------------------------------------------------------------------
# Adversarial training and attacks: SmoothAdv (PGD / DDN) and SmoothMix.
# ---------------------------------------------------------------------------------------------


def _expand_rows(values: Tensor, like: Tensor) -> Tensor:
    """Reshape per-example values ``[B]`` to broadcast against ``like`` ``[B, *]``."""
    return values.reshape((-1,) + (1,) * (like.dim() - 1))


def _row_norms(values: Tensor) -> Tensor:
    """Per-example L2 norms ``[B]`` of ``values`` ``[B, *]``."""
    return values.flatten(1).norm(p=2, dim=1)


def _smoothed_nll(model: nn.Module, points: Tensor, targets: Tensor, noise: Tensor) -> Tensor:
    r"""Per-example :math:`-\log \max(\hat F(x)_y, 10^{-20})`, shape ``[B]``."""
    probs = soft_smoothed_probs(model, points, noise)
    return -probs.gather(1, targets[:, None]).squeeze(1).clamp(min=1e-20).log()


def _salman_direction(
    grad: Tensor,
    step: int,
    random_directions: Tensor | None,
    generator: torch.Generator | None,
) -> Tensor:
    """Per-example normalized ascent direction; zero-gradient rows get ``-r``, ``r ~ N(0, I)``.

    This is the official rule (the replacement is *not* normalized). ``r`` is
    ``random_directions[step]`` for those rows, or drawn from ``generator`` when none is given.
    """
    norms = _row_norms(grad)
    direction = grad / _expand_rows(norms, grad)
    zero = norms == 0
    if bool(zero.any()):
        if random_directions is not None:
            rand = random_directions[step][zero].to(grad)
        else:
            shape = (int(zero.sum()), *grad.shape[1:])
            rand = torch.randn(shape, generator=generator, device=grad.device, dtype=grad.dtype)
        direction[zero] = -rand
    return direction


def smooth_pgd_attack(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    noise: Tensor,
    epsilon: float,
    num_steps: int,
    *,
    random_directions: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""L2 PGD against the soft smoothed classifier (SmoothAdv's multi-noise attack).

    Maximizes the cross-entropy of the averaged softmax :cite:`salman2019provably`

    .. math::

        \max_{\|x' - x\|_2 \le \epsilon,\ x' \in [0, 1]^d}
        -\log \max\Big(\frac{1}{m}\sum_{i=1}^m \mathrm{softmax}(f(x' + \delta_i))_y,\ 10^{-20}\Big)

    with ``T`` steps of size :math:`2\epsilon/T` along the per-example L2-normalized gradient,
    starting from :math:`x' = x` (no random start), using the **same** noise at every step. After
    each step the perturbation is projected on the box :math:`[0, 1]` first, then on the L2 ball
    (``renorm``, which scales by :math:`\epsilon / (\|\cdot\| + 10^{-7})`).

    An example whose gradient is exactly zero moves by :math:`-2\epsilon/T \cdot r` with
    :math:`r \sim \mathcal{N}(0, I)` (not normalized), as in the official code. ``r`` is taken
    from ``random_directions`` if given, else drawn from ``generator`` (only when such a row
    occurs).

    The model is used in its current mode; gradients are taken with respect to the perturbation
    only (:func:`torch.autograd.grad`), so no ``.grad`` is written into parameters. The result
    is detached.

    Args:
        model: Base classifier ``f`` returning logits ``[N, K]``.
        inputs: Clean inputs ``[B, *]`` in ``[0, 1]``.
        targets: True labels ``[B]``.
        noise: Noise ``[m * B, *]`` (noise-major, already scaled by :math:`\sigma`).
        epsilon: L2 radius :math:`\epsilon` (in the input space).
        num_steps: Number of steps ``T``.
        random_directions: Optional ``[T, B, *]`` tensor; row ``[t, j]`` replaces a zero gradient
            of example ``j`` at step ``t``.
        generator: Generator for the random directions when ``random_directions`` is ``None``.

    Returns:
        Adversarial inputs ``[B, *]``, detached, in the box and the ball.

    Raises:
        ValueError: If ``noise`` is not shaped ``[m * B, *]``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> model = nn.Linear(4, 3)
        >>> x, y = torch.rand(2, 4, generator=g), torch.tensor([0, 1])
        >>> noise = sample_noise(x, 0.25, 3, generator=g)
        >>> x_adv = smooth_pgd_attack(model, x, y, noise, epsilon=0.5, num_steps=4)
        >>> x_adv.shape, bool(((x_adv - x).norm(dim=1) <= 0.5 + 1e-6).all())
        (torch.Size([2, 4]), True)
    """
    _num_copies(inputs, noise)
    x = inputs.detach()
    noise = noise.detach()
    step = 2.0 * epsilon / num_steps
    delta = torch.zeros_like(x)
    with torch.enable_grad():
        for t in range(num_steps):
            delta.requires_grad_(True)
            loss = _smoothed_nll(model, x + delta, targets, noise).mean()
            (grad,) = torch.autograd.grad(loss, delta)
            with torch.no_grad():
                direction = _salman_direction(grad, t, random_directions, generator)
                delta = delta.detach() + step * direction
                delta = (x + delta).clamp(0.0, 1.0) - x
                delta = delta.renorm(p=2, dim=0, maxnorm=epsilon)
    return (x + delta).detach()


def smooth_ddn_attack(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    noise: Tensor,
    epsilon: float,
    num_steps: int,
    *,
    gamma: float = 0.05,
    init_norm: float = 1.0,
    quantize: bool = True,
    random_directions: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Decoupled Direction and Norm (DDN) against the soft smoothed classifier.

    The multi-noise DDN of :cite:`salman2019provably` (adapted from :cite:`rony2019decoupling`).
    Each example keeps a target norm :math:`\rho` (start ``init_norm``, capped at
    :math:`\|\max(x, 1 - x)\|_2`). At step :math:`t = 1..T`:

    1. the prediction is the mode of the ``m`` per-copy argmaxes at :math:`x + \delta`; the
       smallest-norm misclassifying :math:`\delta` so far is kept;
    2. :math:`\delta \leftarrow \delta + \mathrm{lr}_t\, g / \|g\|_2` with :math:`g` the gradient
       of :math:`-\log \max(\hat F(x + \delta)_y, 10^{-20})` and the cosine schedule
       :math:`\mathrm{lr}_t = 0.01 + 0.99\,(1 + \cos(\pi t / T)) / 2`; zero gradients are replaced
       as in :func:`smooth_pgd_attack`;
    3. :math:`\rho \leftarrow \rho (1 \mp \gamma)` (``-`` if misclassified), capped;
       :math:`\delta` is rescaled to norm :math:`\rho`, then :math:`x + \delta` is quantized to 256
       levels (if ``quantize``) and clamped to :math:`[0, 1]`.

    The result is :math:`x + \mathrm{renorm}(\delta_{best}, \epsilon)` (quantized); if no
    misclassifying point was found, :math:`\delta_{best} = 0` and the clean ``x`` is returned.
    Unlike the official code, the output is finally clamped to :math:`[0, 1]` (a no-op for inputs
    on the 8-bit grid).

    Args:
        model: Base classifier ``f`` returning logits ``[N, K]``.
        inputs: Clean inputs ``[B, *]`` in ``[0, 1]``.
        targets: True labels ``[B]``.
        noise: Noise ``[m * B, *]`` (noise-major, already scaled by :math:`\sigma`).
        epsilon: Final L2 radius :math:`\epsilon`.
        num_steps: Number of steps ``T``.
        gamma: Norm update factor :math:`\gamma`. Default: 0.05.
        init_norm: Initial norm :math:`\rho_0`. Default: 1.0.
        quantize: Quantize to 256 levels as the official code does. Default: ``True``.
        random_directions: Optional ``[T, B, *]`` replacements for zero gradients.
        generator: Generator for the random directions when ``random_directions`` is ``None``.

    Returns:
        Adversarial inputs ``[B, *]``, detached.

    Raises:
        ValueError: If ``noise`` is not shaped ``[m * B, *]``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> model = nn.Linear(4, 3)
        >>> x, y = torch.rand(2, 4, generator=g), torch.tensor([0, 1])
        >>> noise = sample_noise(x, 0.25, 3, generator=g)
        >>> x_adv = smooth_ddn_attack(model, x, y, noise, epsilon=0.5, num_steps=4)
        >>> x_adv.shape, bool(((x_adv - x).norm(dim=1) <= 0.5 + 1e-2).all())
        (torch.Size([2, 4]), True)
    """
    num_noise = _num_copies(inputs, noise)
    x = inputs.detach()
    noise = noise.detach()
    levels = 255.0  # 256 levels
    delta = torch.zeros_like(x)
    norm = torch.full((x.shape[0],), float(init_norm), device=x.device, dtype=x.dtype)
    worst_norm = _row_norms(torch.maximum(x, 1.0 - x))
    best_l2 = worst_norm.clone()
    best_delta = torch.zeros_like(x)
    with torch.enable_grad():
        for t in range(num_steps):
            lr = 0.01 + 0.99 * (1.0 + math.cos(math.pi * (t + 1) / num_steps)) / 2.0
            l2 = _row_norms(delta)
            delta.requires_grad_(True)
            logits = model(replicate(x + delta, num_noise) + noise)
            avg = split_copies(logits.softmax(dim=1), num_noise).mean(dim=0)
            loss = F.nll_loss(avg.clamp(min=1e-20).log(), targets)
            (grad,) = torch.autograd.grad(loss, delta)
            with torch.no_grad():
                pred = split_copies(logits.argmax(dim=1), num_noise).mode(dim=0).values
                is_adv = pred != targets
                better = is_adv & (l2 < best_l2)
                best_l2 = torch.where(better, l2, best_l2)
                best_delta = torch.where(_expand_rows(better, x), delta.detach(), best_delta)
                direction = _salman_direction(grad, t, random_directions, generator)
                delta = delta.detach() + lr * direction
                norm = norm * (1.0 - (2.0 * is_adv.to(x.dtype) - 1.0) * gamma)
                norm = torch.minimum(norm, worst_norm)
                delta = delta * _expand_rows(norm / _row_norms(delta), delta)
                adv = x + delta
                if quantize:
                    adv = adv.mul(levels).round().div(levels)
                delta = adv.clamp(0.0, 1.0) - x
    best_delta = best_delta.renorm(p=2, dim=0, maxnorm=epsilon)
    if quantize:
        best_delta = best_delta.mul(levels).round().div(levels)
    return (x + best_delta).clamp(0.0, 1.0).detach()


def unrestricted_smooth_attack(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    noise: Tensor,
    step_size: float,
    num_steps: int,
    *,
    mix_step: int = 1,
    max_norm: float | None = None,
    mix_step_max_norm: float | None = None,
) -> tuple[Tensor, Tensor]:
    r"""SmoothMix's unrestricted adversary on the soft smoothed classifier.

    From :math:`\tilde x^{(0)} = x` (no random start), ``T`` normalized gradient-ascent steps on
    the cross-entropy of the averaged softmax with respect to the **true** label
    :cite:`jeong2021smoothmix`:

    .. math::

        \tilde x^{(t+1)} = \Pi_{[0,1]}\Big(\tilde x^{(t)} + \alpha\,
        \frac{\nabla_{\tilde x} L}{\|\nabla_{\tilde x} L\|_2 + 10^{-8}}\Big),\qquad
        L = -\sum_j \log \max\Big(\frac{1}{m}\sum_{i}
        \mathrm{softmax}(f(\tilde x^{(t)}_j + \delta_{i,j}))_{y_j},\ 10^{-20}\Big)

    with the **same** noises :math:`\delta_i` at every step. Only the box :math:`[0, 1]` is
    enforced unless ``max_norm`` is given (then each iterate is first projected on the L2 ball of
    that radius around ``x``).

    The "initial" point is the iterate *before* update number ``mix_step`` (the official
    snapshot rule): ``mix_step=0`` gives ``x`` exactly, ``mix_step=1`` the one-step adversary
    :math:`\tilde x^{(1)}`; if ``mix_step >= T`` it is ``x``. It is then projected on the ball of
    radius ``mix_step_max_norm`` (default :math:`\alpha \cdot s`) around ``x`` and clamped.

    The model is used in its current mode; gradients are taken with respect to the iterate only,
    so no ``.grad`` is written into parameters. Both results are detached.

    Args:
        model: Base classifier ``f`` returning logits ``[N, K]``.
        inputs: Clean inputs ``[B, *]`` in ``[0, 1]``.
        targets: True labels ``[B]``.
        noise: Noise ``[m * B, *]`` (noise-major, already scaled by :math:`\sigma`).
        step_size: Step size :math:`\alpha`.
        num_steps: Number of steps ``T``.
        mix_step: Index ``s`` of the snapshot used as the initial point. Default: 1.
        max_norm: Optional L2 radius for every iterate (``--maxnorm``). Default: ``None``.
        mix_step_max_norm: L2 cap of the snapshot (``maxnorm_s``); ``None`` means
            :math:`\alpha \cdot s`. Default: ``None``.

    Returns:
        ``(x_init, x_adv)``: the projected snapshot :math:`\tilde x^{(s)}` and
        :math:`\tilde x^{(T)}`, both ``[B, *]``.

    Raises:
        ValueError: If ``noise`` is not shaped ``[m * B, *]``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> model = nn.Linear(4, 3)
        >>> x, y = 0.25 + 0.5 * torch.rand(2, 4, generator=g), torch.tensor([0, 1])
        >>> noise = sample_noise(x, 0.25, 3, generator=g)
        >>> x1, x_adv = unrestricted_smooth_attack(model, x, y, noise, 0.1, num_steps=3)
        >>> [round(v, 4) for v in (x1 - x).norm(dim=1).tolist()]
        [0.1, 0.1]
    """
    _num_copies(inputs, noise)
    x = inputs.detach()
    noise = noise.detach()
    cap = step_size * mix_step if mix_step_max_norm is None else mix_step_max_norm
    current = x
    snapshot = x
    with torch.enable_grad():
        for t in range(num_steps):
            if t == mix_step:
                snapshot = current
            current = current.detach().requires_grad_(True)
            loss = _smoothed_nll(model, current, targets, noise).sum()
            (grad,) = torch.autograd.grad(loss, current)
            with torch.no_grad():
                step = grad / _expand_rows(_row_norms(grad) + 1e-8, grad)
                current = current.detach() + step_size * step
                if max_norm is not None:
                    current = x + (current - x).renorm(p=2, dim=0, maxnorm=max_norm)
                current = current.clamp(0.0, 1.0)
    x_init = (x + (snapshot.detach() - x).renorm(p=2, dim=0, maxnorm=cap)).clamp(0.0, 1.0)
    return x_init, current.detach()


def smoothadv_loss(model: nn.Module, adversarial: Tensor, targets: Tensor, noise: Tensor) -> Tensor:
    r"""SmoothAdv's training loss: the mean cross-entropy over the ``m`` noisy adversarial copies.

    .. math::

        \mathcal L = \frac{1}{m B}\sum_{j=1}^B\sum_{i=1}^m \mathrm{CE}(f(x'_j + \delta_{i,j}), y_j)

    (the mean of the CE, not the CE of the mean :cite:`salman2019provably`), with the same noise
    the attack used. One forward pass, in the model's current mode.

    Args:
        model: Base classifier ``f`` returning logits ``[N, K]``.
        adversarial: Adversarial points :math:`x'` ``[B, *]`` (from :func:`smooth_pgd_attack` or
            :func:`smooth_ddn_attack`).
        targets: Labels ``[B]``.
        noise: Noise ``[m * B, *]`` (noise-major, already scaled by :math:`\sigma`).

    Returns:
        A 0-d tensor.

    Raises:
        ValueError: If ``noise`` is not shaped ``[m * B, *]``.

    Example:
        >>> model = nn.Linear(4, 3)
        >>> x, y = torch.full((2, 4), 0.5), torch.tensor([0, 1])
        >>> loss = smoothadv_loss(model, x, y, torch.zeros(6, 4))
        >>> loss.shape
        torch.Size([])
    """
    num_noise = _num_copies(adversarial, noise)
    logits = model(replicate(adversarial, num_noise) + noise)
    return F.cross_entropy(logits, targets.repeat(num_noise))


def smoothmix_terms(
    model: nn.Module,
    clean: Tensor,
    adversarial: Tensor,
    targets: Tensor,
    noise: Tensor,
    mix_weights: Tensor,
    *,
    detach_target: bool = False,
) -> tuple[Tensor, Tensor]:
    r"""SmoothMix's two loss terms :math:`(\mathcal L_{nat}, \mathcal L_{mix})` for given noise.

    With :math:`x_c` the clean side (``x``, or :math:`\tilde x^{(1)}` for the one-step
    adversary), :math:`\tilde x` the adversarial point and :math:`K` classes
    :cite:`jeong2021smoothmix`:

    .. math::

        \mathcal L_{nat} &= \frac{1}{mB}\sum_{i,j} \mathrm{CE}(f(x_{c,j} + \delta_{i,j}), y_j),
        \qquad \hat F_j = \frac{1}{m}\sum_i \mathrm{softmax}(f(x_{c,j} + \delta_{i,j})), \\
        x^{mix}_j &= (1 - \lambda_j)\, x_{c,j} + \lambda_j \tilde x_j, \qquad
        y^{mix}_j = (1 - \lambda_j)\, \hat F_j + \lambda_j\, \tfrac{1}{K}\mathbf 1, \\
        \mathcal L_{mix} &= \frac{1}{mB}\sum_{i,j} \mathbb 1[\arg\max \hat F_j = y_j]\,
        \mathrm{KL}\big(y^{mix}_j \,\|\, \mathrm{softmax}(f(x^{mix}_j + \delta_{i,j}))\big).

    Two **separate** forward passes (clean, then mix) over the same noise, in the model's
    current mode. :math:`\hat F` is **not detached** (the official behaviour): the KL's gradient
    flows into the clean branch through the target. The mean divides by :math:`mB`, masked rows
    included; :math:`0 \log 0 = 0`.

    Args:
        model: Base classifier ``f`` returning logits ``[N, K]``.
        clean: Clean side :math:`x_c` ``[B, *]``.
        adversarial: Adversarial endpoint :math:`\tilde x` ``[B, *]``.
        targets: Labels ``[B]``.
        noise: Noise ``[m * B, *]`` (noise-major, already scaled by :math:`\sigma`).
        mix_weights: Per-example :math:`\lambda` ``[B]`` (official: :math:`U[0, 1/2)`).
        detach_target: Stop the gradient through :math:`\hat F` (not the official behaviour).
            Default: ``False``.

    Returns:
        ``(natural, mix)``, two 0-d tensors; the SmoothMix loss is
        :math:`\mathcal L_{nat} + \eta\,\mathcal L_{mix}`.

    Raises:
        ValueError: If ``noise`` is not shaped ``[m * B, *]``.

    Example:
        >>> model = nn.Linear(4, 3)
        >>> x, y = torch.full((2, 4), 0.5), torch.tensor([0, 1])
        >>> lam = torch.full((2,), 0.25)
        >>> natural, mix = smoothmix_terms(model, x, x, y, torch.zeros(6, 4), lam)
        >>> natural.shape, bool(mix >= 0)
        (torch.Size([]), True)
    """
    num_noise = _num_copies(clean, noise)
    clean_logits = model(replicate(clean, num_noise) + noise)
    natural = F.cross_entropy(clean_logits, targets.repeat(num_noise))
    smoothed = split_copies(clean_logits.softmax(dim=1), num_noise).mean(dim=0)
    if detach_target:
        smoothed = smoothed.detach()
    with torch.no_grad():
        correct = (smoothed.argmax(dim=1) == targets).to(smoothed.dtype)
    lam = mix_weights.to(clean.dtype)
    mixed = (1.0 - _expand_rows(lam, clean)) * clean + _expand_rows(lam, clean) * adversarial
    num_classes = smoothed.shape[1]
    mix_target = (1.0 - lam[:, None]) * smoothed + lam[:, None] / num_classes
    log_q = model(replicate(mixed, num_noise) + noise).log_softmax(dim=1)
    kl = F.kl_div(log_q, replicate(mix_target, num_noise), reduction="none").sum(dim=1)
    mix = (replicate(correct, num_noise) * kl).mean()
    return natural, mix


# The criteria that attack the noise (CAT-RS, Sun et al.) live in their own module, which builds on
# the helpers above; they are imported last so that ``rsmooth.functional`` stays the public path.
from rsmooth._functional_noise import (  # noqa: E402
    AdaptiveNoiseAttackResult,
    CATRSTerms,
    adaptive_noise_attack,
    catrs_loss,
    catrs_noise_attack,
)
