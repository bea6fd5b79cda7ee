"""The plugin host: loads plugins through entry points and builds the registries from their hooks.

Nothing happens at import time. :func:`make_host` builds a fresh host (tests use it with their own
plugins); :func:`get_host` returns the process-wide one the CLI uses.

Environment switches:

- ``ROBUSTKIT_LOAD_PLUGINS=a,b``: load only these entry-point plugins (empty string: none).
- ``ROBUSTKIT_BLOCK_PLUGINS=c,d``: never load these.

Neither switch touches the essential set (:mod:`robustkit.essentials`): it is registered first, always, and
its names cannot be taken by any plugin.
- ``ROBUSTKIT_TRACE_HOOKS=1``: print every hook call to stderr.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING, Any, Callable, Iterable

import pluggy

import robustkit.hookspecs as hookspecs
from robustkit.version import __version__
from robustkit.essentials import ESSENTIAL_PLUGINS
from robustkit.errors import PluginError, one_line
from robustkit.params import Param
from robustkit.registry import OWN_DISTRIBUTION, Entry, Registry

if TYPE_CHECKING:
    from torch import nn

    from robustkit.attacks import Attack
    from robustkit.data import ImageDataset
    from robustkit.defenses import Defense
    from robustkit.executors import Executor
    from robustkit.image_metrics import ImageMetric
    from robustkit.recipes import Recipe

ENTRY_POINT_GROUP = "robustkit"


@dataclass
class PluginFailure:
    """A plugin that could not load, or raised inside a hook."""

    plugin: str
    phase: str  # "load" or the hook name
    error: str

    def message(self) -> str:
        where = "failed to load" if self.phase == "load" else f"failed in {self.phase}"
        return f"plugin '{self.plugin}' {where}: {self.error}; it was skipped"


@dataclass
class PluginRecord:
    """What ``robustkit plugins`` shows about one plugin."""

    name: str
    distribution: str | None
    version: str | None
    module: str
    hooks: list[str] = field(default_factory=list)
    registered: dict[str, list[str]] = field(default_factory=dict)


def _env_names(var: str) -> set[str] | None:
    value = os.environ.get(var)
    if value is None:
        return None
    return {n.strip() for n in value.split(",") if n.strip()}


#: Listing commands that are not ``robustkit KINDs list``.
LIST_COMMANDS = {"benchmark": "robustkit bench list", "executor": "robustkit plugins", "recipe": "robustkit recipes list"}


class Host:
    """Plugins and the registries they filled.

    :param plugins: extra ``(name, module_or_object)`` pairs to register besides entry points
        (tests use this; third-party code should use entry points).
    :param entry_points: load the ``robustkit`` entry-point group (default True).
    """

    def __init__(self, plugins: Iterable[tuple[str, Any]] = (), entry_points: bool = True):
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.failures: list[PluginFailure] = []
        self.records: dict[str, PluginRecord] = {}
        self.trace = bool(os.environ.get("ROBUSTKIT_TRACE_HOOKS"))
        for name, module in ESSENTIAL_PLUGINS:
            self._register_plugin(name, module, OWN_DISTRIBUTION, __version__)
        if entry_points:
            self._load_entry_points()
        for name, plugin in plugins:
            self._register_plugin(name, plugin, distribution=None, version=None)
        self.registries: dict[str, Registry[Any]] = {}
        for hook_name, kind in hookspecs.HOOK_KINDS.items():
            self.registries[kind] = self._fill_registry(hook_name, kind)

    # -- loading ---------------------------------------------------------------------------

    def _load_entry_points(self) -> None:
        only = _env_names("ROBUSTKIT_LOAD_PLUGINS")
        blocked = _env_names("ROBUSTKIT_BLOCK_PLUGINS") or set()
        found = sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)
        essential = {name for name, _ in ESSENTIAL_PLUGINS}
        for name in sorted((only or set()) - {ep.name for ep in found} - essential):
            self.failures.append(PluginFailure(name, "load", "ROBUSTKIT_LOAD_PLUGINS names it, but no installed plugin "
                                               f"has that name (installed: {', '.join(ep.name for ep in found)})"))
        for name in sorted(blocked & essential):
            self.failures.append(PluginFailure(name, "load", "ROBUSTKIT_BLOCK_PLUGINS names it, but it is part of "
                                               "robustkit's essential set, which is always loaded"))
        for ep in found:
            if (only is not None and ep.name not in only) or ep.name in blocked:
                continue
            if ep.name in essential:
                dist = getattr(ep, "dist", None)
                self.failures.append(PluginFailure(ep.name, "load", f"distribution '{dist.name if dist else '?'}' "
                                                   "uses the name of one of robustkit's essential plugins; rename its "
                                                   "entry point"))
                continue
            dist = getattr(ep, "dist", None)
            try:
                plugin = ep.load()
            except Exception as err:  # a broken plugin must not take the others down
                self.failures.append(PluginFailure(ep.name, "load", one_line(err, typed=True)))
                continue
            self._register_plugin(ep.name, plugin, dist.name if dist else None, dist.version if dist else None)

    def _register_plugin(self, name: str, plugin: Any, distribution: str | None, version: str | None) -> None:
        try:
            self.pm.register(plugin, name=name)
            self.pm.check_pending()  # a misspelled hook name is a broken plugin, not a silent no-op
        except Exception as err:
            if self.pm.is_registered(plugin):
                self.pm.unregister(plugin)
            self.failures.append(PluginFailure(name, "load", one_line(err, typed=True)))
            return
        wrappers = sorted(caller.name for caller in (self.pm.get_hookcallers(plugin) or [])
                          for impl in caller.get_hookimpls()
                          if impl.plugin is plugin and (impl.hookwrapper or getattr(impl, "wrapper", False)))
        if wrappers:  # the host calls each implementation itself, so a wrapper would silently register nothing
            self.pm.unregister(plugin)
            self.failures.append(PluginFailure(name, "load", f"{', '.join(wrappers)} is declared as a wrapper "
                                               "(wrapper=True or hookwrapper=True); registration hooks take plain "
                                               "implementations"))
            return
        hooks = sorted(impl.name for impl in (self.pm.get_hookcallers(plugin) or []))
        module = getattr(plugin, "__name__", type(plugin).__name__)
        self.records[name] = PluginRecord(name, distribution, version, module, hooks)

    def _fill_registry(self, hook_name: str, kind: str) -> Registry[Any]:
        registry: Registry[Any] = Registry(kind, LIST_COMMANDS.get(kind), returns=_returns(kind))
        for impl in self._call_order(hook_name):
            record = self.records[impl.plugin_name]
            added: list[str] = []

            def register(name: str, factory: Callable[..., Any], *, description: str | None = None,
                         params: tuple[Param, ...] | None = None, **info: Any) -> None:
                declared_facts = getattr(factory, "declared_facts", None) if isinstance(factory, type) else None
                if callable(declared_facts):
                    info = {**declared_facts(), **info}  # stated once, on the class
                registry.add(Entry(
                    name=name, factory=factory, plugin=record.name, distribution=record.distribution,
                    description=description if description is not None else _first_doc_line(factory),
                    params=params, info=info,
                ))
                added.append(name)

            if self.trace:
                print(f"[robustkit trace] {record.name}.{hook_name}()", file=sys.stderr)
            try:
                impl.function(register=register)
                if self.trace:
                    print(f"[robustkit trace]   registered {len(added)} {kind}(s)", file=sys.stderr)
            except Exception as err:
                self.failures.append(PluginFailure(record.name, hook_name, one_line(err, typed=True)))
                for name in added:  # all or nothing: a half-registered plugin is confusing
                    registry.remove(name)
                continue
            if added:
                record.registered.setdefault(kind, []).extend(added)
        return registry

    def _call_order(self, hook_name: str) -> list[Any]:
        """A hook's implementations in the order they are called: the essential set first, so no other
        plugin can take their names; then pluggy's order (last registered first, ``tryfirst``/``trylast``
        honoured). Of two plugins registering one name, the one called first keeps it."""
        impls = list(reversed(getattr(self.pm.hook, hook_name).get_hookimpls()))  # pluggy calls from the end
        own = [i for i in impls if self.records[i.plugin_name].distribution == OWN_DISTRIBUTION]
        return own + [i for i in impls if i not in own]

    def add_commands(self, cli: Any) -> dict[str, str]:
        """Let each plugin add CLI commands; return ``{command: plugin}`` of those added.

        A plugin that raises, or that replaces a command already there (a built-in's or another plugin's),
        is reported (``robustkit plugins`` lists it) and its commands are left out.
        """
        added: dict[str, str] = {}
        for impl in self._call_order("register_commands"):
            before = dict(cli.commands)
            try:
                impl.function(cli=cli)
                replaced = sorted(name for name, command in before.items() if cli.commands.get(name) is not command)
                if replaced:
                    raise PluginError(f"it replaces the command(s) {', '.join(replaced)}; a plugin may add "
                                      "commands, not take over existing ones")
            except Exception as err:
                cli.commands.clear()
                cli.commands.update(before)
                failure = PluginFailure(impl.plugin_name, "register_commands",
                                        str(err) if isinstance(err, PluginError) else one_line(err, typed=True))
                if failure not in self.failures:
                    self.failures.append(failure)
                    print(f"robustkit: warning: {failure.message()}", file=sys.stderr)
                continue
            added.update({name: impl.plugin_name for name in set(cli.commands) - set(before)})
        return added

    # -- use ---------------------------------------------------------------------------------

    @property
    def models(self) -> Registry[nn.Module]:
        return self.registries["model"]

    @property
    def datasets(self) -> Registry[ImageDataset]:
        return self.registries["dataset"]

    @property
    def attacks(self) -> Registry[Attack]:
        return self.registries["attack"]

    @property
    def defenses(self) -> Registry[Defense]:
        return self.registries["defense"]

    @property
    def benchmarks(self) -> Registry[dict[str, Any]]:
        return self.registries["benchmark"]

    @property
    def metrics(self) -> Registry[ImageMetric]:
        return self.registries["metric"]

    @property
    def recipes(self) -> Registry[Recipe]:
        return self.registries["recipe"]

    @property
    def executors(self) -> Registry[Executor]:
        return self.registries["executor"]

    def plugin_versions(self) -> dict[str, str | None]:
        """``{plugin: version}`` for provenance records."""
        return {name: rec.version for name, rec in sorted(self.records.items())}

    def report_failures(self, stream: Any = None) -> None:
        """Print one line per broken plugin (stderr by default)."""
        for failure in self.failures:
            print(f"robustkit: warning: {failure.message()}", file=stream or sys.stderr)


def _returns(kind: str) -> type | tuple[type, ...]:
    """What a factory of ``kind`` must return (the hook specs' contract), checked on every create."""
    from torch import nn

    from robustkit.attacks import Attack
    from robustkit.data import ImageDataset
    from robustkit.defenses import Defense
    from robustkit.executors import Executor
    from robustkit.image_metrics import ImageMetric
    from robustkit.recipes import Recipe

    return {"model": nn.Module, "dataset": ImageDataset, "attack": Attack, "defense": Defense,
            "benchmark": dict, "metric": ImageMetric, "recipe": Recipe,
            "executor": Executor}[kind]


def _first_doc_line(obj: Any) -> str:
    doc = getattr(obj, "__doc__", None) or ""
    return doc.strip().splitlines()[0].strip() if doc.strip() else ""


def make_host(plugins: Iterable[tuple[str, Any]] = (), entry_points: bool = True) -> Host:
    """A fresh host: entry-point plugins plus ``plugins``."""
    return Host(plugins=plugins, entry_points=entry_points)


_HOST: Host | None = None


def get_host() -> Host:
    """The process-wide host, built on first use; broken plugins are reported once."""
    global _HOST
    if _HOST is None:
        _HOST = make_host()
        _HOST.report_failures()
    return _HOST


def reset_host() -> None:
    """Forget the process-wide host (after installing a plugin, or in tests)."""
    global _HOST
    _HOST = None

