"""Robust optimization (Shaham, Yamada, Negahban): one ascent step per example, then one descent step.

A plugin like any other (entry point ``robust-opt``): the defense only supplies the loss of one
batch, and :mod:`robustkit.training` does the rest.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustkit.adversarial import ascent_direction, input_gradient
from robustkit.defenses import BatchLoss, Defense
from robustkit.errors import ParameterError
from robustkit.params import Param

#: The reference's MNIST radii (linf 0.2, l2 2, l1 2 in globally standardized units) times the
#: standard deviation of MNIST pixels (about 0.3), in pixel units of images in [0, 1].
DEFAULT_RADIUS = {"linf": 0.06, "l2": 0.6, "l1": 0.6}


class RobustOpt(Defense):
    """Robust optimization (Shaham et al.): train on a one-step l1, l2 or linf ascent from each example.

    Paper: U. Shaham, Y. Yamada, S. Negahban, "Understanding Adversarial Training: Increasing Local
    Stability of Neural Nets through Robust Optimization", arXiv:1511.05432, 2015 (Algorithm 1; the
    journal version, Neurocomputing 307, 2018, says "Supervised Models" for "Neural Nets");
    reference code yutaroyamada/RobustTraining (Lua Torch).

    Loss: mean J(x~, y) over the batch, x~ = x + delta, where delta maximizes the first-order Taylor
    expansion of the cross-entropy J within the ``norm`` ball of radius ``radius`` around x, from one
    gradient g = grad_x J(theta, x, y) per example (computed with the model in training mode, as the
    loop hands it over):

    - ``linf``: delta = r * sign(g) (every pixel moves by r; FGSM's step);
    - ``l2``: delta = r * g / ||g||_2 (norm over the whole example, all channels);
    - ``l1``: delta = r * sign(g_k) e_k at k = argmax |g| (one coordinate per example).

    There is no clean term: theta is never updated on the original examples.

    Params:

    - ``norm``: ``linf`` (default; the best of the three in the paper's Table 1), ``l2`` or ``l1``.
    - ``radius``: r in pixel units of images in [0, 1]; the trade-off knob. ``none`` takes the
      reference's MNIST radius for the norm (linf 0.2, l2 2, l1 2 in standardized units) times
      MNIST's pixel standard deviation (about 0.3): linf 0.06, l2 0.6, l1 0.6. linf radius <= 1.
    - ``clip``: clip x~ to [0, 1] (default). **Choice**: the reference does not clip (its MNIST
      inputs are standardized, so the valid range is not enforced); ``clip=false`` reproduces that,
      training on images that may leave [0, 1]. With clipping, a step that pushes a pixel already
      at 0 or 1 outwards is lost (for ``l1`` the example may then be unchanged).

    Cost: 2 forward+backward passes per batch (one for g, one for the update), as the paper notes.
    """

    name = "robust-opt"
    reference = {"title": "Understanding Adversarial Training: Increasing Local Stability of Neural Nets "
                          "through Robust Optimization",
                 "authors": "Uri Shaham, Yutaro Yamada, Sahand Negahban",
                 "venue": "arXiv:1511.05432, 2015 (Neurocomputing 2018)", "link": "https://arxiv.org/abs/1511.05432"}
    knob = "radius"
    passes_per_batch = 2.0
    params = (
        Param("norm", str, "linf", "ascent step: linf (sign), l2 (normalized gradient), l1 (top coordinate)",
              choices=("linf", "l2", "l1")),
        Param("radius", float, None, "ascent radius r (pixel units); none: linf 0.06, l2 0.6, l1 0.6",
              low=0.0, low_open=True, optional=True),
        Param("clip", bool, True, "clip x + delta to [0, 1] (the reference does not)"),
    )

    def __init__(self, **params: Any):
        super().__init__(**params)
        if self.config["norm"] == "linf" and self.radius > 1:
            raise ParameterError(f"{self.display_name()}: linf radius {self.radius} exceeds the data range [0, 1]; "
                                 "radius=8/255 is written 8/255")

    @property
    def radius(self) -> float:
        """The radius actually used."""
        given = self.config["radius"]
        return float(given) if given is not None else DEFAULT_RADIUS[self.config["norm"]]

    def cost(self) -> float:
        return 2.0

    def adversarial_examples(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """x~ = x + r * (steepest-ascent unit step of ``norm``) for this batch, detached (clipped if ``clip``)."""
        grad = input_gradient(model, images, labels)  # summed loss: each example gets its own gradient
        adv = images.detach() + self.radius * ascent_direction(grad, self.config["norm"])
        if self.config["clip"]:
            adv = adv.clamp(0.0, 1.0)
        return adv.detach()

    def batch_loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> BatchLoss:
        adversarial = self.adversarial_examples(model, images, labels)
        logits = model(adversarial)
        return BatchLoss(F.cross_entropy(logits, labels), logits)
