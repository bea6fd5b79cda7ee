"""Built-in CLI commands, one module per command (group); each attaches itself to the group of
:mod:`robustkit.commands.group`. Importing this package attaches them all."""

from robustkit.commands.group import cli  # noqa: F401  (first: the command modules attach to it)
from robustkit.commands import attack, bench, leaderboard, listing, plugins, quickstart, train  # noqa: F401,E402
