r"""Attacks on smoothed classifiers: ``x_adv = attack(model, inputs, targets)``.

The three attacks on the input (:class:`UnrestrictedSmoothAttack`, :class:`SmoothPGDAttack`,
:class:`SmoothDDNAttack`) work on the *soft* smoothed classifier
:math:`\hat F(x) = \frac{1}{m}\sum_i \mathrm{softmax}(f(x + \delta_i))`, draw their ``m`` noise
samples once per call (from the attack's ``generator``) and reuse them at every step; the two
attacks on the noise (:class:`CATRSNoiseAttack`, :class:`AdaptiveNoiseAttack`) leave the input
as it is and return adversarial noise ``[m * B, *]``. All of them run
the model in ``eval()`` mode with its parameters frozen, restore every submodule's mode and every
``requires_grad`` flag afterwards (also when they raise), and leave no ``.grad`` on parameters.
Inputs must lie in :math:`[0, 1]` (pixel space); they are rejected, never clamped.

Every constructor argument is an attribute of the same name, checked again whenever it is assigned
(``attack.step_size = -1`` raises the constructor's ``ValueError`` and keeps the old value); a
misspelt one (``attack.num_step = 3``) raises ``AttributeError`` naming the nearest attribute
instead of being silently ignored. Each call checks the labels against the model's logits
(``[0, K)``) before the attack uses them, refuses a :class:`~rsmooth.SmoothedClassifier` as the
model (pass ``smoothed.model`` and ``sigma=smoothed.sigma``), and adds the hint to add the batch
dimension (``inputs.unsqueeze(0)``) when the model fails on a 3-D batch.

The pure versions with the noise passed in are in :mod:`rsmooth.functional`
(:func:`~rsmooth.functional.smooth_pgd_attack`, :func:`~rsmooth.functional.smooth_ddn_attack`,
:func:`~rsmooth.functional.unrestricted_smooth_attack`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor, nn

from rsmooth._call_checks import (
    OutputCheck,
    check_call_targets,
    checking_outputs,
    reraise_with_hint,
)
from rsmooth._model_state import preserve_model_state
from rsmooth._prior import check_prior_rows
from rsmooth._settings import Sealed, Setting
from rsmooth._validation import (
    check_base_model,
    check_bool,
    check_epsilon_in_box,
    check_generator,
    check_generator_arg,
    check_inputs,
    check_int,
    check_nonnegative,
    check_positive,
    optional,
)
from rsmooth.functional import (
    adaptive_noise_attack,
    catrs_noise_attack,
    sample_noise,
    smooth_ddn_attack,
    smooth_pgd_attack,
    unrestricted_smooth_attack,
)

__all__ = [
    "AdaptiveNoiseAttack",
    "CATRSNoiseAttack",
    "SmoothDDNAttack",
    "SmoothPGDAttack",
    "UnrestrictedSmoothAttack",
]


T = TypeVar("T")


def _check_gamma(name: str, value: Any) -> float:
    gamma = check_nonnegative(name, value)
    if gamma >= 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {gamma}")
    return gamma


class _SmoothAttack(Sealed, nn.Module):
    """Shared plumbing: settings, validation, noise, model-state guard, ``extra_repr``."""

    _repr_fields: ClassVar[tuple[str, ...]] = ()

    sigma = Setting(check_positive)
    num_noise = Setting(check_int)
    generator = Setting(check_generator_arg)

    def __init__(self, sigma: float, num_noise: int, *, generator: torch.Generator | None) -> None:
        super().__init__()
        self.sigma = sigma
        self.num_noise = num_noise
        self.generator = generator

    def extra_repr(self) -> str:
        return ", ".join(f"{name}={getattr(self, name)!r}" for name in self._repr_fields)

    def _prepare(
        self, model: nn.Module, inputs: Tensor, targets: Tensor
    ) -> tuple[Tensor, Tensor, int]:
        """Validate a call; return the noise ``[m * B, *]``, the labels (``int64``), the top label."""
        check_base_model(model)
        check_inputs("inputs", inputs, unit_box=True)
        targets, max_label = check_call_targets(targets, inputs)
        self._check_call(inputs)
        return self._draw_noise(inputs), targets, max_label

    def _check_call(self, inputs: Tensor) -> None:
        """Checks of the hyperparameters against the call's inputs (e.g. epsilon's size)."""

    def _run(
        self,
        model: nn.Module,
        inputs: Tensor,
        attack: Callable[[], T],
        *,
        max_label: int | None = None,
        num_classes: tuple[str, int] | None = None,
    ) -> T:
        """Run ``attack()`` in eval mode with frozen parameters, checking the model's output."""
        check = OutputCheck(max_label, num_classes=num_classes)
        with (
            checking_outputs(model, check),
            preserve_model_state(model, train=False, requires_grad=False),
        ):
            try:
                return attack()
            except Exception as error:
                reraise_with_hint(error, inputs)
                raise

    def _draw_noise(self, inputs: Tensor) -> Tensor:
        """Check the generator's device; return the noise ``[m * B, *]`` for ``inputs``."""
        check_generator(self.generator, inputs.device)
        return sample_noise(inputs.detach(), self.sigma, self.num_noise, generator=self.generator)

    def __getstate__(self) -> dict[str, Any]:  # generators do not pickle
        state = self.__dict__.copy()
        state["generator"] = None
        return state


