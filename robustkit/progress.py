"""Progress of long work, on stderr only (stdout stays machine-readable).

Two forms, never both:

- **bars** (tqdm), redrawn in place, when stderr is a terminal;
- **plain lines**, one per finished unit of long work (a training epoch, an evaluation), when it is not
  (a pipe, a file, ``tee``, CI logs): no carriage returns, no cursor codes, no tqdm at all.

``ROBUSTKIT_PROGRESS`` chooses:

- unset, empty or ``auto``: bars when stderr is a terminal, plain lines otherwise;
- ``0`` (``false``, ``no``, ``off``): never bars; the plain lines are still written, so a long ``train``
  still says how it is going;
- ``1`` (``true``, ``yes``, ``on``): always bars, even when stderr is not a terminal (for log viewers
  that render carriage returns), and then no plain lines.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Iterable, Iterator, TypeVar

T = TypeVar("T")

OFF = {"0", "false", "no", "off"}
ON = {"1", "true", "yes", "on"}

_muted = False  # inside work whose caller reports it as one line (a benchmark cell)


def _stream_is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


def bars_enabled() -> bool:
    """Whether progress is shown as tqdm bars (else as plain lines); see the module notes."""
    mode = os.environ.get("ROBUSTKIT_PROGRESS", "").strip().lower()
    if mode in OFF:
        return False
    if mode in ON:
        return True
    return _stream_is_terminal(sys.stderr)


class _Quiet:
    """What :func:`progress` returns without bars: iterates ``iterable`` and ignores the bar calls."""

    def __init__(self, iterable: Iterable[Any] | None) -> None:
        self.iterable = iterable

    def __iter__(self) -> Iterator[Any]:
        return iter(self.iterable if self.iterable is not None else ())

    def __enter__(self) -> "_Quiet":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def _ignore(self, *args: Any, **kwargs: Any) -> None:
        return None

    set_postfix = set_description = update = refresh = close = _ignore


def progress(iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str = "",
             leave: bool = False, unit: str = "it", **kwargs: Any) -> Any:
    """A tqdm bar on stderr when bars are on (:func:`bars_enabled`), else a silent pass-through (no tqdm)."""
    if not bars_enabled():
        return _Quiet(iterable)
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=leave, unit=unit, file=sys.stderr,
                dynamic_ncols=True, **kwargs)


@contextlib.contextmanager
def lines_muted() -> Iterator[None]:
    """No plain lines inside: the caller reports the whole piece of work in one line of its own (a
    benchmark writes one line per cell, not one per epoch of every cell)."""
    global _muted
    before, _muted = _muted, True
    try:
        yield
    finally:
        _muted = before


def mute_lines() -> None:
    """No plain lines from this process from now on (a benchmark's worker process: the driver writes them)."""
    global _muted
    _muted = True


def report(line: str) -> None:
    """One plain progress line on stderr, when bars are off (with bars on, the bars show it) and the
    caller has not muted them (:func:`lines_muted`)."""
    if _muted or bars_enabled():
        return
    stream = sys.stderr
    print(line, file=stream)
    try:
        stream.flush()  # a pipe must see each line when it is done, not at exit
    except (AttributeError, ValueError, OSError):
        pass


def percent(value: float | None) -> str | None:
    """``0.912`` -> ``'91.2%'``; ``None`` stays ``None``."""
    return None if value is None else f"{100 * value:.1f}%"
