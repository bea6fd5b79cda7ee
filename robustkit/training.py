"""The one training loop every defense shares.

A defense supplies the loss of a batch (:meth:`robustkit.defenses.Defense.batch_loss`); this module
owns everything else: optimizer, learning-rate schedule, epochs, seeds, data augmentation
(:mod:`robustkit.augmentation`), a moving average of the weights (:mod:`robustkit.ema`), per-epoch
validation, the choice of the epoch to keep, checkpoints, resuming, progress bars, ``metrics.jsonl`` and
``curves.png``.

Determinism: the data order of epoch ``e`` comes from a generator seeded with ``(seed, e)``, the
augmentation's draws from another (on the training device), and the global RNGs the defense draws from are
reseeded with ``(seed, e)`` at the start of the epoch. With the weights, their average, the optimizer and
the scheduler restored from the checkpoint of epoch ``e - 1``, a resumed run is bit-for-bit the run that was
never stopped (on CPU; on CUDA with deterministic kernels, :mod:`robustkit.devices`).

Validation never touches the test split: it runs on a fixed slice of ``val_examples`` training images
(:func:`validation_split`, the same for every seed), held out of training whenever the run selects its best
epoch (robust early stopping, Rice et al. 2020) or ``val_holdout`` says so. With ``select="best"`` the epoch
with the highest validation PGD accuracy (clean accuracy without a PGD check; ties: the earlier) is saved as
``best.*`` beside ``last.*`` and is what training returns; ``last.json`` records the choice.

Defenses that own more than a loss (a generator network, its optimizer) use :class:`Defense`'s
``setup(model, device)`` and ``prepare(model, dataset, device)``, called once before the first epoch of
this call (before a checkpoint is resumed), ``after_step(model)`` after every optimizer step, and
``state_dict()`` / ``load_state_dict(state)``, saved with each checkpoint and handed back on resume.
A defense whose ``published_weights(model)`` is not ``None`` (a moving average) has those weights
validated, saved as the model and returned; the live weights travel in the training state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from robustkit.adversarial import pgd, pgd_step_size
from robustkit.augmentation import Augmentation, parse_augment, resolve_augment
from robustkit.checkpoints import (BEST, LAST, CheckpointPaths, defer_interrupts, load_training_state, load_weights,
                                   read_metadata, read_weights, save_checkpoint)
from robustkit.ema import WeightAverage
from robustkit.files import atomic_write_text, jsonable, remove_stale_temporaries
from robustkit.data import ImageDataset, check_images, check_labels
from robustkit.defenses import Defense
from robustkit.devices import resolve_device, seed_everything
from robustkit.errors import ParameterError, RobustkitError
from robustkit.evaluation import robust_accuracy
from robustkit.plots import save_training_curves
from robustkit.precision import PRECISIONS, wrap
from robustkit.progress import percent, progress, report
from robustkit.threat import ThreatModel

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("constant", "cosine", "step")
#: Which epoch a run keeps: ``auto`` (:func:`resolve_select`), its ``best`` by validation, or its ``last``.
SELECTS = ("auto", "best", "last")
#: Which weights a run that keeps a moving average validates, selects by and returns.
SERVED_WEIGHTS = ("ema", "raw")
CHECKPOINT_STEM = LAST
#: Seeds the choice of the validation slice: a fact of the training split, the same for every run's seed, so
#: every defense and seed of a benchmark validates on (and holds out) the same images.
VAL_SLICE_SEED = 20200226
METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"
CURVES_EVERY_S = 60.0  # refresh curves.png at most this often during a run
#: Where a checkpoint's training state keeps the live weights when the defense publishes others.
LIVE_WEIGHTS_KEY = "robustkit_live_weights"


@dataclass
class TrainConfig:
    """How to train; everything except ``device``, ``out_dir`` and ``num_workers`` identifies the run.

    :param epochs: epochs to train (>= 1).
    :param batch_size: examples per batch.
    :param optimizer: ``adam`` or ``sgd``.
    :param lr: initial learning rate.
    :param momentum: SGD momentum (ignored by Adam).
    :param weight_decay: L2 penalty passed to the optimizer.
    :param schedule: ``constant``, ``cosine`` (to zero over ``epochs``) or ``step`` (multiply by ``gamma``
        after each epoch in ``milestones``); the learning rate changes between epochs.
    :param milestones: epochs after which ``step`` decays; empty means after 50% and 75% of ``epochs``.
    :param gamma: the ``step`` decay factor.
    :param seed: seeds data order and the defense's randomness, per epoch.
    :param device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    :param val_examples: training images to validate on after each epoch (a fixed slice of the training split,
        :func:`validation_split`; never test images); 0 switches validation off.
    :param val_eps: linf budget of the per-epoch PGD accuracy; ``None`` switches it off.
    :param val_steps: PGD iterations of that check.
    :param val_step_size: its step size; ``None`` means 2.5 * val_eps / val_steps.
    :param out_dir: where checkpoints, ``metrics.jsonl`` and ``curves.png`` go; ``None`` writes nothing
        (and nothing can be resumed).
    :param num_workers: DataLoader worker processes.
    :param precision: ``fp32``, ``bf16`` or ``fp16`` (mixed precision through :mod:`robustkit.precision`;
        ``fp16`` scales the loss with a GradScaler).
    :param channels_last: keep the model and its inputs in channels-last memory format (faster convolutions
        on recent GPUs).
    :param eps_warmup: epochs over which the defense's ``eps`` rises linearly to its value (epoch e of W
        trains at ``eps * e / (W + 1)``; from epoch W + 1 on, the full eps). 0, the default, is off. The
        usual remedy when adversarial training from scratch stays at chance; only for defenses with an
        ``eps`` parameter and no state of their own.
    :param augment: training augmentation (:mod:`robustkit.augmentation`): ``default`` (the dataset's own, e.g.
        crops and flips for CIFAR, none for MNIST and digits), ``none`` or a list such as ``crop:4:zero,flip``;
        applied to each batch on the training device before the defense crafts its adversarial examples.
    :param ema_decay: keep an exponential moving average of the weights with this decay (e.g. 0.999;
        :mod:`robustkit.ema`); ``None`` keeps none.
    :param weights_kind: with an EMA, which weights are validated, selected by and returned: ``ema`` or
        ``raw`` (both are saved either way).
    :param select: the epoch to keep: ``last``, ``best`` (highest validation PGD accuracy; needs validation) or
        ``auto`` (:func:`resolve_select`: best for adversarial defenses when the PGD check is on, else last).
    :param val_holdout: hold the validation slice out of training; ``None`` means exactly when the run selects
        its best epoch (a benchmark sets it for all its cells, so every defense trains on the same images).
    :param recipe: the recipe the settings came from (:mod:`robustkit.recipes`), recorded only.
    """

    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "constant"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    seed: int = 0
    device: str = "auto"
    val_examples: int = 200
    val_eps: float | None = None
    val_steps: int = 10
    val_step_size: float | None = None
    out_dir: Path | None = None
    num_workers: int = 0
    precision: str = "fp32"
    channels_last: bool = False
    eps_warmup: int = 0
    augment: str = "default"
    ema_decay: float | None = None
    weights_kind: str = "ema"
    select: str = "last"
    val_holdout: bool | None = None
    recipe: str | None = None

    NOT_IDENTITY = ("device", "out_dir", "num_workers", "recipe")  # may change between a run and its resume

    def check(self) -> None:
        """Raise :class:`ParameterError` for values that cannot work, before any work starts."""
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ParameterError(f"training: {message}")

        need(isinstance(self.epochs, int) and self.epochs >= 1, f"epochs must be an integer >= 1, got {self.epochs}")
        need(isinstance(self.batch_size, int) and self.batch_size >= 1,
             f"batch_size must be an integer >= 1, got {self.batch_size}")
        need(self.optimizer in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        need(math.isfinite(self.lr) and self.lr > 0, f"lr must be > 0, got {self.lr}")
        need(0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}")
        need(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        need(self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        need(all(isinstance(m, int) and m >= 1 for m in self.milestones),
             f"milestones must be epochs >= 1, got {self.milestones}")
        need(0 < self.gamma <= 1, f"gamma must be in (0, 1], got {self.gamma}")
        need(self.val_examples >= 0, f"val_examples must be >= 0, got {self.val_examples}")
        need(self.val_eps is None or 0 < self.val_eps <= 1, f"val_eps must be in (0, 1] or None, got {self.val_eps}")
        need(self.val_steps >= 1, f"val_steps must be >= 1, got {self.val_steps}")
        need(self.val_step_size is None or self.val_step_size > 0,
             f"val_step_size must be > 0 or None, got {self.val_step_size}")
        need(self.num_workers >= 0, f"num_workers must be >= 0, got {self.num_workers}")
        need(self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        need(isinstance(self.eps_warmup, int) and 0 <= self.eps_warmup < self.epochs,
             f"eps_warmup must be a whole number of epochs from 0 to epochs - 1, got {self.eps_warmup}")
        if not (isinstance(self.augment, str) and self.augment.strip().lower() == "default"):
            parse_augment(self.augment)  # raises a ParameterError naming the bad operation
        need(self.ema_decay is None or (isinstance(self.ema_decay, (int, float)) and 0 <= self.ema_decay < 1),
             f"ema_decay must be in [0, 1) (e.g. 0.999) or None, got {self.ema_decay}")
        need(self.weights_kind in SERVED_WEIGHTS,
             f"weights_kind must be one of {', '.join(SERVED_WEIGHTS)}, got {self.weights_kind!r}")
        need(self.select in SELECTS, f"select must be one of {', '.join(SELECTS)}, got {self.select!r}")
        need(self.select != "best" or self.val_examples > 0,
             "select best needs validation to choose by: set val_examples > 0, or select last")
        need(self.val_holdout is None or isinstance(self.val_holdout, bool),
             f"val_holdout must be true, false or None, got {self.val_holdout!r}")

    def identity(self) -> dict[str, Any]:
        """The settings that decide the trained weights and the recorded metrics (settings added later only
        when not at their old behaviour, so runs saved before they existed still resume where nothing changed).
        Validation from the training split (``val_split``) is always named: runs that validated on test
        images are other runs."""
        defaults = {"precision": "fp32", "channels_last": False, "eps_warmup": 0, "augment": "none",
                    "ema_decay": None, "weights_kind": "ema", "select": "last", "val_holdout": False}
        out = {k: v for k, v in dataclasses.asdict(self).items()
               if k not in self.NOT_IDENTITY and not (k in defaults and v == defaults[k])}
        if self.val_examples > 0:
            out["val_split"] = "train"
        return jsonable(out)


@dataclass
class TrainResult:
    """What :func:`train` returns.

    :param model: the trained model (on the training device, in eval mode).
    :param history: one metrics dict per completed epoch, from the first (including resumed ones).
    :param resumed_from: completed epochs found in ``out_dir`` before this call (0 for a fresh run).
    :param checkpoint: the metadata file of the checkpoint the run kept (``best.json`` when it selects its
        best epoch, else ``last.json``), or ``None`` without ``out_dir``.
    :param selected_epoch: the epoch whose weights ``model`` holds.
    :param weights: which of them: ``ema`` (the moving average) or ``raw``.
    """

    model: nn.Module
    history: list[dict[str, Any]] = field(default_factory=list)
    resumed_from: int = 0
    checkpoint: Path | None = None
    selected_epoch: int | None = None
    weights: str = "raw"

    @property
    def metrics(self) -> dict[str, Any]:
        """The last epoch's metrics."""
        return dict(self.history[-1]) if self.history else {}

    @property
    def epochs_run(self) -> int:
        """Epochs trained by this call (0 when the run had already finished)."""
        return len(self.history) - self.resumed_from


