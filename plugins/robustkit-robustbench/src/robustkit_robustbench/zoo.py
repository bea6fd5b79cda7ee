"""RobustBench CIFAR-10 zoo entries as robustkit models, ``robustbench:NAME``, with local checkpoints only.

Each entry is registered under its zoo name (``robustbench:Carmon2019Unlabeled``) with the architecture
``robustbench/model_zoo/cifar10.py`` builds for it, its threat models, the published clean and AutoAttack
accuracies (``model_info/cifar10/<Linf|L2>/<name>.json``) and its input normalization. Nothing is
downloaded: ``weights=`` names the zoo checkpoint (``models/cifar10/Linf/<name>.pt`` as RobustBench saves
it) or a ``.safetensors`` conversion of it; without it the architecture is randomly initialized.

Loading: ``torch.load(weights_only=True)``, so a file whose pickle would run code is refused; safetensors
is read without unpickling. As the zoo does, a ``state_dict`` (or ``model_state_dict``) wrapper is
unwrapped and a ``module.`` (DataParallel) or ``model.`` prefix stripped; then every key must match the
architecture's (strict), or the load fails in one line naming the architecture and a few odd keys.

Normalization: every zoo model takes images in [0, 1] and normalizes inside, or not at all. So each is
registered with ``normalization="none"``: robustkit's model wrapper must not put the dataset's
normalization in front of it (:func:`robustkit.models.build_model` reads the fact); the listing's
``inside_normalization`` says what the network does itself.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch import nn

from robustkit import hookimpl
from robustkit.errors import ParameterError, RobustkitError
from robustkit.hookspecs import Register
from robustkit.params import Param
from robustkit.state_dicts import classifier_weights, few, read_state_dict, state_mismatch

from robustkit_robustbench.architectures import (CIFAR10_MEAN, CIFAR10_STD, DMPreActResNet, DMWideResNet,
                                                 TradesWideResNet, ZooPreActResNet18, ZooResNet18)

PREFIX = "robustbench:"
"""The attribute telling robustkit's model wrapper that a network takes [0, 1] images as they are."""

AUGUSTIN_MEAN = (0.4913997551666284, 0.48215855929893703, 0.4465309133731618)
AUGUSTIN_STD = (0.24703225141799082, 0.24348516474564, 0.26158783926049628)
"""The constants of ``Augustin2020AdversarialWideNet`` (``cifar10.py``), more digits than :data:`CIFAR10_MEAN`."""

NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]] | None] = {
    "none": None,
    "cifar10": (CIFAR10_MEAN, CIFAR10_STD),
    "augustin": (AUGUSTIN_MEAN, AUGUSTIN_STD),
}
NORMALIZATION_TEXT = {
    "none": "none ([0, 1] in)",
    "cifar10": "inside (CIFAR-10 mean/std)",
    "augustin": "inside (CIFAR-10 mean/std, Augustin's digits)",
}
"""How each normalization reads in listings."""


@dataclass(frozen=True)
class Result:
    """One published RobustBench result (``model_info/cifar10/<threat>/<name>.json``).

    :param eps: the radius as the file states it (``8/255``, ``0.031``, ``0.5``).
    :param clean: clean accuracy, %.
    :param autoattack: AutoAttack robust accuracy, % (``autoattack_acc``).
    """

    eps: str
    clean: float
    autoattack: float


@dataclass(frozen=True)
class ZooEntry:
    """A zoo model: its architecture, normalization and published results.

    :param name: the zoo name.
    :param architecture: ``trades-wrn``, ``dm-wrn``, ``resnet18``, ``preact-resnet18`` or ``dm-preact-resnet``.
    :param label: the architecture as RobustBench's model info names it (``WideResNet-28-10``).
    :param arch_args: the constructor arguments of the architecture, as ``cifar10.py`` gives them.
    :param normalization: key of :data:`NORMALIZATIONS`.
    :param results: per threat model (``linf``, ``l2``) the published result.
    :param zoo_model: the ``model`` expression of the entry in ``cifar10.py``.
    """

    name: str
    architecture: str
    label: str
    arch_args: Mapping[str, Any]
    normalization: str
    results: Mapping[str, Result]
    zoo_model: str

    def sources(self) -> tuple[str, ...]:
        return tuple(f"model_info/cifar10/{'Linf' if t == 'linf' else 'L2'}/{self.name}.json" for t in self.results)


