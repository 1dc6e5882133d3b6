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


def test_reference_checkpoint_with_another_dataset_gives_other_logits():
    # The normalisation layer matters: the same weights under CIFAR-100's statistics differ.
    path = REFERENCE / "cifar_resnet20.checkpoint.pth.tar"
    expected = torch.load(REFERENCE / "cifar_resnet20.expected.pt", weights_only=True)
    with torch.no_grad():
        logits = load_research_checkpoint(path, "cifar100")(expected["inputs"])
    assert (logits - expected["logits"]).abs().max() > 1e-3


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
@pytest.mark.parametrize("dataset", sorted(NORMALIZATION))
def test_first_layer_is_the_dataset_normalisation(dataset):
    arch = "lenet" if NORMALIZATION[dataset] is None else "cifar_resnet20"
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
    with pytest.raises(ValueError, match="notes.txt is not a PyTorch checkpoint"):
        load_research_checkpoint(text, "mnist")
    with pytest.raises(FileNotFoundError, match="no such checkpoint file: .*missing.pth.tar"):
        load_research_checkpoint(tmp_path / "missing.pth.tar", "mnist")


def test_a_bare_state_dict_is_not_a_research_checkpoint(tmp_path):
    torch.save(get_model("lenet", "mnist").state_dict(), tmp_path / "weights.pt")
    with pytest.raises(
        ValueError, match=r"not a research-format checkpoint .* keys \['1.conv1.bias'"
    ):
        load_research_checkpoint(tmp_path / "weights.pt", "mnist")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="it holds list"):
        load_research_checkpoint(tmp_path / "list.pt", "mnist")


def test_unknown_architecture_in_the_checkpoint(tmp_path):
    torch.save({"epoch": 1, "arch": "wrn28", "state_dict": {}}, tmp_path / "c.pth.tar")
    with pytest.raises(ValueError, match="arch must be one of .*'cifar_resnet110'.*got 'wrn28'"):
        load_research_checkpoint(tmp_path / "c.pth.tar", "cifar10")


def test_module_prefix_gives_a_hint(tmp_path):
    # the whole Sequential saved under DataParallel: every key starts with "module."
    state = {f"module.{k}": v for k, v in get_model("lenet", "mnist").state_dict().items()}
    torch.save({"epoch": 1, "arch": "lenet", "state_dict": state}, tmp_path / "c.pth.tar")
    with pytest.raises(ValueError) as info:
        load_research_checkpoint(tmp_path / "c.pth.tar", "mnist")
    message = str(info.value)
    assert "missing keys (8): 1.conv1.weight, 1.conv1.bias, 1.conv2.weight" in message
    assert "... (3 more)" in message
    assert "unexpected keys (8): module.1.conv1.weight" in message
    assert "hint: the checkpoint's keys have a 'module.' prefix" in message


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
        tmp_path / "c.pth.tar", get_model("cifar100_resnet110", "cifar10"), "cifar_resnet110"
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


def test_a_missing_module_level_gives_the_opposite_hint():
    # resnet50's research layout has "1.module."; a checkpoint saved without DataParallel lacks it
    expected = ["1.module.conv1.weight", "1.module.fc.weight"]
    message = models._key_mismatch(expected, ["1.conv1.weight", "1.fc.weight"])
    assert "missing keys (2): 1.module.conv1.weight, 1.module.fc.weight" in message
    assert "unexpected keys (2): 1.conv1.weight, 1.fc.weight" in message
    assert "hint: this architecture's keys have a 'module.' level" in message
    assert models._key_mismatch(expected, list(expected)) is None
