"""Every ART evasion attack as a robustkit attack named ``art:NAME``.

Each attack class exported by ``art.attacks.evasion`` (Adversarial Robustness Toolbox) gets one
generated :class:`~robustkit.attacks.Attack` subclass (see :func:`adapter_class`), built on the core's
adapter base (:class:`robustkit.library_adapter.LibraryAttack`). Registering them does not import ART:
names and facts come from the static tables below, and ART is imported only when an attack is built or
its parameters or help are read (:class:`~robustkit.library_adapter.FromLibrary`; once per class). The
parameters are the ART constructor's own (read from its signature; ``estimator``/``classifier`` and
``targeted`` left out), checked before anything runs (ART's own checks run at construction too, on a
stand-in model), plus ``seed``.

The robustkit model (images in [0, 1] -> logits, normalization inside) is wrapped in
``art.estimators.classification.PyTorchClassifier`` with ``input_shape`` = (C, H, W) of the batch,
``nb_classes`` from one forward pass, ``clip_values`` (0, 1), a cross-entropy loss, no optimizer (no
ART evasion attack trains the model) and the model's device (``device_type`` "gpu" or "cpu"). Images go
to ART as float32 NumPy arrays and come back as tensors on the input's device. The wrapper is built on
first use and reused while what it read from the model holds: the input shape, the model's device and
dtype (checked on every call) and its class count (checked on every forward pass, by the wrapper; a
model with a new head gets a new wrapper and the call runs again). New weights need no new wrapper: it
calls the model itself. The cache is keyed weakly by the model, and the wrapper holds the model only
during a call, so an adapter never keeps a model alive. An ART attack object whose attributes are all
immutable values is kept too and reset to its as-built state before every call (some attacks keep state
from ``generate``); any other is built on every call.

Conventions the adapter fixes:

- ``norm`` takes robustkit's spelling (``linf``, ``l2``, ``l1``) as well as ART's (``inf``, ``2``, ``1``);
  a ``linf`` ``eps`` above 1 (outside the data range) is refused.
- ``targeted`` is not a parameter: ``target_labels`` switch it on, and ART gets them as one-hot ``y``;
  untargeted calls give ART the true labels as one-hot ``y``.
- ``seed`` seeds Python, NumPy and torch right before ART runs, so a call is repeatable and equals
  calling ART directly after seeding the same way.
- ``verbose`` defaults to False (no progress bars; attacks that ART builds inside others, such as
  AutoAttack's APGD or UniversalPerturbation's DeepFool, keep ART's own setting).

Known deviations from calling ART with its defaults (each entry's note repeats its own):

- ART's ``AutoAttack`` is not the original: its default suite is APGD-CE, APGD-DLR, DeepFool and Square,
  without APGD-T and FAB-T (see shared/SPECS.md); it also needs the ``multiprocess`` package.
- ``HopSkipJump``, ``BoundaryAttack`` and ``BrendelBethgeAttack`` draw their starting points from an
  unseeded ``np.random.RandomState()``; the adapter seeds those from ``seed`` so their calls repeat too.
- ``UniversalPerturbation`` and ``TargetedUniversalPerturbation`` default to ``eps=0.3`` (ART's 10 is
  outside the data range); ``ThresholdAttack`` defaults to ``es=1`` (ART's ``es=0`` needs ``cma``).
- ``SaliencyMapMethod`` and ``ShadowAttack`` read any labels as targets, so untargeted calls give them
  none: JSMA then aims at a random wrong class, the shadow attack at leaving the model's prediction.
- ART 1.20.1 predates NumPy 2 in places: ``GeoDA``'s ``np.mat`` is served as ``np.asmatrix``, and inputs
  promoted to float64 are cast back to the model's dtype.
- ``GeoDA`` caches its DCT basis as a file in the working directory: it runs in a private temporary
  directory instead, so nothing is written where the user works.
- ``SimBA``, ``PixelAttack``, ``ThresholdAttack`` and ``VirtualAdversarialMethod`` need probabilities:
  they see the model with a softmax on top.

Attacks that do not apply to a PyTorch image classifier (audio, object detection, video, TensorFlow,
tabular and tree models, patch attacks, attacks needing extra inputs) and attacks whose optional
package is missing are still registered, marked ``available=False`` with the reason, and raise it.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import importlib.util
import inspect
import os
import re
import shutil
import tempfile
import weakref
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, ClassVar, Iterator, Mapping

import numpy as np
import torch
from torch import nn

from robustkit import hookimpl
from robustkit.attacks import Attack, AttackResult, first_parameter, model_facts
from robustkit.devices import seed_everything
from robustkit.errors import InputError, ParameterError, one_line
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
from robustkit.params import Param, signature_names

PREFIX = "art:"
DISTRIBUTION = "adversarial-robustness-toolbox"
LIBRARY_VERSION: str = installed_version(DISTRIBUTION) or "not installed"
LIBRARY = Library("ART", LIBRARY_VERSION, PREFIX, "Art")


@dataclass(frozen=True)
class Facts(AttackFacts):
    """What one ART attack is (:class:`~robustkit.library_adapter.AttackFacts`; ``title`` is the listing's line),
    and:

    :param norms: values of ART's ``norm`` parameter in robustkit spelling, or empty if it has none.
    :param untargeted_y: ``"labels"``: untargeted calls pass the true labels; ``"none"``: pass none.
    :param probabilities: the attack needs probabilities, so it sees the model with a softmax on top.
    :param one_at_a_time: ART accepts a single image per call.
    :param patched_modules: ART modules that run with :class:`_PatchedNumpy` (seeded ``RandomState()``,
        ``np.mat``).
    :param requires: optional packages it imports; missing ones make the entry unavailable.
    :param defaults: robustkit defaults that differ from ART's.
    :param hidden: constructor arguments not exposed (they need ART objects built on the model).
    :param input_shape: the only ``C x H x W`` it accepts.
    :param square: images must be square.
    :param writes_cwd: ``generate`` caches files in the working directory; it runs in a private one instead.
    """

    norms: tuple[str, ...] = ()
    untargeted_y: str = "labels"
    probabilities: bool = False
    one_at_a_time: bool = False
    patched_modules: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    defaults: Mapping[str, Any] = field(default_factory=dict, compare=False)
    hidden: tuple[str, ...] = ()
    input_shape: tuple[int, int, int] | None = None
    square: bool = False
    writes_cwd: bool = False


_LINF, _L2 = ("linf",), ("l2",)
_P_NORMS = ("linf", "l2", "l1")
_EVASION = "art.attacks.evasion"

#: Reviewed against ART 1.20.1: the attacks that apply to a PyTorch image classifier.
FACTS: dict[str, Facts] = {
    "FastGradientMethod": Facts(
        _P_NORMS, WHITE, FIXED, True, "minimal=true searches the smallest eps up to eps in steps of eps_step",
        norms=_P_NORMS, title="Fast gradient (sign) method, FGSM/FGM (Goodfellow et al. 2015)"),
    "BasicIterativeMethod": Facts(_LINF, WHITE, FIXED, True, title="Basic iterative method, BIM (Kurakin et al. 2016)"),
    "ProjectedGradientDescent": Facts(
        _P_NORMS, WHITE, FIXED, True, "ART runs its PyTorch implementation for PyTorch models", norms=_P_NORMS,
        title="Projected gradient descent, PGD (Madry et al. 2018)"),
    "ProjectedGradientDescentNumpy": Facts(
        _P_NORMS, WHITE, FIXED, True, norms=_P_NORMS,
        title="Projected gradient descent, PGD: ART's framework-independent NumPy implementation"),
    "ProjectedGradientDescentPyTorch": Facts(
        _P_NORMS, WHITE, FIXED, True, norms=_P_NORMS,
        title="Projected gradient descent, PGD: ART's PyTorch implementation"),
    "MomentumIterativeMethod": Facts(
        _P_NORMS, WHITE, FIXED, True, norms=_P_NORMS, title="Momentum iterative method, MIM (Dong et al. 2018)"),
    "AutoProjectedGradientDescent": Facts(
        _P_NORMS, WHITE, FIXED, True, "loss_type=difference_logits_ratio needs at least 3 classes", norms=_P_NORMS,
        title="Auto-PGD, APGD (Croce and Hein 2020)"),
    "AutoConjugateGradient": Facts(
        _P_NORMS, WHITE, FIXED, True, "loss_type=difference_logits_ratio needs at least 3 classes", norms=_P_NORMS,
        title="Auto conjugate gradient, ACG (Yamamura et al. 2022)"),
    "RescalingAutoConjugateGradient": Facts(
        _P_NORMS, WHITE, FIXED, True, "loss_type=difference_logits_ratio needs at least 3 classes", norms=_P_NORMS,
        title="Rescaling auto conjugate gradient, ReACG (Yamamura et al. 2023)"),
    "AutoAttack": Facts(
        ("linf", "l2"), WHITE, FIXED, False,
        "not the original AutoAttack: ART's suite is APGD-CE, APGD-DLR, DeepFool and Square (5,000 queries x 5 "
        "restarts), without APGD-T and FAB-T; ART's own targeted flag and attack lists are not exposed",
        norms=("linf", "l2"), requires=("multiprocess",), hidden=("attacks", "estimator_orig"),
        title="AutoAttack, ART's version (after Croce and Hein 2020)"),
    "CarliniL2Method": Facts(
        _L2, WHITE, MINIMAL, True,
        "not the cleverhans CW-L2 of the PGN paper: ART's defaults are 10 binary-search steps x 10 iterations, "
        "and ART doubles the constant where cleverhans multiplies it by 10 (5 steps from 1e-2 stop at 0.16)",
        title="Carlini and Wagner L2 attack (2017)"),
    "CarliniLInfMethod": Facts(
        _LINF, WHITE, MINIMAL, True,
        "not the 'CW' of the RLFAT paper, which is PGD on the margin loss (robustkit's cw-linf)",
        title="Carlini and Wagner Linf attack (2017)"),
    "CarliniL0Method": Facts(("l0",), WHITE, MINIMAL, True, title="Carlini and Wagner L0 attack (2017)"),
    "ElasticNet": Facts(("l1", "l2"), WHITE, MINIMAL, True, title="Elastic-net attack, EAD (Chen et al. 2018)"),
    "DeepFool": Facts(_L2, WHITE, MINIMAL, False, title="DeepFool (Moosavi-Dezfooli et al. 2016)"),
    "NewtonFool": Facts(_L2, WHITE, MINIMAL, False, title="NewtonFool (Jang et al. 2017)"),
    "SaliencyMapMethod": Facts(
        ("l0",), WHITE, MINIMAL, True, "ART reads labels as targets, so untargeted calls aim at a random wrong class",
        untargeted_y="none", title="Jacobian saliency map attack, JSMA (Papernot et al. 2016)"),
    "VirtualAdversarialMethod": Facts(
        _L2, SCORE, FIXED, False, "ignores the labels: pushes the prediction away from itself; sees softmax "
        "probabilities", probabilities=True, title="Virtual adversarial perturbation (Miyato et al. 2016)"),
    "Wasserstein": Facts(
        ("wasserstein",), WHITE, FIXED, True,
        "eps bounds the Wasserstein distance (ball=wasserstein), not a pixel norm",
        title="Wasserstein adversarial examples (Wong et al. 2019)"),
    "ShadowAttack": Facts(
        ("unbounded",), WHITE, MINIMAL, True,
        "runs one image at a time; ART reads labels as targets, so untargeted calls attack the model's own "
        "prediction", untargeted_y="none", one_at_a_time=True, title="Shadow attack (Ghiasi et al. 2020)"),
    "SpatialTransformation": Facts(
        ("unbounded",), DECISION, FIXED, False,
        "one transformation for the whole batch; the defaults (no translation, no rotation) change nothing: "
        "set max_translation (percent) and max_rotation (degrees)",
        title="Spatial transformation: the worst translation and rotation (Engstrom et al. 2019)"),
    "UniversalPerturbation": Facts(
        ("linf", "l2"), WHITE, FIXED, False,
        "one perturbation for the whole batch; eps defaults to 0.3, not ART's 10", norms=("linf", "l2"),
        defaults={"eps": 0.3}, title="Universal adversarial perturbation (Moosavi-Dezfooli et al. 2017)"),
    "TargetedUniversalPerturbation": Facts(
        ("linf", "l2"), WHITE, FIXED, True,
        "targeted only; one perturbation for the whole batch; eps defaults to 0.3, not ART's 10",
        norms=("linf", "l2"), targeted_only=True, defaults={"eps": 0.3},
        title="Targeted universal adversarial perturbation (Hirano and Takemoto 2020)"),
    "SquareAttack": Facts(
        ("linf", "l2"), SCORE, FIXED, False, norms=("linf", "l2"), title="Square attack (Andriushchenko et al. 2020)"),
    "SimBA": Facts(
        _L2, SCORE, MINIMAL, True, "sees softmax probabilities", probabilities=True,
        title="Simple black-box attack, SimBA (Guo et al. 2019)"),
    "ZooAttack": Facts(_L2, SCORE, MINIMAL, True, title="Zeroth-order optimization attack, ZOO (Chen et al. 2017)"),
    "PixelAttack": Facts(
        ("l0",), SCORE, MINIMAL, True,
        "th=None searches the smallest number of pixels; es=0 (CMA-ES) needs the cma package; sees softmax "
        "probabilities", probabilities=True, title="Pixel attack: a few pixels changed by evolution (Su et al. 2019)"),
    "ThresholdAttack": Facts(
        _LINF, SCORE, MINIMAL, True,
        "th is in grey levels (0-255), None searches the smallest; es defaults to 1 (differential evolution), "
        "not ART's 0 (CMA-ES, needs the cma package); sees softmax probabilities",
        probabilities=True, defaults={"es": 1}, title="Threshold attack: Linf by evolution (Kotyan and Vargas 2019)"),
    "HopSkipJump": Facts(
        ("l2", "linf"), DECISION, MINIMAL, True, "its random starting points are seeded by seed", norms=("l2", "linf"),
        patched_modules=(f"{_EVASION}.hop_skip_jump",), title="HopSkipJump (Chen et al. 2020)"),
    "BoundaryAttack": Facts(
        _L2, DECISION, MINIMAL, True, "its random starting points are seeded by seed",
        patched_modules=(f"{_EVASION}.boundary",), title="Boundary attack (Brendel et al. 2018)"),
    "GeoDA": Facts(
        ("l2", "linf", "l1"), DECISION, MINIMAL, False,
        "needs square images; ART's query schedule needs max_iter of about 300 or more",
        norms=("l2", "linf", "l1"), square=True, patched_modules=(f"{_EVASION}.geometric_decision_based_attack",),
        writes_cwd=True,  # its DCT basis, 2d_dct_basis_<sub_dim>_<size>.npy
        title="Geometric decision-based attack, GeoDA (Rahmati et al. 2020)"),
    "SignOPTAttack": Facts(
        _L2, DECISION, MINIMAL, False,
        "ART's targeted mode needs example images of each target class (x_init), so only untargeted is offered",
        title="Sign-OPT (Cheng et al. 2020)"),
    "CompositeAdversarialAttackPyTorch": Facts(
        ("unbounded",), WHITE, FIXED, False, "ART fixes the input to 3 x 32 x 32 images",
        requires=("kornia",), input_shape=(3, 32, 32),
        title="Composite adversarial attack: hue, saturation, rotation, brightness, contrast and Linf (Hsiung et "
              "al. 2023)"),
    "BrendelBethgeAttack": Facts(
        ("l2", "linf", "l1", "l0"), WHITE, MINIMAL, True, "its random starting points are seeded by seed",
        norms=("l2", "linf", "l1", "l0"), requires=("numba",), patched_modules=(f"{_EVASION}.brendel_bethge",),
        title="Brendel and Bethge attack (2019)"),
}

_PATCH = ("it trains one patch to paste into images instead of returning an adversarial version of each image; "
          "use ART directly")
_DETECTION = "it attacks object detectors, not image classifiers"
_AUDIO = "it attacks speech recognition models (audio), not image classifiers"
_VIDEO = "it attacks video classifiers (5-D inputs), not image classifiers"
_FEATURES = ("it matches the internal features of guide images given in place of labels; there is no label "
             "objective to map it to")

#: ART evasion attacks that do not apply to a PyTorch image classifier: title and reason.
UNAVAILABLE: dict[str, tuple[str, str]] = {
    "AdversarialPatch": ("Adversarial patch (Brown et al. 2017)", _PATCH),
    "AdversarialPatchNumpy": ("Adversarial patch, NumPy implementation", _PATCH),
    "AdversarialPatchPyTorch": ("Adversarial patch, PyTorch implementation", _PATCH),
    "AdversarialPatchTensorFlowV2": ("Adversarial patch, TensorFlow implementation", "it needs a TensorFlow model"),
    "AdversarialTexturePyTorch": ("Adversarial texture for object trackers",
                                  "it attacks object trackers (video), not image classifiers"),
    "CarliniWagnerASR": ("Carlini and Wagner attack on speech recognition", _AUDIO),
    "ImperceptibleASR": ("Imperceptible attack on speech recognition (Qin et al. 2019)", _AUDIO),
    "ImperceptibleASRPyTorch": ("Imperceptible attack on speech recognition, PyTorch implementation", _AUDIO),
    "DecisionTreeAttack": ("Decision tree attack (Papernot et al. 2016)",
                           "it attacks scikit-learn decision trees, not neural networks"),
    "DPatch": ("DPatch (Liu et al. 2018)", _DETECTION),
    "RobustDPatch": ("Robust DPatch (Lee and Kolter 2019)", _DETECTION),
    "OverloadPyTorch": ("Overload: latency attack on object detectors", _DETECTION),
    "SNAL": ("Steal Now Attack Later, on object detectors", _DETECTION),
    "FeatureAdversariesNumpy": ("Feature adversaries (Sabour et al. 2016), NumPy implementation", _FEATURES),
    "FeatureAdversariesPyTorch": ("Feature adversaries (Sabour et al. 2016), PyTorch implementation", _FEATURES),
    "FeatureAdversariesTensorFlowV2": ("Feature adversaries (Sabour et al. 2016), TensorFlow implementation",
                                       "it needs a TensorFlow model (and guide images in place of labels)"),
    "FrameSaliencyAttack": ("Frame saliency attack on video classifiers",
                            "it attacks video classifiers frame by frame and wraps another ART attack object"),
    "OverTheAirFlickeringPyTorch": ("Over-the-air flickering attack on video classifiers", _VIDEO),
    "GRAPHITEBlackbox": ("GRAPHITE physical-world patch attack, black-box",
                         "a physical-world patch attack that needs an example image of the target class for every "
                         "input (x_tar) and masks; use ART directly"),
    "GRAPHITEWhiteboxPyTorch": ("GRAPHITE physical-world patch attack, white-box",
                                "a physical-world patch attack that needs the network input size (net_size), masks "
                                "and a target for every image; use ART directly"),
    "HighConfidenceLowUncertainty": ("High-confidence low-uncertainty attack (Grosse et al. 2018)",
                                     "it attacks GPy Gaussian-process classifiers only"),
    "LaserAttack": ("Laser beam attack (Duan et al. 2021)",
                    "a physical-world attack that needs laser and image generator objects; use ART directly"),
    "LowProFool": ("LowProFool (Ballet et al. 2019)",
                   "it is made for tabular data and needs feature importances fitted on training data first"),
    "MalwareGDTensorFlow": ("Gradient attack on malware classifiers", "it attacks TensorFlow malware classifiers"),
    "ProjectedGradientDescentTensorFlowV2": (
        "Projected gradient descent, TensorFlow implementation",
        "it needs a TensorFlow model; use art:ProjectedGradientDescent or art:ProjectedGradientDescentPyTorch"),
}

ALL_NAMES: tuple[str, ...] = tuple(sorted({*FACTS, *UNAVAILABLE}))

# robustkit's spelling of ART's norm values, and back.
_NORM_ALIASES = {"inf": "linf", "linf": "linf", "np.inf": "linf", "2": "l2", "2.0": "l2", "l2": "l2",
                 "1": "l1", "1.0": "l1", "l1": "l1", "0": "l0", "0.0": "l0", "l0": "l0"}
_ART_NORM = {"linf": np.inf, "l2": 2, "l1": 1, "l0": 0}

# Parameters whose signature default does not reveal the allowed values.
_CHOICES: dict[tuple[str, str], tuple[Any, ...]] = {
    **{(n, "loss_type"): ("cross_entropy", "difference_logits_ratio")
       for n in ("AutoProjectedGradientDescent", "AutoConjugateGradient", "RescalingAutoConjugateGradient")},
    ("ElasticNet", "decision_rule"): ("EN", "L1", "L2"),
    ("SimBA", "attack"): ("dct", "px"),
    ("SimBA", "order"): ("random", "diag"),
    ("PixelAttack", "es"): (0, 1),
    ("ThresholdAttack", "es"): (0, 1),
    ("UniversalPerturbation", "attacker"): ("deepfool", "fgsm", "bim", "pgd", "carlini", "carlini_inf", "ead",
                                            "newtonfool", "jsma", "vat", "simba"),
    ("TargetedUniversalPerturbation", "attacker"): ("fgsm", "simba"),
    ("Wasserstein", "norm"): ("wasserstein", "inf", "2", "1"),
    ("Wasserstein", "ball"): ("wasserstein", "inf", "2", "1"),
    ("CompositeAdversarialAttackPyTorch", "attack_order"): ("scheduled", "fixed", "random"),
}

# Smallest values ART's constructors work with, where its own checks miss them.
_LOW: dict[tuple[str, str], float] = {("GeoDA", "max_iter"): 300}

_ALWAYS_HIDDEN = ("self", "estimator", "classifier", "targeted", "summary_writer")
_SEED_HELP = "seeds Python, NumPy and torch right before the attack (and ART's unseeded random states)"


def _missing_modules(names: tuple[str, ...]) -> list[str]:
    """Optional packages of ``names`` that are not installed (found without importing them)."""
    return [n for n in names if importlib.util.find_spec(n) is None]


@lru_cache(maxsize=None)
def library_class(name: str) -> type:
    """ART's class ``name`` (imports ART; looked up once per name)."""
    module = importlib.import_module(_EVASION)
    if not hasattr(module, name) and name == "BrendelBethgeAttack":  # exported only when numba is installed
        module = importlib.import_module(f"{_EVASION}.brendel_bethge")
    return getattr(module, name)


# --- the adapter base -----------------------------------------------------------------------


class ArtAttack(LibraryAttack):
    """Base of the generated ``art:NAME`` classes; see :func:`adapter_class`."""

    library = LIBRARY
    facts: ClassVar[Facts]
    seed_help = _SEED_HELP

    def __init__(self, **params: Any):
        if self.facts.norms and "norm" in params:
            # Accept ART's spelling (inf, 2, 1) as well as robustkit's (linf, l2, l1).
            params["norm"] = _NORM_ALIASES.get(str(params["norm"]).strip().lower(), params["norm"])
        super().__init__(**params)

    # -- what is read from ART, on first use ---------------------------------------------------------

    @classmethod
    def load_library_class(cls) -> type:
        return library_class(cls.library_name)

    @classmethod
    def hidden_arguments(cls) -> tuple[str, ...]:
        return (*_ALWAYS_HIDDEN, *cls.facts.hidden)

    @classmethod
    def argument_help(cls, library_class: type) -> dict[str, str]:
        """First sentence of each ``:param name:`` line of ART's constructor docstring."""
        doc = inspect.getdoc(library_class.__init__) or ""
        out = {}
        for match in _PARAM_DOC.finditer(doc):
            text = " ".join(match[2].split())
            out[match[1]] = re.split(r"(?<=[a-z0-9)`])\. ", text, maxsplit=1)[0].rstrip(".")
        return out

    @classmethod
    def param_changes(cls, param: Param, argument: inspect.Parameter) -> Mapping[str, Any]:
        name, facts, p = cls.library_name, cls.facts, param
        changes: dict[str, Any] = {}
        annotation = _annotation_type(argument.annotation)
        if p.default is None and annotation is not None:
            changes["type"] = annotation  # 'int | None': an int, or None
        elif annotation is float and p.type is int:
            changes.update(type=float, default=float(p.default))  # an int default of a real value
        if p.name == "verbose":
            changes["default"] = False
        if p.name in ("eps", "eps_step"):
            changes["low"] = 0.0
        if p.name == "norm" and facts.norms:
            art_default = _NORM_ALIASES.get(str(p.default).lower(), facts.norms[0])
            aliases = tuple(k for k, v in _NORM_ALIASES.items() if v in facts.norms and k not in facts.norms)
            changes.update(type=str, default=art_default, choices=facts.norms + aliases)
        if (name, p.name) in _LOW:
            changes["low"] = _LOW[(name, p.name)]
        if (name, p.name) in _CHOICES:
            changes["choices"] = _CHOICES[(name, p.name)]
        if p.name in facts.defaults:
            changes["default"] = facts.defaults[p.name]
        return changes

    @classmethod
    def summary(cls) -> str:
        return cls.facts.title

    # -- checks --------------------------------------------------------------------------------------

    def check_with_library(self) -> None:
        """Build once on a stand-in model so ART's own checks fail now, not mid-evaluation."""
        if self.config.get("es") == 0 and _missing_modules(("cma",)):
            raise ParameterError(f"{self.display_name()}: es=0 (CMA-ES) needs the cma package; pip install cma, "
                                 "or use es=1 (differential evolution)")
        shape = self.facts.input_shape or (1, 8, 8)
        stand_in = nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(shape)), 10))
        classifier = make_classifier(stand_in, shape, 10, torch.device("cpu"))
        try:
            self.build(classifier, targeted=self.facts.targeted_only)
        except (TypeError, ValueError, AssertionError, KeyError, IndexError, NotImplementedError) as err:
            raise ParameterError(f"{self.display_name()}: ART rejects these parameters: {one_line(err)}") from None

    def library_kwargs(self, targeted: bool = False) -> dict[str, Any]:
        """The keyword arguments ART's constructor gets (``targeted`` follows the call)."""
        kwargs = super().library_kwargs()
        if self.facts.norms and "norm" in kwargs:
            kwargs["norm"] = _ART_NORM[kwargs["norm"]]
        if "targeted" in signature_names(self.library_class):
            kwargs["targeted"] = targeted
        return kwargs

    # -- running -----------------------------------------------------------------------------

    def build(self, classifier: Any, targeted: bool = False) -> Any:
        """The ART attack object for an ART ``classifier``."""
        with patched_numpy(self.facts.patched_modules):
            return self.library_class(classifier, **self.library_kwargs(targeted))

    def _check_inputs(self, images: torch.Tensor, target_labels: torch.Tensor | None) -> None:
        name = self.display_name()
        if self.facts.input_shape and tuple(images.shape[1:]) != self.facts.input_shape:
            expected = " x ".join(map(str, self.facts.input_shape))
            raise InputError(f"{name} works on {expected} images only, got {' x '.join(map(str, images.shape[1:]))}")
        if self.facts.square and images.shape[2] != images.shape[3]:
            raise InputError(f"{name} needs square images, got {images.shape[2]} x {images.shape[3]}")
        if self.facts.targeted_only and target_labels is None:
            raise InputError(f"{name} is a targeted attack only: pass target_labels")

    def perturb(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                target_labels: torch.Tensor | None = None) -> AttackResult:
        self._check_inputs(images, target_labels)
        targeted = target_labels is not None
        given = {what: tensor.detach().cpu().numpy().astype(np.int64, copy=False)
                 for what, tensor in (("labels", labels), ("target labels", target_labels)) if tensor is not None}
        x = images.detach().cpu().numpy().astype(np.float32)
        for fresh in (False, True):  # a cached classifier whose class count is out of date is built again
            classifier, holder, nb_classes, device, attacks = self._classifier(model, images, fresh)
            bad = next((what for what, v in given.items() if v.size and (v.min() < 0 or v.max() >= nb_classes)), None)
            if bad is not None:
                if not fresh:
                    continue  # the model may have more classes than when the classifier was built
                raise InputError(f"{bad} must lie in 0..{nb_classes - 1} for this model")
            y = None if not targeted and self.facts.untargeted_y == "none" else \
                _one_hot(given["target labels" if targeted else "labels"], nb_classes)
            holder.attach(model)  # the cached wrapper holds the model for this call only
            try:
                attack = self._library_attack(classifier, targeted, attacks, device)
                seed_everything(self.config["seed"])
                with _on_device(device), patched_numpy(self.facts.patched_modules), \
                        _private_cwd() if self.facts.writes_cwd else contextlib.nullcontext():
                    if self.facts.one_at_a_time:
                        adv = np.concatenate([attack.generate(x[i:i + 1], None if y is None else y[i:i + 1])
                                              for i in range(len(x))])
                    else:
                        adv = attack.generate(x, y)
            except _OtherClassCount:
                if fresh:
                    raise
                continue  # nothing of this run is kept: the retry is exactly a first call
            except ValueError as err:  # ART reports unusable inputs as ValueError
                raise InputError(f"{self.display_name()}: {one_line(err)}") from err
            finally:
                holder.attach(_DETACHED)
            return AttackResult(adversarial=torch.from_numpy(np.asarray(adv, dtype=np.float32)))  # __call__ moves it
        raise AssertionError("unreachable")

    def _library_attack(self, classifier: Any, targeted: bool, cache: dict[bool, Any], device: torch.device) -> Any:
        """The ART attack object on ``classifier``: built, or a cached one reset to the state it was built in.

        Only an object whose attributes are all immutable values (numbers, strings, tuples of them...) or
        the classifier is kept: resetting its ``__dict__`` to that snapshot restores exactly what a new
        build gives, whatever ``generate`` assigned since (some attacks keep state there). Others (with
        arrays, callables or sub-attacks) are built on every call.
        """
        kwargs = self.library_kwargs(targeted)
        entry = cache.get(targeted)
        if entry is not None and entry[0] == kwargs:
            attack, state = entry[1], entry[2]
            attack.__dict__.clear()
            attack.__dict__.update(state)
            return attack
        with _on_device(device):
            attack = self.build(classifier, targeted=targeted)
        state = dict(vars(attack))
        if all(value is classifier or _immutable(value) for value in state.values()):
            cache[targeted] = (kwargs, attack, state)
        return attack

    def _classifier(self, model: nn.Module, images: torch.Tensor,
                    fresh: bool = False) -> tuple[Any, _FloatInput, int, torch.device, dict[bool, Any]]:
        """ART's ``PyTorchClassifier`` for ``model``, its :class:`_FloatInput` (detached between calls), the
        class count, the device and a cache for attack objects on it (:meth:`_library_attack`); built again
        when the input shape, the model's device or its dtype changed since the last call, or when ``fresh``.

        What else a classifier reads from the model at construction is its class count: instead of walking
        the model on every call to notice a new head, the :class:`_FloatInput` checks the logits' width on
        every forward pass and raises :class:`_OtherClassCount`, and :meth:`perturb` builds again and
        reruns. (It also records the model's layer names, which none of the adapted attacks use.)
        """
        device, dtype = _device_and_dtype(model, images)
        state = (tuple(images.shape[1:]), device, dtype)
        cache = self.__dict__.get("_classifiers")
        if cache is None:
            cache = self._classifiers = weakref.WeakKeyDictionary()
        entry = cache.get(model)
        if not fresh and entry is not None and entry[0] == state:
            return entry[1]
        classes = model_facts(model, images, refresh=fresh).num_classes
        classifier = make_classifier(model, state[0], classes, device, probabilities=self.facts.probabilities)
        holder = _float_input_of(classifier)
        holder.classes = classes
        holder.attach(_DETACHED)  # the cache must not keep the model alive; perturb hands it over per call
        cache[model] = (state, (classifier, holder, classes, device, {}))
        return cache[model][1]



