"""One model's evaluation split into shards that run anywhere, merged into exactly the one-process result.

A shard is a contiguous range of whole batches, keyed by their global batch indices. :func:`robustkit.evaluation.
evaluate` seeds each batch with ``seed + batch index`` and numbers examples from the start of the data, and a
shard passes its first batch index (``first_batch``), so a shard's records are the very records one run over
everything gives for those batches; merged in order they give the same summary, bit for bit, on the same
hardware (every shard's device and numeric environment is recorded, and shards of different environments are
refused, never merged).

Finished shards are written atomically, by the driver, under ``OUT/shards/<evaluation key>/`` as they
arrive, so a killed run resumes: the same command recomputes only the shards that are missing. The key hashes
what decides the numbers (model weights, attacks, metrics, examples, batch size, seed, precision), so another
evaluation never reads them. Use more shards than workers (GPUs): a worker that dies loses one small shard.
"""

from __future__ import annotations

import contextlib
import json
import math
import platform
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from robustkit.data import stack, take
from robustkit.devices import device_name, environment_difference, numeric_environment, resolve_device, torch_threads
from robustkit.errors import InputError, RobustkitError
from robustkit.evaluation import (Data, EvaluationResult, as_dataset, tensors_digest, evaluation_identity, record_from_json, record_to_json,
                                  build_result, evaluate)
from robustkit.files import atomic_write_text
from robustkit.progress import lines_muted
from robustkit.store import cell_key

#: ``OUT/shards/<evaluation key>/<first>-<stop>.json``: one finished shard.
SHARDS_DIR = "shards"


def plan_shards(n_examples: int, batch_size: int, shards: int) -> list[range]:
    """``shards`` contiguous ranges of batch indices covering ``ceil(n_examples / batch_size)`` batches, as equal
    as whole batches allow, the longer ones first (fewer ranges when there are fewer batches); the last batch
    may hold fewer examples."""
    if shards < 1:
        raise InputError(f"the number of shards must be >= 1, got {shards}")
    batches = math.ceil(n_examples / batch_size)
    count = min(shards, batches)
    size, longer = divmod(batches, count)  # the first ``longer`` shards get one batch more
    out, start = [], 0
    for i in range(count):
        stop = start + size + (i < longer)
        out.append(range(start, stop))
        start = stop
    return out


def evaluate_shard(*, work: Any, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                   attacks: Mapping[str, Any], metrics: Mapping[str, Any], batches: range, batch_size: int, seed: int,
                   precision: str = "fp32", channels_last: bool = False) -> dict[str, Any]:
    """Evaluate the batches ``batches`` of ``images``/``labels`` (all the examples of the evaluation) and return
    the shard as JSON-ready data: its records, per-attack seconds and steps, device and numeric environment.

    :param work: where and how (:class:`robustkit.executors.CellWork`: its ``device`` and ``threads``).
    """
    return evaluate_batches(model, images, labels, attacks, metrics, batches, batch_size=batch_size, seed=seed,
                            device=work.device, threads=work.threads, precision=precision, channels_last=channels_last)


def evaluate_batches(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, attacks: Mapping[str, Any],
                     metrics: Mapping[str, Any], batches: range, *, batch_size: int, seed: int, device: Any,
                     threads: int | None, precision: str = "fp32", channels_last: bool = False) -> dict[str, Any]:
    """:func:`evaluate_shard` with the device and torch threads given directly."""
    first, stop = batches.start * batch_size, min(batches.stop * batch_size, len(images))
    device = resolve_device(device)
    with torch_threads(threads), lines_muted():  # the driver says one line per shard
        result = evaluate(model, (images[first:stop], labels[first:stop]), attacks, batch_size=batch_size,
                          device=device, seed=seed, metrics=metrics, precision=precision, channels_last=channels_last,
                          first_batch=batches.start)
        environment = numeric_environment(device, torch.get_num_threads())
    n = result.n_examples
    return {
        "batches": [batches.start, batches.stop], "device": str(device), "device_name": device_name(device),
        "node": platform.node(), "environment": environment, "seconds": result.seconds,
        "attack_seconds": {name: s.seconds for name, s in result.attacks.items()},
        # Step counts as evaluate keeps them while running (robust: examples still robust after the step).
        "steps": {name: {step["attack"]: {"attacked": step["attacked"], "fooled": step["fooled"],
                                          "robust": round(step["robust_accuracy"] * n), "seconds": step["seconds"]}
                         for step in s.steps} for name, s in result.attacks.items()},
        "records": [record_to_json(r) for r in result.records],
    }


