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
- ``state=FILE`` makes a run resumable (:class:`EvaluationState`): the file records every finished batch
  and every attack finished within the batch in progress, and an attack that can resume inside a batch
  (AutoAttack, after each sub-attack) saves its own progress through a :class:`BatchCheckpoint`. A killed
  run called again with the same file continues where it stopped and gives the same summary (the seconds
  apart), since every attack call is seeded as above whichever batch the run starts at.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import safetensors
import safetensors.torch
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from robustkit.attacks import Attack, attack_budget
from robustkit.data import ImageDataset, check_images, take
from robustkit.devices import numeric_environment, resolve_device, seed_everything
from robustkit.files import atomic_write, atomic_write_text, jsonable, remove_stale_temporaries
from robustkit.image_metrics import ImageMetric
from robustkit.errors import InputError, RobustkitError, one_line
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
             channels_last: bool = False, state: str | Path | EvaluationState | None = None,
             first_batch: int = 0) -> EvaluationResult:
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
    :param first_batch: the global index of the first batch of ``data`` when it is one contiguous range of whole
        batches of a larger evaluation (a shard, :mod:`robustkit.sharding`): seeds and example indices go on
        from it, so the shards' records equal those of one run over everything.
    :param state: a state file (:class:`EvaluationState`) that makes the run resumable: continued where it
        stopped when the file exists and belongs to this evaluation (refused, naming what differs, when it
        belongs to another), started and recorded otherwise. It is kept when the run ends; delete it (or
        :meth:`EvaluationState.remove`) once the results are safe elsewhere.
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
    run = _Run(seconds={name: 0.0 for name in attacks}, steps={name: {} for name in attacks})
    start = time.perf_counter()
    was_training = model.training
    model.to(device).eval()
    store = None if state is None else state if isinstance(state, EvaluationState) else EvaluationState(state)
    if store is not None:
        identity = evaluation_identity(model, attacks, metrics or {}, n_examples=n_examples, batch_size=batch_size,
                             seed=seed, keep_examples=keep_examples, precision=precision,
                             channels_last=channels_last, device=device)
        run = store.load(identity) or run

    def save() -> None:
        if store is not None:  # without a state file nothing is recorded
            store.save(identity, run)

    owner, model = model, wrap(model, precision, channels_last)
    batch_index = -1
    try:
        for batch_index, (images, labels) in enumerate(progress(loader, total=total, desc="evaluate",
                                                                unit="batch")):
            labels = torch.as_tensor(labels).long()
            digest = tensors_digest(images, labels) if store is not None else ""
            if batch_index < len(run.batches):  # finished before the run was stopped: only check it is the same
                _same_batch(store, batch_index, run.batches[batch_index], digest)
                continue
            if run.complete:
                raise _data_differs(store, f"it goes on after the {len(run.batches)} batches recorded")
            images, labels = images.to(device), labels.to(device)
            check_images(images, labels)  # also when every prediction is wrong and no attack runs
            if run.current is None:
                run.current = _Batch(batch_index, digest, _clean_records(model, images, labels,
                                                                     first_batch * batch_size + len(run.records)))
            else:  # the batch the run was stopped in
                _same_batch(store, batch_index, run.current.digest, digest)
            current = run.current
            todo = [name for name in attacks if name not in current.done]
            for name in todo:
                seed_everything(seed + first_batch + batch_index)
                tick = time.perf_counter()
                checkpoint = None if store is None else _checkpoints(current, name, save)
                adversarial = _attack_batch(model, attacks[name], name, images, labels, current.records,
                                            metrics or {}, run.steps[name], checkpoint)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)  # time the work, not the launch
                run.seconds[name] += time.perf_counter() - tick
                current.done.append(name)
                current.adversarials[name] = adversarial if keep_examples else None  # only figures need them
                current.partial = None
                if name != todo[-1]:  # the batch's own save follows the last one
                    save()
            if keep_examples:
                _keep(images, current.records, current.adversarials, keep_examples, run.kept)
            run.records.extend(current.records)
            run.batches.append(digest)
            run.current = None
            save()
    finally:
        owner.train(was_training)
    if not run.records:
        raise InputError("nothing to evaluate: the dataset is empty")
    if len(run.batches) > batch_index + 1 or run.current is not None:
        raise _data_differs(store, f"it ends after {batch_index + 1} batches, the file recorded more")
    if not run.complete:
        run.complete = True
        save()
    result = build_result(run.records, attacks, metrics or {}, run.seconds, seed, device, time.perf_counter() - start,
                     run.steps)
    report(f"evaluate: {len(run.records)} examples, {len(attacks)} attack{'s' if len(attacks) != 1 else ''}, "
           f"clean {percent(result.clean_accuracy)}  {result.seconds:.1f} s")
    if keep_examples:
        result.examples = _examples(run.kept, keep_examples, list(attacks), images.shape[1:])
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
        dataset = take(as_dataset(data), n_examples)
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


