"""Model plugins: every paper architecture honours the model contract; timm models adapt and load local weights."""

from __future__ import annotations

import time

import pytest
import safetensors.torch
import torch
from torch import nn

from robustkit.data import DatasetInfo
from robustkit.errors import ParameterError, RobustkitError
from robustkit.host import make_host
from robustkit.models import Classifier, build_model
from robustkit.essentials import paper_models
from robustkit_timm import models as timm_models

HOST = make_host()
PAPER_MODELS = sorted(e.name for e in HOST.models if not e.name.startswith(timm_models.PREFIX))
SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]


def info(channels: int, size: int, classes: int = 10) -> DatasetInfo:
    return DatasetInfo(name=f"test-{channels}x{size}", num_classes=classes, channels=channels,
                       image_size=(size, size), mean=(0.5,) * channels, std=(0.25,) * channels)


def check_contract(model: nn.Module, channels: int, size: int, classes: int = 10, batch: int = 2,
                   nonzero_grad: bool = True) -> None:
    """N x K finite logits for images in [0, 1], and a finite gradient reaching the input."""
    x = torch.rand(batch, channels, size, size, requires_grad=True)
    out = model(x)
    assert isinstance(out, torch.Tensor) and tuple(out.shape) == (batch, classes)
    assert torch.isfinite(out).all()
    out.logsumexp(dim=1).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    if nonzero_grad:
        assert x.grad.abs().sum() > 0


# --- paper models -------------------------------------------------------------------------------


def test_paper_models_are_registered() -> None:
    expected = {"madry-cnn", "shaham-cnn", "lenet", "convpool-cnn", "wide-resnet", "wrn-32-10", "wrn-40-2", "vgg"}
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


@pytest.mark.parametrize("name", ["madry-cnn", "shaham-cnn", "lenet", "convpool-cnn"])
def test_width_multiplier_shrinks_small_cnns(name: str) -> None:
    full = build_model(HOST, name, info(1, 28))
    tiny = build_model(HOST, name, info(1, 28), {"width": 0.25})
    assert sum(p.numel() for p in tiny.parameters()) < sum(p.numel() for p in full.parameters()) / 4
    check_contract(tiny, 1, 28)
    with pytest.raises(ParameterError, match="width"):
        build_model(HOST, name, info(1, 28), {"width": 0})


# --- timm -----------------------------------------------------------------------------------------


def test_every_timm_model_is_listed() -> None:
    import timm

    timm_entries = HOST.models.list(f"{timm_models.PREFIX}*")
    assert {e.name for e in timm_entries} == {f"timm:{n}" for n in timm.list_models()}
    entry = HOST.models.get("timm:resnet18")
    assert entry.info["library"] == "timm" and entry.plugin == "timm-models"
    assert {p.name for p in entry.declared_params()} >= {"weights", "resize", "drop_rate", "kwargs"}


def test_timm_wildcard_listing() -> None:
    names = [e.name for e in HOST.models.list("timm:resnet*")]
    assert "timm:resnet18" in names and "timm:resnet50" in names
    assert all(n.startswith("timm:resnet") for n in names)


@pytest.mark.parametrize("name, shape, resized", [
    ("resnet18", (1, 8, 8), None),
    ("resnet18", (3, 32, 32), None),
    ("vit_tiny_patch16_224", (1, 8, 8), (16, 16)),  # one 16x16 patch needs at least 16x16 inputs
    ("vit_tiny_patch16_224", (3, 32, 32), None),  # built with img_size=32: 2x2 patches
    ("convnext_atto", (1, 8, 8), (32, 32)),  # stride-32 stem and downsamples need 32x32
])
def test_timm_models_adapt_to_small_images(name: str, shape: tuple[int, int, int],
                                           resized: tuple[int, int] | None) -> None:
    channels, size, _ = shape
    torch.manual_seed(0)
    model = build_model(HOST, f"timm:{name}", info(channels, size))
    hooks = [h for h in model.net._forward_pre_hooks.values() if isinstance(h, timm_models.ResizeInput)]
    assert [h.size for h in hooks] == ([resized] if resized else [])
    if name.startswith("vit") and not resized:
        assert model.net.patch_embed.grid_size == (size // 16, size // 16)
    check_contract(model, channels, size)


def test_timm_resize_param_and_kwargs() -> None:
    model = build_model(HOST, "timm:resnet18", info(1, 8), {"resize": 32, "drop_rate": 0.1,
                                                             "kwargs": "global_pool=max"})
    assert [h.size for h in model.net._forward_pre_hooks.values()] == [(32, 32)]
    assert model.net.drop_rate == 0.1 and model.net.global_pool.pool_type == "max"
    check_contract(model, 1, 8)
    with pytest.raises(ParameterError, match="foo"):
        build_model(HOST, "timm:resnet18", info(1, 8), {"kwargs": "foo=1"})
    with pytest.raises(ParameterError, match="pretrained"):
        build_model(HOST, "timm:resnet18", info(1, 8), {"kwargs": "pretrained=true"})


def test_timm_never_asks_for_pretrained_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    import timm

    calls: list[dict] = []
    original = timm.create_model

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(timm, "create_model", spy)
    build_model(HOST, "timm:resnet18", info(1, 8))
    assert calls and all(c["pretrained"] is False for c in calls)


@pytest.fixture(scope="module")
def resnet_weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[Classifier, dict]:
    """A 1-channel, 10-class timm resnet18 and its weights saved as safetensors, torch and a classifier dict."""
    torch.manual_seed(1)
    model = build_model(HOST, "timm:resnet18", info(1, 8)).eval()
    folder = tmp_path_factory.mktemp("weights")
    paths = {"safetensors": folder / "r18.safetensors", "torch": folder / "r18.pt",
             "classifier": folder / "classifier.safetensors", "truncated": folder / "bad.safetensors"}
    net_state = {k: v.contiguous() for k, v in model.net.state_dict().items()}
    safetensors.torch.save_file(net_state, paths["safetensors"])
    torch.save({"state_dict": net_state}, paths["torch"])
    safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, paths["classifier"])
    paths["truncated"].write_bytes(paths["safetensors"].read_bytes()[:1000])
    return model, paths