def epoch_seed(seed: int, epoch: int, stream: str) -> int:
    """A 63-bit seed for ``stream`` in ``epoch``: stable across processes and Python versions."""
    digest = hashlib.sha256(f"robustkit:{seed}:{epoch}:{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def run_identity(model: nn.Module, dataset: ImageDataset, defense: Defense, config: TrainConfig) -> dict[str, Any]:
    """What must match for ``out_dir``'s checkpoint to be resumed by this call."""
    spec = getattr(model, "spec", None)
    described = defense.describe() if hasattr(defense, "describe") else {"name": type(defense).__name__}
    identity: Any = {"name": spec.name, "params": dict(spec.params)} if spec is not None else type(model).__name__
    normalization = getattr(spec, "normalization", None)
    if normalization is not None and normalization.mode != "dataset":  # absent as before: old runs still resume
        identity["normalization"] = normalization.to_json()
    source = getattr(spec, "source", None)
    if source:  # a user's model file: a changed file is another run
        identity["source"] = {key: source.get(key) for key in ("kind", "class", "sha256", "weights_sha256")}
    return jsonable({
        "model": identity,
        "dataset": dataset.info,
        "defense": described,
        "config": config.identity(),
    })


def resolve_select(defense: Defense, config: TrainConfig) -> str:
    """The epoch a run keeps, ``best`` or ``last``: ``config.select`` unless it is ``auto``, which means best for
    an adversarial defense (one that declares a trade-off knob, as every robustness defense does and natural
    training does not) when validation measures PGD accuracy (``val_examples`` and ``val_eps`` set), else last.
    Robust overfitting (Rice et al., ICML 2020) is why: adversarial training's robust accuracy falls when
    training goes on past its best epoch, while natural training's clean accuracy does not."""
    if config.select != "auto":
        return config.select
    adversarial = getattr(defense, "knob", None) is not None
    return "best" if adversarial and config.val_examples > 0 and config.val_eps is not None else "last"


def resolved(config: TrainConfig, defense: Defense, dataset: ImageDataset, host: Any = None) -> TrainConfig:
    """``config`` with every ``auto``/``default`` made explicit for this run: the dataset's augmentation, the
    epoch it keeps and whether the validation slice is held out. What a run records and resumes by."""
    augment = config.augment
    if host is None and isinstance(augment, str) and augment.strip().lower() == "default":
        from robustkit.host import get_host  # the dataset's default is a fact of its registration

        host = get_host()
    augment = resolve_augment(augment, dataset.info.name, host)
    select = resolve_select(defense, config)
    holdout = config.val_holdout if config.val_holdout is not None else select == "best"
    return dataclasses.replace(config, augment=augment, select=select, val_holdout=holdout)


def validation_split(train_set: Dataset, n: int, held_out: bool) -> tuple[Dataset, Dataset | None]:
    """The images to train on and the validation slice: ``n`` training images chosen by a fixed seed
    (:data:`VAL_SLICE_SEED`), taken out of the training images when ``held_out``. Never the test split: the
    test images are what a trained model is finally evaluated on, so choosing by them would flatter it.

    :raises RobustkitError: when holding out ``n`` images would leave none to train on.
    """
    total = len(train_set)  # type: ignore[arg-type]
    if n <= 0:
        return train_set, None
    if held_out and n >= total:
        raise RobustkitError(f"val_examples {n} would hold out the whole training split ({total} images); lower it "
                             f"(e.g. --val-examples {max(1, total // 10)}) or keep the last epoch (--select last)")
    order = torch.randperm(total, generator=torch.Generator().manual_seed(VAL_SLICE_SEED))
    val_indices = sorted(order[:n].tolist())
    if not held_out:
        return train_set, Subset(train_set, val_indices)
    return Subset(train_set, sorted(order[n:].tolist())), Subset(train_set, val_indices)


def chosen_epoch(history: list[Mapping[str, Any]], select: str) -> int | None:
    """The epoch a run keeps: the last one, or (``best``) the one with the highest validation PGD accuracy, then
    clean accuracy; of equals, the earliest (more training did not make it better)."""
    if not history:
        return None
    if select != "best":
        return int(history[-1]["epoch"])

    def score(row: Mapping[str, Any]) -> tuple[float, float]:
        return tuple(-1.0 if row.get(k) is None else float(row[k]) for k in ("val_pgd_acc", "val_clean_acc"))

    best = history[0]
    for row in history[1:]:
        if score(row) > score(best):
            best = row
    return int(best["epoch"])


def train(model: nn.Module, dataset: ImageDataset, defense: Defense, config: TrainConfig, *,
          resume: bool = True, host: Any = None) -> TrainResult:
    """Train ``model`` on ``dataset.train`` with ``defense``'s batch loss.

    The model is trained as given: seed before building it for a repeatable start. It is returned holding the
    weights of the epoch the run keeps (``config.select``), their moving average when one is kept and served.

    :param resume: continue from ``config.out_dir``'s checkpoint when it belongs to the same run
        (same model, dataset, defense and settings); ``False`` starts over and overwrites it.
    :param host: the plugin host, for recording plugin versions and finding the dataset's default
        augmentation (optional: the process-wide one is used when needed).
    :raises RobustkitError: when ``out_dir`` holds a different run, the loss becomes NaN or infinite,
        or the run is interrupted (Ctrl-C); the last good checkpoint is kept in every case.
    """
    config.check()
    if config.eps_warmup:
        warmed_up(defense, 1, config.eps_warmup)  # refuses a defense without an eps to warm up, before any work
    config = resolved(config, defense, dataset, host)
    augmentation = parse_augment(config.augment)
    train_set, val_set = validation_split(dataset.train, config.val_examples, bool(config.val_holdout))
    device = resolve_device(config.device)
    model.to(device)
    identity = run_identity(model, dataset, defense, config)
    out_dir = Path(config.out_dir) if config.out_dir is not None else None
    paths = CheckpointPaths.of(out_dir / CHECKPOINT_STEM) if out_dir is not None else None

    scaler = torch.amp.GradScaler(device.type) if config.precision == "fp16" else None
    optimizer = _make_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(config))
    defense.setup(model, device)
    defense.prepare(model, dataset, device)
    ema = None
    if config.ema_decay is not None:
        if defense.published_weights(model) is not None:
            raise RobustkitError(f"{defense.display_name()} keeps a moving average of its own weights; drop the "
                                 "ema decay (--ema-decay) for it")
        ema = WeightAverage(model, config.ema_decay)
    run = _Run(paths, identity, config, defense, ema, host, dataset, model)

    history: list[dict[str, Any]] = []
    if out_dir is not None:
        remove_stale_temporaries(out_dir)  # a save cut short by SIGKILL leaves its temporary behind
    if paths is not None and resume and paths.meta.exists():
        history = _resume(paths, identity, model, optimizer, scheduler, defense, scaler, ema)
        run.sync_best(model, history)
        if len(history) >= config.epochs:  # finished before: nothing to do
            return run.finish(model, history, len(history))
    elif paths is not None:
        run.forget_best()  # a best checkpoint of an earlier run in this folder is not this run's
    start = len(history)

    loader_args = _loader_args(train_set, config, device)
    completed = start
    curves_at = time.monotonic()
    warned_chance = False
    try:
        epochs = progress(range(start + 1, config.epochs + 1), total=config.epochs, initial=start,
                          desc="epochs", unit="epoch", leave=True)
        run_started = time.perf_counter()
        for epoch in epochs:
            epoch_started = time.perf_counter()
            this_epoch = warmed_up(defense, epoch, config.eps_warmup)
            row = _train_epoch(model, this_epoch, optimizer, train_set, dataset.info, loader_args, config, epoch,
                               device, paths, completed, scaler, augmentation, ema)
            if this_epoch is not defense:
                row["warmup_eps"] = this_epoch.config["eps"]
            scheduler.step()
            with _served(model, defense, ema, config):
                row.update(_validate(model, val_set, config, epoch, device))
            history.append(row)
            if not warned_chance:
                warned_chance = _warn_if_at_chance(row, dataset.info.num_classes, defense, config.epochs)
            new_best = config.select == "best" and chosen_epoch(history, "best") == epoch
            with defer_interrupts():  # a Ctrl-C while saving lands after the save, so `completed` is true
                if paths is not None:
                    _save(paths, model, defense, optimizer, scheduler, config, identity, history, host, scaler, ema)
                run.keep_if_best(model, history, new_best)  # after last.*: its JSON commits the choice
                completed = epoch
            epochs.set_postfix(_postfix(row))
            now = time.perf_counter()
            report(_epoch_line(defense.display_name(), row, config.epochs, now - epoch_started,
                               (now - run_started) / (epoch - start) * (config.epochs - epoch))
                   + (" (best so far)" if new_best and epoch > 1 else ""))
            if paths is not None and time.monotonic() - curves_at > CURVES_EVERY_S:
                run.draw_curves(history)
                curves_at = time.monotonic()
    except KeyboardInterrupt:
        raise RobustkitError(_interrupted_message(completed, paths)) from None
    finally:
        # Drawing costs about a second, so mid-run refreshes are rate-limited; the end of a call
        # (finished, stopped by NaN or interrupted) always leaves the curves of every saved epoch.
        if paths is not None and completed > start:
            run.draw_curves([row for row in history if row["epoch"] <= completed])
    return run.finish(model, history, start)


