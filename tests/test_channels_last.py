"""channels_last models and inputs in every criterion and attack.

A channels_last batch must reach the model as channels_last (the noise and the replicated copies
keep the inputs' memory format), and the results must equal those of the standard layout: the
noise values do not depend on the layout, so only the convolution's summation order differs.
"""

from __future__ import annotations

import pytest
import torch
from criteria_table import ATTACKS, CRITERIA
from torch import nn

from rsmooth.functional import replicate, sample_noise

CL = torch.channels_last


class FormatSpy(nn.Module):
    """Records, for every forward, whether the batch was channels_last."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.formats: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.formats.append(x.is_contiguous(memory_format=CL) and not x.is_contiguous())
        return self.model(x)


def _cnn() -> nn.Module:
    torch.manual_seed(0)  # tests may seed globally; the library never does
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10)
    )


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return torch.rand(5, 3, 8, 8, generator=g), torch.randint(0, 10, (5,), generator=g)


def _both_layouts() -> tuple[FormatSpy, FormatSpy]:
    standard = FormatSpy(_cnn())
    last = FormatSpy(_cnn().to(memory_format=CL))
    assert last.model[0].weight.is_contiguous(memory_format=CL)
    return standard, last


def test_noise_and_copies_keep_the_layout_and_the_values():
    x, _ = _batch()
    x_cl = x.contiguous(memory_format=CL)
    noise = sample_noise(x, 0.5, 3, generator=torch.Generator().manual_seed(0))
    noise_cl = sample_noise(x_cl, 0.5, 3, generator=torch.Generator().manual_seed(0))
    assert noise.is_contiguous()
    assert noise_cl.is_contiguous(memory_format=CL) and not noise_cl.is_contiguous()
    assert torch.equal(noise, noise_cl)
    copies = replicate(x_cl, 3)
    assert copies.is_contiguous(memory_format=CL) and not copies.is_contiguous()
    assert torch.equal(copies, replicate(x, 3))
    # 5-D inputs in channels_last_3d, and layouts that are not channels-last, pass through.
    v = torch.rand(2, 3, 2, 4, 4).contiguous(memory_format=torch.channels_last_3d)
    assert replicate(v, 2).is_contiguous(memory_format=torch.channels_last_3d)
    t = torch.rand(4, 6).t()
    assert torch.equal(replicate(t, 2), replicate(t.contiguous(), 2))


@pytest.mark.parametrize("name", sorted(CRITERIA))
def test_criterion_with_channels_last(name):
    entry = CRITERIA[name]
    x, y = _batch()
    standard, last = _both_layouts()
    reference = entry.call(entry.make(torch.Generator().manual_seed(0)), standard, x, y)
    reference.backward()
    loss = entry.call(
        entry.make(torch.Generator().manual_seed(0)), last, x.contiguous(memory_format=CL), y
    )
    loss.backward()
    assert last.formats and all(last.formats), (
        f"model saw non-channels_last batches: {last.formats}"
    )
    assert not any(standard.formats)
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-6)
    for p, q in zip(last.parameters(), standard.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_with_channels_last(name):
    entry = ATTACKS[name]
    x, y = _batch()
    standard, last = _both_layouts()
    reference = entry.call(entry.make(torch.Generator().manual_seed(0)), standard, x, y)
    x_adv = entry.call(
        entry.make(torch.Generator().manual_seed(0)), last, x.contiguous(memory_format=CL), y
    )
    assert last.formats and all(last.formats)
    assert x_adv.shape == reference.shape
    torch.testing.assert_close(x_adv, reference, rtol=1e-4, atol=1e-5)
