"""robustkit plugin ``localized-at``: localized adversarial training (Rothberg, Chen, Ji), SPECS section 1.

Registers the defense ``localized-at`` (:mod:`.defense`), the attack ``localized-pgd`` (:mod:`.localized_pgd`,
linf PGD confined by a mask from :mod:`.masks`) and the paper's benchmark preset ``localized-at``.
"""

from __future__ import annotations

from robustkit.bench.presets import register_preset
from robustkit.hookspecs import Register, hookimpl
from robustkit_localized_at.defense import LocalizedAT
from robustkit_localized_at.localized_pgd import LocalizedPGD, localized_pgd
from robustkit_localized_at.masks import KINDS as MASK_KINDS
from robustkit_localized_at.masks import make_mask

__all__ = ["MASK_KINDS", "LocalizedAT", "LocalizedPGD", "localized_pgd", "make_mask"]


@hookimpl
def register_defenses(register: Register) -> None:
    """Register ``localized-at``."""
    register("localized-at", LocalizedAT, threat_models=("linf",))


@hookimpl
def register_attacks(register: Register) -> None:
    """Register ``localized-pgd``."""
    register(LocalizedPGD.name, LocalizedPGD)


@hookimpl
def register_benchmarks(register: Register) -> None:
    """Register the paper's preset ``localized-at``."""
    register_preset(register, __name__, "localized-at.toml")
