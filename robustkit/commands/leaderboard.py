"""``robustkit leaderboard export|validate|merge|import``: leaderboard JSON from benchmark runs, and
RobustBench model_info files in and out (:mod:`robustkit.robustbench_format`)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from robustkit.commands.group import cli
from robustkit.files import atomic_write_text


@cli.group()
def leaderboard() -> None:
    """Leaderboard JSON: export a benchmark run, validate a file, merge files from several machines,
    import or export RobustBench model_info files.

    \b
    Examples:
      robustkit leaderboard export runs/quick -o quick.json
      robustkit leaderboard validate quick.json
      robustkit leaderboard merge machine-a.json machine-b.json -o merged.json
      robustkit leaderboard import model_info/cifar10/Linf/*.json --from robustbench -o published.json
      robustkit leaderboard export runs/quick --format robustbench -o model_info
    """


@leaderboard.command()
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="JSON file to write; with --format robustbench, the folder to write model_info files into.")
@click.option("--format", "fmt", type=click.Choice(["robustkit", "robustbench"]), default="robustkit",
              show_default=True, help="robustkit: one leaderboard JSON file; robustbench: one RobustBench "
                                      "model_info JSON per trained model, in OUTPUT/<dataset>/<Linf|L2>/.")
def export(out_dir: Path, output: Path, fmt: str) -> None:
    """Export the benchmark folder OUT_DIR as a leaderboard ranked by matched robustness.

    Each entry keeps every raw point, every matched reading, the audit flags and provenance
    (versions, spec hash, protocol fingerprint, seeds, n_examples, device, runtime).

    With --format robustbench, write one RobustBench model_info file per trained model instead
    (accuracies as percent strings, eps as "8/255"; autoattack_acc only from standard AutoAttack,
    otherwise the suite's worst case in external with a footnote naming the attacks). OUT_DIR may
    also be a leaderboard JSON file (a benchmark export, or RobustBench entries imported earlier).

    \b
    Examples:
      robustkit leaderboard export runs/quick -o quick.json
      robustkit leaderboard export runs/quick --format robustbench -o model_info
    """
    if fmt == "robustbench":
        from robustkit.robustbench_format import export_model_infos

        written = export_model_infos(out_dir, output)
        for path in written:
            click.echo(f"wrote {path}")
        click.echo(f"{len(written)} RobustBench model_info file(s) under {output}")
        return
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
    published = f", {len(doc['published'])} published beside them" if doc.get("published") else ""
    click.echo(f"{path}: valid ({len(doc['entries'])} entries{published})")


@leaderboard.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="JSON file to write.")
def merge(paths: tuple[Path, ...], output: Path) -> None:
    """Pool benchmark leaderboards from several machines (same protocol fingerprint) and re-rank.

    Points of the same defense are combined (more seeds, more knob values) and read again at the
    targets; files made under a different protocol are refused. Files written by `leaderboard
    import` (RobustBench's published numbers) go beside the ranked entries, under "published":
    same dataset and threat model, never ranked with them (they were not measured under this protocol).

    \b
    Examples:
      robustkit leaderboard merge seed0.json seed1.json -o merged.json
      robustkit leaderboard merge quick.json published.json -o side-by-side.json
    """
    from robustkit.leaderboard import validate_leaderboard
    from robustkit.robustbench_format import merge_with_published

    if len(paths) < 2:
        raise click.UsageError("give at least two files to merge")
    doc = merge_with_published([(str(p), validate_leaderboard(p)) for p in paths])
    atomic_write_text(output, json.dumps(doc, indent=2) + "\n")
    _summary(doc)
    click.echo(f"wrote {output}")


@leaderboard.command("import")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--from", "source", type=click.Choice(["robustbench"]), required=True,
              help="the format of FILES: robustbench (model_info/<dataset>/<threat>/<ModelId>.json).")
@click.option("--threat", type=click.Choice(["Linf", "L2", "corruptions"], case_sensitive=False), default=None,
              help="the threat model of FILES; by default taken from their folder (Linf/, L2/, corruptions/).")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="JSON file to write.")
def import_(files: tuple[Path, ...], source: str, threat: str | None, output: Path) -> None:
    """Read RobustBench model_info FILES (one dataset and threat model) into one leaderboard.

    Accuracies ("91.08") become numbers in percent and eps ("8/255") a number; robust_acc is
    autoattack_acc, and external, unreliable and footnote are kept. Entries are marked
    source "robustbench": reported numbers, without per-example outcomes or intervals. Merge the
    file with a benchmark leaderboard to show them beside your own (not ranked with them).

    \b
    Examples:
      robustkit leaderboard import model_info/cifar10/Linf/*.json --from robustbench -o published.json
      robustkit leaderboard import MyModel.json --from robustbench --threat Linf -o one.json
    """
    from robustkit.robustbench_format import import_model_infos, write_document

    doc = import_model_infos(files, threat=threat,
                             warn=lambda message: click.echo(f"robustkit: warning: {message}", err=True))
    write_document(output, doc)
    _summary(doc)
    click.echo(f"wrote {output} ({len(doc['entries'])} entries imported from RobustBench)")


def _summary(doc: dict) -> None:
    for entry in doc["entries"]:
        if entry.get("source") == "robustbench":
            click.echo(f"{entry['defense']}: {_published(entry)}")
            continue
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
    if doc.get("published"):
        eps = doc.get("benchmark", {}).get("threat", {}).get("eps")
        click.echo("published by RobustBench (as reported; beside the ranking, not ranked with it):")
        for entry in doc["published"]:
            differs = eps is not None and entry.get("eps") is not None and abs(entry["eps"] - eps) > 1e-12
            other_eps = f", eps {entry['eps']:g} (the benchmark's is {eps:g})" if differs else ""
            click.echo(f"   {entry['defense']}: {_published(entry)}{other_eps}")


def _published(entry: dict) -> str:
    """One imported entry: RobustBench's numbers as reported."""
    both = "external" in entry and entry.get("autoattack_acc") is not None
    best = f", best known {entry['external']:.2f}%" if both else ""
    return (f"{entry['robust_acc']:.2f}% ({entry['attack_suite']}{best}) at clean {entry['clean_acc']:.2f}% "
            "(RobustBench, reported)")
