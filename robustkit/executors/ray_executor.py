"""The ``ray`` executor: every cell a Ray task, on a cluster or on Ray embedded in this process.

Ray (``pip install 'robustkit[ray]'``, Ray core only) is imported when a run uses this executor, never before.
With no address, Ray starts embedded in this process (``RAY_ADDRESS``, when set, is joined instead);
``address="auto"`` joins the cluster ``ray start`` runs on this machine, ``HOST:PORT`` any other.

How a run goes:

- **Preflight.** One small task pinned to every node gathers its versions, data root, model files and
  numeric environment (:mod:`robustkit.executors.preflight`) and reads back a marker the driver wrote into the
  output folder, so a node that differs, or does not share the folder, is named before any cell starts. A
  cell asking for more GPUs or CPUs than any node has fails at once instead of waiting forever.
- **Cells.** Each cell is a task holding ``cpus_per_cell`` CPUs (default: its torch threads) and
  ``gpus_per_cell`` GPUs (default: one when the cluster has GPUs and the device is not ``cpu``). A GPU task
  sees only its own GPUs (Ray sets ``CUDA_VISIBLE_DEVICES``), so the cell's device is ``cuda``, never
  ``cuda:N``, and each GPU cell gets a fresh worker process. ``ROBUSTKIT_*`` variables go to every worker.
  A cell that reuses a natural cell's weights takes that cell's result as an argument, so Ray starts it
  after that cell: no barrier between the natural cells and the rest. With ``--eval-shards K`` a cell is
  K + 2 tasks (:class:`robustkit.executors.CellSteps`): training, then its K evaluation shards at once, each
  holding a cell's CPUs and GPUs, then the record, each started by Ray when what it takes is ready.
- **Records.** Tasks return records; the driver writes them (:func:`robustkit.bench.runner.run_benchmark`).
  Each task notes where it runs in ``OUT/workers/<cell key>.json`` (node, process, GPUs), which says where
  a cell is when it hangs. A worker that dies (killed, out of host memory, node lost) is restarted up to
  ``max_retries`` times; the cell then resumes its training from its last epoch. A CUDA out-of-memory error
  is the cell's failure, reported, not retried.
- **Ctrl-C** stops every task in flight; the next run resumes. When this executor started or joined Ray, it
  disconnects, which ends the job and Ray stops its workers; ``ray.cancel`` is kept for a Ray the caller
  started, since its reply can race a task's own and abort the driver inside Ray (a C++ check failure).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import platform
import secrets
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from robustkit.errors import RobustkitError, one_line
from robustkit.executors import Cell, CellSteps, CellWork, Executor, Finished
from robustkit.executors.preflight import MARKER_PREFIX, check_nodes, node_facts
from robustkit.params import Param

#: Seconds a cancelled task gets to stop by itself on Ctrl-C before its worker is killed.
CANCEL_GRACE_S = 10.0

#: Seconds to wait for the head node's port to answer before giving up on an --address.
CONNECT_TIMEOUT_S = 5.0

#: How to get Ray, for messages.
RAY_EXTRA = "pip install 'robustkit[ray]'"

#: ``OUT/workers/<cell key>.json``: where each cell last started.
WORKERS_DIR = "workers"

#: Seconds the preflight waits for every node to answer (a fresh worker imports torch and the plugins).
PREFLIGHT_SECONDS = 600


def import_ray() -> Any:
    """The ``ray`` module, or a one-line error naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        raise RobustkitError(f"--executor ray needs Ray, which is not installed here: {RAY_EXTRA}") from None
    return ray


