"""Executors: where a benchmark's cells, or one evaluation's shards, run (this process, local processes, a Ray
cluster, ...).

An executor is registered through the ``register_executors`` hook (:mod:`robustkit.hookspecs`) like any other
component, so a plugin can add Dask or Slurm later. The essential set registers two
(:mod:`robustkit.essentials.executors`): ``local`` (the default: this process, or ``jobs`` local processes)
and ``ray`` (:mod:`robustkit.executors.ray_executor`, needing the optional extra ``robustkit[ray]``).

The contract, whatever runs the cells:

- The driver (:func:`robustkit.bench.runner.run_benchmark`) stays the single writer of records: an executor
  hands each finished cell's record (or its one-line error) to the ``finished`` callback, in the driver's
  process, and never writes a record itself.
- A cell that reuses the weights of a natural cell in the same run (the audit's transfer surrogate, a
  defense whose parameter is ``@natural``) starts after that cell (:attr:`CellWork.waits_for`).
- Every cell runs with the same torch thread count (``CellWork.threads``), so the numbers do not depend
  on the executor.
- Ctrl-C: the executor raises ``KeyboardInterrupt``, and the work in flight is stopped by the time
  :meth:`Executor.session` has exited (by the executor, or by the session's end); the next run resumes.

Besides cells, :meth:`Executor.run_tasks` runs independent calls of one function (the shards of an evaluation,
:mod:`robustkit.sharding`) under the same rules.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Mapping, Protocol, Sequence

from robustkit.errors import RobustkitError
from robustkit.params import Param


class Cell(Protocol):
    """What an executor reads of a benchmark cell (:class:`robustkit.bench.spec.Cell`): executors know nothing
    else of benchmarks, so a plugin's executor needs only this module."""

    @property
    def key(self) -> str: ...

    @property
    def settings(self) -> Mapping[str, Any]: ...


#: ``finished(cell, record, error)``: exactly one of ``record`` and ``error`` is None.
Finished = Callable[["Cell", "dict[str, Any] | None", "str | None"], None]

#: The executor ``bench run`` uses unless ``--executor`` names another.
DEFAULT_EXECUTOR = "local"


def nothing_to_say(result: Any) -> None:
    """:attr:`CellSteps.describe_piece` of steps that say nothing of their pieces (module-level: local worker
    processes pickle the steps by reference)."""
    return None


@dataclass(frozen=True)
class CellSteps:
    """A cell as three steps, so that its middle one can spread over workers (``bench run --eval-shards K``:
    train, evaluate in K shards, finish the record). Each is a module-level function called like ``run_cell``,
    ``step(settings, out_dir, device=, data_root=, host=, threads=, model_files=, **extra)``:

    :param prepare: the first step (training); returns what the others take as ``prepared`` (picklable).
    :param piece: piece ``index`` of ``count`` (``prepared=``, ``index=``, ``count=``): independent of the others,
        so they may run at once anywhere; returns what ``finish`` takes (picklable).
    :param finish: the record, from ``prepared=`` and ``pieces=`` (every piece's result, in order).
    :param describe_piece: a finished piece's result in a few words, for the driver's progress line when pieces
        end apart (e.g. ``"batches 0-15 on gpu-3 (cuda), 42 s"``); None for a piece with nothing to say.
    """

    prepare: Callable[..., Any]
    piece: Callable[..., Any]
    finish: Callable[..., dict[str, Any]]
    describe_piece: Callable[[Any], str | None] = nothing_to_say


@dataclass(frozen=True)
class CellWork:
    """What every cell of one run needs besides its settings: where, on what, with how many threads.

    :param out_dir: the benchmark's output folder (records, ``train/``).
    :param device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``, as given to ``bench run``.
    :param threads: torch CPU threads of every cell (part of the numeric environment).
    :param data_root: where the dataset lies, if not embedded.
    :param model_files: where the spec's own model file and weights lie (None for a registered model).
    :param run_cell: the function that runs one cell (:func:`robustkit.bench.cells.run_cell`); a module-level
        function, since process pools and clusters send it by reference. None for work that is not cells
        (:meth:`Executor.run_tasks`).
    :param waits_for: ``{cell key: key of the cell it must wait for}`` (a cell that reuses the natural model's
        weights waits for the natural cell: :func:`robustkit.bench.runner.natural_dependencies`); an executor
        that runs cells at once must honour it.
    :param steps: the cell as three steps (:class:`CellSteps`), used when ``pieces`` > 1.
    :param labels: ``{cell key: how people name the cell}``, for progress lines.
    :param pieces: how many pieces each cell's middle step is cut into (1: cells run whole, by ``run_cell``).
        :meth:`run` runs the pieces one after another; an executor may run them at once (``ray`` does).
    """

    out_dir: Path
    device: str
    threads: int
    data_root: str | None
    model_files: Mapping[str, str] | None
    run_cell: Callable[..., dict[str, Any]] | None = None
    waits_for: Mapping[str, str] = field(default_factory=dict)
    steps: CellSteps | None = None
    pieces: int = 1
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def in_pieces(self) -> bool:
        """Whether each cell runs as :class:`CellSteps` with its middle step in ``pieces`` pieces."""
        return self.steps is not None and self.pieces > 1

    def run(self, settings: Mapping[str, Any], host: Any = None) -> dict[str, Any]:
        """Run one cell here and return its record (raises what the cell raises): whole, or step by step with
        its pieces one after another."""
        if self.in_pieces:
            assert self.steps is not None
            prepared = self.call(self.steps.prepare, settings, host)
            pieces = [self.call(self.steps.piece, settings, host, prepared=prepared, index=i, count=self.pieces)
                      for i in range(self.pieces)]
            return self.call(self.steps.finish, settings, host, prepared=prepared, pieces=pieces)
        if self.run_cell is None:
            raise RuntimeError("this work runs no cells: give CellWork a run_cell")
        return self.call(self.run_cell, settings, host)

    def call(self, step: Callable[..., Any], settings: Mapping[str, Any], host: Any = None, **extra: Any) -> Any:
        """``step(settings, out_dir, ...)`` with where and how this work runs (``run_cell`` or a :class:`CellSteps`
        step; ``extra`` goes to the step)."""
        return step(settings, str(self.out_dir), device=self.device, data_root=self.data_root, host=host,
                    threads=self.threads, model_files=dict(self.model_files) if self.model_files else None, **extra)


