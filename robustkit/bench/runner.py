"""Run every cell of a benchmark, resumably, in one process or several.

Results go to ``OUT/cells/<key>.json`` (:class:`robustkit.store.ResultStore`: one record per finished
cell, written atomically, never overwritten), trained weights to ``OUT/train/``, and the validated spec
to ``OUT/benchmark.json`` (what ``bench report`` and ``leaderboard export`` read). Killing a run loses
at most the unfinished part of the cells in progress (their training resumes from the last epoch);
running the same command again skips every recorded cell.

Natural cells run first: they are the default accuracy target and the audit's transfer surrogate.
The overall bar weighs each cell by its training cost (epochs x forward/backward passes per batch),
so its time estimate does not assume a PGD-AT cell is as quick as a natural one.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from robustkit.bench.cells import build_spec_model, run_cell
from robustkit.bench.spec import NATURAL_MODEL, BenchmarkSpec, Cell, model_files, model_settings
from robustkit.devices import environment_difference, numeric_environment, resolve_device
from robustkit.errors import RobustkitError
from robustkit.files import atomic_write_text, jsonable, remove_stale_temporaries
from robustkit.progress import lines_muted, mute_lines, progress
from robustkit.store import ResultStore

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
                  threads: int | None = None, say: Callable[[str], None] = print) -> RunSummary:
    """Run the cells of ``spec`` that ``out_dir`` has no record of; return what happened.

    :param jobs: worker processes (1 runs in this process, with per-cell progress bars).
    :param threads: torch CPU threads of every cell, however many run at once (default: this process's
        setting, normally one per core). CPU numbers depend on it, so it is part of the numeric
        environment that ``benchmark.json`` and every record state, and a folder keeps one environment.
    :raises RobustkitError: on Ctrl-C, after keeping every finished record (rerun to continue); when
        ``out_dir`` holds results of another numeric environment.
    """
    import torch

    out_dir = Path(out_dir)
    threads = threads or torch.get_num_threads()
    environment = numeric_environment(resolve_device(device), threads)
    _check_environment(out_dir, environment)
    # Missing or damaged dataset files would fail every cell alike: say it once, before anything runs.
    dataset = host.datasets.create(spec.dataset["name"], spec.dataset.get("params") or {},
                                   root=Path(spec.data_root) if spec.data_root else None)
    _check_model(spec, host, dataset.info)
    out_dir.mkdir(parents=True, exist_ok=True)
    described = {**describe_benchmark(spec, host), "environment": environment}
    atomic_write_text(out_dir / BENCHMARK_FILE, json.dumps(described, indent=2, sort_keys=True) + "\n")
    store = ResultStore(out_dir)
    for folder in (out_dir, store.cells):  # a write cut short by SIGKILL leaves its temporary behind
        remove_stale_temporaries(folder)
    cells = sorted(spec.cells(), key=lambda c: c.settings["defense"]["name"] != "natural")  # stable
    todo = [c for c in cells if not store.has(c.key)]
    summary = RunSummary(total=len(cells), reused=len(cells) - len(todo))
    costs = {d["label"]: d["cost"] for d in described["defenses"]}
    weight = {c.key: spec.training["epochs"] * costs.get(c.defense, 1.0) for c in todo}
    say(f"benchmark {spec.name}: {len(cells)} cells, {summary.reused} already recorded in {out_dir}, "
        f"{len(todo)} to run" + (f" on {jobs} processes" if jobs > 1 and todo else "")
        + f" with {threads} torch thread(s) each")
    if not todo:
        return summary
    cores = os.cpu_count() or 1
    if jobs > 1 and jobs * threads > cores:
        say(f"  note: {jobs} processes x {threads} threads on {cores} cores; --threads {max(1, cores // jobs)} "
            "runs faster, in a new --out folder (the thread count changes the numbers)")
    started = time.perf_counter()
    bar = progress(total=round(sum(weight.values()), 3), desc=f"{spec.name} (cost-weighted)", unit="pass",
                   leave=True, bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} [{elapsed}<{remaining}]")

    def finished(cell: Cell, record: dict[str, Any] | None, error: str | None) -> None:
        bar.update(weight[cell.key])
        name = f"{cell.defense}" + (f" {cell.knob}={cell.value}" if cell.knob else "") + f" seed {cell.seed}"
        if error is not None:
            summary.failed[name] = error
            say(f"  failed: {name}: {error}")
            return
        store.put(cell.key, cell.settings, record)
        summary.finished.append(cell.key)
        attacks = ", ".join(f"{k} {100 * v['robust_accuracy']:.1f}%" for k, v in record["attacks"].items())
        flags = record["audit"]["flags"] if record.get("audit") else []
        say(f"  done {len(summary.finished) + summary.reused}/{summary.total}: {name}: clean "
            f"{100 * record['clean_accuracy']:.1f}%, {attacks}" + (f" [audit: {', '.join(flags)}]" if flags else ""))

    try:
        if jobs <= 1:
            for cell in todo:
                try:
                    with lines_muted():  # one "done" line per cell, not one per epoch and evaluation inside it
                        record = run_cell(cell.settings, out_dir, device=device, data_root=spec.data_root,
                                          host=host, threads=threads, model_files=model_files(spec.model))
                except RobustkitError as err:
                    if _interrupted(err):  # the training loop turns Ctrl-C into a RobustkitError: stop, don't skip
                        raise KeyboardInterrupt from None
                    finished(cell, None, str(err))
                    continue
                finished(cell, record, None)
        else:
            _run_parallel(todo, out_dir, jobs, device, threads, spec.data_root, finished, model_files(spec.model))
    except KeyboardInterrupt:
        bar.close()
        raise RobustkitError(f"benchmark interrupted: {len(summary.finished) + summary.reused} of {summary.total} "
                             f"cells are recorded in {out_dir}; rerun the same command to continue") from None
    bar.close()
    summary.seconds = time.perf_counter() - started
    return summary


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


def _interrupted(err: BaseException) -> bool:
    """Whether ``err`` was raised while handling a KeyboardInterrupt."""
    context = err.__context__
    while context is not None:
        if isinstance(context, KeyboardInterrupt):
            return True
        context = context.__context__
    return False


def _check_environment(out_dir: Path, environment: dict[str, Any]) -> None:
    """Refuse to add records of another numeric environment to a folder (their numbers would differ)."""
    path = out_dir / BENCHMARK_FILE
    if not path.exists():
        return
    try:
        recorded = json.loads(path.read_text(encoding="utf-8")).get("environment")
    except (OSError, json.JSONDecodeError, AttributeError):
        return  # rewritten below; the records' own environments still say how each was made
    if not isinstance(recorded, dict):
        return
    difference = environment_difference(recorded, environment)
    if difference is not None:
        hint = f"pass --threads {recorded['threads']}" if difference.startswith("threads") else "run as before"
        raise RobustkitError(f"{out_dir} holds results made with a different numeric environment ({difference}, "
                             f"recorded vs now); {hint}, or use another --out folder")


def _worker_init() -> None:
    os.environ["ROBUSTKIT_PROGRESS"] = "0"  # bars of several processes would garble the terminal
    mute_lines()  # the driver writes one line per cell; a worker writes none of its own


def _worker(settings: dict[str, Any], out_dir: str, device: str, threads: int,
            data_root: str | None, files: dict[str, str] | None = None) -> tuple[Any, str | None]:
    try:
        return run_cell(settings, out_dir, device=device, data_root=data_root, threads=threads, model_files=files), None
    except RobustkitError as err:
        return None, str(err)


def _run_parallel(todo: list[Cell], out_dir: Path, jobs: int, device: str, threads: int, data_root: str | None,
                  finished: Callable[[Cell, Any, str | None], None], files: dict[str, str] | None = None) -> None:
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # fork after torch has started threads can deadlock
    naturals = [c for c in todo if c.settings["defense"]["name"] == "natural"]
    rest = [c for c in todo if c.settings["defense"]["name"] != "natural"]
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_worker_init) as pool:
        try:
            # Natural cells first and to the end: the others' audits reuse their weights as transfer surrogates.
            for batch in (naturals, rest):
                pending: dict[Future[Any], Cell] = {
                    pool.submit(_worker, c.settings, str(out_dir), device, threads, data_root, files): c for c in batch}
                while pending:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        cell = pending.pop(future)
                        try:
                            record, error = future.result()
                        except Exception as err:  # a worker that died (out of memory, killed)
                            record, error = None, f"worker failed: {type(err).__name__}: {err}"
                        finished(cell, record, error)
        except KeyboardInterrupt:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