ARCHITECTURES: dict[str, tuple[str, Callable[..., nn.Module]]] = {
    "trades-wrn": ("wide_resnet.py WideResNet", TradesWideResNet),
    "dm-wrn": ("dm_wide_resnet.py DMWideResNet", DMWideResNet),
    "dm-preact-resnet": ("dm_wide_resnet.py DMPreActResNet", DMPreActResNet),
    "resnet18": ("resnet.py ResNet18", ZooResNet18),
    "preact-resnet18": ("resnet.py PreActResNet(PreActBlock)", ZooPreActResNet18),
}
"""Architecture key -> (where the zoo defines it, the class building it)."""


def _e(name: str, architecture: str, label: str, args: Mapping[str, Any], normalization: str, zoo_model: str,
       **results: Result) -> ZooEntry:
    return ZooEntry(name, architecture, label, dict(args), normalization, results, zoo_model)


def _wrn(depth: int, k: int, sub_block1: bool = False) -> dict[str, Any]:
    return {"depth": depth, "widen_factor": k, "sub_block1": sub_block1}


def _dm(depth: int, width: int) -> dict[str, Any]:
    return {"depth": depth, "width": width, "activation": "swish"}


_DM_WRN = "DMWideResNet(depth={}, width={}, activation_fn=Swish, mean=CIFAR10_MEAN, std=CIFAR10_STD)"
_DM_R18 = "DMPreActResNet(depth=18, width=0, activation_fn=Swish, mean=CIFAR10_MEAN, std=CIFAR10_STD)"

