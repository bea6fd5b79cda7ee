"""Contract checks every registered component must pass, for robustkit's tests and every plugin's.

As timm tests every registered model, a plugin distribution parametrizes these over what it registers, so a
new attack or defense is covered the moment it registers::

    import pytest
    from robustkit.testing.contracts import check_attack, check_defense, registered

    @pytest.mark.parametrize("name", registered("attack", plugin="my-plugin"))
    def test_attack_contract(name):
        check_attack(name)

    @pytest.mark.parametrize("name", registered("defense", plugin="my-plugin"))
    def test_defense_contract(name, tmp_path):
        check_defense(name, tmp_path)

The checks run on the CPU with the component's declared ``cheap_params`` (a class attribute) on toy models
and data: they check that the pieces fit (shapes, ranges, budgets, seeding, checkpoints), not how strong an
attack or defense is; each component's own tests check that.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from robustkit.attacks import Attack, AttackResult, attack_budget
from robustkit.data import DatasetInfo
from robustkit.errors import RobustkitError
from robustkit.host import Host, make_host
from robustkit.models import Classifier, ModelSpec, Normalize

#: Classes of the toy model an attack is checked on.
TOY_CLASSES = 10


def registered(kind: str, plugin: str | None = None, host: Host | None = None) -> list[str]:
    """The names of ``kind`` (``attack``, ``defense``, ``model``, ...) registered, by ``plugin`` if given."""
    host = host or make_host()
    return [e.name for e in host.registries[kind] if plugin is None or e.plugin == plugin]


def cheap_params(factory: Any) -> dict[str, Any]:
    """The settings a component declares for cheap runs (``cheap_params``); ``{}`` when it declares none."""
    declared = getattr(factory, "cheap_params", None)
    return dict(declared) if isinstance(declared, Mapping) else {}


def toy_classifier(shape: tuple[int, int, int] = (1, 8, 8), classes: int = TOY_CLASSES, seed: int = 0) -> Classifier:
    """A seeded nonlinear classifier of ``shape`` images in [0, 1] (normalization inside, as every model has)."""
    torch.manual_seed(seed)
    channels, height, width = shape
    info = DatasetInfo("toy", classes, channels, (height, width), (0.5,) * channels, (0.25,) * channels)
    net = nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.Tanh(), nn.Flatten(),
                        nn.Linear(4 * height * width, classes))
    return Classifier(net, Normalize(info.mean, info.std), ModelSpec("toy-cnn", {}, info)).eval()


def image_info(channels: int, size: int, classes: int = 10) -> DatasetInfo:
    """A dataset description of ``channels`` x ``size`` x ``size`` images and ``classes`` classes."""
    return DatasetInfo(name=f"test-{channels}x{size}", num_classes=classes, channels=channels,
                       image_size=(size, size), mean=(0.5,) * channels, std=(0.25,) * channels)


def check_model_outputs(model: nn.Module, channels: int, size: int, classes: int = 10, batch: int = 2,
                        nonzero_grad: bool = True) -> None:
    """The model contract: ``N x K`` finite logits for images in [0, 1], and a finite gradient reaching the
    input (nonzero unless ``nonzero_grad`` is false)."""
    x = torch.rand(batch, channels, size, size, requires_grad=True)
    out = model(x)
    assert isinstance(out, torch.Tensor) and tuple(out.shape) == (batch, classes)
    assert torch.isfinite(out).all()
    out.logsumexp(dim=1).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    if nonzero_grad:
        assert x.grad.abs().sum() > 0


def check_attack(name: str, host: Host | None = None, n: int = 4) -> AttackResult | None:
    """Build attack ``name`` with its cheap settings and run it on a toy model; ``None`` for one registered as
    unavailable (which must then refuse to be built, in one line).

    Checked: it is an :class:`~robustkit.attacks.Attack`; the adversarial batch has the input's shape and
    dtype and lies in [0, 1]; a fixed-budget attack stays within its eps; two fresh instances with one seed
    give the same images (evaluation seeds each batch and relies on it). An attack whose class states a
    ``contract_skip`` reason is skipped with it.
    """
    host = host or make_host()
    entry = host.attacks.get(name)
    reason = getattr(entry.factory, "contract_skip", None)
    if reason:
        import pytest

        pytest.skip(f"{name}: {reason}")
    if entry.info.get("available", True) is False:
        try:
            host.attacks.create(name)
        except RobustkitError as err:
            assert "not available" in str(err), f"{name}: unavailable, but its error does not say so: {err}"
            return None
        raise AssertionError(f"{name} is registered as unavailable but was built")
    params = cheap_params(entry.factory)
    attack = host.attacks.create(name, params)
    assert isinstance(attack, Attack), f"{name} built a {type(attack).__name__}, not an Attack"
    shape = tuple(getattr(attack, "cheap_input", (1, 8, 8)))
    model = toy_classifier(shape)  # type: ignore[arg-type]
    images = torch.rand(n, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        labels = model(images).argmax(1)
    targets = (labels + 1) % TOY_CLASSES if entry.info.get("targeted_only") else None
    result = attack(model, images, labels, targets)
    adversarial = result.adversarial
    assert adversarial.shape == images.shape and adversarial.dtype == images.dtype, name
    assert float(adversarial.min()) >= 0.0 and float(adversarial.max()) <= 1.0, name
    budget = attack_budget(attack)
    if budget is not None:
        order = {"linf": float("inf"), "l2": 2.0, "l1": 1.0}[budget.norm]
        distance = (adversarial - images).flatten(1).norm(p=order, dim=1)
        assert float(distance.max()) <= budget.eps * (1 + 1e-4) + 1e-6, \
            f"{name} left its {budget.norm} ball: {float(distance.max())} > {budget.eps}"
    again = host.attacks.create(name, params)(model, images, labels, targets).adversarial
    assert torch.equal(adversarial, again), f"{name}: two fresh instances with one seed gave different images"
    return result


def check_defense(name: str, out_dir: Path, host: Host | None = None, model: str = "lenet") -> Any:
    """Train ``model`` with defense ``name`` (cheap settings) for one epoch on 32 digits, validate with one-step
    PGD and save to ``out_dir``; checks the loss is finite, the validation numbers are accuracies, and the saved
    checkpoint reloads to the model training returned. Returns the training result."""
    from torch.utils.data import Subset

    from robustkit.checkpoints import load_model, read_metadata
    from robustkit.data import ImageDataset
    from robustkit.devices import seed_everything
    from robustkit.models import build_model
    from robustkit.training import TrainConfig, train

    host = host or make_host()
    full = host.datasets.create("digits", {}, root=None)
    data = ImageDataset(full.info, Subset(full.train, range(32)), Subset(full.test, range(16)))
    seed_everything(0)
    net = build_model(host, model, data.info)
    config = TrainConfig(epochs=1, batch_size=16, seed=0, device="cpu", val_examples=8, val_eps=0.1, val_steps=1,
                         out_dir=out_dir)
    result = train(net, data, host.defenses.create(name, cheap_params(host.defenses.get(name).factory)), config,
                   host=host)
    row = result.metrics
    assert row["epoch"] == 1 and torch.isfinite(torch.tensor(row["train_loss"])), f"{name}: loss {row}"
    assert 0 <= row["val_clean_acc"] <= 1 and 0 <= row["val_pgd_acc"] <= row["val_clean_acc"], f"{name}: {row}"
    reloaded = load_model(out_dir, host=host)
    x = torch.stack([data.test[i][0] for i in range(4)])
    with torch.no_grad():
        assert torch.equal(reloaded(x), result.model(x)), f"{name}: the checkpoint is not what training returned"
    assert read_metadata(out_dir)["defense"]["name"] == name
    return result


def cli_params(params: Mapping[str, Any]) -> list[str]:
    """``--param k=v`` arguments for ``robustkit train`` from a parameter mapping (``None`` -> ``none``)."""
    def text(value: Any) -> str:
        return "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)

    return [arg for key, value in params.items() for arg in ("--param", f"{key}={text(value)}")]
