"""Clean and attacked accuracy of one model under a suite of attacks, with per-sample records.

:func:`evaluate` runs every attack on every batch and returns an :class:`EvaluationResult`:
clean accuracy, robust accuracy per attack, the pointwise worst case over the suite, distortion
statistics and timings, and one :class:`SampleRecord` per example.

Conventions:

- Attacks run only on the examples the model classifies correctly; an example it already gets
  wrong is non-robust under every attack, its "adversarial" is the clean image (distortion 0,
  ``attacked`` false, ``success`` false). This matches AutoAttack and RobustBench and saves time.
- ``success``: the attack turned a correct prediction into a wrong one (untargeted).
- Robust accuracy is :func:`robust_accuracy` (also used by training's validation and the bench audit):
  right on the clean image and on its adversarial.
- Distortion statistics (mean and median L2 and Linf) are over successful adversarials only;
  ``n_clean_wrong`` says how many examples were wrong before any attack.
- ``worst_case_accuracy`` is the pointwise worst case over every attack at any distance; the numbers
  to report against a threat model are :meth:`EvaluationResult.worst_cases`: per budget (norm, eps)
  of the fixed-budget attacks in the suite, an example counts as broken only by an attack bounded in
  that norm whose adversarial lies within eps. Attacks without a budget (minimal-distortion) are
  never inside a worst case: their distances are reported beside it.
- Accuracies are fractions in [0, 1] here; :mod:`robustkit.leaderboard` reports percent.
- Before each attack call the global RNGs are seeded with ``seed + batch_index``, so an attack's
  result depends neither on the other attacks in the suite nor on their order.
- ``keep_examples=N`` keeps the first N clean-correct examples with every attack's adversarial
  (:class:`Examples`, on the CPU) for figures, topped up with misclassified (unattacked) ones when
  fewer than N are correct; they stay out of the summary and records files.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from robustkit.attacks import Attack, attack_budget
from robustkit.data import ImageDataset, check_images, take
from robustkit.devices import resolve_device, seed_everything
from robustkit.files import atomic_write_text
from robustkit.image_metrics import ImageMetric
from robustkit.errors import InputError, RobustkitError
from robustkit.models import logits
from robustkit.precision import PRECISIONS, wrap
from robustkit.progress import percent, progress, report
from robustkit.threat import TOLERANCE, ThreatModel, distances, within_budget

Data = Dataset | ImageDataset | tuple[torch.Tensor, torch.Tensor] | Iterable[tuple[torch.Tensor, torch.Tensor]]


Labels = torch.Tensor | Sequence[int]


def robust_accuracy(labels: Labels, clean_pred: Labels, adv_pred: Labels) -> float:
    """Robust accuracy: the fraction of examples classified correctly both clean and under attack.

    This is robustkit's one definition, used by :func:`evaluate` (per attack), by the per-epoch
    validation of :func:`robustkit.training.train` and by the gradient-masking audit of ``bench``.
    An example the model already gets wrong on the clean image is never robust, even where its
    adversarial happens to be classified correctly (a lucky random start, or an attack that did not
    run on it because the clean prediction was wrong already).

    :param labels: true classes of the n examples (a tensor or a sequence of ints).
    :param clean_pred: the model's predictions on the clean images.
    :param adv_pred: its predictions on their adversarials (an example that was not attacked: its
        clean prediction).
    :returns: robust examples / n, a fraction in [0, 1]; 0.0 for no examples.
    :raises InputError: when the three do not have the same length.
    """
    y, clean, adv = (torch.as_tensor(v, device="cpu").reshape(-1) for v in (labels, clean_pred, adv_pred))
    if not y.shape == clean.shape == adv.shape:
        raise InputError(f"labels, clean predictions and adversarial predictions differ in length: "
                         f"{y.numel()}, {clean.numel()} and {adv.numel()}")
    return int(((clean == y) & (adv == y)).sum()) / max(y.numel(), 1)


@dataclass
class AttackOutcome:
    """One attack's effect on one example.

    :param attacked: whether the attack ran on it (false when the clean prediction was already wrong).
    :param adv_pred: the model's prediction on the adversarial image.
    :param success: the attack turned a correct prediction into a wrong one.
    :param l2: L2 distance to the clean image.
    :param linf: Linf distance to the clean image.
    :param l1: L1 distance to the clean image.
    :param queries: model queries the attack reported, if it counts them.
    :param metrics: per-example image metrics of a successful adversarial (``evaluate(metrics=...)``), by name.
    """

    attacked: bool
    adv_pred: int
    success: bool
    l2: float
    linf: float
    queries: int | None = None
    l1: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class SampleRecord:
    """Everything measured on one example.

    :param index: position in the evaluated dataset.
    :param label: true class.
    :param clean_pred: prediction on the clean image.
    :param attacks: outcome per attack name.
    """

    index: int
    label: int
    clean_pred: int
    attacks: dict[str, AttackOutcome] = field(default_factory=dict)

    @property
    def clean_correct(self) -> bool:
        return self.clean_pred == self.label

    @property
    def robust(self) -> bool:
        """Correct on the clean image and on every attack's adversarial (the suite's worst case)."""
        return self.clean_correct and all(o.adv_pred == self.label for o in self.attacks.values())

    def to_dict(self) -> dict[str, Any]:
        """Nested form, one JSON line per record."""
        return {"index": self.index, "label": self.label, "clean_pred": self.clean_pred,
                "clean_correct": self.clean_correct, "robust": self.robust,
                "attacks": {name: asdict(o) for name, o in self.attacks.items()}}

    def to_row(self) -> dict[str, Any]:
        """Flat form, one CSV row: ``<attack>.<field>`` columns per attack."""
        row: dict[str, Any] = {"index": self.index, "label": self.label, "clean_pred": self.clean_pred,
                               "clean_correct": self.clean_correct, "robust": self.robust}
        for name, outcome in self.attacks.items():
            fields = asdict(outcome)
            metrics = fields.pop("metrics")
            row.update({f"{name}.{k}": v for k, v in fields.items()})
            row.update({f"{name}.{metric}": v for metric, v in metrics.items()})
        return row


@dataclass
class AttackSummary:
    """One attack's totals over the evaluated examples.

    :param description: the attack's name and parameters (:meth:`Attack.describe`).
    :param robust_accuracy: fraction of all examples correct on clean and on this attack's adversarial
        (:func:`robust_accuracy`).
    :param success_rate: fraction of the clean-correct examples the attack fooled (None if there were none).
    :param n_success: number of successful adversarials.
    :param mean_l2: mean L2 of successful adversarials (None without any); likewise the others.
    :param mean_queries: mean reported queries over attacked examples, if the attack counts them.
    :param seconds: wall time spent in the attack.
    :param metrics: mean and median of each image metric over the successful adversarials it scored,
        ``{metric: {"mean": ..., "median": ...}}``.
    :param steps: for an attack made of steps (AutoAttack's sub-attacks; an attack that returns
        ``extra["steps"]``, see :func:`_add_steps`), one dict per step in order, summed over the batches:
        ``attack`` (the step's name), ``robust_accuracy`` (fraction of all examples still robust after it),
        ``attacked``, ``fooled`` (counts) and ``seconds``. Empty for other attacks, and then left out of
        :meth:`EvaluationResult.summary`.
    """

    description: dict[str, Any]
    robust_accuracy: float
    success_rate: float | None
    n_success: int
    mean_l2: float | None
    median_l2: float | None
    mean_linf: float | None
    median_linf: float | None
    mean_queries: float | None
    seconds: float
    metrics: dict[str, dict[str, float | None]] = field(default_factory=dict)
    steps: list[dict[str, Any]] = field(default_factory=list)


def _summary_of(s: AttackSummary) -> dict[str, Any]:
    out = asdict(s)
    if not out["steps"]:
        del out["steps"]
    return out


@dataclass
class Examples:
    """The first clean-correct examples and each attack's adversarials, for figures (CPU tensors).

    When fewer were classified correctly, the first misclassified ones follow; they were not
    attacked, so their "adversarial" is the clean image.

    :param indices: positions in the evaluated dataset.
    :param images: clean images ``N x C x H x W``.
    :param labels: true classes.
    :param clean_pred: predictions on the clean images.
    :param adversarial: adversarial images per attack name.
    :param adv_pred: predictions on them per attack name.
    """

    indices: torch.Tensor
    images: torch.Tensor
    labels: torch.Tensor
    clean_pred: torch.Tensor
    adversarial: dict[str, torch.Tensor]
    adv_pred: dict[str, torch.Tensor]

    def __len__(self) -> int:
        return len(self.indices)


@dataclass
class EvaluationResult:
    """What :func:`evaluate` measured; accuracies are fractions in [0, 1].

    ``examples`` holds the kept examples (``keep_examples``), never written to the summary; ``budgets``
    the threat model each attack promised to stay within (None: no budget; see
    :func:`robustkit.attacks.attack_budget`).
    """

    n_examples: int
    clean_accuracy: float
    worst_case_accuracy: float
    n_clean_wrong: int
    attacks: dict[str, AttackSummary]
    records: list[SampleRecord]
    seed: int
    device: str
    seconds: float
    examples: Examples | None = None
    budgets: dict[str, ThreatModel | None] = field(default_factory=dict)

    @property
    def robust_accuracy(self) -> dict[str, float]:
        """Robust accuracy per attack name."""
        return {name: s.robust_accuracy for name, s in self.attacks.items()}

    def threats(self) -> list[ThreatModel]:
        """The distinct budgets of the suite's fixed-budget attacks, in suite order."""
        out: list[ThreatModel] = []
        for budget in self.budgets.values():
            if budget is not None and all((t.norm, t.eps) != (budget.norm, budget.eps) for t in out):
                out.append(budget)
        return out

    def unbounded(self) -> list[str]:
        """The attacks that are in no worst case: without a budget (minimal-distortion ones)."""
        return [name for name in self.attacks if self.budgets.get(name) is None]

    def worst_case_within(self, threat: ThreatModel) -> float:
        """Accuracy when an example counts as broken only by an attack bounded in ``threat.norm`` whose
        adversarial lies within ``threat.eps`` in that norm.

        :raises RobustkitError: when no attack of the suite stays within the threat (bounded in its norm, with
            a budget no larger than its eps): the number would claim robustness that nothing tested.
        """
        names = [n for n, b in self.budgets.items() if b is not None and b.norm == threat.norm]
        if not any(self.budgets[n].eps <= threat.eps + TOLERANCE for n in names):  # type: ignore[union-attr]
            raise RobustkitError(f"no attack of the suite stays within {threat.norm} eps {threat.eps:g}; add one "
                                 "bounded there (the worst case is never taken over attacks without that budget)")

        def broken(outcome: AttackOutcome) -> bool:
            return outcome.success and bool(within_budget(getattr(outcome, threat.norm), threat.eps))

        robust = sum(r.clean_correct and not any(broken(r.attacks[n]) for n in names) for r in self.records)
        return robust / max(self.n_examples, 1)

    def worst_cases(self) -> dict[str, float]:
        """The worst case within each threat of the suite (:meth:`threats`), keyed ``"linf eps 0.1"``."""
        return {f"{t.norm} eps {t.eps:g}": self.worst_case_within(t) for t in self.threats()}

    def summary(self) -> dict[str, Any]:
        """Everything but the per-sample records, JSON-ready."""
        return {"n_examples": self.n_examples, "clean_accuracy": self.clean_accuracy,
                "worst_case_within_threat": self.worst_cases(), "not_in_any_worst_case": self.unbounded(),
                "worst_case_accuracy": self.worst_case_accuracy, "n_clean_wrong": self.n_clean_wrong,
                "attacks": {name: _summary_of(s) for name, s in self.attacks.items()},
                "seed": self.seed, "device": self.device, "seconds": self.seconds}

    def save_summary(self, path: str | Path) -> Path:
        """Write :meth:`summary` as JSON (atomically)."""
        return atomic_write_text(path, json.dumps(self.summary(), indent=2, default=str) + "\n")

    def save_records(self, path: str | Path) -> Path:
        """Write the per-sample records: JSON lines for ``.jsonl``, CSV for ``.csv``."""
        path = Path(path)
        if path.suffix == ".jsonl":
            text = "".join(json.dumps(r.to_dict()) + "\n" for r in self.records)
        elif path.suffix == ".csv":
            rows = [r.to_row() for r in self.records]
            out = io.StringIO()
            writer = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else ["index"], lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
            text = out.getvalue()
        else:
            raise RobustkitError(f"records file {path}: use a .jsonl or .csv name")
        return atomic_write_text(path, text)


def evaluate(model: nn.Module, data: Data, attacks: Mapping[str, Attack], *, n_examples: int | None = None,
             batch_size: int = 128, device: str | torch.device = "auto", seed: int = 0,
             keep_examples: int = 0, metrics: Mapping[str, ImageMetric] | None = None, precision: str = "fp32",
             channels_last: bool = False) -> EvaluationResult:
    """Clean accuracy and robust accuracy of ``model`` under each attack in ``attacks``.

    :param model: images in [0, 1] -> logits; moved to ``device`` and put in eval mode meanwhile.
    :param data: a dataset of ``(image, label)``, an :class:`ImageDataset` (its test split), an
        ``(images, labels)`` pair of tensors, or a ``DataLoader`` (or a generator: any iterable of
        ``(images, labels)`` batches that is not indexable; a list is a dataset of examples). The batches of a loader are read in its order and re-batched to ``batch_size`` (its own
        batch size does not matter), so a loader gives the same numbers as the tensors it yields.
    :param attacks: attack per display name (the names key the records and summaries).
    :param n_examples: evaluate the first ``n_examples`` (all if None): a fixed, not random, subset (of a
        loader: the first it yields; it is not read further).
    :param batch_size: examples per batch.
    :param device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    :param seed: base seed; see the module notes.
    :param keep_examples: keep the first this many clean-correct examples (topped up with misclassified
        ones) and their adversarials in ``result.examples`` (for :func:`robustkit.plots.save_example_grid`).
    :param metrics: image metrics (:class:`~robustkit.image_metrics.ImageMetric`, e.g. ``host.metrics.create("pass")``)
        to measure on every successful adversarial, by name.
    :param precision: ``fp32``, ``bf16`` or ``fp16``: the model runs under autocast (attacks still see
        float32 logits; see :mod:`robustkit.precision` on why fp16 can weaken gradient attacks).
    :param channels_last: run the model in channels-last memory format.
    """
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    if keep_examples < 0:
        raise InputError(f"keep_examples must be >= 0, got {keep_examples}")
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if n_examples is not None and n_examples < 1:
        raise InputError(f"n_examples must be >= 1 (or None for all), got {n_examples}")
    device = resolve_device(device)
    loader, total = _batches(data, n_examples, batch_size)
    records: list[SampleRecord] = []
    seconds = {name: 0.0 for name in attacks}
    steps: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in attacks}
    kept: list[dict[str, Any]] = []
    start = time.perf_counter()
    was_training = model.training
    model.to(device).eval()
    owner, model = model, wrap(model, precision, channels_last)
    try:
        for batch_index, (images, labels) in enumerate(progress(loader, total=total, desc="evaluate",
                                                                unit="batch")):
            images, labels = images.to(device), torch.as_tensor(labels).long().to(device)
            check_images(images, labels)  # also when every prediction is wrong and no attack runs
            batch_records = _clean_records(model, images, labels, offset=len(records))
            adversarials: dict[str, torch.Tensor | None] = {}
            for name, attack in attacks.items():
                seed_everything(seed + batch_index)
                tick = time.perf_counter()
                adversarials[name] = _attack_batch(model, attack, name, images, labels, batch_records, metrics or {},
                                                   steps[name])
                if device.type == "cuda":
                    torch.cuda.synchronize(device)  # time the work, not the launch
                seconds[name] += time.perf_counter() - tick
            if keep_examples:
                _keep(images, batch_records, adversarials, keep_examples, kept)
            records.extend(batch_records)
    finally:
        owner.train(was_training)
    if not records:
        raise InputError("nothing to evaluate: the dataset is empty")
    result = _result(records, attacks, metrics or {}, seconds, seed, device, time.perf_counter() - start, steps)
    report(f"evaluate: {len(records)} examples, {len(attacks)} attack{'s' if len(attacks) != 1 else ''}, "
           f"clean {percent(result.clean_accuracy)}  {result.seconds:.1f} s")
    if keep_examples:
        result.examples = _examples(kept, keep_examples, list(attacks), images.shape[1:])
    return result