class UnrestrictedSmoothAttack(_SmoothAttack):
    r"""SmoothMix's unrestricted adversary :cite:`jeong2021smoothmix`.

    From :math:`\tilde x^{(0)} = x`, ``T`` steps of normalized gradient ascent on the
    cross-entropy of the soft smoothed classifier with respect to the true label, with the same
    ``m`` noise samples at every step and only the box :math:`[0, 1]` as constraint (unless
    ``max_norm`` is set):

    .. math::

        \tilde x^{(t+1)} = \Pi_{[0,1]}\Big(\tilde x^{(t)} + \alpha\,
        \frac{\nabla L(\tilde x^{(t)})}{\|\nabla L(\tilde x^{(t)})\|_2 + 10^{-8}}\Big),\quad
        L(x') = -\log \max\Big(\frac{1}{m}\sum_{i=1}^m
        \mathrm{softmax}(f(x' + \delta_i))_y,\ 10^{-20}\Big).

    :meth:`forward` returns :math:`\tilde x^{(T)}`. The one-step adversary
    :math:`\tilde x^{(1)}` of the same trajectory is stored in :attr:`last_one_step` (detached;
    cleared at the start of every call). Following the official snapshot rule it is the iterate
    before update number 1, so with ``num_steps=1`` it equals ``x``; it is projected on the L2
    ball of radius ``one_step_max_norm`` (default :math:`\alpha`, a no-op) around ``x``.

    Cost: ``T`` forward and backward passes over ``m * B`` samples.

    Args:
        sigma: Noise level :math:`\sigma`.
        step_size: Step size :math:`\alpha` (official configs: 1.0 on MNIST, about
            :math:`2\sigma` on CIFAR-10).
        num_steps: Number of steps ``T`` (official: 2 to 8).
        num_noise: Noise samples ``m`` (official: 4 on MNIST, 2 on CIFAR-10).
        max_norm: Optional L2 radius around ``x`` for every iterate (the ``--maxnorm``
            ablation). Default: ``None`` (unrestricted).
        one_step_max_norm: L2 cap of :attr:`last_one_step` (``maxnorm_s``); ``None`` means
            ``step_size``. Default: ``None``.
        generator: Optional ``torch.Generator`` (on the inputs' device) for the noise.

    Shape:
        - inputs: :math:`(B, *)`, values in :math:`[0, 1]`.
        - targets: :math:`(B)`.
        - output: :math:`(B, *)`, values in :math:`[0, 1]`.

    Raises:
        TypeError: For arguments of the wrong type.
        ValueError: For non-positive ``sigma``/``step_size``/``max_norm``, counts below 1, inputs
            outside :math:`[0, 1]`, or mismatched targets.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
        >>> x, y = 0.25 + 0.5 * torch.rand(2, 1, 4, 4, generator=g), torch.tensor([0, 2])
        >>> attack = UnrestrictedSmoothAttack(0.25, 0.5, 4, 2, generator=g)
        >>> attack
        UnrestrictedSmoothAttack(sigma=0.25, step_size=0.5, num_steps=4, num_noise=2, max_norm=None)
        >>> x_adv = attack(model, x, y)
        >>> step = (attack.last_one_step - x).flatten(1).norm(dim=1)
        >>> x_adv.shape, [round(v, 3) for v in step.tolist()]
        (torch.Size([2, 1, 4, 4]), [0.5, 0.5])
    """

    _repr_fields = ("sigma", "step_size", "num_steps", "num_noise", "max_norm")

    step_size = Setting(check_positive)
    num_steps = Setting(check_int)
    max_norm = Setting(optional(check_positive))
    one_step_max_norm = Setting(optional(check_nonnegative))

    def __init__(
        self,
        sigma: float,
        step_size: float,
        num_steps: int,
        num_noise: int,
        *,
        max_norm: float | None = None,
        one_step_max_norm: float | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(sigma, num_noise, generator=generator)
        self.step_size = step_size
        self.num_steps = num_steps
        self.max_norm = max_norm
        self.one_step_max_norm = one_step_max_norm
        #: The one-step adversary :math:`\tilde x^{(1)}` of the last call (``None`` before).
        self.last_one_step: Tensor | None = None

    def forward(self, model: nn.Module, inputs: Tensor, targets: Tensor) -> Tensor:
        r"""Attack ``model`` at ``inputs``; also sets :attr:`last_one_step`.

        Args:
            model: Base classifier returning logits ``[N, K]``.
            inputs: Clean inputs ``[B, *]`` in ``[0, 1]``.
            targets: True labels ``[B]``.

        Returns:
            :math:`\tilde x^{(T)}`, ``[B, *]``, detached.
        """
        self.last_one_step = None
        noise, targets, max_label = self._prepare(model, inputs, targets)
        one_step, x_adv = self._run(
            model,
            inputs,
            functools.partial(
                unrestricted_smooth_attack,
                model,
                inputs,
                targets,
                noise,
                self.step_size,
                self.num_steps,
                mix_step=1,
                max_norm=self.max_norm,
                mix_step_max_norm=self.one_step_max_norm,
            ),
            max_label=max_label,
        )
        self.last_one_step = one_step
        return x_adv


class SmoothPGDAttack(_SmoothAttack):
    r"""L2 PGD against the soft smoothed classifier (SmoothAdv's attack) :cite:`salman2019provably`.

    .. math::

        \max_{\|x' - x\|_2 \le \epsilon,\ x' \in [0,1]^d}
        -\log \max\Big(\frac{1}{m}\sum_{i=1}^m \mathrm{softmax}(f(x' + \delta_i))_y,\ 10^{-20}\Big)

    ``T`` steps of size :math:`2\epsilon/T` along the per-example normalized gradient from
    :math:`x' = x` (no random start), same noise at every step, box projection then ball
    projection. See :func:`rsmooth.functional.smooth_pgd_attack`; zero-gradient rows move along
    a random direction drawn from ``generator``.

    Cost: ``T`` forward and backward passes over ``m * B`` samples.

    Args:
        sigma: Noise level :math:`\sigma`.
        epsilon: L2 radius :math:`\epsilon` in input units (the official flags are integers
            divided by 256: 64 → 0.25, 127 → 0.496, 255 → 0.996, 512 → 2.0); a radius larger
            than the diameter of the input box, :math:`\sqrt d`, is a ``ValueError`` at the
            call.
        num_steps: Number of steps ``T`` (official training: 1 to 10; evaluation: 20).
        num_noise: Noise samples ``m``. Default: 1.
        generator: Optional ``torch.Generator`` (on the inputs' device).

    Shape:
        - inputs: :math:`(B, *)`, values in :math:`[0, 1]`.
        - targets: :math:`(B)`.
        - output: :math:`(B, *)`, values in :math:`[0, 1]`.

    Raises:
        TypeError: For arguments of the wrong type.
        ValueError: For a non-positive ``sigma``, a negative ``epsilon``, counts below 1, inputs
            outside :math:`[0, 1]`, or mismatched targets.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> model = nn.Linear(4, 3)
        >>> x, y = torch.rand(2, 4, generator=g), torch.tensor([0, 1])
        >>> attack = SmoothPGDAttack(0.25, 0.5, 4, 2, generator=g)
        >>> attack
        SmoothPGDAttack(sigma=0.25, epsilon=0.5, num_steps=4, num_noise=2)
        >>> x_adv = attack(model, x, y)
        >>> x_adv.shape, bool(((x_adv - x).norm(dim=1) <= 0.5 + 1e-6).all())
        (torch.Size([2, 4]), True)
    """

    _repr_fields = ("sigma", "epsilon", "num_steps", "num_noise")

    epsilon = Setting(check_nonnegative)
    num_steps = Setting(check_int)

    def __init__(
        self,
        sigma: float,
        epsilon: float,
        num_steps: int,
        num_noise: int = 1,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(sigma, num_noise, generator=generator)
        self.epsilon = epsilon
        self.num_steps = num_steps

    def _check_call(self, inputs: Tensor) -> None:
        check_epsilon_in_box("epsilon", self.epsilon, inputs)

    def forward(self, model: nn.Module, inputs: Tensor, targets: Tensor) -> Tensor:
        """Attack ``model`` at ``inputs``.

        Args:
            model: Base classifier returning logits ``[N, K]``.
            inputs: Clean inputs ``[B, *]`` in ``[0, 1]``.
            targets: True labels ``[B]``.

        Returns:
            Adversarial inputs ``[B, *]``, detached.
        """
        noise, targets, max_label = self._prepare(model, inputs, targets)
        return self._run(
            model,
            inputs,
            functools.partial(
                smooth_pgd_attack,
                model,
                inputs,
                targets,
                noise,
                self.epsilon,
                self.num_steps,
                generator=self.generator,
            ),
            max_label=max_label,
        )


class SmoothDDNAttack(_SmoothAttack):
    r"""DDN against the soft smoothed classifier :cite:`rony2019decoupling,salman2019provably`.

    Decoupled direction and norm: a normalized gradient step (cosine learning-rate schedule from
    1 to 0.01), then a rescale to a per-example norm that shrinks by :math:`(1 - \gamma)` while
    the smoothed prediction (the mode of the ``m`` per-copy predictions) is wrong and grows by
    :math:`(1 + \gamma)` while it is right, with 256-level quantization. It returns the
    smallest-norm misclassifying point found, projected on the ball of radius :math:`\epsilon`,
    or ``x`` itself if none was found. See :func:`rsmooth.functional.smooth_ddn_attack`.

    Cost: ``T`` forward and backward passes over ``m * B`` samples.

    Args:
        sigma: Noise level :math:`\sigma`.
        epsilon: Final L2 radius :math:`\epsilon` in input units (official flags: integers
            divided by 256); larger than the diameter of the input box, :math:`\sqrt d`, it is
            a ``ValueError`` at the call.
        num_steps: Number of steps ``T``.
        num_noise: Noise samples ``m``. Default: 1.
        gamma: Norm update factor :math:`\gamma`. Default: 0.05 (training); the official
            evaluation uses :math:`1 - (3/510/\epsilon)^{1/T}`.
        init_norm: Initial norm. Default: 1.0 (SmoothAdv training overwrites it with the
            warmed-up :math:`\epsilon`).
        quantize: Quantize to 256 levels as the official code does. Default: ``True``.
        generator: Optional ``torch.Generator`` (on the inputs' device).

    Shape:
        - inputs: :math:`(B, *)`, values in :math:`[0, 1]`.
        - targets: :math:`(B)`.
        - output: :math:`(B, *)`, values in :math:`[0, 1]`.

    Raises:
        TypeError: For arguments of the wrong type.
        ValueError: For a non-positive ``sigma``, negative ``epsilon``/``gamma``/``init_norm``,
            ``gamma >= 1``, counts below 1, inputs outside :math:`[0, 1]`, or mismatched targets.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> model = nn.Linear(4, 3)
        >>> x, y = torch.rand(2, 4, generator=g), torch.tensor([0, 1])
        >>> attack = SmoothDDNAttack(0.25, 0.5, 4, 2, generator=g)
        >>> attack
        SmoothDDNAttack(sigma=0.25, epsilon=0.5, num_steps=4, num_noise=2, gamma=0.05,
                        init_norm=1.0)
        >>> attack(model, x, y).shape
        torch.Size([2, 4])
    """

    _repr_fields = ("sigma", "epsilon", "num_steps", "num_noise", "gamma", "init_norm")

    epsilon = Setting(check_nonnegative)
    num_steps = Setting(check_int)
    gamma = Setting(_check_gamma)
    init_norm = Setting(check_nonnegative)
    quantize = Setting(check_bool)

    def __init__(
        self,
        sigma: float,
        epsilon: float,
        num_steps: int,
        num_noise: int = 1,
        *,
        gamma: float = 0.05,
        init_norm: float = 1.0,
        quantize: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(sigma, num_noise, generator=generator)
        self.epsilon = epsilon
        self.num_steps = num_steps
        self.gamma = gamma
        self.init_norm = init_norm
        self.quantize = quantize

    def _check_call(self, inputs: Tensor) -> None:
        check_epsilon_in_box("epsilon", self.epsilon, inputs)

    def forward(self, model: nn.Module, inputs: Tensor, targets: Tensor) -> Tensor:
        """Attack ``model`` at ``inputs``.

        Args:
            model: Base classifier returning logits ``[N, K]``.
            inputs: Clean inputs ``[B, *]`` in ``[0, 1]``.
            targets: True labels ``[B]``.

        Returns:
            Adversarial inputs ``[B, *]``, detached.
        """
        noise, targets, max_label = self._prepare(model, inputs, targets)
        return self._run(
            model,
            inputs,
            functools.partial(
                smooth_ddn_attack,
                model,
                inputs,
                targets,
                noise,
                self.epsilon,
                self.num_steps,
                gamma=self.gamma,
                init_norm=self.init_norm,
                quantize=self.quantize,
                generator=self.generator,
            ),
            max_label=max_label,
        )


# --------------------------------------------------------------------------------------------
# Attacks on the noise (CAT-RS, Sun et al.): they return adversarial *noise* ``[m * B, *]``
# (noise-major, row ``i * B + j`` is copy ``i`` of input ``j``) instead of adversarial inputs.
# --------------------------------------------------------------------------------------------


class _NoiseAttack(_SmoothAttack):
    """Shared constructor of the attacks on the noise: ``sigma, epsilon, num_steps, num_noise``."""

    _repr_fields = ("sigma", "epsilon", "num_steps", "num_noise")

    epsilon = Setting(check_positive)
    num_steps = Setting(functools.partial(check_int, min=0))

    def __init__(
        self,
        sigma: float,
        epsilon: float,
        num_steps: int,
        num_noise: int = 4,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(sigma, num_noise, generator=generator)
        self.epsilon = epsilon
        self.num_steps = num_steps


class CATRSNoiseAttack(_NoiseAttack):
    r"""CAT-RS's adversary on the noise of a smoothed classifier :cite:`jeong2023catrs`.

    Draws ``m`` noises :math:`\delta_{ij} \sim \mathcal N(0, \sigma^2 I)` per input and moves
    each one, inside an L2 ball of radius :math:`\epsilon` around itself, to maximise the KL
    divergence from a per-example target distribution :math:`\pi_j` to
    :math:`\mathrm{softmax} f(x_j + \delta_{ij})`; ``T`` normalised steps of
    :math:`2\epsilon/T`, each followed by the projection and a re-standardisation to the
    original row mean and RMS (see :func:`rsmooth.functional.catrs_noise_attack`). The input is
    never changed.

    Cost: ``T`` forward and backward passes over ``m * B`` samples.

    Args:
        sigma: Noise level :math:`\sigma`.
        epsilon: Radius :math:`\epsilon` around each noise row, in input units (official: 1.0,
            the flag 256/256); larger than the diameter of the input box, :math:`\sqrt d`, it
            is a ``ValueError`` at the call.
        num_steps: Number of steps ``T`` (official: 4; 1 on ImageNet).
        num_noise: Noise samples ``m`` per input. Default: 4.
        generator: Optional ``torch.Generator`` (on the inputs' device) for the noise.

    Shape:
        - inputs: :math:`(B, *)`, values in :math:`[0, 1]`.
        - targets: :math:`(B, K)`, the target distributions :math:`\pi` (rows summing to 1).
        - output: :math:`(m B, *)`, adversarial noise, noise-major.

    Raises:
        TypeError: For arguments of the wrong type.
        ValueError: For non-positive ``sigma``/``epsilon``, negative ``num_steps``, a
            ``num_noise`` below 1, inputs outside :math:`[0, 1]`, or targets that are not
            distributions of shape ``[B, K]``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> model = nn.Linear(4, 3)
        >>> x, prior = torch.rand(2, 4, generator=g), torch.full((2, 3), 1 / 3)
        >>> attack = CATRSNoiseAttack(0.25, 1.0, 2, 4, generator=g)
        >>> attack
        CATRSNoiseAttack(sigma=0.25, epsilon=1.0, num_steps=2, num_noise=4)
        >>> attack(model, x, prior).shape
        torch.Size([8, 4])
    """

    def _check_call(self, inputs: Tensor) -> None:
        check_epsilon_in_box("epsilon", self.epsilon, inputs)

    def forward(self, model: nn.Module, inputs: Tensor, targets: Tensor) -> Tensor:
        r"""Draw noise for ``inputs`` and move it away from the target distributions.

        Args:
            model: Base classifier returning logits ``[N, K]``.
            inputs: Clean inputs ``[B, *]`` in ``[0, 1]``.
            targets: Target distributions :math:`\pi` ``[B, K]``.

        Returns:
            Adversarial noise ``[m * B, *]`` (noise-major), detached.
        """
        check_base_model(model)
        check_inputs("inputs", inputs, unit_box=True)
        prior = check_prior_rows(targets, inputs.shape[0], inputs.device, name="targets")
        self._check_call(inputs)
        noise = self._draw_noise(inputs)
        return self._run(
            model,
            inputs,
            functools.partial(
                catrs_noise_attack, model, inputs, prior, noise, self.epsilon, self.num_steps
            ),
            num_classes=("targets", int(prior.shape[1])),
        )


class AdaptiveNoiseAttack(_NoiseAttack):
    r"""Sun et al.'s adaptive attack (ADAPTIVEADV) on the noise of a smoothed classifier :cite:`sun2025acr`.

    Draws ``m`` noises per input and rotates each one on the sphere of its own norm towards
    misclassification (``T`` steps of raw L2 length :math:`\epsilon` on the per-copy
    cross-entropy of the true label), keeping the first misclassified iterate; see
    :func:`rsmooth.functional.adaptive_noise_attack`. After each call,
    :attr:`last_stop_step` holds, per noise row, the iterate at which it stopped (0: the
    unperturbed noise was already misclassified) or -1.

    Cost: ``T`` forward and backward passes over ``m * B`` samples.

    Args:
        sigma: Noise level :math:`\sigma`.
        epsilon: Step length :math:`\epsilon` (raw L2, not divided by 256).
        num_steps: Number of steps ``T`` (0 returns the Gaussian noise unchanged).
        num_noise: Noise samples ``m`` per input. Default: 4.
        generator: Optional ``torch.Generator`` (on the inputs' device) for the noise.

    Shape:
        - inputs: :math:`(B, *)`, values in :math:`[0, 1]`.
        - targets: :math:`(B)`.
        - output: :math:`(m B, *)`, adversarial noise, noise-major.

    Raises:
        TypeError: For arguments of the wrong type.
        ValueError: For non-positive ``sigma``/``epsilon``, negative ``num_steps``, a
            ``num_noise`` below 1, inputs outside :math:`[0, 1]`, or mismatched targets.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> model = nn.Linear(4, 3)
        >>> x, y = torch.rand(2, 4, generator=g), torch.tensor([0, 1])
        >>> attack = AdaptiveNoiseAttack(0.25, 0.1, 3, 2, generator=g)
        >>> noise = attack(model, x, y)
        >>> noise.shape, attack.last_stop_step.shape
        (torch.Size([4, 4]), torch.Size([4]))
    """

    def __init__(
        self,
        sigma: float,
        epsilon: float,
        num_steps: int,
        num_noise: int = 4,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(sigma, epsilon, num_steps, num_noise, generator=generator)
        self.last_stop_step: Tensor | None = None

    def forward(self, model: nn.Module, inputs: Tensor, targets: Tensor) -> Tensor:
        """Draw noise for ``inputs`` and rotate it towards misclassification.

        Args:
            model: Base classifier returning logits ``[N, K]``.
            inputs: Clean inputs ``[B, *]`` in ``[0, 1]``.
            targets: True labels ``[B]``.

        Returns:
            Adversarial noise ``[m * B, *]`` (noise-major), detached.
        """
        self.last_stop_step = None
        noise, targets, max_label = self._prepare(model, inputs, targets)
        result = self._run(
            model,
            inputs,
            functools.partial(
                adaptive_noise_attack, model, inputs, targets, noise, self.epsilon, self.num_steps
            ),
            max_label=max_label,
        )
        self.last_stop_step = result.stop_step
        return result.noise