class RayExecutor(Executor):
    """Cells as Ray tasks: embedded on this machine, or across a cluster started with `ray start`."""

    name = "ray"
    params = (
        Param("address", str, None, "the Ray cluster to join: auto (the one `ray start` runs here) or HOST:PORT; "
                                    "none: RAY_ADDRESS if set, else Ray embedded in this process", optional=True),
        Param("gpus_per_cell", float, None, "GPUs each cell holds (a fraction shares one); none: 1 when the cluster "
                                            "has GPUs and the device is not cpu, else 0", low=0, optional=True),
        Param("cpus_per_cell", float, None, "CPUs each cell holds; none: its torch threads", low=0, low_open=True,
              optional=True),
        Param("max_retries", int, 3, "restarts of a cell whose worker died (killed, node lost); 0: report it failed",
              low=0),
    )

    def __init__(self, address: str | None = None, gpus_per_cell: float | None = None,
                 cpus_per_cell: float | None = None, max_retries: int = 3):
        self.address = address
        self.gpus_per_cell = gpus_per_cell
        self.cpus_per_cell = cpus_per_cell
        self.max_retries = max_retries
        self._work: CellWork | None = None
        self._resources: tuple[float, float] = (1.0, 0.0)
        self._say: Callable[[str], None] = lambda line: None
        self._owns_ray = False  # whether session() started or joined Ray (and disconnects at its end)

    def _target(self) -> str | None:
        """The cluster to join (None: start Ray embedded)."""
        return self.address or os.environ.get("RAY_ADDRESS") or None

    def describe(self) -> str:
        target = self._target()
        return f" on the Ray cluster at {target}" if target else " on Ray embedded in this process"

    def known_environment(self, work: CellWork) -> dict[str, Any] | None:
        return None  # only the nodes can tell (their GPUs, not this machine's, decide the device)

    @contextlib.contextmanager
    def session(self, work: CellWork, say: Callable[[str], None]) -> Iterator[dict[str, Any]]:
        ray = import_ray()
        _check_device(work.device)
        connected_here = not ray.is_initialized()
        if connected_here:
            _connect(ray, self._target())
        self._owns_ray = connected_here
        try:
            nodes = [n for n in ray.nodes() if n.get("Alive")]
            cpus, gpus = self._cell_resources(nodes, work)
            self._resources = (cpus, gpus)
            self._work, self._say = _shipped(work, gpus), say
            environment = _preflight(ray, nodes, self._work, cpus, gpus)
            if environment is None:
                raise RobustkitError("no node of the Ray cluster can run a cell; add a node (ray start --address ...)")
            total = {k: sum(float(n["Resources"].get(k, 0)) for n in nodes) for k in ("CPU", "GPU")}
            where = f"at {ray.get_runtime_context().gcs_address}" if self._target() else "embedded"
            say(f"  ray ({where}): {len(nodes)} node(s), {total['CPU']:g} CPUs, {total['GPU']:g} GPUs; each cell "
                f"holds {cpus:g} CPU(s) and {gpus:g} GPU(s), restarted up to {self.max_retries} time(s) if its "
                "worker dies")
            yield environment
        finally:
            self._work, self._say, self._owns_ray = None, lambda line: None, False
            if connected_here:
                ray.shutdown()  # on Ctrl-C, this stops the tasks in flight (see _wait_all)

    def _cell_resources(self, nodes: Sequence[dict[str, Any]], work: CellWork) -> tuple[float, float]:
        """``(cpus, gpus)`` each cell holds, checked against the largest node: a task no node can hold
        would wait forever."""
        most_gpus = max((float(n["Resources"].get("GPU", 0)) for n in nodes), default=0.0)
        most_cpus = max((float(n["Resources"].get("CPU", 0)) for n in nodes), default=0.0)
        device = work.device.strip().lower()
        gpus = self.gpus_per_cell
        if gpus is None:
            gpus = 1.0 if device != "cpu" and most_gpus >= 1 else 0.0
        if gpus > 0 and device == "cpu":
            raise RobustkitError(f"--gpus-per-cell {gpus:g} with --device cpu: the cells would hold GPUs they do not "
                                 "use; leave out one of the two")
        if gpus > most_gpus:
            have = "has no GPU" if most_gpus == 0 else f"has at most {most_gpus:g} GPU(s) on one node"
            raise RobustkitError(f"--gpus-per-cell {gpus:g}: the Ray cluster {have}; lower --gpus-per-cell or add GPUs "
                                 "(ray start --num-gpus N)")
        if device == "cuda" and gpus == 0:
            raise RobustkitError("--device cuda: the cells hold no GPU (--gpus-per-cell 0, or a cluster without "
                                 "GPUs); give --gpus-per-cell 1, or --device cpu")
        cpus = self.cpus_per_cell if self.cpus_per_cell is not None else float(work.threads)
        if cpus > most_cpus:
            raise RobustkitError(f"--cpus-per-cell {cpus:g}: no node of the Ray cluster has {cpus:g} CPUs (at most "
                                 f"{most_cpus:g}); lower --cpus-per-cell, or --threads, which it defaults to")
        return cpus, gpus

    def run_cells(self, cells: Sequence[Cell], work: CellWork, finished: Finished, host: Any = None) -> None:
        ray = import_ray()
        task = self._remote(ray, _cell_task)
        waits_for = work.waits_for
        refs: dict[str, Any] = {}
        pending: dict[Any, Any] = {}  # a cell's record, or a piece of a cell in steps (said when it ends)
        steps_of: dict[Any, list[Any]] = {}  # a cell in steps: its first steps' refs, cancelled with it
        for cell in sorted(cells, key=lambda c: c.key in waits_for):  # a natural cell's ref exists before its users
            upstream = refs.get(waits_for.get(cell.key, ""))
            if self._shipped_work().in_pieces:
                refs[cell.key], steps_of[refs[cell.key]] = self._submit_in_steps(ray, cell, upstream)
                pending.update({ref: _Piece(cell, i) for i, ref in enumerate(steps_of[refs[cell.key]][1:])})
            else:
                refs[cell.key] = task.remote(cell.key, cell.settings, self._shipped_work(), upstream)
            pending[refs[cell.key]] = cell

        def ended(cell: Any, ref: Any) -> None:
            if isinstance(cell, _Piece):
                self._say_piece(ray, cell, ref, work)
                return
            upstream = refs.get(waits_for.get(cell.key, ""))
            try:
                record, error = ray.get(ref)
            except ray.exceptions.RayError as err:
                record, error = None, task_error(ray, err, self.max_retries)
                if upstream is not None and _failed(ray, upstream):
                    error = "its natural cell, whose weights it reuses, failed first; rerun the same command"
            finished(cell, record, error)

        _wait_all(ray, pending, ended, steps_of, cancel=not self._owns_ray)

    def _say_piece(self, ray: Any, piece: _Piece, ref: Any, work: CellWork) -> None:
        """One line for a finished piece of a cell (a failed one is said with its cell's record)."""
        try:
            result, error = ray.get(ref)
        except ray.exceptions.RayError:
            return
        said = None if error is not None or work.steps is None else work.steps.describe_piece(result)
        if said:
            label = work.labels.get(piece.cell.key, piece.cell.key)
            self._say(f"    {label}: piece {piece.index + 1}/{work.pieces} done: {said}")

    def _submit_in_steps(self, ray: Any, cell: Cell, upstream: Any) -> tuple[Any, list[Any]]:
        """Submit ``cell`` as its steps (:class:`robustkit.executors.CellSteps`): training, then every piece at
        once (each its own task, holding a cell's CPUs and GPUs), then the record; Ray starts each when what it
        takes is ready. Returns the record's ref and the refs before it."""
        work = self._shipped_work()
        prepare, piece, finish = (self._remote(ray, t) for t in (_prepare_task, _piece_task, _finish_task))
        prepared = prepare.remote(cell.key, cell.settings, work, upstream)
        pieces = [piece.remote(cell.key, cell.settings, work, prepared, i) for i in range(work.pieces)]
        return finish.remote(cell.key, cell.settings, work, prepared, *pieces), [prepared, *pieces]

    def run_tasks(self, function: Callable[..., Any], calls: Sequence[Mapping[str, Any]], shared: Mapping[str, Any],
                  work: CellWork, done: Callable[[int, Any, str | None], None]) -> None:
        ray = import_ray()
        task = self._remote(ray, _task)
        refs = {key: ray.put(value) for key, value in shared.items()}  # sent to the object store once
        # Top-level arguments, so Ray hands each worker the objects rather than references to them.
        pending = {task.remote(function, self._shipped_work(), dict(call), **refs): i for i, call in enumerate(calls)}

        def ended(i: int, ref: Any) -> None:
            try:
                result, error = ray.get(ref)
            except ray.exceptions.RayError as err:
                result, error = None, task_error(ray, err, self.max_retries)
            done(i, result, error)

        _wait_all(ray, pending, ended, cancel=not self._owns_ray)

    def _shipped_work(self) -> CellWork:
        if self._work is None:
            raise RuntimeError("RayExecutor runs tasks inside RayExecutor.session()")
        return self._work

    def _remote(self, ray: Any, function: Callable[..., Any]) -> Any:
        """``function`` as a Ray task holding a cell's CPUs and GPUs, restarted as ``max_retries`` says."""
        cpus, gpus = self._resources
        options: dict[str, Any] = {"num_cpus": cpus, "num_gpus": gpus, "max_retries": self.max_retries,
                                   "retry_exceptions": False, "runtime_env": {"env_vars": worker_environment()}}
        if gpus > 0:
            options["max_calls"] = 1  # CUDA keeps the GPUs a process first saw: a fresh worker per GPU task
        return ray.remote(**options)(function)


