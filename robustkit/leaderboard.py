"""Leaderboard JSON: RobustBench's model-info fields as numbers, plus provenance, checked by a schema.

One entry per (defense, model). Fields follow RobustBench (``link``, ``name``, ``authors``,
``additional_data``, ``number_forward_passes``, ``dataset``, ``venue``, ``architecture``, ``eps``,
``clean_acc``, ``reported``, ``autoattack_acc``) with two differences:

- Numbers are JSON numbers, not strings. Accuracies are in **percent** (0-100) like RobustBench,
  rounded to 4 decimals; ``eps`` is in pixel units of images in [0, 1] (8/255 is 0.0313...).
- ``robust_acc`` is the pointwise worst case over the attack suite named by ``attack_suite`` within the
  entry's threat model (``threat_model``, ``eps``): an example counts as broken only by an attack
  bounded in that norm whose adversarial lies within eps; attacks without a budget never count.
  ``autoattack_acc`` (the same number) is present only when the suite is ``autoattack``.
  ``attack_acc`` keeps each attack's own robust accuracy.

``provenance`` records how the numbers were made: robustkit and plugin versions, seed,
n_examples, each attack's name and parameters, device, runtime and a UTC timestamp.
The schema ships as ``robustkit/schemas/leaderboard.schema.json`` (JSON Schema draft 2020-12).
"""

from __future__ import annotations

import functools
import json
import math
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping

import jsonschema
import torch

from robustkit.version import __version__
from robustkit.errors import RobustkitError
from robustkit.evaluation import EvaluationResult
from robustkit.files import atomic_write_text, jsonable
from robustkit.threat import ThreatModel

SCHEMA_FILE = "schemas/leaderboard.schema.json"
AUTOATTACK = "autoattack"
UNITS = {"accuracy": "percent", "eps": "pixel units of images in [0, 1]"}


@functools.lru_cache(maxsize=1)
def leaderboard_schema() -> dict[str, Any]:
    """The leaderboard JSON Schema, read from the installed package."""
    return json.loads(resources.files("robustkit").joinpath(SCHEMA_FILE).read_text(encoding="utf-8"))


