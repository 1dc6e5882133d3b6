import re

import pytest
import torch
from runner_helpers import ROOT
from torch import nn

from rsmooth import models
from rsmooth.models import (
    ARCHITECTURES,
    NORMALIZATION,
    NormalizeLayer,
    get_model,
    load_research_checkpoint,
)

# Copies of shared/data/reference-archs/: manifests of the research code's state dicts, two
# checkpoints it wrote and the logits they give (see the README there).
REFERENCE = ROOT / "tests" / "data" / "reference-archs"


def manifest(arch):
    lines = (REFERENCE / f"{arch}.tsv").read_text().splitlines()
    assert lines[0] == "key\tshape"
    return [tuple(line.split("\t")) for line in lines[1:]]


def layout(model):
    return [
        (key, "x".join(map(str, value.shape)) or "scalar")
        for key, value in model.state_dict().items()
    ]


def save_research(path, model, arch):
    torch.save({"epoch": 1, "arch": arch, "state_dict": model.state_dict(), "optimizer": {}}, path)


# ---------------------------------------------------------------------------- reference data
@pytest.mark.parametrize(
    ("arch", "dataset"),
    [("lenet", "mnist"), ("cifar_resnet20", "cifar10"), ("cifar_resnet110", "cifar10")],
)
def test_every_key_and_shape_of_the_research_manifest(arch, dataset):
    expected = manifest(arch)
    assert len(expected) > 5
    assert layout(get_model(arch, dataset)) == expected


@pytest.mark.parametrize(("arch", "dataset"), [("lenet", "mnist"), ("cifar_resnet20", "cifar10")])
def test_reference_checkpoints_reproduce_the_research_logits(arch, dataset):
    model = load_research_checkpoint(REFERENCE / f"{arch}.checkpoint.pth.tar", dataset)
    assert not any(m.training for m in model.modules())
    expected = torch.load(REFERENCE / f"{arch}.expected.pt", weights_only=True)
    with torch.no_grad():
        logits = model(expected["inputs"])
    torch.testing.assert_close(logits, expected["logits"], atol=1e-5, rtol=0)


@pytest.mark.parametrize(("dataset", "classes"), [("cifar100", 100), ("imagenet", 1000)])
def test_reference_checkpoint_with_another_datasets_normalisation_is_refused(dataset, classes):
    # issue 20, item 5: these loaded silently, and the logits moved by up to 4.2
    path = REFERENCE / "cifar_resnet20.checkpoint.pth.tar"
    message = (
        rf"dataset '{dataset}' has {classes} classes but arch 'cifar_resnet20' has 10: .*"
        r"one of \['cifar10'\]"
    )
    with pytest.raises(ValueError, match=message):
        load_research_checkpoint(path, dataset)
    with pytest.raises(ValueError, match=message):
        models.load_model(path, dataset=dataset)
    with pytest.raises(ValueError, match=message):
        get_model("cifar_resnet20", dataset)


def test_cifar100_resnet110_has_the_research_layout_with_100_classes():
    # cifar_resnet110's manifest, with the last layer widened to 100 classes
    expected = [
        (key, "100x64" if key == "1.fc.weight" else "100" if key == "1.fc.bias" else shape)
        for key, shape in manifest("cifar_resnet110")
    ]
    model = get_model("cifar100_resnet110", "cifar100")
    assert layout(model) == expected
    assert model[0].mean.tolist() == pytest.approx([0.5071, 0.4867, 0.4408])


# Not in the default run (pyproject's addopts: -m "not torchvision"): it needs a torchvision built
# for the installed torch, which pip cannot guarantee (PyPI's torchvision does not load beside
# PyTorch's CPU wheel). Run it with: python -m pytest -m torchvision tests/test_models.py
@pytest.mark.torchvision
def test_resnet50_has_the_data_parallel_layout():
    from rsmooth.models import resnet50

    assert resnet50().fc.out_features == 1000
    assert resnet50(num_classes=10).fc.out_features == 10
    keys = list(get_model("resnet50", "imagenet").state_dict())
    assert keys[0] == "1.module.conv1.weight"
    assert "1.module.layer4.2.bn3.running_var" in keys
    assert keys[-1] == "1.module.fc.bias"


def test_resnet50_without_torchvision_says_how_to_install(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "torchvision", None)
    monkeypatch.setitem(__import__("sys").modules, "torchvision.models", None)
    with pytest.raises(ModuleNotFoundError, match=re.escape("rsmooth[models]")):
        get_model("resnet50", "imagenet")


