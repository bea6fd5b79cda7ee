"""Hard positives (Rozsa, Rudd, Boult 2016): fine-tune on a diverse, cached set of scaled adversarials.

robustkit plugin ``hard-positives`` (it builds on the ``hotcold`` plugin's attacks). The paper's recipe, split over the shared
loop's hooks (:class:`robustkit.defenses.Defense`):

- :meth:`~HardPositives.setup` loads the base checkpoint (``base``) into the model;
- :meth:`~HardPositives.prepare` generates the training set from the training split with the base
  model (FGS, FGV, HC-D-X, HC-S-X from :mod:`robustkit_hotcold`, scaled by Y, kept inside a
  PASS band) or loads it from the on-disk cache (:mod:`.generation`);
- :meth:`~HardPositives.batch_loss` trains each clean batch together with hard positives drawn from it.

Modules: :mod:`.kinds` (the ``types`` syntax), :mod:`.generation` (generation and cache),
:mod:`.defense` (the defense).
"""

from __future__ import annotations

from robustkit.bench.presets import register_preset
from robustkit.hookspecs import Register, hookimpl
from robustkit_hard_positives.defense import HardPositives
from robustkit_hard_positives.generation import HardPositiveSet, SetCache, generate
from robustkit_hard_positives.kinds import HardPositiveType, parse_types

__all__ = ["HardPositives", "HardPositiveSet", "HardPositiveType", "SetCache", "generate", "parse_types"]


@hookimpl
def register_defenses(register: Register) -> None:
    """Register the ``hard-positives`` defense."""
    register(HardPositives.name, HardPositives, threat_models=("unbounded",),
             paper="Rozsa et al. 2016, Adversarial Diversity and Hard Positive Generation")


@hookimpl
def register_benchmarks(register: Register) -> None:
    """Register the paper's preset ``hard-positives``."""
    register_preset(register, __name__, "hard-positives.toml")
