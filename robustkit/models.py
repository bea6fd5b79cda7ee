"""Model handles: a registered architecture plus the dataset's normalization, inside the model.

Keeping normalization inside the model means every attack and defense works on images in [0, 1]
and an eps is always measured in pixel units, whatever the architecture expects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import nn

from robustkit.data import DatasetInfo
from robustkit.errors import InputError


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; buffers, so they move with the model and land in checkpoints."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model: recorded in checkpoint metadata.

    :param name: registry name (``lenet``, ``timm:resnet18``).
    :param params: the architecture's parameters as resolved.
    :param dataset: the dataset's info the model was adapted to.
    """

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)
    dataset: DatasetInfo | None = None


class Classifier(nn.Module):
    """A network with its input normalization: images in [0, 1] in, logits out.

    :param net: the architecture.
    :param normalize: the dataset's normalization.
    :param spec: how it was built (kept for checkpoints and provenance).
    """

    def __init__(self, net: nn.Module, normalize: Normalize, spec: ModelSpec):
        super().__init__()
        self.normalize = normalize
        self.net = net
        self.spec = spec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))


def build_model(host: Any, name: str, info: DatasetInfo, params: Mapping[str, Any] | None = None) -> Classifier:
    """Create model ``name`` for ``info``'s input shape and classes, with normalization inside."""
    entry = host.models.get(name)
    resolved = entry.resolve(params or {}, ("num_classes", "in_channels", "image_size"))
    net = host.models.create(name, resolved, num_classes=info.num_classes, in_channels=info.channels,
                             image_size=tuple(info.image_size))
    return Classifier(net, Normalize(info.mean, info.std), ModelSpec(entry.name, resolved, info))


class LogitsOf(nn.Module):
    """Wrap a model whose forward returns a tuple, list or dict, keeping only the logits.

    :param model: the model.
    :param pick: index (tuple/list) or key (dict) of the logits; default 0 / ``"logits"``.
    """

    def __init__(self, model: nn.Module, pick: int | str | Callable[[Any], torch.Tensor] | None = None):
        super().__init__()
        self.model = model
        self.pick = pick

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        if isinstance(out, torch.Tensor):
            return out
        if callable(self.pick):
            return self.pick(out)
        if isinstance(out, dict):
            key = self.pick if self.pick is not None else "logits"
            if key not in out:
                raise InputError(f"model returned a dict without key {key!r} (keys: {', '.join(map(str, out))}); "
                                 "pass LogitsOf(model, pick=KEY)")
            return out[key]
        if isinstance(out, (tuple, list)):
            return out[self.pick if isinstance(self.pick, int) else 0]
        raise InputError(f"model returned {type(out).__name__}, expected logits as a tensor")


def logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Call ``model`` and insist on a ``N x K`` logits tensor, with a clear error otherwise."""
    out = model(x)
    if not isinstance(out, torch.Tensor):
        raise InputError(
            f"the model returned a {type(out).__name__}, not a logits tensor; wrap it as "
            "robustkit.models.LogitsOf(model, pick=INDEX_OR_KEY)"
        )
    if out.dim() != 2 or out.shape[0] != x.shape[0]:
        raise InputError(f"the model returned shape {tuple(out.shape)}, expected N x classes logits")
    return out
