"""What every attack gets from the base class: input checks, eval mode, output checks, clear errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustkit.attacks import Attack, AttackResult
from robustkit.data import DatasetInfo
from robustkit.errors import InputError, ParameterError
from robustkit.host import make_host
from robustkit.models import Classifier, LogitsOf, ModelSpec, Normalize
from robustkit.params import Param
from robustkit.testing.contracts import check_attack

INFO = DatasetInfo("toy", num_classes=3, channels=1, image_size=(4, 4), mean=(0.0,), std=(1.0,))


class Shift(Attack):
    """Adds eps to every pixel (a test attack)."""

    params = (Param("eps", float, 0.1, low=0.0, high=1.0),)

    def perturb(self, model, images, labels, target_labels=None):
        self.saw_training = model.training
        return AttackResult(adversarial=images + self.config["eps"])


def classifier() -> Classifier:
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    return Classifier(net, Normalize(INFO.mean, INFO.std), ModelSpec("toy", {}, INFO))


def test_runs_in_eval_mode_restores_mode_and_clamps():
    model = classifier().train()
    attack = Shift(eps=0.5)
    out = attack(model, torch.full((2, 1, 4, 4), 0.8), torch.tensor([0, 1]))
    assert attack.saw_training is False and model.training is True
    assert float(out.adversarial.max()) == 1.0


@pytest.mark.parametrize("images, message", [
    (torch.rand(2, 16), "N x C x H x W"),
    (torch.rand(2, 1, 5, 5), "the model expects (1, 4, 4)"),
    (torch.rand(2, 1, 4, 4) * 255, "must lie in [0, 1]"),
    (torch.full((2, 1, 4, 4), float("nan")), "NaN"),
    (torch.randint(0, 255, (2, 1, 4, 4), dtype=torch.uint8), "floating point"),
])
def test_bad_images_are_explained(images, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")):
        Shift()(classifier(), images, torch.tensor([0, 1]))


def test_bad_labels_and_unsupported_targeting():
    with pytest.raises(InputError, match="one label per image"):
        Shift()(classifier(), torch.rand(2, 1, 4, 4), torch.tensor([0]))
    with pytest.raises(ParameterError, match="no targeted mode"):
        Shift()(classifier(), torch.rand(2, 1, 4, 4), torch.tensor([0, 1]), target_labels=torch.tensor([1, 2]))
    with pytest.raises(ParameterError, match="'eps' must be <= 1.0"):
        Shift(eps=3)


class TupleModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = classifier()

    def forward(self, x):
        return self.inner(x), {"features": x}


def test_model_returning_a_tuple_gets_a_clear_error_and_a_documented_fix():
    with pytest.raises(InputError, match="LogitsOf"):
        Shift()(TupleModel(), torch.rand(2, 1, 4, 4), torch.tensor([0, 1]))
    out = Shift()(LogitsOf(TupleModel(), pick=0), torch.rand(2, 1, 4, 4), torch.tensor([0, 1]))
    assert out.adversarial.shape == (2, 1, 4, 4)


# --- every registered attack (timm style): a new plugin's attacks are covered the moment they register ---------

HOST = make_host()
LIBRARY_ADAPTERS = ("torchattacks", "art")  # their own suites run check_attack over every library attack


@pytest.mark.parametrize("name", [e.name for e in HOST.attacks if e.plugin not in LIBRARY_ADAPTERS])
def test_every_registered_attack_meets_the_contract(name):
    check_attack(name, host=HOST)
