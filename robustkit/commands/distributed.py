"""The command line's side of executors: ``--executor NAME`` and the built-in executors' options (``bench run``,
``attack``), and ``attack --eval-shards K`` (:mod:`robustkit.sharding`).

Each option maps to the executor parameter of the same name (``--gpus-per-cell`` to ``gpus_per_cell``); one an
executor does not take is refused in one line (:func:`robustkit.executors.create_executor`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import click

from robustkit.errors import RobustkitError

from robustkit.executors import DEFAULT_EXECUTOR, Executor, create_executor
from robustkit.executors.ray_executor import RAY_EXTRA

#: The parameters these options fill, by the command function's argument name.
OPTION_NAMES = ("jobs", "address", "gpus_per_cell", "cpus_per_cell", "max_retries")


def executor_options(what: str, jobs: bool = True) -> Callable[[Callable], Callable]:
    """Add ``--executor`` and the built-in executors' options; ``what`` names the unit of work ("cell", "shard").

    :param jobs: add ``--jobs`` (the local executor's processes).
    """
    def decorate(f: Callable) -> Callable:
        options = [
            click.option("--executor", "executor_name", default=DEFAULT_EXECUTOR, show_default=True, metavar="NAME",
                         help="What runs the work: local (this machine) or ray (a Ray cluster, or Ray embedded here; "
                              f"{RAY_EXTRA}); plugins may add others. The numbers do not depend on it."),
            click.option("--address", default=None, metavar="auto|HOST:PORT",
                         help="ray: the cluster to join (auto: the one `ray start` runs on this machine)  [default: "
                              "RAY_ADDRESS, else Ray embedded in this process]."),
            click.option("--gpus-per-cell", type=click.FloatRange(min=0), default=None, metavar="G",
                         help=f"ray: GPUs each {what} holds; a fraction shares one  [default: 1 when the cluster has "
                              "GPUs and --device is not cpu, else 0]."),
            click.option("--cpus-per-cell", type=click.FloatRange(min=0, min_open=True), default=None, metavar="C",
                         help=f"ray: CPUs each {what} holds  [default: --threads]."),
            click.option("--max-retries", type=click.IntRange(min=0), default=None, metavar="R",
                         help=f"ray: restarts of a {what} whose worker died (killed, node lost); 0 reports it failed  "
                              "[default: 3]."),
        ]
        if jobs:
            options.insert(1, click.option("--jobs", type=click.IntRange(min=1), default=None,
                                           help=f"local: {what}s to run in parallel processes  [default: 1]."))
        for option in reversed(options):
            f = option(f)
        return f
    return decorate


def chosen_executor(host: Any, executor_name: str, **given: Any) -> Executor:
    """The executor the options name, built with the options given (refusing those it does not take); ``given``
    holds every option of :data:`OPTION_NAMES` the command offers (None: not given)."""
    unknown = set(given) - set(OPTION_NAMES)
    if unknown:
        raise TypeError(f"not executor options: {', '.join(sorted(unknown))}")
    return create_executor(host, executor_name, given)


def eval_shards_option(what: str = "the evaluation", kept: str = "OUT/shards") -> Callable[[Callable], Callable]:
    """``--eval-shards K``: split ``what`` into K shards, kept in ``kept`` as they finish."""
    return click.option("--eval-shards", type=click.IntRange(min=1), default=None, metavar="K",
                        help=f"Split {what} into K shards of whole batches, run by --executor (ray: as tasks at once, "
                             f"on a cluster; local: one after another); finished shards are kept in {kept}, so a "
                             "killed run resumes. The numbers equal one run's. Give more shards than GPUs.")


def check_sharding(executor_name: str, eval_shards: int | None, out_dir: Path | None, state_path: Path | None) -> None:
    """Refuse, in one line, what ``attack`` cannot do with (or without) ``--eval-shards``."""
    if eval_shards is None:
        if executor_name != "local":
            raise RobustkitError(f"--executor {executor_name} runs an evaluation in shards: give --eval-shards K too")
        return
    if out_dir is None:
        raise RobustkitError("--eval-shards needs --out: finished shards are kept there (OUT/shards), so a killed run "
                             "resumes")
    if state_path is not None:
        raise RobustkitError("--state and --eval-shards: each shard is its own resumable piece; give one of them")


def evaluate_in_shards(host: Any, executor_name: str, options: dict[str, Any], model: Any, dataset: Any,
                       attacks: Any, **settings: Any) -> tuple[Any, list[dict[str, Any]]]:
    """``robustkit.sharding.evaluate_sharded`` with the executor the options name, saying each shard on stderr."""
    from robustkit.sharding import evaluate_sharded

    executor = chosen_executor(host, executor_name, **options)
    return evaluate_sharded(model, dataset, attacks, executor=executor, say=lambda line: click.echo(line, err=True),
                            **settings)