def _keep(images: torch.Tensor, records: list[SampleRecord], adversarials: Mapping[str, torch.Tensor | None],
          limit: int, kept: list[dict[str, Any]]) -> None:
    """Add up to ``limit`` clean-correct and ``limit`` clean-wrong examples of one batch to ``kept`` (on the CPU).

    Clean-wrong ones are not attacked: their "adversarial" is the clean image. They only fill in
    when fewer than ``limit`` examples were classified correctly (see :func:`_examples`).
    """
    correct = sum(k["label"] == k["clean_pred"] for k in kept)
    wrong = len(kept) - correct
    j = -1
    for i, r in enumerate(records):
        if r.clean_correct:
            j += 1  # position among the attacked examples
            if correct == limit:
                continue
            correct += 1
            adv = {name: a[j].detach().cpu() for name, a in adversarials.items() if a is not None}
        else:
            if wrong == limit:
                continue
            wrong += 1
            adv = {name: images[i].detach().cpu() for name in adversarials}
        kept.append({"index": r.index, "image": images[i].detach().cpu(), "label": r.label,
                     "clean_pred": r.clean_pred, "adversarial": adv,
                     "adv_pred": {name: o.adv_pred for name, o in r.attacks.items()}})


def _examples(kept: list[dict[str, Any]], limit: int, names: list[str], shape: torch.Size) -> Examples:
    """The first ``limit`` clean-correct examples, topped up with the first clean-wrong ones."""
    correct = [k for k in kept if k["label"] == k["clean_pred"]][:limit]
    chosen = correct + [k for k in kept if k["label"] != k["clean_pred"]][:limit - len(correct)]

    def longs(values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long)

    def images(values: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(values) if values else torch.empty(0, *shape)

    return Examples(
        indices=longs([k["index"] for k in chosen]), images=images([k["image"] for k in chosen]),
        labels=longs([k["label"] for k in chosen]), clean_pred=longs([k["clean_pred"] for k in chosen]),
        adversarial={n: images([k["adversarial"][n] for k in chosen]) for n in names},
        adv_pred={n: longs([k["adv_pred"][n] for k in chosen]) for n in names},
    )


def _batches(data: Data, n_examples: int | None, batch_size: int) -> tuple[Iterable[Any], int | None]:
    """The batches to evaluate and how many there are (None when unknown): a dataset (anything indexable:
    a ``Dataset``, a list of ``(image, label)`` examples, an ``(images, labels)`` pair) goes through a
    ``DataLoader`` in order; a ``DataLoader`` or another iterable that is not indexable (a generator of
    ``(images, labels)`` batches) is re-batched to ``batch_size``."""
    batched = isinstance(data, DataLoader) or (isinstance(data, Iterable) and not hasattr(data, "__getitem__"))
    if not batched:
        dataset = take(_as_dataset(data), n_examples)
        if len(dataset) == 0:  # type: ignore[arg-type]
            raise InputError("nothing to evaluate: the dataset is empty")
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
        return loader, len(loader)
    total = None
    sized = getattr(data, "dataset", None)
    if isinstance(data, DataLoader) and hasattr(sized, "__len__") and getattr(data, "drop_last", False) is False:
        n = len(sized) if n_examples is None else min(n_examples, len(sized))  # type: ignore[arg-type]
        total = math.ceil(n / batch_size)
    return _rebatched(data, n_examples, batch_size), total


def _rebatched(batches: Iterable[Any], n_examples: int | None, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(images, labels)`` batches of ``batch_size`` (the last one may be smaller) from batches of any size,
    stopping after ``n_examples``."""
    images: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    held = seen = 0
    for i, batch in enumerate(batches):
        if not isinstance(batch, (tuple, list)) or len(batch) != 2 or not isinstance(batch[0], torch.Tensor):
            raise InputError(f"batch {i} of the data is a {type(batch).__name__}, not an (images, labels) pair: "
                             "give a DataLoader (or iterable) of (images, labels) batches")
        x, y = batch[0], torch.as_tensor(batch[1])
        if x.dim() != 4 or y.dim() != 1 or len(x) != len(y):
            raise InputError(f"batch {i} of the data has images of shape {tuple(x.shape)} and labels of shape "
                             f"{tuple(y.shape)}; each batch must hold N x C x H x W images and N labels")
        if n_examples is not None:
            x, y = x[:n_examples - seen], y[:n_examples - seen]
        seen += len(x)
        images.append(x)
        labels.append(y)
        held += len(x)
        while held >= batch_size:
            xs, ys = torch.cat(images), torch.cat(labels)
            yield xs[:batch_size], ys[:batch_size]
            images, labels = [xs[batch_size:]], [ys[batch_size:]]
            held -= batch_size
        if n_examples is not None and seen >= n_examples:
            break
    if held:
        yield torch.cat(images), torch.cat(labels)


def _as_dataset(data: Data) -> Dataset:
    if isinstance(data, ImageDataset):
        return data.test
    if isinstance(data, tuple):
        if len(data) != 2 or not all(isinstance(t, torch.Tensor) for t in data):
            raise InputError("pass data as a dataset or as an (images, labels) pair of tensors")
        return TensorDataset(*data)
    return data


@torch.no_grad()
def _predict(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return logits(model, images).argmax(dim=1)


def _clean_records(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, offset: int) -> list[SampleRecord]:
    with torch.no_grad():
        out = logits(model, images)
    outside = labels[(labels < 0) | (labels >= out.shape[1])]
    if outside.numel():
        raise InputError(f"label {int(outside[0])} is not one of the model's {out.shape[1]} classes "
                         f"(0..{out.shape[1] - 1}); the data and the model disagree")
    preds = out.argmax(dim=1).tolist()
    return [SampleRecord(offset + i, int(y), int(p)) for i, (y, p) in enumerate(zip(labels.tolist(), preds))]


def _attack_batch(model: nn.Module, attack: Attack, name: str, images: torch.Tensor, labels: torch.Tensor,
                  records: list[SampleRecord], metrics: Mapping[str, ImageMetric],
                  steps: dict[str, dict[str, Any]] | None = None) -> torch.Tensor | None:
    """Run ``attack`` on the clean-correct examples of one batch and fill in their outcomes (and add its
    ``extra["steps"]``, if any, to ``steps``: :func:`_add_steps`).

    :returns: the adversarials of the clean-correct examples, in batch order (None if there were none).
    """
    for record in records:
        if not record.clean_correct:
            record.attacks[name] = AttackOutcome(False, record.clean_pred, False, 0.0, 0.0)
    todo = [i for i, r in enumerate(records) if r.clean_correct]
    if not todo:
        return None
    idx = torch.tensor(todo, device=images.device)
    x, y = images[idx], labels[idx]
    result = attack(model, x, y)
    if steps is not None:
        _add_steps(steps, (result.extra or {}).get("steps"))
    adv_preds = _predict(model, result.adversarial).tolist()
    dist = distances(result.adversarial, x)
    queries = result.queries.tolist() if result.queries is not None else [None] * len(todo)
    scores: list[dict[str, float]] = [{} for _ in todo]
    fooled = [j for j, i in enumerate(todo) if int(adv_preds[j]) != records[i].label]
    if metrics and fooled:
        sel = torch.tensor(fooled, device=x.device)
        for metric_name, metric in metrics.items():
            for j, value in zip(fooled, metric(result.adversarial[sel], x[sel]).tolist()):
                scores[j][metric_name] = float(value)
    for j, i in enumerate(todo):
        pred = int(adv_preds[j])
        records[i].attacks[name] = AttackOutcome(
            attacked=True, adv_pred=pred, success=pred != records[i].label, l2=float(dist["l2"][j]),
            linf=float(dist["linf"][j]), queries=None if queries[j] is None else int(queries[j]),
            l1=float(dist["l1"][j]), metrics=scores[j],
        )
    return result.adversarial


def _add_steps(totals: dict[str, dict[str, Any]], steps: Any) -> None:
    """Add one batch's ``extra["steps"]`` to ``totals`` (by step name, in first-seen order).

    ``steps`` is a list of dicts, one per step of the attack in order, with ``attack`` (its name),
    ``attacked``, ``fooled``, ``robust`` (examples of the batch still robust after the step) and ``seconds``;
    anything else (None, another shape) is ignored.
    """
    if not isinstance(steps, list):
        return
    for step in steps:
        if not isinstance(step, Mapping) or "attack" not in step:
            continue
        total = totals.setdefault(str(step["attack"]), {"attacked": 0, "fooled": 0, "robust": 0, "seconds": 0.0})
        for key in ("attacked", "fooled", "robust"):
            total[key] += int(step.get(key) or 0)
        total["seconds"] += float(step.get("seconds") or 0.0)


def _result(records: list[SampleRecord], attacks: Mapping[str, Attack], metrics: Mapping[str, ImageMetric],
            seconds: Mapping[str, float], seed: int, device: torch.device, total_seconds: float,
            steps: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None) -> EvaluationResult:
    n = len(records)
    n_correct = sum(r.clean_correct for r in records)
    labels, clean_pred = [r.label for r in records], [r.clean_pred for r in records]
    summaries = {}
    for name, attack in attacks.items():
        outcomes = [r.attacks[name] for r in records]
        hits = [o for o in outcomes if o.success]
        counted = [o.queries for o in outcomes if o.attacked and o.queries is not None]
        summaries[name] = AttackSummary(
            description=attack.describe(),
            robust_accuracy=robust_accuracy(labels, clean_pred, [r.attacks[name].adv_pred for r in records]),
            success_rate=len(hits) / n_correct if n_correct else None,
            n_success=len(hits),
            mean_l2=_mean([o.l2 for o in hits]), median_l2=_median([o.l2 for o in hits]),
            mean_linf=_mean([o.linf for o in hits]), median_linf=_median([o.linf for o in hits]),
            mean_queries=_mean([float(q) for q in counted]),
            seconds=seconds[name],
            metrics={metric: _mean_and_median([o.metrics[metric] for o in hits if metric in o.metrics])
                     for metric in metrics},
            steps=[{"attack": step, "robust_accuracy": t["robust"] / n, "attacked": t["attacked"],
                    "fooled": t["fooled"], "seconds": t["seconds"]}
                   for step, t in ((steps or {}).get(name) or {}).items()],
        )
    return EvaluationResult(
        n_examples=n, clean_accuracy=n_correct / n, worst_case_accuracy=sum(r.robust for r in records) / n,
        n_clean_wrong=n - n_correct, attacks=summaries, records=records, seed=seed, device=str(device),
        seconds=total_seconds, budgets={name: attack_budget(attack) for name, attack in attacks.items()},
    )


def _mean_and_median(values: list[float]) -> dict[str, float | None]:
    return {"mean": _mean(values), "median": _median(values)}


def _mean(values: list[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


def _median(values: list[float]) -> float | None:
    return float(statistics.median(values)) if values else None
