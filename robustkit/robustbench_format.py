"""RobustBench ``model_info`` files in and out of robustkit leaderboards.

RobustBench keeps one JSON file per model in ``model_info/<dataset>/<threat>/<ModelId>.json``
(``<threat>`` is ``Linf``, ``L2`` or ``corruptions``). Every file has ``link``, ``name``, ``authors``,
``venue``, ``architecture``, ``dataset`` (strings), ``additional_data`` (bool),
``number_forward_passes`` (int), ``eps`` (a string such as ``"8/255"``, ``"0.031"`` or ``"0.5"``; ``null``
in most corruptions files, where a string names the *training* budget), ``clean_acc`` and ``reported``
(percent as strings such as ``"91.08"``; ``reported`` may be ``""``, ``"null"`` or ``null``). ``Linf`` and
``L2`` files add ``autoattack_acc`` (standard AutoAttack), and may add ``external`` (the best known robust
accuracy, from another evaluation that the ``footnote`` names) and ``unreliable`` (bool: the AutoAttack
evaluation may be unreliable). ``corruptions`` files add ``corruptions_acc`` (and on ImageNet
``corruptions_mce``, ``corruptions_acc_3d``, ``corruptions_mce_3d``). ``footnote`` is optional (a string,
``""`` or ``null``).

Import (:func:`import_model_infos`, ``robustkit leaderboard import FILE... --from robustbench``) reads such
files into one leaderboard. Numbers become JSON numbers (accuracies stay in percent, ``eps`` a float of
the fraction it spells). The threat model comes from the file's folder or ``--threat`` (both given and
different: refused). Each entry is ``defense`` = the model id (the file name), ``model`` = its
architecture; ``robust_acc`` is ``autoattack_acc`` with ``attack_suite`` ``autoattack`` (or ``external``
with suite ``external`` when a file has no AutoAttack number; ``corruptions_acc`` with suite
``corruptions``), and ``external``, ``unreliable``, ``footnote`` are kept as they are. A malformed file is
one line naming the file and the field.

How imported entries relate to robustkit's own (the design): they are **reported** numbers, not
measurements. RobustBench evaluates the full test set with its own code and publishes only the
accuracies, so an imported entry has no per-example outcomes, no seeds, no bootstrap interval, no audit
and no protocol fingerprint, and robustkit cannot re-read it at a matched clean accuracy. So:

- every imported entry says ``source: "robustbench"`` and carries ``provenance`` of its own kind (the file
  it came from, its SHA-256, when and by which robustkit it was read) instead of robustkit's; the schema
  refuses measurement fields (points, intervals, ranks) on it;
- a file of imported entries alone is a plain leaderboard, ordered by ``robust_acc`` (the AutoAttack
  number every Linf/L2 entry has; RobustBench's own table orders by ``external`` where present);
- ``robustkit leaderboard merge`` of a benchmark leaderboard with imported files (:func:`merge_with_published`)
  pools the benchmark files exactly as before (same protocol and environment, re-ranked from their points)
  and puts the imported entries under the document's ``published`` key: shown beside the ranked entries,
  never given a rank or mixed into the matched ranking, because they were not measured under the
  benchmark's protocol. They must share the benchmark's dataset and threat model (their eps may differ,
  as within RobustBench's own tables; each entry keeps its own). Imported entries are never put among a
  benchmark file's ``entries``, whose protocol fingerprint check would (rightly) refuse them.

Export (:func:`export_model_infos`, ``robustkit leaderboard export SRC --format robustbench -o OUTDIR``)
writes one ``model_info`` file per trained model in RobustBench's field types into
``OUTDIR/<dataset>/<Linf|L2|corruptions>/<ModelId>.json``. ``SRC`` is a benchmark results folder (every
finished cell is one model), or a leaderboard JSON file (a benchmark export: one file per point;
imported entries and single evaluations: one per entry). Accuracies are percent strings with two
decimals; ``eps`` is ``"k/255"`` for an Linf budget that is k/255, else a decimal string; ``reported`` is
``""`` for robustkit's own models (no paper reported them). ``autoattack_acc`` is written only from an
attack of the suite that is AutoAttack in its standard version; the suite's pointwise worst case goes in
``external`` when there is no such attack, or when the other attacks of the suite lower it, and the
``footnote`` says which attacks gave it and on how many test examples (RobustBench uses the full test set).
``unreliable`` is written when the model was audited: true when robustkit's gradient-masking audit raised
a flag (named in the footnote). ``additional_data`` is false and ``number_forward_passes`` 1. Files are
written atomically, and never through a symbolic link: an OUTDIR, subfolder or file that is a link is
refused (the folders above OUTDIR are the user's business).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from robustkit.version import __version__
from robustkit.errors import RobustkitError
from robustkit.files import atomic_write_text
from robustkit.leaderboard import _utc_now, leaderboard_document, validate_leaderboard

SOURCE = "robustbench"
#: RobustBench's threat folders, by robustkit's threat_model spelling.
THREATS = {"linf": "Linf", "l2": "L2", "corruptions": "corruptions"}
#: The datasets RobustBench keeps folders for: a file under one of them takes its dataset from the folder.
DATASET_FOLDERS = ("cifar10", "cifar100", "imagenet")
#: Fields every RobustBench model_info file has (``eps`` too, except in corruptions files).
SHARED = ("link", "name", "authors", "additional_data", "number_forward_passes", "dataset", "venue",
          "architecture")
TEXT_FIELDS = ("link", "name", "authors", "venue", "architecture")
CORRUPTION_METRICS = ("corruptions_mce", "corruptions_acc_3d", "corruptions_mce_3d")
KNOWN = {*SHARED, "eps", "clean_acc", "reported", "autoattack_acc", "external", "footnote", "unreliable",
         "corruptions_acc", *CORRUPTION_METRICS}
#: How RobustBench files spell "the paper reported no number" in ``reported``.
NOT_REPORTED = ("", "null", "none")
AUTOATTACK_NAME = "autoattack"  # robustkit's registered AutoAttack (plugin robustkit-autoattack)

_DECIMAL = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")

Warn = Callable[[str], None]


# -- parsing -----------------------------------------------------------------------------------------


def threat_folder(name: str) -> str | None:
    """RobustBench's spelling of a threat model name (``linf`` -> ``Linf``), None if it is not one."""
    return {k.lower(): v for k, v in THREATS.items()}.get(name.lower()) if name else None


