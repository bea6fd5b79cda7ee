"""Model handles: a network plus its input normalization, inside the model.

Keeping normalization inside the model means every attack and defense works on images in [0, 1]
and an eps is always measured in pixel units, whatever the architecture expects.

Which normalization is explicit (:class:`Normalization`): ``none`` (the network takes [0, 1] images as
they are), ``dataset`` (the dataset's mean and std) or a given ``MEAN/STD``. A registered model gets the
dataset's unless its registry entry says otherwise (``register(name, factory, normalization="none")``, as
RobustBench's zoo models, which normalize inside, do); a user's own model (:mod:`robustkit.user_models`) gets
``none``. Checkpoints record it; one written before it was recorded means ``dataset``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import nn

from robustkit.data import DatasetInfo
from robustkit.errors import InputError, PluginError

class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; buffers, so they move with the model and land in checkpoints."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


@dataclass(frozen=True)
class Normalization:
    """What happens to [0, 1] images before the network sees them.

    :param mode: ``none`` (nothing: the network takes [0, 1] images), ``dataset`` (the dataset's mean and
        std) or ``custom`` (``mean`` and ``std`` given).
    :param mean: per-channel mean (one value: every channel); empty for ``none``, and for ``dataset`` until
        :meth:`resolve` fills in the dataset's.
    :param std: per-channel standard deviation, likewise.
    """

    mode: str = "dataset"
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    MODES = ("none", "dataset", "custom")

    @classmethod
    def parse(cls, text: str, what: str = "--normalize") -> "Normalization":
        """``none``, ``dataset`` or ``MEAN/STD`` with comma-separated per-channel values (``0.5/0.25``: one
        number for all channels). Checks the syntax and that every std is positive; channels are checked by
        :meth:`resolve`."""
        raw = str(text).strip()
        if raw.lower() in ("none", "dataset"):
            return cls(raw.lower())
        mean_text, sep, std_text = raw.partition("/")
        if not sep or "/" in std_text:
            raise InputError(f"{what} {raw!r}: give none, dataset, or MEAN/STD with one value per channel, e.g. "
                             "0.4914,0.4822,0.4465/0.2471,0.2435,0.2616 (or 0.5/0.25 for every channel)")
        mean, std = _numbers(mean_text, what, raw, "mean"), _numbers(std_text, what, raw, "std")
        if any(s <= 0 for s in std):
            raise InputError(f"{what} {raw!r}: a std must be positive (the model divides by it); give the per-channel "
                             "standard deviations of the training images, e.g. 0.2471,0.2435,0.2616")
        return cls("custom", mean, std)

    @classmethod
    def coerce(cls, value: "Normalization | str | Mapping[str, Any] | None", what: str = "normalization",
               ) -> "Normalization | None":
        """A :class:`Normalization` from itself, its text (:meth:`parse`) or its JSON (:meth:`to_json`);
        ``None`` stays ``None``."""
        if value is None or isinstance(value, Normalization):
            return value
        if isinstance(value, str):
            return cls.parse(value, what)
        if isinstance(value, Mapping):
            mode = value.get("mode")
            if mode not in cls.MODES:
                raise InputError(f"{what}: mode {mode!r} is not one of {', '.join(cls.MODES)}")
            if mode == "none":
                return cls("none")
            mean, std = value.get("mean") or (), value.get("std") or ()
            if mode == "custom" and not (mean and std):
                raise InputError(f"{what}: a custom normalization needs its mean and std")
            try:
                made = cls(mode, tuple(float(v) for v in mean), tuple(float(v) for v in std))
            except (TypeError, ValueError):
                raise InputError(f"{what}: mean and std must be lists of numbers, got {mean!r} and {std!r}") from None
            if any(s <= 0 for s in made.std):
                raise InputError(f"{what}: a std must be positive, got {list(made.std)}")
            return made
        raise InputError(f"{what}: expected none, dataset, MEAN/STD or a table with mode, got {value!r}")

    def resolve(self, info: DatasetInfo, what: str = "--normalize") -> "Normalization":
        """The values used for ``info``'s images: the dataset's for ``dataset``, one per channel for ``custom``
        (a single value is repeated); checks the channel count."""
        if self.mode == "none":
            return Normalization("none")
        if self.mode == "dataset":
            return Normalization("dataset", tuple(float(v) for v in info.mean), tuple(float(v) for v in info.std))
        channels = info.channels
        out = []
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (1, channels):
                raise InputError(
                    f"{what} {self.text()}: {len(values)} {name} values, but {info.name} images have {channels} "
                    f"channel{'s' if channels != 1 else ''}; give {channels} value{'s' if channels != 1 else ''} "
                    "(or one number for every channel)")
            out.append(tuple(float(v) for v in values) * (channels if len(values) == 1 else 1))
        return Normalization("custom", out[0], out[1])

    def module(self, channels: int) -> "Normalize":
        """The layer: the identity (mean 0, std 1) for ``none``, else ``(x - mean) / std``."""
        if self.mode == "none":
            return Normalize((0.0,) * channels, (1.0,) * channels)
        if not self.mean or not self.std:
            raise InputError("a dataset normalization must be resolved against the dataset first (resolve(info))")
        return Normalize(self.mean, self.std)

    def text(self) -> str:
        """``none``, ``dataset`` or ``MEAN/STD``: what ``--normalize`` takes."""
        if self.mode == "custom":
            return f"{_join(self.mean)}/{_join(self.std)}"
        return self.mode

    def describe(self, dataset: str | None = None) -> str:
        """One line for users: ``normalization: none (images in [0, 1] go to the model as is)``."""
        if self.mode == "none":
            return "normalization: none (images in [0, 1] go to the model as is)"
        whose = f"{dataset} " if self.mode == "dataset" and dataset else ""
        values = f"mean {_join(self.mean)}, std {_join(self.std)}" if self.mean else "the dataset's mean and std"
        label = "dataset" if self.mode == "dataset" else "custom"
        return f"normalization: {label} ({whose}{values}: the model sees (x - mean) / std of images in [0, 1])"

    def to_json(self) -> dict[str, Any]:
        """``{"mode": ..., "mean": [...] | None, "std": [...] | None}`` (as checkpoints and summaries record it)."""
        return {"mode": self.mode, "mean": list(self.mean) if self.mean else None,
                "std": list(self.std) if self.std else None}


def _numbers(text: str, what: str, raw: str, name: str) -> tuple[float, ...]:
    parts = [p.strip() for p in text.split(",")]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise InputError(f"{what} {raw!r}: the {name} must be numbers separated by commas, e.g. "
                         "0.4914,0.4822,0.4465/0.2471,0.2435,0.2616 (or none, or dataset)") from None
    if not all(math.isfinite(v) for v in values):
        raise InputError(f"{what} {raw!r}: the {name} must be finite numbers")
    return values


def _join(values: tuple[float, ...]) -> str:
    return ",".join(f"{v:.6g}" for v in values)


def registered_normalization(entry: Any) -> Normalization | None:
    """The normalization a registry entry states (``register(..., normalization="none")``), or None.

    ``none``, ``dataset`` and ``MEAN/STD`` are read as :meth:`Normalization.parse` does.
    """
    fact = (getattr(entry, "info", None) or {}).get("normalization")
    if fact is None:
        return None
    if isinstance(fact, Normalization):
        return fact
    text = str(fact).strip()
    try:
        return Normalization.parse(text, f"model '{entry.name}': normalization")
    except InputError:
        raise PluginError(f"model '{entry.name}' of plugin '{entry.plugin}' registers normalization={text!r}, which "
                          "is neither none, dataset nor MEAN/STD; report it to the plugin's authors"
                          ) from None


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model: recorded in checkpoint metadata.

    :param name: registry name (``lenet``, ``timm:resnet18``), or for a user's model its file and class
        (``model.py:SmallCNN``).
    :param params: the architecture's parameters as resolved (a user's model: its constructor arguments).
    :param dataset: the dataset's info the model was adapted to.
    :param normalization: what is done to the images before the network; ``None``: the dataset's.
    :param source: a user's model (:class:`robustkit.user_models.ModelSource` as JSON): the file, class,
        arguments and checksums it is rebuilt from; ``None`` for registered models.
    """

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)
    dataset: DatasetInfo | None = None
    normalization: Normalization | None = None
    source: Mapping[str, Any] | None = None


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


