r"""Per-example state for the criteria whose recipe lives partly outside the loss.

CAT-RS (:class:`~rsmooth.CATRSLoss`) needs a **prior** per training example: the smoothed
class frequencies of a separately trained Gaussian model, computed once before training
(:func:`prediction_table`) and looked up by dataset index (:class:`IndexedDataset`). Sun et al.'s
recipe (:class:`~rsmooth.AdaptiveNoiseLoss`) discards the examples whose noisy accuracy
(:func:`p_correct`) is below a threshold at one epoch and then resamples the rest in proportion
to an approximate certified radius (:func:`radius_weights`), refreshed every few epochs
(:class:`EasySampleSchedule`). These functions are called by your training loop; the criteria
never see the dataset.

Every Monte-Carlo estimate goes through :meth:`rsmooth.SmoothedClassifier.sample_counts`
(eval mode, the model's state restored), batched across examples. Example ``i``'s noise depends
only on the ``generator``'s state and ``i`` (its stream is seeded with
:func:`rsmooth.runner.input_seed`), so the results do not depend on how the examples are grouped
into calls.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from rsmooth._validation import check_base_model, check_int, check_open_unit, check_positive
from rsmooth.smoothing import SmoothedClassifier

__all__ = [
    "EasySampleSchedule",
    "IndexedDataset",
    "p_correct",
    "prediction_table",
    "radius_weights",
]


class IndexedDataset(Dataset):
    """Wrap a map-style dataset so that each item also carries its index: ``(x, y, index)``.

    The index is what a per-example table (the CAT-RS prior) is looked up with, whatever order
    the loader draws the examples in.

    Args:
        dataset: A map-style dataset whose items are tuples such as ``(x, y)`` (or a single
            value).

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> data = IndexedDataset(TensorDataset(torch.zeros(3, 2), torch.tensor([0, 1, 1])))
        >>> len(data), data[2][1:]
        (3, (tensor(1), 2))
    """

    def __init__(self, dataset: Dataset) -> None:
        if not isinstance(dataset, Dataset) and not hasattr(dataset, "__getitem__"):
            raise TypeError(f"dataset must be a map-style Dataset, got {type(dataset).__name__}")
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        item = self.dataset[index]
        return (*item, index) if isinstance(item, tuple) else (item, index)


def _default_device(model: nn.Module) -> torch.device:
    for param in model.parameters():
        return param.device
    for buffer in model.buffers():
        return buffer.device
    return torch.device("cpu")


def _base_seed(generator: torch.Generator | None) -> int:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    device = generator.device if generator is not None else torch.device("cpu")
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=device))


def _dataset_counts(
    model: nn.Module,
    dataset: Dataset,
    sigma: float,
    num_samples: int,
    *,
    batch_size: int,
    generator: torch.Generator | None,
    device: torch.device | str | None,
    progress: bool,
    desc: str,
) -> tuple[Tensor, Tensor]:
    """Vote counts ``[N, K]`` (int64, CPU) and labels ``[N]`` for every example of ``dataset``."""
    from rsmooth._engine.progress import Progress
    from rsmooth.runner import input_seed

    check_base_model(model)
    num_samples = check_int("num_samples", num_samples)
    batch_size = check_int("batch_size", batch_size)
    if isinstance(dataset, DataLoader):
        raise TypeError(
            "dataset must be a map-style dataset, got a DataLoader: pass its dataset, e.g. "
            f"{desc.replace(' ', '_')}(model, loader.dataset); row i is example i of the dataset, "
            "in index order (a loader's batches, shuffled or not, have no such order)"
        )
    if not isinstance(dataset, Sized) or len(dataset) == 0:
        raise ValueError(f"dataset must be a non-empty map-style dataset, got {dataset!r}")
    target = _default_device(model) if device is None else torch.device(device)
    seed = _base_seed(generator)
    smoothed = SmoothedClassifier(model, sigma, batch_size=batch_size, input_range=None)
    per_call = max(1, batch_size // num_samples)
    loader = DataLoader(dataset, batch_size=per_call, shuffle=False)
    counts, labels = [], []
    bar = Progress(len(dataset), desc, unit="input", enabled=progress)
    start = 0
    try:
        for batch in loader:
            if not isinstance(batch, (list, tuple)) or len(batch) < 2:
                raise ValueError("dataset items must be (input, label, ...) tuples")
            inputs = batch[0].to(target)
            generators = [
                torch.Generator(device=target).manual_seed(input_seed(seed, start + j))
                for j in range(inputs.shape[0])
            ]
            counts.append(smoothed.sample_counts(inputs, num=num_samples, generator=generators))
            labels.append(torch.as_tensor(batch[1]).long().cpu())
            start += inputs.shape[0]
            bar.update(inputs.shape[0], inputs.shape[0] * num_samples)
    finally:
        bar.close()
    width = max(int(c.shape[1]) for c in counts)
    table = torch.cat([nn.functional.pad(c.cpu(), (0, width - c.shape[1])) for c in counts])
    return table, torch.cat(labels)


def prediction_table(
    model: nn.Module,
    dataset: Dataset,
    sigma: float = 0.25,
    num_samples: int = 10_000,
    *,
    batch_size: int = 1000,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> Tensor:
    r"""The smoothed class-frequency table of a dataset: the CAT-RS prior :cite:`jeong2023catrs`.

    Row ``i`` is :math:`\pi_i = \mathrm{counts}_i / n`, the frequencies of the base classifier's
    hard predictions :math:`\arg\max f(x_i + \delta)` over ``n = num_samples`` draws
    :math:`\delta \sim \mathcal N(0, \sigma^2 I)`, in eval mode, without abstention or
    confidence bounds (the official ``Smooth.confidence_top2`` pass). The official recipe uses a
    Gaussian-augmentation model trained at :math:`\sigma = 0.25` and ``n = 10,000`` for every
    CAT-RS :math:`\sigma`, on the training split *with its training transform* (for CIFAR, one
    random crop/flip of each image). Compute it once and save it (``torch.save``).

    Args:
        model: The prior's base classifier (returns logits ``[N, K]``).
        dataset: Map-style dataset of ``(x, y, ...)`` items, in training-index order (not a
            ``DataLoader``: pass ``loader.dataset``).
        sigma: Noise level of the prior. Default: 0.25 (the official choice for every σ).
        num_samples: Draws per example ``n``. Default: 10,000.
        batch_size: Forward batch of the sampling engine. Default: 1000.
        generator: Optional ``torch.Generator`` (any device) seeding every example's stream.
        device: Where the model runs. Default: the device of the model's parameters.
        progress: Show examples done and samples/s on stderr. Default: ``False``.

    Returns:
        ``float32`` tensor ``[N, K]`` on the CPU whose rows sum to 1.

    Raises:
        TypeError: An argument has the wrong type: a ``DataLoader`` instead of its dataset, or a
            :class:`~rsmooth.SmoothedClassifier` instead of its ``model`` (the message says so).
        ValueError: ``sigma`` is not positive, a count is below 1, or the dataset is empty.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> model = nn.Linear(2, 3)
        >>> data = TensorDataset(torch.rand(5, 2), torch.tensor([0, 1, 2, 0, 1]))
        >>> g = torch.Generator().manual_seed(0)
        >>> table = prediction_table(model, data, num_samples=100, generator=g)
        >>> table.shape, bool(torch.allclose(table.sum(1), torch.ones(5)))
        (torch.Size([5, 3]), True)
    """
    counts, _ = _dataset_counts(
        model,
        dataset,
        check_positive("sigma", sigma),
        num_samples,
        batch_size=batch_size,
        generator=generator,
        device=device,
        progress=progress,
        desc="prediction table",
    )
    return (counts.double() / num_samples).float()


def p_correct(
    model: nn.Module,
    dataset: Dataset,
    sigma: float,
    num_samples: int = 100,
    *,
    batch_size: int = 1000,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> Tensor:
    r"""Per-example noisy accuracy :math:`\hat p_i`: the fraction of noisy copies classified correctly.

    :math:`\hat p_i = \frac1n \#\{s : \arg\max f(x_i + \delta_s) = y_i\}` with ``n =
    num_samples`` draws :math:`\delta_s \sim \mathcal N(0, \sigma^2 I)`, in eval mode with the
    then-current model: Sun et al.'s statistic for discarding hard examples (``n = 100``) and for
    the sampling weights (``n = 16``, :func:`radius_weights`) :cite:`sun2025acr`. The official
    code measures it on the training split with its training transform.

    Args:
        model: The base classifier being trained (returns logits ``[N, K]``).
        dataset: Map-style dataset of ``(x, y, ...)`` items.
        sigma: Training noise level :math:`\sigma`.
        num_samples: Draws per example ``n``. Default: 100.
        batch_size: Forward batch of the sampling engine. Default: 1000.
        generator: Optional ``torch.Generator`` (any device) seeding every example's stream.
        device: Where the model runs. Default: the device of the model's parameters.
        progress: Show examples done and samples/s on stderr. Default: ``False``.

    Returns:
        ``float64`` tensor ``[N]`` on the CPU, multiples of ``1 / n``.

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: ``sigma`` is not positive, a count is below 1, or the dataset is empty.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> model = nn.Linear(2, 2)
        >>> with torch.no_grad():
        ...     _ = model.weight.copy_(torch.eye(2)), model.bias.zero_()
        >>> data = TensorDataset(torch.tensor([[5.0, 0.0], [0.0, 5.0]]), torch.tensor([0, 0]))
        >>> p_correct(model, data, 0.25, 16, generator=torch.Generator().manual_seed(0)).tolist()
        [1.0, 0.0]
    """
    counts, labels = _dataset_counts(
        model,
        dataset,
        check_positive("sigma", sigma),
        num_samples,
        batch_size=batch_size,
        generator=generator,
        device=device,
        progress=progress,
        desc="p_correct",
    )
    if int(labels.min()) < 0 or int(labels.max()) >= counts.shape[1]:
        raise ValueError(
            f"dataset labels must be class indices in [0, {counts.shape[1] - 1}], got "
            f"values in [{int(labels.min())}, {int(labels.max())}]"
        )
    return counts.gather(1, labels[:, None]).squeeze(1).double() / num_samples


def radius_weights(
    p: Tensor, num_samples: int = 16, clip: float = 0.75, alpha: float = 0.1
) -> Tensor:
    r"""Sun et al.'s sampling weights: an approximate certified radius divided by :math:`\sigma`.

    .. math:: w_i = \Phi^{-1}\Big(\underline{p}\big(\lfloor n \cdot
        \mathrm{clip}(\hat p_i, c, 1) \rfloor,\ n;\ \alpha\big)\Big)

    where :math:`\underline p(k, n; \alpha)` is the one-sided :math:`(1 - \alpha)`
    Clopper–Pearson lower bound (:func:`rsmooth.stats.clopper_pearson_lower`; the official
    ``proportion_confint(k, n, alpha=0.2, method="beta")[0]``) :cite:`sun2025acr`. With the
    official ``n = 16``, ``c = 0.75``, :math:`\alpha = 0.1` there are five values, from 0.1537
    (:math:`\hat p < 13/16`) to 1.1075 (:math:`\hat p = 1`).

    Args:
        p: Noisy accuracies :math:`\hat p` in :math:`[0, 1]` (from :func:`p_correct` with
            ``num_samples`` draws), any shape.
        num_samples: The ``n`` the accuracies were estimated with. Default: 16.
        clip: Lower clip :math:`c \in (0, 1]` of :math:`\hat p`. Default: 0.75.
        alpha: One-sided level of the lower bound. Default: 0.1.

    Returns:
        ``float64`` tensor of the shape of ``p`` (on the CPU).

    Raises:
        TypeError: ``p`` is not a tensor.
        ValueError: ``p`` is outside :math:`[0, 1]` or not finite, or an option is out of range.

    Example:
        >>> w = radius_weights(torch.tensor([0.5, 12 / 16, 13 / 16, 15 / 16, 1.0]))
        >>> [round(v, 4) for v in w.tolist()]
        [0.1537, 0.1537, 0.3286, 0.7649, 1.1075]
    """
    from scipy.stats import norm

    from rsmooth.stats import clopper_pearson_lower

    if not isinstance(p, Tensor):
        raise TypeError(f"p must be a torch.Tensor, got {type(p).__name__}")
    num_samples = check_int("num_samples", num_samples)
    clip = check_positive("clip", clip)
    if clip > 1:
        raise ValueError(f"clip must be in (0, 1], got {clip}")
    alpha = check_open_unit("alpha", alpha)
    values = p.detach().double().cpu()
    if not bool(torch.isfinite(values).all()) or bool(((values < 0) | (values > 1)).any()):
        raise ValueError("p must hold probabilities in [0, 1], got values outside it or NaN")
    counts = torch.floor(values.clamp(min=clip, max=1.0) * num_samples).long()
    lower = clopper_pearson_lower(counts.numpy(), np.int64(num_samples), alpha)
    return torch.from_numpy(np.asarray(norm.ppf(lower), dtype=np.float64)).reshape(p.shape)


class _IndexSampler(Sampler[int]):
    """Yields a fixed list of dataset indices (drawn when the epoch's sampler was made)."""

    def __init__(self, indices: list[int]) -> None:
        self.indices = indices

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class EasySampleSchedule:
    r"""Sun et al.'s discard-then-reweight sampling schedule, one sampler per epoch :cite:`sun2025acr`.

    - Epochs ``< discard_epoch`` (:math:`E_{ds}`): a plain shuffle of the whole dataset.
    - At the first epoch ``>= discard_epoch``: :func:`p_correct` with ``num_samples_discard``
      draws (the model as it is then, i.e. after epoch :math:`E_{ds} - 1`) and every example
      with :math:`\hat p < \tau` is dropped **for good** (kept: :math:`\hat p \ge \tau`,
      inclusive).
    - From then on, at epochs :math:`E_{ds}, E_{ds} + r, E_{ds} + 2r, \dots` the weights
      :func:`radius_weights` of :func:`p_correct` (``num_samples_weight`` draws) are recomputed
      on the kept examples, and every epoch draws ``epoch_size`` (default: the full dataset's
      length) kept examples **with replacement** in proportion to them.

    The loop builds its loader from :meth:`sampler` and switches the adversary with
    :meth:`adversarial` (or :meth:`AdaptiveNoiseLoss.set_epoch
    <rsmooth.AdaptiveNoiseLoss.set_epoch>` with ``adversarial_from=discard_epoch``). The state
    (:attr:`kept`, :attr:`weights`) is in :meth:`state_dict`, for resuming.

    Args:
        threshold: Discard threshold :math:`\tau \in [0, 1]` (official CIFAR-10: 0.5 / 0.4 / 0.4
            for :math:`\sigma` = 0.25 / 0.5 / 1.0).
        discard_epoch: :math:`E_{ds} \ge 0`, 0-based (official CIFAR-10: 60 / 70 / 60 of 150).
        sigma: Training noise level :math:`\sigma` for the estimates.
        reweight_every: Epochs between weight refreshes :math:`r`. Default: 10.
        num_samples_discard: Draws per example for the discard. Default: 100.
        num_samples_weight: Draws per example for the weights. Default: 16.
        epoch_size: Examples drawn per epoch after the discard. Default: ``None`` (the
            dataset's length).
        batch_size: Forward batch of the sampling engine. Default: 1000.
        generator: Optional ``torch.Generator`` for the estimates and the sampling.
        progress: Show the estimates' progress. Default: ``False``.

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: ``threshold`` outside :math:`[0, 1]`, a negative ``discard_epoch``, or a
            count below 1.

    Example:
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> model = nn.Linear(2, 2)
        >>> data = TensorDataset(torch.rand(8, 2), torch.tensor([0, 1] * 4))
        >>> schedule = EasySampleSchedule(
        ...     0.0, discard_epoch=1, sigma=0.25, generator=torch.Generator().manual_seed(0)
        ... )
        >>> [schedule.adversarial(e) for e in range(3)]
        [False, True, True]
        >>> len(DataLoader(data, batch_size=4, sampler=schedule.sampler(1, model, data)))
        2
        >>> schedule.kept.tolist()
        [0, 1, 2, 3, 4, 5, 6, 7]
    """

    def __init__(
        self,
        threshold: float,
        discard_epoch: int,
        *,
        sigma: float,
        reweight_every: int = 10,
        num_samples_discard: int = 100,
        num_samples_weight: int = 16,
        epoch_size: int | None = None,
        batch_size: int = 1000,
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise TypeError(f"threshold must be a real number, got {type(threshold).__name__}")
        if not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        self.threshold = float(threshold)
        self.discard_epoch = check_int("discard_epoch", discard_epoch, min=0)
        self.sigma = check_positive("sigma", sigma)
        self.reweight_every = check_int("reweight_every", reweight_every)
        self.num_samples_discard = check_int("num_samples_discard", num_samples_discard)
        self.num_samples_weight = check_int("num_samples_weight", num_samples_weight)
        self.epoch_size = None if epoch_size is None else check_int("epoch_size", epoch_size)
        self.batch_size = check_int("batch_size", batch_size)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        self.generator = generator
        self.progress = bool(progress)
        #: Dataset indices kept at the discard (``int64``), ``None`` before it.
        self.kept: Tensor | None = None
        #: Sampling weights of the kept examples (``float64``), ``None`` before the discard.
        self.weights: Tensor | None = None
        self._weights_epoch: int | None = None

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(threshold={self.threshold}, "
            f"discard_epoch={self.discard_epoch}, sigma={self.sigma}, "
            f"reweight_every={self.reweight_every})"
        )

    def adversarial(self, epoch: int) -> bool:
        """Whether the adversary is on at ``epoch`` (0-based): from ``discard_epoch`` on."""
        return check_int("epoch", epoch, min=0) >= self.discard_epoch

    def _cpu_generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(_base_seed(self.generator))

    def _estimate(self, model: nn.Module, dataset: Dataset, num_samples: int) -> Tensor:
        return p_correct(
            model,
            dataset,
            self.sigma,
            num_samples,
            batch_size=self.batch_size,
            generator=self.generator,
            progress=self.progress,
        )

    def sampler(self, epoch: int, model: nn.Module, dataset: Dataset) -> Sampler[int]:
        """The sampler of ``epoch``: pass it to ``DataLoader(dataset, sampler=...)``.

        Runs the discard and the weight refreshes that fall on ``epoch`` with ``model`` (in
        eval mode; its state is restored).

        Args:
            epoch: The epoch about to start (0-based), in increasing order across calls.
            model: The model being trained.
            dataset: The full training set (the indices refer to it).

        Returns:
            A sampler of dataset indices.

        Raises:
            ValueError: No example reaches the threshold.
        """
        epoch = check_int("epoch", epoch, min=0)
        size = len(dataset)  # type: ignore[arg-type]
        generator = self._cpu_generator()
        if epoch < self.discard_epoch:
            return _IndexSampler(torch.randperm(size, generator=generator).tolist())
        if self.kept is None:
            p = self._estimate(model, dataset, self.num_samples_discard)
            kept = torch.nonzero(p >= self.threshold).flatten()
            if kept.numel() == 0:
                raise ValueError(
                    f"threshold {self.threshold} discards every example (the largest noisy "
                    f"accuracy is {float(p.max()):.3g}); lower it or discard later"
                )
            self.kept = kept
        due = (epoch - self.discard_epoch) % self.reweight_every == 0
        if self.weights is None or (due and self._weights_epoch != epoch):
            p = self._estimate(model, Subset(dataset, self.kept.tolist()), self.num_samples_weight)
            weights = radius_weights(p, self.num_samples_weight)
            if not bool((weights > 0).all()):
                raise ValueError("radius_weights gave non-positive weights; raise the clip")
            self.weights, self._weights_epoch = weights, epoch
        draws = torch.multinomial(
            self.weights, self.epoch_size or size, replacement=True, generator=generator
        )
        return _IndexSampler(self.kept[draws].tolist())

    def state_dict(self) -> dict[str, Any]:
        """The schedule's state (the kept indices and the weights), for a checkpoint."""
        return {"kept": self.kept, "weights": self.weights, "weights_epoch": self._weights_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the state saved by :meth:`state_dict`."""
        self.kept, self.weights = state["kept"], state["weights"]
        self._weights_epoch = state["weights_epoch"]
