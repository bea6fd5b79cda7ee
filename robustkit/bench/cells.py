"""One benchmark cell: spec in, record out.

:func:`run_cell` trains one defense at one knob value and seed, evaluates it under the attack suite,
draws its accuracy-versus-eps curve and audits it for gradient masking. It needs only the cell's
settings (plain JSON, see :meth:`robustkit.bench.spec.BenchmarkSpec.cells`) and a work folder, so a
cluster engine can run cells anywhere and bring the records back.

Training goes to ``WORK/train/<train key>/`` through the shared loop, so an interrupted cell resumes
its training, and a cell whose evaluation settings changed reuses the finished weights.

A cell can also run as three steps (:data:`CELL_STEPS`: train, its evaluation in shards, finish), so that an
executor spreads one cell's evaluation over several workers (``bench run --eval-shards K``); its record is the
one :func:`run_cell` makes, plus where each shard ran.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from robustkit.version import __version__
from robustkit.bench import metrics
from robustkit.bench.audit import audit_model
from robustkit.bench.spec import NATURAL_MODEL
from robustkit.data import stack, take
from robustkit.devices import device_name, environment_difference, numeric_environment, resolve_device, seed_everything, torch_threads
from robustkit.errors import RobustkitError
from robustkit.files import sha256_file
from robustkit.evaluation import EvaluationState, evaluate
from robustkit.executors import CellSteps
from robustkit.models import build_model, normalization_of
from robustkit.outcomes import AttackOutcomes, Outcomes
from robustkit.sharding import ShardStore, evaluate_batches, merge_shards, plan_shards, shard_placement, shard_store
from robustkit.store import cell_key
from robustkit.threat import within_budget
from robustkit.training import TrainConfig, train

TRAIN_DIR = "train"


@contextlib.contextmanager
def training_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (parallel cells may share a surrogate's training)."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: cells of one run never share a folder except the surrogate
        yield
        return
    # Never through a link someone placed there, and never truncating: the lock is the file's existence.
    try:
        fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as err:
        raise RobustkitError(f"cannot lock {folder / '.lock'} ({err.strerror}); if it is a symbolic link, remove it "
                             "(robustkit never writes through links)") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def train_cell_model(host: Any, dataset: Any, train_settings: Mapping[str, Any], work_dir: Path,
                     device: str, model_files: Mapping[str, str] | None = None,
                     ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train (or resume, or reload) the model ``train_settings`` describe; return it and training facts.

    :param model_files: where the user's own model file and weights lie (:func:`robustkit.bench.spec.model_files`),
        for settings that name one.
    """
    key = cell_key(train_settings)
    out_dir = work_dir / TRAIN_DIR / key
    seed = int(train_settings["seed"])
    params = dict(train_settings["defense"]["params"])
    for name, value in params.items():
        if value == NATURAL_MODEL:  # e.g. hard positives' base: the natural model of these settings
            _, natural = train_cell_model(host, dataset, natural_settings(train_settings), work_dir, device,
                                          model_files)
            params[name] = natural["checkpoint"]
    defense = host.defenses.create(train_settings["defense"]["name"], params)
    config = TrainConfig(**{**train_settings["training"], "milestones": tuple(train_settings["training"]["milestones"])},
                         seed=seed, device=device, out_dir=out_dir)
    with training_lock(out_dir):
        seed_everything(seed)  # the initial weights are part of the run
        model = build_spec_model(host, train_settings["model"], dataset.info, model_files)
        tick = time.perf_counter()
        result = train(model, dataset, defense, config, host=host)
        seconds = time.perf_counter() - tick
    history = result.history
    epoch_times = [row["epoch_time"] for row in history if row.get("epoch_time") is not None]
    facts = {
        "train_key": key,
        "checkpoint": str(result.checkpoint) if result.checkpoint else None,
        "epochs": len(history),
        "seconds_this_call": round(seconds, 3),
        "seconds_per_epoch": round(sum(epoch_times) / len(epoch_times), 4) if epoch_times else None,
        "cost_passes_per_batch": defense.cost(),
        "final": {k: v for k, v in history[-1].items() if k != "epoch"} if history else {},
        # The epoch whose weights the cell evaluates (its best by validation, or its last) and which weights.
        "selected_epoch": result.selected_epoch, "weights": result.weights,
        "selected": next((dict(row) for row in history if row["epoch"] == result.selected_epoch), {}),
    }
    return result.model, facts


