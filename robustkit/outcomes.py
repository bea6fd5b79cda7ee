"""Per-example outcomes of one evaluated model, kept compactly in its benchmark record.

Every reading of the accuracy-matched protocol, and its bootstrap interval, is recomputed from these
arrays, so they are the record's ground truth; the summary numbers beside them are derived.

Per model: ``clean_correct`` (bool per example); per attack: ``fooled`` (the example counts as broken:
clean-correct, misclassified after the attack, and within the threat model), ``success`` (misclassified
after the attack at any distance) and ``l2`` (distance of the adversarial, 0 where the attack did not run).

On disk (:meth:`Outcomes.to_json`) booleans are bit-packed and distances float32, both base64, so 10,000
examples and three attacks take about 170 KB.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

FORMAT = 1


def _bits(values: np.ndarray) -> str:
    return base64.b64encode(np.packbits(values.astype(bool)).tobytes()).decode("ascii")


def _unbits(text: str, n: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8), count=n).astype(bool)


def _floats(values: np.ndarray) -> str:
    return base64.b64encode(np.asarray(values, dtype="<f4").tobytes()).decode("ascii")


def _unfloats(text: str, n: int) -> np.ndarray:
    out = np.frombuffer(base64.b64decode(text), dtype="<f4").astype(np.float64)
    if out.size != n:
        raise ValueError(f"expected {n} distances, found {out.size}")
    return out


@dataclass
class AttackOutcomes:
    """One attack's per-example outcomes (arrays of length n)."""

    fooled: np.ndarray
    success: np.ndarray
    l2: np.ndarray


@dataclass
class Outcomes:
    """One model's per-example outcomes on the evaluation examples."""

    clean_correct: np.ndarray
    attacks: dict[str, AttackOutcomes] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.clean_correct.size)

    def robust(self, labels: list[str] | None = None) -> np.ndarray:
        """Correct on the clean image and not fooled by any of ``labels`` (default: every attack)."""
        out = self.clean_correct.copy()
        for label in labels if labels is not None else list(self.attacks):
            out &= ~self.attacks[label].fooled
        return out

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "n": self.n, "clean_correct": _bits(self.clean_correct),
                "attacks": {label: {"fooled": _bits(a.fooled), "success": _bits(a.success), "l2": _floats(a.l2)}
                            for label, a in self.attacks.items()}}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> "Outcomes":
        """Decode :meth:`to_json`; raises ``ValueError`` on a damaged or foreign document."""
        try:
            if doc.get("format") != FORMAT:
                raise ValueError(f"outcomes format {doc.get('format')!r}, this robustkit reads {FORMAT}")
            n = int(doc["n"])
            attacks = {label: AttackOutcomes(_unbits(a["fooled"], n), _unbits(a["success"], n), _unfloats(a["l2"], n))
                       for label, a in doc["attacks"].items()}
            return cls(_unbits(doc["clean_correct"], n), attacks)
        except (KeyError, TypeError, AttributeError, ValueError, base64.binascii.Error) as err:
            raise ValueError(f"damaged per-example outcomes ({err})") from None