ZOO: dict[str, ZooEntry] = {e.name: e for e in (
    # wide_resnet.py WideResNet: no normalization, ReLU.
    _e("Standard", "trades-wrn", "WideResNet-28-10", _wrn(28, 10), "none",
       "WideResNet(depth=28, widen_factor=10)",
       linf=Result("8/255", 94.78, 0.0), l2=Result("0.5", 94.78, 0.0)),
    _e("Carmon2019Unlabeled", "trades-wrn", "WideResNet-28-10", _wrn(28, 10, True), "none",
       "WideResNet(depth=28, widen_factor=10, sub_block1=True)",
       linf=Result("8/255", 89.69, 59.53)),
    _e("Zhang2019Theoretically", "trades-wrn", "WideResNet-34-10", _wrn(34, 10, True), "none",
       "WideResNet(depth=34, widen_factor=10, sub_block1=True)",
       linf=Result("0.031", 84.92, 53.08)),
    _e("Sehwag2021Proxy", "trades-wrn", "WideResNet-34-10", _wrn(34, 10), "none",
       "WideResNet(34, 10, sub_block1=False)",
       linf=Result("8/255", 86.68, 60.27), l2=Result("0.5", 90.93, 77.24)),
    _e("Augustin2020Adversarial_34_10", "trades-wrn", "WideResNet-34-10", _wrn(34, 10), "augustin",
       "Augustin2020AdversarialWideNet (WideResNet(34, 10) with mu/sigma)",
       l2=Result("0.5", 92.23, 76.25)),
    _e("Cui2020Learnable_34_20", "trades-wrn", "WideResNet-34-20", _wrn(34, 20, True), "none",
       "WideResNet(depth=34, widen_factor=20, sub_block1=True)",
       linf=Result("0.031", 88.70, 53.57)),
    _e("Chen2021LTD_WRN34_20", "trades-wrn", "WideResNet-34-20", _wrn(34, 20), "none",
       "WideResNet(depth=34, widen_factor=20, sub_block1=False)",
       linf=Result("8/255", 86.03, 57.71)),
    _e("Jia2022LAS-AT_70_16", "trades-wrn", "WideResNet-70-16", _wrn(70, 16), "none",
       "WideResNet(depth=70, widen_factor=16)",
       linf=Result("8/255", 85.66, 57.61)),
    # dm_wide_resnet.py DMWideResNet: CIFAR-10 mean/std inside, swish.
    _e("Gowal2020Uncovering_28_10_extra", "dm-wrn", "WideResNet-28-10", _dm(28, 10), "cifar10",
       _DM_WRN.format(28, 10), linf=Result("8/255", 89.48, 62.80)),
    _e("Gowal2020Uncovering_34_20", "dm-wrn", "WideResNet-34-20", _dm(34, 20), "cifar10",
       _DM_WRN.format(34, 20), linf=Result("8/255", 85.64, 56.86)),
    _e("Gowal2020Uncovering_70_16", "dm-wrn", "WideResNet-70-16", _dm(70, 16), "cifar10",
       _DM_WRN.format(70, 16), linf=Result("8/255", 85.29, 57.20)),
    _e("Gowal2020Uncovering", "dm-wrn", "WideResNet-70-16", _dm(70, 16), "cifar10",
       _DM_WRN.format(70, 16), l2=Result("0.5", 90.90, 74.50)),
    _e("Rebuffi2021Fixing_28_10_cutmix_ddpm", "dm-wrn", "WideResNet-28-10", _dm(28, 10), "cifar10",
       _DM_WRN.format(28, 10), linf=Result("8/255", 87.33, 60.75), l2=Result("0.5", 91.79, 78.80)),
    _e("Rebuffi2021Fixing_70_16_cutmix_extra", "dm-wrn", "WideResNet-70-16", _dm(70, 16), "cifar10",
       _DM_WRN.format(70, 16), linf=Result("8/255", 92.23, 66.58), l2=Result("0.5", 95.74, 82.32)),
    _e("Wang2023Better_WRN-70-16", "dm-wrn", "WideResNet-70-16", _dm(70, 16), "cifar10",
       "DMWideResNet(depth=70, width=16, activation_fn=nn.SiLU, mean=CIFAR10_MEAN, std=CIFAR10_STD)",
       linf=Result("8/255", 93.25, 70.69), l2=Result("0.5", 95.54, 84.97)),
    # resnet.py ResNet18: no normalization.
    _e("Sehwag2021Proxy_R18", "resnet18", "ResNet-18", {}, "none", "ResNet18",
       linf=Result("8/255", 84.59, 55.54), l2=Result("0.5", 89.76, 74.41)),
    _e("Addepalli2022Efficient_RN18", "resnet18", "ResNet-18", {}, "none", "ResNet18",
       linf=Result("8/255", 85.71, 52.48)),
    # resnet.py PreActResNet(PreActBlock, [2, 2, 2, 2]).
    _e("Wong2020Fast", "preact-resnet18", "PreActResNet-18", {}, "cifar10",
       "Wong2020FastNet (PreActResNet(PreActBlock, [2, 2, 2, 2]) with mu/sigma)",
       linf=Result("8/255", 83.34, 43.21)),
    # dm_wide_resnet.py DMPreActResNet: CIFAR-10 mean/std inside, swish.
    _e("Rebuffi2021Fixing_R18_ddpm", "dm-preact-resnet", "PreActResNet-18", {"depth": 18, "activation": "swish"},
       "cifar10", _DM_R18, linf=Result("8/255", 83.53, 56.66)),
    _e("Rebuffi2021Fixing_R18_cutmix_ddpm", "dm-preact-resnet", "PreActResNet-18",
       {"depth": 18, "activation": "swish"}, "cifar10", _DM_R18, l2=Result("0.5", 90.33, 75.86)),
    _e("Rade2021Helper_R18_ddpm", "dm-preact-resnet", "PreActResNet-18", {"depth": 18, "activation": "swish"},
       "cifar10", _DM_R18, linf=Result("8/255", 86.86, 57.09), l2=Result("0.5", 90.57, 76.15)),
    _e("Gowal2021Improving_R18_ddpm_100m", "dm-preact-resnet", "PreActResNet-18",
       {"depth": 18, "activation": "swish"}, "cifar10", _DM_R18, linf=Result("8/255", 87.35, 58.63)),
)}
"""The registered entries. Architecture and arguments from ``robustbench/model_zoo/cifar10.py`` (the
``linf`` and ``l2`` tables; a name in both has the same architecture in both, with different weights);
numbers from ``model_info/cifar10/<Linf|L2>/<name>.json`` (``clean_acc``, ``autoattack_acc``)."""


