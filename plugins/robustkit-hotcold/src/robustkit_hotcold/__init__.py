"""Native FGS, FGV and hot/cold attacks with the line search and PASS of Rozsa et al. (2016).

'Adversarial Diversity and Hard Positive Generation' (CVPR workshops 2016): each attack picks a
direction per image, searches it for the closest quantized image the model misclassifies
(:mod:`.line_search`), optionally pushes further by a factor ``scale`` (hard positives) and keeps
only images whose PASS (:func:`robustkit_hotcold.pass_metric.pass_score`) reaches ``pass_threshold``.
PASS and SSIM are also registered as image metrics (:mod:`.metrics`: ``robustkit attack --metric pass``).

Registered attacks (one per module):

- ``fgs`` (:mod:`.fgs`): sign of the loss gradient.
- ``fgv`` (:mod:`.fgv`): raw loss gradient.
- ``hotcold`` (:mod:`.hotcold`): HC-D / HC-S toward the X-th closest class, or all X at once.

They are white-box, minimal-distortion attacks without a budget (``threat_models=("unbounded",)``):
compare them by the distances and PASS of their adversarials, not by robust accuracy at an eps.
"""

from __future__ import annotations

from robustkit.hookspecs import Register, hookimpl
from robustkit_hotcold.fgs import FGS
from robustkit_hotcold.fgv import FGV
from robustkit_hotcold.hotcold import HotCold
from robustkit_hotcold.line_search import LineSearchAttack, LineSearchResult, line_search
from robustkit_hotcold.metrics import PASS, SSIM

__all__ = ["FGS", "FGV", "HotCold", "LineSearchAttack", "LineSearchResult", "PASS", "SSIM", "line_search"]

ATTACKS = (FGS, FGV, HotCold)


@hookimpl
def register_attacks(register: Register) -> None:
    """Register ``fgs``, ``fgv`` and ``hotcold``."""
    for cls in ATTACKS:
        register(cls.name, cls, paper="Rozsa et al. 2016, Adversarial Diversity and Hard Positive Generation")


@hookimpl
def register_metrics(register: Register) -> None:
    """Register the image metrics ``pass`` and ``ssim``."""
    for cls in (PASS, SSIM):
        register(cls.name, cls, paper="Rozsa et al. 2016" if cls is PASS else "Wang et al. 2004")