class _Run:
    """What one call of :func:`train` keeps beside the loop: the best epoch's weights, and the end of the run."""

    def __init__(self, paths: CheckpointPaths | None, identity: dict[str, Any], config: TrainConfig,
                 defense: Defense, ema: WeightAverage | None, host: Any, dataset: ImageDataset, model: nn.Module):
        self.paths = paths
        self.identity = identity
        self.config = config
        self.defense = defense
        self.ema = ema
        self.host = host
        self.best = CheckpointPaths.of(paths.meta.with_name(BEST)) if paths is not None else None
        self.best_in_memory: dict[str, torch.Tensor] | None = None  # served weights of the best epoch, without files
        self.kind = "ema" if ema is not None and config.weights_kind == "ema" else "raw"
        spec = getattr(model, "spec", None)
        facts = [f"{defense.display_name()}", spec.name if spec is not None else type(model).__name__,
                 dataset.info.name] + ([f"recipe {config.recipe}"] if config.recipe else [])
        details = []
        if config.val_examples:
            details.append(f"validation: {config.val_examples} training images"
                           + (", held out" if config.val_holdout else ", also trained on"))
        if ema is not None:
            details.append(f"EMA decay {config.ema_decay:g}" + (" (validated and kept)" if self.kind == "ema" else ""))
        if config.augment != "none":
            details.append(f"augment {config.augment}")
        self.title = " \u00b7 ".join(facts) + ("\n" + "; ".join(details) if details else "")

    def keep_if_best(self, model: nn.Module, history: list[dict[str, Any]], new_best: bool) -> None:
        """Keep the epoch just trained as the best one: ``best.*`` beside ``last.*``, or in memory without files."""
        if not new_best:
            return
        if self.best is None:
            with _served(model, self.defense, self.ema, self.config):
                self.best_in_memory = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            return
        row = history[-1]
        with _published(model, self.defense):
            save_checkpoint(
                self.best.meta, model, defense=self.defense, epoch=row["epoch"], seed=self.config.seed, metrics=row,
                ema=self.ema.state_dict() if self.ema is not None else None,
                ema_decay=self.config.ema_decay, default_weights=self.config.weights_kind,
                extra={"run": self.identity, "training": jsonable(dataclasses.asdict(self.config)),
                       "selection": _selection(self.config, history), "validation": _validation_facts(self.config),
                       "defense_cost": self.defense.cost() if hasattr(self.defense, "cost") else None,
                       "plugins": self.host.plugin_versions() if self.host is not None else None})

    def sync_best(self, model: nn.Module, history: list[dict[str, Any]]) -> None:
        """After a resume: ``best.*`` must hold the best epoch of the history resumed. It can lag only when the
        run stopped between saving ``last.*`` and ``best.*`` of a new best epoch, the epoch ``model`` now holds."""
        if self.best is None or self.config.select != "best" or not history:
            return
        wanted = chosen_epoch(history, "best")
        have = read_metadata(self.best.meta).get("epoch") if self.best.meta.is_file() else None
        if have == wanted:
            return
        if wanted != history[-1]["epoch"]:
            raise RobustkitError(f"{self.best.meta} holds epoch {have}, but this run's best epoch is {wanted}; its "
                                 f"weights are lost: rerun with --no-resume, or use the last epoch (--select last)")
        self.keep_if_best(model, history, True)

    def forget_best(self) -> None:
        """Remove a ``best.*`` left by an earlier run in this folder (a fresh start writes its own)."""
        if self.best is not None:
            for path in (self.best.meta, self.best.weights, self.best.ema, self.best.state):
                path.unlink(missing_ok=True)

    def draw_curves(self, history: list[dict[str, Any]]) -> None:
        assert self.paths is not None
        config = self.config
        val_label = None
        if config.val_eps is not None:
            val_label = f"val PGD (linf eps {_eps_text(config.val_eps)}, {config.val_steps} steps)"
        chosen = chosen_epoch(history, config.select)
        save_training_curves(self.paths.meta.parent / CURVES_FILE, history, title=self.title, val_pgd_label=val_label,
                             chosen_epoch=chosen,
                             chosen_label=(f"best epoch ({'val PGD' if config.val_eps is not None else 'val clean'})"
                                           if config.select == "best" else "last epoch (kept)"))

    def finish(self, model: nn.Module, history: list[dict[str, Any]], resumed_from: int) -> TrainResult:
        """Leave the kept epoch's served weights in ``model`` (eval mode) and say what was kept."""
        chosen = chosen_epoch(history, self.config.select)
        checkpoint = self.paths.meta if self.paths is not None else None
        if self.config.select == "best" and chosen is not None:
            if self.best is not None:
                load_weights(model, self.best.meta, self.kind)
                checkpoint = self.best.meta
            elif self.best_in_memory is not None:
                model.load_state_dict(self.best_in_memory)
        elif self.ema is not None and self.kind == "ema":
            model.load_state_dict(self.ema.state_dict())
        else:
            _publish(model, self.defense)
        model.eval()
        return TrainResult(model, history, resumed_from, checkpoint, chosen, self.kind)