def build_architecture(entry: ZooEntry, num_classes: int = 10, image_size: tuple[int, int] = (32, 32),
                       **overrides: Any) -> nn.Module:
    """``entry``'s architecture with its normalization (random init); ``overrides`` change constructor
    arguments (smaller widths for tests)."""
    _, cls = ARCHITECTURES[entry.architecture]
    norm = NORMALIZATIONS[entry.normalization]
    mean, std = norm if norm is not None else (None, None)
    kwargs: dict[str, Any] = {**entry.arch_args, "mean": mean, "std": std, **overrides}
    if entry.architecture != "trades-wrn":  # the others check or take the input size
        kwargs.setdefault("image_size", image_size)
    return cls(num_classes=num_classes, **kwargs)


# --- checkpoints ------------------------------------------------------------------------------------


WRAPPERS = ("state_dict", "model_state_dict")
PREFIXES = ("module.", "model.")
"""As ``robustbench.utils.load_model``: DataParallel's ``module.``, then ``model.``, each when every key has it."""
HINT = ("it must be an intact zoo checkpoint (torch.save of a state dict) or a safetensors file; if you trust a "
        "pickled file, convert its state dict once with safetensors.torch.save_file and pass that")


def read_checkpoint(path: str | os.PathLike[str], owner: str) -> dict[str, torch.Tensor]:
    """A zoo checkpoint's state dict from a local file, or a one-line :class:`RobustkitError`.

    Read by :func:`robustkit.state_dicts.read_state_dict`: safetensors without unpickling, anything else with
    ``torch.load(weights_only=True)``, which refuses a pickle that would build objects other than tensors and
    plain containers (so it never runs code). A ``state_dict`` / ``model_state_dict`` wrapper is unwrapped; a
    ``module.`` prefix (DataParallel) and a ``model.`` prefix are stripped, as ``robustbench.utils.load_model``
    does; a robustkit classifier's ``net.`` weights are taken without its outer normalization.
    """
    state = read_state_dict(path, owner, wrappers=WRAPPERS, prefixes=PREFIXES, hint=HINT,
                            expected="the zoo checkpoint downloaded by RobustBench (models/cifar10/<threat>/<name>.pt) "
                            "or a .safetensors conversion (robustkit never downloads weights)")
    return classifier_weights(state)


_NORM_KEYS = ("mu", "sigma", "mean", "std")
"""Names the zoo gives normalization buffers; a state dict saved from a zoo model may carry them."""


