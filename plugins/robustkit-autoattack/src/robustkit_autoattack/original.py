"""``autoattack backend=original``: the authors' own AutoAttack package, one sub-attack at a time.

The authors' code (Croce and Hein, ``fra31/auto-attack``) is on PyPI as ``pyautoattack``, the package RobustBench
depends on. This backend builds its ``pyautoattack.AutoAttack`` with the named version (``standard``, ``plus``,
``rand``), so every setting is the one the authors' ``_set_version`` gives, and runs each sub-attack through
the authors' ``run_standard_evaluation`` with ``attacks_to_run`` set to that one sub-attack: their loop sets
the sub-attack's loss, targeting and seed, runs their checks (randomized or dynamic defense, probabilities
instead of logits, too many target classes: each warning becomes one progress line) and their success test.

Running the sub-attacks one call each gives what one call with all of them gives, because every sub-attack
reseeds from the same seed when it starts (their ``perturb`` calls ``torch.random.manual_seed(seed)``) and
receives exactly the images still robust, in order, as one batch. It lets robustkit's chain around it time
each sub-attack, count what it attacked and fooled, and save its progress after each one (resuming inside a
batch works per sub-attack, as with the default backend). The one check that needs the whole chain (Square
must not beat the white-box sub-attacks) is the package's own function, run by the chain at the end
(:func:`square_check`).

Two things differ from calling the package directly, both where the package cannot run as it is:

- fewer than 10 classes: the number of target classes of APGD-T and FAB-T is capped at ``K - 1`` (the package
  keeps 9 and fails on the 10th target), and APGD-T is skipped below 4 classes, as the default backend does;
- ``version=custom``: the sub-attacks with changed settings are built from the package's own classes with
  those settings, the way its ``AutoAttack.__init__`` builds them.

The settings recorded are read back from the package's objects, as the default backend reads torchattacks'.
pyautoattack is imported only when this backend builds or describes an attack.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
from importlib import metadata
from typing import Any, Iterator

import torch
from torch import nn

from robustkit.errors import RobustkitError

DISTRIBUTION = "pyautoattack"

#: The attribute of ``pyautoattack.AutoAttack`` holding the object that runs each sub-attack.
OBJECTS = {"apgd-ce": "apgd", "apgd-dlr": "apgd", "apgd-t": "apgd_targeted", "fab": "fab", "fab-t": "fab",
           "square": "square"}

#: The package's attribute for a catalogue parameter, where its name differs.
ATTRIBUTES = {"steps": "n_iter", "rho": "thr_decr", "multi_targeted": "targeted", "resc_schedule": "rescale_schedule"}

_NORMS = {"linf": "Linf", "l2": "L2"}


def installed() -> bool:
    """Whether the authors' package can be imported (checked without importing it)."""
    return importlib.util.find_spec("pyautoattack") is not None


def require(owner: str) -> None:
    """:raises RobustkitError: when the package is not installed, naming the command that installs it."""
    if not installed():
        raise RobustkitError(f"{owner}: backend=original runs the authors' AutoAttack package, which is not installed; "
                             f"pip install {DISTRIBUTION} (or use the default backend=torchattacks)")


def library_version() -> str:
    """The package's installed version, read from its metadata (no import)."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown"


class SubAttack:
    """One sub-attack of the authors' AutoAttack, ready to run on a batch (``__call__``) and to say how it is set
    (:meth:`settings`). ``warnings``: what the package's checks logged while it ran."""

    def __init__(self, adversary: Any, item: dict[str, Any]):
        self.adversary = adversary
        self.item = item
        self.warnings: list[str] = []

    @property
    def runner(self) -> Any:
        """The package's object that runs this sub-attack."""
        return getattr(self.adversary, OBJECTS[self.item["name"]])

    def settings(self) -> dict[str, Any]:
        """The plan item's settings as the package's object holds them (``"<missing>"``: no such attribute)."""
        runner = self.runner
        params = {p: getattr(runner, ATTRIBUTES.get(p, p), "<missing>") for p in self.item["params"]}
        out = {"name": self.item["name"], "pyautoattack": type(runner).__name__, "params": params,
               "norm": runner.norm, "eps": float(runner.eps), "seed": runner.seed,
               "min_classes": self.item["min_classes"]}
        if "n_target_classes" in self.item:
            out["n_target_classes"] = runner.n_target_classes
        return out

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The package's adversarials of ``images`` (its clean images where it fooled nothing), from one call of its
        ``run_standard_evaluation`` on this sub-attack alone with the whole batch as one batch."""
        self.adversary.attacks_to_run = [self.item["name"]]
        with caught() as catcher:
            adversarial, _ = self.adversary.run_standard_evaluation(images, labels, batch_size=len(images))
        self.warnings = catcher.messages
        return adversarial


def square_check(steps: list[dict[str, Any]], n_correct: int, n: int) -> list[str]:
    """The package's own check that Square did not beat the white-box sub-attacks (``checks.check_square_sr``: a
    sign of gradient masking), on the chain's robust accuracies after each sub-attack.

    The package runs it inside ``run_standard_evaluation`` over the sub-attacks of one call; with one sub-attack
    per call it would never see Square beside the others, so the chain runs it once they are done.
    """
    from pyautoattack import checks

    accuracy = {"clean": n_correct / n}
    for step in steps:
        if step["attacked"]:  # the package's loop stops once no image is left
            accuracy[step["attack"]] = step["robust"] / n
    with caught() as catcher:
        checks.check_square_sr(accuracy, logger=catcher.logger)
    return catcher.messages


@contextlib.contextmanager
def caught() -> Iterator["_Catcher"]:
    """Catch what the package logs at WARNING and above on its logger ``auto-attack`` (where its checks warn)."""
    catcher = _Catcher()
    catcher.logger.addHandler(catcher)
    try:
        yield catcher
    finally:
        catcher.logger.removeHandler(catcher)


class _Catcher(logging.Handler):
    """Keeps the distinct warning messages the package logs (it would otherwise print them to stderr)."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []
        self.logger = logging.getLogger("auto-attack")

    def emit(self, record: logging.LogRecord) -> None:
        message = " ".join(record.getMessage().split())
        if message not in self.messages:
            self.messages.append(message)


