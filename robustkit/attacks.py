"""The one interface every attack implements, native or adapted.

An attack takes a model (images in [0, 1] -> logits), a batch of images ``N x C x H x W`` in
[0, 1] and their labels, and returns an :class:`AttackResult`. Subclasses implement
:meth:`Attack.perturb`; :meth:`Attack.__call__` checks inputs, puts the model in eval mode and
checks the output, so every attack gets the same guarantees.

The checks are made cheap, since fast attacks (one gradient step) are called in loops: the batch is
checked with one pass (``aminmax``: in [0, 1] and finite at once; :func:`robustkit.data.check_images`
only runs to word the error), the model's logits are checked once per model, and what is learnt about
a model (:class:`ModelFacts`: its device and class count, from one forward pass on one image) is
remembered while the model stays the same (:func:`model_key`), weakly, so that a model is never kept
alive by an attack.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

import torch
from torch import nn

from robustkit.data import check_images
from robustkit.errors import InputError, ParameterError
from robustkit.models import logits
from robustkit.params import Param, resolve_params
from robustkit.threat import NORMS, ThreatModel

KNOWLEDGE = ("white-box", "score-based", "decision-based", "transfer")
GOALS = ("fixed-budget", "minimal-distortion")


_LABEL_DTYPES = (torch.int64, torch.int32, torch.int16, torch.uint8)


def _check_batch(images: Any, labels: Any, shape: tuple[int, ...] | None) -> None:
    """:func:`~robustkit.data.check_images` in one pass over the images when they are fine.

    ``aminmax`` finds the range, and NaN or infinite values show in it (NaN propagates, +-inf lies outside
    [0, 1]); anything unusual goes to ``check_images``, which raises with its message (or accepts it).
    """
    if isinstance(images, torch.Tensor) and isinstance(labels, torch.Tensor):
        size = images.shape
        if (len(size) == 4 and images.is_floating_point() and size[0] and size[1] and size[2] and size[3]
                and (shape is None or size[1:] == tuple(shape))
                and labels.shape == size[:1] and labels.dtype in _LABEL_DTYPES):
            lo, hi = torch.aminmax(images)
            if float(lo) >= 0.0 and float(hi) <= 1.0:
                return
    check_images(images, labels, shape=shape)


def model_key(model: nn.Module) -> tuple:
    """A fingerprint of ``model``'s tensors: storage address, in-place version counter and dtype of every
    parameter and buffer, in module order.

    It changes when a tensor is replaced, modified in place (an optimizer step, ``load_state_dict``), moved
    or cast (new storage), or a submodule is added, removed or swapped; while it stays the same, what was
    built for the model can be reused. (Cheap: one walk over the modules, no allocation but the key.)
    """
    key = []
    todo, seen = [model], {id(model)}
    while todo:
        module = todo.pop()
        for tensors in (module._parameters, module._buffers):
            for t in tensors.values():
                if t is not None:
                    key.append(_tensor_key(t))
        for child in module._modules.values():
            if child is not None and id(child) not in seen:
                seen.add(id(child))
                todo.append(child)
    return tuple(key)


def _tensor_key(t: torch.Tensor) -> tuple:
    try:
        return (t.data_ptr(), t._version, t.dtype)
    except (RuntimeError, ValueError, AttributeError):  # no storage yet (a lazy module's parameters)
        return (id(t), None, t.dtype)


def first_parameter(model: nn.Module) -> torch.Tensor | None:
    """``next(model.parameters(), None)`` without building the generators (adapters ask on every call, right
    after the library has pushed the interpreter's state out of the caches): modules in pre-order."""
    todo = [model]
    while todo:
        module = todo.pop()
        for tensor in module._parameters.values():
            if tensor is not None:
                return tensor
        todo.extend(child for child in reversed(module._modules.values()) if child is not None)
    return None


def model_device(model: nn.Module) -> torch.device | None:
    """The device of ``model``'s first parameter or buffer (None if it has none); stops at the first."""
    first = first_parameter(model)
    if first is not None:
        return first.device
    for tensor in model.buffers():
        return tensor.device
    return None


def _layout(model: nn.Module) -> tuple:
    """Dtype, device and shape of every parameter and buffer: what a model's device and class count follow."""
    return tuple((t.dtype, t.device, tuple(t.shape)) for t in (*model.parameters(), *model.buffers()))


@dataclass(frozen=True, eq=False)
class ModelFacts:
    """What attacks need to know about a model, valid while its :func:`model_key` is ``key``.

    The same object is returned for as long as the key stays the same, so ``facts is cached_facts`` is a
    valid (and the cheapest) test that nothing changed.

    :param key: the model's :func:`model_key` when the facts were read.
    :param device: the device of its first parameter or buffer (None if it has none).
    :param num_classes: the number of logits it returns per image.
    :param layout: dtype, device and shape of every parameter and buffer.
    """

    key: tuple
    device: torch.device | None
    num_classes: int
    layout: tuple = ()


# Facts of the models seen, weakly keyed: forgotten with the model, recomputed when it changes.
_MODEL_FACTS: "weakref.WeakKeyDictionary[nn.Module, ModelFacts]" = weakref.WeakKeyDictionary()


def model_facts(model: nn.Module, images: torch.Tensor, refresh: bool = False) -> ModelFacts:
    """``model``'s :class:`ModelFacts`, from one forward pass on ``images[:1]`` the first time the model is
    seen, whenever the layout of its tensors changed since (new weights alone need no new pass), and when
    ``refresh``; raises :class:`InputError` unless it returns ``N x K`` logits. Call it in eval mode
    (BatchNorm statistics would move otherwise)."""
    key = model_key(model)
    known = None if refresh else _MODEL_FACTS.get(model)
    if known is not None and known.key == key:
        return known
    layout = _layout(model)
    if known is not None and known.layout == layout:
        facts = ModelFacts(key, known.device, known.num_classes, layout)
    else:
        device = model_device(model)
        with torch.no_grad():
            out = logits(model, images[:1] if device is None else images[:1].to(device))
        facts = ModelFacts(key, device, int(out.shape[1]), layout)
    _MODEL_FACTS[model] = facts
    return facts


@dataclass
class AttackResult:
    """What an attack returns.

    :param adversarial: adversarial images, same shape as the input, in [0, 1].
    :param queries: model queries used per image, when the attack counts them.
    :param extra: attack-specific per-image tensors or facts (e.g. ``{"pass": tensor}``).
    """

    adversarial: torch.Tensor
    queries: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Attack:
    """Base class of all attacks.

    Class attributes declare what the attack is, for listings and the benchmark protocol:

    - ``threat_models``: norms it bounds (``linf``, ``l2``, ``l1``, ``unbounded``).
    - ``knowledge``: ``white-box``, ``score-based``, ``decision-based`` or ``transfer``.
    - ``goal``: ``fixed-budget`` (stays within eps) or ``minimal-distortion`` (finds the smallest change).
    - ``supports_targeted``: whether ``targeted=True`` works.
    - ``params``: the declared :class:`~robustkit.params.Param` tuple.
    - ``cheap_params``: settings under which it runs in about a second on a toy model on the CPU; the
      contract checks (:mod:`robustkit.testing.contracts`) run every registered attack with them.
    - ``cheap_input``: the ``(C, H, W)`` of the toy images those checks use (an attack that needs a
      particular size says so here).
    - ``contract_skip``: why those checks cannot build it from parameters alone (e.g. it needs a trained
      checkpoint); ``None`` for every attack that can.

    :param params: keyword parameters, validated against ``params``.
    """

    threat_models: ClassVar[tuple[str, ...]] = ("linf",)
    knowledge: ClassVar[str] = "white-box"
    goal: ClassVar[str] = "fixed-budget"
    supports_targeted: ClassVar[bool] = False
    params: ClassVar[tuple[Param, ...]] = ()
    cheap_params: ClassVar[Mapping[str, Any]] = {}
    cheap_input: ClassVar[tuple[int, int, int]] = (1, 8, 8)
    contract_skip: ClassVar[str | None] = None

    def __init__(self, **params: Any):
        self.config = resolve_params(type(self).params, params, self.display_name())
        if self.config.get("targeted") and not self.supports_targeted:
            raise ParameterError(f"{self.display_name()} has no targeted mode; drop targeted=true")

    @classmethod
    def display_name(cls) -> str:
        return getattr(cls, "name", None) or cls.__name__

    @classmethod
    def declared_facts(cls) -> dict[str, Any]:
        """The class attributes listings and the benchmark protocol read; the host records them when the class
        is registered, so a plugin states them once."""
        return {"threat_models": cls.threat_models, "knowledge": cls.knowledge, "goal": cls.goal,
                "supports_targeted": cls.supports_targeted}

    def describe(self) -> dict[str, Any]:
        """Name and parameters, for provenance."""
        return {"name": self.display_name(), "params": dict(self.config)}

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                 target_labels: torch.Tensor | None = None) -> AttackResult:
        spec = getattr(model, "spec", None)
        expected = spec.dataset.input_shape if getattr(spec, "dataset", None) is not None else None
        _check_batch(images, labels, expected)
        if target_labels is not None and not self.supports_targeted:
            raise ParameterError(f"{self.display_name()} has no targeted mode")
        was_training = model.training
        if was_training:  # train()/eval() walk every submodule: skip when there is nothing to switch
            model.eval()
        try:
            if model not in _MODEL_FACTS:  # once per model: a model that returns no logits tensor fails here
                model_facts(model, images)
            result = self.perturb(model, images, labels, target_labels)
        finally:
            if was_training:
                model.train()
        if not isinstance(result, AttackResult):
            result = AttackResult(adversarial=result)
        adv = result.adversarial
        if adv.shape != images.shape:
            raise InputError(f"{self.display_name()} returned shape {tuple(adv.shape)} for input {tuple(images.shape)}")
        result.adversarial = adv.detach().to(images.device, images.dtype).clamp(0.0, 1.0)
        return result

    def perturb(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                target_labels: torch.Tensor | None = None) -> AttackResult:
        """Craft adversarial examples for one batch; the model is already in eval mode."""
        raise NotImplementedError


def attack_budget(attack: Attack) -> ThreatModel | None:
    """The threat model a fixed-budget attack instance promises to stay within, or None when it promises
    none (minimal-distortion attacks, unbounded ones, or a budget it does not declare).

    Adapters set ``attack.threat`` from their norm and budget parameters; a native attack is read from its
    ``norm`` and ``eps`` parameters (or its one declared norm).
    """
    if getattr(attack, "goal", "fixed-budget") != "fixed-budget":
        return None
    threat = getattr(attack, "threat", None)
    if isinstance(threat, ThreatModel):
        return threat if threat.norm != "unbounded" else None
    config = getattr(attack, "config", {}) or {}
    if "eps" not in config or config["eps"] is None:
        return None
    norms = tuple(getattr(attack, "threat_models", ()) or ())
    norm = str(config.get("norm") or (norms[0] if len(norms) == 1 else "")).lower()
    if norm not in NORMS or norm == "unbounded":
        return None
    return ThreatModel(norm, float(config["eps"]))