def load_zoo_state(model: nn.Module, state: Mapping[str, torch.Tensor], path: str, owner: str,
                   architecture: str) -> None:
    """Load ``state`` into ``model`` with strict key and shape matching, or raise a one-line error.

    BN ``num_batches_tracked`` counters may be absent (older checkpoints); normalization constants a zoo
    model saved as buffers (``mu``/``sigma``, ``mean``/``std``) are accepted when they equal the ones
    ``model`` normalizes with, since here they are constants, not weights.
    """
    expected = model.state_dict()
    state = dict(state)
    norm = getattr(model, "input_normalization", None)
    for key in [k for k in state if k in _NORM_KEYS and k not in expected]:
        mine = getattr(norm, "mean" if key in ("mu", "mean") else "std", None) if norm is not None else None
        value = state[key]
        if mine is not None and value.numel() == mine.numel() and torch.allclose(value.float().flatten(),
                                                                                  mine.flatten(), atol=1e-4):
            del state[key]
        elif mine is not None:
            raise RobustkitError(f"{owner}: weights file {path} normalizes with {key}="
                                 f"{tuple(round(v, 4) for v in value.flatten().tolist())}, but this zoo entry uses "
                                 f"{tuple(round(v, 4) for v in mine.flatten().tolist())}; is it another entry's file?")
    odd = state_mismatch(model, state, optional=("num_batches_tracked",))  # older checkpoints lack the counters
    missing, wrong = odd.missing, odd.wrong
    unexpected = sorted(odd.unexpected, key=lambda k: k.endswith("num_batches_tracked"))
    if odd:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({few(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({few(unexpected)})")
        if wrong:
            parts.append(f"{len(wrong)} of another shape ({wrong[0][0]}: {wrong[0][1]} in the file, {wrong[0][2]} here)")
        hint = "is it the checkpoint of another zoo entry?"
        classifier = [w for w in wrong if w[0].split(".")[0] in ("fc", "linear", "logits")]
        if classifier and len(wrong) <= 2 and not missing and not unexpected:
            hint = f"the file has {classifier[0][1][0]} classes, the dataset {classifier[0][2][0]}"
        raise RobustkitError(f"{owner}: weights file {path} does not match the {architecture} (strict key match): "
                             f"{'; '.join(parts)}; {hint}")
    model.load_state_dict(state, strict=True)


# --- factory and registration ---------------------------------------------------------------------------


PARAMS = (
    Param("weights", str, None, "the zoo checkpoint (.pt as RobustBench saves it, or .safetensors); "
          "default: random init", optional=True),
)


def create_zoo_model(zoo_name: str, num_classes: int, in_channels: int, image_size: tuple[int, int], *,
                     weights: str | None = None) -> nn.Module:
    """Build zoo entry ``zoo_name`` (random init, or ``weights`` loaded strictly) for [0, 1] inputs.

    :param weights: local zoo checkpoint; default: random init.
    """
    entry = ZOO[zoo_name]
    owner = f"{PREFIX}{zoo_name}"
    if in_channels != 3:
        raise ParameterError(f"{owner} is a CIFAR-10 model for 3-channel images; this dataset has {in_channels}")
    state = read_checkpoint(weights, owner) if weights else None  # a bad file fails before building anything
    size = (int(image_size[0]), int(image_size[1]))
    net = build_architecture(entry, num_classes, size)
    if state is not None:
        where, _ = ARCHITECTURES[entry.architecture]
        load_zoo_state(net, state, str(weights), owner, f"{entry.label} of {where}")
    return net


def _facts(entry: ZooEntry) -> dict[str, Any]:
    where, _ = ARCHITECTURES[entry.architecture]
    facts: dict[str, Any] = {"architecture": entry.label, "zoo_class": where,
                             "threat_models": tuple(entry.results),
                             "normalization": "none",  # [0, 1] in: nothing in front of the network
                             "inside_normalization": NORMALIZATION_TEXT[entry.normalization]}
    for threat, r in entry.results.items():
        facts[threat] = f"eps {r.eps}: clean {r.clean:.2f}%, AutoAttack {r.autoattack:.2f}%"
    facts["source"] = entry.sources()
    return facts


@hookimpl
def register_models(register: Register) -> None:
    for name, entry in ZOO.items():
        threats = " and ".join({"linf": "Linf", "l2": "L2"}[t] for t in entry.results)
        register(f"{PREFIX}{name}", functools.partial(create_zoo_model, name), params=PARAMS,
                 description=f"RobustBench {name}: {entry.label}, CIFAR-10 {threats} (weights= its zoo checkpoint)",
                 library="robustbench", **_facts(entry))


__all__ = ["ARCHITECTURES", "NORMALIZATIONS", "NORMALIZATION_TEXT", "PARAMS", "PREFIX", "Result",
           "ZOO", "ZooEntry", "build_architecture", "create_zoo_model", "load_zoo_state", "read_checkpoint",
           "register_models"]
