"""AutoAttack (Croce & Hein, ICML 2020) with its original settings, from torchattacks parts or the authors' package.

Registered as the attack ``autoattack``. The ``standard`` version runs, on the images still
classified correctly after the previous attack (pointwise, like the reference
``fra31/auto-attack`` ``run_standard_evaluation``):

1. APGD-CE: 100 steps, 1 restart, rho 0.75.
2. APGD-T: 100 steps, 1 restart, targeted DLR loss, 9 target classes (the 2nd..10th highest logits).
3. FAB-T: 100 steps, 1 restart, 9 target classes (alpha_max 0.1, eta 1.05, beta 0.9).
4. Square: 5000 queries, 1 restart, p_init 0.8, margin loss, p schedule not rescaled to the budget
   (``resc_schedule=False``, as the reference constructs it).

All sub-attacks share one ``seed``, as in the reference. Each image's adversarial is the first
successful one; an image no sub-attack fools (or one misclassified from the start) is returned
unchanged, as the reference does. A candidate outside the threat model's ball (beyond the float
tolerance :data:`robustkit.threat.TOLERANCE`) or outside [0, 1] is projected before its prediction is
checked, so a returned adversarial always satisfies the budget; one inside is checked as the sub-attack
returned it, as the reference checks it (projecting moves it by rounding, which could flip a borderline
prediction).

Backends (``backend=``), both running the plan below with this module's chaining, bookkeeping and resuming:

- ``torchattacks`` (default): torchattacks' classes built by :mod:`robustkit_autoattack.parts`, where APGD,
  APGD-T and Square run the authors' arithmetic (torchattacks 3.5.1's port differs from it: APGD-T's
  targeted DLR loss and L2 step, Square's L2 windows on colour images) and FAB and Square skip work that
  changes no number, which makes them faster than the authors' code on a CPU;
- ``original``: the authors' own package (PyPI ``pyautoattack``, what RobustBench runs), one sub-attack per
  call of its ``run_standard_evaluation`` (:mod:`robustkit_autoattack.original`); its checks' warnings
  become progress lines and ``extra["warnings"]``. Needs ``pip install pyautoattack``.

On the same images as one batch, with the same seed, the two give the same robust images and the same
adversarial images, bit for bit (``tests/test_original.py`` checks every sub-attack, both norms, 10 and 4
classes, one and three channels, and the standard version, against the package called directly). With
several batches the reference cuts the still-robust images of the whole set into batches, robustkit
attacks each evaluation batch: the random starts fall on other images (same distribution, other draws).

Why not ``torchattacks.AutoAttack``: in torchattacks 3.5.1 it builds APGD, APGD-T and FAB with
their class defaults of **10 steps** (the paper and the reference use 100); it derives the number
of target classes as ``n_classes - 1`` (9 only for 10 classes, 99 on CIFAR-100) instead of fixing
9; its Square rescales the p schedule (``resc_schedule=True``, the reference passes False); and its
default ``seed=None`` seeds from the clock, so two runs differ. Its ``MultiAttack`` does pass only
still-robust images on (it also attacks images misclassified from the start), and this module
keeps the pointwise chaining. ``art:AutoAttack`` (ART) is different again: its default suite
swaps APGD-T/FAB-T for DeepFool.

``seed`` defaults to 0 (the reference's default ``None`` means the clock), so results repeat.

Fewer than 10 classes: the target count is ``min(n_target_classes, K - 1)``. APGD-T's targeted
DLR loss reads the 4th largest logit, so it needs K >= 4 (APGD-DLR needs K >= 3); on models with
fewer classes that sub-attack is skipped and ``extra["skipped"]`` says why.

Versions:

- ``standard``: the list above (default; what RobustBench reports).
- ``plus``: APGD-CE and APGD-DLR with 5 restarts, FAB with 5 restarts, Square, APGD-T, FAB-T.
- ``rand``: APGD-CE and APGD-DLR with EOT over 20 draws, for randomized defenses.
- ``custom``: ``attacks=`` picks sub-attacks and their order, and ``steps=``, ``n_queries=``,
  ``n_target_classes=``, ``n_restarts=`` override the reference values (``n_restarts`` all but FAB-T's,
  which the reference's loop always runs once). These overrides are refused for the named versions, so
  "standard" always means the original settings.

Provenance: :meth:`AutoAttack.describe` (and so every evaluation summary and leaderboard entry)
carries ``settings``, the plan as read back from the backend's objects it constructs (steps,
restarts, rho, target classes, queries, schedule: what would run, not what was meant to), with the
backend and its library's version, and ``fingerprint``, the SHA-256 of its canonical JSON; describing
therefore needs the backend's library, constructing does not. Each :class:`AttackResult` carries the same in ``extra``,
plus ``ran``, the settings read from the objects that actually ran on that batch,
plus which sub-attack fooled each image (``fooled_by``: name, None if none did, "clean" if it was
wrong to begin with; ``fooled_by_index`` the same as plan indices, -1, -2), how many images each
sub-attack received and fooled (``n_attacked``, ``n_fooled``) and its wall time (``seconds``), and
``steps``: the same per sub-attack in plan order (skipped ones left out), one dict each with ``attack``,
``attacked``, ``fooled``, ``robust`` (images of the batch still robust after it) and ``n`` (images in
the batch), and ``seconds``; :func:`robustkit.evaluation.evaluate` sums them over batches into the
attack's summary. After each sub-attack one progress line goes to :func:`robustkit.progress.report`.

Resuming (``robustkit attack --state FILE``, and inside every benchmark cell): the attack declares
``batch_checkpoint`` (:class:`robustkit.evaluation.BatchCheckpoint`), so ``evaluate(state=...)`` hands it
one per batch. After each sub-attack but the last it saves the chain's state: which plan item comes next,
the still-robust mask, the adversarials so far, ``fooled_by`` and the counts, seconds and settings read so
far. A run killed inside a batch restarts at the next sub-attack of that batch. Every sub-attack starts
from ``seed_everything(seed)`` whatever ran before it, so the resumed chain computes what the uninterrupted
one does.

torchattacks (and pyautoattack) are imported only when an attack runs or is described, so registering this
plugin costs nothing.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import time
from importlib import metadata
from typing import Any

import torch
from torch import nn

from robustkit import hookimpl
from robustkit.attacks import Attack, AttackResult
from robustkit.devices import seed_everything
from robustkit.errors import ParameterError, RobustkitError
from robustkit.models import logits
from robustkit.params import Param
from robustkit.progress import report
from robustkit.threat import ThreatModel, distances, threat_of, within_budget
from robustkit_autoattack import original

NAME = "autoattack"

#: Every sub-attack with the reference's settings: torchattacks class, constructor arguments,
#: target classes (targeted ones), fewest classes the model needs.
CATALOGUE: dict[str, dict[str, Any]] = {
    "apgd-ce": {"torchattacks": "APGD",
                "params": {"loss": "ce", "steps": 100, "n_restarts": 1, "eot_iter": 1, "rho": 0.75}},
    "apgd-dlr": {"torchattacks": "APGD",
                 "params": {"loss": "dlr", "steps": 100, "n_restarts": 1, "eot_iter": 1, "rho": 0.75},
                 "min_classes": 3},
    "apgd-t": {"torchattacks": "APGDT", "params": {"steps": 100, "n_restarts": 1, "eot_iter": 1, "rho": 0.75},
               "n_target_classes": 9, "min_classes": 4},
    "fab": {"torchattacks": "FAB",
            "params": {"multi_targeted": False, "steps": 100, "n_restarts": 1, "alpha_max": 0.1, "eta": 1.05,
                       "beta": 0.9}},
    "fab-t": {"torchattacks": "FAB",
              "params": {"multi_targeted": True, "steps": 100, "n_restarts": 1, "alpha_max": 0.1, "eta": 1.05,
                         "beta": 0.9},
              "n_target_classes": 9},
    "square": {"torchattacks": "Square",
               "params": {"n_queries": 5000, "n_restarts": 1, "p_init": 0.8, "loss": "margin",
                          "resc_schedule": False}},
}

#: Sub-attacks of each named version, with the reference's changes to the catalogue values.
VERSIONS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "standard": [("apgd-ce", {}), ("apgd-t", {}), ("fab-t", {}), ("square", {})],
    "plus": [("apgd-ce", {"n_restarts": 5}), ("apgd-dlr", {"n_restarts": 5}), ("fab", {"n_restarts": 5}),
             ("square", {}), ("apgd-t", {}), ("fab-t", {})],
    "rand": [("apgd-ce", {"eot_iter": 20}), ("apgd-dlr", {"eot_iter": 20})],
}

#: torchattacks' attribute for a catalogue parameter, where its name differs.
_ATTRIBUTES = {"rho": "thr_decr", "resc_schedule": "rescale_schedule"}

# Overrides only version=custom accepts: parameter -> the sub-attack argument it sets.
_OVERRIDES = ("attacks", "steps", "n_queries", "n_target_classes", "n_restarts")
_NORMS = {"linf": "Linf", "l2": "L2"}
BACKENDS = ("torchattacks", "original")


def library_version() -> str:
    """torchattacks' installed version, read from its metadata (no import)."""
    try:
        return metadata.version("torchattacks")
    except metadata.PackageNotFoundError:  # pragma: no cover - it is a dependency
        return "unknown"


