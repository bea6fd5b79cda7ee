"""robustkit's ``autoattack`` checked image by image against the authors' own package (PyPI ``pyautoattack`` 0.2,
Croce and Hein, the code RobustBench runs), on small models trained here in about a second.

Each case runs the same images with the same seed through

- robustkit's ``autoattack`` (default backend: torchattacks parts),
- robustkit's ``autoattack backend=original`` (the authors' package run one sub-attack at a time), and
- the authors' ``AutoAttack.run_standard_evaluation``, configured in this file (not with the plugin's code),

and asserts the same robust accuracy, the same set of robust images and the same adversarial images, bit for bit.

What makes them equal:

- the sub-attacks compute the same arithmetic (torchattacks' APGD, APGD-T, FAB and Square are ports of the
  authors' code), and every sub-attack reseeds torch's generator from the same seed when it starts (both
  packages call ``torch.random.manual_seed(seed)`` in ``perturb``), so the random starts and Square's draws
  are the same whatever ran before;
- each sub-attack receives exactly the images still robust after the previous ones, in order, as one batch.
  The authors' loop cuts the still-robust images of the whole set into batches of ``batch_size``, robustkit's
  chain attacks each evaluation batch on its own; so they meet the same batches when the images fit in one
  batch, as here (with several batches the random starts fall on other images: the same distribution, not the
  same draws);
- a candidate is checked as the sub-attack returned it (robustkit projects only one outside the threat), so a
  borderline image is judged on the same point;
- with fewer than 10 classes the authors' standard settings ask for 9 target classes and fail; robustkit caps the
  target count at ``K - 1`` and the reference here is given the same cap.

Reduced budgets (``version=custom``, the same settings given to both sides) keep the cases to seconds; one case
runs the standard version (100 steps, 9 targets, 5000 queries). The ``split`` model sends half the images
through a quantized input, whose gradient is zero, so gradient attacks fail on those and Square has work: in
its chain every sub-attack fools at least one image.
"""

from __future__ import annotations

import pytest
import torch
from pyautoattack import AutoAttack as Original
from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
from torch import nn

from robustkit.data import stack
from robustkit.host import make_host
from robustkit_autoattack.autoattack import AutoAttack

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NORMS = {"linf": "Linf", "l2": "L2"}


def digits(classes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The embedded 8x8 digits (train and test) with labels below ``classes``."""
    data = make_host().datasets.create("digits", {}, root=None)
    (xtr, ytr), (xte, yte) = stack(data.train), stack(data.test)
    return xtr[ytr < classes], ytr[ytr < classes], xte[yte < classes], yte[yte < classes]


def coloured(x: torch.Tensor) -> torch.Tensor:
    """Three-channel 8x8 images from one-channel ones: the digit, its transpose, its negative."""
    return torch.cat([x, x.transpose(-1, -2), 1 - x], dim=1)


def trained_mlp(classes: int, colour: bool = False) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A (64 or 192)-32-K MLP trained for 150 full-batch Adam steps (about a second), with its test images."""
    xtr, ytr, xte, yte = digits(classes)
    if colour:
        xtr, xte = coloured(xtr), coloured(xte)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(xtr[0].numel(), 32), nn.ReLU(), nn.Linear(32, classes))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(150):
        optimizer.zero_grad()
        nn.functional.cross_entropy(net(xtr), ytr).backward()
        optimizer.step()
    return net.eval(), xte, yte


