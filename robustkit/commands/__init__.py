"""Built-in CLI commands, one module per command (group); each attaches itself to ``robustkit.cli.cli``."""

from robustkit.commands import attack, bench, leaderboard, listing, plugins, quickstart, train  # noqa: F401