def _percent(fraction: float) -> float:
    return round(100.0 * fraction, 4)


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def leaderboard_entry(result: EvaluationResult, *, defense: str, model: str, dataset: str, eps: float,
                      threat_model: str = "linf", attack_suite: str = "custom", name: str | None = None,
                      link: str = "", authors: str = "", venue: str = "", architecture: str | None = None,
                      additional_data: bool = False, number_forward_passes: int = 1,
                      reported: float | None = None, footnote: str | None = None,
                      plugin_versions: dict[str, str | None] | None = None,
                      normalization: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One leaderboard entry for ``model`` trained with ``defense``, from an evaluation result.

    :param result: what :func:`robustkit.evaluation.evaluate` returned.
    :param defense: defense name (``none`` for natural training).
    :param model: model identifier; also the ``architecture`` unless that is given.
    :param dataset: dataset name (RobustBench spells ``cifar10``).
    :param eps: the threat model's budget in pixel units of [0, 1] images.
    :param attack_suite: the suite's name; ``autoattack`` adds ``autoattack_acc``.
    :param name: the entry's title (RobustBench: the paper title); defaults to ``defense (model)``.
    :param reported: the robust accuracy the paper reports, in percent.
    :param plugin_versions: ``Host.plugin_versions()``; the process-wide host's when None.
    :param normalization: what the model did to the images before its network (``Normalization.to_json()``).
    """
    if plugin_versions is None:
        from robustkit.host import get_host  # the host loads plugins; only needed when not given

        plugin_versions = get_host().plugin_versions()
    suite = AUTOATTACK if attack_suite.lower() == AUTOATTACK else attack_suite
    entry: dict[str, Any] = {
        "defense": defense,
        "model": model,
        "name": name if name is not None else f"{defense} ({model})",
        "link": link,
        "authors": authors,
        "additional_data": bool(additional_data),
        "number_forward_passes": int(number_forward_passes),
        "dataset": dataset,
        "venue": venue,
        "architecture": architecture if architecture is not None else model,
        "threat_model": threat_model,
        "eps": float(eps),
        "clean_acc": _percent(result.clean_accuracy),
        "robust_acc": _percent(result.worst_case_within(ThreatModel(threat_model, float(eps)))),
        "attack_suite": suite,
        "attack_acc": {k: _percent(v) for k, v in result.robust_accuracy.items()},
        "reported": None if reported is None else float(reported),
        "provenance": {
            "robustkit_version": __version__,
            "plugin_versions": dict(plugin_versions),
            "seed": result.seed,
            "n_examples": result.n_examples,
            "attacks": [
                {"name": key, "attack": s.description.get("name", key),
                 **jsonable({k: v for k, v in s.description.items() if k != "name"})}
                for key, s in result.attacks.items()
            ],
            "device": result.device,
            "runtime_seconds": round(result.seconds, 3),
            "timestamp": _utc_now(),
            "torch_version": torch.__version__,
            "normalization": jsonable(normalization) if normalization is not None else None,
        },
    }
    if suite == AUTOATTACK:
        entry["autoattack_acc"] = entry["robust_acc"]
    if footnote is not None:
        entry["footnote"] = footnote
    return entry


def _number(value: Any) -> float:
    # Ranking happens before validation, so a malformed value must not crash it.
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else float("-inf")


def leaderboard_document(entries: Iterable[dict[str, Any]], *, presorted: bool = False) -> dict[str, Any]:
    """The whole leaderboard: entries ranked by robust accuracy, then clean accuracy (both descending),
    or in the given order with ``presorted`` (benchmark exports rank by matched robustness)."""
    ranked = list(entries) if presorted else sorted(
        entries, key=lambda e: (-_number(e.get("robust_acc")), -_number(e.get("clean_acc"))))
    return {"schema": "robustkit-leaderboard", "schema_version": 2, "units": dict(UNITS),
            "generated": _utc_now(), "entries": ranked}


def validate_leaderboard(doc_or_path: dict[str, Any] | str | Path) -> dict[str, Any]:
    """Check a leaderboard document (or file) against the schema; return the document.

    Raises :class:`RobustkitError` with one line naming the JSON path of the first problem, e.g.
    ``leaderboard: $.entries[0].clean_acc: '91.1' is not of type 'number'``.
    """
    where = "leaderboard"
    if isinstance(doc_or_path, (str, Path)):
        where = str(doc_or_path)
        try:
            doc = json.loads(Path(doc_or_path).read_text(encoding="utf-8"), parse_constant=_no_constant)
        except OSError as err:
            raise RobustkitError(f"{where}: cannot read: {err.strerror or err}") from None
        except UnicodeDecodeError:
            raise RobustkitError(f"{where}: not a text file (not UTF-8); give a leaderboard JSON file") from None
        except json.JSONDecodeError as err:
            raise RobustkitError(f"{where}: not JSON: {err.msg} at line {err.lineno} column {err.colno}") from None
        except ValueError as err:
            raise RobustkitError(f"{where}: {err}") from None
    else:
        doc = doc_or_path
    bad = _first_non_finite(doc, "$")
    if bad is not None:
        raise RobustkitError(f"{where}: {bad}: a number must be finite (NaN or infinity found)")
    validator = jsonschema.Draft202012Validator(leaderboard_schema())
    error = jsonschema.exceptions.best_match(validator.iter_errors(doc))
    if error is not None:
        message = " ".join(error.message.split())
        if len(message) > 200:
            message = message[:197] + "..."
        raise RobustkitError(f"{where}: {error.json_path}: {message}")
    if "benchmark" in doc:
        for i, entry in enumerate(doc["entries"]):
            theirs = entry["provenance"].get("protocol_fingerprint")
            if theirs != doc["benchmark"]["fingerprint"]:
                raise RobustkitError(f"{where}: $.entries[{i}].provenance.protocol_fingerprint is {theirs!r}, but the "
                                     f"file's benchmark.fingerprint is {doc['benchmark']['fingerprint']!r}; an entry "
                                     "made under another protocol does not belong in this file")
    for part in ("entries", "published"):  # published: imported entries beside a benchmark's (not ranked)
        seen: dict[tuple[str, str], int] = {}
        for i, entry in enumerate(doc.get(part, [])):
            key = (entry["defense"], entry["model"])
            if key in seen:
                raise RobustkitError(f"{where}: $.{part}[{i}]: defense {key[0]!r} with model {key[1]!r} already "
                                     f"appears at $.{part}[{seen[key]}]; keep one entry per (defense, model)")
            seen[key] = i
    return doc


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number a leaderboard may hold (values must be finite)")


def _first_non_finite(value: Any, path: str) -> str | None:
    """The JSON path of the first NaN or infinite number in ``value`` (None: there is none)."""
    if isinstance(value, float) and not math.isfinite(value):
        return path
    if isinstance(value, dict):
        for key, item in value.items():
            found = _first_non_finite(item, f"{path}.{key}")
            if found:
                return found
    if isinstance(value, list):
        for i, item in enumerate(value):
            found = _first_non_finite(item, f"{path}[{i}]")
            if found:
                return found
    return None


def write_leaderboard(path: str | Path, entries: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Rank, validate and write ``entries`` as a leaderboard file (atomically); return the document."""
    doc = validate_leaderboard(leaderboard_document(entries))
    atomic_write_text(path, json.dumps(doc, indent=2) + "\n")
    return doc


def load_leaderboard(path: str | Path) -> dict[str, Any]:
    """Read and validate a leaderboard file."""
    return validate_leaderboard(path)
