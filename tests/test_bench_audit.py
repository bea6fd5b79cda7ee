"""The gradient-masking audit on models whose answer is known.

A two-class toy problem: 8x8 images of about 0.35 (class 0) or 0.65 (class 1). ``Linear`` classifies
by the mean pixel (class 1 above 0.5), so it is perfectly accurate and an honest gradient leads straight
to the boundary. The masked variants compute the same function of a transformed input whose gradient
is zero everywhere, as a gradient-masking "defense" does: PGD does not move, yet the model is no more
robust. The audit must flag them and must not flag the honest models.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustkit.adversarial import input_gradient
from robustkit.bench.audit import (AT_LEAST, AT_MOST, BOUNDS, FLAGS, audit_model, completed, judged, pgd_examples,
                                   robust_accuracy)
from robustkit.host import make_host
from robustkit.threat import ThreatModel

SETTINGS = {"unbounded_eps": 1.0, "unbounded_max_accuracy": 0.05, "steps": 5, "more_steps": 20, "tolerance": 0.05}
THREAT = {"norm": "linf", "eps": 0.3}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def toy_data(n: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    images = (0.35 + 0.3 * labels.float()).view(n, 1, 1, 1).expand(n, 1, 8, 8)
    return (images + 0.02 * torch.randn(n, 1, 8, 8, generator=generator)).clamp(0, 1), labels


class Linear(nn.Module):
    """logit 1 - logit 0 = 2 (sum of pixels - 32): class 1 iff the mean pixel is above 0.5."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(64, 2)
        with torch.no_grad():
            self.lin.weight.copy_(torch.stack([-torch.ones(64), torch.ones(64)]))
            self.lin.bias.copy_(torch.tensor([32.0, -32.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x.flatten(1))


class Quantized(Linear):
    """Input quantization to 5 grey levels (thermometer-encoding style): round's gradient is 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin((torch.round(x * 4) / 4).flatten(1))


class Detached(Linear):
    """The ``x.detach()`` trick: the output depends on x, its gradient with respect to x is 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x.detach().flatten(1)) + 0 * x.sum()


class ModeRecorder(Linear):
    def __init__(self) -> None:
        super().__init__()
        self.modes: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        return super().forward(x)


@pytest.fixture(scope="module")
def square():
    """A score-based black box (only the torchattacks plugin is loaded: quick)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ROBUSTKIT_LOAD_PLUGINS", "torchattacks")
        host = make_host()
    return host.attacks.create("torchattacks:Square", {"eps": THREAT["eps"], "n_queries": 100})


def small_mlp(images: torch.Tensor, labels: torch.Tensor) -> nn.Module:
    """A small MLP trained on the toy problem by plain full-batch gradient descent (well under a second;
    a torch optimizer would import torch._dynamo, seconds without compiled bytecode)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 2))
    for _ in range(200):
        model.zero_grad()
        F.cross_entropy(model(images), labels).backward()
        with torch.no_grad():
            for parameter in model.parameters():
                parameter -= 0.1 * parameter.grad
    return model.eval()


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(images).argmax(1) == labels).float().mean())


def test_the_masked_models_mask_gradients():
    images, labels = toy_data()
    for masked in (Quantized(), Detached()):
        assert accuracy(masked, images, labels) == 1.0
        assert torch.count_nonzero(input_gradient(masked, images, labels)) == 0
    assert accuracy(Linear(), images, labels) == 1.0
    assert torch.count_nonzero(input_gradient(Linear(), images, labels)) > 0


def test_linear_model_passes_every_check(square):
    images, labels = toy_data()
    report = audit_model(Linear(), images, labels, threat=THREAT, settings=SETTINGS, white_box_accuracy=None,
                         black_box=square, surrogate=Linear(), seed=0)
    assert set(report["checks"]) == set(FLAGS)
    assert report["flags"] == []
    assert report["checks"]["unbounded"]["accuracy"] == 0.0
    assert report["checks"]["more_steps"]["accuracy"] <= report["checks"]["more_steps"]["reference"]
    assert report["tolerance"] == SETTINGS["tolerance"]


def test_small_mlp_passes_the_unbounded_check():
    images, labels = toy_data(200, seed=1)
    model = small_mlp(images, labels)
    test_images, test_labels = toy_data(40, seed=2)
    assert accuracy(model, test_images, test_labels) >= 0.95
    report = audit_model(model, test_images, test_labels, threat=THREAT, settings=SETTINGS, white_box_accuracy=None)
    assert set(report["checks"]) == {"unbounded", "more_steps"}  # no black box, no surrogate: skipped
    assert report["checks"]["unbounded"]["passed"] and report["checks"]["unbounded"]["accuracy"] <= 0.05
    assert report["flags"] == []


@pytest.mark.parametrize("masked", [Quantized, Detached])
def test_masked_gradients_are_flagged(masked, square):
    images, labels = toy_data()
    report = audit_model(masked(), images, labels, threat=THREAT, settings=SETTINGS, white_box_accuracy=None,
                         black_box=square, surrogate=Linear(), seed=0)
    checks = report["checks"]
    # PGD cannot move, so even a budget covering the whole image range leaves the model accurate ...
    assert not checks["unbounded"]["passed"] and checks["unbounded"]["accuracy"] > 0.5
    # ... while a score-based attack and adversarials transferred from an honest twin break it.
    assert checks["black_box"]["accuracy"] < checks["black_box"]["reference"] - SETTINGS["tolerance"]
    assert checks["transfer"]["accuracy"] == 0.0 and checks["transfer"]["reference"] == 1.0
    assert report["flags"] == ["unbounded", "black_box", "transfer"]