@dataclasses.dataclass(frozen=True)
class _Piece:
    """Piece ``index`` of a cell in steps, as the driver waits for it."""

    cell: Cell
    index: int


def _wait_all(ray: Any, pending: dict[Any, Any], ended: Callable[[Any, Any], None],
              before: Mapping[Any, Sequence[Any]] | None = None, cancel: bool = True) -> None:
    """Call ``ended(item, ref)`` as each task of ``pending`` (``{ref: item}``) ends. On Ctrl-C, with ``cancel``,
    cancel the rest and the tasks ``before`` lists for each (a cell's earlier steps); without it, leave them to
    the caller's disconnect, which stops them all. Work that keeps state (a cell's training, its finished
    shards) resumes from it next time."""
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)  # a timeout lets Ctrl-C through
            for ref in done:
                ended(pending.pop(ref), ref)
    except KeyboardInterrupt:
        if cancel:
            earlier = (r for ref in pending for r in (before or {}).get(ref, ()))
            _cancel(ray, list(dict.fromkeys([*pending, *earlier])))
        raise


def _cancel(ray: Any, refs: Sequence[Any]) -> None:
    """Cancel ``refs``: first as Ctrl-C inside each task (the training loop stops at a safe point), then by
    killing the workers still running, which races less with the replies of tasks just finishing."""
    for ref in refs:
        ray.cancel(ref, force=False)
    with contextlib.suppress(Exception):
        _, running = ray.wait(list(refs), num_returns=len(refs), timeout=CANCEL_GRACE_S)
        for ref in running:
            ray.cancel(ref, force=True)
        ray.wait(running, num_returns=len(running), timeout=CANCEL_GRACE_S)


