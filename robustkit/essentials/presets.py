"""The essential benchmark preset: ``quick``, the README's main job (``robustkit/essentials/quick.toml``).

Registered through the ``register_benchmarks`` hook exactly as a method plugin registers its paper's preset.
"""

from __future__ import annotations

from robustkit.bench.presets import register_preset
from robustkit.hookspecs import Register, hookimpl


@hookimpl
def register_benchmarks(register: Register) -> None:
    """Register ``quick``."""
    register_preset(register, "robustkit.essentials", "quick.toml")
