"""An exponential moving average of a model's weights (EMA), kept beside the trained ("raw") weights.

After every optimizer step, each floating-point entry of the model's state dict moves toward the model's:
``ema = decay * ema + (1 - decay) * model``; integer entries (batch norm's ``num_batches_tracked``) are copied.
Batch-norm running statistics are floating-point buffers, so they are averaged like the weights: this is
timm's ``ModelEmaV3`` with its defaults (``exclude_buffers=False``, no decay warm-up), so an EMA trained here
means what it means in timm. The average starts as a copy of the weights training starts from.

The training loop validates, selects and serves the EMA when one is kept (``TrainConfig.ema_decay``) unless
told to use the raw weights; checkpoints store it as ``S.ema.safetensors`` beside ``S.safetensors``.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Mapping

import torch
from torch import nn

from robustkit.errors import ParameterError


class WeightAverage:
    """The moving average of ``model``'s state dict, on the model's device.

    :param model: the model being trained; its current weights start the average.
    :param decay: the weight of the old average per step, in [0, 1) (e.g. 0.999: about the last 1,000 steps).
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0 <= decay < 1:
            raise ParameterError(f"ema_decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One step: move the average toward ``model``'s current state."""
        for key, value in model.state_dict().items():
            average = self.state[key]
            if average.is_floating_point():
                average.lerp_(value.detach().to(average.dtype), 1.0 - self.decay)
            else:
                average.copy_(value)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged state, keyed like the model's (what a checkpoint saves)."""
        return self.state

    @torch.no_grad()
    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore a saved average (on resume); the keys must be the model's."""
        if set(state) != set(self.state):
            missing, unexpected = sorted(set(self.state) - set(state)), sorted(set(state) - set(self.state))
            raise ParameterError(f"the saved EMA weights do not fit this model (missing {missing[:3]}, unexpected "
                                 f"{unexpected[:3]})")
        for key, value in state.items():
            self.state[key].copy_(value)

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        """Put the average into ``model`` for the block (validation, saving); the raw weights come back after."""
        raw = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.state)
        try:
            yield
        finally:
            model.load_state_dict(raw)