def as_dataset(data: Data) -> Dataset:
    """``data`` as a dataset of ``(image, label)`` examples: an ImageDataset's test split, a pair of tensors, or
    ``data`` itself (a loader is handled by :func:`evaluate`'s batching, not here)."""
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
                  steps: dict[str, dict[str, Any]] | None = None,
                  checkpoint: Callable[[torch.Tensor, torch.Tensor], BatchCheckpoint] | None = None,
                  ) -> torch.Tensor | None:
    """Run ``attack`` on the clean-correct examples of one batch and fill in their outcomes (and add its
    ``extra["steps"]``, if any, to ``steps``: :func:`_add_steps`).

    ``checkpoint(x, y)`` gives the :class:`BatchCheckpoint` of this attack on these inputs; it is handed to
    an attack that can resume within a batch (see there).

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
    handed = checkpoint(x, y) if checkpoint is not None and hasattr(attack, "batch_checkpoint") else None
    with _handing(attack, handed):
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


def build_result(records: list[SampleRecord], attacks: Mapping[str, Attack], metrics: Mapping[str, ImageMetric],
                 seconds: Mapping[str, float], seed: int, device: torch.device, total_seconds: float,
                 steps: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None) -> EvaluationResult:
    """The :class:`EvaluationResult` of per-example ``records`` (also of records merged from shards or read
    back from a state file): every summary is computed from the records, so equal records give equal results."""
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


# --- resuming a stopped evaluation: the state file ---------------------------------------------------

STATE_FORMAT = "robustkit-evaluation-state"
STATE_FORMAT_VERSION = 1
_STATE_KEY = "robustkit"  # the safetensors header entry holding the JSON part
_FIX = "delete the file to start afresh, or give another state file"


@dataclass
class _Batch:
    """The batch in progress: its clean records with the outcomes of the attacks finished on it (``done``, in
    order), their adversarials (kept only for figures), and the progress the running attack saved inside it
    (``partial``: ``attack``, ``inputs`` (a digest of what it was given), ``meta`` and ``tensors``)."""

    index: int
    digest: str
    records: list[SampleRecord]
    done: list[str] = field(default_factory=list)
    adversarials: dict[str, torch.Tensor | None] = field(default_factory=dict)
    partial: dict[str, Any] | None = None


@dataclass
class _Run:
    """What :func:`evaluate` has done so far, all a state file holds: the finished batches' records and
    digests, the running totals (seconds and steps include the attacks finished on the batch in progress),
    the kept examples, and the batch in progress. ``complete``: every batch of the data is done."""

    seconds: dict[str, float]
    steps: dict[str, dict[str, dict[str, Any]]]
    records: list[SampleRecord] = field(default_factory=list)
    batches: list[str] = field(default_factory=list)
    kept: list[dict[str, Any]] = field(default_factory=list)
    current: _Batch | None = None
    complete: bool = False


class BatchCheckpoint:
    """The interface between :func:`evaluate` and an attack that can resume inside one batch.

    An attack opts in by declaring the attribute ``batch_checkpoint = None`` (AutoAttack does). While
    ``evaluate(state=...)`` runs it on a batch, the attribute holds this batch's checkpoint, and None
    again after the call (and always without a state file):

    - :meth:`load` gives back what the attack saved on exactly these inputs before the run was stopped,
      ``(meta, tensors)``, or None: start from the beginning.
    - :meth:`save` records ``meta`` (JSON-ready) and ``tensors`` (by name) in the state file at once.

    The attack saves after each step it can restart from (AutoAttack: each sub-attack) and, given a saved
    step, continues after it. It owes the same result as an uninterrupted call: each step must start from
    a random state that does not depend on the steps before it (AutoAttack seeds every sub-attack alike).
    A checkpoint never leaks into another attack or batch: evaluate makes one per attack call and drops
    what was saved once the call returns.
    """

    def __init__(self, batch: _Batch, attack: str, inputs: str, save: Callable[[], None]):
        self._batch, self._attack, self._inputs, self._save = batch, attack, inputs, save

    def load(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
        """What the attack saved on these inputs (its meta and CPU tensors), or None."""
        partial = self._batch.partial
        if partial is None or partial["attack"] != self._attack:
            return None
        if partial["inputs"] != self._inputs:  # the clean predictions differ from the stopped run's
            report(f"evaluate: {self._attack}'s saved progress in batch {self._batch.index + 1} was made on other "
                   "inputs; it starts that batch afresh")
            return None
        return json.loads(json.dumps(partial["meta"])), {k: t.clone() for k, t in partial["tensors"].items()}

    def save(self, meta: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> None:
        """Record the attack's progress on this batch (the state file is rewritten atomically)."""
        self._batch.partial = {"attack": self._attack, "inputs": self._inputs, "meta": jsonable(dict(meta)),
                               "tensors": {k: t.detach().to("cpu").clone() for k, t in tensors.items()}}
        self._save()


