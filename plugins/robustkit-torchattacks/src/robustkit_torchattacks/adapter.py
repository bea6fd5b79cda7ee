"""Every torchattacks attack as a robustkit attack named ``torchattacks:NAME``.

Each name in ``torchattacks.__all__`` gets one generated :class:`~robustkit.attacks.Attack` subclass
(see :func:`adapter_class`), built on the core's adapter base (:class:`robustkit.library_adapter.LibraryAttack`).
Its parameters are the torchattacks constructor's own (read from the signature, ``model`` left out),
checked before anything runs, plus ``seed``.
One adapter works for any model: the torchattacks object is built for the model being attacked on
first use and reused while what a build reads from the model stays the same (its device, and its
class count for the attacks that need one: :func:`robustkit.attacks.model_facts`), one for untargeted
and one for targeted calls. The cache is keyed weakly by the model, and a cached object reaches the
model through a weak reference (``_WeakModel``), so an adapter never keeps a model alive. Reuse changes
no result: the object is the one a fresh build would give (it calls the model itself, so new weights
need no rebuild), and every call seeds the RNGs as before.

Conventions the adapter fixes:

- Images are in [0, 1] and robustkit models normalize inside, so torchattacks' own
  normalization is never switched on.
- The attack runs on the model's device and returns images on the input's device.
- ``seed`` seeds Python, NumPy and torch right before the torchattacks call (and is passed as the
  attack's own ``seed`` where it has one), so a call is repeatable and equals calling torchattacks
  directly after ``torch.manual_seed(seed)``.
- ``n_classes`` (APGDT, FAB, AutoAttack) is read from the model's logits unless given.
- ``target_labels`` switch on torchattacks' ``set_mode_targeted_by_label``.

Attacks the adapter cannot express through parameters are still registered, marked
``available=False`` with the reason, and raise that reason when built.

Registration must stay cheap (it runs whenever the CLI starts) and importing torchattacks takes
seconds (it pulls in SciPy), so torchattacks is imported only when it is needed:

- the names are ``torchattacks.__all__`` read from the package's ``__init__.py`` without running it
  (:func:`library_names`; it falls back to importing when ``__all__`` is not a plain literal);
- facts and descriptions come from the static tables :data:`FACTS` and :data:`TITLES`, and the
  version from the distribution's metadata (:data:`LIBRARY_VERSION`);
- a generated class's ``torchattacks_class`` (also ``library_class``), ``params`` and ``__doc__`` are
  filled in from the library on first access (:class:`~robustkit.library_adapter.FromLibrary`): when an
  attack is created, when its parameters are listed (``robustkit attacks list --params`` / ``--json``)
  or when its help is read.

A name in ``__all__`` without :data:`FACTS` (a newer torchattacks) is registered as unavailable
("not reviewed") without importing anything; ``tests/test_torchattacks_adapter.py`` checks that
:data:`FACTS` and :data:`UNAVAILABLE` cover the installed ``__all__`` exactly and that
:data:`TITLES` match the library's docstrings.
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import io
import re
import weakref
from dataclasses import dataclass
from importlib import util
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar, Mapping

import torch
from torch import nn

from robustkit import hookimpl
from robustkit.attacks import Attack, AttackResult, model_device, model_facts
from robustkit.devices import seed_everything
from robustkit.errors import InputError, ParameterError, RobustkitError
from robustkit.library_adapter import (
    DECISION,
    FIXED,
    MINIMAL,
    SCORE,
    WHITE,
    AttackFacts,
    Library,
    LibraryAttack,
    installed_version,
    register_adapters,
)
from robustkit.params import Param

if util.find_spec("torchattacks") is None:  # a missing library still fails at load, as an eager import would
    raise ModuleNotFoundError("No module named 'torchattacks'", name="torchattacks")


def _library() -> ModuleType:
    """The torchattacks module, imported on first use (seconds: it pulls in SciPy)."""
    import torchattacks

    return torchattacks


PREFIX = "torchattacks:"
# From the distribution's metadata; importable but not installed as a distribution: the module's own version.
LIBRARY_VERSION: str = installed_version("torchattacks") or str(getattr(_library(), "__version__", "unknown"))
LIBRARY = Library("torchattacks", LIBRARY_VERSION, PREFIX, "Torchattacks")


@dataclass(frozen=True)
class Facts(AttackFacts):
    """What one torchattacks attack is (:class:`~robustkit.library_adapter.AttackFacts`), and:

    :param rgb_only: its fixed kernels assume 3-channel images.
    :param min_classes: fewest classes the model may have.
    """

    rgb_only: bool = False
    min_classes: int = 2


_LINF = ("linf",)
_LINF_L2 = ("linf", "l2")

#: Reviewed against torchattacks 3.5.1; a name missing here is registered as unavailable.
FACTS: dict[str, Facts] = {
    "VANILA": Facts(("unbounded",), DECISION, FIXED, False, "returns the images unchanged (a sanity baseline)"),
    "GN": Facts(("unbounded",), DECISION, FIXED, False, "adds Gaussian noise; never queries the model"),
    "FGSM": Facts(_LINF, WHITE, FIXED, True),
    "BIM": Facts(_LINF, WHITE, FIXED, True),
    "RFGSM": Facts(_LINF, WHITE, FIXED, True),
    "PGD": Facts(_LINF, WHITE, FIXED, True),
    "EOTPGD": Facts(_LINF, WHITE, FIXED, True),
    "FFGSM": Facts(_LINF, WHITE, FIXED, True),
    "TPGD": Facts(_LINF, WHITE, FIXED, False, "ascends the KL divergence to the clean prediction (TRADES)"),
    "MIFGSM": Facts(_LINF, WHITE, FIXED, True),
    "UPGD": Facts(_LINF, WHITE, FIXED, True),
    "APGD": Facts(_LINF_L2, WHITE, FIXED, False),
    "APGDT": Facts(_LINF_L2, WHITE, FIXED, False, "targets the top classes itself; no user-chosen targets"),
    "DIFGSM": Facts(_LINF, WHITE, FIXED, True),
    "TIFGSM": Facts(_LINF, WHITE, FIXED, True, "needs 3-channel images", rgb_only=True),
    "Jitter": Facts(_LINF, WHITE, FIXED, True),
    "NIFGSM": Facts(_LINF, WHITE, FIXED, True),
    "PGDRS": Facts(_LINF, WHITE, FIXED, True),
    "SINIFGSM": Facts(_LINF, WHITE, FIXED, True),
    "VMIFGSM": Facts(_LINF, WHITE, FIXED, True),
    "VNIFGSM": Facts(_LINF, WHITE, FIXED, True),
    "SPSA": Facts(_LINF, SCORE, FIXED, True),
    "JSMA": Facts(("l0",), WHITE, FIXED, True,
                  "untargeted mode aims at class (label + 1) mod 10, so it needs at least 10 classes", min_classes=10),
    "EADL1": Facts(("l1",), WHITE, MINIMAL, True),
    "EADEN": Facts(("l1", "l2"), WHITE, MINIMAL, True),
    "PIFGSM": Facts(_LINF, WHITE, FIXED, False, "needs 3-channel images", rgb_only=True),
    "PIFGSMPP": Facts(_LINF, WHITE, FIXED, True, "needs 3-channel images", rgb_only=True),
    "CW": Facts(("l2",), WHITE, MINIMAL, True, "not the cleverhans CW-L2: no binary search over c"),
    "PGDL2": Facts(("l2",), WHITE, FIXED, True),
    "DeepFool": Facts(("l2",), WHITE, MINIMAL, False),
    "PGDRSL2": Facts(("l2",), WHITE, FIXED, True),
    "SparseFool": Facts(("l0",), WHITE, MINIMAL, False),
    "OnePixel": Facts(("l0",), SCORE, FIXED, True),
    "Pixle": Facts(("l0",), SCORE, MINIMAL, True),
    "FAB": Facts(_LINF_L2, WHITE, MINIMAL, False,
                 "keeps only adversarials within eps; multi_targeted=true runs FAB-T; torchattacks' label-targeted "
                 "mode and norm L1 are broken in 3.5.1, so neither is offered"),
    "AutoAttack": Facts(_LINF_L2, WHITE, FIXED, False,
                        "torchattacks runs APGD/APGD-T/FAB with 10 steps, not the original 100"),
    "Square": Facts(_LINF_L2, SCORE, FIXED, True),
}

#: torchattacks names that parameters cannot express, with the reason shown to users.
UNAVAILABLE: dict[str, str] = {
    "MultiAttack": "it combines already-built torchattacks objects; evaluate several attacks and read the "
                   "worst case instead (robustkit.evaluation.evaluate)",
    "LGV": "it needs a training DataLoader and trains surrogate models before attacking; use torchattacks.LGV directly",
}

#: First line of each torchattacks docstring (3.5.1), for descriptions without importing the library.
#: A test checks them against the installed torchattacks.
TITLES: dict[str, str] = {
    "VANILA": "Vanila version of Attack",
    "GN": "Add Gaussian Noise",
    "FGSM": "FGSM in the paper 'Explaining and harnessing adversarial examples'",
    "BIM": "BIM or iterative-FGSM in the paper 'Adversarial Examples in the Physical World'",
    "RFGSM": "R+FGSM in the paper 'Ensemble Adversarial Training : Attacks and Defences'",
    "PGD": "PGD in the paper 'Towards Deep Learning Models Resistant to Adversarial Attacks'",
    "EOTPGD": 'Comment on "Adv-BNN: Improved Adversarial Defense through Robust Bayesian Neural Network"',
    "FFGSM": "New FGSM proposed in 'Fast is better than free: Revisiting adversarial training'",
    "TPGD": "PGD based on KL-Divergence loss in the paper 'Theoretically Principled Trade-off between Robustness "
            "and Accuracy'",
    "MIFGSM": "MI-FGSM in the paper 'Boosting Adversarial Attacks with Momentum'",
    "UPGD": "Ultimate PGD that supports various options of gradient-based adversarial attacks",
    "APGD": "APGD in the paper 'Reliable evaluation of adversarial robustness with an ensemble of diverse "
            "parameter-free attacks'",
    "APGDT": "APGD-Targeted in the paper 'Reliable evaluation of adversarial robustness with an ensemble of diverse "
             "parameter-free attacks.'",
    "DIFGSM": "DI2-FGSM in the paper 'Improving Transferability of Adversarial Examples with Input Diversity'",
    "TIFGSM": "TIFGSM in the paper 'Evading Defenses to Transferable Adversarial Examples by Translation-Invariant "
              "Attacks'",
    "Jitter": "Jitter in the paper 'Exploring Misclassifications of Robust Neural Networks to Enhance Adversarial "
              "Attacks'",
    "NIFGSM": "NI-FGSM in the paper 'NESTEROV ACCELERATED GRADIENT AND SCALEINVARIANCE FOR ADVERSARIAL ATTACKS'",
    "PGDRS": "PGD for randmized smoothing in the paper 'Provably Robust Deep Learning via Adversarially Trained "
             "Smoothed Classifiers'",
    "SINIFGSM": "SI-NI-FGSM in the paper 'NESTEROV ACCELERATED GRADIENT AND SCALEINVARIANCE FOR ADVERSARIAL ATTACKS'",
    "VMIFGSM": "VMI-FGSM in the paper 'Enhancing the Transferability of Adversarial Attacks through Variance Tuning",
    "VNIFGSM": "VNI-FGSM in the paper 'Enhancing the Transferability of Adversarial Attacks through Variance Tuning",
    "SPSA": "SPSA in the paper 'Adversarial Risk and the Dangers of Evaluating Against Weak Attacks'",
    "JSMA": "Jacobian Saliency Map Attack in the paper 'The Limitations of Deep Learning in Adversarial Settings'",
    "EADL1": "EAD attack in the paper 'EAD: Elastic-Net Attacks to Deep Neural Networks'",
    "EADEN": "EAD attack in the paper 'EAD: Elastic-Net Attacks to Deep Neural Networks'",
    "PIFGSM": "PIFGSM in the paper 'Patch-wise Attack for Fooling Deep Neural Network'",
    "PIFGSMPP": "Patch-wise++ Perturbation for Adversarial Targeted Attacks",
    "CW": "CW in the paper 'Towards Evaluating the Robustness of Neural Networks'",
    "PGDL2": "PGD in the paper 'Towards Deep Learning Models Resistant to Adversarial Attacks'",
    "DeepFool": "'DeepFool: A Simple and Accurate Method to Fool Deep Neural Networks'",
    "PGDRSL2": "PGD for randmized smoothing in the paper 'Provably Robust Deep Learning via Adversarially Trained "
               "Smoothed Classifiers'",
    "SparseFool": "Attack in the paper 'SparseFool: a few pixels make a big difference'",
    "OnePixel": "Attack in the paper 'One pixel attack for fooling deep neural networks'",
    "Pixle": "Pixle: a fast and effective black-box attack based on rearranging pixels",
    "FAB": "Fast Adaptive Boundary Attack in the paper 'Minimally distorted Adversarial Examples with a Fast "
           "Adaptive Boundary Attack'",
    "AutoAttack": "AutoAttack in the paper 'Reliable evaluation of adversarial robustness with an ensemble of diverse "
                  "parameter-free attacks'",
    "Square": "Square Attack in the paper 'Square Attack: a query-efficient black-box adversarial attack via random "
              "search'",
    "MultiAttack": "MultiAttack is a class to attack a model with various attacks agains same images and labels",
    "LGV": "LGV attack in the paper 'LGV: Boosting Adversarial Example Transferability from Large Geometric Vicinity'",
}

# torchattacks spells norms 'Linf'/'L2'/'L1'; robustkit spells them lower-case.
_NORM_SPELLING = {"linf": "Linf", "l2": "L2", "l1": "L1"}

# Signature defaults that are ints although the value is real-valued (CW c=1, kappa=0, lam=3).
_REAL_VALUED = {"c", "kappa", "lam"}

# Parameters whose signature default does not reveal the allowed strings.
_CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("UPGD", "loss"): ("ce", "dlr", "margin"),
    ("APGD", "loss"): ("ce", "dlr"),
    ("Square", "loss"): ("margin", "ce"),
    ("TIFGSM", "kernel_name"): ("gaussian", "linear", "uniform"),
    ("PGDRS", "noise_type"): ("guassian", "uniform"),  # sic: torchattacks' spelling
    ("PGDRSL2", "noise_type"): ("guassian", "uniform"),
    ("Pixle", "pixel_mapping"): ("random", "similarity", "similarity_random", "distance", "distance_random"),
    ("AutoAttack", "version"): ("standard", "plus", "rand"),
}

_BUDGET_NAMES = ("eps", "max_epsilon")
_SEED_HELP = "seeds Python, NumPy and torch right before the attack (and the attack's own seed, if any)"
_N_CLASSES_HELP = "number of classes; read from the model's logits when not given"


# --- the adapter base -----------------------------------------------------------------------


class TorchattacksAttack(LibraryAttack):
    """Base of the generated ``torchattacks:NAME`` classes; see :func:`adapter_class`."""

    library = LIBRARY
    facts: ClassVar[Facts]
    #: The torchattacks class (the same as ``library_class``), read on first use like it.
    torchattacks_class: ClassVar[type]
    lazy_attributes = (*LibraryAttack.lazy_attributes, "torchattacks_class")
    budget_names = _BUDGET_NAMES
    seed_help = _SEED_HELP
    tuple_hint = "a number or a tuple like 2,10"

    def __init__(self, **params: Any):
        if isinstance(params.get("norm"), str):
            # Accept robustkit's spelling (linf) as well as torchattacks' (Linf).
            params["norm"] = _NORM_SPELLING.get(params["norm"].lower(), params["norm"])
        super().__init__(**params)

    # -- what is read from torchattacks, on first use ------------------------------------------------

    @classmethod
    def load_library_class(cls) -> type:
        library_class = getattr(_library(), cls.library_name, None)
        if library_class is None:
            raise RobustkitError(f"torchattacks {LIBRARY_VERSION} has no attack named {cls.library_name}")
        return library_class

    @classmethod
    def library_details(cls) -> dict[str, Any]:
        details = super().library_details()
        return {**details, "torchattacks_class": details["library_class"]}

    @classmethod
    def hidden_arguments(cls) -> tuple[str, ...]:
        return ("self", "model", "seed")

    @classmethod
    def argument_help(cls, library_class: type) -> dict[str, str]:
        """``name (type): help`` lines of a torchattacks docstring, without the ``(Default: ...)``."""
        doc = inspect.getdoc(library_class) or ""
        return {m[1]: re.sub(r"\s*\(Default:.*$", "", m[3]).strip() for m in _ARG_LINE.finditer(doc)}

    @classmethod
    def param_changes(cls, param: Param, argument: inspect.Parameter) -> Mapping[str, Any]:
        name, p = cls.library_name, param
        changes: dict[str, Any] = {}
        if p.name in _REAL_VALUED and p.type is int:
            changes.update(type=float, default=float(p.default))
        if p.name in _BUDGET_NAMES or p.name == "alpha":
            linf_only = cls.facts.threat_models == _LINF
            changes.update(low=0.0, high=1.0 if linf_only and p.name in _BUDGET_NAMES else None)
        if p.name == "norm":  # both spellings pass; __init__ turns robustkit's into torchattacks'
            norms = cls.facts.threat_models
            changes["choices"] = tuple(_NORM_SPELLING[n] for n in norms) + norms
        if (name, p.name) in _CHOICES:
            changes["choices"] = _CHOICES[(name, p.name)]
        if p.name == "n_classes":
            changes.update(default=None, optional=True, low=2, help=_N_CLASSES_HELP)
        return changes

    @classmethod
    def title(cls, library_class: type | None = None) -> str:
        return _title(cls.library_name, library_class)

    # -- checks --------------------------------------------------------------------------------------

    def check_with_library(self) -> None:
        """Build once on a stand-in model so torchattacks' own checks fail now, not mid-evaluation."""
        kwargs = self.library_kwargs()
        if kwargs.get("n_classes", 0) is None:
            kwargs["n_classes"] = 10
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                self.library_class(nn.Linear(1, 1), **kwargs)
        except (TypeError, ValueError, AssertionError, KeyError) as err:
            raise ParameterError(f"{self.display_name()}: {err}") from None

    # -- running -----------------------------------------------------------------------------

    def build(self, model: nn.Module, images: torch.Tensor) -> Any:
        """A new torchattacks object for ``model``, on the model's device, normalization off."""
        return self._build(model, images, self.library_kwargs())

    def _build(self, model: nn.Module, images: torch.Tensor, kwargs: dict[str, Any]) -> Any:
        if "n_classes" in kwargs and kwargs["n_classes"] is None:
            kwargs["n_classes"] = model_facts(model, images).num_classes
        # torchattacks prints instead of raising when a model has no parameters; the device is set below.
        with contextlib.redirect_stdout(io.StringIO()):
            attack = self.library_class(model, **kwargs)
        attack.set_device(model_device(model) or images.device)
        return attack

    def _cached(self, model: nn.Module, images: torch.Tensor, targeted: bool) -> Any:
        """The torchattacks object for ``model`` (which it reaches through a :class:`_WeakModel`), built
        again when anything a build reads from the model differs from the last call's.

        A build reads the model's device and, for attacks whose ``n_classes`` is left to the model (APGDT,
        FAB, AutoAttack), its class count: :class:`~robustkit.attacks.ModelFacts`, the same object while
        the model is unchanged. Weights need no rebuild: the object calls the model itself.
        """
        kwargs = self.library_kwargs()
        facts = model_facts(model, images) if kwargs.get("n_classes", 0) is None else None
        device = model_device(model) or images.device
        cache = self.__dict__.get("_built")
        if cache is None:
            cache = self._built = weakref.WeakKeyDictionary()
        entries = cache.setdefault(model, {})
        entry = entries.get(targeted)
        if entry is not None and entry[0] is facts and entry[1] == device and entry[2] == kwargs:
            return entry[3]
        attack = self._build(model, images, dict(kwargs))
        if targeted:
            attack.set_mode_targeted_by_label(quiet=True)
        attack.set_model(_WeakModel(model))  # the cache must not keep the model alive
        entries[targeted] = (facts, device, kwargs, attack)
        return attack

    def perturb(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                target_labels: torch.Tensor | None = None) -> AttackResult:
        facts = self.facts
        if facts.rgb_only and images.shape[1] != 3:
            raise InputError(f"{self.display_name()} works on 3-channel images only, got {images.shape[1]} channel(s)")
        if facts.min_classes > 2 and (classes := model_facts(model, images).num_classes) < facts.min_classes:
            raise InputError(f"{self.display_name()} needs a model with at least {facts.min_classes} classes, "
                             f"this one has {classes}")
        attack = self._cached(model, images, target_labels is not None)
        if target_labels is not None:
            labels = target_labels  # in this mode torchattacks reads the targets from the labels argument
        seed_everything(self.config["seed"])
        return AttackResult(adversarial=attack(images, labels))


