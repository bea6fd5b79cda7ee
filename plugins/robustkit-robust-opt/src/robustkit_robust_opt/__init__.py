"""robustkit plugin ``robust-opt``: robust optimization via local stability (Shaham et al.), SPECS section 4.

Registers the defense ``robust-opt`` (:mod:`.defense`), its inner attack ``one-step`` (:mod:`.one_step`) and
the paper's benchmark preset ``robust-opt``.
"""

from __future__ import annotations

from robustkit.bench.presets import register_preset
from robustkit.hookspecs import Register, hookimpl
from robustkit_robust_opt.defense import RobustOpt
from robustkit_robust_opt.one_step import OneStep, one_step

__all__ = ["OneStep", "RobustOpt", "one_step"]


@hookimpl
def register_defenses(register: Register) -> None:
    """Register ``robust-opt``."""
    register("robust-opt", RobustOpt, threat_models=("linf", "l2", "l1"))


@hookimpl
def register_attacks(register: Register) -> None:
    """Register ``one-step``."""
    register(OneStep.name, OneStep)


@hookimpl
def register_benchmarks(register: Register) -> None:
    """Register the paper's preset ``robust-opt``."""
    register_preset(register, __name__, "robust-opt.toml")