# ---------------------------------------------------------------------------- normalisation
def fake_torchvision(monkeypatch):
    """A stand-in for torchvision.models.resnet50 (PyPI's torchvision does not load beside
    PyTorch's CPU wheel): the ImageNet normalisation is tested without the real network."""
    import types

    def resnet50(weights=None, num_classes=1000):
        net = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, num_classes))
        net.fc = net[2]
        return net

    module = types.ModuleType("torchvision.models")
    module.resnet50 = resnet50
    monkeypatch.setitem(__import__("sys").modules, "torchvision", types.ModuleType("torchvision"))
    monkeypatch.setitem(__import__("sys").modules, "torchvision.models", module)


@pytest.mark.parametrize("dataset", sorted(NORMALIZATION))
def test_first_layer_is_the_dataset_normalisation(dataset, monkeypatch):
    arch = "lenet" if NORMALIZATION[dataset] is None else "cifar_resnet20"
    if dataset == "cifar100":
        arch = "cifar100_resnet110"
    if dataset == "imagenet":
        fake_torchvision(monkeypatch)
        arch = "resnet50"
    model = get_model(arch, dataset)
    x = torch.rand(2, 1 if arch == "lenet" else 3, 32 if arch != "lenet" else 28, 28)
    if arch != "lenet":
        x = torch.rand(2, 3, 32, 32)
    if NORMALIZATION[dataset] is None:
        assert isinstance(model[0], nn.Identity)
        return
    mean, std = NORMALIZATION[dataset]
    expected = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(model[0](x), expected)
    assert not any(key.startswith("0.") for key in model.state_dict())


def test_normalize_layer_moves_with_the_model_and_keeps_the_dtype():
    layer = NormalizeLayer((0.5,), (0.25,)).to(torch.float64)
    out = layer(torch.ones(1, 1, 2, 2, dtype=torch.float64))
    assert out.dtype == torch.float64 and torch.all(out == 2.0)
    assert "mean=(0.5,), std=(0.25,)" in repr(layer)


@pytest.mark.parametrize(
    ("mean", "std", "match"),
    [
        ((0.5, 0.5), (0.2,), "same positive length, got 2 and 1"),
        ((), (), "same positive length, got 0 and 0"),
        ((0.5,), (0.0,), r"std must be positive, got \(0.0,\)"),
        ((0.5,), (float("nan"),), "std must be positive"),
    ],
)
def test_normalize_layer_errors(mean, std, match):
    with pytest.raises(ValueError, match=match):
        NormalizeLayer(mean, std)


def test_normalize_layer_rejects_other_channel_counts():
    with pytest.raises(
        ValueError, match=r"3 channels in dimension 1 .* got shape \(2, 1, 28, 28\)"
    ):
        NormalizeLayer((0.1, 0.2, 0.3), (1.0, 1.0, 1.0))(torch.rand(2, 1, 28, 28))


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("args", "exc", "match"),
    [
        (("vgg16", "cifar10"), ValueError, "arch must be one of .*'lenet', 'cifar_resnet20'.*got 'vgg16'"),
        ((3, "cifar10"), TypeError, "arch must be a str, got int"),
        (("lenet", "svhn"), ValueError, r"dataset must be one of \[.*'cifar10'.*\], got 'svhn'"),
        (("lenet", None), ValueError, "dataset must be given: the research checkpoint format does not record it"),
        (("lenet", "cifar10"), ValueError, "dataset 'cifar10' has 3-channel images but arch 'lenet' takes 1 channels"),
        (("cifar_resnet20", "mnist"), ValueError, "dataset 'mnist' has 1-channel images but arch 'cifar_resnet20' takes 3"),
    ],
)  # fmt: skip
def test_get_model_errors(args, exc, match):
    with pytest.raises(exc, match=match):
        get_model(*args)


def test_known_architectures_are_listed():
    assert ARCHITECTURES == (
        "lenet",
        "cifar_resnet20",
        "cifar_resnet110",
        "cifar100_resnet110",
        "resnet50",
    )


def test_checkpoint_without_a_dataset_is_rejected():
    with pytest.raises(ValueError, match=r"dataset must be given: .*\['cifar10', 'cifar100'"):
        load_research_checkpoint(REFERENCE / "lenet.checkpoint.pth.tar")


