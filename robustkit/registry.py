"""Typed registries of named components (models, datasets, attacks, defenses, ...).

Each entry remembers the plugin and distribution that registered it, so a duplicate name is
rejected with both plugins named, and listings can say where a component comes from.
"""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterator, Mapping, Sequence, TypeVar

from robustkit.errors import ParameterError, PluginBug, PluginError, RobustkitError, UnknownNameError
from robustkit.params import Param, params_from_signature, resolve_params

T = TypeVar("T")

#: The distribution of robustkit's built-in plugins: their names cannot be taken by any other plugin.
OWN_DISTRIBUTION = "robustkit"


@dataclass(frozen=True)
class Entry(Generic[T]):
    """A registered component.

    :param name: the name users type (``pgd-at``, ``torchattacks:PGD``, ``timm:resnet18``).
    :param factory: callable creating the component from keyword parameters.
    :param plugin: name of the plugin that registered it.
    :param distribution: the pip distribution that ships the plugin (``None`` if not installed).
    :param description: one line for listings.
    :param params: declared parameters; ``None`` means "take them from the factory's signature".
    :param info: free-form facts for listings and provenance (threat models, capabilities, ...).
    """

    name: str
    factory: Callable[..., T]
    plugin: str
    distribution: str | None = None
    description: str = ""
    params: tuple[Param, ...] | None = None
    info: Mapping[str, Any] = field(default_factory=dict)

    def declared_params(self, context: tuple[str, ...] = ()) -> tuple[Param, ...]:
        """The user-settable parameters; ``context`` names are supplied by the host, not the user."""
        if self.params is not None:
            return self.params
        declared = getattr(self.factory, "params", None)
        if isinstance(declared, tuple) and all(isinstance(p, Param) for p in declared):
            return declared
        return params_from_signature(self.factory, skip=("self", "model", *context))

    def resolve(self, given: Mapping[str, Any], context: tuple[str, ...] = ()) -> dict[str, Any]:
        """Check and convert ``given`` parameters; raises :class:`ParameterError`."""
        return resolve_params(self.declared_params(context), given, self.name)


