"""robustkit plugin ``rlfat``: robust local features for adversarial training (Song et al., ICLR 2020).

Registers the defense ``rlfat`` (:mod:`.defense`) and the paper's benchmark preset ``rlfat``; its analyses,
loss sensitivity under photometric shifts (:mod:`.sensitivity`) and SmoothGrad saliency (:mod:`.saliency`),
are the library functions the reproduction uses.
"""

from __future__ import annotations

from robustkit.bench.presets import register_preset
from robustkit.hookspecs import Register, hookimpl
from robustkit_rlfat.defense import RLFAT, RandomBlockShuffle, random_block_shuffle

__all__ = ["RLFAT", "RandomBlockShuffle", "random_block_shuffle"]


@hookimpl
def register_defenses(register: Register) -> None:
    """Register ``rlfat``."""
    register("rlfat", RLFAT, threat_models=("linf",))


@hookimpl
def register_benchmarks(register: Register) -> None:
    """Register the paper's preset ``rlfat``."""
    register_preset(register, __name__, "rlfat.toml")