def test_not_a_checkpoint(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    with pytest.raises(ValueError, match=r"cannot load .*notes.txt with torch.load\(") as info:
        load_research_checkpoint(text, "mnist")
    assert "trusted=True" not in str(info.value)  # not a file that only needs trusting
    with pytest.raises(FileNotFoundError, match="no such checkpoint file: .*missing.pth.tar"):
        load_research_checkpoint(tmp_path / "missing.pth.tar", "mnist")


def test_a_bare_state_dict_is_not_a_research_checkpoint(tmp_path):
    torch.save(get_model("lenet", "mnist").state_dict(), tmp_path / "weights.pt")
    with pytest.raises(
        ValueError, match=r"not a research-format checkpoint .* keys \['1.conv1.bias'.*load_model"
    ):
        load_research_checkpoint(tmp_path / "weights.pt", "mnist")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="it holds a list"):
        load_research_checkpoint(tmp_path / "list.pt", "mnist")


def test_unknown_architecture_in_the_checkpoint(tmp_path):
    torch.save({"epoch": 1, "arch": "wrn28", "state_dict": {}}, tmp_path / "c.pth.tar")
    with pytest.raises(ValueError, match="arch must be one of .*'cifar_resnet110'.*got 'wrn28'"):
        load_research_checkpoint(tmp_path / "c.pth.tar", "cifar10")


def test_module_prefix_loads(tmp_path):
    # the whole Sequential saved under DataParallel: every key starts with "module." (issue 20,
    # item 11: this was refused with a Python snippet to strip it)
    model = get_model("lenet", "mnist")
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"epoch": 1, "arch": "lenet", "state_dict": state}, tmp_path / "c.pth.tar")
    loaded = load_research_checkpoint(tmp_path / "c.pth.tar", "mnist")
    assert torch.equal(loaded[1].fc2.weight, model[1].fc2.weight)


def test_module_prefix_and_other_differences_name_both(tmp_path):
    state = {f"module.{k}": v for k, v in get_model("lenet", "mnist").state_dict().items()}
    state["module.1.fc3.weight"] = state.pop("module.1.fc2.weight")
    torch.save({"epoch": 1, "arch": "lenet", "state_dict": state}, tmp_path / "c.pth.tar")
    with pytest.raises(ValueError) as info:
        load_research_checkpoint(tmp_path / "c.pth.tar", "mnist")
    message = str(info.value)
    assert "missing keys (8): 1.conv1.weight, 1.conv1.bias, 1.conv2.weight" in message
    assert "unexpected keys (8): module.1.conv1.weight" in message
    assert "compared without the 'module.' (DataParallel) levels" in message


def test_missing_and_unexpected_keys_without_a_prefix(tmp_path):
    state = get_model("lenet", "mnist").state_dict()
    state["1.fc3.weight"] = state.pop("1.fc2.weight")
    torch.save({"epoch": 1, "arch": "lenet", "state_dict": state}, tmp_path / "c.pth.tar")
    with pytest.raises(ValueError) as info:
        load_research_checkpoint(tmp_path / "c.pth.tar", "mnist")
    message = str(info.value)
    assert "missing keys (1): 1.fc2.weight; unexpected keys (1): 1.fc3.weight" in message
    assert "hint" not in message


def test_other_shapes_are_named(tmp_path):
    # a CIFAR-100 ResNet-110 saved under the 10-class name
    save_research(
        tmp_path / "c.pth.tar", get_model("cifar100_resnet110", "cifar100"), "cifar_resnet110"
    )
    with pytest.raises(
        ValueError, match=r"1.fc.weight: \(100, 64\) in the checkpoint, \(10, 64\) in the model"
    ):
        load_research_checkpoint(tmp_path / "c.pth.tar", "cifar10")


def test_checkpoint_and_dataset_channels_must_match():
    with pytest.raises(ValueError, match="dataset 'cifar10' has 3-channel images but arch 'lenet'"):
        load_research_checkpoint(REFERENCE / "lenet.checkpoint.pth.tar", "cifar10")


def test_round_trip_keeps_the_weights_and_the_batchnorm_statistics(tmp_path):
    model = get_model("cifar_resnet20", "cifar10")
    model.train()(torch.rand(4, 3, 32, 32))  # move the running statistics
    save_research(tmp_path / "c.pth.tar", model, "cifar_resnet20")
    loaded = load_research_checkpoint(tmp_path / "c.pth.tar", "cifar10")
    assert torch.equal(loaded[1].bn1.running_mean, model[1].bn1.running_mean)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x))


def test_module_docs_list_every_architecture():
    assert all(f"``{arch}``" in (models.__doc__ or "") for arch in ARCHITECTURES)


def test_a_missing_module_level_is_added():
    # resnet50's research layout has "1.module."; a checkpoint saved without DataParallel lacks it
    class Layout(nn.Module):
        def __init__(self):
            super().__init__()
            self.module = nn.Linear(2, 3)

    target = nn.Sequential(nn.Identity(), Layout())
    source = nn.Sequential(nn.Identity(), nn.Linear(2, 3))
    models._load_state(target, source.state_dict(), "test")
    assert torch.equal(target[1].module.weight, source[1].weight)
    assert models._key_mismatch(["a.weight"], ["a.weight"]) is None