def task_error(ray: Any, err: BaseException, retries: int) -> str:
    """One line for a task that raised or whose worker died."""
    exceptions = ray.exceptions
    if isinstance(err, exceptions.OutOfMemoryError):
        return "its node ran out of memory (Ray stopped the worker); give each cell more memory (--cpus-per-cell)"
    if isinstance(err, (exceptions.WorkerCrashedError, exceptions.NodeDiedError, exceptions.LocalRayletDiedError)):
        return (f"its worker died (killed, or its node lost) and {retries} restart(s) did not finish it; rerun the "
                "same command to continue")
    cause = getattr(err, "cause", None)
    return f"worker failed: {one_line(cause if cause is not None else err, typed=True)}"


def _failed(ray: Any, ref: Any) -> bool:
    try:
        ray.get(ref, timeout=0)
    except ray.exceptions.GetTimeoutError:
        return False
    except ray.exceptions.RayError:
        return True
    return False


def worker_environment() -> dict[str, str]:
    """The environment switches every worker gets: this process's ``ROBUSTKIT_*`` variables, progress bars off."""
    env = {k: v for k, v in os.environ.items() if k.startswith("ROBUSTKIT_")}
    env["ROBUSTKIT_PROGRESS"] = "0"  # bars of many workers would garble the driver's terminal
    return env


# --- connecting and checking the cluster -----------------------------------------------------------


def _check_device(device: str) -> None:
    spec = device.strip().lower()
    if spec.startswith("cuda:"):
        raise RobustkitError(f"--device {device} with --executor ray: a cell sees only the GPUs Ray gives it, as "
                             "cuda; use --device cuda or auto (and --gpus-per-cell)")


