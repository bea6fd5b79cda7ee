"""robustkit plugin ``pgn``: adversarial training with perturbation generator networks (see :mod:`.pgn`).

Registers the defense ``pgn``, the attack ``pgn`` (a trained generator) and the paper's benchmark preset.
"""

from __future__ import annotations

from robustkit.bench.presets import register_preset
from robustkit.hookspecs import Register, hookimpl
from robustkit_pgn.pgn import PGN, Generator, PGNAttack, load_generator, register_attacks, register_defenses

__all__ = ["PGN", "Generator", "PGNAttack", "load_generator", "register_attacks", "register_defenses"]


@hookimpl
def register_benchmarks(register: Register) -> None:
    """Register the paper's preset ``pgn``."""
    register_preset(register, __name__, "pgn.toml")
