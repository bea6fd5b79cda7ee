"""``robustkit models|datasets|attacks|defenses|metrics|recipes list [PATTERN]``: one group per registry."""

from __future__ import annotations

import shutil

import click

from robustkit.commands.group import cli, echo_json
from robustkit.host import get_host
from robustkit.tables import text_table

#: Line width when the output is not a terminal (a pipe, a file).
PIPE_WIDTH = 100

_EXAMPLES = {
    "model": "robustkit models list 'timm:resnet*'",
    "dataset": "robustkit datasets list",
    "attack": "robustkit attacks list 'torchattacks:*'",
    "defense": "robustkit defenses list --params",
    "metric": "robustkit metrics list",
    "recipe": "robustkit recipes list 'cifar10-*'   (details: robustkit train --list-recipes)",
}


def _info_text(info: dict) -> str:
    return ", ".join(f"{k}={'/'.join(map(str, v)) if isinstance(v, (tuple, list)) else v}" for k, v in info.items())


def available(entry) -> bool:
    """False for entries registered as unusable here (``info["available"] is False``: a missing optional
    package, an unsupported kind of attack); they are listed only with ``--all``."""
    return dict(entry.info).get("available", True) is not False


def _reason(entry) -> str | None:
    info = dict(entry.info)
    return None if available(entry) else (info.get("reason") or info.get("unavailable_reason"))


def _width() -> int:
    """The terminal's width (``COLUMNS`` wins); :data:`PIPE_WIDTH` in a pipe."""
    return max(40, shutil.get_terminal_size((PIPE_WIDTH, 24)).columns)


def _make_group(kind: str) -> None:
    @cli.group(name=f"{kind}s", help=f"Registered {kind}s.")
    def group() -> None:
        pass

    @group.command(name="list", help=f"""List registered {kind}s, optionally filtered.

    PATTERN is a shell-style wildcard (case-insensitive); without wildcards it matches any part
    of the name.

    Examples:

        {_EXAMPLES[kind]}
    """)
    @click.argument("pattern", required=False)
    @click.option("--json", "as_json", is_flag=True, help="Print JSON with parameters and declared facts.")
    @click.option("--params", "show_params", is_flag=True, help="Show each one's parameters and defaults.")
    @click.option("--all", "show_all", is_flag=True,
                  help=f"Also list {kind}s that cannot be used here (a missing optional package, an unsupported "
                       "kind); --json always lists them all.")
    def list_cmd(pattern: str | None, as_json: bool, show_params: bool, show_all: bool) -> None:
        entries = get_host().registries[kind].list(pattern)
        if as_json:
            echo_json([
                {"name": e.name, "plugin": e.plugin, "distribution": e.distribution, "description": e.description,
                 "available": available(e), "reason": _reason(e), "info": dict(e.info),
                 "params": [{"name": p.name, "type": p.type.__name__, "default": p.default, "help": p.help}
                            for p in _safe_params(e)],
                 **({"recipe": _recipe_summary(e.name)} if kind == "recipe" else {})}
                for e in entries
            ])
            return
        hidden = 0 if show_all else sum(not available(e) for e in entries)
        shown = entries if show_all else [e for e in entries if available(e)]
        if not entries:
            click.echo(f"no {kind}s match {pattern!r}")
            return
        if shown:
            rows = []
            for e in shown:
                row = [e.name, e.plugin, e.description]
                if show_params:
                    row.append(" ".join(f"{p.name}={p.default}" for p in _safe_params(e)))
                elif e.info:  # available=True goes without saying
                    row.append(_info_text({k: v for k, v in dict(e.info).items()
                                           if not (k == "available" and v is True)}))
                rows.append(row)
            extra = ["parameters" if show_params else "facts"] if any(len(r) > 3 for r in rows) else []
            rows = [r + [""] * (3 + len(extra) - len(r)) for r in rows]
            for line in text_table(["name", "plugin", "description", *extra], rows, width=_width(), wrap=(2, 3)):
                click.echo(line)
        else:
            click.echo(f"no usable {kind}s match {pattern!r}")
        if hidden:
            click.echo(f"{hidden} {kind}{'s' if hidden != 1 else ''} hidden: not usable here (a missing package "
                       "or an unsupported kind); --all shows them")


def _safe_params(entry):
    try:
        return entry.declared_params(("num_classes", "in_channels", "image_size", "root"))
    except Exception:  # a missing library or unreadable signature must not stop the whole listing
        return ()


def _recipe_summary(name: str) -> dict:
    """What a registered recipe fixes and cites (:meth:`robustkit.recipes.Recipe.summary`)."""
    from robustkit.recipe_config import get_recipe

    return get_recipe(get_host(), name).summary()


for _kind in ("model", "dataset", "attack", "defense", "metric", "recipe"):
    _make_group(_kind)
