"""``robustkit bench list|show|run|report``: the accuracy-matched benchmark."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import click

from robustkit.commands.group import cli, echo_json, echo_table
from robustkit.commands.common import data_root_option, device_option, output_folder, threads_option
from robustkit.commands.distributed import chosen_executor, eval_shards_option, executor_options
from robustkit.errors import RobustkitError
from robustkit.host import get_host


@cli.group()
def bench() -> None:
    """Accuracy-matched benchmarks: train every defense over its knob sweep, attack, compare at equal clean accuracy.

    \b
    Examples:
      robustkit bench list
      robustkit bench run quick --out runs/quick
      robustkit bench report runs/quick
      robustkit bench run my-spec.toml --out runs/mine --jobs 2
    """


@bench.command(name="list")
@click.argument("pattern", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_presets(pattern: str | None, as_json: bool) -> None:
    """List benchmark presets (from plugins), optionally filtered by a wildcard PATTERN.

    \b
    Examples:
      robustkit bench list
      robustkit bench list 'rlfat*'
    """
    entries = get_host().benchmarks.list(pattern)
    if as_json:
        echo_json([{"name": e.name, "plugin": e.plugin, "description": e.description} for e in entries])
        return
    if not entries:
        click.echo(f"no benchmark presets match {pattern!r}" if pattern else "no benchmark presets registered")
        return
    echo_table([[e.name, e.plugin, e.description] for e in entries], ["preset", "plugin", "description"])


def _load(spec: str, data_root: Path | None, dataset: str | None):
    from robustkit.bench.spec import load_spec

    return load_spec(spec, get_host(), data_root=str(data_root) if data_root else None, dataset=dataset)


def spec_data_options(f: Callable) -> Callable:
    """``--dataset`` (run a spec on another dataset) and ``--data-root`` (overrides the spec's dataset.root)."""
    f = click.option("--dataset", "dataset", default=None,
                     help="Run the spec on this registered dataset instead (e.g. mnist with --data-root).")(f)
    return data_root_option(f)


@bench.command()
@click.argument("spec")
@spec_data_options
def show(spec: str, data_root: Path | None, dataset: str | None) -> None:
    """Validate SPEC (a preset name or a .toml/.yaml file) and print its cells, without running anything.

    \b
    Examples:
      robustkit bench show quick
      robustkit bench show my-spec.toml
    """
    loaded = _load(spec, data_root, dataset)
    click.echo(f"{loaded.name}: {loaded.description}")
    click.echo(f"dataset {loaded.dataset['name']}, model {loaded.model['name']}, {loaded.training['epochs']} epochs, "
               f"threat {loaded.threat['norm']} eps {loaded.threat['eps']:g}, seeds {list(loaded.seeds)}")
    click.echo(f"attacks: {', '.join(f'{a.label} ({a.name})' for a in loaded.attacks)}")
    click.echo(f"targets: {', '.join(str(t) for t in loaded.targets)}; ranked by {loaded.rank_by}")
    click.echo(f"protocol fingerprint {loaded.fingerprint()}, spec hash {loaded.spec_hash()}\n")
    rows = [[c.defense, f"{c.knob}={c.value}" if c.knob else "-", str(c.seed), c.key] for c in loaded.cells()]
    echo_table(rows, ["defense", "knob", "seed", "cell key"])


@bench.command()
@click.argument("spec")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Results folder; default runs/bench-NAME. Rerunning into it skips finished cells.")
@executor_options("cell")
@eval_shards_option("each cell's evaluation", kept="OUT/train/<training>/shards")
@threads_option(default_help="one per core", note=" Every cell uses it; CPU numbers depend on it, so a results "
                                                  "folder keeps one value.")
@spec_data_options
@device_option
@click.option("--report/--no-report", default=True, show_default=True, help="Write the report when done.")
def run(spec: str, out_dir: Path | None, executor_name: str, jobs: int | None, address: str | None,
        gpus_per_cell: float | None, cpus_per_cell: float | None, max_retries: int | None, eval_shards: int | None,
        threads: int | None, data_root: Path | None, dataset: str | None, device: str, report: bool) -> None:
    """Train and evaluate every cell of SPEC (a preset name or a .toml/.yaml file), resumably.

    Each finished cell (defense x knob value x seed) is recorded atomically under --out; killing the
    run and running the same command again recomputes nothing that finished. Cells whose settings a
    changed spec leaves untouched are reused. With --executor ray the cells are Ray tasks: on Ray
    embedded here, or on a cluster (`ray start` on every node, --out on a folder they all share);
    --eval-shards K also splits each cell's evaluation into K tasks that run at once.

    \b
    Examples:
      robustkit bench run quick
      robustkit bench run quick --out runs/quick --jobs 2 --threads 1
      robustkit bench run my-spec.yaml --data-root ~/data --device cuda
      robustkit bench run localized-at --dataset mnist --data-root ~/data --out runs/lat-mnist
      robustkit bench run quick --executor ray --threads 1
      robustkit bench run my-spec.yaml --executor ray --address auto --gpus-per-cell 1 --out /shared/runs/mine
      robustkit bench run cifar-aa.toml --executor ray --address auto --eval-shards 8 --out /shared/runs/aa
    """
    from robustkit.bench.runner import run_benchmark

    host = get_host()
    executor = chosen_executor(host, executor_name, jobs=jobs, address=address, gpus_per_cell=gpus_per_cell,
                               cpus_per_cell=cpus_per_cell, max_retries=max_retries)
    loaded = _load(spec, data_root, dataset)
    out_dir = out_dir or Path("runs") / (f"bench-{loaded.name}" + (f"-{dataset}" if dataset else ""))
    output_folder(out_dir, create=False)  # created once the data are found
    summary = run_benchmark(loaded, out_dir, host, device=device, threads=threads, executor=executor,
                            eval_shards=eval_shards or 1, say=lambda line: click.echo(line, err=True))
    if report and summary.total - len(summary.failed) > 0:
        _report(out_dir)
    if summary.failed:
        raise RobustkitError(f"{len(summary.failed)} of {summary.total} cells failed (first: "
                             f"{next(iter(summary.failed.items()))[0]}: {next(iter(summary.failed.values()))}); "
                             f"the others are recorded in {out_dir}; fix the cause and rerun the same command")


@bench.command(name="report")
@click.argument("out_dir", type=click.Path(path_type=Path))
def report_command(out_dir: Path) -> None:
    """Print the accuracy-matched comparison of a benchmark folder; write report.md, report.html (one
    self-contained page: sortable tables, audit numbers, provenance, plots embedded) and PNG plots into it.

    \b
    Examples:
      robustkit bench report runs/quick
      chromium runs/quick/report.html
    """
    _report(out_dir)


def _report(out_dir: Path) -> None:
    from robustkit.bench.report import write_report

    text, files = write_report(out_dir)
    click.echo("")
    click.echo(text)
    for path in files:
        click.echo(f"wrote {path}")
