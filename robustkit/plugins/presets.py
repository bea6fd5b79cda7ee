"""The built-in benchmark presets (``robustkit bench list``): spec files shipped in ``robustkit/presets/``.

Registered through the ``register_benchmarks`` hook exactly as a third-party plugin registers its own:
``register(name, preset_from_file(path))``.
"""

from __future__ import annotations

from importlib import resources

from robustkit import hookimpl
from robustkit.bench.presets import preset_from_file
from robustkit.hookspecs import Register


@hookimpl
def register_benchmarks(register: Register) -> None:
    """Register every ``robustkit/presets/*.toml`` under its file name."""
    folder = resources.files("robustkit").joinpath("presets")
    for path in sorted(folder.iterdir(), key=lambda p: p.name):
        if path.name.endswith(".toml"):
            factory = preset_from_file(path)
            register(path.name[:-5], factory, description=factory.description)
