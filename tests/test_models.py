"""The papers' reference models: every architecture honours the model contract and has the published layers."""

from __future__ import annotations


import pytest
import torch
from torch import nn

from robustkit.errors import ParameterError
from robustkit.host import make_host
from robustkit.models import Classifier, build_model
from robustkit.essentials import paper_models
from robustkit.testing.contracts import check_model_outputs as check_contract, image_info as info

HOST = make_host()
PAPER_MODELS = sorted(e.name for e in HOST.models if e.plugin == "paper-models")
SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]


# --- paper models -------------------------------------------------------------------------------


def test_paper_models_are_registered() -> None:
    expected = {"madry-cnn", "shaham-cnn", "lenet", "convpool-cnn", "wide-resnet", "wrn-32-10", "wrn-40-2", "vgg",
                "resnet18-cifar", "preact-resnet18"}
    assert expected <= set(PAPER_MODELS)
    for name in expected:
        entry = HOST.models.get(name)
        assert entry.plugin == "paper-models" and entry.description
        assert not {"num_classes", "in_channels", "image_size"} & {p.name for p in entry.declared_params()}


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", PAPER_MODELS)
def test_paper_model_contract(name: str, shape: tuple[int, int, int]) -> None:
    channels, size, _ = shape
    torch.manual_seed(0)
    model = build_model(HOST, name, info(channels, size))
    assert isinstance(model, Classifier) and model.spec.name == name
    huge = sum(p.numel() for p in model.parameters()) > 20_000_000  # the CIFAR WRNs: one image keeps this quick
    check_contract(model, channels, size, batch=1 if huge else 2)


def test_madry_cnn_layers_on_mnist() -> None:
    net = paper_models.MadryCNN(10, 1, (28, 28))
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    fcs = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert [(c.out_channels, c.kernel_size, c.padding) for c in convs] == [(32, (5, 5), (2, 2)), (64, (5, 5), (2, 2))]
    assert [(f.in_features, f.out_features) for f in fcs] == [(64 * 7 * 7, 1024), (1024, 10)]


def test_shaham_cnn_layers_on_padded_mnist() -> None:
    net = paper_models.ShahamCNN(10, 1, (32, 32))
    pools = [m for m in net.modules() if isinstance(m, nn.MaxPool2d)]
    assert [p.kernel_size for p in pools] == [(3, 3), (2, 2)]
    assert [(f.in_features, f.out_features) for f in net.modules() if isinstance(f, nn.Linear)] == [(256, 200), (200, 10)]


def test_lenet_layers_match_caffe() -> None:
    net = paper_models.LeNet(10, 1, (28, 28))
    assert [c.out_channels for c in net.modules() if isinstance(c, nn.Conv2d)] == [20, 50]
    assert not any(isinstance(m, nn.ReLU) for m in net.features)  # Caffe's LeNet convs are linear
    assert [(f.in_features, f.out_features) for f in net.modules() if isinstance(f, nn.Linear)] == [(800, 500), (500, 10)]


def test_convpool_cnn_layers() -> None:
    net = paper_models.ConvPoolCNN(100, 3, (32, 32))
    assert [c.out_channels for c in net.modules() if isinstance(c, nn.Conv2d)] == [64, 128, 128, 256, 256, 512, 100]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert all(m.negative_slope == 0.2 for m in net.modules() if isinstance(m, nn.LeakyReLU))


@pytest.mark.parametrize("name, units, widths", [("wrn-32-10", 5, (16, 160, 320, 640)),
                                                 ("wrn-40-2", 6, (16, 32, 64, 128))])
def test_rlfat_wide_resnets(name: str, units: int, widths: tuple[int, ...]) -> None:
    net = build_model(HOST, name, info(3, 32)).net
    blocks = list(net.blocks)
    assert len(blocks) == 3 * units
    assert net.stem.out_channels == widths[0]
    assert [blocks[i * units].conv1.out_channels for i in range(3)] == list(widths[1:])
    assert [blocks[i * units].conv1.stride for i in range(3)] == [(1, 1), (2, 2), (2, 2)]


def test_wide_resnet_params() -> None:
    net = build_model(HOST, "wide-resnet", info(1, 8), {"depth": 16, "widen_factor": 2}).net
    assert len(net.blocks) == 6 and net.fc.in_features == 128
    net = build_model(HOST, "wide-resnet", info(1, 8), {"units": 1, "widths": "4,8,8,16"}).net
    assert len(net.blocks) == 3 and net.fc.in_features == 16
    with pytest.raises(ParameterError, match="6n \\+ 4"):
        build_model(HOST, "wide-resnet", info(1, 8), {"depth": 20})
    with pytest.raises(ParameterError, match="must not decrease"):
        build_model(HOST, "wide-resnet", info(1, 8), {"widths": "16,32,16"})


