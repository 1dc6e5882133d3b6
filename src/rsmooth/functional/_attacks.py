r"""Adversarial training and attacks on the smoothed classifier: SmoothAdv (PGD, DDN) and SmoothMix."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rsmooth.functional._core import (
    expand_rows,
    logits_of,
    num_copies,
    replicate,
    row_norms,
    soft_smoothed_probs,
    split_copies,
)

__all__ = [
    "smooth_ddn_attack",
    "smooth_pgd_attack",
    "smoothadv_loss",
    "smoothmix_terms",
    "unrestricted_smooth_attack",
]


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
    norms = row_norms(grad)
    direction = grad / expand_rows(norms, grad)
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
        >>> from rsmooth.functional import sample_noise
        >>> noise = sample_noise(x, 0.25, 3, generator=g)
        >>> x_adv = smooth_pgd_attack(model, x, y, noise, epsilon=0.5, num_steps=4)
        >>> x_adv.shape, bool(((x_adv - x).norm(dim=1) <= 0.5 + 1e-6).all())
        (torch.Size([2, 4]), True)
    """
    num_copies(inputs, noise)
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

    **Every returned point lies in the ball and in the box.** The official code rounds the
    renormed :math:`\delta` to the nearest of 256 levels, which can push it out of the ball (by up
    to :math:`\sqrt d / 510`). Here a row whose rounded :math:`\delta` leaves the ball is
    quantized towards zero instead (each coordinate's magnitude can only shrink, so its norm stays
    at most :math:`\epsilon` and it stays on the grid); rows that the official rounding keeps in
    the ball are unchanged. The output is finally clamped to :math:`[0, 1]`, which moves no
    coordinate away from ``x`` (a no-op for inputs on the 8-bit grid).

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
        Adversarial inputs ``[B, *]``, detached, in the box and the ball.

    Raises:
        ValueError: If ``noise`` is not shaped ``[m * B, *]``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> model = nn.Linear(4, 3)
        >>> x, y = torch.rand(2, 4, generator=g), torch.tensor([0, 1])
        >>> from rsmooth.functional import sample_noise
        >>> noise = sample_noise(x, 0.25, 3, generator=g)
        >>> x_adv = smooth_ddn_attack(model, x, y, noise, epsilon=0.5, num_steps=4)
        >>> x_adv.shape, bool(((x_adv - x).norm(dim=1) <= 0.5 + 1e-6).all())
        (torch.Size([2, 4]), True)
    """
    num_noise = num_copies(inputs, noise)
    x = inputs.detach()
    noise = noise.detach()
    levels = 255.0  # 256 levels
    delta = torch.zeros_like(x)
    norm = torch.full((x.shape[0],), float(init_norm), device=x.device, dtype=x.dtype)
    worst_norm = row_norms(torch.maximum(x, 1.0 - x))
    best_l2 = worst_norm.clone()
    best_delta = torch.zeros_like(x)
    with torch.enable_grad():
        for t in range(num_steps):
            lr = 0.01 + 0.99 * (1.0 + math.cos(math.pi * (t + 1) / num_steps)) / 2.0
            l2 = row_norms(delta)
            delta.requires_grad_(True)
            logits = logits_of(model, replicate(x + delta, num_noise) + noise)
            avg = split_copies(logits.softmax(dim=1), num_noise).mean(dim=0)
            loss = F.nll_loss(avg.clamp(min=1e-20).log(), targets)
            (grad,) = torch.autograd.grad(loss, delta)
            with torch.no_grad():
                pred = split_copies(logits.argmax(dim=1), num_noise).mode(dim=0).values
                is_adv = pred != targets
                better = is_adv & (l2 < best_l2)
                best_l2 = torch.where(better, l2, best_l2)
                best_delta = torch.where(expand_rows(better, x), delta.detach(), best_delta)
                direction = _salman_direction(grad, t, random_directions, generator)
                delta = delta.detach() + lr * direction
                norm = norm * (1.0 - (2.0 * is_adv.to(x.dtype) - 1.0) * gamma)
                norm = torch.minimum(norm, worst_norm)
                delta = delta * expand_rows(norm / row_norms(delta), delta)
                adv = x + delta
                if quantize:
                    adv = adv.mul(levels).round().div(levels)
                delta = adv.clamp(0.0, 1.0) - x
    best_delta = best_delta.renorm(p=2, dim=0, maxnorm=epsilon)
    if quantize:
        # official: round to the nearest level, which can leave the ball; such rows are quantized
        # towards zero instead (|delta_i| only shrinks: in the ball, and between x and x + delta)
        rounded = best_delta.mul(levels).round().div(levels)
        outside = row_norms(rounded) > epsilon
        if bool(outside.any()):
            towards_zero = best_delta.mul(levels).trunc().div(levels)
            rounded = torch.where(expand_rows(outside, x), towards_zero, rounded)
        best_delta = rounded
    # clamping moves a coordinate towards x (which is in the box): the norm cannot grow
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
        >>> from rsmooth.functional import sample_noise
        >>> noise = sample_noise(x, 0.25, 3, generator=g)
        >>> x1, x_adv = unrestricted_smooth_attack(model, x, y, noise, 0.1, num_steps=3)
        >>> [round(v, 4) for v in (x1 - x).norm(dim=1).tolist()]
        [0.1, 0.1]
    """
    num_copies(inputs, noise)
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
                step = grad / expand_rows(row_norms(grad) + 1e-8, grad)
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
    num_noise = num_copies(adversarial, noise)
    logits = logits_of(model, replicate(adversarial, num_noise) + noise)
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
    num_noise = num_copies(clean, noise)
    clean_logits = logits_of(model, replicate(clean, num_noise) + noise)
    natural = F.cross_entropy(clean_logits, targets.repeat(num_noise))
    smoothed = split_copies(clean_logits.softmax(dim=1), num_noise).mean(dim=0)
    if detach_target:
        smoothed = smoothed.detach()
    with torch.no_grad():
        correct = (smoothed.argmax(dim=1) == targets).to(smoothed.dtype)
    lam = mix_weights.to(clean.dtype)
    mixed = (1.0 - expand_rows(lam, clean)) * clean + expand_rows(lam, clean) * adversarial
    num_classes = smoothed.shape[1]
    mix_target = (1.0 - lam[:, None]) * smoothed + lam[:, None] / num_classes
    log_q = logits_of(model, replicate(mixed, num_noise) + noise).log_softmax(dim=1)
    kl = F.kl_div(log_q, replicate(mix_target, num_noise), reduction="none").sum(dim=1)
    mix = (replicate(correct, num_noise) * kl).mean()
    return natural, mix


# The criteria that attack the noise (CAT-RS, Sun et al.) live in their own module, which builds on
# the helpers above; they are imported last so that ``rsmooth.functional`` stays the public path.