def _selection(config: TrainConfig, history: list[Mapping[str, Any]]) -> dict[str, Any]:
    """What a checkpoint records about the choice of epoch."""
    by = ("val_pgd_acc" if config.val_eps is not None else "val_clean_acc") if config.select == "best" else "last epoch"
    return {"select": config.select, "checkpoint": BEST if config.select == "best" else LAST,
            "epoch": chosen_epoch(list(history), config.select), "by": by}


def _eps_text(eps: float) -> str:
    """An eps as papers write it: ``0.3`` when three decimals say it, else ``8/255`` when it is a whole number of
    255ths, else its decimals."""
    k = round(eps * 255)
    if round(eps, 3) != eps and 1 <= k < 255 and abs(eps * 255 - k) <= 1e-9:
        return f"{k}/255"
    return f"{eps:g}"


def _validation_facts(config: TrainConfig) -> dict[str, Any]:
    return {"split": "train", "examples": config.val_examples, "held_out": bool(config.val_holdout),
            "slice_seed": VAL_SLICE_SEED, "eps": config.val_eps, "steps": config.val_steps}


def warmed_up(defense: Defense, epoch: int, warmup: int) -> Defense:
    """The defense to train epoch ``epoch`` with: during a warm-up of ``warmup`` epochs, a copy whose eps is
    ``eps * epoch / (warmup + 1)``; otherwise ``defense`` itself."""
    if not warmup or epoch > warmup:
        return defense
    eps = defense.config.get("eps")
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or defense.state_dict() is not None:
        raise RobustkitError(f"{defense.display_name()} has no eps to warm up (or keeps state of its own); drop "
                             "the eps warm-up")
    return type(defense)(**{**defense.config, "eps": float(eps) * epoch / (warmup + 1)})


