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


class _Bar(_Quiet):
    """What :func:`progress` returns with bars: iterates ``iterable`` itself and moves a tqdm bar.

    The iterable never goes to tqdm: ``tqdm.auto``'s class calls ``iter()`` on it once when built and again
    when iterated, and a second ``iter()`` of a shuffled DataLoader draws its order anew from the loader's
    generator, so a run on a terminal would train on other batches than the same run in a pipe."""

    def __init__(self, iterable: Iterable[Any] | None, bar: Any) -> None:
        super().__init__(iterable)
        self.bar = bar
        self.set_postfix, self.set_description = bar.set_postfix, bar.set_description
        self.update, self.refresh = bar.update, bar.refresh

    def __iter__(self) -> Iterator[Any]:
        try:
            for item in super().__iter__():
                yield item
                self.bar.update(1)
        finally:
            self.bar.close()

    def __exit__(self, *exc: Any) -> None:
        self.bar.close()

    def close(self) -> None:
        self.bar.close()


def progress(iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str = "",
             leave: bool = False, unit: str = "it", **kwargs: Any) -> Any:
    """A tqdm bar on stderr when bars are on (:func:`bars_enabled`), else a silent pass-through (no tqdm).

    Either way ``iterable`` is iterated exactly once, by this wrapper, so the bars cannot change what a run
    computes."""
    if not bars_enabled():
        return _Quiet(iterable)
    from tqdm.auto import tqdm

    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    bar = tqdm(total=total, desc=desc, leave=leave, unit=unit, file=sys.stderr, dynamic_ncols=True, **kwargs)
    return _Bar(iterable, bar)


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