def make_classifier(model: nn.Module, input_shape: tuple[int, ...], nb_classes: int, device: torch.device,
                    probabilities: bool = False) -> Any:
    """``model`` as ART's ``PyTorchClassifier``: clip values (0, 1), CE loss, no optimizer, ``device``'s type.

    :param probabilities: put a softmax on top (for attacks that insist on probabilities).
    """
    from art.estimators.classification import PyTorchClassifier

    net: nn.Module = _FloatInput(model)
    if probabilities:
        net = nn.Sequential(net, nn.Softmax(dim=1))
    with _on_device(device):
        return PyTorchClassifier(model=net, loss=nn.CrossEntropyLoss(), input_shape=tuple(input_shape),
                                 nb_classes=nb_classes, clip_values=(0.0, 1.0),
                                 device_type="gpu" if device.type == "cuda" else "cpu")


class _FloatInput(nn.Module):
    """Feed the model its own float dtype: some ART attacks hand over float64 arrays (NumPy 2 promotion).

    :param classes: when set, the logits must have this many columns, else :class:`_OtherClassCount`.
    """

    def __init__(self, model: nn.Module, classes: int | None = None):
        super().__init__()
        self.model = model
        self.dtype = next((t.dtype for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()),
                          torch.float32)
        self.classes = classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x if x.dtype == self.dtype else x.to(self.dtype))
        if self.classes is not None and out.shape[-1] != self.classes:
            raise _OtherClassCount(f"the model now returns {out.shape[-1]} logits, not {self.classes}")
        return out

    def attach(self, model: nn.Module) -> None:
        """Swap the wrapped module (a submodule all the same), without ``nn.Module.__setattr__``'s checks."""
        self._modules["model"] = model