def build_spec_model(host: Any, model: Mapping[str, Any], info: Any,
                     files: Mapping[str, str] | None = None) -> torch.nn.Module:
    """The model a cell's settings describe: a registered one (with the spec's ``normalize``, if any), or the
    user's own from its file, found through ``files`` (refused when the file is no longer the one the spec
    was read with)."""
    if not model.get("sha256"):
        return build_model(host, model["name"], info, model["params"], normalization=model.get("normalize"))
    from robustkit.user_models import PYTHON, TORCHSCRIPT, ModelSource, build_user_model

    files = dict(files or {})
    if not files.get("file") or (model.get("weights_sha256") and not files.get("weights")):
        raise RobustkitError(f"this cell's model is your own ({model['name']}): say where its files are, "
                             "run_cell(..., model_files={'file': PATH, 'weights': PATH}) (bench run does)")
    source = ModelSource(PYTHON if model.get("class") else TORCHSCRIPT, files["file"], model.get("class"),
                         dict(model.get("params") or {}), model.get("sha256"), files.get("weights"),
                         model.get("weights_sha256"))
    changed = [path for path, sha in ((source.file, source.sha256), (source.weights, source.weights_sha256))
               if path and sha and Path(path).is_file() and sha256_file(path) != sha]
    if changed:
        raise RobustkitError(f"{changed[0]} changed since the benchmark spec was read (its sha256 differs), so this "
                             "cell's key no longer names it; run the benchmark again to key the new model")
    return build_user_model(source, info, model.get("normalize") or "none", what="model file")


def natural_settings(train_settings: Mapping[str, Any]) -> dict[str, Any]:
    """The training settings of the naturally trained model that matches ``train_settings``."""
    return {**train_settings, "defense": {"name": "natural", "params": {}}}


