r"""Pure forms of the criteria that attack the **noise**: CAT-RS and Sun et al. (2025).

Both methods keep the input fixed and move the Gaussian noise vectors instead: CAT-RS inside an
L2 ball around each original noise vector (then re-standardised), Sun et al. on the sphere of each
noise vector's own norm. As everywhere in :mod:`rsmooth.functional`, the noise (and every other
random draw) is an argument, so the results can be checked exactly; rows are noise-major (row
``i * B + j`` is copy ``i`` of input ``j``). The public names are re-exported by
:mod:`rsmooth.functional`, which is the import path to use.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rsmooth._model_state import preserve_model_state
from rsmooth._prior import Confidence, check_confidence
from rsmooth._validation import check_int, check_nonnegative, check_positive
from rsmooth.functional._core import expand_rows, num_copies, replicate, row_norms, split_copies

__all__ = [
    "AdaptiveNoiseAttackResult",
    "CATRSTerms",
    "adaptive_noise_attack",
    "catrs_loss",
    "catrs_noise_attack",
]


class CATRSTerms(NamedTuple):
    """Result of :func:`catrs_loss`; ``loss = low + lbd * high``."""

    #: Total loss (0-d).
    loss: Tensor
    #: Mean over the batch of :math:`L^{low}_j` (0-d).
    low: Tensor
    #: Mean over the batch of :math:`\mathbb 1[K_j = m]\, L^{high}_j` (0-d), before the weight.
    high: Tensor
    #: Fraction of the batch with :math:`K_j = m`, i.e. that gets the high part (0-d).
    accept_rate: Tensor
    #: Mean of :math:`K_j` over the batch (0-d).
    mean_k: Tensor
    #: The draws :math:`K_j` (``int64`` ``[B]``).
    k: Tensor


class AdaptiveNoiseAttackResult(NamedTuple):
    """Result of :func:`adaptive_noise_attack`."""

    #: Adversarial noise ``[m * B, *]`` (noise-major, detached), each row of its input norm.
    noise: Tensor
    #: Per row (``int64`` ``[m * B]``): the iterate ``t`` at which the row was first
    #: misclassified and kept (0 = the unperturbed noise), or -1 if it never was.
    stop_step: Tensor


def _check_prior(prior: Tensor, batch: int) -> Tensor:
    if not isinstance(prior, Tensor):
        raise TypeError(f"prior must be a torch.Tensor, got {type(prior).__name__}")
    if prior.dim() != 2 or prior.shape[0] != batch:
        raise ValueError(f"prior must have shape [{batch}, K], got {tuple(prior.shape)}")
    return prior


def _row_mean_rms(values: Tensor) -> tuple[Tensor, Tensor]:
    flat = values.flatten(1)
    return flat.mean(dim=1), flat.pow(2).mean(dim=1).sqrt()


def catrs_noise_attack(
    model: nn.Module,
    inputs: Tensor,
    prior: Tensor,
    noise: Tensor,
    epsilon: float,
    num_steps: int,
) -> Tensor:
    r"""CAT-RS's adversary on the noise :cite:`jeong2023catrs`, as the official code computes it.

    Starting from the given noise :math:`n^0` (no random start), ``T`` steps of normalised
    gradient ascent of the KL divergence from the fixed prior :math:`\pi_j` to the model's
    prediction at :math:`x_j + n_{ij}`, with step :math:`2\epsilon/T`:

    .. math::

        J(n) &= \sum_j \frac1m \sum_i \mathrm{KL}\big(\pi_j \,\big\|\,
                \mathrm{softmax} f(x_j + n_{ij})\big), \qquad
        n \leftarrow n + \frac{2\epsilon}{T}\, \frac{\nabla_{n_{ij}} J}
                {\|\nabla_{n_{ij}} J\|_2 + 10^{-8}}, \\
        n &\leftarrow n^0 + \mathrm{renorm}_\epsilon(n - n^0), \qquad
        n \leftarrow \mu(n^0) + \big(n - \mu(n)\big)\,\frac{\rho(n^0)}{\rho(n)},

    per row, where :math:`\mu` is the row mean, :math:`\rho` the row RMS
    (:math:`\sqrt{\mathrm{mean}(n^2)}`) and :math:`\mathrm{renorm}_\epsilon` scales a row by
    :math:`\epsilon / (\|\cdot\|_2 + 10^{-7})` when its norm exceeds :math:`\epsilon`
    (``torch.renorm``). The ball is centred on each original noise row; the final
    re-standardisation keeps every row's mean exactly and can move the row back outside the ball.
    Nothing is clamped to :math:`[0, 1]`.

    The model is used in its current mode (the criterion runs it in ``eval()`` with frozen
    parameters); gradients are taken with respect to the noise only.

    Args:
        model: Base classifier ``f`` returning logits ``[N, K]``.
        inputs: Clean inputs ``[B, *]``.
        prior: Per-example target distributions :math:`\pi` ``[B, K]``.
        noise: Starting noise ``[m * B, *]`` (noise-major, already scaled by :math:`\sigma`).
        epsilon: Radius :math:`\epsilon > 0` of the ball around each noise row, in input units
            (the official ``--epsilon 256`` is 1.0).
        num_steps: Number of steps :math:`T \ge 0` (0 returns the noise unchanged).

    Returns:
        Adversarial noise ``[m * B, *]``, detached.

    Raises:
        ValueError: ``noise`` or ``prior`` has the wrong shape, or a hyperparameter is out of
            range.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> model = nn.Linear(4, 3)
        >>> x, prior = torch.rand(2, 4, generator=g), torch.tensor([[1.0, 0, 0], [0, 0.5, 0.5]])
        >>> noise = 0.5 * torch.randn(6, 4, generator=g)
        >>> adv = catrs_noise_attack(model, x, prior, noise, epsilon=0.5, num_steps=2)
        >>> adv.shape, bool(torch.allclose(adv.mean(1), noise.mean(1)))
        (torch.Size([6, 4]), True)
    """
    epsilon = check_positive("epsilon", epsilon)
    num_steps = check_int("num_steps", num_steps, min=0)
    num_noise = num_copies(inputs, noise)
    prior = _check_prior(prior, inputs.shape[0])
    points = replicate(inputs.detach(), num_noise)
    target = replicate(prior.detach().to(noise.dtype), num_noise)
    start = noise.detach()
    mean0, rms0 = _row_mean_rms(start)
    current = start
    if num_steps == 0:
        return start
    step = 2.0 * epsilon / num_steps
    with torch.enable_grad():
        for _ in range(num_steps):
            current = current.detach().requires_grad_(True)
            log_q = model(points + current).log_softmax(dim=1)
            objective = F.kl_div(log_q, target, reduction="sum") / num_noise
            (grad,) = torch.autograd.grad(objective, current)
            with torch.no_grad():
                grad = grad / expand_rows(row_norms(grad) + 1e-8, grad)
                current = current.detach() + step * grad
                current = start + (current - start).renorm(p=2, dim=0, maxnorm=epsilon)
                mean, rms = _row_mean_rms(current)
                current = expand_rows(mean0, current) + (
                    current - expand_rows(mean, current)
                ) * expand_rows(rms0 / rms, current)
    return current.detach()


def catrs_loss(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    prior: Tensor,
    noise: Tensor,
    uniforms: Tensor,
    epsilon: float,
    num_steps: int,
    lbd: float,
    *,
    confidence: Confidence = "model",
) -> CATRSTerms:
    r"""CAT-RS :cite:`jeong2023catrs` on given noise and given Binomial draws.

    With ``m`` noise rows per input, :math:`Z_{ij} = f(x_j + \delta_{ij})` (forward A, the
    model's current mode) and :math:`\ell_{ij} = \mathrm{CE}(Z_{ij}, y_j)` sorted ascending
    over :math:`i` into :math:`\ell_{j(1)} \le \dots \le \ell_{j(m)}`:

    .. math::

        w_j &= \tfrac1m \textstyle\sum_i \mathbb 1[\arg\max Z_{ij} = y_j]
            \quad(\text{or } \pi_j[y_j] \text{ with } \texttt{confidence="prior"}), \qquad
        K_j = \max\big(1, \textstyle\sum_i \mathbb 1[u_{ji} < w_j]\big), \\
        L^{low}_j &= \frac1m \sum_{k=1}^{K_j} \ell_{j(k)}, \qquad
        L^{high}_j = \max_i \mathrm{KL}\big(\pi_j \,\big\|\,
            \mathrm{softmax} f(x_j + \delta^*_{ij})\big), \\
        L &= \frac1B \sum_j \Big[ L^{low}_j + \lambda\, \mathbb 1[K_j = m]\, L^{high}_j \Big],

    where :math:`\delta^* =` :func:`catrs_noise_attack` ``(model, inputs, prior, noise,
    epsilon, num_steps)`` runs **between** the two forwards, in ``eval()`` with frozen
    parameters (the model's state is restored), and forward B (:math:`L^{high}`) runs in the
    model's current mode again: the order of the official code, which matters for BatchNorm.
    Given uniforms :math:`u_{ji} \in [0, 1)`, :math:`\sum_i \mathbb 1[u_{ji} < w_j]` is a
    :math:`\mathrm{Binomial}(m, w_j)` draw. :math:`L^{low}` divides by ``m``, not by
    :math:`K_j`; :math:`w` comes from hard votes and carries no gradient; :math:`\pi` and
    :math:`\delta^*` are constants; :math:`0 \log 0 = 0`.

    Args:
        model: Base classifier ``f`` returning logits ``[N, K]``.
        inputs: Clean inputs ``[B, *]``.
        targets: Class indices ``[B]``.
        prior: Per-example prior :math:`\pi` ``[B, K]`` (rows of
            :func:`rsmooth.training.prediction_table`).
        noise: Noise ``[m * B, *]`` (noise-major, already scaled by :math:`\sigma`), used by
            forward A and as the attack's start.
        uniforms: ``[B, m]`` uniforms in :math:`[0, 1)` that give the Binomial draws.
        epsilon: Attack radius :math:`\epsilon > 0`.
        num_steps: Attack steps :math:`T \ge 0`.
        lbd: Weight :math:`\lambda \ge 0` of :math:`L^{high}`.
        confidence: ``"model"`` (:math:`w_j` = vote fraction of forward A, the default) or
            ``"prior"`` (:math:`w_j = \pi_j[y_j]`, the official ImageNet setting).

    Returns:
        :class:`CATRSTerms` ``(loss, low, high, accept_rate, mean_k, k)``.

    Raises:
        ValueError: A shape does not match, the prior's number of classes differs from the
            model's, or a hyperparameter is out of range.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> model = nn.Linear(4, 3)
        >>> x, y = torch.rand(2, 4, generator=g), torch.tensor([0, 2])
        >>> prior = torch.tensor([[0.8, 0.1, 0.1], [0.0, 0.0, 1.0]])
        >>> noise, u = 0.25 * torch.randn(8, 4, generator=g), torch.rand(2, 4, generator=g)
        >>> terms = catrs_loss(model, x, y, prior, noise, u, 1.0, 2, 1.0)
        >>> terms.loss.shape, terms.k.shape
        (torch.Size([]), torch.Size([2]))
    """
    lbd = check_nonnegative("lbd", lbd)
    confidence = check_confidence(confidence)
    num_noise = num_copies(inputs, noise)
    batch = inputs.shape[0]
    prior = _check_prior(prior, batch)
    if not isinstance(uniforms, Tensor):
        raise TypeError(f"uniforms must be a torch.Tensor, got {type(uniforms).__name__}")
    if tuple(uniforms.shape) != (batch, num_noise):
        raise ValueError(
            f"uniforms must have shape ({batch}, {num_noise}), got {tuple(uniforms.shape)}"
        )
    repeated_targets = replicate(targets, num_noise)

    logits = model(replicate(inputs, num_noise) + noise)  # forward A
    if logits.dim() != 2 or logits.shape[1] != prior.shape[1]:
        raise ValueError(
            f"prior must have one column per class: the model returned logits of shape "
            f"{tuple(logits.shape)}, the prior has shape {tuple(prior.shape)}"
        )
    prior = prior.detach().to(logits.dtype)
    with torch.no_grad():
        if confidence == "model":
            hits = split_copies(logits.argmax(dim=1) == repeated_targets, num_noise)
            weight = hits.to(logits.dtype).mean(dim=0)
        else:
            weight = prior.gather(1, targets[:, None]).squeeze(1)
        k = (uniforms.to(weight.dtype) < weight[:, None]).sum(dim=1).clamp(min=1)

    with preserve_model_state(model, train=False, requires_grad=False):
        adversarial = catrs_noise_attack(model, inputs, prior, noise, epsilon, num_steps)
    log_q = model(replicate(inputs, num_noise) + adversarial).log_softmax(dim=1)  # forward B

    ce = F.cross_entropy(logits, repeated_targets, reduction="none")
    ce_sorted = split_copies(ce, num_noise).t().sort(dim=1).values  # [B, m], ascending
    keep = torch.arange(num_noise, device=k.device)[None, :] < k[:, None]
    low = (ce_sorted * keep.to(ce_sorted.dtype)).mean(dim=1)
    kl = F.kl_div(log_q, replicate(prior, num_noise), reduction="none").sum(dim=1)
    high = split_copies(kl, num_noise).max(dim=0).values
    full = (k == num_noise).to(high.dtype)
    low_mean, high_mean = low.mean(), (full * high).mean()
    return CATRSTerms(
        low_mean + lbd * high_mean,
        low_mean,
        high_mean,
        full.mean(),
        k.to(high.dtype).mean(),
        k,
    )


def adaptive_noise_attack(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    noise: Tensor,
    epsilon: float,
    num_steps: int,
) -> AdaptiveNoiseAttackResult:
    r"""Sun et al.'s adaptive attack on the noise (ADAPTIVEADV) :cite:`sun2025acr`.

    Each noise row :math:`\delta_{ij}` is rotated on the sphere of its own norm towards
    misclassification of :math:`x_j`, and the **first misclassified iterate** is kept. For
    :math:`t = 0, \dots, T-1`:

    1. if :math:`\arg\max f(x_j + n_{ij}) \ne y_j` for a row not yet stopped, keep
       :math:`n_{ij}` for that row (at :math:`t = 0` that is the unperturbed noise);
    2. :math:`n \leftarrow n + \epsilon\, g / (\|g\|_2 + 10^{-8})` per row, with :math:`g` the
       gradient of :math:`\frac1m \sum_{ij} \mathrm{CE}(f(x_j + n_{ij}), y_j)` (per-copy CE
       with respect to the **true** label);
    3. :math:`n \leftarrow \|\delta_{ij}\|_2\, n / (\|n\|_2 + 10^{-8})` per row.

    Rows never misclassified return the :math:`T`-th iterate, which is not checked again. There
    is no ball and no box: only the direction changes, and :math:`\epsilon` is the raw L2 length
    of a step (not divided by 256). With :math:`T = 0` the noise is returned unchanged. The model
    is used in its current mode (the criterion runs it in ``eval()`` with frozen parameters).

    Args:
        model: Base classifier ``f`` returning logits ``[N, K]``.
        inputs: Clean inputs ``[B, *]``.
        targets: True labels ``[B]``.
        noise: Noise ``[m * B, *]`` (noise-major, already scaled by :math:`\sigma`).
        epsilon: Step length :math:`\epsilon > 0`.
        num_steps: Number of steps :math:`T \ge 0`.

    Returns:
        :class:`AdaptiveNoiseAttackResult` ``(noise, stop_step)``, detached.

    Raises:
        ValueError: ``noise`` has the wrong shape, or a hyperparameter is out of range.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> model = nn.Linear(4, 3)
        >>> x, y = torch.rand(2, 4, generator=g), torch.tensor([0, 2])
        >>> noise = 0.5 * torch.randn(6, 4, generator=g)
        >>> result = adaptive_noise_attack(model, x, y, noise, epsilon=0.25, num_steps=3)
        >>> bool(torch.allclose(result.noise.norm(dim=1), noise.norm(dim=1)))
        True
    """
    epsilon = check_positive("epsilon", epsilon)
    num_steps = check_int("num_steps", num_steps, min=0)
    num_noise = num_copies(inputs, noise)
    points = replicate(inputs.detach(), num_noise)
    labels = replicate(targets, num_noise)
    start = noise.detach()
    radius = expand_rows(row_norms(start), start)
    current = start
    best = torch.zeros_like(start)
    stop_step = torch.full((start.shape[0],), -1, dtype=torch.long, device=start.device)
    with torch.enable_grad():
        for t in range(num_steps):
            current = current.detach().requires_grad_(True)
            logits = model(points + current)
            with torch.no_grad():
                newly = (logits.argmax(dim=1) != labels) & (stop_step < 0)
                best = torch.where(expand_rows(newly, best), current.detach(), best)
                stop_step = torch.where(newly, torch.full_like(stop_step, t), stop_step)
            objective = F.cross_entropy(logits, labels, reduction="sum") / num_noise
            (grad,) = torch.autograd.grad(objective, current)
            with torch.no_grad():
                grad = grad / expand_rows(row_norms(grad) + 1e-8, grad)
                current = current.detach() + epsilon * grad
                current = current / expand_rows(row_norms(current) + 1e-8, current) * radius
    never = expand_rows(stop_step < 0, best)
    return AdaptiveNoiseAttackResult(torch.where(never, current.detach(), best), stop_step)