# ---------------------------------------------------------------------------- load_model
# issue 20, items 10 and 11: one loader for the usual layouts, in Python and on the command line
def _reference():
    checkpoint = torch.load(REFERENCE / "cifar_resnet20.checkpoint.pth.tar", weights_only=True)
    expected = torch.load(REFERENCE / "cifar_resnet20.expected.pt", weights_only=True)
    return checkpoint["state_dict"], expected


def _prefixed(state, prefix):
    return {f"{prefix}{k}": v for k, v in state.items()}


def _bare(state):  # the network without the normalisation layer (layer "1." of the Sequential)
    return {k[2:]: v for k, v in state.items()}


# (name, what the file holds built from the research state dict, load_model keywords)
LAYOUTS = [
    ("research", lambda s: {"epoch": 1, "arch": "cifar_resnet20", "state_dict": s}, {}),
    ("research, DataParallel", lambda s: {"arch": "cifar_resnet20", "state_dict": _prefixed(s, "module.")}, {}),
    ("plain state dict", lambda s: s, {"arch": "cifar_resnet20"}),
    ("state_dict entry", lambda s: {"state_dict": s, "epoch": 3}, {"arch": "cifar_resnet20"}),
    ("model entry", lambda s: {"model": s, "optimizer": {}}, {"arch": "cifar_resnet20"}),
    ("DataParallel", lambda s: _prefixed(s, "module."), {"arch": "cifar_resnet20"}),
    ("torch.compile", lambda s: _prefixed(s, "_orig_mod."), {"arch": "cifar_resnet20"}),
    ("compiled under DDP", lambda s: _prefixed(s, "module._orig_mod."), {"arch": "cifar_resnet20"}),
    ("bare network", lambda s: _bare(s), {"arch": "cifar_resnet20"}),
    ("bare network, DataParallel", lambda s: _prefixed(_bare(s), "module."), {"arch": "cifar_resnet20"}),
    ("bare network, compiled", lambda s: {"model": _prefixed(_bare(s), "_orig_mod.")}, {"arch": "cifar_resnet20"}),
]  # fmt: skip


@pytest.mark.parametrize(("name", "build", "kwargs"), LAYOUTS, ids=[n for n, _, _ in LAYOUTS])
def test_load_model_reads_every_usual_layout(tmp_path, name, build, kwargs):
    state, expected = _reference()
    torch.save(build(state), tmp_path / "c.pt")
    model = models.load_model(tmp_path / "c.pt", dataset="cifar10", **kwargs)
    assert not model.training
    with torch.no_grad():
        torch.testing.assert_close(model(expected["inputs"]), expected["logits"], atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "build", [lambda s: s, lambda s: _prefixed(s, "module."), lambda s: {"model": s}]
)
def test_load_model_into_your_own_module(tmp_path, build):
    state, expected = _reference()
    torch.save(build(state), tmp_path / "c.pt")
    own = nn.Sequential(NormalizeLayer(*NORMALIZATION["cifar10"]), models.cifar_resnet20())
    loaded = models.load_model(tmp_path / "c.pt", model=own)
    assert loaded is own and not own.training
    with torch.no_grad():
        torch.testing.assert_close(own(expected["inputs"]), expected["logits"], atol=1e-5, rtol=0)


def test_load_model_into_a_compiled_module(tmp_path):
    state, _ = _reference()
    torch.save(_bare(state), tmp_path / "c.pt")
    network = models.cifar_resnet20()

    class Compiled(nn.Module):  # the state-dict layout of torch.compile's OptimizedModule
        def __init__(self):
            super().__init__()
            self._orig_mod = network

    models.load_model(tmp_path / "c.pt", model=Compiled())
    assert torch.equal(network.fc.weight, state["1.fc.weight"])


class _Args:
    """Stand-in for the argparse.Namespace that research scripts save next to the weights."""