def _connect(ray: Any, target: str | None) -> None:
    """Join ``target``, or start Ray embedded in this process (``local``: never a cluster found by chance)."""
    quiet = {"logging_level": logging.WARNING, "log_to_driver": True}
    if target is not None:
        _check_listening(target)
    try:
        if target is None:
            ray.init(address="local", include_dashboard=False, **quiet)
        else:
            ray.init(address=target, **quiet)
    except Exception as err:
        cause = _root(err)
        if target is None:
            raise RobustkitError(f"cannot start Ray here ({one_line(cause, typed=True)})") from None
        # Ray raises the refusal itself, or a RuntimeError quoting its traceback
        if type(cause).__name__ == "AuthenticationError" or "InvalidAuthToken" in str(cause):
            raise RobustkitError(f"the Ray cluster at {target} refused this machine (token authentication): set "
                                 "RAY_AUTH_MODE=token and give the cluster's token (~/.ray/auth_token or "
                                 "RAY_AUTH_TOKEN)") from None
        raise RobustkitError(f"cannot join the Ray cluster at {target} ({one_line(cause, typed=True)}); start it "
                             "with `ray start --head`, or leave out --address to run Ray embedded") from None


def _check_listening(target: str) -> None:
    """Fail at once when nothing listens at ``HOST:PORT`` (Ray itself retries a dead address for minutes);
    ``auto`` and ``ray://`` addresses are left to Ray."""
    import socket

    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or "://" in target:
        return
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as err:
        raise RobustkitError(f"nothing answers at --address {target} ({err.strerror or type(err).__name__}); start "
                             "the cluster there with `ray start --head`, give the head node's HOST:PORT, or leave out "
                             "--address to run Ray embedded") from None


def _root(err: BaseException) -> BaseException:
    while err.__cause__ is not None:
        err = err.__cause__
    return err


def _shipped(work: CellWork, gpus: float) -> CellWork:
    """``work`` as the nodes get it: absolute paths (a worker's folder is not the driver's), and ``cpu`` for
    ``auto`` when the cells hold no GPU (they must not share one Ray did not give them)."""
    def absolute(path: str | None) -> str | None:
        return str(Path(path).expanduser().absolute()) if path else None

    files = {key: str(Path(path).expanduser().absolute()) for key, path in (work.model_files or {}).items()}
    device = "cpu" if gpus == 0 and work.device.strip().lower() == "auto" else work.device
    return dataclasses.replace(work, out_dir=work.out_dir.expanduser().absolute(), device=device,
                               data_root=absolute(work.data_root), model_files=files or None)


def _preflight(ray: Any, nodes: Sequence[dict[str, Any]], work: CellWork, cpus: float,
               gpus: float) -> dict[str, Any] | None:
    """Run :func:`_preflight_task` on every node and check them all against this machine; return the numeric
    environment of the nodes that can run a cell."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from robustkit.files import atomic_write_text

    text = secrets.token_hex(16)
    marker = work.out_dir / f"{MARKER_PREFIX}{text}"
    atomic_write_text(marker, text)
    try:
        refs = []
        for node in nodes:
            resources = node["Resources"]
            fits = float(resources.get("GPU", 0)) >= gpus and float(resources.get("CPU", 0)) >= cpus
            task = ray.remote(num_cpus=0, num_gpus=gpus if fits else 0, max_retries=1,
                              runtime_env={"env_vars": worker_environment()},
                              scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False))
            refs.append(task(_preflight_task).remote(work, (str(marker), text), fits))
        ready, late = ray.wait(refs, num_returns=len(refs), timeout=PREFLIGHT_SECONDS)
        if late:
            node = nodes[refs.index(late[0])]
            raise RobustkitError(f"node {_where(node)} did not answer the preflight check in {PREFLIGHT_SECONDS} s; "
                                 "check that it is healthy (ray status)")
        try:
            facts = ray.get(refs)
        except ray.exceptions.RayError as err:
            raise RobustkitError(f"the preflight check failed on a node: {task_error(ray, err, 1)}") from None
    finally:
        marker.unlink(missing_ok=True)
    for node, fact in zip(nodes, facts):
        fact["where"] = _where(node)
    driver = node_facts(work.data_root, work.model_files, None)
    return check_nodes(driver, facts, work.out_dir, work.data_root)


def _where(node: dict[str, Any]) -> str:
    address, name = node.get("NodeManagerAddress", "?"), node.get("NodeName") or ""
    return address if name in ("", address) else f"{address} ({name})"


def _preflight_task(work: CellWork, marker: tuple[str, str], runs_cells: bool) -> dict[str, Any]:
    """One node's :func:`robustkit.executors.preflight.node_facts`; with the numeric environment a cell would
    have there when the node can hold one (this task holds the GPUs a cell would)."""
    from robustkit.devices import numeric_environment, resolve_device

    environment = numeric_environment(resolve_device(work.device), work.threads) if runs_cells else None
    return node_facts(work.data_root, work.model_files, marker, environment)


# --- inside a worker -------------------------------------------------------------------------------


#: A task's outcome: ``(result, None)``, or ``(None, one-line error)`` for the cell's own failure.
Outcome = tuple[Any, "str | None"]


def _guarded(call: Callable[[], Any]) -> Outcome:
    """``call()`` in a worker, as an :data:`Outcome`: a RobustkitError or a CUDA out-of-memory error is the
    cell's own failure (a retry would fail the same way), reported rather than retried."""
    import torch

    from robustkit.progress import mute_lines

    mute_lines()  # the driver writes one line per cell
    try:
        return call(), None
    except RobustkitError as err:
        return None, str(err)
    except torch.cuda.OutOfMemoryError as err:
        return None, (f"CUDA out of memory on {platform.node()} ({one_line(err)}); lower the batch size, or run "
                      "fewer cells per GPU (--gpus-per-cell)")