def build_model(host: Any, name: str, info: DatasetInfo, params: Mapping[str, Any] | None = None, *,
                normalization: Normalization | str | None = None) -> Classifier:
    """Create model ``name`` for ``info``'s input shape and classes, with normalization inside.

    :param normalization: ``none``, ``dataset``, ``MEAN/STD`` or a :class:`Normalization`; default: what the
        registry entry states (``normalization=`` fact), else the dataset's.
    """
    entry = host.models.get(name)
    chosen = Normalization.coerce(normalization)  # a malformed one fails before the model is built
    resolved = entry.resolve(params or {}, ("num_classes", "in_channels", "image_size"))
    if chosen is None:
        chosen = registered_normalization(entry)
    net = host.models.create(name, resolved, num_classes=info.num_classes, in_channels=info.channels,
                             image_size=tuple(info.image_size))
    if chosen is None:
        chosen = Normalization("dataset")
    used = chosen.resolve(info)
    return Classifier(net, used.module(info.channels), ModelSpec(entry.name, resolved, info, used))


def normalization_of(model: nn.Module) -> Normalization | None:
    """The normalization recorded in ``model.spec`` (``dataset`` for a spec without one); None without a spec."""
    spec = getattr(model, "spec", None)
    if spec is None:
        return None
    return spec.normalization if spec.normalization is not None else Normalization("dataset")


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
