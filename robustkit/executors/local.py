"""The default executor: cells in this process (``jobs=1``) or in ``jobs`` local worker processes.

Natural cells run first and to the end when cells run in parallel: the others' audits reuse their weights
as transfer surrogates (a barrier; :mod:`robustkit.executors.ray_executor` waits per cell instead).
"""

from __future__ import annotations

import os
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any, Callable, Mapping, Sequence

from robustkit.errors import RobustkitError
from robustkit.executors import Cell, CellWork, Executor, Finished
from robustkit.params import Param
from robustkit.progress import lines_muted, mute_lines


class LocalExecutor(Executor):
    """Cells in this process, or in local worker processes (``--jobs N``)."""

    name = "local"
    params = (Param("jobs", int, 1, "cells run at once, each in its own process (1: in this process)", low=1),)

    def __init__(self, jobs: int = 1):
        self.jobs = jobs

    def describe(self) -> str:
        return f" on {self.jobs} processes" if self.jobs > 1 else ""

    def session(self, work: CellWork, say: Callable[[str], None]) -> Any:
        cores = os.cpu_count() or 1
        if self.jobs > 1 and self.jobs * work.threads > cores:
            say(f"  note: {self.jobs} processes x {work.threads} threads on {cores} cores; --threads "
                f"{max(1, cores // self.jobs)} runs faster, in a new --out folder (the thread count changes the numbers)")
        return super().session(work, say)

    def run_cells(self, cells: Sequence[Cell], work: CellWork, finished: Finished, host: Any = None) -> None:
        if self.jobs <= 1:
            _run_here(cells, work, finished, host)
        else:
            _run_parallel(cells, work, self.jobs, finished)


def _run_here(cells: Sequence[Cell], work: CellWork, finished: Finished, host: Any) -> None:
    for cell in cells:
        try:
            with lines_muted():  # one "done" line per cell, not one per epoch and evaluation inside it
                record = work.run(cell.settings, host)
        except RobustkitError as err:
            if interrupted(err):  # the training loop turns Ctrl-C into a RobustkitError: stop, don't skip
                raise KeyboardInterrupt from None
            finished(cell, None, str(err))
            continue
        finished(cell, record, None)


def interrupted(err: BaseException) -> bool:
    """Whether ``err`` was raised while handling a KeyboardInterrupt."""
    context = err.__context__
    while context is not None:
        if isinstance(context, KeyboardInterrupt):
            return True
        context = context.__context__
    return False


def _worker_init() -> None:
    os.environ["ROBUSTKIT_PROGRESS"] = "0"  # bars of several processes would garble the terminal
    mute_lines()  # the driver writes one line per cell; a worker writes none of its own


def _worker(work: CellWork, settings: Mapping[str, Any]) -> tuple[Any, str | None]:
    try:
        return work.run(settings), None
    except RobustkitError as err:
        return None, str(err)


def _run_parallel(cells: Sequence[Cell], work: CellWork, jobs: int, finished: Finished) -> None:
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # fork after torch has started threads can deadlock
    naturals = [c for c in cells if c.settings["defense"]["name"] == "natural"]
    rest = [c for c in cells if c.settings["defense"]["name"] != "natural"]
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_worker_init) as pool:
        try:
            # Natural cells first and to the end: the others' audits reuse their weights as transfer surrogates.
            for batch in (naturals, rest):
                pending: dict[Future[Any], Cell] = {pool.submit(_worker, work, c.settings): c for c in batch}
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