def _checkpoints(batch: _Batch, attack: str, save: Callable[[], None],
                 ) -> Callable[[torch.Tensor, torch.Tensor], BatchCheckpoint]:
    return lambda x, y: BatchCheckpoint(batch, attack, tensors_digest(x, y), save)


@contextlib.contextmanager
def _handing(attack: Attack, checkpoint: BatchCheckpoint | None) -> Iterator[None]:
    """Hand ``checkpoint`` to ``attack`` for one call (see :class:`BatchCheckpoint`)."""
    if checkpoint is None:
        yield
        return
    attack.batch_checkpoint = checkpoint  # type: ignore[attr-defined]
    try:
        yield
    finally:
        attack.batch_checkpoint = None  # type: ignore[attr-defined]


def tensors_digest(*tensors: torch.Tensor) -> str:
    """SHA-256 of tensors' dtypes, shapes and bytes (device-independent)."""
    digest = hashlib.sha256()
    for tensor in tensors:
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def model_fingerprint(model: nn.Module) -> dict[str, Any]:
    """What identifies the computation of ``model``: its class, the SHA-256 of its state dict (names,
    dtypes, shapes and bytes; device-independent) and, for a user's own model, its source's hashes."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}|".encode())
        digest.update(tensors_digest(tensor).encode())
    out: dict[str, Any] = {"class": f"{type(model).__module__}.{type(model).__qualname__}",
                           "weights_sha256": digest.hexdigest()}
    source = getattr(getattr(model, "spec", None), "source", None)
    if source:
        out["source"] = {key: source.get(key) for key in ("kind", "class", "sha256", "weights_sha256")}
    return out


def evaluation_identity(model: nn.Module, attacks: Mapping[str, Attack], metrics: Mapping[str, ImageMetric], *,
              n_examples: int | None, batch_size: int, seed: int, keep_examples: int, precision: str,
              channels_last: bool, device: torch.device) -> dict[str, Any]:
    """What a state file belongs to: everything that decides the evaluation's numbers (the model, each
    attack's description (AutoAttack's includes its settings fingerprint), the metrics, which examples and
    how they are batched and seeded, the numeric environment) and the examples kept for figures."""
    identity = {
        "model": model_fingerprint(model),
        "attacks": {name: attack.describe() for name, attack in attacks.items()},
        "attack_order": list(attacks),
        "metrics": {name: {"metric": m.display_name(), "params": dict(m.config)} for name, m in metrics.items()},
        "data": {"n_examples": n_examples, "batch_size": batch_size, "seed": seed},
        "keep_examples": keep_examples,
        "precision": precision,
        "channels_last": channels_last,
        "environment": numeric_environment(device, torch.get_num_threads()),
    }
    return json.loads(json.dumps(jsonable(identity)))  # as it reads back from the file


def _same_batch(state: EvaluationState | None, index: int, recorded: str, digest: str) -> None:
    if state is not None and recorded != digest:
        raise _data_differs(state, f"batch {index + 1} holds other images or labels")


def _data_differs(state: EvaluationState | None, what: str) -> RobustkitError:
    where = state.path if state is not None else "the state file"
    return RobustkitError(f"{where} records an evaluation of other data ({what}); evaluate the same examples in "
                          f"the same order, or {_FIX}")


class EvaluationState:
    """The state file of a resumable evaluation (``evaluate(state=...)``, ``robustkit attack --state``).

    One safetensors file, never a pickle: its header holds the JSON part, the tensors are plain tensors.
    It is rewritten atomically (:func:`robustkit.files.atomic_write`: a temporary file in the same folder,
    fsync, rename) after every finished batch, after each attack that finishes inside the batch in
    progress, and whenever an attack saves its progress inside a batch (:class:`BatchCheckpoint`), so a
    kill at any moment leaves the last whole state. It is refused as a symbolic link.

    The JSON part:

    - ``identity``: what the file belongs to (the model's fingerprint, every attack's description, the
      metrics, ``n_examples``, ``batch_size``, ``seed``, the numeric environment, ...). A resume whose
      identity differs is refused in one line naming the difference.
    - ``batches``: a SHA-256 of each finished batch's images and labels; a resume on other data is refused
      at the first batch that differs.
    - ``records``, ``seconds``, ``steps``, ``kept``: the finished batches' per-example records and the
      running totals, so a resumed run's summary equals an uninterrupted one's (the seconds apart).
    - ``current``: the batch in progress: its records with the outcomes of the attacks finished on it,
      their adversarials when examples are kept for figures (tensors), and the running attack's own
      progress (``partial``: its meta here, its tensors as ``partial/NAME``).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def _check_path(self) -> None:
        if self.path.is_symlink():
            raise RobustkitError(f"state file {self.path} is a symbolic link; robustkit never writes through one: "
                                 "remove it or give another state file")
        if self.path.is_dir():
            raise RobustkitError(f"state file {self.path} is a folder; give a file name (it is created when missing)")

    def read(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """The file's JSON part and tensors, unchecked against any evaluation.

        :raises RobustkitError: when it is missing, a link, or not a whole state file (truncated, corrupt).
        """
        self._check_path()
        if not self.path.is_file():
            raise RobustkitError(f"state file {self.path} not found")
        try:
            with safetensors.safe_open(str(self.path), framework="pt") as handle:
                header = handle.metadata() or {}
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}
            doc = json.loads(header[_STATE_KEY])
        except Exception as err:  # safetensors raises its own types for every kind of damage
            raise self._damaged(one_line(err, typed=True)) from None
        if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT:
            raise self._damaged(f"not a {STATE_FORMAT} file")
        if doc.get("format_version") != STATE_FORMAT_VERSION:
            raise RobustkitError(f"state file {self.path} has format version {doc.get('format_version')}, this "
                                 f"robustkit reads {STATE_FORMAT_VERSION}; {_FIX}")
        return doc, tensors

    def load(self, identity: Mapping[str, Any]) -> _Run | None:
        """The run recorded for ``identity``; None when there is no file yet (the stale temporaries a killed
        write left next to it are removed).

        :raises RobustkitError: when the file belongs to another evaluation (naming what differs), or is
            damaged.
        """
        self._check_path()
        remove_stale_temporaries(self.path.parent)
        if not self.path.exists():
            return None
        doc, tensors = self.read()
        if doc.get("identity") != identity:
            raise RobustkitError(f"state file {self.path} belongs to another evaluation "
                                 f"({_differences(doc.get('identity'), identity)}); {_FIX}")
        try:
            run = _run_from(doc, tensors)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as err:
            raise self._damaged(f"{type(err).__name__} {err}") from None
        done = len(run.batches)
        report(f"evaluate: resuming from {self.path}: " + ("every batch done" if run.complete else
               f"{done} batch{'es' if done != 1 else ''} done"
               + (f", batch {done + 1} in progress" if run.current is not None else "")))
        return run

    def save(self, identity: Mapping[str, Any], run: _Run) -> None:
        """Write ``run`` for ``identity`` atomically."""
        self._check_path()
        doc, tensors = _run_to(run)
        doc = {"format": STATE_FORMAT, "format_version": STATE_FORMAT_VERSION, "identity": dict(identity), **doc}
        header = {_STATE_KEY: json.dumps(doc, separators=(",", ":"))}
        atomic_write(self.path, lambda tmp: safetensors.torch.save_file(tensors, str(tmp), header))

    def remove(self) -> None:
        """Delete the file (no error when it is gone)."""
        self._check_path()
        self.path.unlink(missing_ok=True)

    def _damaged(self, detail: str) -> RobustkitError:
        return RobustkitError(f"state file {self.path} is damaged or truncated ({detail}); {_FIX}")