#: Epochs a run may spend at chance level before it is warned about: some nets start slowly.
CHANCE_PATIENCE = 3


def _warn_if_at_chance(row: Mapping[str, Any], num_classes: int, defense: Defense, epochs: int) -> bool:
    """Say once, in one line on stderr, when an epoch ends with accuracy no better than guessing, from epoch
    :data:`CHANCE_PATIENCE` on (or the last, in a shorter run)."""
    key = "val_clean_acc" if row.get("val_clean_acc") is not None else "train_acc"
    accuracy = row.get(key)
    if accuracy is None or num_classes < 2 or row["epoch"] < min(CHANCE_PATIENCE, epochs):
        return False
    chance = 1 / num_classes
    if accuracy > chance + min(chance / 2, 0.05):  # 15% of 10 classes, 55% of 2
        return False
    remedy = ("lower its eps or the learning rate, or warm eps up over the first epochs (eps_warmup)"
              if "eps" in defense.config else "lower the learning rate")
    print(f"robustkit: warning: epoch {row['epoch']} ended at chance level ({100 * accuracy:.1f}% "
          f"{'validation' if key == 'val_clean_acc' else 'training'} accuracy, {num_classes} classes): the model is "
          f"not learning; {remedy}", file=sys.stderr)
    return True


# --- setup -------------------------------------------------------------------------------------


