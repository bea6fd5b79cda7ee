"""The one training loop every defense shares.

A defense supplies the loss of a batch (:meth:`robustkit.defenses.Defense.batch_loss`); this module
owns everything else: optimizer, learning-rate schedule, epochs, seeds, per-epoch validation,
checkpoints, resuming, progress bars, ``metrics.jsonl`` and ``curves.png``.

Determinism: the data order of epoch ``e`` comes from a generator seeded with ``(seed, e)``, and the
global RNGs the defense draws from are reseeded with ``(seed, e)`` at the start of the epoch. With the
weights, optimizer and scheduler restored from the checkpoint of epoch ``e - 1``, a resumed run is
bit-for-bit the run that was never stopped (on CPU; CUDA kernels may add their own nondeterminism).

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
from torch.utils.data import DataLoader, Dataset

from robustkit.adversarial import pgd, pgd_step_size
from robustkit.checkpoints import (CheckpointPaths, defer_interrupts, load_training_state, load_weights, read_metadata,
                                   save_checkpoint)
from robustkit.files import atomic_write_text, jsonable, remove_stale_temporaries
from robustkit.data import ImageDataset, check_images, check_labels, take
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
CHECKPOINT_STEM = "last"
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
    :param val_examples: the first N test images to validate on after each epoch; 0 switches validation off.
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

    NOT_IDENTITY = ("device", "out_dir", "num_workers")  # may change between a run and its resume

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

    def identity(self) -> dict[str, Any]:
        """The settings that decide the trained weights and the recorded metrics (the precision options and
        the warm-up only when not at their defaults, so runs saved before they existed still resume)."""
        defaults = {"precision": "fp32", "channels_last": False, "eps_warmup": 0}
        return jsonable({k: v for k, v in dataclasses.asdict(self).items()
                         if k not in self.NOT_IDENTITY and not (k in defaults and v == defaults[k])})


@dataclass
class TrainResult:
    """What :func:`train` returns.

    :param model: the trained model (on the training device, in eval mode).
    :param history: one metrics dict per completed epoch, from the first (including resumed ones).
    :param resumed_from: completed epochs found in ``out_dir`` before this call (0 for a fresh run).
    :param checkpoint: the checkpoint's metadata file, or ``None`` without ``out_dir``.
    """

    model: nn.Module
    history: list[dict[str, Any]] = field(default_factory=list)
    resumed_from: int = 0
    checkpoint: Path | None = None

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


def train(model: nn.Module, dataset: ImageDataset, defense: Defense, config: TrainConfig, *,
          resume: bool = True, host: Any = None) -> TrainResult:
    """Train ``model`` on ``dataset.train`` with ``defense``'s batch loss.

    The model is trained as given: seed before building it for a repeatable start.

    :param resume: continue from ``config.out_dir``'s checkpoint when it belongs to the same run
        (same model, dataset, defense and settings); ``False`` starts over and overwrites it.
    :param host: the plugin host, for recording plugin versions (optional).
    :raises RobustkitError: when ``out_dir`` holds a different run, the loss becomes NaN or infinite,
        or the run is interrupted (Ctrl-C); the last good checkpoint is kept in every case.
    """
    config.check()
    if config.eps_warmup:
        warmed_up(defense, 1, config.eps_warmup)  # refuses a defense without an eps to warm up, before any work
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

    history: list[dict[str, Any]] = []
    if out_dir is not None:
        remove_stale_temporaries(out_dir)  # a save cut short by SIGKILL leaves its temporary behind
    if paths is not None and resume and paths.meta.exists():
        history = _resume(paths, identity, model, optimizer, scheduler, defense, scaler)
        if len(history) >= config.epochs:  # finished before: nothing to do
            _publish(model, defense)
            model.eval()
            return TrainResult(model, history, len(history), paths.meta)
    start = len(history)

    loader_args = _loader_args(dataset.train, config, device)
    val_set = take(dataset.test, config.val_examples) if config.val_examples > 0 else None
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
            row = _train_epoch(model, this_epoch, optimizer, dataset, loader_args, config, epoch, device, paths,
                               completed, scaler)
            if this_epoch is not defense:
                row["warmup_eps"] = this_epoch.config["eps"]
            scheduler.step()
            with _published(model, defense):
                row.update(_validate(model, val_set, config, epoch, device))
            history.append(row)
            if not warned_chance:
                warned_chance = _warn_if_at_chance(row, dataset.info.num_classes, defense)
            with defer_interrupts():  # a Ctrl-C while saving lands after the save, so `completed` is true
                if paths is not None:
                    _save(paths, model, defense, optimizer, scheduler, config, identity, history, host, scaler)
                completed = epoch
            epochs.set_postfix(_postfix(row))
            now = time.perf_counter()
            report(_epoch_line(defense.display_name(), row, config.epochs, now - epoch_started,
                               (now - run_started) / (epoch - start) * (config.epochs - epoch)))
            if paths is not None and time.monotonic() - curves_at > CURVES_EVERY_S:
                save_training_curves(paths.meta.parent / CURVES_FILE, history)
                curves_at = time.monotonic()
    except KeyboardInterrupt:
        raise RobustkitError(_interrupted_message(completed, paths)) from None
    finally:
        # Drawing costs about a second, so mid-run refreshes are rate-limited; the end of a call
        # (finished, stopped by NaN or interrupted) always leaves the curves of every saved epoch.
        if paths is not None and completed > start:
            save_training_curves(paths.meta.parent / CURVES_FILE, [row for row in history if row["epoch"] <= completed])
    _publish(model, defense)
    model.eval()
    return TrainResult(model, history, start, paths.meta if paths is not None else None)


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


def _warn_if_at_chance(row: Mapping[str, Any], num_classes: int, defense: Defense) -> bool:
    """Say once, in one line on stderr, when an epoch ends with accuracy no better than guessing."""
    key = "val_clean_acc" if row.get("val_clean_acc") is not None else "train_acc"
    accuracy = row.get(key)
    if accuracy is None or num_classes < 2 or accuracy > 1.5 / num_classes:
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
            scheduler: Any, defense: Defense, scaler: Any = None) -> list[dict[str, Any]]:
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
    load_weights(model, paths.meta)
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


def _train_epoch(model: nn.Module, defense: Defense, optimizer: torch.optim.Optimizer, dataset: ImageDataset,
                 loader_args: dict[str, Any], config: TrainConfig, epoch: int, device: torch.device,
                 paths: CheckpointPaths | None, completed: int, scaler: Any = None) -> dict[str, Any]:
    data_order = torch.Generator()
    data_order.manual_seed(epoch_seed(config.seed, epoch, "data"))
    loader = DataLoader(dataset.train, shuffle=True, generator=data_order, **loader_args)
    seed_everything(epoch_seed(config.seed, epoch, "defense"))  # the defense's draws (random starts, ...)
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
            check_images(images, labels, what="training images", shape=dataset.info.input_shape)
        check_labels(labels, dataset.info)  # every batch: one bad label anywhere would index out of range
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
    """Clean and (optionally) PGD-linf accuracy on the fixed validation subset."""
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
          host: Any, scaler: Any = None) -> None:
    epoch = history[-1]["epoch"]
    defense_state = defense.state_dict()
    with _published(model, defense) as live:
        if live is not None:
            defense_state = {**(defense_state or {}), LIVE_WEIGHTS_KEY: live}
        save_checkpoint(
            paths.meta, model, defense=defense, epoch=epoch, seed=config.seed, metrics=history[-1],
            optimizer=optimizer, scheduler=scheduler, defense_state=defense_state,
            extra={
                "run": identity,
                "finished": epoch >= config.epochs,
                "training": jsonable(dataclasses.asdict(config)),
                "defense_cost": defense.cost() if hasattr(defense, "cost") else None,
                "history": jsonable(history),
                "plugins": host.plugin_versions() if host is not None else None,
                "grad_scaler": scaler.state_dict() if scaler is not None else None,
            },
        )
    # A derived view of the history in the checkpoint (the checkpoint is the source of truth on resume).
    lines = "".join(json.dumps(jsonable(row), allow_nan=False) + "\n" for row in history)
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