@pytest.mark.parametrize("kind", ["safetensors", "torch", "classifier"])
def test_timm_local_weights_round_trip(resnet_weights: tuple[Classifier, dict], kind: str) -> None:
    model, paths = resnet_weights
    loaded = build_model(HOST, "timm:resnet18", info(1, 8), {"weights": str(paths[kind])}).eval()
    assert loaded.spec.params["weights"] == str(paths[kind])
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(model(x), loaded(x), atol=1e-6)


def test_timm_weights_adapt_head_and_channels(resnet_weights: tuple[Classifier, dict]) -> None:
    model, paths = resnet_weights
    five = build_model(HOST, "timm:resnet18", info(1, 8, classes=5), {"weights": str(paths["safetensors"])})
    assert five.net.fc.out_features == 5  # head re-initialized, the rest loaded
    assert torch.equal(five.net.layer1[0].conv1.weight, model.net.layer1[0].conv1.weight)
    rgb = build_model(HOST, "timm:resnet18", info(3, 8), {"weights": str(paths["safetensors"])})
    assert rgb.net.conv1.weight.shape[1] == 3


@pytest.mark.parametrize("channels", [2, 3, 4])
def test_timm_weights_stem_is_tiled_to_the_image_channels(resnet_weights: tuple[Classifier, dict],
                                                           channels: int) -> None:
    """A 1-channel file's stem, tiled and scaled by 1/channels: the same response to a grey image. Done by
    robustkit, so it holds on every timm (before 1.0.31 timm assumed 3-channel files and dropped 2 or 4)."""
    model, paths = resnet_weights
    built = build_model(HOST, "timm:resnet18", info(channels, 8), {"weights": str(paths["safetensors"])})
    stem = model.net.conv1.weight
    torch.testing.assert_close(built.net.conv1.weight, stem.repeat(1, channels, 1, 1) / channels)
    grey = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(built.net.conv1(grey.repeat(1, channels, 1, 1)), model.net.conv1(grey))


def test_timm_missing_weights_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(RobustkitError, match="does not exist") as err:
        build_model(HOST, "timm:resnet18", info(1, 8), {"weights": str(missing)})
    assert str(missing) in str(err.value) and "\n" not in str(err.value)


def test_timm_corrupt_or_foreign_weights(resnet_weights: tuple[Classifier, dict], tmp_path) -> None:  # type: ignore[no-untyped-def]
    _, paths = resnet_weights
    with pytest.raises(RobustkitError, match="cannot read") as err:
        build_model(HOST, "timm:resnet18", info(1, 8), {"weights": str(paths["truncated"])})
    assert "\n" not in str(err.value)
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(RobustkitError, match="cannot read"):
        build_model(HOST, "timm:resnet18", info(1, 8), {"weights": str(text)})
    with pytest.raises(RobustkitError, match="does not fit|matches"):
        build_model(HOST, "timm:resnet34", info(1, 8), {"weights": str(paths["safetensors"])})


def test_timm_names_come_from_cache(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    import timm

    monkeypatch.setenv("ROBUSTKIT_CACHE_DIR", str(tmp_path))
    assert timm_models.model_names() == timm.list_models()
    (cache,) = tmp_path.glob("timm-models-*.txt")
    cache.write_text("resnet18\nmy_custom_net\n")  # what is in the cache is what gets registered
    assert timm_models.model_names() == ["resnet18", "my_custom_net"]


def test_registering_timm_models_is_fast() -> None:
    timm_models.model_names()  # make sure the name cache exists
    start = time.perf_counter()
    host = make_host(plugins=[("timm-models", timm_models)], entry_points=False)
    elapsed = time.perf_counter() - start
    assert len(host.models) > 1000
    assert elapsed < 3.0, f"registering {len(host.models)} timm models took {elapsed:.2f} s"