def record_to_json(record: SampleRecord) -> dict[str, Any]:
    """One example's record as JSON (state files, shards); :func:`record_from_json` reads it back."""
    return {"index": record.index, "label": record.label, "clean_pred": record.clean_pred,
            "attacks": {name: asdict(o) for name, o in record.attacks.items()}}


def record_from_json(doc: Mapping[str, Any]) -> SampleRecord:
    """The record :func:`record_to_json` wrote."""
    return SampleRecord(int(doc["index"]), int(doc["label"]), int(doc["clean_pred"]),
                        {name: AttackOutcome(**o) for name, o in doc["attacks"].items()})


def _run_to(run: _Run) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``run`` as the JSON part and the tensors of a state file (every tensor its own CPU copy: safetensors
    refuses tensors that share memory)."""
    tensors: dict[str, torch.Tensor] = {}

    def put(key: str, tensor: torch.Tensor) -> str:
        tensors[key] = tensor.detach().to("cpu").clone()
        return key

    kept = []
    for i, k in enumerate(run.kept):
        kept.append({"index": k["index"], "label": k["label"], "clean_pred": k["clean_pred"],
                     "adv_pred": k["adv_pred"], "image": put(f"kept/{i}/image", k["image"]),
                     "adversarial": {name: put(f"kept/{i}/adv/{j}", t)
                                     for j, (name, t) in enumerate(k["adversarial"].items())}})
    current = None
    if run.current is not None:
        batch = run.current
        partial = None
        if batch.partial is not None:
            partial = {**{k: v for k, v in batch.partial.items() if k != "tensors"},
                       "tensors": {name: put(f"partial/{name}", t) for name, t in batch.partial["tensors"].items()}}
        current = {"index": batch.index, "digest": batch.digest, "records": [record_to_json(r) for r in batch.records],
                   "done": list(batch.done),
                   "adversarials": {name: None if t is None else put(f"current/adv/{j}", t)
                                    for j, (name, t) in enumerate(batch.adversarials.items())},
                   "partial": partial}
    doc = {"complete": run.complete, "batches": list(run.batches), "seconds": dict(run.seconds),
           "steps": run.steps, "records": [record_to_json(r) for r in run.records], "kept": kept, "current": current}
    return doc, tensors


def _run_from(doc: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> _Run:
    """The inverse of :func:`_run_to`; a missing tensor or field raises KeyError (a damaged file)."""
    run = _Run(seconds={k: float(v) for k, v in doc["seconds"].items()},
               steps={k: dict(v) for k, v in doc["steps"].items()},
               records=[record_from_json(r) for r in doc["records"]], batches=[str(d) for d in doc["batches"]],
               complete=bool(doc["complete"]))
    for k in doc["kept"]:
        run.kept.append({"index": int(k["index"]), "label": int(k["label"]), "clean_pred": int(k["clean_pred"]),
                         "adv_pred": {name: int(p) for name, p in k["adv_pred"].items()},
                         "image": tensors[k["image"]],
                         "adversarial": {name: tensors[key] for name, key in k["adversarial"].items()}})
    current = doc["current"]
    if current is not None:
        if int(current["index"]) != len(run.batches):
            raise ValueError(f"the batch in progress is {current['index'] + 1}, after {len(run.batches)} done")
        partial = current["partial"]
        if partial is not None:
            partial = {**partial, "tensors": {name: tensors[key] for name, key in partial["tensors"].items()}}
        run.current = _Batch(int(current["index"]), str(current["digest"]),
                             [record_from_json(r) for r in current["records"]], [str(n) for n in current["done"]],
                             {name: None if key is None else tensors[key]
                              for name, key in current["adversarials"].items()}, partial)
    return run


def _differences(stored: Any, current: Any, limit: int = 3) -> str:
    """Where two identities differ, as ``path: A there, B now`` (the first ``limit``; long values shortened)."""
    found: list[str] = []

    def shown(value: Any) -> str:
        text = json.dumps(value)
        return text if len(text) <= 40 else text[:37] + "..."

    def walk(a: Any, b: Any, where: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in list(b) + [k for k in a if k not in b]:
                walk(a.get(key), b.get(key), f"{where}.{key}" if where else str(key))
        elif a != b:
            found.append(f"{where or 'everything'}: {shown(a)} there, {shown(b)} now")

    walk(stored, current, "")
    return "; ".join(found[:limit]) + (f"; and {len(found) - limit} more" if len(found) > limit else "")
