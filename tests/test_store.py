"""The results store: keys from settings, append-only atomic records, resumable reads."""

from __future__ import annotations

import pytest

from robustkit.errors import RobustkitError
from robustkit.store import ResultStore, cell_key

SETTINGS = {"defense": "pgd-at", "knob": {"eps": 0.1}, "seed": 0, "model": "lenet", "epochs": 3}


def test_key_is_stable_and_order_independent():
    reordered = dict(reversed(list(SETTINGS.items())))
    assert cell_key(SETTINGS) == cell_key(reordered)
    assert cell_key(SETTINGS) != cell_key({**SETTINGS, "seed": 1})
    assert cell_key({"eps": (0.1, 0.2)}) == cell_key({"eps": [0.1, 0.2]})


def test_put_get_iterate(tmp_path):
    store = ResultStore(tmp_path)
    key = cell_key(SETTINGS)
    assert not store.has(key) and store.get(key) is None and len(store) == 0
    store.put(key, SETTINGS, {"clean_acc": 0.9})
    again = ResultStore(tmp_path)  # a new process sees the same records
    assert again.has(key) and again.get(key)["result"] == {"clean_acc": 0.9}
    assert [r["key"] for r in again] == [key] and len(again) == 1


def test_records_are_append_only_and_keys_checked(tmp_path):
    store = ResultStore(tmp_path)
    key = cell_key(SETTINGS)
    store.put(key, SETTINGS, {"clean_acc": 0.9})
    with pytest.raises(RobustkitError, match="append-only"):
        store.put(key, SETTINGS, {"clean_acc": 0.1})
    assert store.get(key)["result"]["clean_acc"] == 0.9
    with pytest.raises(ValueError, match="does not match"):
        store.put("0" * 20, SETTINGS, {})


def test_leftover_temporary_files_are_ignored_and_corrupt_records_explained(tmp_path):
    store = ResultStore(tmp_path)
    store.put(cell_key(SETTINGS), SETTINGS, {"ok": True})
    (store.cells / ".abc.json.123.tmp").write_text("{half")
    assert len(store) == 1 and len(list(store)) == 1
    (store.cells / "broken.json").write_text("{half")
    with pytest.raises(RobustkitError, match="delete it to recompute"):
        store.get("broken")
