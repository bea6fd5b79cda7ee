"""Progress bars for long work (tqdm), switched off with ``ROBUSTKIT_PROGRESS=0``."""

from __future__ import annotations

import os
from typing import Any, Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def enabled() -> bool:
    return os.environ.get("ROBUSTKIT_PROGRESS", "1").lower() not in {"0", "false", "no", "off"}


def progress(iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str = "",
             leave: bool = False, unit: str = "it", **kwargs: Any) -> Any:
    """A tqdm bar on stderr, or a silent pass-through when progress is switched off."""
    return tqdm(iterable, total=total, desc=desc, leave=leave, unit=unit, disable=not enabled(),
                dynamic_ncols=True, **kwargs)