class _Detached(nn.Module):
    """What a cached classifier's :class:`_FloatInput` holds between calls: nothing to keep alive."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("this ART classifier is cached by robustkit and has no model between calls")


_DETACHED = _Detached()


_IMMUTABLE = (type(None), bool, int, float, complex, str, bytes, np.generic, torch.dtype, torch.device)


def _immutable(value: Any) -> bool:
    """Whether ``value`` cannot change in place: a scalar or string, or a tuple or frozenset of them."""
    if isinstance(value, (tuple, frozenset)):
        return all(_immutable(item) for item in value)
    return isinstance(value, _IMMUTABLE)


class _OtherClassCount(Exception):
    """A cached classifier's model returns another number of logits than it was built for."""


def _device_and_dtype(model: nn.Module, images: torch.Tensor) -> tuple[torch.device, torch.dtype]:
    """The device of the model's first parameter or buffer and the dtype of its first floating one (what
    :func:`make_classifier` reads); usually both from the first parameter."""
    first = first_parameter(model)
    if first is not None and first.is_floating_point():
        return first.device, first.dtype
    tensors = (*model.parameters(), *model.buffers())
    dtype = next((t.dtype for t in tensors if t.is_floating_point()), torch.float32)
    return (tensors[0].device if tensors else images.device), dtype


