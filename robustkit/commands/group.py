"""The ``robustkit`` command group and the output helpers every command uses.

Every command turns a :class:`~robustkit.errors.RobustkitError` into one line on stderr and exit
code 2; plugins add commands through the ``register_commands`` hook. The built-in commands import
this module and attach themselves to :data:`cli`; :mod:`robustkit.commands` imports them all, and
:mod:`robustkit.cli` is the entry point.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from robustkit.version import __version__
from robustkit.errors import RobustkitError, one_line
from robustkit.host import get_host
from robustkit.tables import text_table


class UserError(click.ClickException):
    """Printed as ``Error: ...`` without a traceback; exit code 2 like click's usage errors."""

    exit_code = 2


class RobustkitGroup(click.Group):
    """Click group that adds plugin commands lazily and reports user errors in one line."""

    _plugin_commands_for: int | None = None
    _plugin_command_names: tuple[str, ...] = ()

    def _sync_plugin_commands(self) -> None:
        host = get_host()
        if self._plugin_commands_for == id(host):
            return
        for name in self._plugin_command_names:
            self.commands.pop(name, None)
        added = host.add_commands(self)
        for name, plugin in added.items():
            _guard(self.commands[name], plugin)
        self._plugin_command_names = tuple(added)
        self._plugin_commands_for = id(host)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._sync_plugin_commands()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands:
            self._sync_plugin_commands()
        return super().get_command(ctx, cmd_name)

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        """Click's main, with usage errors (a bad option value, a missing argument) in one line too."""
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            return super().main(*args, standalone_mode=False, **kwargs)
        except click.UsageError as err:
            where = f" (see '{err.ctx.command_path} --help')" if err.ctx is not None else ""
            click.echo(f"Error: {' '.join(err.format_message().split())}{where}", err=True)
            sys.exit(err.exit_code)
        except click.ClickException as err:
            err.show()
            sys.exit(err.exit_code)
        except click.exceptions.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RobustkitError as err:
            raise UserError(str(err)) from None
        except OSError as err:
            if err.filename is None:  # not about a path the user gave: a real failure, keep the traceback
                raise
            raise UserError(f"cannot use {err.filename}: {err.strerror or err}; check the path and its "
                            "permissions (results written before this point are kept)") from None
        except KeyboardInterrupt:
            raise UserError("interrupted; finished results were kept, rerun the same command to continue") from None


def _guard(command: click.Command, plugin: str) -> None:
    """Make a plugin command's crash one line that names the plugin (its own user errors pass through)."""
    original = command.invoke

    def invoke(ctx: click.Context) -> Any:
        try:
            return original(ctx)
        except (RobustkitError, click.ClickException, click.exceptions.Exit, click.exceptions.Abort,
                KeyboardInterrupt):
            raise
        except Exception as err:
            raise UserError(f"command '{command.name}' of plugin '{plugin}' failed ({one_line(err, typed=True)}); "
                            f"report it to the plugin's authors, or skip the plugin with "
                            f"ROBUSTKIT_BLOCK_PLUGINS={plugin}") from None

    command.invoke = invoke  # type: ignore[method-assign]


@click.group(cls=RobustkitGroup)
@click.version_option(__version__, prog_name="robustkit")
def cli() -> None:
    """robustkit: evaluate and improve the adversarial robustness of image classifiers.

    Defenses, attacks, models and datasets come from plugins; list them with
    `robustkit plugins` or `robustkit attacks list`.

    \b
    Examples:
      robustkit quickstart                     # the main job, on the embedded digits
      robustkit attacks list 'torchattacks:*'  # what can attack a model
      robustkit train --model madry-cnn --dataset digits --defense pgd-at --param eps=0.1
      robustkit attack runs/x/last.safetensors --attack 'torchattacks:PGD eps=0.1'
    """


def echo_table(rows: list[list[str]], headers: list[str]) -> None:
    """Plain aligned columns (readable in logs and when piped): :func:`robustkit.tables.text_table`."""
    for line in text_table(headers, rows):
        click.echo(line)


def echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=False, default=str))
