"""Two calls for Python users, as RobustBench and torchattacks users expect them.

- :func:`benchmark`: clean and robust accuracy of an ``nn.Module`` (images in [0, 1] -> logits) under a
  suite of attacks (AutoAttack by default) within one threat model, as a :class:`BenchmarkResult`
  that also makes a leaderboard entry.
- :func:`attack`: one attack bound to one model, called as ``atk(x, y)`` like a torchattacks attack; it
  returns the adversarial images (the whole :class:`~robustkit.attacks.AttackResult` is ``atk.last``).

Both are exported lazily by :mod:`robustkit` (``robustkit.benchmark``, ``robustkit.attack``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from robustkit.attacks import Attack, AttackResult
from robustkit.data import DatasetInfo, ImageDataset
from robustkit.errors import InputError, ParameterError
from robustkit.evaluation import AttackSummary, Data, EvaluationResult, evaluate
from robustkit.models import Classifier, ModelSpec, Normalization
from robustkit.threat import ThreatModel

__all__ = ["AttackRunner", "BenchmarkResult", "attack", "benchmark"]


@dataclass
class BenchmarkResult:
    """What :func:`benchmark` measured; accuracies are fractions in [0, 1].

    :param evaluation: the underlying :class:`~robustkit.evaluation.EvaluationResult` (per-sample records,
        distortion statistics, timings).
    :param threat: the threat model the robust accuracy is taken within.
    :param model_name: the model's name for leaderboard entries (its class name).
    :param dataset_name: the dataset's name (``custom`` for tensors or a loader).
    :param attack_suite: ``autoattack`` when the suite is AutoAttack alone, else ``custom``.
    :param normalization: what the model did to the images before the network.
    """

    evaluation: EvaluationResult
    threat: ThreatModel
    model_name: str
    dataset_name: str
    attack_suite: str
    normalization: Normalization | None = None

    @property
    def clean_accuracy(self) -> float:
        return self.evaluation.clean_accuracy

    @property
    def robust_accuracy(self) -> float:
        """The pointwise worst case over the suite within :attr:`threat`
        (:meth:`~robustkit.evaluation.EvaluationResult.worst_case_within`)."""
        return self.evaluation.worst_case_within(self.threat)

    @property
    def attacks(self) -> dict[str, AttackSummary]:
        """Each attack's own summary (robust accuracy, success rate, distortion, seconds), by label."""
        return self.evaluation.attacks

    @property
    def attack_accuracy(self) -> dict[str, float]:
        """Each attack's own robust accuracy, by label."""
        return self.evaluation.robust_accuracy

    @property
    def n_examples(self) -> int:
        return self.evaluation.n_examples

    def to_leaderboard_entry(self, **fields: Any) -> dict[str, Any]:
        """A leaderboard entry (:func:`robustkit.leaderboard.leaderboard_entry`); ``fields`` override the
        defaults: ``defense="unknown"``, ``model``, ``dataset``, ``eps``, ``threat_model``, ``attack_suite``
        and ``normalization`` from this result. Check it with :func:`robustkit.leaderboard.validate_leaderboard`."""
        from robustkit.leaderboard import leaderboard_entry

        args: dict[str, Any] = {"defense": "unknown", "model": self.model_name, "dataset": self.dataset_name,
                                "eps": self.threat.eps, "threat_model": self.threat.norm,
                                "attack_suite": self.attack_suite,
                                "normalization": self.normalization.to_json() if self.normalization else None}
        args.update(fields)
        return leaderboard_entry(self.evaluation, **args)

    def __repr__(self) -> str:
        return (f"BenchmarkResult(clean_accuracy={self.clean_accuracy:.4f}, robust_accuracy={self.robust_accuracy:.4f}, "
                f"threat={self.threat.norm} eps={self.threat.eps:g}, attacks={list(self.attacks)}, "
                f"n_examples={self.n_examples})")


