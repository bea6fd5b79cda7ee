"""Run every cell of a benchmark, resumably, in one process, several, or on a cluster.

Results go to ``OUT/cells/<key>.json`` (:class:`robustkit.store.ResultStore`: one record per finished
cell, written atomically, never overwritten), trained weights to ``OUT/train/``, and the validated spec
to ``OUT/benchmark.json`` (what ``bench report`` and ``leaderboard export`` read). Killing a run loses
at most the unfinished part of the cells in progress (their training resumes from the last epoch);
running the same command again skips every recorded cell.

What runs the cells is an executor (:mod:`robustkit.executors`: local processes by default, Ray with
``robustkit[ray]``); whichever it is, this process writes every record, so workers anywhere only compute.
Natural cells come first: they are the default accuracy target and the audit's transfer surrogate.
The overall bar weighs each cell by its training cost (epochs x forward/backward passes per batch),
so its time estimate does not assume a PGD-AT cell is as quick as a natural one.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from robustkit.bench.cells import CELL_STEPS, build_spec_model, natural_settings, run_cell
from robustkit.bench.spec import NATURAL_MODEL, BenchmarkSpec, Cell, model_files, model_settings
from robustkit.devices import environment_difference, numeric_environment, resolve_device
from robustkit.errors import RobustkitError
from robustkit.executors import DEFAULT_EXECUTOR, CellWork, Executor
from robustkit.files import atomic_write_text, jsonable, remove_stale_temporaries
from robustkit.progress import progress
from robustkit.store import ResultStore, cell_key

BENCHMARK_FILE = "benchmark.json"


@dataclass
class RunSummary:
    """What :func:`run_benchmark` did."""

    total: int
    reused: int
    finished: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def describe_benchmark(spec: BenchmarkSpec, host: Any) -> dict[str, Any]:
    """The spec as ``OUT/benchmark.json`` keeps it: enough to analyse the records without the plugins."""
    defenses = []
    for d in spec.defenses:
        factory = host.defenses.get(d.name).factory
        defenses.append({"label": d.label, "name": d.name, "knob": d.knob, "sweep": jsonable(list(d.sweep)),
                         "params": jsonable(d.params), "reference": dict(getattr(factory, "reference", {}) or {}),
                         "cost": _cost(host, d)})
    return {
        "name": spec.name, "description": spec.description, "paper": spec.paper, "source": spec.source,
        "fingerprint": spec.fingerprint(), "spec_hash": spec.spec_hash(), "document": spec.document,
        "dataset": spec.dataset, "model": spec.model, "threat": spec.threat, "seeds": list(spec.seeds),
        "attacks": [{**a.settings(), "goal": a.goal, "knowledge": a.knowledge} for a in spec.attacks],
        "evaluation": jsonable(spec.evaluation), "audit_enabled": bool(spec.audit["enabled"]),
        "targets": list(spec.targets), "rank_by": spec.rank_by, "defenses": defenses,
        "cells": [c.key for c in spec.cells()],
    }


def _cost(host: Any, d: Any) -> float:
    try:
        params = {k: (None if v == NATURAL_MODEL else v) for k, v in d.params_at(d.sweep[0]).items()}
        return float(host.defenses.create(d.name, params).cost())
    except Exception:  # a cost estimate must never stop a run
        return 1.0


def run_benchmark(spec: BenchmarkSpec, out_dir: str | Path, host: Any, *, jobs: int = 1, device: str = "auto",
                  threads: int | None = None, say: Callable[[str], None] = print,
                  executor: Executor | None = None, eval_shards: int = 1) -> RunSummary:
    """Run the cells of ``spec`` that ``out_dir`` has no record of; return what happened.

    :param jobs: local worker processes (1 runs in this process, with per-cell progress bars); for the
        default executor only.
    :param threads: torch CPU threads of every cell, however many run at once (default: this process's
        setting, normally one per core). CPU numbers depend on it, so it is part of the numeric
        environment that ``benchmark.json`` and every record state, and a folder keeps one environment.
    :param executor: what runs the cells (:mod:`robustkit.executors`; ``host.executors.create("ray", ...)``);
        default: the local one with ``jobs`` processes. Whatever runs them, this process writes every record.
    :param eval_shards: split each cell's evaluation into this many shards of whole batches, which the
        executor may run at once (``ray`` runs them as tasks; ``local`` one after another); the records are the
        same as without shards, plus where each shard ran.
    :raises RobustkitError: on Ctrl-C, after keeping every finished record (rerun to continue); when
        ``out_dir`` holds results of another numeric environment.
    """
    import torch

    if executor is None:
        executor = host.executors.create(DEFAULT_EXECUTOR, {"jobs": jobs})
    elif jobs != 1:
        raise ValueError("give jobs to the local executor, not beside another executor")
    out_dir = Path(out_dir)
    threads = threads or torch.get_num_threads()
    if eval_shards < 1:
        raise RobustkitError(f"--eval-shards must be at least 1, got {eval_shards}")
    work = CellWork(out_dir, device, threads, spec.data_root, model_files(spec.model), run_cell, steps=CELL_STEPS,
                    pieces=eval_shards)
    environment = executor.known_environment(work)
    if environment is not None:
        _check_environment(out_dir, environment)
    # Missing or damaged dataset files would fail every cell alike: say it once, before anything runs.
    dataset = host.datasets.create(spec.dataset["name"], spec.dataset.get("params") or {},
                                   root=Path(spec.data_root) if spec.data_root else None)
    _check_model(spec, host, dataset.info)
    out_dir.mkdir(parents=True, exist_ok=True)
    described = describe_benchmark(spec, host)
    store = ResultStore(out_dir)
    for folder in (out_dir, store.cells):  # a write cut short by SIGKILL leaves its temporary behind
        remove_stale_temporaries(folder)
    cells = sorted(spec.cells(), key=lambda c: c.settings["defense"]["name"] != "natural")  # stable
    todo = [c for c in cells if not store.has(c.key)]
    work = dataclasses.replace(work, waits_for=natural_dependencies(todo), labels={c.key: cell_name(c) for c in todo})
    summary = RunSummary(total=len(cells), reused=len(cells) - len(todo))
    costs = {d["label"]: d["cost"] for d in described["defenses"]}
    weight = {c.key: spec.training["epochs"] * costs.get(c.defense, 1.0) for c in todo}
    say(f"benchmark {spec.name}: {len(cells)} cells, {summary.reused} already recorded in {out_dir}, "
        f"{len(todo)} to run" + (executor.describe() if todo else "")
        + f" with {threads} torch thread(s) each" + (f", each evaluation in {eval_shards} shards" if eval_shards > 1
                                                      else ""))
    if not todo:
        _write_benchmark(out_dir, described, environment or _recorded_environment(out_dir)
                         or numeric_environment(resolve_device(device), threads))
        return summary
    started = time.perf_counter()

    def finished(cell: Any, record: dict[str, Any] | None, error: str | None) -> None:  # a Cell of todo
        bar.update(weight[cell.key])
        name = cell_name(cell)
        if record is None:
            summary.failed[name] = error or "no record came back"
            say(f"  failed: {name}: {summary.failed[name]}")
            return
        if store.has(cell.key):  # another run recorded it meanwhile: records are never overwritten
            summary.reused += 1
            say(f"  already recorded by another run: {name}")
            return
        store.put(cell.key, cell.settings, record)
        summary.finished.append(cell.key)
        attacks = ", ".join(f"{k} {100 * v['robust_accuracy']:.1f}%" for k, v in record["attacks"].items())
        flags = record["audit"]["flags"] if record.get("audit") else []
        say(f"  done {len(summary.finished) + summary.reused}/{summary.total}: {name}: clean "
            f"{100 * record['clean_accuracy']:.1f}%, {attacks}" + (f" [audit: {', '.join(flags)}]" if flags else ""))

    bar: Any = None
    try:
        with executor.session(work, say) as environment:
            _check_environment(out_dir, environment)
            _write_benchmark(out_dir, described, environment)
            bar = progress(total=round(sum(weight.values()), 3), desc=f"{spec.name} (cost-weighted)", unit="pass",
                           leave=True, bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} [{elapsed}<{remaining}]")
            executor.run_cells(todo, work, finished, host)
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
        raise RobustkitError(f"benchmark interrupted: {len(summary.finished) + summary.reused} of {summary.total} "
                             f"cells are recorded in {out_dir}; rerun the same command to continue") from None
    bar.close()
    summary.seconds = time.perf_counter() - started
    return summary


def _write_benchmark(out_dir: Path, described: dict[str, Any], environment: dict[str, Any]) -> None:
    atomic_write_text(out_dir / BENCHMARK_FILE,
                      json.dumps({**described, "environment": environment}, indent=2, sort_keys=True) + "\n")


def _recorded_environment(out_dir: Path) -> dict[str, Any] | None:
    """The numeric environment ``out_dir/benchmark.json`` states, if it is readable."""
    try:
        recorded = json.loads((out_dir / BENCHMARK_FILE).read_text(encoding="utf-8")).get("environment")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None
    return recorded if isinstance(recorded, dict) else None


def _check_model(spec: BenchmarkSpec, host: Any, info: Any) -> None:
    """A model that cannot fit the dataset would fail every cell alike: the user's own model is built once
    (its logits checked against the dataset's classes), a given normalization checked against its channels."""
    model = model_settings(spec.model)
    try:
        if model.get("sha256"):  # the user's own model
            build_spec_model(host, model, info, model_files(spec.model))
        elif model.get("normalize") is not None:
            from robustkit.models import Normalization

            Normalization.parse(model["normalize"], "normalize").resolve(info, "normalize")
    except RobustkitError as err:
        raise RobustkitError(f"{spec.source}: $.model: {err}") from None


def _check_environment(out_dir: Path, environment: dict[str, Any]) -> None:
    """Refuse to add records of another numeric environment to a folder (their numbers would differ)."""
    recorded = _recorded_environment(out_dir)
    if recorded is None:
        return  # rewritten by the run; the records' own environments still say how each was made
    difference = environment_difference(recorded, environment)
    if difference is not None:
        hint = f"pass --threads {recorded['threads']}" if difference.startswith("threads") else "run as before"
        raise RobustkitError(f"{out_dir} holds results made with a different numeric environment ({difference}, "
                             f"recorded vs now); {hint}, or use another --out folder")


def natural_dependencies(cells: Sequence[Cell]) -> dict[str, str]:
    """``{cell key: key of the natural cell it waits for}``: a cell that reuses naturally trained weights
    (:func:`uses_natural_model`) waits for the natural cell of ``cells`` that trains them (same data, model,
    training and seed), rather than training them too."""
    naturals = {c.train_key: c.key for c in cells if c.settings["defense"]["name"] == "natural"}
    out = {}
    for c in cells:
        natural = naturals.get(cell_key(natural_settings(c.train_settings)))
        if natural is not None and natural != c.key and uses_natural_model(c.settings):
            out[c.key] = natural
    return out


def uses_natural_model(settings: Mapping[str, Any]) -> bool:
    """Whether a cell uses the naturally trained model of its settings: as the audit's transfer surrogate,
    or as a defense parameter (``@natural``, e.g. hard positives' base model)."""
    audit = settings.get("audit") or {}
    params = settings["defense"].get("params") or {}
    return bool(audit.get("enabled") and audit.get("transfer")) or NATURAL_MODEL in params.values()


def cell_name(cell: Cell) -> str:
    """A cell as people name it: ``pgd-at eps=0.1 seed 0``."""
    return f"{cell.defense}" + (f" {cell.knob}={cell.value}" if cell.knob else "") + f" seed {cell.seed}"
