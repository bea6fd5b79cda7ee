"""Shared parts of the paper reproductions in ``benchmarks/reproductions/`` (not a reproduction itself).

Each reproduction runs one benchmark preset through robustkit's own protocol (resumable: a rerun
recomputes nothing that finished), copies the preset's report, then runs the paper's own analyses
on the trained models the benchmark left behind. This module holds what they share:

- :func:`parse_args` / :func:`run_preset`: the command line every ``reproduce.py`` takes and the run;
- :func:`representative`: per defense, the trained model whose clean accuracy is nearest the matched
  target (the papers' per-model analyses need real models, not interpolated points);
- :func:`load_cell_model`, :func:`test_data`: the model and the test images of a record;
- :func:`publish`: the preset's report, PNGs and leaderboard JSON copied into the results folder;
- :func:`markdown_table`, :func:`write_json`, :func:`save_figure`: result files.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def save_figure(fig: Any, path: Path, **options: Any) -> None:
    """Write a matplotlib figure as PNG atomically (never through a link left at ``path``)."""
    from robustkit.files import atomic_write

    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", **options))


def fail(message: str) -> None:
    """Stop with a one-line error and exit code 2, as the robustkit CLI does."""
    print(f"Error: {message}", file=sys.stderr)
    raise SystemExit(2)


def guarded(main: Callable[[], Any]) -> None:
    """Run a script's ``main``: robustkit's errors (a bad dataset, a damaged checkpoint...) and the scripts'
    ``SystemExit("message")`` end in one line with exit code 2."""
    from robustkit.errors import RobustkitError

    try:
        main()
    except RobustkitError as err:
        fail(str(err))
    except SystemExit as err:
        if isinstance(err.code, str):  # the scripts' own `raise SystemExit("what is missing")`
            fail(err.code)
        raise
    except KeyboardInterrupt:
        fail("interrupted; every finished benchmark cell is kept: rerun the same command to continue")


def parse_args(preset: str, description: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The options of every ``reproduce.py``: where the benchmark runs, on which data, where results go."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / f"repro-{preset}",
                        help="benchmark folder (resumable; default runs/repro-PRESET)")
    parser.add_argument("--dataset", default=None, help="run on this registered dataset instead of digits")
    parser.add_argument("--data-root", type=Path, default=None, help="folder holding the real dataset files")
    parser.add_argument("--jobs", type=int, default=1, help="benchmark cells run in parallel processes")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of every cell (default: one per core; the numbers depend on it)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--results", type=Path, default=None,
                        help="where result files go (default: results/ beside reproduce.py, results-DATASET/ "
                             "for another dataset)")
    args = parser.parse_args(argv)
    args.preset = preset
    return args


def results_dir(args: argparse.Namespace, script: str) -> Path:
    """``args.results`` or the default results folder beside ``script``; created."""
    here = Path(script).resolve().parent
    folder = args.results or here / ("results" if args.dataset is None else f"results-{args.dataset}")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def run_preset(args: argparse.Namespace) -> Any:
    """Run (or finish, or just reload) the preset's benchmark; return its :class:`BenchmarkRun`."""
    os.environ.setdefault("ROBUSTKIT_PROGRESS", "0")
    from robustkit.bench.analysis import load_run
    from robustkit.bench.report import write_report
    from robustkit.bench.runner import run_benchmark
    from robustkit.bench.spec import load_spec
    from robustkit.host import get_host

    host = get_host()
    spec = load_spec(args.preset, host, data_root=str(args.data_root) if args.data_root else None,
                     dataset=args.dataset)
    summary = run_benchmark(spec, args.out, host, jobs=args.jobs, device=args.device, threads=args.threads)
    if summary.failed:
        name, error = next(iter(summary.failed.items()))
        fail(f"{len(summary.failed)} cells failed (first: {name}: {error}); the others are recorded in "
             f"{args.out}; fix the cause and rerun")
    table, _ = write_report(args.out)
    print(table)
    return load_run(args.out)


def target_accuracy(run: Any) -> tuple[str, float]:
    """The first matching target of the run: its name and clean accuracy."""
    target = run.analysis().targets[0]
    if target.value is None:
        raise SystemExit(f"the target {target.name!r} has no finished cell; rerun the benchmark")
    return target.name, target.value


def representative(run: Any, label: str, target: float) -> dict[str, Any]:
    """The record of ``label`` whose clean accuracy is nearest ``target`` (ties: the smaller knob value)."""
    records = [r for r in run.records if r["defense"] == label]
    if not records:
        raise SystemExit(f"{label!r} has no finished cell in {run.root}; rerun the benchmark")
    return min(records, key=lambda r: (abs(r["clean_accuracy"] - target), r["knob_value"] or 0))


def representatives(run: Any, labels: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """:func:`representative` for every defense (or ``labels``) at the run's first target."""
    _, target = target_accuracy(run)
    labels = labels or [d["label"] for d in run.benchmark["defenses"]]
    return {label: representative(run, label, target) for label in labels}


def describe(record: Mapping[str, Any]) -> str:
    """``label (knob=value)`` for tables."""
    if record.get("knob"):
        return f"{record['defense']} ({record['knob']}={record['knob_value']:g})"
    return record["defense"]


def load_cell_model(run: Any, record: Mapping[str, Any], device: Any = "cpu") -> Any:
    """The trained model of ``record`` (its published weights), in eval mode on ``device``."""
    from robustkit.checkpoints import load_model

    # The training folder: load_model picks the epoch the run kept (best or last) and its EMA weights if any.
    return load_model(run.root / "train" / record["training"]["train_key"], device=device)


def test_data(run: Any, n: int | None, *, data_root: Path | None = None, device: Any = "cpu",
              offset: int = 0) -> tuple[Any, Any]:
    """Test images and labels ``offset .. offset + n`` of the run's dataset, on ``device``."""
    from robustkit.data import stack
    from robustkit.host import get_host

    dataset = get_host().datasets.create(run.benchmark["dataset"]["name"], run.benchmark["dataset"].get("params") or {},
                                         root=data_root)
    test = dataset.test
    end = len(test) if n is None else min(len(test), offset + n)
    images, labels = stack(_Slice(test, offset, end))
    return images.to(device), labels.to(device)


class _Slice:
    """Items ``start .. end`` of a dataset, as a dataset."""

    def __init__(self, data: Any, start: int, end: int) -> None:
        self.data, self.start, self.end = data, start, end

    def __len__(self) -> int:
        return max(0, self.end - self.start)

    def __getitem__(self, i: int) -> Any:
        return self.data[self.start + i]


def publish(run: Any, results: Path) -> None:
    """Copy the benchmark's report and PNGs into ``results`` and export its leaderboard JSON there."""
    from robustkit.bench.leaderboard import export_leaderboard

    for name in ("report.md", "robustness_curves.png", "accuracy_vs_eps.png"):
        if (run.root / name).exists():
            shutil.copyfile(run.root / name, results / name)
    write_json(export_leaderboard(run.root), results / "leaderboard.json")


def write_json(obj: Any, path: Path) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; floats print with 4 significant digits."""
    def cell(value: Any) -> str:
        if value is None:
            return "-"
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