class Registry(Generic[T]):
    """Components of one kind, by name.

    :param kind: singular noun used in messages ("attack", "defense").
    :param list_command: the command that lists them, for messages (default ``robustkit KINDs list``).
    :param returns: what every factory must return (checked on each :meth:`create`); None: anything.
    """

    def __init__(self, kind: str, list_command: str | None = None, returns: type | tuple[type, ...] | None = None):
        self.kind = kind
        self.list_command = list_command or f"robustkit {kind}s list"
        self.returns = returns
        self._entries: dict[str, Entry[T]] = {}

    def add(self, entry: Entry[T]) -> None:
        if not callable(entry.factory):
            raise PluginError(f"{self.kind} '{entry.name}': its factory is a {type(entry.factory).__name__}, not "
                              "something to call; register a class or a function")
        key = entry.name.lower()
        if key in self._entries:
            first = self._entries[key]
            if first.distribution == OWN_DISTRIBUTION and entry.distribution != OWN_DISTRIBUTION:
                raise PluginError(f"{self.kind} '{entry.name}' is robustkit's own (plugin '{first.plugin}'); plugin "
                                  f"'{entry.plugin}' may not replace it: give its {self.kind} another name")
            raise PluginError(
                f"{self.kind} '{entry.name}' is registered twice: by plugin '{first.plugin}' and by plugin "
                f"'{entry.plugin}'; uninstall or block one of them (ROBUSTKIT_BLOCK_PLUGINS)"
            )
        self._entries[key] = entry

    def remove(self, name: str) -> None:
        self._entries.pop(name.lower(), None)

    def __contains__(self, name: str) -> bool:
        return name.lower() in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(sorted(self._entries.values(), key=lambda e: e.name.lower()))

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        return [e.name for e in self]

    def list(self, pattern: str | None = None) -> list[Entry[T]]:
        """Entries whose name matches the shell-style ``pattern`` (case-insensitive); all if ``None``.

        A pattern without wildcards matches as a substring, like ``timm.list_models`` filters.
        """
        if not pattern:
            return list(self)
        pat = pattern.lower()
        if not any(c in pat for c in "*?["):
            pat = f"*{pat}*"
        return [e for e in self if fnmatch.fnmatchcase(e.name.lower(), pat)]

    def get(self, name: str) -> Entry[T]:
        try:
            return self._entries[name.lower()]
        except KeyError:
            close = difflib.get_close_matches(name.lower(), list(self._entries), n=3, cutoff=0.5)
            names = [self._entries[c].name for c in close]
            hint = f"did you mean {', '.join(names)}? " if names else ""
            raise UnknownNameError(
                f"unknown {self.kind} '{name}'; {hint}run `{self.list_command}` to see them all{_limited_hint()}"
            ) from None

    def create(self, name: str, params: Mapping[str, Any] | None = None, /, **kwargs: Any) -> T:
        """Build the component ``name``.

        ``create("pgd", {"eps": 0.1, "steps": 3})`` and ``create("pgd", eps=0.1, steps=3)`` are the same.
        The rule for keywords: a keyword that names one of the entry's declared parameters
        (:meth:`Entry.declared_params`) is a user parameter, validated and converted like those in
        ``params`` (naming it in both is an error); every other keyword is host context (e.g. a model's
        ``num_classes``, a dataset's ``root``), passed to the factory as is. An entry whose parameters
        are read from its factory's signature declares no name that is passed as a keyword, so there
        every keyword stays context, as before.

        :param params: the user's parameters, validated and converted before the factory runs.
        :param kwargs: more user parameters (declared names) and the host's context (the rest).
        """
        entry = self.get(name)
        declared = {p.name for p in entry.declared_params(tuple(kwargs))}
        given = dict(params or {})
        context: dict[str, Any] = {}
        for key, value in kwargs.items():
            if key not in declared:
                context[key] = value
            elif key in given:
                raise ParameterError(f"{self.kind} '{entry.name}': parameter '{key}' is given twice, in params "
                                     "and as a keyword; give it once")
            else:
                given[key] = value
        resolved = entry.resolve(given, tuple(context))
        try:
            made = entry.factory(**resolved, **context)
        except RobustkitError:
            raise  # a problem the component could name: one line for the user
        except Exception as err:
            # Anything else is a bug in the component: keep its traceback, and say whose it is.
            raise PluginBug(f"{self.kind} '{entry.name}' of plugin '{entry.plugin}' failed while being created "
                            f"({type(err).__name__}: {err}); this is a bug in the plugin: report it to its authors, "
                            f"or skip it with ROBUSTKIT_BLOCK_PLUGINS={entry.plugin}") from err
        if self.returns is not None and not isinstance(made, self.returns):
            wanted = " or ".join(t.__name__ for t in (self.returns if isinstance(self.returns, tuple)
                                                       else (self.returns,)))
            raise PluginError(f"{self.kind} '{entry.name}' of plugin '{entry.plugin}' returned a value of type "
                              f"{type(made).__name__}, not {wanted}: the plugin is broken; report it to its "
                              f"authors, or skip it with ROBUSTKIT_BLOCK_PLUGINS={entry.plugin}")
        return made


def distinct_labels(uses: Sequence[tuple[str, Mapping[str, Any], Mapping[str, Any]]]) -> list[str]:
    """Readable, distinct display labels for components given as ``(name, given params, resolved params)``.

    A name used once keeps its bare name (``pgd``). Every use of a repeated name is labelled with the name
    and the parameters whose resolved values differ between its uses, written as the user gave them (else
    the resolved value): ``localized-pgd mask=exact`` and ``localized-pgd mask=broad``. Uses that still
    read the same (identical parameters) get `` #1``, `` #2``, ... in order. Names compare case-insensitively.
    """
    groups: dict[str, list[int]] = {}
    for i, (name, _, _) in enumerate(uses):
        groups.setdefault(name.lower(), []).append(i)
    labels = [name for name, _, _ in uses]
    missing = object()
    for members in groups.values():
        if len(members) < 2:
            continue
        keys = list(dict.fromkeys(k for i in members for k in (*uses[i][2], *uses[i][1])))
        differ = [k for k in keys
                  if len({repr(_comparable(uses[i][2].get(k, uses[i][1].get(k, missing)))) for i in members}) > 1]
        for i in members:
            name, given, resolved = uses[i]
            shown = [f"{k}={_shown(given[k] if k in given else resolved.get(k))}" for k in differ]
            labels[i] = " ".join([name, *shown])
    counts: dict[str, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    seen: dict[str, int] = {}
    for i, label in enumerate(labels):
        if counts[label] > 1:
            seen[label] = seen.get(label, 0) + 1
            labels[i] = f"{label} #{seen[label]}"
    return labels


def _comparable(value: Any) -> Any:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _limited_hint() -> str:
    """Why a name may be missing: the environment limits which plugins load."""
    import os

    notes = [f"{var}={os.environ[var]!r}" for var in ("ROBUSTKIT_LOAD_PLUGINS", "ROBUSTKIT_BLOCK_PLUGINS")
             if var in os.environ]
    return f" ({' and '.join(notes)} limits which plugins load)" if notes else ""
