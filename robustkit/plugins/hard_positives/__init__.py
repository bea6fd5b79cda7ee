"""Hard positives (Rozsa, Rudd, Boult 2016): fine-tune on a diverse, cached set of scaled adversarials.

A plugin like any other (entry point ``hard-positives``). The paper's recipe, split over the shared
loop's hooks (:class:`robustkit.defenses.Defense`):

- :meth:`~HardPositives.setup` loads the base checkpoint (``base``) into the model;
- :meth:`~HardPositives.prepare` generates the training set from the training split with the base
  model (FGS, FGV, HC-D-X, HC-S-X from :mod:`robustkit.plugins.hotcold`, scaled by Y, kept inside a
  PASS band) or loads it from the on-disk cache (:mod:`.generation`);
- :meth:`~HardPositives.batch_loss` trains each clean batch together with hard positives drawn from it.

Modules: :mod:`.kinds` (the ``types`` syntax), :mod:`.generation` (generation and cache),
:mod:`.defense` (the defense).
"""

from __future__ import annotations

from robustkit.hookspecs import Register, hookimpl
from robustkit.plugins.hard_positives.defense import HardPositives
from robustkit.plugins.hard_positives.generation import HardPositiveSet, SetCache, generate
from robustkit.plugins.hard_positives.kinds import HardPositiveType, parse_types

__all__ = ["HardPositives", "HardPositiveSet", "HardPositiveType", "SetCache", "generate", "parse_types"]


@hookimpl
def register_defenses(register: Register) -> None:
    """Register the ``hard-positives`` defense."""
    register(HardPositives.name, HardPositives, threat_models=("unbounded",),
             paper="Rozsa et al. 2016, Adversarial Diversity and Hard Positive Generation")