def benchmark(model: nn.Module, dataset: str | Data = "cifar10", data_root: str | Path | None = None, *,
              threat: str = "linf", eps: float = 8 / 255,
              attacks: str | Iterable[str] | Mapping[str, Attack] = "autoattack", n_examples: int | None = None,
              batch_size: int = 128, device: str | torch.device = "auto", seed: int = 0,
              normalize: Normalization | str | None = None, dataset_params: Mapping[str, Any] | None = None,
              state: str | Path | None = None, host: Any = None) -> BenchmarkResult:
    """Clean accuracy and robust accuracy of ``model`` within the threat ``(threat, eps)``.

    :param model: an ``nn.Module`` taking images in [0, 1] (``N x C x H x W``) and returning logits. It is
        wrapped as ``robustkit attack --model-file`` wraps a user's network: ``normalize`` says what is done to
        the images first (default ``none``: they go in as they are).
    :param dataset: a registered dataset name (``digits`` works offline; ``cifar10`` needs ``data_root``),
        whose test split is evaluated; an ``(images, labels)`` pair of tensors; or a ``DataLoader`` (any
        iterable of ``(images, labels)`` batches, re-batched to ``batch_size``).
    :param data_root: where a registered dataset's files are.
    :param threat: the norm: ``linf``, ``l2`` or ``l1``.
    :param eps: the budget, in pixel units of images in [0, 1].
    :param attacks: a registered attack (``"autoattack"``), a spec with parameters (``"pgd steps=20"``), a list
        of them, or ``{label: Attack}`` instances. Specs get ``eps`` and ``norm`` from the threat unless they
        set them (attacks that take neither are left as they are); repeated names get labels naming the
        parameters that differ.
    :param n_examples: evaluate the first this many (all if None).
    :param normalize: ``none``, ``dataset`` (a registered dataset's mean/std), ``MEAN/STD`` or a
        :class:`~robustkit.models.Normalization`.
    :param dataset_params: parameters of a registered dataset (e.g. ``{"resize": 32}``).
    :param state: a file that makes the evaluation resumable (as ``robustkit attack --state``): finished batches
        and AutoAttack's finished sub-attacks are recorded there, and a call after an interruption continues
        where it stopped with the same numbers.
    :param host: the plugin host (default: :func:`robustkit.host.get_host`).
    :raises RobustkitError: one line, for an unknown name, a bad parameter, data of the wrong shape, or a suite
        in which no attack stays within the threat.
    """
    from robustkit.host import get_host

    host = host or get_host()
    budget = ThreatModel(threat, float(eps))
    if budget.norm == "unbounded":
        raise ParameterError("threat: give linf, l2 or l1 (an unbounded threat has no robust accuracy)")
    if not isinstance(model, nn.Module):
        raise InputError(f"model: expected a torch nn.Module, got a {type(model).__name__}")
    info = None
    if isinstance(dataset, str):
        data: Any = host.datasets.create(dataset, dict(dataset_params or {}), root=data_root)
        info = data.info
        dataset_name = info.name
    else:
        if dataset_params or data_root is not None:
            raise InputError("data_root and dataset_params go with a registered dataset name, not with tensors or a "
                             "loader")
        data = dataset
        if isinstance(dataset, ImageDataset):
            info = dataset.info
        dataset_name = info.name if info is not None else "custom"
    wrapped = _wrap(model, info, normalize)
    suite = _suite(host, attacks, budget)
    suite_name = "autoattack" if isinstance(attacks, str) and attacks.split()[0].lower() == "autoattack" else "custom"
    result = evaluate(wrapped, data, suite, n_examples=n_examples, batch_size=batch_size, device=device, seed=seed,
                      state=state)
    out = BenchmarkResult(result, budget, type(model).__name__, dataset_name, suite_name,
                          wrapped.spec.normalization if isinstance(wrapped, Classifier) else None)
    out.robust_accuracy  # a suite with nothing inside the threat fails here, not on first use
    return out


def _suite(host: Any, attacks: Any, threat: ThreatModel) -> dict[str, Attack]:
    from robustkit.commands.common import build_components

    if isinstance(attacks, Mapping):
        bad = [label for label, a in attacks.items() if not isinstance(a, Attack)]
        if bad:
            raise InputError(f"attacks: {bad[0]!r} is not an Attack instance; give {{label: Attack}} or attack names")
        suite = dict(attacks)
    else:
        specs = [attacks] if isinstance(attacks, str) else list(attacks)
        if not specs or not all(isinstance(s, str) for s in specs):
            raise InputError("attacks: give an attack name or spec ('pgd steps=20'), a list of them, or "
                             "{label: Attack}")
        suite = build_components(host.attacks, specs, defaults={"eps": threat.eps, "norm": threat.norm})
    if not suite:
        raise InputError("attacks: the suite is empty")
    return suite


