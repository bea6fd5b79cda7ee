"""The one interface every defense implements: the loss of one training batch.

The shared loop in :mod:`robustkit.training` owns optimizers, schedules, epochs, seeds,
checkpoints and progress. A defense only says how to turn a batch into a loss (usually by
crafting adversarial examples first), and declares its trade-off knob so the benchmark protocol
knows what to sweep.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import torch
from torch import nn

from robustkit.params import Param, resolve_params


@dataclass
class BatchLoss:
    """A defense's answer for one batch.

    :param loss: scalar to minimize.
    :param logits: logits of the inputs the model was trained on (for training accuracy).
    :param metrics: extra scalars to log (e.g. ``{"adv_acc": 0.4}``).
    """

    loss: torch.Tensor
    logits: torch.Tensor | None = None
    metrics: dict[str, float] | None = None


class Defense:
    """Base class of all defenses.

    Class attributes:

    - ``knob``: the parameter the accuracy-matched protocol sweeps (e.g. ``eps``); must be in ``params``.
    - ``passes_per_batch``: forward+backward passes one batch costs, relative to natural training.
    - ``params``: the declared :class:`~robustkit.params.Param` tuple.
    - ``reference``: the paper, for leaderboards: ``title``, ``authors``, ``venue``, ``link``.
    - ``cheap_params``: settings under which one epoch on a few dozen toy images takes about a second; the
      contract checks (:mod:`robustkit.testing.contracts`) train every registered defense with them.

    :param params: keyword parameters, validated against ``params``.
    """

    reference: ClassVar[dict[str, str]] = {}
    knob: ClassVar[str | None] = None
    passes_per_batch: ClassVar[float] = 1.0
    params: ClassVar[tuple[Param, ...]] = ()
    cheap_params: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, **params: Any):
        self.config = resolve_params(type(self).params, params, self.display_name())

    @classmethod
    def display_name(cls) -> str:
        return getattr(cls, "name", None) or cls.__name__

    def describe(self) -> dict[str, Any]:
        """Name, parameters and knob, for checkpoints and provenance."""
        return {"name": self.display_name(), "params": dict(self.config), "knob": self.knob}

    def cost(self) -> float:
        """Forward/backward passes per batch with the current parameters (override when it depends on them)."""
        return float(self.passes_per_batch)

    def batch_loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> BatchLoss:
        """The loss of one batch; the model is in train mode and gradients are zeroed."""
        raise NotImplementedError

    # Optional: defenses that own more than a loss (e.g. a generator network and its optimizer).

    def setup(self, model: nn.Module, device: torch.device) -> None:
        """Called once before training starts, with the model on its device; create extra modules here."""

    def state_dict(self) -> dict[str, Any] | None:
        """Extra state saved with every checkpoint (tensors and JSON values); ``None`` when there is none."""
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned, when a run resumes."""

    def prepare(self, model: nn.Module, dataset: Any, device: torch.device) -> None:
        """Called once per training call, after :meth:`setup` and before a checkpoint is resumed, so the
        model still holds its starting weights; build what depends on the training data here (e.g. a
        generated training set). ``dataset`` is the :class:`robustkit.data.ImageDataset` being trained on."""

    def after_step(self, model: nn.Module) -> None:
        """Called after every optimizer step (e.g. to update a moving average of the weights)."""

    def published_weights(self, model: nn.Module) -> Mapping[str, torch.Tensor] | None:
        """Weights to validate, save as the model and return after training instead of the live ones
        (e.g. a moving average); ``None`` (the default) means the live weights. The loop keeps the live
        weights in the checkpoint's training state, so a resumed run continues from them."""
        return None
