"""``robustkit models|datasets|attacks|defenses|metrics list [PATTERN]``: one group per registry."""

from __future__ import annotations

import click

from robustkit.commands.group import cli, echo_json, echo_table
from robustkit.host import get_host

_EXAMPLES = {
    "model": "robustkit models list 'timm:resnet*'",
    "dataset": "robustkit datasets list",
    "attack": "robustkit attacks list 'torchattacks:*'",
    "defense": "robustkit defenses list --params",
    "metric": "robustkit metrics list",
}


def _info_text(info: dict) -> str:
    return ", ".join(f"{k}={'/'.join(map(str, v)) if isinstance(v, (tuple, list)) else v}" for k, v in info.items())


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
    def list_cmd(pattern: str | None, as_json: bool, show_params: bool) -> None:
        entries = get_host().registries[kind].list(pattern)
        if as_json:
            echo_json([
                {"name": e.name, "plugin": e.plugin, "distribution": e.distribution, "description": e.description,
                 "info": dict(e.info),
                 "params": [{"name": p.name, "type": p.type.__name__, "default": p.default, "help": p.help}
                            for p in _safe_params(e)]}
                for e in entries
            ])
            return
        if not entries:
            click.echo(f"no {kind}s match {pattern!r}")
            return
        rows = []
        for e in entries:
            row = [e.name, e.plugin, e.description]
            if show_params:
                row.append(" ".join(f"{p.name}={p.default}" for p in _safe_params(e)))
            elif e.info:
                row.append(_info_text(dict(e.info)))
            rows.append(row)
        extra = ["parameters" if show_params else "facts"] if any(len(r) > 3 for r in rows) else []
        echo_table(rows, ["name", "plugin", "description", *extra])


def _safe_params(entry):
    try:
        return entry.declared_params(("num_classes", "in_channels", "image_size", "root"))
    except Exception:  # a missing library or unreadable signature must not stop the whole listing
        return ()


for _kind in ("model", "dataset", "attack", "defense", "metric"):
    _make_group(_kind)