def run_cell(settings: Mapping[str, Any], work_dir: str | Path, *, device: str = "auto",
             data_root: str | None = None, host: Any = None, threads: int | None = None,
             model_files: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Train, evaluate, draw the eps curve and audit one cell; return its record (JSON-ready).

    :param threads: torch's CPU threads for the whole cell (default: as set); recorded in the record's
        ``environment``, since CPU results depend on it.
    :param model_files: where the spec's own model file and weights lie (:func:`robustkit.bench.spec.model_files`),
        when the settings name one: like ``data_root``, a location, never part of the settings.
    """
    with torch_threads(threads):
        started = time.perf_counter()
        cell = _open_cell(settings, Path(work_dir), device, data_root, host, model_files)
        evaluation = settings["evaluation"]
        state = EvaluationState(evaluation_state_path(cell.work_dir, cell.train_settings, settings))
        result = evaluate(cell.model, cell.dataset, cell.attacks, n_examples=evaluation["n_examples"],
                          batch_size=evaluation["batch_size"], device=cell.device, seed=cell.seed, state=state)
        record = _finish_record(cell, result, cell.training)
        state.remove()  # the record holds all it kept; a kill from here on re-evaluates this cell
        return {**record, "seconds": round(time.perf_counter() - started, 3)}


# --- a cell in three steps (``bench run --eval-shards K``: the executor may run the shards at once) -------------


def prepare_cell(settings: Mapping[str, Any], work_dir: str | Path, *, device: str = "auto",
                 data_root: str | None = None, host: Any = None, threads: int | None = None,
                 model_files: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A cell's first step: train its model (or resume, or reload it); return the training facts its record keeps,
    with this step's seconds."""
    with torch_threads(threads):
        started = time.perf_counter()
        cell = _open_cell(settings, Path(work_dir), device, data_root, host, model_files)
        return {"training": cell.training, "seconds": time.perf_counter() - started}


def evaluate_cell_shard(settings: Mapping[str, Any], work_dir: str | Path, *, prepared: Mapping[str, Any],
                        index: int, count: int, device: str = "auto", data_root: str | None = None, host: Any = None,
                        threads: int | None = None, model_files: Mapping[str, str] | None = None,
                        ) -> dict[str, Any] | None:
    """Shard ``index`` of ``count`` of a cell's evaluation (:mod:`robustkit.sharding`: whole batches, seeded by
    their global index, so the merged shards are one evaluation's records); None when the evaluation has fewer
    batches than shards. A finished shard is kept next to the cell's training, so a killed run skips it."""
    with torch_threads(threads):
        cell = _open_cell(settings, Path(work_dir), device, data_root, host, model_files)
        images, labels = _test_examples(cell)
        if len(images) == 0:
            raise RobustkitError("nothing to evaluate: the dataset's test split is empty")
        plan = plan_shards(len(images), settings["evaluation"]["batch_size"], count)
        if index >= len(plan):
            return None
        store = _shard_store(cell, images, labels)
        shard = store.get(plan[index])
        if shard is None:
            shard = evaluate_batches(cell.model, images, labels, cell.attacks, {}, plan[index],
                                     batch_size=settings["evaluation"]["batch_size"], seed=cell.seed,
                                     device=cell.device, threads=None)
            store.put(plan[index], shard)
        return shard


def finish_cell(settings: Mapping[str, Any], work_dir: str | Path, *, prepared: Mapping[str, Any],
                pieces: Sequence[Mapping[str, Any] | None], device: str = "auto", data_root: str | None = None,
                host: Any = None, threads: int | None = None, model_files: Mapping[str, str] | None = None,
                ) -> dict[str, Any]:
    """A cell's last step: its evaluation merged from the shards (checked to be of one numeric environment,
    this step's), then the eps curve, the audit and the record, which says where each shard ran."""
    with torch_threads(threads):
        started = time.perf_counter()
        cell = _open_cell(settings, Path(work_dir), device, data_root, host, model_files)
        shards = [p for p in pieces if p is not None]
        store = _shard_store(cell, *_test_examples(cell))
        difference = environment_difference(cell.environment, shards[0]["environment"])
        if difference is not None:
            raise RobustkitError(f"the shards of this cell's evaluation ran in another numeric environment than its "
                                 f"last step ({difference}); run every task of the benchmark on one kind of node, "
                                 f"and delete {store.folder} to recompute them")
        evaluation_seconds = math.fsum(s["seconds"] for s in shards)
        result = merge_shards(shards, cell.attacks, {}, cell.seed, evaluation_seconds)
        record = _finish_record(cell, result, prepared["training"])
        EvaluationState(evaluation_state_path(cell.work_dir, cell.train_settings, settings)).remove()
        store.remove()  # the record holds them now
        seconds = prepared["seconds"] + evaluation_seconds + time.perf_counter() - started
        return {**record, "evaluation_shards": shard_placement(shards), "seconds": round(seconds, 3)}


def describe_shard(shard: Mapping[str, Any] | None) -> str | None:
    """A finished shard in a few words (None for a shard with no batches)."""
    if shard is None:
        return None
    first, stop = shard["batches"]
    batches = f"batch {first}" if stop - first == 1 else f"batches {first}-{stop - 1}"
    return f"evaluation {batches} on {shard['node']} ({shard['device']}), {shard['seconds']:.0f} s"


#: :class:`robustkit.executors.CellSteps` of a benchmark cell.
CELL_STEPS = CellSteps(prepare=prepare_cell, piece=evaluate_cell_shard, finish=finish_cell,
                       describe_piece=describe_shard)


@dataclass
class _OpenCell:
    """A cell with its model trained (or reloaded) and its attacks built: what every step starts from."""

    settings: Mapping[str, Any]
    work_dir: Path
    host: Any
    dataset: Any
    seed: int
    train_settings: dict[str, Any]
    model: torch.nn.Module
    training: dict[str, Any]
    device: torch.device
    environment: dict[str, Any]
    attacks: dict[str, Any]
    model_files: Mapping[str, str] | None


def _open_cell(settings: Mapping[str, Any], work_dir: Path, device: str, data_root: str | None, host: Any,
               model_files: Mapping[str, str] | None) -> _OpenCell:
    if host is None:
        from robustkit.host import get_host

        host = get_host()
    resolved = resolve_device(device)
    dataset = host.datasets.create(settings["dataset"]["name"], settings["dataset"]["params"],
                                   root=Path(data_root) if data_root else None)
    seed = int(settings["seed"])
    train_settings = {"format": settings["format"], "dataset": settings["dataset"], "model": settings["model"],
                      "training": settings["training"], "seed": seed,
                      "defense": {"name": settings["defense"]["name"], "params": settings["defense"]["params"]}}
    model, training = train_cell_model(host, dataset, train_settings, work_dir, str(resolved), model_files)
    attacks = {a["label"]: host.attacks.create(a["name"], a["params"]) for a in settings["attacks"]}
    return _OpenCell(settings, work_dir, host, dataset, seed, train_settings, model, training, resolved,
                     numeric_environment(resolved, torch.get_num_threads()), attacks, model_files)


def _test_examples(cell: _OpenCell) -> tuple[torch.Tensor, torch.Tensor]:
    """The examples the cell evaluates (on the CPU)."""
    return stack(take(cell.dataset.test, cell.settings["evaluation"]["n_examples"]))


def _shard_store(cell: _OpenCell, images: torch.Tensor, labels: torch.Tensor) -> ShardStore:
    """Where the cell's finished shards are kept: beside its training, keyed by the evaluation they make up."""
    return shard_store(cell.work_dir / TRAIN_DIR / cell_key(cell.train_settings), cell.model, images, labels,
                       cell.attacks, {}, batch_size=cell.settings["evaluation"]["batch_size"], seed=cell.seed)


def _finish_record(cell: _OpenCell, result: Any, training: Mapping[str, Any]) -> dict[str, Any]:
    """The record of ``cell`` evaluated as ``result``: threat check, eps curve, audit (``seconds`` is the caller's)."""
    settings, seed, resolved = cell.settings, cell.seed, cell.device
    normalization = normalization_of(cell.model)  # what the model does to [0, 1] images first, for the record
    outcomes, per_attack = within_threat(result, cell.attacks, settings["threat"])
    outside = {label: a["n_outside_threat"] for label, a in per_attack.items() if a["n_outside_threat"]}
    images, labels = _test_examples(cell)
    images, labels = images.to(resolved), labels.to(resolved)
    eps_curve = _eps_curve(cell.host, cell.model, images, labels, settings, resolved, seed)
    audit = _audit(cell.host, cell.model, images, labels, settings, per_attack, cell.train_settings, cell.dataset,
                   cell.work_dir, str(resolved), seed, cell.model_files)
    return {
        "defense": settings["defense"]["label"], "defense_name": settings["defense"]["name"],
        "knob": settings["defense"]["knob"], "knob_value": settings["defense"]["value"], "seed": seed,
        "n_examples": result.n_examples, "clean_accuracy": result.clean_accuracy,
        "worst_case_accuracy": float(metrics.value(outcomes, metrics.WORST_CASE, metrics.ones(outcomes.n))[0]),
        "n_clean_wrong": result.n_clean_wrong, "attacks": per_attack,
        "threat_flags": [f"{label}: {count} successful adversarial(s) outside the threat "
                         f"{settings['threat']['norm']} eps {settings['threat']['eps']:g}, counted as not broken"
                         for label, count in outside.items()],
        "outcomes": outcomes.to_json(), "environment": cell.environment,
        "eps_curve": eps_curve, "audit": audit, "training": dict(training),
        "normalization": normalization.to_json() if normalization is not None else None,
        "evaluation_seconds": round(result.seconds, 3),
        "device": str(resolved), "device_name": device_name(resolved),
        "versions": {"robustkit": __version__, "torch": torch.__version__, "python": platform.python_version(),
                     "plugins": cell.host.plugin_versions()},
    }


def evaluation_state_path(work_dir: Path, train_settings: Mapping[str, Any], settings: Mapping[str, Any]) -> Path:
    """Where a cell keeps the state of its main evaluation (:class:`robustkit.evaluation.EvaluationState`): next
    to its training, keyed by the whole cell, so a cell killed during a long evaluation (AutoAttack) continues
    at its next batch or sub-attack, and cells that share a training never share a state."""
    return work_dir / TRAIN_DIR / cell_key(train_settings) / f"evaluation-{cell_key(settings)}.state"


def within_threat(result: Any, attacks: Mapping[str, Any], threat: Mapping[str, Any],
                  ) -> tuple[Outcomes, dict[str, dict[str, Any]]]:
    """Per-example outcomes counting only adversarials inside the threat model, and per-attack facts.

    An example is broken by an attack only if its adversarial is misclassified and its distance in the
    threat norm is within eps (:func:`robustkit.threat.within_budget`), whatever the attack promised:
    a minimal-distortion attack (DeepFool, CW-L2) breaks only the examples it fooled within eps, and a
    fixed-budget attack that returned successful adversarials outside the threat is flagged
    (``n_outside_threat``) and those examples count as not broken. An attack made of steps (AutoAttack)
    also gets ``steps``, its summary's per-sub-attack counts (:class:`robustkit.evaluation.AttackSummary`):
    the attack's own view, within its own budget, not recounted against the threat.
    """
    norm, eps = threat["norm"], float(threat["eps"])
    records = result.records
    clean = np.array([r.clean_correct for r in records], dtype=bool)
    outcomes = Outcomes(clean)
    per_attack: dict[str, dict[str, Any]] = {}
    for label, attack in attacks.items():
        rows = [r.attacks[label] for r in records]
        success = np.array([o.success for o in rows], dtype=bool)
        if norm == "unbounded":
            inside = np.ones_like(success)
        else:
            inside = np.array([bool(within_budget(getattr(o, norm), eps)) for o in rows], dtype=bool)
        goal = getattr(attack, "goal", "fixed-budget")
        outcomes.attacks[label] = AttackOutcomes(success & inside & clean, success,
                                                 np.array([o.l2 for o in rows], dtype=np.float64))
        summary = result.attacks[label]
        facts = {
            "robust_accuracy": float(metrics.value(outcomes, label, metrics.ones(outcomes.n))[0]),
            "success_rate": summary.success_rate, "n_success": summary.n_success,
            "n_outside_threat": int(np.sum(success & ~inside)) if goal == "fixed-budget" else 0,
            "mean_l2": summary.mean_l2, "median_l2": summary.median_l2, "mean_linf": summary.mean_linf,
            "mean_queries": summary.mean_queries, "seconds": round(summary.seconds, 3), "goal": goal,
            "knowledge": getattr(attack, "knowledge", "white-box"),
        }
        if summary.steps:  # an attack made of steps (AutoAttack): each sub-attack's counts, as the summary has them
            facts["steps"] = [{**step, "seconds": round(step["seconds"], 3)} for step in summary.steps]
        if goal == "minimal-distortion":
            for kind in metrics.RHO_KINDS:
                rho = float(metrics.value(outcomes, f"{label}:{kind}", metrics.ones(outcomes.n))[0])
                facts[kind.replace("-", "_")] = None if np.isnan(rho) else rho
            facts["rho_failed_share"] = metrics.failed_share(outcomes, label)
        per_attack[label] = facts
    return outcomes, per_attack


def _eps_curve(host: Any, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
               settings: Mapping[str, Any], device: torch.device, seed: int) -> list[dict[str, float]]:
    evaluation = settings["evaluation"]
    if not evaluation["eps_curve"]:
        return []
    spec = next(a for a in settings["attacks"] if a["label"] == evaluation["curve_attack"])
    points = []
    for eps in evaluation["eps_curve"]:
        attack = host.attacks.create(spec["name"], {**spec["params"], "eps": eps})
        result = evaluate(model, (images, labels), {spec["label"]: attack}, batch_size=evaluation["batch_size"],
                          device=device, seed=seed)
        points.append({"eps": float(eps), "accuracy": result.worst_case_accuracy})
    return points


def _audit(host: Any, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, settings: Mapping[str, Any],
           per_attack: Mapping[str, Any], train_settings: Mapping[str, Any], dataset: Any, work_dir: Path,
           device: str, seed: int, model_files: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    audit = settings["audit"]
    if not audit["enabled"]:
        return None
    white = {label: a["robust_accuracy"] for label, a in per_attack.items()
             if a["knowledge"] == "white-box" and a["goal"] == "fixed-budget"}
    strongest = min(white, key=white.__getitem__) if white else None  # the audit record names it
    black_box = None
    if audit.get("black_box"):
        black_box = host.attacks.create(audit["black_box"]["name"], audit["black_box"]["params"])
    surrogate = None
    natural = natural_settings(train_settings)
    if audit["transfer"] and cell_key(natural) != cell_key(train_settings):
        surrogate, _ = train_cell_model(host, dataset, natural, work_dir, device, model_files)
    return audit_model(model, images, labels, threat=settings["threat"], settings=audit,
                       white_box_accuracy=white[strongest] if strongest is not None else None, black_box=black_box,
                       surrogate=surrogate, seed=seed, white_box_label=strongest)

