import pytest
import torch
from torch import nn

from rsmooth._model_state import preserve_model_state


def model():
    m = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3), nn.Dropout(), nn.Linear(3, 2))
    m.train()
    m[2].eval()
    m[0].bias.requires_grad_(False)
    return m


def snapshot(m):
    return [x.training for x in m.modules()], [p.requires_grad for p in m.parameters()]


@pytest.mark.parametrize(
    ("train", "requires_grad"), [(True, True), (False, False), (None, None), (False, None)]
)
def test_sets_inside_and_restores_after(train, requires_grad):
    m = model()
    before = snapshot(m)
    with preserve_model_state(m, train=train, requires_grad=requires_grad):
        if train is not None:
            assert all(x.training is train for x in m.modules())
        if requires_grad is not None:
            assert all(p.requires_grad is requires_grad for p in m.parameters())
    assert snapshot(m) == before


def test_restores_after_exception():
    m = model()
    before = snapshot(m)
    with pytest.raises(KeyError), preserve_model_state(m, train=False, requires_grad=False):
        m.train()  # the body may even change things itself
        raise KeyError("x")
    assert snapshot(m) == before


def test_frozen_parameters_accumulate_no_grad():
    m = model()
    x = torch.rand(4, 2, requires_grad=True)
    with preserve_model_state(m, train=False, requires_grad=False):
        m(x).sum().backward()
    assert x.grad is not None
    assert all(p.grad is None for p in m.parameters())
