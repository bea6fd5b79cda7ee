"""``robustkit plugins``: what is installed, where it comes from, and what it registered."""

from __future__ import annotations

import click

from robustkit.commands.group import cli, echo_json, echo_table
from robustkit.host import get_host


def _summary(registered: dict[str, list[str]]) -> str:
    parts = []
    for kind, names in sorted(registered.items()):
        shown = ", ".join(names) if len(names) <= 3 else f"{len(names)} ({', '.join(names[:2])}, ...)"
        parts.append(f"{kind}s: {shown}")
    return "; ".join(parts) or "-"


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON (every registered name) instead of a table.")
def plugins(as_json: bool) -> None:
    """List loaded plugins: distribution, version, hooks and what each registered.

    Plugins that failed to load or raised in a hook are listed with the error.
    Environment: ROBUSTKIT_LOAD_PLUGINS=a,b loads only those; ROBUSTKIT_BLOCK_PLUGINS=c skips c.

    Examples:

        robustkit plugins

        robustkit plugins --json | python -m json.tool
    """
    host = get_host()
    cli.list_commands(click.get_current_context())  # runs register_commands, so its failures are listed too
    records = sorted(host.records.values(), key=lambda r: r.name)
    if as_json:
        echo_json({
            "plugins": [
                {"name": r.name, "distribution": r.distribution, "version": r.version, "module": r.module,
                 "hooks": r.hooks, "registered": r.registered}
                for r in records
            ],
            "failures": [{"plugin": f.plugin, "phase": f.phase, "error": f.error} for f in host.failures],
        })
        return
    echo_table(
        [[r.name, r.distribution or "-", r.version or "-", ", ".join(h.removeprefix("register_") for h in r.hooks),
          _summary(r.registered)] for r in records],
        ["plugin", "distribution", "version", "hooks", "registered"],
    )
    for failure in host.failures:
        click.echo(f"FAILED  {failure.message()}")