@pytest.mark.parametrize(
    ("extra", "what"),
    [
        (lambda: __import__("argparse").Namespace(lr=0.1), "argparse.Namespace"),
        (lambda: __import__("numpy").float64(0.9), "numpy"),
    ],
)
def test_a_file_weights_only_refuses_gets_torchs_reason_whole_and_the_opt_in(tmp_path, extra, what):
    state, expected = _reference()
    path = tmp_path / "c.pth.tar"
    torch.save({"arch": "cifar_resnet20", "state_dict": state, "extra": extra()}, path)
    with pytest.raises(ValueError) as info:
        models.load_model(path, dataset="cifar10")
    message = str(info.value)
    assert "\x1b" not in message  # torch's reason has bold ANSI codes
    assert "not a PyTorch checkpoint" not in message
    assert f"Unsupported global: GLOBAL {what}" in message
    assert "types accepted by default with weights_only" in message  # torch's last sentence
    assert "trusted=True" in message and "--trust-checkpoint" in message
    assert "get_model(arch, dataset)" in message and "load_model('weights.pt'" in message
    model = models.load_model(path, dataset="cifar10", trusted=True)
    with torch.no_grad():
        torch.testing.assert_close(model(expected["inputs"]), expected["logits"], atol=1e-5, rtol=0)
    assert load_research_checkpoint(path, "cifar10", trusted=True)[1].fc.weight.shape == (10, 64)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_map_location_cuda_without_cuda_keeps_torchs_reason(tmp_path):
    torch.save(get_model("lenet", "mnist").state_dict(), tmp_path / "c.pt")
    with pytest.raises(ValueError) as info:
        models.load_model(tmp_path / "c.pt", arch="lenet", dataset="mnist", map_location="cuda")
    message = str(info.value)
    assert "torch.cuda.is_available() is False" in message
    assert "map_location='cpu' (the default)" in message


def test_a_whole_module_loads_only_when_trusted(tmp_path):
    network = models.lenet()
    torch.save(network, tmp_path / "whole.pt")
    with pytest.raises(ValueError, match="trusted=True"):
        models.load_model(tmp_path / "whole.pt")
    loaded = models.load_model(tmp_path / "whole.pt", trusted=True)
    assert isinstance(loaded, models.LeNet) and not loaded.training
    with pytest.raises(ValueError, match="returned as it is: leave out model=, arch= and dataset="):
        models.load_model(tmp_path / "whole.pt", trusted=True, arch="lenet", dataset="mnist")


@pytest.mark.parametrize(
    ("content", "kwargs", "exc", "match"),
    [
        ({"w": torch.zeros(1)}, {}, ValueError, r"holds a plain state dict \(keys \['w'\]\) without the research format's 'arch'.*arch= and dataset=.*model=.*--model rsmooth.models:get_model"),
        ([1, 2], {"arch": "lenet", "dataset": "mnist"}, ValueError, r"holds a list, which is none of the layouts rsmooth loads"),
        ({"net": {"w": torch.zeros(1)}, "epoch": 3}, {"arch": "lenet", "dataset": "mnist"}, ValueError, r"holds a dict with the keys \['epoch', 'net'\].*torch.load\(path\)\[key\]"),
        ({"arch": "lenet", "state_dict": {}}, {"arch": "cifar_resnet20", "dataset": "cifar10"}, ValueError, "arch 'cifar_resnet20' disagrees with the checkpoint's arch 'lenet'"),
        ({"w": torch.zeros(1)}, {"arch": "lenet"}, ValueError, "dataset must be given"),
        ({"w": torch.zeros(1)}, {"arch": "vgg"}, ValueError, "arch must be one of"),
        ({"w": torch.zeros(1)}, {"model": nn.Linear(1, 1), "dataset": "mnist"}, ValueError, "give either model= .* or arch= and dataset="),
        ({"w": torch.zeros(1)}, {"model": "net"}, TypeError, "model must be a torch.nn.Module, got str"),
        ({"w": torch.zeros(1)}, {"model": nn.Linear(1, 1), "trusted": 1}, TypeError, "trusted must be a bool, got int"),
        ({"weight": torch.zeros(2, 2)}, {"model": nn.Linear(2, 3, bias=False)}, ValueError, r"weight: \(2, 2\) in the checkpoint, \(3, 2\) in the model"),
    ],
)  # fmt: skip
def test_load_model_errors_name_the_fix(tmp_path, content, kwargs, exc, match):
    torch.save(content, tmp_path / "c.pt")
    with pytest.raises(exc, match=match):
        models.load_model(tmp_path / "c.pt", **kwargs)


def test_a_research_sequential_into_a_bare_network_names_the_fix(tmp_path):
    state, _ = _reference()
    torch.save(state, tmp_path / "c.pt")
    with pytest.raises(ValueError, match=r"holds the research code's nn.Sequential\(normalize"):
        models.load_model(tmp_path / "c.pt", model=models.cifar_resnet20())


def test_load_model_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such checkpoint file"):
        models.load_model(tmp_path / "none.pt", arch="lenet", dataset="mnist")
