"""Benchmark specs: one file (TOML, YAML or JSON) that fixes everything an accuracy-matched comparison needs.

A spec names the dataset, model, training budget, threat model, attack suite, evaluation subset, seeds,
and for each defense the values of its trade-off knob to sweep, plus the target clean accuracies the
curves are read at. :func:`load_spec` reads a file or a registered preset, checks it against the shipped
JSON schema (``robustkit/schemas/benchmark.schema.json``) and then against the plugins (every name
registered, every parameter valid), so a typo fails in a second with one line, not after an hour.

Example (TOML)::

    name = "my-bench"
    seeds = [0]
    dataset = {name = "digits"}
    model = {name = "madry-cnn"}
    training = {epochs = 10, batch_size = 64, lr = 1e-3}
    threat = {norm = "linf", eps = 0.1}
    evaluation = {n_examples = 200}
    protocol = {targets = ["natural", 0.95]}

    [[attacks]]
    name = "torchattacks:PGD"          # eps comes from [threat] when the attack takes one
    label = "pgd"
    params = {alpha = 0.01, steps = 20}

    [[defenses]]
    name = "natural"

    [[defenses]]
    name = "pgd-at"
    params = {steps = 5}
    sweep = [0.02, 0.05, 0.1]         # values of the defense's knob (eps for PGD-AT)

A defense parameter written ``"@natural"`` receives the checkpoint of the naturally trained model with
the same settings and seed (hard positives fine-tune it: ``params = {base = "@natural"}``).

The model may be the user's own: ``model = {file = "net.py", class = "Net", args = {width = 2}, weights =
"net.pt"}`` (or a TorchScript file alone, ``{file = "net.pt"}``); relative paths are read from the spec
file's folder, and ``normalize`` (``none``, the default here, ``dataset`` or ``MEAN/STD``) says what the
model does to images first. Cells name such a model by its class, arguments and the SHA-256 of its files; where the files lie is
passed beside the settings (like the data root), so a moved folder keeps its results.

Training follows the field's defaults: ``training.augment`` (``default``: the dataset's own augmentation,
:mod:`robustkit.augmentation`) is resolved into its explicit list when the spec is read; ``training.select``
(``auto``, the default: the best epoch by validation PGD accuracy for adversarial defenses, the last for
natural training, :func:`robustkit.training.resolve_select`) decides per cell, and when any cell keeps its best
epoch every cell holds the validation slice out of training (``val_holdout``), so all defenses train on the
same images. ``training.ema_decay`` keeps a moving average of the weights, which cells then evaluate
(``training.weights_kind = "raw"``: the trained weights instead).

``recipe = "NAME"`` (``robustkit train --list-recipes``) starts from a published setup: the recipe's model and
dataset when the spec gives none, its training settings under the spec's own ``training`` entries, and its
defense parameters under the spec's for a defense of the same name (never the swept knob).

Numbers may be written as fractions, as on the command line: ``eps = "8/255"`` (a string, since TOML, YAML
and JSON have no fractions) in ``threat.eps``, ``training`` numbers, ``evaluation.eps_curve``,
``audit.unbounded_eps``, attack and defense ``params`` values and ``sweep`` values. They are read with
:func:`robustkit.params.eval_fraction` into floats *before* schema validation (:func:`read_fractions`), so
the schema still sees numbers and a spec written ``"8/255"`` has the same cells and keys as one written
``0.03137254901960784``; a bad fraction (``"8/0"``) fails with one line naming its field.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from robustkit.attacks import attack_budget
from robustkit.augmentation import resolve_augment
from robustkit.compat import tomllib
from robustkit.errors import RobustkitError, UnknownNameError
from robustkit.files import jsonable
from robustkit.params import eval_fraction
from robustkit.store import cell_key
from robustkit.threat import TOLERANCE
from robustkit.training import TrainConfig, resolve_select

SCHEMA_FILE = "schemas/benchmark.schema.json"
SUFFIXES = (".toml", ".yaml", ".yml", ".json")
WORST_CASE = "worst-case"
#: A defense parameter with this value gets the checkpoint of the naturally trained model of the same
#: settings and seed (e.g. hard positives' ``base``): cells stay self-contained, the natural model is
#: trained once and shared.
NATURAL_MODEL = "@natural"

#: Version of what a cell records and how it is read (2: per-example outcomes, worst case within the threat
#: for every attack, frontier readings). Part of every cell key but not of the training key, so a new
#: version re-evaluates the trained models without retraining them.
PROTOCOL_VERSION = 2
#: Version of how cells train (2: validation on a slice of the training split, augmentation, best-epoch
#: selection). Part of every cell key and training key: trainings of another version are other trainings.
SETTINGS_FORMAT = 2

#: Training settings a spec may leave out, and what they default to: :class:`robustkit.training.TrainConfig`'s
#: own defaults (the one home of them), for the settings that decide a cell's training.
TRAINING_DEFAULTS: dict[str, Any] = {
    name: jsonable(getattr(TrainConfig(), name)) for name in (
        "epochs", "batch_size", "optimizer", "lr", "momentum", "weight_decay", "schedule", "milestones", "gamma",
        "val_examples", "val_eps", "val_steps")
}
EVALUATION_DEFAULTS: dict[str, Any] = {"n_examples": 500, "batch_size": 128, "eps_curve": [], "curve_attack": None}
AUDIT_DEFAULTS: dict[str, Any] = {
    "enabled": True,
    "unbounded_eps": 1.0,            # linf 1 covers [0, 1]: any image is reachable
    "unbounded_max_accuracy": 0.05,  # "falls to ~0"
    "steps": 10, "more_steps": 100,  # PGD steps of the "more steps must not help the model" check
    # The host names no attack plugin: a spec picks its score-based attack (the presets: the native square).
    "black_box": False,
    "transfer": True,
    "tolerance": 0.05,               # accuracy differences below this are noise on small subsets
}


class SpecError(RobustkitError):
    """A benchmark spec that cannot run; the message names the file and the field."""


@dataclass(frozen=True)
class AttackSpec:
    """One attack of the suite: ``label`` keys results; ``params`` are final (eps filled in)."""

    label: str
    name: str
    params: dict[str, Any]
    goal: str = "fixed-budget"
    knowledge: str = "white-box"

    def settings(self) -> dict[str, Any]:
        return {"label": self.label, "name": self.name, "params": jsonable(self.params)}


@dataclass(frozen=True)
class DefenseSpec:
    """One defense: fixed ``params`` plus the ``knob`` values to ``sweep`` (``(None,)`` without a knob)."""

    label: str
    name: str
    params: dict[str, Any]
    knob: str | None
    sweep: tuple[Any, ...]

    def params_at(self, value: Any) -> dict[str, Any]:
        return {**self.params, self.knob: value} if self.knob is not None and value is not None else dict(self.params)


@dataclass(frozen=True)
class Cell:
    """One unit of work: train one defense at one knob value and seed, then evaluate it.

    ``settings`` is everything that determines the record (spec in, record out); ``key`` hashes it.
    ``train_settings``/``train_key`` are the part that determines the trained weights, so a changed
    attack suite re-evaluates without retraining.
    """

    defense: str
    knob: str | None
    value: Any
    seed: int
    settings: dict[str, Any]
    key: str
    train_settings: dict[str, Any]
    train_key: str


@dataclass
class BenchmarkSpec:
    """A validated benchmark; build it with :func:`load_spec` or :func:`parse_spec`."""

    name: str
    description: str
    source: str
    dataset: dict[str, Any]
    data_root: str | None
    model: dict[str, Any]
    training: dict[str, Any]
    threat: dict[str, Any]
    attacks: tuple[AttackSpec, ...]
    evaluation: dict[str, Any]
    audit: dict[str, Any]
    seeds: tuple[int, ...]
    defenses: tuple[DefenseSpec, ...]
    targets: tuple[float | str, ...]
    rank_by: str
    paper: str = ""
    document: dict[str, Any] = field(default_factory=dict)

    def common_settings(self) -> dict[str, Any]:
        """What every cell shares: the protocol without the defenses and seeds."""
        return {
            "format": SETTINGS_FORMAT, "protocol": PROTOCOL_VERSION,
            "dataset": {"name": self.dataset["name"], "params": jsonable(self.dataset.get("params", {}))},
            "model": model_settings(self.model),
            "training": jsonable(self.training),
            "threat": dict(self.threat),
            "attacks": [a.settings() for a in self.attacks],
            "evaluation": jsonable(self.evaluation),
            "audit": jsonable(self.audit),
        }

    def fingerprint(self) -> str:
        """Hash of the protocol (data, model, budget, threat, attacks, evaluation, audit): results with equal
        fingerprints are comparable, whatever defenses and seeds produced them."""
        return cell_key(self.common_settings())

    def spec_hash(self) -> str:
        """Hash of the whole spec as validated (protocol, defenses, sweeps, seeds, targets)."""
        return cell_key(self.document)

    def cells(self) -> list[Cell]:
        """Every (defense, knob value, seed), seeds outermost and defenses in spec order."""
        common = self.common_settings()
        out = []
        for seed in self.seeds:
            for defense in self.defenses:
                for value in defense.sweep:
                    train_settings = {"format": SETTINGS_FORMAT, "dataset": common["dataset"], "model": common["model"],
                                      "training": common["training"], "seed": seed,
                                      "defense": {"name": defense.name, "params": jsonable(defense.params_at(value))}}
                    settings = {**common, "seed": seed,
                                "defense": {"label": defense.label, "name": defense.name, "knob": defense.knob,
                                            "value": jsonable(value), "params": jsonable(defense.params_at(value))}}
                    out.append(Cell(defense.label, defense.knob, value, seed, settings, cell_key(settings),
                                    train_settings, cell_key(train_settings)))
        return out

    def attack(self, label: str) -> AttackSpec:
        return next(a for a in self.attacks if a.label == label)


#: Where a user's model file and its weights lie: passed to the cells beside their settings
#: (:func:`model_files`), never in them, so the keys name the files by content.
LOCATION_KEYS = ("file", "weights")


def model_settings(model: Mapping[str, Any]) -> dict[str, Any]:
    """The spec's model as cells record it: name and parameters; ``normalize`` when the spec gives it (so the
    keys of specs without it stay as they were); a user's model adds its class and its files' SHA-256."""
    out = {"name": model["name"], "params": jsonable(model.get("params", {}))}
    if model.get("file"):
        out.update({key: model.get(key) for key in ("class", "sha256", "weights_sha256")})
        out["normalize"] = model.get("normalize") or "none"
    elif model.get("normalize") is not None:
        out["normalize"] = model["normalize"]
    return out


def model_files(model: Mapping[str, Any]) -> dict[str, str] | None:
    """Where the spec's own model file (``file``) and its weights (``weights``) lie; None for a registered model."""
    if not model.get("file"):
        return None
    return {key: model[key] for key in LOCATION_KEYS if model.get(key)}


