"""Benchmark presets from spec files, for plugins' ``register_benchmarks`` hooks."""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from robustkit.compat import tomllib


class preset_from_file:  # noqa: N801 (used like a function: register(name, preset_from_file(path)))
    """A preset factory reading a TOML spec shipped with a plugin; the file is read once, at registration.

    :param path: a ``.toml`` file (a :class:`pathlib.Path` or an ``importlib.resources`` traversable).
    """

    def __init__(self, path: Any):
        self.path = path
        self.document: dict[str, Any] = tomllib.loads(Path(path).read_text(encoding="utf-8")
                                                      if isinstance(path, (str, Path)) else path.read_text("utf-8"))
        self.description = str(self.document.get("description", ""))
        self.__doc__ = self.description

    def __call__(self) -> dict[str, Any]:
        return copy.deepcopy(self.document)


def register_preset(register: Callable[..., None], package: str, filename: str) -> None:
    """Register the spec file ``filename`` shipped inside ``package`` as the preset named after the file
    (``localized-at.toml`` -> ``localized-at``); for a plugin's ``register_benchmarks`` hook."""
    factory = preset_from_file(resources.files(package).joinpath(filename))
    register(filename.rsplit(".", 1)[0], factory, description=factory.description)