class _WeakModel(nn.Module):
    """The model for a cached torchattacks object: calls it through a weak reference, so the cache never
    keeps it alive.

    Its mode is not the model's: torchattacks switches ``self.model`` to eval mode on every call, and
    :meth:`Attack.__call__ <robustkit.attacks.Attack.__call__>` already did that for the model itself.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self._ref = weakref.ref(model)
        self.train(False)  # torchattacks then has no mode to restore after each call

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        model = self._ref()
        if model is None:
            raise RuntimeError("the model this torchattacks object was built for no longer exists")
        return model(*args, **kwargs)


# --- names, read without importing torchattacks ---------------------------------------------


def _static_all(source: str) -> tuple[str, ...] | None:
    """``__all__`` of a module's source if it is assigned once, as a literal of strings, and never changed."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    uses = [n for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id == "__all__"]
    assigns = [n for n in tree.body if isinstance(n, ast.Assign) and len(n.targets) == 1
               and isinstance(n.targets[0], ast.Name) and n.targets[0].id == "__all__"]
    if len(uses) != 1 or len(assigns) != 1:  # computed, extended or reassigned: only running the module tells
        return None
    try:
        names = ast.literal_eval(assigns[0].value)
    except (ValueError, TypeError, SyntaxError):
        return None
    if isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names):
        return tuple(names)
    return None