# --- reading ---------------------------------------------------------------------------------------


def read_document(path: Path) -> dict[str, Any]:
    """Parse a spec file by its suffix; one line on a syntax error."""
    if path.suffix not in SUFFIXES:
        raise SpecError(f"{path}: a benchmark spec must be {', '.join(SUFFIXES)}; got {path.suffix or 'no suffix'}")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise SpecError(f"{path}: cannot read the benchmark spec: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise SpecError(f"{path}: not a text file (not UTF-8); a benchmark spec is TOML, YAML or JSON text") from None
    try:
        if path.suffix == ".toml":
            doc = tomllib.loads(text)
        elif path.suffix == ".json":
            doc = json.loads(text)
        else:
            import yaml  # only YAML specs need it

            doc = yaml.safe_load(text)
    except tomllib.TOMLDecodeError as err:
        raise SpecError(f"{path}: not valid TOML: {err}") from None
    except json.JSONDecodeError as err:
        raise SpecError(f"{path}: not valid JSON: {err.msg} at line {err.lineno}") from None
    except Exception as err:  # yaml.YAMLError and friends
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SpecError(f"{path}: not valid YAML: {first}") from None
    if not isinstance(doc, dict):
        raise SpecError(f"{path}: a benchmark spec is a table of settings, got {type(doc).__name__}")
    return doc


def load_spec(source: str | Path, host: Any, *, data_root: str | None = None,
              dataset: str | None = None) -> BenchmarkSpec:
    """A spec from a file path or a registered preset name (``robustkit bench list``).

    :param data_root: overrides the spec's ``dataset.root`` (the CLI's ``--data-root``).
    :param dataset: runs the spec on another registered dataset (its parameters are dropped), e.g. a
        digits preset on ``mnist``; the models adapt to the input size, channels and classes.
    """
    path = Path(source)
    if path.suffix in SUFFIXES and path.exists():
        doc, where = read_document(path), str(path)
    elif str(source) in host.benchmarks:  # Path("quick") names the preset too
        doc, where = copy.deepcopy(host.benchmarks.create(str(source))), f"preset {source}"
    elif path.suffix in SUFFIXES:
        raise SpecError(f"benchmark spec {path} does not exist")
    else:
        try:
            host.benchmarks.get(str(source))
        except UnknownNameError as err:
            raise SpecError(f"{err}; or give the path of a .toml/.yaml spec file") from None
        raise AssertionError("unreachable")
    if dataset is not None:
        doc["dataset"] = {"name": dataset}
        where += f" on {dataset}"
    base = path.resolve().parent if where.startswith(str(path)) and path.exists() else None
    return parse_spec(doc, where, host, data_root=data_root, base=base)


@functools.lru_cache(maxsize=1)
def benchmark_schema() -> dict[str, Any]:
    return json.loads(resources.files("robustkit").joinpath(SCHEMA_FILE).read_text(encoding="utf-8"))


def check_schema(doc: Mapping[str, Any], source: str) -> None:
    import jsonschema  # the validator costs a few hundred ms to import

    validator = jsonschema.Draft202012Validator(benchmark_schema())
    error = jsonschema.exceptions.best_match(validator.iter_errors(doc))
    if error is not None:
        message = " ".join(error.message.split())
        raise SpecError(f"{source}: {error.json_path}: {message[:200]}")


#: A number written as a fraction, ``8/255`` or ``1e-3 / 2`` (strings elsewhere, e.g. ``"@natural"``, stay strings).
_FRACTION = re.compile(r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*/\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$")
#: Training settings that are numbers (a string there is read as a number, fraction or not).
_TRAINING_NUMBERS = ("lr", "momentum", "weight_decay", "gamma", "val_eps", "val_step_size", "ema_decay")


def read_fractions(doc: Mapping[str, Any], source: str) -> dict[str, Any]:
    """``doc`` with numbers written as fraction strings (``"8/255"``) read as floats, as the CLI reads them.

    Fields that are numbers (``threat.eps``, the numeric ``training`` settings, ``evaluation.eps_curve``,
    ``audit.unbounded_eps``) take any number string; parameter values (``params`` of attacks, defenses and the
    audit's black box) and ``sweep`` values only strings shaped like a fraction, since other strings there are
    values of their own. ``doc`` itself is not changed; a bad fraction raises one line naming the field.
    """
    def number(value: Any, where: str, any_string: bool) -> Any:
        if not isinstance(value, str) or not (any_string or _FRACTION.match(value)):
            return value
        try:
            result = eval_fraction(value)
        except ValueError as err:
            raise SpecError(f"{source}: {where}: {value!r} is not a number like 0.3 or 8/255 ({err})") from None
        if not math.isfinite(result):
            raise SpecError(f"{source}: {where}: {value!r} is not finite")
        return result

    def params(component: Any, where: str) -> Any:
        if not isinstance(component, Mapping) or not isinstance(component.get("params"), Mapping):
            return component
        return {**component, "params": {k: number(v, f"{where}.params.{k}", False)
                                        for k, v in component["params"].items()}}

    out = dict(doc)
    if isinstance(out.get("threat"), Mapping) and "eps" in out["threat"]:
        out["threat"] = {**out["threat"], "eps": number(out["threat"]["eps"], "$.threat.eps", True)}
    if isinstance(out.get("training"), Mapping):
        out["training"] = {k: number(v, f"$.training.{k}", True) if k in _TRAINING_NUMBERS else v
                           for k, v in out["training"].items()}
    evaluation = out.get("evaluation")
    if isinstance(evaluation, Mapping) and isinstance(evaluation.get("eps_curve"), list):
        out["evaluation"] = {**evaluation, "eps_curve": [number(v, f"$.evaluation.eps_curve[{i}]", True)
                                                         for i, v in enumerate(evaluation["eps_curve"])]}
    audit = out.get("audit")
    if isinstance(audit, Mapping):
        audit = dict(audit)
        if "unbounded_eps" in audit:
            audit["unbounded_eps"] = number(audit["unbounded_eps"], "$.audit.unbounded_eps", True)
        if isinstance(audit.get("black_box"), Mapping):
            audit["black_box"] = params(audit["black_box"], "$.audit.black_box")
        out["audit"] = audit
    if isinstance(out.get("attacks"), list):
        out["attacks"] = [params(a, f"$.attacks[{i}]") for i, a in enumerate(out["attacks"])]
    if isinstance(out.get("defenses"), list):
        defenses = []
        for i, d in enumerate(out["defenses"]):
            d = params(d, f"$.defenses[{i}]")
            if isinstance(d, Mapping) and isinstance(d.get("sweep"), list):
                d = {**d, "sweep": [number(v, f"$.defenses[{i}].sweep[{j}]", False) for j, v in enumerate(d["sweep"])]}
            defenses.append(d)
        out["defenses"] = defenses
    return out


def parse_spec(doc: dict[str, Any], source: str, host: Any, *, data_root: str | None = None,
               base: Path | None = None) -> BenchmarkSpec:
    """Validate ``doc`` against the schema and the registered plugins; fill in defaults.

    Fraction strings (``eps = "8/255"``) are read as numbers first (:func:`read_fractions`).

    :param base: the folder relative model file paths are read from (the spec file's; default: the current).
    """
    doc = read_fractions(doc, source)
    doc = with_recipe(doc, source, host)
    check_schema(doc, source)

    def fail(where: str, message: str) -> SpecError:
        return SpecError(f"{source}: {where}: {message}")

    def registered(registry: Any, name: str, where: str) -> Any:
        try:
            return registry.get(name)
        except UnknownNameError as err:
            raise fail(where, str(err)) from None

    model = _model(doc["model"], base, fail)
    # Parameters too, not just names: a typo in model.params would otherwise fail in every cell.
    for kind, registry, context in (("dataset", host.datasets, ("root",)),
                                    ("model", host.models, ("num_classes", "in_channels", "image_size"))):
        if kind == "model" and model.get("file"):
            continue  # the user's own model was built and checked by _model
        try:
            registered(registry, doc[kind]["name"], f"$.{kind}.name").resolve(doc[kind].get("params", {}), context)
        except RobustkitError as err:
            if isinstance(err, SpecError):
                raise
            raise fail(f"$.{kind}.params", str(err)) from None
    threat = {"norm": doc["threat"]["norm"], "eps": float(doc["threat"]["eps"])}
    if threat["norm"] == "linf" and threat["eps"] > 1:
        raise fail("$.threat.eps", f"a linf eps of {threat['eps']} exceeds the data range [0, 1]; write 8/255 as 0.0314")
    training = {**TRAINING_DEFAULTS, "select": "auto", **doc["training"]}
    if "val_eps" not in doc["training"] and threat["norm"] == "linf":
        training["val_eps"] = threat["eps"]  # the loop's per-epoch check is linf PGD
    if training["val_examples"] == 0:
        training["val_eps"] = None  # no validation: the threat must not change the training key
    try:
        training["augment"] = resolve_augment(training.get("augment", "default"), doc["dataset"]["name"], host)
    except RobustkitError as err:
        raise fail("$.training.augment", str(err)) from None
    try:
        TrainConfig(**{**training, "milestones": tuple(training["milestones"])}).check()
    except RobustkitError as err:
        raise fail("$.training", str(err)) from None

    attacks = _derived_labels(host, doc["attacks"], tuple(_attack(host, a, threat, f"$.attacks[{i}]", fail)
                                                          for i, a in enumerate(doc["attacks"])))
    _unique([a.label for a in attacks], "$.attacks", "attack label", fail)
    evaluation = {**EVALUATION_DEFAULTS, **doc.get("evaluation", {})}
    if evaluation["eps_curve"]:
        label = evaluation["curve_attack"] or next((a.label for a in attacks if a.goal == "fixed-budget"), None)
        if label is None or label not in {a.label for a in attacks}:
            raise fail("$.evaluation.curve_attack", f"{label!r} is not an attack label of this spec; labels: "
                       f"{', '.join(a.label for a in attacks)}")
        curve = next(a for a in attacks if a.label == label)
        if "eps" not in attacks_params(host, curve.name):
            raise fail("$.evaluation.curve_attack", f"attack {label!r} takes no eps, so it cannot draw an eps curve")
        for i, eps in enumerate(evaluation["eps_curve"]):  # every point is checked before anything trains
            if threat["norm"] == "linf" and eps > 1:
                raise fail(f"$.evaluation.eps_curve[{i}]", f"a linf eps of {eps} exceeds the data range [0, 1]")
            try:
                host.attacks.create(curve.name, {**curve.params, "eps": eps})
            except RobustkitError as err:
                raise fail(f"$.evaluation.eps_curve[{i}]", str(err)) from None
        evaluation["curve_attack"] = label
    audit = {**AUDIT_DEFAULTS, **doc.get("audit", {})}
    if audit["enabled"] and threat["norm"] not in ("linf", "l2"):
        raise fail("$.audit", f"the audit's PGD supports linf and l2 threat models, not {threat['norm']}; "
                   "set audit.enabled = false")
    if audit["enabled"] and audit.get("black_box"):
        bb = _attack(host, audit["black_box"], threat, "$.audit.black_box", fail)
        audit["black_box"] = bb.settings()

    defenses = tuple(_defense(host, d, f"$.defenses[{i}]", fail) for i, d in enumerate(doc["defenses"]))
    _unique([d.label for d in defenses], "$.defenses", "defense label (add label = \"...\" to tell them apart)", fail)
    training["val_holdout"] = _holds_out(host, defenses, training)
    protocol = doc.get("protocol", {})
    targets = tuple(protocol.get("targets", ["natural"] if any(d.label == "natural" for d in defenses) else []))
    for i, target in enumerate(targets):
        if not isinstance(target, str) and not 0 < target <= 1:  # NaN fails this too
            raise fail(f"$.protocol.targets[{i}]", f"a target clean accuracy must be in (0, 1], got {target}")
        swept = {d.label for d in defenses if len(d.sweep) > 1}
        if isinstance(target, str) and target in swept:
            raise fail(f"$.protocol.targets[{i}]", f"{target!r} is swept, so its models have several clean accuracies; "
                       "name a defense trained once per seed (like natural) or give a number")
        if isinstance(target, str) and target not in {d.label for d in defenses}:
            raise fail(f"$.protocol.targets[{i}]", f"{target!r} is neither an accuracy nor a defense label of this "
                       f"spec; labels: {', '.join(d.label for d in defenses)}")
    if not targets:
        raise fail("$.protocol.targets", "no target clean accuracy: add protocol.targets (e.g. [0.9]) or a "
                   "'natural' defense to match at its accuracy")
    rank_by = protocol.get("rank_by", WORST_CASE)
    rankable = [WORST_CASE] + [m for a in attacks for m in (
        (f"{a.label}:rho", f"{a.label}:rho-median") if a.goal == "minimal-distortion" else (a.label,))]
    if rank_by not in rankable:
        raise fail("$.protocol.rank_by", f"{rank_by!r} is not a metric of this spec; choose one of {', '.join(rankable)}")

    dataset = dict(doc["dataset"])
    root = data_root or dataset.pop("root", None)
    dataset.pop("root", None)
    return BenchmarkSpec(
        name=doc["name"], description=doc.get("description", ""), source=source, dataset=dataset,
        data_root=str(Path(root).expanduser()) if root else None, model=model, training=training,
        threat=threat, attacks=attacks, evaluation=evaluation, audit=audit, seeds=tuple(doc.get("seeds", [0])),
        defenses=defenses, targets=targets, rank_by=rank_by, paper=doc.get("paper", ""),
        document=jsonable({k: v for k, v in doc.items() if k != "description"}),
    )


def with_recipe(doc: dict[str, Any], source: str, host: Any) -> dict[str, Any]:
    """``doc`` with its ``recipe``'s settings filled in under its own (see the module's docstring); ``doc``
    itself is not changed. A spec without a recipe is returned as it is."""
    name = doc.get("recipe")
    if name is None:
        return doc
    from robustkit.recipe_config import get_recipe

    if not isinstance(name, str):
        raise SpecError(f"{source}: $.recipe: a recipe is named by a string (robustkit train --list-recipes)")
    try:
        recipe = get_recipe(host, name)
    except RobustkitError as err:
        raise SpecError(f"{source}: $.recipe: {err}") from None
    out = dict(doc)
    out.setdefault("dataset", {"name": recipe.dataset, "params": dict(recipe.dataset_params)})
    out.setdefault("model", {"name": recipe.model, "params": dict(recipe.model_params)})
    spec_training = doc.get("training") if isinstance(doc.get("training"), Mapping) else {}
    out["training"] = {**jsonable(dict(recipe.training)), **spec_training}
    if isinstance(doc.get("defenses"), list):
        defenses = []
        for d in doc["defenses"]:
            if isinstance(d, Mapping) and d.get("name") == recipe.defense:
                knob = d.get("knob") or getattr(host.defenses.get(recipe.defense).factory, "knob", None)
                inherited = {k: v for k, v in recipe.defense_params.items()
                             if not (d.get("sweep") is not None and k == knob)}
                d = {**d, "params": {**inherited, **dict(d.get("params") or {})}}
            defenses.append(d)
        out["defenses"] = defenses
    return out


def _holds_out(host: Any, defenses: tuple[DefenseSpec, ...], training: Mapping[str, Any]) -> bool:
    """Whether the cells hold the validation slice out of training: when any of them keeps its best epoch, all
    do, so every defense trains on the same images (:func:`robustkit.training.resolve_select`)."""
    config = TrainConfig(**{**training, "milestones": tuple(training["milestones"])})
    return any(resolve_select(host.defenses.create(d.name, {k: (None if v == NATURAL_MODEL else v)
                                                             for k, v in d.params_at(value).items()}), config) == "best"
               for d in defenses for value in d.sweep[:1])


def _model(doc: Mapping[str, Any], base: Path | None, fail: Any) -> dict[str, Any]:
    """The spec's model, checked: ``normalize`` parsed; a user's model file found, its class imported and built
    with its arguments and weights (strictly), its files' SHA-256 recorded and its name set (``net.py:Net``)."""
    from robustkit.models import Normalization

    model = dict(doc)
    if model.get("normalize") is not None:
        try:
            model["normalize"] = Normalization.parse(model["normalize"], "normalize").text()
        except RobustkitError as err:
            raise fail("$.model.normalize", str(err)) from None
    if not model.get("file"):
        return model
    from robustkit.user_models import build_network, model_source

    def located(text: str) -> str:
        path = Path(text).expanduser()
        return str(path if path.is_absolute() or base is None else base / path)

    if str(model["file"]).lower().endswith(".py") and not model.get("class"):
        raise fail("$.model.class", f"{model['file']} is a Python file: name its model class too, class = \"NAME\" "
                   "(the nn.Module subclass to build)")
    if model.get("args") and not model.get("class"):
        raise fail("$.model.args", "a TorchScript file takes no constructor arguments; drop args (or give the .py "
                   "file and its class)")
    target = located(model["file"]) + (f":{model['class']}" if model.get("class") else "")
    try:
        source = model_source(target, model.get("args") or {}, located(model["weights"]) if model.get("weights")
                              else None, what="file")
        build_network(source, what="file")  # the class, its arguments and the weights' keys, checked now
    except RobustkitError as err:
        raise fail("$.model", str(err)) from None
    return {"name": source.name, "params": jsonable(dict(source.args)), "file": source.file,
            "class": source.class_name, "weights": source.weights, "sha256": source.sha256,
            "weights_sha256": source.weights_sha256, "normalize": model.get("normalize") or "none"}


def attacks_params(host: Any, name: str) -> set[str]:
    return {p.name for p in host.attacks.get(name).declared_params()}


def _attack(host: Any, doc: Mapping[str, Any], threat: Mapping[str, Any], where: str, fail: Any) -> AttackSpec:
    try:
        entry = host.attacks.get(doc["name"])
    except UnknownNameError as err:
        raise fail(f"{where}.name", str(err)) from None
    params = dict(doc.get("params", {}))
    if "eps" in {p.name for p in entry.declared_params()} and "eps" not in params:
        params["eps"] = threat["eps"]  # the suite shares the threat model's budget
    try:
        attack = host.attacks.create(doc["name"], params)
    except RobustkitError as err:
        raise fail(f"{where}.params", str(err)) from None
    goal = getattr(attack, "goal", entry.info.get("goal", "fixed-budget"))
    knowledge = getattr(attack, "knowledge", entry.info.get("knowledge", "white-box"))
    _check_budget(attack, doc["name"], threat, where, fail)
    return AttackSpec(doc.get("label", doc["name"]), doc["name"], params, goal, knowledge)


def _derived_labels(host: Any, docs: Any, attacks: tuple[AttackSpec, ...]) -> tuple[AttackSpec, ...]:
    """Attacks without a ``label`` are labelled by their name, or, when the name is repeated among them, by
    the name and the parameters that differ (:func:`robustkit.registry.distinct_labels`, as ``--attack``)."""
    from dataclasses import replace

    from robustkit.registry import distinct_labels

    derived = [i for i, d in enumerate(docs) if "label" not in d]
    labels = distinct_labels([(attacks[i].name, attacks[i].params,
                               host.attacks.get(attacks[i].name).resolve(attacks[i].params)) for i in derived])
    out = list(attacks)
    for i, label in zip(derived, labels):
        out[i] = replace(attacks[i], label=label)
    return tuple(out)


def _check_budget(attack: Any, name: str, threat: Mapping[str, Any], where: str, fail: Any) -> None:
    """Refuse a fixed-budget attack whose own norm or eps contradicts the spec's threat model."""
    budget = attack_budget(attack)
    if budget is None or threat["norm"] == "unbounded":
        return
    wanted = f"the threat model's {threat['norm']} eps {threat['eps']:g}"
    if budget.norm != threat["norm"]:
        norms = tuple(getattr(attack, "threat_models", ()) or ())
        hint = (f"set params.norm = \"{threat['norm']}\"" if threat["norm"] in norms and len(norms) > 1
                else f"use an attack that bounds {threat['norm']}")
        raise fail(f"{where}.name", f"{name} bounds {budget.norm} eps {budget.eps:g}, not {wanted}; {hint}")
    if budget.eps > float(threat["eps"]) + TOLERANCE:
        raise fail(f"{where}.params", f"{name} has eps {budget.eps:g}, above {wanted}; drop its eps "
                   "(it then takes the threat's) or lower it")


def _defense(host: Any, doc: Mapping[str, Any], where: str, fail: Any) -> DefenseSpec:
    try:
        entry = host.defenses.get(doc["name"])
    except UnknownNameError as err:
        raise fail(f"{where}.name", str(err)) from None
    params = dict(doc.get("params", {}))
    sweep = doc.get("sweep")
    knob = doc.get("knob") or getattr(entry.factory, "knob", None)
    if sweep is not None:
        if knob is None:
            raise fail(f"{where}.sweep", f"defense {doc['name']!r} declares no trade-off knob; name one with knob = ...")
        declared = {p.name for p in entry.declared_params()}
        if knob not in declared:
            raise fail(f"{where}.knob", f"defense {doc['name']!r} has no parameter {knob!r}; it has "
                       f"{', '.join(sorted(declared)) or 'none'}")
        if knob in params:
            raise fail(f"{where}.params", f"{knob!r} is swept, so it may not also be fixed in params")
    values = tuple(sweep) if sweep is not None else (None,)
    _unique(list(values), f"{where}.sweep", "sweep value", fail)  # two equal points would be one cell, stored twice
    for value in values:  # every point is checked before anything trains
        try:
            given = {**params, knob: value} if value is not None else params
            host.defenses.create(doc["name"], {k: (None if v == NATURAL_MODEL else v) for k, v in given.items()})
        except RobustkitError as err:
            raise fail(where, str(err)) from None
    return DefenseSpec(doc.get("label", doc["name"]), doc["name"], params, knob if sweep is not None else None, values)


def _unique(labels: list[str], where: str, what: str, fail: Any) -> None:
    seen = set()
    for label in labels:
        if label in seen:
            raise fail(where, f"{what} {label!r} appears twice")
        seen.add(label)