def _make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise RobustkitError("the model has no trainable parameters (all have requires_grad=False)")
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


def _lr_factor(config: TrainConfig) -> Callable[[int], float]:
    """The schedule as a factor of ``lr`` for 0-based epoch ``e`` (a plain function: nothing to pickle)."""
    if config.schedule == "cosine":
        return lambda e: 0.5 * (1.0 + math.cos(math.pi * e / config.epochs))
    if config.schedule == "step":
        milestones = config.milestones or tuple(sorted({max(1, config.epochs // 2), max(1, (3 * config.epochs) // 4)}))
        return lambda e: config.gamma ** sum(e >= m for m in milestones)
    return lambda e: 1.0


def _loader_args(train_set: Dataset, config: TrainConfig, device: torch.device) -> dict[str, Any]:
    n = len(train_set)  # type: ignore[arg-type]
    if n == 0:
        raise RobustkitError("the training split is empty")
    return {
        "batch_size": config.batch_size,
        # A last batch of one image breaks batch norm in train mode; dropping it costs one example.
        "drop_last": n % config.batch_size == 1 and n > 1,
        "num_workers": config.num_workers,
        "pin_memory": device.type == "cuda",
    }


def _resume(paths: CheckpointPaths, identity: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
            scheduler: Any, defense: Defense, scaler: Any = None,
            ema: WeightAverage | None = None) -> list[dict[str, Any]]:
    """Check ``paths`` is this run, load its state, and return the history of its completed epochs."""
    meta = read_metadata(paths.meta)
    stored = meta.get("run")
    if stored is None:
        raise RobustkitError(f"{paths.meta.parent} holds a checkpoint not written by robustkit training; "
                             "use a new --out or --no-resume")
    if stored != identity:
        raise RobustkitError(
            f"{paths.meta.parent} holds a different run ({_differences(stored, identity)}); use a new --out, "
            "or --no-resume to overwrite it"
        )
    load_weights(model, paths.meta, "raw")
    if ema is not None:
        ema.load_state_dict(read_weights(paths.meta, "ema")[0])
    state = load_training_state(paths.meta, optimizer, scheduler)
    if state is not None and LIVE_WEIGHTS_KEY in state:  # the saved model weights were the published ones
        state = dict(state)
        model.load_state_dict(state.pop(LIVE_WEIGHTS_KEY))
        state = state or None
    if state is not None:
        defense.load_state_dict(state)
    if scaler is not None and meta.get("grad_scaler"):
        scaler.load_state_dict(meta["grad_scaler"])
    history = meta.get("history") or []
    if not isinstance(history, list) or not all(isinstance(row, dict) and isinstance(row.get("epoch"), int)
                                                for row in history):
        raise RobustkitError(f"{paths.meta}: its training history is damaged (not a list of epochs); use --no-resume "
                             "to train again, or a new --out")
    return [dict(row) for row in history]


def _differences(stored: Any, current: Any, prefix: str = "", limit: int = 3) -> str:
    diffs: list[str] = []

    def walk(a: Any, b: Any, where: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                walk(a.get(key), b.get(key), f"{where}.{key}" if where else key)
        elif a != b:
            diffs.append(f"{where}: {json.dumps(a)} there, {json.dumps(b)} now")

    walk(stored, current, prefix)
    shown = "; ".join(diffs[:limit])
    return shown + (f"; and {len(diffs) - limit} more" if len(diffs) > limit else "")


# --- one epoch ---------------------------------------------------------------------------------


def _train_epoch(model: nn.Module, defense: Defense, optimizer: torch.optim.Optimizer, train_set: Dataset,
                 info: Any, loader_args: dict[str, Any], config: TrainConfig, epoch: int, device: torch.device,
                 paths: CheckpointPaths | None, completed: int, scaler: Any = None,
                 augmentation: Augmentation | None = None, ema: WeightAverage | None = None) -> dict[str, Any]:
    data_order = torch.Generator()
    data_order.manual_seed(epoch_seed(config.seed, epoch, "data"))
    loader = DataLoader(train_set, shuffle=True, generator=data_order, **loader_args)
    seed_everything(epoch_seed(config.seed, epoch, "defense"))  # the defense's draws (random starts, ...)
    # The augmentation's own generator, on the training device: the global stream the defense draws from is
    # left as it was, so switching augmentation on or off changes nothing else about a run.
    augment_draws = torch.Generator(device=device) if augmentation else None
    if augment_draws is not None:
        augment_draws.manual_seed(epoch_seed(config.seed, epoch, "augment"))
    lr = float(optimizer.param_groups[0]["lr"])
    total_loss, correct, seen, counted = 0.0, 0, 0, 0
    extra: dict[str, float] = {}
    started = time.perf_counter()
    batches = progress(loader, total=len(loader), desc=f"epoch {epoch}", unit="batch")
    net = wrap(model, config.precision, config.channels_last)  # what the defense runs: autocast, float32 logits
    for batch, (images, labels) in enumerate(batches, start=1):
        images = images.to(device, non_blocking=True)
        labels = torch.as_tensor(labels).to(device, non_blocking=True)
        if epoch == 1 and batch == 1:
            check_images(images, labels, what="training images", shape=info.input_shape)
        check_labels(labels, info)  # every batch: one bad label anywhere would index out of range
        if augment_draws is not None:
            images = augmentation(images, augment_draws)  # before the defense crafts its adversarial examples
        net.train()
        optimizer.zero_grad(set_to_none=True)
        out = defense.batch_loss(net, images, labels)
        loss_value = float(out.loss.detach())
        if not math.isfinite(loss_value):
            raise RobustkitError(_nonfinite_message(loss_value, epoch, batch, completed, paths, lr))
        if scaler is None:
            out.loss.backward()
            optimizer.step()
        else:  # fp16: scale the loss so small gradients survive; a step with inf/nan gradients is skipped
            scaler.scale(out.loss).backward()
            scaler.step(optimizer)
            scaler.update()
        defense.after_step(model)
        if ema is not None:
            ema.update(model)
        n = labels.shape[0]
        total_loss += loss_value * n
        seen += n
        if out.logits is not None:
            correct += int((out.logits.detach().argmax(1) == labels).sum())
            counted += n
        for key, value in (out.metrics or {}).items():
            extra[key] = extra.get(key, 0.0) + float(value) * n
        batches.set_postfix(loss=f"{loss_value:.4f}")
    row: dict[str, Any] = {
        "epoch": epoch,
        "train_loss": total_loss / max(seen, 1),
        "train_acc": correct / counted if counted else None,  # on the inputs the defense trained on
        "lr": lr,
        "epoch_time": time.perf_counter() - started,
    }
    for key, value in extra.items():
        row[key if key not in row else f"defense_{key}"] = value / max(seen, 1)
    return row


def _validate(model: nn.Module, val_set: Dataset | None, config: TrainConfig, epoch: int,
              device: torch.device) -> dict[str, Any]:
    """Clean and (optionally) PGD-linf accuracy on the validation slice (:func:`validation_split`)."""
    row: dict[str, Any] = {"val_clean_acc": None, "val_pgd_acc": None, "val_time": 0.0}
    if val_set is None or len(val_set) == 0:  # type: ignore[arg-type]
        return row
    started = time.perf_counter()
    threat = ThreatModel("linf", config.val_eps) if config.val_eps is not None else None
    step = pgd_step_size(config.val_step_size, config.val_eps, config.val_steps) if threat is not None else 0.0
    # Its own generator: validation must not shift the defense's random stream between runs.
    start_noise = torch.Generator(device=device)
    start_noise.manual_seed(epoch_seed(config.seed, epoch, "validation"))
    clean = total = 0
    seen: dict[str, list[torch.Tensor]] = {"labels": [], "clean": [], "adversarial": []}
    was_training = model.training
    net = wrap(model, config.precision, config.channels_last)
    net.eval()
    try:
        for images, labels in DataLoader(val_set, batch_size=config.batch_size, shuffle=False):
            images, labels = images.to(device), torch.as_tensor(labels).to(device)
            with torch.no_grad():
                clean_pred = net(images).argmax(1)
            clean += int((clean_pred == labels).sum())
            if threat is not None:
                adv = pgd(net, images, labels, threat, steps=config.val_steps, step_size=step, generator=start_noise)
                with torch.no_grad():
                    seen["adversarial"].append(net(adv).argmax(1))
                seen["labels"].append(labels)
                seen["clean"].append(clean_pred)
            total += labels.shape[0]
    finally:
        model.train(was_training)
    row["val_clean_acc"] = clean / total
    # Robust means right before and after: a lucky random start must not count.
    row["val_pgd_acc"] = (robust_accuracy(*(torch.cat(seen[k]) for k in ("labels", "clean", "adversarial")))
                          if threat is not None else None)
    row["val_time"] = time.perf_counter() - started
    return row


# --- saving --------------------------------------------------------------------------------------


def _save(paths: CheckpointPaths, model: nn.Module, defense: Defense, optimizer: torch.optim.Optimizer,
          scheduler: Any, config: TrainConfig, identity: dict[str, Any], history: list[dict[str, Any]],
          host: Any, scaler: Any = None, ema: WeightAverage | None = None) -> None:
    epoch = history[-1]["epoch"]
    defense_state = defense.state_dict()
    with _published(model, defense) as live:
        if live is not None:
            defense_state = {**(defense_state or {}), LIVE_WEIGHTS_KEY: live}
        save_checkpoint(
            paths.meta, model, defense=defense, epoch=epoch, seed=config.seed, metrics=history[-1],
            optimizer=optimizer, scheduler=scheduler, defense_state=defense_state,
            ema=ema.state_dict() if ema is not None else None, ema_decay=config.ema_decay,
            default_weights=config.weights_kind,
            extra={
                "run": identity,
                "finished": epoch >= config.epochs,
                "training": jsonable(dataclasses.asdict(config)),
                "defense_cost": defense.cost() if hasattr(defense, "cost") else None,
                "history": jsonable(history),
                "plugins": host.plugin_versions() if host is not None else None,
                "grad_scaler": scaler.state_dict() if scaler is not None else None,
                "selection": _selection(config, history),
                "validation": _validation_facts(config),
            },
        )
    # A derived view of the history in the checkpoint (the checkpoint is the source of truth on resume); each
    # row says whether it is the epoch the run keeps so far.
    chosen = chosen_epoch(history, config.select)
    lines = "".join(json.dumps(jsonable({**row, "chosen": row["epoch"] == chosen}), allow_nan=False) + "\n"
                    for row in history)
    atomic_write_text(paths.meta.parent / METRICS_FILE, lines)


@contextlib.contextmanager
def _published(model: nn.Module, defense: Defense) -> Iterator[dict[str, torch.Tensor] | None]:
    """Swap the defense's published weights into ``model`` for the block; yield the live ones (or ``None``)."""
    weights = defense.published_weights(model)
    if weights is None:
        yield None
        return
    live = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(weights)
    try:
        yield live
    finally:
        model.load_state_dict(live)


@contextlib.contextmanager
def _served(model: nn.Module, defense: Defense, ema: WeightAverage | None, config: TrainConfig) -> Iterator[None]:
    """The weights the run validates and keeps, in ``model`` for the block: the moving average when one is kept
    and served, else the defense's published weights (if any), else the live ones."""
    if ema is not None and config.weights_kind == "ema":
        with ema.applied(model):
            yield
    else:
        with _published(model, defense):
            yield


def _publish(model: nn.Module, defense: Defense) -> None:
    """Leave the published weights in ``model`` for good (the end of training)."""
    weights = defense.published_weights(model)
    if weights is not None:
        model.load_state_dict(weights)


# --- messages ------------------------------------------------------------------------------------


def _nonfinite_message(value: float, epoch: int, batch: int, completed: int, paths: CheckpointPaths | None,
                       lr: float) -> str:
    kind = "nan" if math.isnan(value) else "inf"
    if paths is not None and completed > 0:
        kept = f"last good checkpoint (epoch {completed}) kept at {paths.meta}"
    elif paths is not None:
        kept = "no checkpoint was written yet"
    else:
        kept = "no out_dir, so nothing was saved"
    return (f"loss became {kind} at epoch {epoch} batch {batch}; {kept}; lower the learning rate (was {lr:g}) "
            "or check the defense's parameters, and rerun with a new --out or --no-resume")


def _interrupted_message(completed: int, paths: CheckpointPaths | None) -> str:
    epoch = completed + 1
    if paths is None:
        return f"training interrupted at epoch {epoch}; no out_dir was set, so nothing was saved"
    if completed == 0:
        return (f"training interrupted at epoch {epoch}; no epoch had finished, so nothing was saved; "
                "rerunning the same command starts from the beginning")
    return (f"training interrupted at epoch {epoch}; the checkpoint of epoch {completed} is kept at {paths.meta}; "
            "rerunning the same command resumes from it")


def _postfix(row: Mapping[str, Any]) -> dict[str, str]:
    shown = {"loss": f"{row['train_loss']:.4f}"}
    for key, name in (("val_clean_acc", "clean"), ("val_pgd_acc", "pgd")):
        if row.get(key) is not None:
            shown[name] = f"{row[key]:.3f}"
    return shown


def _epoch_line(defense: str, row: Mapping[str, Any], epochs: int, seconds: float, eta: float) -> str:
    """The plain progress line of a finished epoch (without bars), e.g. ``train pgd-at: epoch 3/10 loss 0.412
    train 91.2% val clean 97.0% val pgd 80.0%  12.3 s, ETA 86 s``; parts the run does not measure are left out."""
    parts = [f"train {defense}: epoch {row['epoch']}/{epochs} loss {row['train_loss']:.3f}"]
    for key, name in (("train_acc", "train"), ("val_clean_acc", "val clean"), ("val_pgd_acc", "val pgd")):
        if row.get(key) is not None:
            parts.append(f"{name} {percent(row[key])}")
    timing = f"{seconds:.1f} s" + (f", ETA {eta:.0f} s" if row["epoch"] < epochs else "")
    return " ".join(parts) + "  " + timing