class Executor(ABC):
    """Runs a benchmark's cells; see the module notes for the contract.

    Subclasses declare their options as ``params`` (:class:`robustkit.params.Param`, checked before anything
    starts; ``bench run`` maps each ``--option-name`` to the parameter ``option_name``) and take them as
    keyword arguments.
    """

    name: ClassVar[str] = ""
    params: ClassVar[tuple[Param, ...]] = ()

    def describe(self) -> str:
        """Where the cells will run, for the run's first line (e.g. ``" on 2 processes"``; may be empty)."""
        return ""

    def known_environment(self, work: CellWork) -> dict[str, Any] | None:
        """The numeric environment the cells will run in, when it is known without starting anything
        (:func:`robustkit.devices.numeric_environment`); None when only the workers can tell."""
        from robustkit.devices import numeric_environment, resolve_device

        return numeric_environment(resolve_device(work.device), work.threads)

    @contextlib.contextmanager
    def session(self, work: CellWork, say: Callable[[str], None]) -> Iterator[dict[str, Any]]:
        """Get ready to run cells (start workers, join a cluster, check it) and yield the numeric environment
        the cells will run in; release everything on exit. Entered only when there are cells to run."""
        environment = self.known_environment(work)
        if environment is None:
            raise NotImplementedError(f"executor {self.name} must say its cells' environment in session()")
        yield environment

    @abstractmethod
    def run_cells(self, cells: Sequence[Cell], work: CellWork, finished: Finished, host: Any = None) -> None:
        """Run every cell of ``cells`` (none recorded yet), calling ``finished`` in this process as each ends.

        :param host: the driver's plugin host, for cells run in this process (other processes build their own).
        :raises KeyboardInterrupt: on Ctrl-C; the cells in flight are stopped before the session ends.
        """


    def run_tasks(self, function: Callable[..., Any], calls: Sequence[Mapping[str, Any]], shared: Mapping[str, Any],
                  work: CellWork, done: Callable[[int, Any, str | None], None]) -> None:
        """Run ``function(work=work, **shared, **call)`` for every call: independent pieces of one job (the shards
        of an evaluation), inside :meth:`session`. ``done(i, result, error)`` is called in this process as call
        ``i`` ends; a :class:`~robustkit.errors.RobustkitError` becomes its one-line ``error``. ``shared`` holds
        what every call takes (a model, the data): sent once, not once per call.

        This default runs them here, one after the other.

        :raises KeyboardInterrupt: on Ctrl-C; the calls in flight are stopped before the session ends.
        """
        for i, call in enumerate(calls):
            try:
                result = function(work=work, **shared, **call)
            except RobustkitError as err:
                done(i, None, str(err))
                continue
            done(i, result, None)


def create_executor(host: Any, name: str, options: Mapping[str, Any]) -> Executor:
    """The executor ``name`` with the command-line ``options`` that were given (None: not given); the keys of
    ``options`` are the options the command offers.

    :raises RobustkitError: an unknown executor, an option it does not take (``--address`` for ``local``),
        a value out of range; each in one line naming the option.
    """
    entry = host.executors.get(name)
    declared = {p.name for p in entry.declared_params()}
    given = {key: value for key, value in options.items() if value is not None}
    for key in given:
        if key not in declared:
            takes = ", ".join(f"--{p.replace('_', '-')}" for p in sorted(declared & set(options))) or "no options here"
            raise RobustkitError(f"--{key.replace('_', '-')} does not apply to --executor {entry.name} (it takes "
                                 f"{takes})")
    return host.executors.create(name, given)