def build(item: dict[str, Any], config: dict[str, Any], model: nn.Module, n_classes: int,
          device: torch.device) -> SubAttack:
    """The package's AutoAttack set up for one plan item of robustkit's ``autoattack`` (``config``: its parameters).

    The package's own version settings for ``standard``, ``plus`` and ``rand``; for ``custom``, this item's object
    rebuilt from the package's classes with the plan's settings. Then what the package's loop sets before it
    runs the item (loss, targeting, FAB-T's single restart), so :meth:`SubAttack.settings` reads what will run,
    and the target classes capped at ``n_classes - 1``.
    """
    from pyautoattack import AutoAttack as Original

    version = config["version"]
    adversary = Original(model, norm=_NORMS[config["norm"]], eps=float(config["eps"]), seed=int(config["seed"]),
                         version="standard" if version == "custom" else version, device=device)
    adversary.verbose = False  # no per-batch debug lines; warnings still reach the logger
    name = item["name"]
    if version == "custom":
        setattr(adversary, OBJECTS[name], _rebuilt(item, adversary))
    runner = getattr(adversary, OBJECTS[name])
    if name in ("apgd-ce", "apgd-dlr"):
        runner.loss = item["params"]["loss"]
    if name in ("fab", "fab-t"):
        runner.targeted = name == "fab-t"
    if name == "fab-t":
        runner.n_restarts = 1
    if "n_target_classes" in item:
        runner.n_target_classes = min(int(item["n_target_classes"]), n_classes - 1)
    return SubAttack(adversary, item)


def _rebuilt(item: dict[str, Any], adversary: Any) -> Any:
    """The object for ``item`` built from the package's classes with the plan's settings, with the arguments the
    package's ``AutoAttack.__init__`` passes (its APGD's derived step counts are set in the constructor, so a
    changed number of steps needs a new object)."""
    from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
    from pyautoattack.fab_pt import FABAttack_PT
    from pyautoattack.square import SquareAttack

    p = item["params"]
    common = dict(eps=adversary.epsilon, norm=adversary.norm, seed=adversary.seed, verbose=False,
                  device=adversary.device)
    name = item["name"]
    if name in ("apgd-ce", "apgd-dlr"):
        return APGDAttack(adversary.model, n_restarts=p["n_restarts"], n_iter=p["steps"], eot_iter=p["eot_iter"],
                          rho=p["rho"], loss=p["loss"], logger=adversary.logger, **common)
    if name == "apgd-t":
        return APGDAttack_targeted(adversary.model, n_restarts=p["n_restarts"], n_iter=p["steps"],
                                   eot_iter=p["eot_iter"], rho=p["rho"], n_target_classes=item["n_target_classes"],
                                   logger=adversary.logger, **common)
    if name in ("fab", "fab-t"):
        return FABAttack_PT(adversary.model, n_restarts=p["n_restarts"], n_iter=p["steps"], alpha_max=p["alpha_max"],
                            eta=p["eta"], beta=p["beta"], targeted=p["multi_targeted"],
                            n_target_classes=item.get("n_target_classes", 9), **common)
    return SquareAttack(adversary.model, p_init=p["p_init"], n_queries=p["n_queries"], n_restarts=p["n_restarts"],
                        loss=p["loss"], resc_schedule=p["resc_schedule"], **common)