def _wrap(model: nn.Module, info: DatasetInfo | None, normalize: Normalization | str | None) -> nn.Module:
    """``model`` with its normalization in front, as a :class:`~robustkit.models.Classifier`.

    With a dataset's info the network is first checked to return ``N x num_classes`` logits
    (:func:`robustkit.user_models.check_logits`, as for ``--model-file``).
    """
    if isinstance(model, Classifier) and normalize is None:
        return model  # already wrapped (built by robustkit), keeps its own normalization
    chosen = Normalization.coerce(normalize, "normalize") or Normalization("none")
    name = type(model).__name__
    if info is not None:
        from robustkit.user_models import wrap_network

        return wrap_network(model, info, chosen, name, what="normalize")
    if chosen.mode == "dataset":
        raise InputError("normalize='dataset' needs a registered dataset (its mean and std); for tensors or a "
                         "loader give MEAN/STD, e.g. normalize='0.4914,0.4822,0.4465/0.2471,0.2435,0.2616'")
    # One value broadcasts over every channel: the identity for none.
    return Classifier(model, chosen.module(1), ModelSpec(name, {}, None, chosen))


class AttackRunner:
    """One attack bound to one model: ``atk(x, y)`` returns the adversarial images, as in torchattacks.

    :param attack: the :class:`~robustkit.attacks.Attack`.
    :param model: the model it attacks (images in [0, 1] -> logits); put in eval mode during each call.
    :param targeted: whether calls need ``target_labels``.

    ``last`` holds the :class:`~robustkit.attacks.AttackResult` of the latest call (queries and
    attack-specific extras); :meth:`run` returns it directly.
    """

    def __init__(self, attack: Attack, model: nn.Module, targeted: bool = False):
        self.attack = attack
        self.model = model
        self.targeted = targeted
        self.last: AttackResult | None = None

    def run(self, images: torch.Tensor, labels: torch.Tensor,
            target_labels: torch.Tensor | None = None) -> AttackResult:
        """The whole :class:`~robustkit.attacks.AttackResult` for one batch (also kept as ``last``)."""
        if self.targeted and target_labels is None:
            raise InputError(f"{self.attack.display_name()} was made targeted: call it as atk(x, y, target_labels=...)")
        if target_labels is not None:
            target_labels = torch.as_tensor(target_labels).long().to(torch.as_tensor(labels).device)
        self.last = self.attack(self.model, images, labels, target_labels)
        return self.last

    def __call__(self, images: torch.Tensor, labels: torch.Tensor,
                 target_labels: torch.Tensor | None = None) -> torch.Tensor:
        """The adversarial images for one batch (``N x C x H x W`` in [0, 1])."""
        return self.run(images, labels, target_labels).adversarial

    def __repr__(self) -> str:
        described = self.attack.describe()
        params = " ".join(f"{k}={v}" for k, v in described.get("params", {}).items())
        return f"AttackRunner({described.get('name')} {params}{', targeted' if self.targeted else ''})"


def attack(name: str, model: nn.Module, *, targeted: bool = False, normalize: Normalization | str | None = None,
           host: Any = None, **params: Any) -> AttackRunner:
    """The registered attack ``name`` with ``params`` (e.g. ``eps=8/255, steps=10``), bound to ``model``.

    ``robustkit.attack("torchattacks:PGD", model, eps=8/255)(x, y)`` returns the adversarial images.

    :param model: an ``nn.Module`` taking images in [0, 1]; ``normalize`` (``MEAN/STD`` or a
        :class:`~robustkit.models.Normalization`) puts a normalization in front of it (default: none).
    :param targeted: calls then take ``target_labels`` (the class to reach per image); refused for an attack
        without a targeted mode.
    :raises RobustkitError: one line, for an unknown attack, a bad parameter or no targeted mode.
    """
    from robustkit.host import get_host

    host = host or get_host()
    if not isinstance(model, nn.Module):
        raise InputError(f"model: expected a torch nn.Module, got a {type(model).__name__}")
    entry = host.attacks.get(name)
    declared = {p.name for p in entry.declared_params()}
    if targeted and "targeted" in declared:
        params.setdefault("targeted", True)
    made = host.attacks.create(name, params)  # an unknown keyword is a parameter error, not host context
    if targeted and not getattr(made, "supports_targeted", False):
        raise ParameterError(f"{made.display_name()} has no targeted mode; drop targeted=True")
    if normalize is not None:
        model = _wrap(model, None, normalize)
    return AttackRunner(made, model, targeted=targeted)