def test_vgg_configs_and_width() -> None:
    net = build_model(HOST, "vgg", info(3, 32), {"config": "vgg11", "width": 0.25}).net
    convs = [c.out_channels for c in net.modules() if isinstance(c, nn.Conv2d)]
    assert convs == [16, 32, 64, 64, 128, 128, 128, 128]
    with pytest.raises(ParameterError, match="config"):
        build_model(HOST, "vgg", info(3, 32), {"config": "vgg99"})


def _param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name, params, expected", [
    # conv1 1,728 + bn1 128 + stages 147,968 / 525,568 / 2,099,712 / 8,393,728 + FC 5,130
    ("resnet18-cifar", {}, 11_173_962),
    # as ResNet-18, less the stem BN (128) and the shortcut BNs (1,792), and each stage's first block normalizes
    # its input (64/128/256 channels) instead of its output (128/256/512): 896 fewer
    ("preact-resnet18", {}, 11_171_146),
    ("preact-resnet18", {"final_bn": True}, 11_171_146 + 2 * 512),  # He et al.'s final BN
])
def test_cifar_resnet18_parameter_counts(name: str, params: dict, expected: int) -> None:
    assert _param_count(build_model(HOST, name, info(3, 32), params).net) == expected


@pytest.mark.parametrize("name", ["resnet18-cifar", "preact-resnet18"])
def test_cifar_resnet18_stem_and_stages(name: str) -> None:
    net = build_model(HOST, name, info(3, 32)).net
    assert (net.conv1.kernel_size, net.conv1.stride, net.conv1.out_channels) == ((3, 3), (1, 1), 64)
    assert not any(isinstance(m, nn.MaxPool2d) for m in net.modules())  # no ImageNet max-pool
    stages = [net.layer1, net.layer2, net.layer3, net.layer4]
    assert [len(s) for s in stages] == [2, 2, 2, 2]
    assert [(s[0].conv1.out_channels, s[0].conv1.stride) for s in stages] == [
        (64, (1, 1)), (128, (2, 2)), (256, (2, 2)), (512, (2, 2))]
    assert net.linear.in_features == 512
    # the parameter names of the common CIFAR code (and RobustBench's zoo), so its checkpoints load
    keys = set(net.state_dict())
    shortcut = {"layer2.0.shortcut.0.weight", "layer2.0.shortcut.1.running_var"} if name == "resnet18-cifar" \
        else {"layer2.0.shortcut.0.weight", "layer1.0.bn1.running_mean"}
    assert shortcut | {"conv1.weight", "linear.weight", "linear.bias"} <= keys
    assert not any(k.startswith("layer1.0.shortcut") for k in keys)


@pytest.mark.parametrize("name", ["resnet18-cifar", "preact-resnet18"])
@pytest.mark.parametrize("channels, size", [(3, 32), (1, 8), (3, 8)])
def test_cifar_resnet18_output_shapes(name: str, channels: int, size: int) -> None:
    net = build_model(HOST, name, info(channels, size, classes=7)).net.eval()
    with torch.no_grad():
        assert tuple(net(torch.rand(3, channels, size, size)).shape) == (3, 7)
    maps = []
    hooks = [stage.register_forward_hook(lambda _m, _i, out: maps.append(tuple(out.shape[-2:])))
             for stage in (net.layer1, net.layer2, net.layer3, net.layer4)]
    with torch.no_grad():
        net(torch.rand(1, channels, size, size))
    for hook in hooks:
        hook.remove()
    assert maps == ([(32, 32), (16, 16), (8, 8), (4, 4)] if size == 32 else [(8, 8), (4, 4), (2, 2), (1, 1)])


def test_cifar_resnet18_width() -> None:
    net = build_model(HOST, "resnet18-cifar", info(3, 32), {"width": 0.125}).net
    assert [s[0].conv1.out_channels for s in (net.layer1, net.layer2, net.layer3, net.layer4)] == [8, 16, 32, 64]
    assert _param_count(net) < 11_173_962 / 50
    with pytest.raises(ParameterError, match="width"):
        build_model(HOST, "preact-resnet18", info(3, 32), {"width": 0})


@pytest.mark.parametrize("name", ["madry-cnn", "shaham-cnn", "lenet", "convpool-cnn"])
def test_width_multiplier_shrinks_small_cnns(name: str) -> None:
    full = build_model(HOST, name, info(1, 28))
    tiny = build_model(HOST, name, info(1, 28), {"width": 0.25})
    assert sum(p.numel() for p in tiny.parameters()) < sum(p.numel() for p in full.parameters()) / 4
    check_contract(tiny, 1, 28)
    with pytest.raises(ParameterError, match="width"):
        build_model(HOST, name, info(1, 28), {"width": 0})
