"""What differs between the Python versions robustkit supports (3.10 and later).

- ``tomllib`` is in the standard library from 3.11; on 3.10 it is ``tomli``, the package it was taken from
  (same API, a declared dependency there).
"""

from __future__ import annotations

import sys

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = ["tomllib"]
