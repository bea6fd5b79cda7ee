"""The ``robustkit`` command line: the entry point (``robustkit = "robustkit.cli:main"``).

The group and its helpers live in :mod:`robustkit.commands.group`, the built-in commands one module each
in :mod:`robustkit.commands`; importing that package attaches them all. Imports run one way: group <-
command modules <- :mod:`robustkit.commands` <- this module.
"""

from __future__ import annotations

import sys

from robustkit.commands import cli
from robustkit.commands.group import UserError, echo_json, echo_table

__all__ = ["cli", "main", "UserError", "echo_json", "echo_table"]


def main() -> None:
    cli(prog_name="robustkit")


if __name__ == "__main__":  # pragma: no cover  (python -m robustkit.cli)
    sys.exit(main())