def parse_fraction(text: str) -> Fraction:
    """``"8/255"`` -> ``Fraction(8, 255)``, ``"0.5"`` -> ``Fraction(1, 2)``; ValueError or ZeroDivisionError."""
    return Fraction(text.strip())


def parse_eps(value: Any, where: str, field: str = "eps") -> float:
    """A budget as RobustBench writes it (``"8/255"``, ``"0.031"``, ``"0.5"``, or a number) as a float."""
    if isinstance(value, str):
        try:
            eps = float(parse_fraction(value))
        except ZeroDivisionError:
            raise RobustkitError(f"{where}: {field}: {value!r} divides by zero") from None
        except (ValueError, OverflowError):
            raise RobustkitError(f"{where}: {field}: {value!r} is not a budget (RobustBench writes eps like "
                                 "\"8/255\" or \"0.5\")") from None
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        eps = float(value)
    else:
        raise RobustkitError(f"{where}: {field}: expected a budget such as \"8/255\", got {_shown(value)}")
    if not math.isfinite(eps) or eps < 0:
        raise RobustkitError(f"{where}: {field}: {value!r} is not a budget (it must be a finite number >= 0)")
    return eps


def parse_percent(value: Any, where: str, field: str, *, upper: float | None = 100.0) -> float:
    """An accuracy as RobustBench writes it (``"91.08"``, or a number) as a float in percent."""
    if isinstance(value, str) and _DECIMAL.fullmatch(value.strip()):
        number = float(value)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    else:
        raise RobustkitError(f"{where}: {field}: {_shown(value)} is not a percentage (RobustBench writes "
                             "accuracies as strings like \"91.08\")")
    if not math.isfinite(number) or number < 0 or (upper is not None and number > upper):
        bounds = f"0 to {upper:g}" if upper is not None else "a finite number >= 0"
        raise RobustkitError(f"{where}: {field}: {value!r} is out of range (expected {bounds}, in percent)")
    return number