def fingerprint_of(settings: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``settings`` (sorted keys, no spaces)."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class AutoAttack(Attack):
    """AutoAttack with the original settings: APGD-CE, APGD-T, FAB-T, Square (100 steps, 9 targets, 5000 queries)."""

    name = NAME
    threat_models = ("linf", "l2")
    cheap_params = {"version": "custom", "attacks": "apgd-ce,square", "steps": 5, "n_queries": 20}
    knowledge = "white-box"
    goal = "fixed-budget"
    supports_targeted = False
    params = (
        Param("norm", str, "linf", "threat model", choices=("linf", "l2", "Linf", "L2")),
        Param("eps", float, 8 / 255, "budget in pixel units of images in [0, 1]", low=0.0, low_open=True),
        Param("version", str, "standard", "standard (original), plus, rand, or custom (allows the overrides)",
              choices=("standard", "plus", "rand", "custom")),
        Param("seed", int, 0, "seed shared by every sub-attack, as in the reference", low=0),
        Param("n_classes", int, None, "number of classes; read from the model's logits when not given",
              low=2, optional=True),
        Param("attacks", str, None, "custom only: comma-separated sub-attacks in order, from "
              + ", ".join(CATALOGUE), optional=True),
        Param("steps", int, None, "custom only: iterations of APGD, APGD-T and FAB (reference 100)",
              low=1, optional=True),
        Param("n_queries", int, None, "custom only: Square's query budget (reference 5000)", low=1, optional=True),
        Param("n_target_classes", int, None, "custom only: target classes of APGD-T and FAB-T (reference 9)",
              low=1, optional=True),
        Param("n_restarts", int, None, "custom only: restarts of every sub-attack but FAB-T, which the reference "
              "always runs once (reference 1)", low=1, optional=True),
        Param("backend", str, "torchattacks", "torchattacks (robustkit's assembly of torchattacks parts) or "
              "original (the authors' package, pip install pyautoattack)", choices=BACKENDS),
    )

    #: Set by :func:`robustkit.evaluation.evaluate` while it runs a batch with a state file: where the chain saves
    #: its progress after each sub-attack and finds it again after a kill (see the module notes).
    batch_checkpoint: Any = None

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.config["norm"] = str(self.config["norm"]).lower()
        self.threat = threat_of(NAME, self.config["norm"], self.config["eps"])
        given = [k for k in _OVERRIDES if self.config[k] is not None]
        if given and self.config["version"] != "custom":
            raise ParameterError(
                f"{NAME}: {', '.join(given)} can only be changed with version=custom; version="
                f"{self.config['version']} always runs the reference settings")
        if self.config["backend"] == "original":
            original.require(NAME)
        self.plan = self._plan()
        self._settings: dict[str, Any] | None = None

    # -- settings and fingerprint --------------------------------------------------------------

    def _plan(self) -> list[dict[str, Any]]:
        version = self.config["version"]
        if version == "custom":
            names = [n.strip() for n in (self.config["attacks"] or "apgd-ce,apgd-t,fab-t,square").split(",")
                     if n.strip()]
            unknown = [n for n in names if n not in CATALOGUE]
            if unknown or not names:
                raise ParameterError(f"{NAME}: parameter 'attacks' takes sub-attacks from {', '.join(CATALOGUE)}; "
                                     f"got {self.config['attacks']!r}")
            if len(set(names)) != len(names):
                raise ParameterError(f"{NAME}: parameter 'attacks' names a sub-attack twice")
            steps = [(n, {}) for n in names]
        else:
            steps = VERSIONS[version]
        plan = []
        for sub, changes in steps:
            item = copy.deepcopy(CATALOGUE[sub])
            item["name"] = sub
            item["params"].update(changes)
            if self.config["steps"] is not None and "steps" in item["params"]:
                item["params"]["steps"] = self.config["steps"]
            if self.config["n_queries"] is not None and "n_queries" in item["params"]:
                item["params"]["n_queries"] = self.config["n_queries"]
            if self.config["n_restarts"] is not None and sub != "fab-t":  # the authors' loop runs FAB-T once
                item["params"]["n_restarts"] = self.config["n_restarts"]
            if self.config["n_target_classes"] is not None and "n_target_classes" in item:
                item["n_target_classes"] = self.config["n_target_classes"]
            item.setdefault("min_classes", 2)
            plan.append(item)
        return plan

    def settings(self) -> dict[str, Any]:
        """Everything that decides what this attack computes, JSON-ready (the fingerprint's input).

        The plan is read back from the backend's objects (torchattacks', or the authors' package's) built on a
        stand-in model (with ``n_classes``, or 10 classes when it is read from the model), so a setting lost on
        the way shows here.
        """
        if self._settings is None:
            n_classes = int(self.config["n_classes"] or 10)
            stand_in = nn.Linear(1, 1)
            self._settings = {
                "attack": NAME,
                "version": self.config["version"],
                "norm": self.config["norm"],
                "eps": float(self.config["eps"]),
                "seed": int(self.config["seed"]),
                "n_classes": self.config["n_classes"] if self.config["n_classes"] is not None else "from model logits",
                "plan": [observed(self.build(item, stand_in, n_classes, torch.device("cpu")), item)
                         for item in self.plan],
                "backend": self.config["backend"],
                "library": self.library(),
            }
        return copy.deepcopy(self._settings)

    def library(self) -> str:
        """The package that runs the sub-attacks, with its version."""
        if self.config["backend"] == "original":
            return f"{original.DISTRIBUTION} {original.library_version()}"
        return f"torchattacks {library_version()}"

    @property
    def fingerprint(self) -> str:
        return fingerprint_of(self.settings())

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "library": self.library(), "norm": self.config["norm"],
                "fingerprint": self.fingerprint, "settings": self.settings()}

    # -- running -------------------------------------------------------------------------------

    def build(self, item: dict[str, Any], model: nn.Module, n_classes: int, device: torch.device) -> Any:
        """The object that runs one plan item: a torchattacks attack, or with ``backend=original`` the authors'
        package set up for it (:class:`robustkit_autoattack.original.SubAttack`); either is called as
        ``attack(images, labels)`` and returns the adversarials."""
        if self.config["backend"] == "original":
            return original.build(item, self.config, model, n_classes, device)
        from robustkit_autoattack import parts

        cls = getattr(parts, item["torchattacks"])
        kwargs = dict(item["params"], norm=_NORMS[self.config["norm"]], eps=float(self.config["eps"]),
                      seed=int(self.config["seed"]), verbose=False)
        if "n_target_classes" in item:
            kwargs["n_classes"] = n_classes
        # torchattacks prints instead of raising when a model has no parameters; the device is set below.
        with contextlib.redirect_stdout(io.StringIO()):
            attack = cls(model, **kwargs)
        if "n_target_classes" in item:
            # torchattacks derives K - 1 targets from n_classes; the reference fixes 9 (at most K - 1).
            attack.n_target_classes = min(int(item["n_target_classes"]), n_classes - 1)
        attack.set_device(device)
        return attack

    def perturb(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                target_labels: torch.Tensor | None = None) -> AttackResult:
        device = _device_of(model, images)
        x, y = images.to(device), labels.to(device)
        with torch.no_grad():
            clean_logits = logits(model, x)
        n_classes = int(self.config["n_classes"] or clean_logits.shape[1])
        robust = clean_logits.argmax(1) == y
        adv = x.clone()
        # Index into the plan of the sub-attack that fooled each image; -1: none; -2: wrong before any attack.
        fooled_by = torch.full((len(x),), -1, dtype=torch.long)
        fooled_by[~robust.cpu()] = -2
        # The chain's bookkeeping, all of it JSON-ready: what a checkpoint saves besides the three tensors.
        chain: dict[str, Any] = {"next": 0, "n_attacked": {}, "n_fooled": {}, "seconds": {}, "skipped": {},
                                 "targets": {}, "ran": [], "steps": [], "warnings": []}
        checkpoint = self.batch_checkpoint
        saved = checkpoint.load() if checkpoint is not None else None
        if saved is not None:
            chain, (adv, robust, fooled_by) = self._restore(saved, x)
        n_attacked, n_fooled, seconds = chain["n_attacked"], chain["n_fooled"], chain["seconds"]
        skipped, targets, ran, steps = chain["skipped"], chain["targets"], chain["ran"], chain["steps"]
        warnings = chain["warnings"]
        start = chain["next"]
        for index, item in enumerate(self.plan):
            if index < start:  # done before the run was stopped
                continue
            if checkpoint is not None and index > start:  # after each sub-attack but the last
                checkpoint.save({**chain, "next": index, "fingerprint": self.fingerprint},
                                {"adversarial": adv, "robust": robust, "fooled_by": fooled_by})
            name = item["name"]
            if n_classes < item["min_classes"]:
                skipped[name] = f"needs at least {item['min_classes']} classes, the model has {n_classes}"
                report(f"{NAME}: {name} skipped: {skipped[name]}")
                continue
            if "n_target_classes" in item:
                targets[name] = min(int(item["n_target_classes"]), n_classes - 1)
            todo = robust.nonzero().flatten()
            n_attacked[name] = int(todo.numel())
            n_fooled[name] = 0
            if todo.numel() == 0:
                steps.append(_step(name, 0, 0, int(robust.sum()), len(x), 0.0))
                continue
            tick = time.perf_counter()
            attack = self.build(item, model, n_classes, device)
            ran.append(observed(attack, item))
            seed_everything(int(self.config["seed"]))
            x_sub, y_sub = x[todo], y[todo]
            candidate = attack(x_sub, y_sub).detach().to(device, x.dtype)
            seconds[name] = time.perf_counter() - tick
            for message in getattr(attack, "warnings", ()):  # the authors' package's own checks
                if message not in warnings:
                    warnings.append(message)
                    report(f"{NAME}: {name}: the original package warns: {message}")
            candidate = within_threat(self.threat, candidate, x_sub)
            with torch.no_grad():
                fooled = logits(model, candidate).argmax(1) != y_sub
            hit = todo[fooled]
            adv[hit] = candidate[fooled]
            robust[hit] = False
            fooled_by[hit.cpu()] = index
            n_fooled[name] = int(fooled.sum())
            steps.append(_step(name, n_attacked[name], n_fooled[name], int(robust.sum()), len(x), seconds[name]))
        if self.config["backend"] == "original":
            for message in original.square_check(steps, int((fooled_by != -2).sum()), len(x)):
                if message not in warnings:
                    warnings.append(message)
                    report(f"{NAME}: the original package warns: {message}")
        names = [item["name"] for item in self.plan]
        per_image = [None if i == -1 else "clean" if i == -2 else names[i] for i in fooled_by.tolist()]
        settings = self.settings()
        settings["resolved"] = {"n_classes": n_classes, "n_target_classes": targets, "skipped": skipped}
        extra = {
            "fingerprint": fingerprint_of(self.settings()),
            "settings": settings,
            "ran": ran,
            "fooled_by": per_image,
            "fooled_by_index": fooled_by,
            "n_attacked": n_attacked,
            "n_fooled": n_fooled,
            "seconds": seconds,
            "skipped": skipped,
            "steps": steps,
            "warnings": warnings,
        }
        return AttackResult(adversarial=adv.to(images.device), extra=extra)

    def _restore(self, saved: tuple[dict[str, Any], dict[str, torch.Tensor]], x: torch.Tensor,
                 ) -> tuple[dict[str, Any], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The chain's bookkeeping and its adversarials, robust mask and ``fooled_by`` from a checkpoint.

        :raises RobustkitError: when they were saved by other settings or do not fit this batch (a damaged
            state file: evaluate hands a checkpoint only to the attack and inputs it was saved for).
        """
        meta, tensors = saved
        adv, robust, fooled_by = (tensors.get(key) for key in ("adversarial", "robust", "fooled_by"))
        if (adv is None or robust is None or fooled_by is None or meta.get("fingerprint") != self.fingerprint
                or not isinstance(meta.get("next"), int) or not 0 < meta["next"] < len(self.plan)
                or adv.shape != x.shape or not robust.shape == fooled_by.shape == x.shape[:1]
                or robust.dtype != torch.bool or fooled_by.dtype != torch.long):
            raise RobustkitError(f"{NAME}: the progress saved in the state file does not fit this batch or these "
                                 "settings (the file is damaged); delete the state file to start afresh")
        chain = {key: meta[key] for key in ("next", "n_attacked", "n_fooled", "seconds", "skipped", "targets", "ran",
                                            "steps")}
        chain["warnings"] = list(meta.get("warnings") or [])
        done = [item["name"] for item in self.plan[:chain["next"]]]
        report(f"{NAME}: resuming the batch after {done[-1]} (saved in the state file)")
        return chain, (adv.to(x.device, x.dtype), robust.to(x.device), fooled_by.cpu())


def _step(name: str, attacked: int, fooled: int, robust: int, n: int, seconds: float) -> dict[str, Any]:
    """One sub-attack's totals on one batch (an entry of ``extra["steps"]``), reported as a progress line."""
    accuracy = 100 * robust / n if n else 0.0
    report(f"{NAME}: {name} done: robust accuracy so far {accuracy:.1f}% (of {n}), attacked {attacked}, "
           f"fooled {fooled}, {seconds:.1f} s")
    return {"attack": name, "attacked": attacked, "fooled": fooled, "robust": robust, "n": n, "seconds": seconds}


def within_threat(threat: ThreatModel, candidate: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``candidate`` as the sub-attack returned it where it lies within the threat (float tolerance
    :data:`robustkit.threat.TOLERANCE`) and in [0, 1]; projected onto the ball and into [0, 1] elsewhere.

    Why not project every candidate: projecting moves an in-budget point by rounding (``x + (adv - x)`` is not
    ``adv`` in floats), and the prediction checked must be the one of the point the sub-attack found, as the
    authors' package checks it, or a borderline image could count differently from theirs.
    """
    distance = distances(candidate, x)[threat.norm]
    flat = candidate.flatten(1)
    inside = within_budget(distance, threat.eps) & (flat.amin(1) >= 0) & (flat.amax(1) <= 1)
    if bool(inside.all()):
        return candidate
    shape = (-1, *[1] * (candidate.dim() - 1))
    return torch.where(inside.view(shape), candidate, threat.project(candidate, x))


def observed(attack: Any, item: dict[str, Any]) -> dict[str, Any]:
    """One plan item's settings as the built object holds them (``"<missing>"``: it has no such attribute, so the
    setting cannot have reached it): a torchattacks attack's, or the authors' package's
    (:meth:`robustkit_autoattack.original.SubAttack.settings`)."""
    if isinstance(attack, original.SubAttack):
        return attack.settings()
    params = {p: getattr(attack, _ATTRIBUTES.get(p, p), "<missing>") for p in item["params"]}
    out = {"name": item["name"], "torchattacks": type(attack).__name__,
           "implementation": f"{type(attack).__module__}.{type(attack).__qualname__}", "params": params,
           "norm": attack.norm, "eps": float(attack.eps), "seed": attack.seed, "min_classes": item["min_classes"]}
    if "n_target_classes" in item:
        out["n_target_classes"] = attack.n_target_classes
    return out


def _device_of(model: nn.Module, images: torch.Tensor) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return images.device


@hookimpl
def register_attacks(register: Any) -> None:
    """Register ``autoattack`` (cheap: torchattacks is imported only when it runs)."""
    register(NAME, AutoAttack, available=True,
             note="reference settings (APGD-CE 100, APGD-T 100 x 9, FAB-T 100 x 9, Square 5000); "
                  "torchattacks:AutoAttack runs 10 steps")