class Split(nn.Module):
    """``net`` on the images as they are, except images marked by a white top-left pixel: those go through a
    quantized input (8 levels), whose gradient is zero, so only a black-box attack (Square) can move them."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        marked = (x[:, 0, 0, 0] > 0.5).view(-1, 1)
        return torch.where(marked, self.net(torch.round(x * 8) / 8), self.net(x))


@pytest.fixture(scope="module")
def mlp10() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    return trained_mlp(10)


@pytest.fixture(scope="module")
def mlp4() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    return trained_mlp(4)


@pytest.fixture(scope="module")
def colour10() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    return trained_mlp(10, colour=True)


@pytest.fixture(scope="module")
def split(mlp10) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    net, x, y = mlp10
    x = x[:64].clone()
    x[::2, 0, 0, 0] = 1.0  # every other image takes the quantized path (digits' corner pixels are 0)
    return Split(net).eval(), x, y[:64]


def reference(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, norm: str, eps: float, classes: int,
              steps: int | None = None, n_queries: int | None = None, n_restarts: int | None = None,
              attacks: list[str] | None = None) -> torch.Tensor:
    """The authors' ``run_standard_evaluation`` on ``x`` as one batch: their standard version, with the steps
    of APGD, APGD-T and FAB, Square's queries and every sub-attack's restarts changed when given (APGD rebuilt,
    as its constructor derives its schedule from the steps), ``attacks`` alone when given, and at most
    ``classes - 1`` target classes."""
    adversary = Original(model, norm=NORMS[norm], eps=eps, seed=0, version="standard")
    if steps is not None or n_restarts is not None:
        common = dict(n_restarts=n_restarts or 1, n_iter=steps or 100, verbose=False, eps=eps, norm=NORMS[norm],
                      eot_iter=1, rho=0.75, seed=0, device="cpu", logger=adversary.logger)
        adversary.apgd = APGDAttack(model, **common)
        adversary.apgd_targeted = APGDAttack_targeted(model, **common)
        adversary.fab.n_iter = steps or 100
    if n_restarts is not None:  # their loop gives FAB-T one restart whatever is set
        adversary.fab.n_restarts = adversary.square.n_restarts = n_restarts
    if n_queries is not None:
        adversary.square.n_queries = n_queries
    adversary.apgd_targeted.n_target_classes = min(9, classes - 1)
    adversary.fab.n_target_classes = min(9, classes - 1)
    if attacks is not None:
        adversary.attacks_to_run = attacks
    x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=len(x))
    return x_adv


def robust(model: nn.Module, adversarial: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(adversarial).argmax(1) == y


def check_equal(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, norm: str, eps: float, classes: int,
                **custom) -> dict:
    """Run the three and assert they agree image by image; robustkit's ``extra`` (default backend) is returned."""
    attacks = custom.pop("attacks", None)
    params = dict(norm=norm, eps=eps, seed=0)
    if custom or attacks:
        params.update(version="custom", **custom, **({"attacks": ",".join(attacks)} if attacks else {}))
    ours = AutoAttack(**params)(model, x, y)
    via_original = AutoAttack(**params, backend="original")(model, x, y)
    theirs = reference(model, x, y, norm=norm, eps=eps, classes=classes, attacks=attacks, **custom)
    expected = robust(model, theirs, y)
    for result in (ours, via_original):
        assert torch.equal(robust(model, result.adversarial, y), expected)
        assert torch.equal(result.adversarial, theirs)  # the very same adversarial images
    assert ours.extra["steps"] == [dict(s, seconds=o["seconds"]) for s, o in
                                   zip(via_original.extra["steps"], ours.extra["steps"])]
    assert ours.extra["fooled_by"] == via_original.extra["fooled_by"]
    return ours.extra


SUB_ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square")


@pytest.mark.parametrize("norm, eps", [("linf", 0.12), ("l2", 0.8)])
@pytest.mark.parametrize("sub", [*SUB_ATTACKS, "apgd-dlr", "fab"])
def test_each_sub_attack_alone_equals_the_original(split, sub, norm, eps):
    """Every sub-attack of every version on its own (APGD-DLR and untargeted FAB are the ``plus`` version's), with
    two restarts, so the restarts' random starts are compared too."""
    model, x, y = split
    extra = check_equal(model, x, y, norm=norm, eps=eps, classes=10, steps=5, n_queries=300, n_restarts=2,
                        attacks=[sub])
    assert extra["n_fooled"][sub] >= 3  # each fools images on its own, so its successes are compared too


@pytest.mark.parametrize("norm, eps", [("linf", 0.12), ("l2", 0.8)])
def test_the_chain_equals_the_original_with_every_sub_attack_fooling_some(split, norm, eps):
    model, x, y = split
    extra = check_equal(model, x, y, norm=norm, eps=eps, classes=10, steps=2, n_queries=300)
    assert [s["attack"] for s in extra["steps"]] == list(SUB_ATTACKS)
    assert all(s["fooled"] >= 1 for s in extra["steps"]), extra["steps"]  # every sub-attack's success is compared
    assert extra["steps"][-1]["robust"] > 0  # and some images withstand all of them


@pytest.mark.parametrize("norm, eps", [("linf", 0.1), ("l2", 0.5)])
def test_natural_model_ten_classes(mlp10, norm, eps):
    net, x, y = mlp10
    extra = check_equal(net, x[:64], y[:64], norm=norm, eps=eps, classes=10, steps=3, n_queries=200)
    assert extra["steps"][0]["fooled"] > 0 and extra["steps"][-1]["attacked"] > 0


@pytest.mark.parametrize("norm, eps", [("linf", 0.1), ("l2", 0.6)])
def test_four_classes_cap_the_targets_at_three(mlp4, norm, eps):
    net, x, y = mlp4
    extra = check_equal(net, x[:48], y[:48], norm=norm, eps=eps, classes=4, steps=3, n_queries=200)
    assert extra["settings"]["resolved"]["n_target_classes"] == {"apgd-t": 3, "fab-t": 3}
    assert extra["steps"][-1]["attacked"] > 0


@pytest.mark.parametrize("norm, eps", [("linf", 0.1), ("l2", 0.5)])
@pytest.mark.parametrize("sub", ["square", "fab-t", "apgd-t"])
def test_colour_images(colour10, sub, norm, eps):
    """Three channels: torchattacks' own L2 Square measures its windows over all channels at once, the authors'
    per channel, so only colour images tell them apart."""
    net, x, y = colour10
    extra = check_equal(net, x[:48], y[:48], norm=norm, eps=eps, classes=10, steps=5, n_queries=300, attacks=[sub])
    assert extra["n_fooled"][sub] >= 1


def test_standard_version_equals_the_original(mlp10):
    """The standard settings themselves (100 steps, 9 targets, 5000 queries) on 12 images."""
    model, x, y = mlp10
    extra = check_equal(model, x[:12], y[:12], norm="linf", eps=0.1, classes=10)
    assert extra["settings"]["version"] == "standard"
    assert all(s["attacked"] > 0 for s in extra["steps"])
