"""Benchmark results on disk: one record per finished cell, append-only, atomic, resumable.

A cell is a self-contained unit of work (spec in, record out): training one defense at one knob value
and seed, then evaluating it. Its key is a hash of everything that determines it, so a rerun skips the
cells that finished, and a changed spec reuses exactly the cells whose settings did not change. Each
record is its own file written atomically (temporary file, then rename), so killing a run at any moment
loses at most the cell in progress and never leaves a half-written record.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterator, Mapping

from robustkit.files import atomic_write_text, jsonable
from robustkit.errors import RobustkitError

RECORDS_DIR = "cells"


def cell_key(settings: Mapping[str, Any]) -> str:
    """A stable hash of a cell's settings (canonical JSON: sorted keys, no whitespace)."""
    canonical = json.dumps(jsonable(settings), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:20]


class ResultStore:
    """Records of finished cells under ``root/cells/<key>.json``.

    :param root: the benchmark's output folder.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.cells = self.root / RECORDS_DIR

    def path(self, key: str) -> Path:
        return self.cells / f"{key}.json"

    def has(self, key: str) -> bool:
        return self.path(key).exists()

    def get(self, key: str) -> dict[str, Any] | None:
        path = self.path(key)
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise RobustkitError(f"result record {path} is unreadable ({err}); delete it to recompute that cell") from None

    def put(self, key: str, settings: Mapping[str, Any], result: Mapping[str, Any]) -> Path:
        """Store a finished cell; an existing record is never overwritten (append-only)."""
        if cell_key(settings) != key:
            raise ValueError("the key does not match the settings: compute it with cell_key(settings)")
        path = self.path(key)
        if path.exists():
            raise RobustkitError(f"cell {key} is already recorded at {path}; records are append-only")
        record = {"key": key, "settings": jsonable(settings), "result": jsonable(result)}
        atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True) + "\n")
        return path

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Every record, in key order (temporary files of interrupted writes are skipped)."""
        if not self.cells.is_dir():
            return iter(())
        return (self.get(p.stem) for p in sorted(self.cells.glob("*.json")))  # type: ignore[misc]

    def __len__(self) -> int:
        return sum(1 for _ in self.cells.glob("*.json")) if self.cells.is_dir() else 0
