"""The ``robustkit`` command line (skeleton; commands are added below)."""

from __future__ import annotations

import click

from robustkit import __version__


@click.group()
@click.version_option(__version__, prog_name="robustkit")
def cli() -> None:
    """robustkit: evaluate and improve adversarial robustness."""


def main() -> None:
    cli()