def _shown(value: Any) -> str:
    kind = {dict: "an object", list: "an array", bool: "a boolean", type(None): "null"}.get(type(value))
    if kind is not None:
        return kind if value is None or isinstance(value, (dict, list)) else f"{kind} ({json.dumps(value)})"
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _load_object(path: Path) -> tuple[dict[str, Any], bytes]:
    where = str(path)
    if path.is_dir():
        raise RobustkitError(f"{where}: is a folder, not a model_info JSON file; give the files in it "
                             f"(e.g. {where}/*.json)")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise RobustkitError(f"{where}: cannot read: {err.strerror or err}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise RobustkitError(f"{where}: not a text file (not UTF-8); give a RobustBench model_info JSON file") from None
    try:
        doc = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as err:
        raise RobustkitError(f"{where}: not JSON: {err.msg} at line {err.lineno} column {err.colno}") from None
    except ValueError as err:
        raise RobustkitError(f"{where}: {err}") from None
    if not isinstance(doc, dict):
        raise RobustkitError(f"{where}: not a RobustBench model_info file: the top level is {_shown(doc)}, "
                             "not an object")
    return doc, raw


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number a model_info file may hold (values must be finite)")


def read_model_info(path: str | Path, threat: str | None = None, warn: Warn | None = None) -> dict[str, Any]:
    """One RobustBench model_info file as a leaderboard entry (``source: "robustbench"``).

    :param threat: ``Linf``, ``L2`` or ``corruptions`` (any case); None: from the file's folder.
    :param warn: called with one line when the file contradicts its folder (the folder wins).
    :raises RobustkitError: one line naming the file and the field.
    """
    path = Path(path)
    where = str(path)
    doc, raw = _load_object(path)
    in_folder = threat_folder(path.parent.name)
    given = threat_folder(threat) if threat is not None else None
    if threat is not None and given is None:
        raise RobustkitError(f"unknown threat model {threat!r}; RobustBench has Linf, L2 and corruptions")
    if given and in_folder and given != in_folder:
        raise RobustkitError(f"{where}: the file is in a {in_folder}/ folder but --threat is {given}; "
                             "drop --threat or move the file")
    rb_threat = given or in_folder
    if rb_threat is None:
        raise RobustkitError(f"{where}: cannot tell the threat model: the file is not in a Linf/, L2/ or "
                             "corruptions/ folder; give --threat Linf, L2 or corruptions")

    def need(field: str) -> Any:
        if field not in doc:
            raise RobustkitError(f"{where}: {field}: missing (every RobustBench model_info file has it)")
        return doc[field]

    for field in SHARED:
        need(field)
    text = {}
    for field in (*TEXT_FIELDS, "dataset"):
        if not isinstance(doc[field], str):
            raise RobustkitError(f"{where}: {field}: expected a string, got {_shown(doc[field])}")
        text[field] = doc[field]
    if not text["dataset"]:
        raise RobustkitError(f"{where}: dataset: empty")
    if not isinstance(doc["additional_data"], bool):
        raise RobustkitError(f"{where}: additional_data: expected true or false, got {_shown(doc['additional_data'])}")
    passes = doc["number_forward_passes"]
    if isinstance(passes, bool) or not isinstance(passes, int) or passes < 1:
        raise RobustkitError(f"{where}: number_forward_passes: expected an integer >= 1, got {_shown(passes)}")
    dataset = text["dataset"]
    folder = path.parent.parent.name if in_folder else ""
    if folder in DATASET_FOLDERS and folder != dataset:
        if warn is not None:
            warn(f"{where}: dataset says {dataset!r} but the file is in RobustBench's {folder}/ folder, which "
                 f"decides the leaderboard it is listed on; using {folder!r}")
        dataset = folder

    clean = parse_percent(need("clean_acc"), where, "clean_acc")
    reported_raw = doc.get("reported")
    reported = (None if reported_raw is None or (isinstance(reported_raw, str)
                                                  and reported_raw.strip().lower() in NOT_REPORTED)
                else parse_percent(reported_raw, where, "reported"))
    extra: dict[str, Any] = {}
    robustbench: dict[str, Any] = {"model_id": path.stem, "threat_model": rb_threat}
    if rb_threat == "corruptions":
        eps: float | None = None
        raw_eps = doc.get("eps")
        if raw_eps is not None:
            parse_eps(raw_eps, where)  # only checked: a corruptions file's eps is the training budget
            if not isinstance(raw_eps, str):
                raw_eps = _format_decimal(float(raw_eps))
        robustbench["eps"] = raw_eps
        robust = parse_percent(need("corruptions_acc"), where, "corruptions_acc")
        suite, attack_acc = "corruptions", {"corruptions": robust}
        metrics = {}
        for field in CORRUPTION_METRICS:
            if doc.get(field) is not None:
                upper = 100.0 if field.startswith("corruptions_acc") else None
                metrics[field] = parse_percent(doc[field], where, field, upper=upper)
        if metrics:
            robustbench["metrics"] = metrics
    else:
        eps = parse_eps(need("eps"), where)
        aa = None if doc.get("autoattack_acc") is None else parse_percent(doc["autoattack_acc"], where,
                                                                          "autoattack_acc")
        external = (None if doc.get("external") in (None, "")
                    else parse_percent(doc["external"], where, "external"))
        if aa is None and external is None:
            raise RobustkitError(f"{where}: autoattack_acc: missing (a {rb_threat} file needs autoattack_acc, "
                                 "or external with a footnote saying how it was evaluated)")
        if aa is not None:
            suite, robust, attack_acc = "autoattack", aa, {"autoattack": aa}
            extra["autoattack_acc"] = aa
        else:
            suite, robust, attack_acc = "external", external, {"external": external}
        if external is not None:
            extra["external"] = external
    if doc.get("unreliable") is not None:
        if not isinstance(doc["unreliable"], bool):
            raise RobustkitError(f"{where}: unreliable: expected true or false, got {_shown(doc['unreliable'])}")
        extra["unreliable"] = doc["unreliable"]
    if "footnote" in doc:
        if doc["footnote"] is not None and not isinstance(doc["footnote"], str):
            raise RobustkitError(f"{where}: footnote: expected a string or null, got {_shown(doc['footnote'])}")
        extra["footnote"] = doc["footnote"]
    other = {k: v for k, v in doc.items() if k not in KNOWN}
    for key, value in other.items():
        try:
            json.dumps(value, allow_nan=False)
        except ValueError:
            raise RobustkitError(f"{where}: {key}: a number must be finite (infinity found)") from None
    if other:
        robustbench["other"] = other
    return {
        "defense": path.stem,
        "model": text["architecture"] or path.stem,
        "name": text["name"],
        "link": text["link"],
        "authors": text["authors"],
        "additional_data": doc["additional_data"],
        "number_forward_passes": passes,
        "dataset": dataset,
        "venue": text["venue"],
        "architecture": text["architecture"],
        "threat_model": rb_threat.lower(),
        "eps": eps,
        "clean_acc": clean,
        "robust_acc": robust,
        "attack_suite": suite,
        "attack_acc": attack_acc,
        "reported": reported,
        **extra,
        "source": SOURCE,
        "robustbench": robustbench,
        "provenance": {"source": SOURCE, "imported_from": where, "sha256": hashlib.sha256(raw).hexdigest(),
                       "robustkit_version": __version__, "timestamp": _utc_now()},
    }


def import_model_infos(paths: Iterable[str | Path], threat: str | None = None,
                       warn: Warn | None = None) -> dict[str, Any]:
    """A leaderboard document (validated) of RobustBench model_info files of one dataset and threat model."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise RobustkitError("give at least one RobustBench model_info file to import")
    entries, read_from = [], {}
    for path in paths:
        entry = read_model_info(path, threat, warn)
        if entries:
            first = entries[0]
            if (entry["dataset"], entry["threat_model"]) != (first["dataset"], first["threat_model"]):
                raise RobustkitError(f"{path}: {entry['dataset']} {entry['robustbench']['threat_model']}, but "
                                     f"{paths[0]} is {first['dataset']} {first['robustbench']['threat_model']}; "
                                     "a leaderboard holds one dataset and threat model: import them separately")
        model_id = entry["defense"]
        if model_id in read_from:
            raise RobustkitError(f"{path}: model {model_id!r} was already read from {read_from[model_id]}; "
                                 "give each model once")
        read_from[model_id] = path
        entries.append(entry)
    return validate_leaderboard(leaderboard_document(entries))


def is_import(doc: Mapping[str, Any]) -> bool:
    """Whether ``doc`` is a leaderboard of imported entries only (what ``leaderboard import`` writes)."""
    return ("benchmark" not in doc and bool(doc.get("entries"))
            and all(e.get("source") == SOURCE for e in doc["entries"]))


# -- merging -----------------------------------------------------------------------------------------


def merge_with_published(docs: Sequence[tuple[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """``leaderboard merge``: benchmark leaderboards pooled and re-ranked as before, imported RobustBench
    entries beside them under ``published`` (not ranked). Without imported entries this is exactly
    :func:`robustkit.bench.leaderboard.merge_leaderboards`.

    :param docs: ``(where, document)`` pairs, each already validated.
    """
    from robustkit.bench.leaderboard import merge_leaderboards

    measured = [(w, d) for w, d in docs if not is_import(d)]
    published = [(w, e) for w, d in docs if is_import(d) for e in d["entries"]]
    published += [(w, e) for w, d in measured for e in d.get("published", [])]
    if not published:
        return merge_leaderboards(docs)
    pool: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}
    for where, entry in published:
        key = (entry["defense"], entry["model"])
        if key in pool:
            first_where, first = pool[key]
            if _numbers(first) != _numbers(entry):
                raise RobustkitError(f"cannot merge: {where} and {first_where} both hold RobustBench model "
                                     f"{entry['defense']!r} with different numbers; keep the file you trust")
            continue
        pool[key] = (where, dict(entry))
    first_where, first = next(iter(pool.values()))
    for where, entry in pool.values():
        if (entry["dataset"], entry["threat_model"]) != (first["dataset"], first["threat_model"]):
            raise RobustkitError(f"cannot merge: {where} holds {entry['dataset']} {entry['threat_model']} entries, "
                                 f"{first_where} {first['dataset']} {first['threat_model']}; one leaderboard holds "
                                 "one dataset and threat model")
    entries = [entry for _, entry in pool.values()]
    if not measured:
        return validate_leaderboard(leaderboard_document(entries))
    for where, doc in measured:
        if "benchmark" not in doc:
            raise RobustkitError(f"{where} is neither a benchmark leaderboard (no 'benchmark' block) nor a "
                                 "RobustBench import; only `robustkit leaderboard export` and `robustkit "
                                 "leaderboard import` files can be merged")
    merged = merge_leaderboards(measured)
    dataset, norm = merged["benchmark"]["dataset"]["name"], merged["benchmark"]["threat"]["norm"]
    for where, entry in pool.values():
        if (entry["dataset"], entry["threat_model"]) != (dataset, norm):
            raise RobustkitError(f"cannot merge: {where} holds RobustBench entries on {entry['dataset']} "
                                 f"{entry['robustbench']['threat_model']}, the benchmark is on {dataset} {norm}; "
                                 "published numbers only sit beside results on the same dataset and threat model")
    merged["published"] = leaderboard_document(entries)["entries"]  # ordered like an import; never ranked
    return validate_leaderboard(merged)


def _numbers(entry: Mapping[str, Any]) -> tuple[Any, ...]:
    return tuple(entry.get(k) for k in ("eps", "clean_acc", "robust_acc", "autoattack_acc", "external",
                                        "reported", "unreliable"))


# -- export ------------------------------------------------------------------------------------------


def format_percent(value: float) -> str:
    """RobustBench's accuracy spelling: percent with two decimals (``91.08``)."""
    return f"{value:.2f}"


def format_eps(eps: float, threat: str) -> str:
    """RobustBench's eps spelling: ``"k/255"`` for an Linf budget that is k/255, else a decimal string."""
    if threat == "Linf":
        k = round(eps * 255)
        if k >= 1 and abs(eps * 255 - k) <= 1e-9:
            return f"{k}/255"
    return _format_decimal(eps)


def _format_decimal(value: float) -> str:
    text = repr(float(value))
    if "e" in text or "E" in text:  # no exponents: "0.00001" rather than "1e-05"
        text = f"{value:.17f}".rstrip("0")
        text = text + "0" if text.endswith(".") else text
    return text


def _model_id(text: str) -> str:
    return _UNSAFE.sub("-", text).strip("-.") or "model"


def _rb_threat(norm: str, where: str) -> str:
    rb = THREATS.get(norm)
    if rb is None or rb == "corruptions":
        raise RobustkitError(f"{where}: the threat model is {norm}; RobustBench has Linf and L2 leaderboards "
                             "(and common corruptions), so it cannot be exported in its format")
    return rb


def is_standard_autoattack(attack: Mapping[str, Any]) -> bool:
    """Whether a suite attack (``name``, ``params``) is robustkit's AutoAttack in its standard version."""
    params = attack.get("params") or {}
    return attack.get("name") == AUTOATTACK_NAME and params.get("version", "standard") == "standard"


def _measured_info(*, title: str, link: str, authors: str, venue: str, dataset: str, architecture: str,
                   norm: str, eps: float, clean: float, worst: float, per_attack: Mapping[str, float | None],
                   attacks: Sequence[Mapping[str, Any]], n_examples: int, audit_flags: Sequence[str] | None,
                   threat_flags: Sequence[str], where: str) -> tuple[str, dict[str, Any]]:
    """The model_info fields of one model robustkit measured (accuracies in percent)."""
    rb = _rb_threat(norm, where)
    info: dict[str, Any] = {"link": link, "name": title, "authors": authors, "additional_data": False,
                            "number_forward_passes": 1, "dataset": dataset, "venue": venue,
                            "architecture": architecture, "eps": format_eps(eps, rb),
                            "clean_acc": format_percent(clean), "reported": ""}
    aa = next((a["label"] for a in attacks if is_standard_autoattack(a) and per_attack.get(a["label"]) is not None),
              None)
    others = [a for a in attacks if a["label"] != aa]
    minimal = ", minimal-distortion, counted within eps"
    described = ", ".join(f"{a['label']} ({a['name']}" + (minimal if a.get("goal") == "minimal-distortion" else "")
                          + ")" for a in others)
    if aa is not None:
        info["autoattack_acc"] = format_percent(per_attack[aa])  # type: ignore[arg-type]
        if format_percent(worst) != info["autoattack_acc"]:
            info["external"] = format_percent(worst)
            note = (f"{format_percent(worst)}% robust accuracy is due to AutoAttack + {described} (robustkit's "
                    f"pointwise worst case over its suite), on {n_examples} test examples.")
        else:
            note = f"Standard AutoAttack measured by robustkit on {n_examples} test examples."
            if others:
                note = note[:-1] + f"; the suite's other attacks ({described}) broke no example it missed."
    else:
        info["external"] = format_percent(worst)
        note = (f"Not evaluated with standard AutoAttack: {format_percent(worst)}% robust accuracy is robustkit's "
                f"pointwise worst case over {described} within {norm} eps {info['eps']}, on {n_examples} test "
                "examples.")
    parts = [note]
    if audit_flags:
        parts.append(f"robustkit's gradient-masking audit flagged: {', '.join(sorted(audit_flags))}.")
    if threat_flags:
        parts.append(f"{len(threat_flags)} attack(s) found adversarials outside the threat model, counted as "
                     "not broken.")
    info["footnote"] = " ".join(parts)
    if audit_flags is not None:
        info["unreliable"] = bool(audit_flags)
    return rb, info


def _architecture(model: Mapping[str, Any]) -> str:
    params = model.get("params") or {}
    inner = ", ".join(f"{k}={v}" for k, v in params.items())
    return f"{model['name']} ({inner})" if inner else str(model["name"])


def _cell_name(title: str, knob: Any, value: Any, seed: int) -> tuple[str, str]:
    """(display name, id suffix) of one trained model of a defense."""
    parts = ([f"{knob} = {value}"] if knob else []) + [f"seed {seed}"]
    suffix = (f"_{knob}-{value}" if knob else "") + f"_seed{seed}"
    return f"{title} ({', '.join(parts)})", suffix


def model_infos_of_run(root: str | Path) -> list[tuple[str, str, str, dict[str, Any]]]:
    """``(dataset, threat folder, model id, fields)`` of every finished cell of a benchmark folder."""
    from robustkit.bench.analysis import load_run

    run = load_run(root)
    if not run.records:
        raise RobustkitError(f"{run.root} has no finished cells yet; run `robustkit bench run` first")
    b = run.benchmark
    order = {d["label"]: i for i, d in enumerate(b["defenses"])}
    refs = {d["label"]: d.get("reference") or {} for d in b["defenses"]}
    out = []
    for r in sorted(run.records, key=lambda r: (order.get(r["defense"], len(order)), int(r["seed"]),
                                                 repr(r["knob_value"]))):
        ref = refs.get(r["defense"], {})
        name, suffix = _cell_name(ref.get("title") or r["defense"], r["knob"], r["knob_value"], int(r["seed"]))
        per_attack = {a["label"]: _pct(r["attacks"].get(a["label"], {}).get("robust_accuracy")) for a in b["attacks"]}
        rb, info = _measured_info(
            title=name, link=ref.get("link", ""), authors=ref.get("authors", ""), venue=ref.get("venue", ""),
            dataset=b["dataset"]["name"], architecture=_architecture(b["model"]), norm=b["threat"]["norm"],
            eps=float(b["threat"]["eps"]), clean=_pct(r["clean_accuracy"]), worst=_pct(r["worst_case_accuracy"]),
            per_attack=per_attack, attacks=b["attacks"], n_examples=int(r["n_examples"]),
            audit_flags=list(r["audit"]["flags"]) if r.get("audit") else None,
            threat_flags=r.get("threat_flags", []), where=str(root))
        out.append((b["dataset"]["name"], rb, _model_id(r["defense"] + suffix), info))
    return out


def _pct(fraction: Any) -> Any:
    """A fraction as percent, unrounded (the two decimals are RobustBench's spelling, applied on writing)."""
    return None if fraction is None else 100.0 * float(fraction)


def model_infos_of_leaderboard(doc: Mapping[str, Any], where: str) -> list[tuple[str, str, str, dict[str, Any]]]:
    """``(dataset, threat folder, model id, fields)`` of a leaderboard document's models: every point of
    a benchmark export, every entry otherwise (``published`` entries too)."""
    out = []
    for entry in list(doc["entries"]) + list(doc.get("published", [])):
        if entry.get("source") == SOURCE:
            out.append(_imported_info(entry))
        elif "points" in entry and "benchmark" in doc:
            b = doc["benchmark"]
            for point in entry["points"]:
                name, suffix = _cell_name(entry["name"], point["knob"], point["value"], int(point["seed"]))
                rb, info = _measured_info(
                    title=name, link=entry["link"], authors=entry["authors"], venue=entry["venue"],
                    dataset=entry["dataset"],
                    architecture=_architecture(b["model"]) if "model" in b else entry["architecture"],
                    norm=entry["threat_model"], eps=float(entry["eps"]), clean=point["clean_acc"],
                    worst=point["robust_acc"], per_attack=point["attack_acc"], attacks=b["attacks"],
                    n_examples=int(entry["provenance"]["n_examples"]), audit_flags=point.get("audit_flags"),
                    threat_flags=point.get("threat_flags", []), where=where)
                out.append((entry["dataset"], rb, _model_id(entry["defense"] + suffix), info))
        else:
            attacks = [{"label": a["name"], "name": a.get("attack", a["name"]), "params": a.get("params") or {},
                        "goal": a.get("goal")} for a in entry["provenance"]["attacks"]]
            rb, info = _measured_info(
                title=entry["name"], link=entry["link"], authors=entry["authors"], venue=entry["venue"],
                dataset=entry["dataset"], architecture=entry["architecture"], norm=entry["threat_model"],
                eps=float(entry["eps"]), clean=entry["clean_acc"], worst=entry["robust_acc"],
                per_attack=entry["attack_acc"], attacks=attacks, n_examples=int(entry["provenance"]["n_examples"]),
                audit_flags=None, threat_flags=[], where=where)
            out.append((entry["dataset"], rb, _model_id(f"{entry['defense']}_{entry['model']}"), info))
    return out


def _imported_info(entry: Mapping[str, Any]) -> tuple[str, str, str, dict[str, Any]]:
    """An imported entry back in its model_info form (numbers as RobustBench spells them)."""
    rb = entry["robustbench"]
    threat = rb["threat_model"]
    info: dict[str, Any] = {k: entry[k] for k in ("link", "name", "authors", "additional_data",
                                                  "number_forward_passes", "dataset", "venue", "architecture")}
    info["eps"] = rb.get("eps") if threat == "corruptions" else format_eps(entry["eps"], threat)
    info["clean_acc"] = format_percent(entry["clean_acc"])
    info["reported"] = "" if entry["reported"] is None else format_percent(entry["reported"])
    if threat == "corruptions":
        info["corruptions_acc"] = format_percent(entry["robust_acc"])
        for key, value in (rb.get("metrics") or {}).items():
            info[key] = format_percent(value)
    else:
        if "autoattack_acc" in entry:
            info["autoattack_acc"] = format_percent(entry["autoattack_acc"])
        if "external" in entry:
            info["external"] = format_percent(entry["external"])
    if "footnote" in entry:
        info["footnote"] = entry["footnote"]
    if "unreliable" in entry:
        info["unreliable"] = entry["unreliable"]
    for key, value in (rb.get("other") or {}).items():
        info.setdefault(key, value)
    return entry["dataset"], threat, _model_id(rb["model_id"]), info


def export_model_infos(source: str | Path, out_dir: str | Path) -> list[Path]:
    """Write RobustBench model_info files for ``source`` (a benchmark folder or a leaderboard JSON file)
    under ``out_dir/<dataset>/<threat>/``; return the files written. Everything is computed and every
    target checked before the first file is written."""
    source = Path(source)
    if source.is_dir():
        infos = model_infos_of_run(source)
    elif source.exists():
        infos = model_infos_of_leaderboard(validate_leaderboard(source), str(source))
    else:
        raise RobustkitError(f"{source}: no such benchmark folder or leaderboard file")
    if not infos:
        raise RobustkitError(f"{source}: no models to export")
    out = Path(out_dir)
    targets: dict[Path, dict[str, Any]] = {}
    for dataset, threat, model_id, info in infos:
        rel = Path(_model_id(dataset)) / threat / f"{model_id}.json"
        if out / rel in targets:
            raise RobustkitError(f"{source}: two models would both be written to {out / rel}; give the "
                                 "defenses distinct labels")
        targets[out / rel] = info
        _check_target(out, rel)
    written = []
    for path, info in targets.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        _check_target(out, path.relative_to(out))  # again, now that the folders exist
        atomic_write_text(path, json.dumps(info, indent=2) + "\n")
        written.append(path)
    return written


def _check_target(out: Path, rel: Path) -> None:
    """Refuse a target whose folder under ``out`` (``out`` included) or file is a symbolic link, or the wrong kind."""
    current = out
    parts = rel.parts
    for i, part in enumerate((None, *parts)):
        if part is not None:
            current = current / part
        last = i == len(parts)
        if current.is_symlink():
            raise RobustkitError(f"{current} is a symbolic link; robustkit never writes through one: remove it "
                                 "or give another output folder")
        if current.exists() and (current.is_dir() if last else not current.is_dir()):
            kind = "a folder" if last else "a file"
            raise RobustkitError(f"{current} is {kind} where robustkit needs to write "
                                 f"{'a model_info file' if last else 'a folder'}; give another output folder")


def write_document(path: str | Path, doc: Mapping[str, Any]) -> Path:
    """Write a leaderboard document atomically, refusing a symbolic link at ``path``."""
    path = Path(path)
    if path.is_symlink():
        raise RobustkitError(f"{path} is a symbolic link; robustkit never writes through one: remove it or "
                             "give another file name")
    if path.is_dir():
        raise RobustkitError(f"{path} is a folder; give the JSON file to write")
    return atomic_write_text(path, json.dumps(doc, indent=2) + "\n")
