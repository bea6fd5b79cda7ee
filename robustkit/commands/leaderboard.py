"""``robustkit leaderboard export|validate|merge``: leaderboard JSON from benchmark runs."""

from __future__ import annotations

import json
from pathlib import Path

import click

from robustkit.commands.group import cli
from robustkit.files import atomic_write_text


@cli.group()
def leaderboard() -> None:
    """Leaderboard JSON: export a benchmark run, validate a file, merge files from several machines.

    \b
    Examples:
      robustkit leaderboard export runs/quick -o quick.json
      robustkit leaderboard validate quick.json
      robustkit leaderboard merge machine-a.json machine-b.json -o merged.json
    """


@leaderboard.command()
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="JSON file to write.")
def export(out_dir: Path, output: Path) -> None:
    """Export the benchmark folder OUT_DIR as a leaderboard ranked by matched robustness.

    Each entry keeps every raw point, every matched reading, the audit flags and provenance
    (versions, spec hash, protocol fingerprint, seeds, n_examples, device, runtime).

    \b
    Examples:
      robustkit leaderboard export runs/quick -o quick.json
    """
    from robustkit.bench.leaderboard import export_leaderboard

    doc = export_leaderboard(out_dir)
    atomic_write_text(output, json.dumps(doc, indent=2) + "\n")
    _summary(doc)
    click.echo(f"wrote {output}")


@leaderboard.command()
@click.argument("path", type=click.Path(path_type=Path))
def validate(path: Path) -> None:
    """Check a leaderboard file against the shipped JSON schema.

    \b
    Examples:
      robustkit leaderboard validate quick.json
    """
    from robustkit.leaderboard import validate_leaderboard

    doc = validate_leaderboard(path)
    click.echo(f"{path}: valid ({len(doc['entries'])} entries)")


@leaderboard.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="JSON file to write.")
def merge(paths: tuple[Path, ...], output: Path) -> None:
    """Pool benchmark leaderboards from several machines (same protocol fingerprint) and re-rank.

    Points of the same defense are combined (more seeds, more knob values) and read again at the
    targets; files made under a different protocol are refused.

    \b
    Examples:
      robustkit leaderboard merge seed0.json seed1.json -o merged.json
    """
    from robustkit.bench.leaderboard import merge_leaderboards
    from robustkit.leaderboard import validate_leaderboard

    if len(paths) < 2:
        raise click.UsageError("give at least two files to merge")
    doc = merge_leaderboards([(str(p), validate_leaderboard(p)) for p in paths])
    atomic_write_text(output, json.dumps(doc, indent=2) + "\n")
    _summary(doc)
    click.echo(f"wrote {output}")


def _summary(doc: dict) -> None:
    for entry in doc["entries"]:
        flags = ", ".join(entry.get("audit", {}).get("flags", [])) or "none"
        if "target_acc" not in entry:  # a file of single evaluations
            robust = "n/a" if entry.get("robust_acc") is None else f"{entry['robust_acc']:.2f}%"
            click.echo(f"{entry['defense']}: {robust} at clean {entry['clean_acc']:.2f}% (audit flags: {flags})")
            continue
        if entry.get("robust_acc") is None:
            reading = (f"cannot reach the target {entry['target_acc']:.2f}% (best model {entry['clean_acc']:.2f}% "
                       "clean)")
        else:
            interval = entry.get("robust_acc_interval")
            bounds = f" [{interval[0]:.2f}, {interval[1]:.2f}]" if interval else ""
            reading = (f"{entry['robust_acc']:.2f}%{bounds} at target {entry['target_acc']:.2f}% "
                       f"(source model {entry['clean_acc']:.2f}% clean"
                       + (", exceeds the target" if entry.get("reading_status") == "exceeds target" else "") + ")")
        seeds = entry.get("seeds_in_range")
        in_range = f", seeds in range {seeds['n']}/{seeds['of']}" if seeds else ""
        click.echo(f"{entry.get('rank_label', '-')}  {entry['defense']}: {reading}{in_range}, audit flags: {flags}")