def shard_placement(shards: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Where each shard ran (batches, node, device, seconds): what results and records say of them."""
    return [{"batches": s["batches"], "node": s["node"], "device": s["device"], "device_name": s["device_name"],
             "seconds": s["seconds"]} for s in sorted(shards, key=lambda s: s["batches"][0])]


def merge_shards(shards: Sequence[Mapping[str, Any]], attacks: Mapping[str, Any], metrics: Mapping[str, Any],
                 seed: int, seconds: float) -> EvaluationResult:
    """The evaluation the shards make up, in batch order: what one run over every batch returns.

    :raises RobustkitError: when the shards do not cover the batches once each, in order, or were computed in
        different numeric environments.
    """
    ordered = sorted(shards, key=lambda s: s["batches"][0])
    for before, after in zip(ordered, ordered[1:]):
        if before["batches"][1] != after["batches"][0]:
            raise RobustkitError(f"the shards leave a gap or overlap at batch {before['batches'][1]}; rerun the same "
                                 "command")
    for shard in ordered[1:]:
        difference = environment_difference(ordered[0]["environment"], shard["environment"])
        if difference is not None:
            raise RobustkitError(f"shards {_range(ordered[0])} and {_range(shard)} were computed in different numeric "
                                 f"environments ({difference}), so their numbers would not match one run; delete "
                                 "the shards folder and run again on one kind of node")
    attack_seconds = {name: math.fsum(s["attack_seconds"][name] for s in ordered) for name in attacks}
    steps: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in attacks}
    for shard in ordered:
        for name, by_step in shard["steps"].items():
            for step, counts in by_step.items():
                total = steps[name].setdefault(step, {"attacked": 0, "fooled": 0, "robust": 0, "seconds": 0.0})
                for key in ("attacked", "fooled", "robust", "seconds"):
                    total[key] += counts[key]
    records = [record_from_json(r) for shard in ordered for r in shard["records"]]
    return build_result(records, attacks, metrics, attack_seconds, seed, torch.device(ordered[0]["device"]), seconds, steps)


def _range(shard: Mapping[str, Any]) -> str:
    return f"{shard['batches'][0]}-{shard['batches'][1]}"


def shard_store(root: str | Path, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                attacks: Mapping[str, Any], metrics: Mapping[str, Any], *, batch_size: int, seed: int,
                precision: str = "fp32", channels_last: bool = False) -> ShardStore:
    """Where the finished shards of this evaluation are kept under ``root``: keyed by what decides its numbers
    (weights, attacks, metrics, examples, batch size, seed, precision), so no other evaluation reads them."""
    identity = evaluation_identity(model, attacks, metrics, n_examples=len(images), batch_size=batch_size, seed=seed,
                                   keep_examples=0, precision=precision, channels_last=channels_last,
                                   device=torch.device("cpu"))
    identity.pop("environment")  # the workers', recorded in each shard and checked when merging
    identity["examples"] = tensors_digest(images, labels)
    return ShardStore(root, cell_key(identity))


class ShardStore:
    """Finished shards of one evaluation: ``root/shards/<key>/<first>-<stop>.json``, written atomically."""

    def __init__(self, root: str | Path, key: str):
        self.folder = Path(root) / SHARDS_DIR / key

    def path(self, batches: range) -> Path:
        return self.folder / f"{batches.start:06d}-{batches.stop:06d}.json"

    def get(self, batches: range) -> dict[str, Any] | None:
        path = self.path(batches)
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise RobustkitError(f"shard {path} is unreadable ({err}); delete it to recompute it") from None

    def put(self, batches: range, shard: Mapping[str, Any]) -> None:
        atomic_write_text(self.path(batches), json.dumps(shard) + "\n")

    def remove(self) -> None:
        """Delete the shards (once what they hold is kept elsewhere, in a record)."""
        if self.folder.is_dir() and not self.folder.is_symlink():
            shutil.rmtree(self.folder, ignore_errors=True)
        with contextlib.suppress(OSError):  # the shards folder too, unless another evaluation's are in it
            self.folder.parent.rmdir()


def evaluate_sharded(model: nn.Module, data: Data, attacks: Mapping[str, Any], *, shards: int, out_dir: str | Path,
                     executor: Any, n_examples: int | None = None, batch_size: int = 128, device: str = "auto",
                     seed: int = 0, threads: int | None = None, metrics: Mapping[str, Any] | None = None,
                     precision: str = "fp32", channels_last: bool = False,
                     say: Callable[[str], None] = lambda line: None) -> tuple[EvaluationResult, list[dict[str, Any]]]:
    """:func:`robustkit.evaluation.evaluate` in ``shards`` pieces run by ``executor``; returns the merged result
    (equal to one run's) and, per shard, where it ran (batches, node, device).

    :param data: a dataset or an ``(images, labels)`` pair (the first ``n_examples`` are evaluated).
    :param executor: a :class:`robustkit.executors.Executor` (``ray`` runs the shards as tasks; ``local``
        runs them here, one after the other, still resumably).
    :param out_dir: where finished shards are kept (``OUT/shards/``) so a killed run resumes.
    """
    from robustkit.executors import CellWork

    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    started = time.perf_counter()
    images, labels = stack(take(as_dataset(data), n_examples))
    if len(images) == 0:
        raise InputError("nothing to evaluate: the dataset is empty")
    metrics = dict(metrics or {})
    threads = threads or torch.get_num_threads()
    store = shard_store(out_dir, model, images, labels, attacks, metrics, batch_size=batch_size, seed=seed,
                        precision=precision, channels_last=channels_last)
    plan = plan_shards(len(images), batch_size, shards)
    done: dict[int, dict[str, Any]] = {}
    for i, batches in enumerate(plan):
        shard = store.get(batches)
        if shard is not None:
            done[i] = shard
    todo = [i for i in range(len(plan)) if i not in done]
    say(f"evaluation in {len(plan)} shard(s) of whole batches, {len(done)} already in {store.folder}, {len(todo)} "
        f"to run" + (executor.describe() if todo else ""))
    failed: dict[int, str] = {}
    if todo:
        work = CellWork(Path(out_dir), device, threads, None, None)

        def finished(j: int, shard: Any, error: str | None) -> None:
            i = todo[j]
            if error is not None:
                failed[i] = error
                say(f"  shard {i + 1}/{len(plan)} (batches {plan[i].start}-{plan[i].stop - 1}) failed: {error}")
                return
            store.put(plan[i], shard)
            done[i] = shard
            say(f"  shard {i + 1}/{len(plan)} done on {shard['node']} ({shard['device']}): batches "
                f"{plan[i].start}-{plan[i].stop - 1}, {len(shard['records'])} examples, {shard['seconds']:.1f} s")

        shared = {"model": model.cpu(), "images": images, "labels": labels, "attacks": dict(attacks),
                  "metrics": metrics}
        calls = [{"batches": plan[i], "batch_size": batch_size, "seed": seed, "precision": precision,
                  "channels_last": channels_last} for i in todo]
        try:
            with executor.session(work, say):
                executor.run_tasks(evaluate_shard, calls, shared, work, finished)
        except KeyboardInterrupt:
            raise RobustkitError(f"evaluation interrupted: {len(done)} of {len(plan)} shards are kept in "
                                 f"{store.folder}; rerun the same command to continue") from None
    if failed:
        i, error = next(iter(sorted(failed.items())))
        raise RobustkitError(f"{len(failed)} of {len(plan)} shards failed (first: batches {plan[i].start}-"
                             f"{plan[i].stop - 1}: {error}); the others are kept in {store.folder}; rerun the same "
                             "command to continue")
    shards_done = [done[i] for i in range(len(plan))]
    result = merge_shards(shards_done, attacks, metrics, seed, time.perf_counter() - started)
    return result, shard_placement(shards_done)
