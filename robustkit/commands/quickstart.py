"""``robustkit quickstart``: the main job on the embedded digits."""

from __future__ import annotations

from pathlib import Path

import click

from robustkit.commands.group import cli, echo_table
from robustkit.commands.common import device_option, output_folder, seed_option, set_threads, threads_option
from robustkit.host import get_host
from robustkit.quickstart import QuickstartSettings, run_quickstart


@cli.command()
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("runs/quickstart"),
              show_default=True, help="Output folder (checkpoints, metrics, curves, leaderboard.json).")
@click.option("--epochs", type=int, default=QuickstartSettings.epochs, show_default=True)
@click.option("--eps", type=float, default=QuickstartSettings.eps, show_default=True,
              help="Linf budget for training and attack (pixel units of [0, 1] images).")
@click.option("--n-examples", type=click.IntRange(min=1), default=None, help="Test images to attack (default: all 450).")
@seed_option
@device_option
@threads_option
def quickstart(out_dir, epochs, eps, n_examples, seed, device, threads) -> None:
    """Train a natural and a PGD-trained CNN on digits, attack both with PGD, write a leaderboard.

    Uses scikit-learn's handwritten digits (no download), the Madry MNIST CNN adapted to 8x8,
    the shared training loop and the native PGD attack. Rerunning resumes finished work.

    \b
    Examples:
      robustkit quickstart
      robustkit quickstart --epochs 30 --eps 0.2 --out runs/qs-eps0.2
    """
    set_threads(threads)
    settings = QuickstartSettings(epochs=epochs, eps=eps, n_examples=n_examples, seed=seed, device=device)
    rows, path = run_quickstart(get_host(), settings, output_folder(out_dir), say=lambda line: click.echo(line, err=True))
    click.echo("")
    echo_table(
        [[r.defense, settings.model, f"{100 * r.evaluation.clean_accuracy:.2f}",
          f"{100 * r.evaluation.worst_case_accuracy:.2f}", f"{r.train_seconds:.1f}"] for r in rows],
        ["defense", "model", "clean acc %", f"PGD-{settings.attack_steps} acc % (eps={eps:g})", "train s"],
    )
    click.echo(f"\nleaderboard: {path}")
    click.echo(f"training curves: {out_dir}/*/curves.png")