def library_names() -> tuple[str, ...]:
    """``torchattacks.__all__``, read from the package's ``__init__.py`` without importing it.

    Falls back to importing torchattacks when the source does not spell ``__all__`` as one literal.
    """
    spec = util.find_spec("torchattacks")
    names = None
    if spec is not None and spec.origin:
        try:
            names = _static_all(Path(spec.origin).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError):
            names = None
    return names if names is not None else tuple(_library().__all__)


# --- generating one class per torchattacks attack -------------------------------------------


#: Settings under which each attack runs in about a second on two tiny images (the contract checks of
#: robustkit.testing use them); an attack not listed runs with its defaults.
CHEAP_PARAMS: dict[str, dict[str, Any]] = {
    "Square": {"n_queries": 20},
    "EADL1": {"binary_search_steps": 2, "max_iterations": 10},
    "EADEN": {"binary_search_steps": 2, "max_iterations": 10},
}


def adapter_class(name: str) -> type[Attack]:
    """The robustkit Attack class for ``torchattacks.<name>`` (unavailable ones raise when built).

    Builds the class from :data:`FACTS` alone; what needs torchattacks itself (the library class,
    the parameters read from its signature and the docstring) is filled in on first access.
    """
    facts = FACTS.get(name)
    if name in UNAVAILABLE or facts is None:
        reason = UNAVAILABLE.get(name) or f"the adapter has not been reviewed for it (torchattacks {LIBRARY_VERSION})"
        return TorchattacksAttack.unavailable_class(name, _title(name), reason)
    return TorchattacksAttack.adapter_class(name, facts, cheap_params=CHEAP_PARAMS.get(name, {}),
                                            cheap_input=(3, 8, 8) if facts.rgb_only else (1, 8, 8))


_ARG_LINE = re.compile(r"^\s*(\w+) \(([^)]*)\)\s*:\s*(.*)$", re.M)


def _first_line(library_class: type) -> str:
    line = (inspect.getdoc(library_class) or library_class.__name__).strip().splitlines()[0].strip()
    if line.count("'") % 2 and line.endswith("'"):  # a few torchattacks titles end with a stray quote
        line = line[:-1]
    return line.rstrip(".")


def _title(name: str, library_class: type | None = None) -> str:
    """The attack's title: :data:`TITLES`, else the library docstring's first line, else the name."""
    if name in TITLES:
        return TITLES[name]
    return _first_line(library_class) if library_class is not None else name


def adapter_classes() -> dict[str, type[Attack]]:
    """``{"torchattacks:NAME": class}`` for every name in ``torchattacks.__all__``."""
    return {PREFIX + name: adapter_class(name) for name in library_names()}


@hookimpl
def register_attacks(register: Any) -> None:
    """Register every torchattacks attack, the unavailable ones with their reason, without importing torchattacks.

    Descriptions and facts are static; the parameters of an available attack are left to the
    class's lazily computed ``params`` (read when the attack is created or its parameters listed).
    """
    register_adapters(register, adapter_classes().values())
