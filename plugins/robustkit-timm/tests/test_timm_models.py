"""timm models through the plugin: every name listed, small images adapted, local weights loaded, nothing downloaded."""

from __future__ import annotations

import time

import pytest
import safetensors.torch
import torch

from robustkit.errors import ParameterError, RobustkitError
from robustkit.host import make_host
from robustkit.models import Classifier, build_model
from robustkit.testing.contracts import check_model_outputs as check_contract, image_info as info
from robustkit_timm import models as timm_models

HOST = make_host()


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