def _cell_task(key: str, settings: dict[str, Any], work: CellWork, upstream: Any = None) -> Outcome:
    """Run one cell in a Ray worker.

    :param upstream: the result of the natural cell this one waits for (Ray resolves it first); unused.
    """
    _note_placement(work.out_dir, key)
    return _guarded(lambda: work.run(settings))


def _prepare_task(key: str, settings: dict[str, Any], work: CellWork, upstream: Any = None) -> Outcome:
    """A cell's first step (:attr:`CellWork.steps`), once its natural cell (``upstream``) is done."""
    _note_placement(work.out_dir, key)
    steps = _steps(work)
    return _guarded(lambda: work.call(steps.prepare, settings))


def _piece_task(key: str, settings: dict[str, Any], work: CellWork, prepared: Outcome, index: int) -> Outcome:
    """Piece ``index`` of a cell's middle step, once its first step is done (nothing to do if that failed)."""
    if prepared[1] is not None:
        return prepared
    _note_placement(work.out_dir, f"{key}.piece-{index}")
    steps = _steps(work)
    return _guarded(lambda: work.call(steps.piece, settings, prepared=prepared[0], index=index,
                                      count=work.pieces))


def _finish_task(key: str, settings: dict[str, Any], work: CellWork, prepared: Outcome, *pieces: Outcome) -> Outcome:
    """A cell's record from its first step and every piece (the first failure among them is the cell's)."""
    failure = next((error for _, error in (prepared, *pieces) if error is not None), None)
    if failure is not None:
        return None, failure
    steps = _steps(work)
    return _guarded(lambda: work.call(steps.finish, settings, prepared=prepared[0],
                                      pieces=[result for result, _ in pieces]))


def _steps(work: CellWork) -> CellSteps:
    if work.steps is None:
        raise RuntimeError("a cell in steps needs CellWork.steps")
    return work.steps


def _task(function: Callable[..., Any], work: CellWork, call: dict[str, Any], **shared: Any) -> Outcome:
    """One call of :meth:`RayExecutor.run_tasks` in a worker."""
    return _guarded(lambda: function(work=work, **shared, **call))


def _note_placement(out_dir: Path, key: str) -> None:
    """Write ``OUT/workers/<key>.json``: where this cell (or step of a cell) runs now: node (host name, address
    and Ray's node id, which tells apart nodes sharing a host), process, the GPUs Ray gave it."""
    import json

    import ray

    from robustkit.files import atomic_write_text

    placement = {"node": platform.node(), "address": ray.util.get_node_ip_address(),
                 "node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
                 "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
                 "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "started": time.time()}
    atomic_write_text(out_dir / WORKERS_DIR / f"{key}.json", json.dumps(placement, indent=2) + "\n")
