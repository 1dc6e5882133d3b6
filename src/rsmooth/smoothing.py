r"""The smoothed classifier: PREDICT, CERTIFY and sequential certification of any base classifier.

Given a base classifier :math:`f` and a noise level :math:`\sigma`, the smoothed classifier is

.. math:: g(x) = \arg\max_c \; \mathbb{P}_{\delta \sim \mathcal{N}(0, \sigma^2 I)}\big(f(x + \delta) = c\big).

:class:`SmoothedClassifier` is the public face: it checks its settings and each call, and runs one
procedure per method (:mod:`rsmooth.procedures`, :mod:`rsmooth.sequential`) on the sampling engine
(``rsmooth._engine``).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any, Literal, TypeVar

import torch
from torch import Tensor, nn

from rsmooth._engine.batching import AutoBatch, FixedBatch, policy
from rsmooth._engine.forward import ForwardRunner, compile_model
from rsmooth._engine.progress import Progress
from rsmooth._engine.sampler import Item, Procedure, Sampler, Votes
from rsmooth._engine.streams import input_seeds
from rsmooth._settings import Sealed, Setting
from rsmooth._validation import (
    DEFAULT_INPUT_RANGE,
    check_bool,
    check_choice,
    check_generator,
    check_input_range,
    check_input_range_arg,
    check_inputs,
    check_int,
    check_model,
    check_positive,
)
from rsmooth.certificates import ABSTAIN, Certificate, RadiusCertificate, float_tensor
from rsmooth.procedures import (
    Certify,
    CertifyRow,
    Counts,
    Predict,
    SampleSizeWarning,
    warn_sample_size,
)
from rsmooth.sequential import GridRow, RadiusGrid
from rsmooth.stats import max_certified_radius

__all__ = ["ABSTAIN", "Certificate", "SampleSizeWarning", "SmoothedClassifier"]

GeneratorArg = torch.Generator | Sequence[torch.Generator] | None
NonFinitePolicy = Literal["raise", "count_against"]
BatchSize = int | Literal["auto"] | None
MemoryFormat = Literal["auto", "preserve", "channels_last"]
R = TypeVar("R")

_Key = tuple[tuple[int, ...], torch.dtype, str]


def _check_batch_size(name: str, value: object) -> BatchSize:
    if value is None:
        return None
    if value == "auto":
        return "auto"
    if isinstance(value, str):
        raise ValueError(f"{name} must be a positive integer, 'auto' or None, got {value!r}")
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, 'auto' or None, got {type(value).__name__}")
    return check_int(name, value)


def _check_compile(name: str, value: object) -> bool | Mapping[str, Any]:
    if isinstance(value, bool):
        return value
    if isinstance(value, Mapping) and all(isinstance(key, str) for key in value):
        if "dynamic" in value:
            raise ValueError(
                f"{name} must not set 'dynamic': the engine feeds fixed batch shapes "
                "(dynamic=False)"
            )
        return value
    raise TypeError(
        f"{name} must be a bool or a dict of torch.compile options, got {type(value).__name__}"
    )


def _check_autocast(name: str, value: object) -> torch.dtype | None:
    if value is None:
        return None
    if not isinstance(value, torch.dtype):
        raise TypeError(f"{name} must be a torch.dtype or None, got {type(value).__name__}")
    if value not in (torch.float16, torch.bfloat16):
        raise ValueError(f"{name} must be torch.bfloat16 or torch.float16, got {value}")
    return value


def _check_num_classes(name: str, value: object) -> int | None:
    return None if value is None else check_int(name, value, min=2)


class SmoothedClassifier(Sealed):
    r"""A randomized-smoothing classifier over any base classifier.

    Certifies that the smoothed classifier :math:`g` is constant on an L2 ball around each input
    :cite:`cohen2019certified`. :math:`\sigma` is measured in the space the model receives its
    inputs in, so input normalisation belongs *inside* ``model`` (a first layer).

    The model runs as written: every noisy sample goes through ``model``'s own ``forward``
    (hooks and Python side effects included), in eval mode, and its modes are restored after
    each call. Forward batches of ``batch_size`` noisy samples are filled across inputs and
    samples, so memory is bounded by ``batch_size`` (never by ``n`` or the number of inputs). Each
    input gets its own noise streams seeded from the ``generator``; sample ``s`` of an input
    depends only on its seed and ``s``, so the same generator state and arguments give the same
    results on the same device for every ``batch_size``, whatever other inputs share the call.

    **Settings.** Every argument is also an attribute, checked on assignment as the constructor
    checks it (a refused value or a failing ``compile`` changes nothing; a new value drops the
    choices made for the old one); a misspelt one (``smoothed.batchsize = 64``) is an error.

    Args:
        model: Base classifier ``f`` mapping a batch ``[N, *]`` to logits ``[N, K]``.
        sigma: Noise standard deviation :math:`\sigma > 0`.
        num_classes: Number of classes ``K``. Default: inferred from the model's output (and
            checked against it when given).
        batch_size: Noisy samples per forward pass. ``None``: the device's default, 128 on the
            CPU and 2048 on CUDA (halved when a batch runs out of memory). ``"auto"``: a timed
            search on the calls' own forward batches (opt-in; the size it settles on depends on
            the machine's load, shown in ``repr``). Results never depend on it. Default: None.
        nonfinite: A noisy sample with a non-finite logit: ``"raise"`` a ``ValueError`` naming
            the inputs, or ``"count_against"``: no vote (sound). Default: ``"raise"``.
        compile: ``True`` or a dict of :func:`torch.compile` options (e.g. ``{"mode":
            "max-autotune"}``): the way to a faster forward pass on the CPU and GPU. Every
            forward pass then has the batch size's rows (the last one padded), so the model
            compiles once. Default: False.
        autocast: ``torch.bfloat16`` or ``torch.float16`` to run the forward passes under
            :func:`torch.autocast` (the noise stays in the inputs' dtype). The certificate is
            then about the reduced-precision classifier (see the docs' Performance page).
            Default: None.
        input_range: ``(low, high)`` every input entry must lie in, or ``None`` to turn the
            check off (inputs in another space). Default: ``(0.0, 1.0)``, pixels scaled to
            [0, 1]: 8-bit pixels, or a normalisation applied outside the model, are errors.
        memory_format: Layout of the noisy batches. ``"auto"``: on the CPU, image batches
            ``[B, C, H, W]`` reach the model as ``channels_last`` (faster convolutions) once a
            check per input shape finds the same logits as in the standard layout up to
            rounding; else the inputs' own layout. ``"preserve"``: the inputs' own layout.
            ``"channels_last"``: always (4-D or 5-D inputs). Default: ``"auto"``.

    Raises:
        TypeError: ``model`` is not an ``nn.Module`` or an argument has the wrong type.
        ValueError: ``sigma`` is not positive and finite, ``num_classes < 2``, ``batch_size < 1``.

    Example:
        >>> model = nn.Sequential(nn.Linear(2, 2))
        >>> smoothed = SmoothedClassifier(model, sigma=0.25, batch_size=500, input_range=None)
        >>> x = torch.tensor([[3.0, -3.0], [0.0, 0.0]])
        >>> with torch.no_grad():
        ...     _ = model[0].weight.copy_(torch.eye(2)), model[0].bias.zero_()
        >>> g = torch.Generator().manual_seed(0)
        >>> cert = smoothed.certify(x, n=1000, n0=100, alpha=0.001, generator=g)
        >>> cert.prediction.tolist()
        [0, -1]
        >>> round(float(cert.radius[0]), 3)  # every vote for class 0: the cap for n=1000
        0.616
        >>> round(smoothed.max_radius(n=1000, alpha=0.001), 3)
        0.616
    """

    model = Setting(lambda name, value: check_model(value))
    sigma = Setting(check_positive)
    num_classes = Setting(_check_num_classes)
    batch_size = Setting(_check_batch_size)
    nonfinite = Setting(check_choice("raise", "count_against"))
    compile = Setting(_check_compile)
    autocast = Setting(_check_autocast)
    input_range = Setting(check_input_range_arg)
    memory_format = Setting(check_choice("auto", "preserve", "channels_last"))

    def __init__(
        self,
        model: nn.Module,
        sigma: float,
        *,
        num_classes: int | None = None,
        batch_size: BatchSize = None,
        nonfinite: NonFinitePolicy = "raise",
        compile: bool | Mapping[str, Any] = False,
        autocast: torch.dtype | None = None,
        input_range: tuple[float, float] | None = DEFAULT_INPUT_RANGE,
        memory_format: MemoryFormat = "auto",
    ) -> None:
        self.model = model
        self.sigma = sigma
        self.num_classes = num_classes
        self.batch_size = batch_size
        self.nonfinite = nonfinite
        self.compile = compile
        self.autocast = autocast
        self.input_range = input_range
        self.memory_format = memory_format
        self._compiled = compile_model(self.model, self.compile)
        self._forward: ForwardRunner | None = None
        self._batching: dict[_Key, FixedBatch | AutoBatch] = {}

    def _setting_changed(self, name: str) -> None:
        """A setting was reassigned: compile again if needed, drop the choices made before."""
        if "_compiled" not in vars(self):  # still in __init__
            return
        if name in ("model", "compile"):
            self._compiled = compile_model(self.model, self.compile)  # may raise: nothing changes
        self._forward = None
        self._batching = {}

    def __repr__(self) -> str:
        extra = "" if self.nonfinite == "raise" else f", nonfinite={self.nonfinite!r}"
        if self.compile is not False:
            extra += f", compile={self.compile!r}"
        if self.autocast is not None:
            extra += f", autocast={self.autocast}"
        if self.memory_format != "auto":
            extra += f", memory_format={self.memory_format!r}"
        elif self._forward is not None and any(self._forward.layouts.values()):
            shapes = "; ".join(_describe(k) for k, used in self._forward.layouts.items() if used)
            extra += f", memory_format='auto' (channels_last for {shapes})"
        return (
            f"{type(self).__name__}(sigma={self.sigma}, num_classes={self.num_classes}, "
            f"batch_size={_batching_repr(self.batch_size, self._batching)}{extra})"
        )

    # ------------------------------------------------------------------ the engine
    def _sampler(self, inputs: Tensor) -> Sampler:
        """The engine for inputs like ``inputs`` (its batching state is kept per shape)."""
        if self._forward is None:
            check_size = self.batch_size if isinstance(self.batch_size, int) else None
            self._forward = ForwardRunner(
                self.model,
                num_classes=self.num_classes,
                compiled=self._compiled,
                autocast=self.autocast,
                memory_format=self.memory_format,
                check_size=check_size,
            )
        key = (tuple(inputs.shape[1:]), inputs.dtype, str(inputs.device))
        batching = self._batching.get(key)
        if batching is None:
            batching = self._batching[key] = policy(self.batch_size, inputs)
        return Sampler(self._forward, batching, self.sigma, nonfinite=self.nonfinite)

    def _run(
        self,
        procedure: Procedure[R],
        inputs: Tensor,
        seeds: Sequence[int],
        *,
        extras: Sequence[Any] | None = None,
        progress: Progress | None = None,
    ) -> list[R]:
        """Run ``procedure`` on each input of a batch; the results in input order."""
        results: dict[Hashable, R] = {}
        items = (
            Item(j, inputs[j], seeds[j], None if extras is None else extras[j])
            for j in range(inputs.shape[0])
        )
        self.run_stream(procedure, items, results.__setitem__, probe=inputs, progress=progress)
        return [results[j] for j in range(inputs.shape[0])]

    def run_stream(
        self,
        procedure: Procedure[R],
        items: Iterable[Item],
        on_result: Callable[[Hashable, R], None],
        *,
        probe: Tensor,
        progress: Progress | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> dict[str, Any]:
        """Run a procedure over a stream of inputs, reporting each result as its input finishes.

        The entry point of :func:`~rsmooth.runner.certify_dataset` (inputs are admitted while
        others are decided, so forward batches stay full); most users want :meth:`certify`.

        Args:
            procedure: A bound procedure, e.g. ``Certify(n=...).bind(sigma)`` or
                ``RadiusGrid(...).bind(sigma)`` (:mod:`rsmooth.procedures`,
                :mod:`rsmooth.sequential`).
            items: The inputs (``rsmooth._engine.sampler.Item``: key, clean input, seed).
            on_result: Called with each item's key and result as it finishes.
            probe: A batch of clean inputs like the items (it decides the layout).
            progress: Updated with the inputs finished and the samples drawn.
            stop: When it returns True the run ends, dropping the inputs in flight.

        Returns:
            What the run chose: ``{"batch_size": ..., "channels_last": ...}``.
        """
        sampler = self._sampler(probe)
        sampler.run(
            procedure,
            items,
            on_result,
            probe=probe,
            on_progress=None if progress is None else progress.update,
            stop=stop,
        )
        return {
            "batch_size": sampler.batching.choice,
            "channels_last": sampler.forward.layout(probe) is not None,
        }

    # ------------------------------------------------------------------ public
    def sample_counts(self, inputs: Tensor, *, num: int, generator: GeneratorArg = None) -> Tensor:
        """Count the base classifier's votes under ``num`` noise draws per input.

        The samples come from a noise stream of their own: for the same generator they are
        independent of those of :meth:`predict`, :meth:`certify` and :meth:`certify_radius`.

        Args:
            inputs: Batch ``[B, *]``.
            num: Noise draws per input.
            generator: Optional ``torch.Generator`` on the inputs' device, or a sequence of
                ``B`` generators, one per input (then input ``j``'s noise depends only on
                ``generator[j]``).

        Returns:
            ``int64`` counts ``[B, K]`` on the inputs' device; each row sums to ``num`` less the
            samples with non-finite logits (``nonfinite="count_against"``).

        Example:
            >>> smoothed = SmoothedClassifier(nn.Linear(3, 4), sigma=0.5)
            >>> g = torch.Generator().manual_seed(0)
            >>> smoothed.sample_counts(torch.zeros(2, 3), num=50, generator=g).sum(1).tolist()
            [50, 50]
        """
        inputs, seeds = _checked_call(inputs, generator, self.input_range)
        votes: list[Votes] = self._run(Counts(num), inputs, seeds)
        classes = max(len(v.counts) for v in votes)
        table = torch.zeros((len(votes), classes), dtype=torch.int64)
        for j, v in enumerate(votes):
            table[j, : len(v.counts)] = torch.from_numpy(v.counts)
        return table.to(inputs.device)

    def predict(
        self,
        inputs: Tensor,
        *,
        n: int = 100_000,
        alpha: float = 0.001,
        generator: GeneratorArg = None,
        progress: bool = False,
    ) -> Tensor:
        """PREDICT: the smoothed classifier's class, abstaining unless the vote is significant.

        Draws ``n`` noisy samples per input, takes the two most frequent classes and returns the
        first unless the two-sided binomial test of their counts at p = 1/2 has p-value > alpha
        (then :data:`ABSTAIN`). With probability at least ``1 - alpha`` a returned class is the
        smoothed classifier's class.

        Args:
            inputs: Batch ``[B, *]``.
            n: Noise draws per input. Default: 100,000.
            alpha: Level of the abstain test. Default: 0.001.
            generator: Optional ``torch.Generator`` on the inputs' device, or a sequence of
                ``B`` generators, one per input (then input ``j``'s noise depends only on
                ``generator[j]`` and the sample sizes, never on ``batch_size``).
            progress: Show the inputs done and the sampling rate on stderr (tqdm when
                installed, the ``progress`` extra; else a line every few seconds). Default: False.

        Returns:
            ``int64`` tensor ``[B]`` of classes, :data:`ABSTAIN` (-1) where it abstains.

        Warns:
            SampleSizeWarning: ``n`` is too small for the test ever to pass at this ``alpha``.

        Example:
            >>> smoothed = SmoothedClassifier(nn.Linear(2, 2), sigma=0.1)
            >>> g = torch.Generator().manual_seed(0)
            >>> smoothed.predict(torch.zeros(3, 2), n=200, generator=g).shape
            torch.Size([3])
        """
        procedure = Predict(n=n, alpha=alpha)
        inputs, seeds = _checked_call(inputs, generator, self.input_range)
        warn_sample_size("predict", procedure.n, procedure.alpha, stacklevel=2)
        classes: list[int] = _with_progress(
            progress,
            len(seeds),
            "predict",
            lambda bar: self._run(procedure, inputs, seeds, progress=bar),
        )
        return torch.tensor(classes, dtype=torch.int64, device=inputs.device)

    def certify(
        self,
        inputs: Tensor,
        *,
        n: int = 100_000,
        n0: int = 100,
        alpha: float = 0.001,
        generator: GeneratorArg = None,
        progress: bool = False,
        bound: Literal["clopper-pearson", "randomized"] = "clopper-pearson",
    ) -> Certificate:
        r"""CERTIFY: a class and an L2 radius on which the smoothed classifier is constant.

        For each input, ``n0`` noise draws select the candidate class :math:`\hat c_A` (ties go
        to the lowest index); ``n`` fresh, independent draws count its votes :math:`n_A`; the
        one-sided :math:`(1-\alpha)` Clopper–Pearson lower bound :math:`\underline{p_A}` gives
        the radius :math:`R = \sigma\,\Phi^{-1}(\underline{p_A})`. If
        :math:`\underline{p_A} < 1/2` it abstains (prediction :data:`ABSTAIN`, radius 0).
        With probability at least :math:`1-\alpha` over the sampling, a returned class is
        :math:`g(x)` and :math:`g` is constant on the ball of radius :math:`R`. The radius can
        never exceed :func:`~rsmooth.stats.max_certified_radius` ``(n, alpha, sigma)``.

        Args:
            inputs: Batch ``[B, *]``.
            n: Estimation draws per input. Default: 100,000.
            n0: Selection draws per input. Default: 100.
            alpha: Failure probability. Default: 0.001.
            generator: Optional ``torch.Generator`` on the inputs' device, or a sequence of
                ``B`` generators, one per input (then input ``j``'s noise depends only on
                ``generator[j]`` and the sample sizes, never on ``batch_size``).
            progress: Show the inputs done and the sampling rate on stderr (tqdm when
                installed, the ``progress`` extra; else a line every few seconds). Default: False.
            bound: ``"clopper-pearson"`` (CERTIFY's bound, reproduces published numbers) or
                ``"randomized"``: the exact randomized bound
                :func:`~rsmooth.stats.randomized_clopper_pearson_lower`, never smaller, with its
                uniform draw taken from the input's own noise stream (reproducible). It helps
                mostly at the radius cap (all votes for the class). Default: ``"clopper-pearson"``.

        Returns:
            A :class:`Certificate` with tensors of shape ``[B]``.

        Warns:
            SampleSizeWarning: ``n`` is too small for any input ever to be certified at ``alpha``.

        Example:
            >>> smoothed = SmoothedClassifier(nn.Linear(2, 2), sigma=0.1)
            >>> g = torch.Generator().manual_seed(0)
            >>> cert = smoothed.certify(torch.zeros(3, 2), n=500, generator=g)
            >>> cert.radius.shape, cert.prediction.dtype
            (torch.Size([3]), torch.int64)
        """
        settings = Certify(n=n, n0=n0, alpha=alpha, bound=bound)
        inputs, seeds = _checked_call(inputs, generator, self.input_range)
        warn_sample_size("certify", settings.n, settings.alpha, stacklevel=2)
        rows: list[CertifyRow] = _with_progress(
            progress,
            len(seeds),
            "certify",
            lambda bar: self._run(settings.bind(self.sigma), inputs, seeds, progress=bar),
        )
        device = inputs.device
        return Certificate(
            prediction=torch.tensor([r.prediction for r in rows], device=device),
            radius=float_tensor([r.radius for r in rows], device),  # type: ignore[arg-type]
            p_lower=float_tensor([r.p_lower for r in rows], device),  # type: ignore[arg-type]
            count=torch.tensor([r.count for r in rows], device=device),
            n=settings.n,
            n0=settings.n0,
            alpha=settings.alpha,
            sigma=self.sigma,
            nonfinite=torch.tensor([r.nonfinite for r in rows], device=device),
        )

    def certify_radius(
        self,
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
        progress: bool = False,
        **unexpected: Any,
    ) -> RadiusCertificate:
        r"""Sequential certification at one radius or a grid: "certified at r?" with few samples.

        One candidate class per input (from ``n0`` fresh selection samples, or ``candidates``)
        whose votes are checked at geometric looks up to ``max_n``; each radius is certified or
        ruled out as soon as the counts allow, and an input stops when every reachable radius
        is decided (:mod:`rsmooth.sequential`, :cite:`horvath2022boosting,voracek2024confidence`).
        Radii no count could certify within ``max_n`` are reported as unreachable, with a
        warning.

        **Guarantee.** For each input, with probability at least ``1 - alpha``, every claim it
        reports holds at once: the smoothed classifier predicts ``prediction`` and is constant
        on the L2 ball of radius ``radius`` (so of every certified radius). With
        ``candidates``, a claim is made only when that class is the smoothed prediction; the
        candidates must not depend on this call's estimation noise (with the same generator,
        candidates from :meth:`sample_counts`, :meth:`predict` or :meth:`certify` are fine: each
        draws from streams of its own). "Ruled out" is not a certificate of non-robustness.
        The guarantee holds at the pre-set looks; it does not extend past ``max_n``. The result
        has no ACR: use :meth:`certify` for radius curves.

        Args:
            inputs: Batch ``[B, *]``.
            radius: One radius, or a sorted sequence of radii (the grid), all ``>= 0``.
            alpha: Failure probability of the certificates. Default: 0.001.
            max_n: Largest number of estimation samples per input (the last look).
                Default: 100,000.
            n0: Selection samples per input (unused with ``candidates``). Default: 100.
            beta: Failure probability of the "ruled out" decisions (only affects cost).
                Default: ``alpha``.
            growth: Ratio of consecutive looks, ``> 1``. Default: 1.5.
            candidates: Classes to test instead of selecting them (``int64`` ``[B]``, e.g. the
                labels when measuring certified accuracy). Default: None.
            generator: Optional ``torch.Generator`` on the inputs' device, or a sequence of
                ``B`` generators, one per input.
            progress: Show the inputs done and the sampling rate on stderr. Default: False.
            **unexpected: Refused with a ``TypeError`` that names the keyword to use (``n`` is
                ``max_n`` here).

        Returns:
            A :class:`~rsmooth.RadiusCertificate` (tensors ``[B]`` and ``[B, J]``).

        Raises:
            ValueError: Negative or unsorted radii, ``max_n`` too small for even the smallest
                radius (the message names the smallest that works), ``growth <= 1``, ``beta``
                or ``alpha`` outside (0, 1), ``candidates`` of the wrong shape or class range.
            TypeError: ``candidates`` is not an integer tensor, an argument has the wrong type,
                or an unknown keyword (``n``: the sequential procedure takes ``max_n``).

        Warns:
            UnreachableRadiusWarning: Some radii of the grid cannot be certified within
                ``max_n`` samples.

        Example:
            >>> model = nn.Linear(2, 2)
            >>> with torch.no_grad():
            ...     _ = model.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
            ...     _ = model.bias.zero_()
            >>> smoothed = SmoothedClassifier(model, sigma=0.5, input_range=None)
            >>> x = torch.tensor([[2.0, 0.0], [0.4, 0.0]])  # true radii 2.0 and 0.4
            >>> g = torch.Generator().manual_seed(0)
            >>> cert = smoothed.certify_radius(x, [0.25, 0.5], max_n=20_000, generator=g)
            >>> cert.certified.tolist()
            [[True, True], [True, False]]
            >>> cert.num_samples.tolist()[0] < 100  # 20,000 allowed, a few dozen needed
            True
        """
        if unexpected:
            raise TypeError(_unexpected_message("certify_radius", unexpected, _RADIUS_KEYWORDS))
        grid = RadiusGrid(radii=radius, alpha=alpha, max_n=max_n, n0=n0, beta=beta, growth=growth)  # type: ignore[arg-type]
        inputs, seeds = _checked_call(inputs, generator, self.input_range)
        extras = None if candidates is None else _check_candidates(candidates, inputs, self)
        schedule = grid.bind(self.sigma, stacklevel=2)
        rows: list[GridRow] = _with_progress(
            progress,
            len(seeds),
            "certify_radius",
            lambda bar: self._run(schedule, inputs, seeds, extras=extras, progress=bar),
        )
        return schedule.collect(rows, inputs.device, given=candidates is not None)

    def soft_predict(
        self,
        inputs: Tensor,
        *,
        num_noise: int = 8,
        generator: GeneratorArg = None,
    ) -> Tensor:
        r"""The soft smoothed classifier :math:`\hat F(x) = \frac1m\sum_i \mathrm{softmax}(f(x+\delta_i))`.

        Differentiable in the inputs and the model's parameters. The ``num_noise * B`` noisy
        copies run through the same forward path as :meth:`certify` (layout, autocast, compile,
        output checks), in eval mode (the model's modes are restored), in forward batches of the
        batch size. Copy ``i`` of input ``j`` is sample ``i`` of input ``j``'s own soft stream, so a
        sequence of generators makes each input's value independent of the others.

        Args:
            inputs: Batch ``[B, *]``.
            num_noise: Noise copies ``m`` per input. Default: 8.
            generator: Optional ``torch.Generator`` on the inputs' device, or a sequence of
                ``B`` generators, one per input.

        Returns:
            Probabilities ``[B, K]`` (float32 or wider).

        Example:
            >>> smoothed = SmoothedClassifier(nn.Linear(2, 3), sigma=0.1)
            >>> g = torch.Generator().manual_seed(0)
            >>> smoothed.soft_predict(torch.zeros(4, 2), generator=g).shape
            torch.Size([4, 3])
        """
        num_noise = check_int("num_noise", num_noise)
        checked, seeds = _checked_call(inputs, generator, self.input_range)
        sampler = self._sampler(checked)
        return sampler.soft_probabilities(
            checked, seeds, num_noise, compiled=self._compiled is not None
        )

    def max_radius(self, *, n: int = 100_000, alpha: float = 0.001) -> float:
        """The largest radius :meth:`certify` can return with ``n`` samples at level ``alpha``.

        Example:
            >>> round(SmoothedClassifier(nn.Linear(2, 2), sigma=0.5).max_radius(), 3)
            1.906
        """
        return max_certified_radius(n, alpha, self.sigma)


_RADIUS_KEYWORDS = (
    "alpha", "max_n", "n0", "beta", "growth", "candidates", "generator", "progress",
)  # fmt: skip


def _describe(key: _Key) -> str:
    shape, dtype, device = key
    return f"{list(shape)} {str(dtype).removeprefix('torch.')} on {device}"


def _unexpected_message(method: str, unexpected: Mapping[str, Any], known: Sequence[str]) -> str:
    name = next(iter(unexpected))
    if name == "n":
        return (
            f"{method}() got an unexpected keyword argument 'n': the sequential procedure "
            "takes max_n, the most estimation samples per input (it stops each input as soon "
            "as its radii are decided)"
        )
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{method}() got an unexpected keyword argument {name!r}{hint}"


def _check_candidates(
    candidates: object, inputs: Tensor, smoothed: SmoothedClassifier
) -> list[int]:
    """The given candidate classes as a list of ints, checked against the batch."""
    batch = inputs.shape[0]
    if not isinstance(candidates, Tensor):
        raise TypeError(f"candidates must be a LongTensor, got {type(candidates).__name__}")
    if candidates.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TypeError(f"candidates must be an integer tensor, got dtype {candidates.dtype}")
    if tuple(candidates.shape) != (batch,):
        raise ValueError(
            f"candidates must have shape [{batch}] (one class per input), got "
            f"{tuple(candidates.shape)}"
        )
    values = [int(c) for c in candidates.tolist()]
    limit = smoothed.num_classes
    bad = [c for c in values if c < 0 or (limit is not None and c >= limit)]
    if bad:
        raise ValueError(
            f"candidates must be classes in [0, {limit if limit is not None else 'K'}), "
            f"got {bad[0]}"
        )
    return values


def _batching_repr(batch_size: BatchSize, batching: Mapping[_Key, FixedBatch | AutoBatch]) -> str:
    sizes = {key: b.choice for key, b in batching.items() if b.choice is not None}
    if batch_size not in (None, "auto") or not sizes:
        return repr(batch_size)
    text = "; ".join(f"{size} for {_describe(key)}" for key, size in sizes.items())
    what = "chosen" if batch_size == "auto" else "device default"
    return f"{batch_size!r} ({what}: {text})"


def _checked_call(
    inputs: Tensor, generator: GeneratorArg, input_range: tuple[float, float] | None
) -> tuple[Tensor, list[int]]:
    """Check a call's inputs and generator(s); return the inputs and one seed per input."""
    inputs = check_inputs("inputs", inputs)
    check_input_range("inputs", inputs, input_range)
    if isinstance(generator, (list, tuple)):
        if len(generator) != inputs.shape[0]:
            raise ValueError(
                "generator must be one torch.Generator or a sequence of one per input, got "
                f"a sequence of length {len(generator)} for {inputs.shape[0]} inputs"
            )
        checked = [check_generator(g, inputs.device) for g in generator]
        if any(g is None for g in checked):
            raise TypeError("generator must not contain None")
        return inputs, input_seeds(inputs.shape[0], [g for g in checked if g is not None])
    return inputs, input_seeds(inputs.shape[0], check_generator(generator, inputs.device))


def _with_progress(
    enabled: object, total: int | None, desc: str, call: Callable[[Progress | None], R]
) -> R:
    """``call(bar)`` with a progress bar over ``total`` inputs when ``enabled``, else ``call(None)``."""
    if not check_bool("progress", enabled):
        return call(None)
    bar = Progress(total, desc, unit="input")
    try:
        return call(bar)
    finally:
        bar.close()