def _float_input_of(classifier: Any) -> _FloatInput:
    """The :class:`_FloatInput` inside a classifier from :func:`make_classifier`."""
    return next(m for m in classifier.model.modules() if isinstance(m, _FloatInput))


def one_hot(labels: torch.Tensor, nb_classes: int) -> np.ndarray:
    """Class indices as ART's one-hot float32 labels."""
    return _one_hot(labels.detach().cpu().numpy().astype(np.int64), nb_classes)


def _one_hot(labels: np.ndarray, nb_classes: int) -> np.ndarray:
    out = np.zeros((labels.shape[0], nb_classes), dtype=np.float32)
    out[np.arange(labels.shape[0]), labels] = 1.0
    return out


def _on_device(device: torch.device) -> Any:
    """Make ``device`` CUDA's current device, so ART (which uses the current one) picks the model's GPU."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


class _SeededRandom:
    """``numpy.random``, except that ``RandomState()`` without a seed draws its seed from the global RNG."""

    def __getattr__(self, name: str) -> Any:
        return getattr(np.random, name)

    @staticmethod
    def RandomState(seed: Any = None) -> np.random.RandomState:  # noqa: N802 (numpy's name)
        return np.random.RandomState(np.random.randint(2**31) if seed is None else seed)


class _PatchedNumpy:
    """``numpy`` with :class:`_SeededRandom` as ``random`` and ``mat`` (removed in NumPy 2) as ``asmatrix``."""

    random = _SeededRandom()
    mat = staticmethod(np.asmatrix)

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)


def patched_numpy(module_names: tuple[str, ...]) -> contextlib.AbstractContextManager:
    """Within the block, ART modules ``module_names`` see :class:`_PatchedNumpy` as ``np`` (none: no-op)."""
    return _patched_numpy(module_names) if module_names else contextlib.nullcontext()


@contextlib.contextmanager
def _patched_numpy(module_names: tuple[str, ...]) -> Iterator[None]:
    """Within the block, ART modules ``module_names`` see :class:`_PatchedNumpy` as ``np``."""
    modules = [importlib.import_module(m) for m in module_names]
    saved = [m.np for m in modules]  # type: ignore[attr-defined]
    for module in modules:
        module.np = _PatchedNumpy()  # type: ignore[attr-defined]
    try:
        yield
    finally:
        for module, original in zip(modules, saved):
            module.np = original  # type: ignore[attr-defined]


@lru_cache(maxsize=1)
def _private_dir() -> str:
    """A directory of this process's own for files ART caches in the working directory (removed at exit)."""
    path = tempfile.mkdtemp(prefix="robustkit-art-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


@contextlib.contextmanager
def _private_cwd() -> Iterator[None]:
    """Within the block, the working directory is :func:`_private_dir`: ART's cache files (GeoDA's DCT basis)
    land there, not where the user works, and a stale one from elsewhere is never loaded."""
    previous, private = os.getcwd(), _private_dir()
    os.makedirs(private, exist_ok=True)  # again, should a cleaner have removed it from the temp folder meanwhile
    os.chdir(private)  # contextlib.chdir is Python 3.11+; robustkit supports 3.10
    try:
        yield
    finally:
        os.chdir(previous)


# --- reading ART's signatures and docstrings --------------------------------------------


_SIMPLE_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def _annotation_type(annotation: Any) -> type | None:
    """``int`` for ``'int | None'`` or ``Optional[int]``; None when it is not one simple type."""
    text = str(annotation).strip("'\"").replace("typing.", "").replace("Optional[", "").rstrip("]")
    parts = [p.strip() for p in text.split("|") if p.strip() not in ("None", "NoneType")]
    return _SIMPLE_TYPES.get(parts[0]) if len(parts) == 1 else None


_PARAM_DOC = re.compile(r":param (\w+):(.*?)(?=\n\s*:(?:param|type|return|raises)|\Z)", re.S)



# --- generating one class per ART attack ------------------------------------------------------


#: Settings under which each attack runs in well under a second or two on two tiny images (the contract
#: checks of robustkit.testing use them); an attack not listed runs with its defaults.
CHEAP_PARAMS: dict[str, dict[str, Any]] = {
    "BasicIterativeMethod": {"max_iter": 5},
    "MomentumIterativeMethod": {"max_iter": 5},
    "ProjectedGradientDescent": {"max_iter": 5},
    "ProjectedGradientDescentNumpy": {"max_iter": 5},
    "ProjectedGradientDescentPyTorch": {"max_iter": 5},
    "AutoProjectedGradientDescent": {"max_iter": 5, "nb_random_init": 1},
    "AutoConjugateGradient": {"max_iter": 5, "nb_random_init": 1},
    "RescalingAutoConjugateGradient": {"max_iter": 5, "nb_random_init": 1},
    "BoundaryAttack": {"max_iter": 5, "num_trial": 5, "sample_size": 5, "init_size": 20},
    "HopSkipJump": {"max_iter": 2, "max_eval": 50, "init_eval": 10, "init_size": 20},
    "SignOPTAttack": {"max_iter": 5, "query_limit": 200, "num_trial": 10, "k": 10},
    "GeoDA": {"max_iter": 300, "sub_dim": 4},
    "ZooAttack": {"max_iter": 5, "nb_parallel": 8, "use_resize": False, "use_importance": False},
    "SimBA": {"max_iter": 50},
    "SquareAttack": {"max_iter": 20},
    "PixelAttack": {"max_iter": 2, "th": 3},
    "ThresholdAttack": {"max_iter": 2, "th": 10},
    "ShadowAttack": {"nb_steps": 3, "batch_size": 10},
    "Wasserstein": {"max_iter": 3, "regularization": 100},
    "ElasticNet": {"max_iter": 5, "binary_search_steps": 2},
    "CarliniL2Method": {"max_iter": 5, "binary_search_steps": 2},
    "CarliniL0Method": {"max_iter": 5, "binary_search_steps": 2, "initial_const": 10},
    "CarliniLInfMethod": {"max_iter": 3},
    "DeepFool": {"max_iter": 10},
    "NewtonFool": {"max_iter": 10},
    "UniversalPerturbation": {"max_iter": 1},
    "TargetedUniversalPerturbation": {"max_iter": 1},
    "VirtualAdversarialMethod": {"max_iter": 1},
    "SpatialTransformation": {"max_translation": 10, "num_translations": 2, "max_rotation": 10,
                              "num_rotations": 2},
    "BrendelBethgeAttack": {"steps": 5, "binary_search_steps": 2, "init_size": 20},
    "CompositeAdversarialAttackPyTorch": {"max_iter": 1, "max_inner_iter": 1},
}
#: Attacks the contract checks only build: ART's AutoAttack cannot be shortened below minutes per batch.
CONTRACT_SKIP = {"AutoAttack": "ART's AutoAttack suite cannot be shortened; the plugin's tests run it on one image"}


def adapter_class(name: str) -> type[Attack]:
    """The robustkit Attack class for ART's ``name`` (unavailable ones raise when built); imports no ART."""
    facts = FACTS.get(name)
    if facts is None:
        unreviewed = f"the adapter has not been reviewed for it (ART {LIBRARY_VERSION})"
        title, reason = UNAVAILABLE.get(name, (name, unreviewed))
        return ArtAttack.unavailable_class(name, title, reason, description=f"{title} (unavailable)")
    missing = _missing_modules(facts.requires)
    if missing:
        reason = f"it needs the {', '.join(missing)} package, which is not installed (pip install {' '.join(missing)})"
        return ArtAttack.unavailable_class(name, facts.title, reason, description=f"{facts.title} (unavailable)")
    return ArtAttack.adapter_class(name, facts, cheap_params=CHEAP_PARAMS.get(name, {}),
                                   cheap_input=facts.input_shape or (1, 8, 8), contract_skip=CONTRACT_SKIP.get(name))


def adapter_classes() -> dict[str, type[Attack]]:
    """``{"art:NAME": class}`` for every ART evasion attack (no ART import)."""
    return {PREFIX + name: adapter_class(name) for name in ALL_NAMES}


@hookimpl
def register_attacks(register: Any) -> None:
    """Register every ART evasion attack, the unavailable ones with their reason."""
    register_adapters(register, adapter_classes().values())