def test_tolerance_and_the_suites_white_box_accuracy(square):
    images, labels = toy_data()
    lenient = audit_model(Quantized(), images, labels, threat=THREAT, settings={**SETTINGS, "tolerance": 1.0},
                          white_box_accuracy=None, black_box=square, surrogate=Linear(), seed=0)
    assert lenient["flags"] == ["unbounded"]  # the tolerance applies to comparisons, not to the unbounded limit
    # When the benchmark's own attack suite already broke the model, the black box is no better than it.
    broken = audit_model(Quantized(), images, labels, threat=THREAT, settings=SETTINGS, white_box_accuracy=0.0,
                         black_box=square, seed=0)
    assert broken["checks"]["black_box"]["reference"] == 0.0 and broken["checks"]["black_box"]["passed"]
    assert broken["flags"] == ["unbounded"]


def test_audit_runs_in_eval_mode_and_restores_the_mode():
    images, labels = toy_data(8)
    model = ModeRecorder().train()
    audit_model(model, images, labels, threat=THREAT, settings=SETTINGS, white_box_accuracy=None)
    assert model.modes and not any(model.modes)
    assert model.training


def test_robust_accuracy_does_not_count_lucky_adversarials():
    images, labels = toy_data(4)
    model = Linear()
    flipped = 1.0 - images  # each image's class flips: 0.35 <-> 0.65
    assert robust_accuracy(model, images, labels, images) == 1.0
    assert robust_accuracy(model, images, labels, flipped) == 0.0
    # Mislabelled examples: wrong on the clean image, "right" on the adversarial; still not robust.
    assert robust_accuracy(model, images, 1 - labels, flipped) == 0.0


def test_pgd_examples_are_seeded_and_inside_the_threat():
    images, labels = toy_data(10)
    threat = ThreatModel("linf", 0.1)
    first = pgd_examples(Linear(), images, labels, threat, steps=3, seed=7, batch_size=4)
    assert torch.equal(first, pgd_examples(Linear(), images, labels, threat, steps=3, seed=7, batch_size=4))
    assert (first - images).abs().max() <= 0.1 + 1e-6
    assert first.min() >= 0 and first.max() <= 1


def test_each_check_records_what_it_measured(square):
    """Every check keeps its accuracy, the bound it had to respect, and for a comparison the reference, where
    that reference comes from and the gap: a report shows why it passed or failed."""
    images, labels = toy_data()
    report = audit_model(Quantized(), images, labels, threat=THREAT, settings=SETTINGS, white_box_accuracy=0.9,
                         white_box_label="pgd", black_box=square, surrogate=Linear(), seed=0)
    checks, tol = report["checks"], SETTINGS["tolerance"]
    assert {name: check["bound"] for name, check in checks.items()} == BOUNDS
    assert checks["unbounded"]["limit"] == SETTINGS["unbounded_max_accuracy"] and "gap" not in checks["unbounded"]
    assert checks["more_steps"]["reference_detail"] == "PGD-5" and checks["more_steps"]["detail"] == "PGD-20"
    assert checks["more_steps"]["limit"] == pytest.approx(checks["more_steps"]["reference"] + tol)
    # PGD cannot move on the quantized model, so the suite's 0.9 is the best white-box result, and named.
    for name in ("black_box", "transfer"):
        check = checks[name]
        assert (check["reference"], check["reference_detail"]) == (0.9, "the suite's pgd")
        assert check["limit"] == pytest.approx(0.9 - tol)
        assert check["gap"] == pytest.approx(check["accuracy"] - 0.9)
    for name, check in checks.items():
        assert check["passed"] == (check["accuracy"] <= check["limit"] if check["bound"] == AT_MOST
                                   else check["accuracy"] >= check["limit"])
        assert check["passed"] == (name not in report["flags"])
    # When the audit's own PGD does better than the suite, it is the reference, named as such.
    honest = audit_model(Linear(), images, labels, threat=THREAT, settings=SETTINGS, white_box_accuracy=0.9,
                         white_box_label="pgd", surrogate=Linear(), seed=0)
    transfer = honest["checks"]["transfer"]
    assert transfer["reference"] < 0.9 and transfer["reference_detail"] in ("PGD-5", "PGD-20")


def test_completed_fills_in_the_numbers_older_records_lack():
    old = {"accuracy": 0.6, "reference": 0.7, "passed": True, "detail": "square vs the best white-box"}
    filled = completed("black_box", old, 0.05)
    assert filled["gap"] == pytest.approx(-0.1) and filled["limit"] == pytest.approx(0.65)
    assert filled["bound"] == AT_LEAST and "reference_detail" not in filled
    assert set(old) == {"accuracy", "reference", "passed", "detail"}  # the record itself is left as it was
    unbounded = completed("unbounded", {"accuracy": 0.0, "limit": 0.05, "passed": True}, 0.05)
    assert (unbounded["bound"], unbounded["limit"]) == (AT_MOST, 0.05) and "gap" not in unbounded
    # Recorded numbers are kept as they are.
    recorded = judged("more_steps", 0.5, "PGD-20", reference=0.4, reference_detail="PGD-5", tolerance=0.05)
    assert completed("more_steps", recorded, 0.2) == recorded and not recorded["passed"]
