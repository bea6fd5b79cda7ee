"""Before cells run on a cluster: does every node have what the driver has?

A cell's record must not depend on where it ran, so every node must run the same robustkit, plugins,
torch and Python, see the same data root and model files, and see the output folder the driver writes
(training checkpoints and resumable state live there). :func:`node_facts` gathers one machine's facts
(the driver's, and each node's in a task pinned to it); :func:`check_nodes` compares them and names the
first node that differs, in one line. Nothing here imports Ray.
"""

from __future__ import annotations

import hashlib
import os
import platform
from pathlib import Path
from typing import Any, Mapping, Sequence

from robustkit.devices import environment_difference
from robustkit.errors import RobustkitError

#: Files walked at most to fingerprint a data root (a huge image folder is judged by its first ones).
MAX_FILES = 100_000

#: The file the driver writes into the output folder for every node to read back (then removes).
MARKER_PREFIX = ".robustkit-shared-"


def node_facts(data_root: str | None, model_files: Mapping[str, str] | None, marker: tuple[str, str] | None,
               environment: dict[str, Any] | None = None) -> dict[str, Any]:
    """This machine's facts: versions (robustkit, Python, torch, each plugin), data root and model files
    fingerprints, whether it sees the output folder's marker, and the numeric environment if given.

    :param marker: ``(path, text)`` of the marker the driver wrote into the output folder; None on the driver.
    """
    import torch

    from robustkit.version import __version__

    versions: dict[str, str | None] = {"robustkit": __version__, "python": platform.python_version(),
                                       "torch": torch.__version__}
    versions.update({f"plugin {name}": version for name, version in installed_plugins().items()})
    facts: dict[str, Any] = {
        "node": platform.node(), "versions": versions,
        "data_root": path_fingerprint(data_root) if data_root else None,
        "model_files": {key: path_fingerprint(path) for key, path in sorted((model_files or {}).items())},
        "environment": environment,
    }
    if marker is not None:
        facts["output_folder"] = _marker_state(*marker)
    return facts


def installed_plugins() -> dict[str, str]:
    """``{distribution: version}`` of every installed distribution with a ``robustkit`` entry point: what a
    node can load (read from package metadata, so a node is compared without building its plugin host)."""
    from importlib.metadata import entry_points

    found: dict[str, str] = {}
    for point in entry_points(group="robustkit"):
        dist = getattr(point, "dist", None)
        if dist is not None:
            found[dist.metadata["Name"]] = dist.version
    return dict(sorted(found.items()))


def path_fingerprint(path: str) -> str:
    """``missing``, or a hash of a file's bytes, or of a folder's file names and sizes (its first
    :data:`MAX_FILES` files), with the count: equal fingerprints mean the same data for every node."""
    root = Path(path)
    if not root.exists():
        return "missing"
    digest = hashlib.sha256()
    if root.is_file():
        with open(root, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return f"file sha256 {digest.hexdigest()[:16]}"
    count = 0
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            file = Path(folder) / name
            try:
                size = file.stat().st_size
            except OSError:
                continue
            digest.update(f"{file.relative_to(root).as_posix()}\t{size}\n".encode())
            count += 1
            if count >= MAX_FILES:
                return f"{count}+ files, names and sizes {digest.hexdigest()[:16]}"
    return f"{count} files, names and sizes {digest.hexdigest()[:16]}"


def _marker_state(path: str, text: str) -> str:
    try:
        found = Path(path).read_text(encoding="utf-8")
    except OSError:
        return "missing"
    return "seen" if found == text else "another folder"


def check_nodes(driver: Mapping[str, Any], nodes: Sequence[Mapping[str, Any]], out_dir: Path,
                data_root: str | None) -> dict[str, Any] | None:
    """Compare each node's facts with the driver's; return the numeric environment the cells will run in
    (the same on every node that reported one; None if none did).

    :param nodes: each node's :func:`node_facts`, plus ``where`` (its address and name, for messages).
    :raises RobustkitError: naming the first node that differs and how.
    """
    fix = "install the same robustkit, plugins, torch and Python on every node"
    for node in nodes:
        where = node["where"]
        ours, theirs = driver["versions"], node["versions"]
        for key in sorted(set(ours) | set(theirs)):
            if ours.get(key) != theirs.get(key):
                raise RobustkitError(f"node {where} differs from this machine in {key}: {_version(theirs.get(key))} "
                                     f"there, {_version(ours.get(key))} here; {fix}")
        if node.get("output_folder") != "seen":
            state = "cannot read" if node.get("output_folder") == "missing" else "sees another folder at"
            raise RobustkitError(f"node {where} {state} the output folder {out_dir}: a run on several machines "
                                 "needs an --out folder every node mounts at the same path (a shared file system)")
        if node["data_root"] != driver["data_root"]:
            if node["data_root"] == "missing":
                what = f"has no data root {data_root}"
            else:
                what = f"holds other files in the data root {data_root} ({node['data_root']} vs {driver['data_root']} here)"
            raise RobustkitError(f"node {where} {what}; every node needs the same dataset at the same path")
        for key, fingerprint in driver["model_files"].items():
            if node["model_files"].get(key) != fingerprint:
                raise RobustkitError(f"node {where}: the model's {key} is {node['model_files'].get(key)} there, "
                                     f"{fingerprint} here; every node needs the same file at the same path")
    reported = [node for node in nodes if node.get("environment") is not None]
    for node in reported[1:]:
        difference = environment_difference(reported[0]["environment"], node["environment"])
        if difference is not None:
            raise RobustkitError(f"node {node['where']} would compute with another numeric environment than node "
                                 f"{reported[0]['where']} ({difference}); give every node the same hardware kind "
                                 "and software, or run on one kind")
    return dict(reported[0]["environment"]) if reported else None


def _version(value: Any) -> str:
    return "not installed" if value is None else str(value)
