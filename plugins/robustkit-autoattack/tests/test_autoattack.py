"""The ``autoattack`` plugin: reference settings, fingerprint, pointwise chaining of the sub-attacks."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from robustkit.errors import ParameterError
from robustkit.evaluation import evaluate
from robustkit.host import make_host
from robustkit.leaderboard import leaderboard_document, leaderboard_entry, validate_leaderboard
from robustkit.models import Classifier, ModelSpec, Normalize
from robustkit_autoattack import autoattack as aa
from robustkit_autoattack.autoattack import AutoAttack

# Reduced settings that run in about a second on a tiny model; only version=custom accepts them.
FAST = dict(version="custom", steps=5, n_queries=50, n_target_classes=2)


def tiny_model(classes: int = 10, seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, classes))
    return Classifier(net, Normalize((0.5,), (0.25,)), ModelSpec("tiny-mlp")).eval()


def batch(model: nn.Module, n: int = 24, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Random 8x8 images labelled with the model's predictions, two of them flipped to a wrong label."""
    x = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:2] = (y[:2] + 1) % model.net[-1].out_features  # misclassified before any attack
    return x, y


def robust_accuracy(model: nn.Module, adv: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(adv).argmax(1) == y).float().mean())


# --- registration, settings, fingerprint ------------------------------------------------------


def test_registered_through_its_entry_point(monkeypatch):
    monkeypatch.setenv("ROBUSTKIT_LOAD_PLUGINS", "autoattack")
    host = make_host()
    entry = host.attacks.get("autoattack")
    assert entry.info["threat_models"] == ("linf", "l2") and entry.info["knowledge"] == "white-box"
    assert not host.failures
    attack = host.attacks.create("autoattack", {"eps": "8/255"})
    assert isinstance(attack, AutoAttack) and attack.config["eps"] == pytest.approx(8 / 255)


def test_registration_and_construction_do_not_import_torchattacks(monkeypatch):
    # No module-level import (CLI start-up stays fast) ...
    tree = ast.parse(Path(aa.__file__).read_text(encoding="utf-8"))
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    imported = {a.name.split(".")[0] for n in top for a in n.names} | {
        (n.module or "").split(".")[0] for n in top if isinstance(n, ast.ImportFrom)}
    assert "torchattacks" not in imported
    # ... and registering and constructing work with torchattacks unimportable; describing reads the settings
    # back from constructed torchattacks objects, so it needs the library.
    monkeypatch.setitem(sys.modules, "torchattacks", None)
    # parts subclasses torchattacks' classes: an earlier test may have imported it; import it afresh here.
    import robustkit_autoattack

    monkeypatch.delitem(sys.modules, "robustkit_autoattack.parts", raising=False)
    monkeypatch.delattr(robustkit_autoattack, "parts", raising=False)
    names: list[str] = []
    aa.register_attacks(lambda name, factory, **info: names.append(name))
    assert names == ["autoattack"]
    attack = AutoAttack(eps=0.1)
    with pytest.raises(ImportError):
        attack.describe()


REFERENCE = {  # the reference's settings, written out here rather than read from the plugin's catalogue
    "apgd-ce": ("APGD", {"loss": "ce", "steps": 100, "n_restarts": 1, "eot_iter": 1, "rho": 0.75}, None),
    "apgd-t": ("APGDT", {"steps": 100, "n_restarts": 1, "eot_iter": 1, "rho": 0.75}, 9),
    "fab-t": ("FAB", {"multi_targeted": True, "steps": 100, "n_restarts": 1, "alpha_max": 0.1, "eta": 1.05,
                      "beta": 0.9}, 9),
    "square": ("Square", {"n_queries": 5000, "n_restarts": 1, "p_init": 0.8, "loss": "margin",
                          "resc_schedule": False}, None),
}


@pytest.mark.parametrize("classes", [None, 10, 100])
def test_recorded_settings_are_read_from_the_constructed_objects_and_are_the_reference(classes):
    """Every reference setting as the torchattacks objects hold it: losing one on the way (a dropped argument,
    torchattacks' own default of K - 1 target classes on 100 classes) fails here."""
    settings = AutoAttack(eps=0.03, n_classes=classes).settings()
    assert [item["name"] for item in settings["plan"]] == list(REFERENCE)
    for item in settings["plan"]:
        cls, params, targets = REFERENCE[item["name"]]
        assert item["torchattacks"] == cls and item["params"] == params, item["name"]
        assert (item["norm"], item["eps"], item["seed"]) == ("Linf", pytest.approx(0.03), 0)
        assert item.get("n_target_classes") == targets, item["name"]


def test_a_run_records_what_its_objects_held():
    model = tiny_model(classes=12)
    x, y = batch(model, n=6)
    result = AutoAttack(eps=0.05, version="custom", steps=3, n_queries=20, n_target_classes=11)(model, x, y)
    ran = {item["name"]: item for item in result.extra["ran"]}
    assert set(ran) <= set(REFERENCE) and "apgd-ce" in ran
    assert ran["apgd-ce"]["params"]["steps"] == 3
    if "apgd-t" in ran:
        assert ran["apgd-t"]["n_target_classes"] == 11


def test_standard_is_exactly_the_reference_settings():
    settings = AutoAttack().settings()
    assert settings["version"] == "standard" and settings["norm"] == "linf"
    assert settings["eps"] == pytest.approx(8 / 255) and settings["seed"] == 0
    assert settings["library"].startswith("torchattacks ")
    plan = {item["name"]: item for item in settings["plan"]}
    assert [item["name"] for item in settings["plan"]] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert plan["apgd-ce"]["torchattacks"] == "APGD"
    assert plan["apgd-ce"]["params"] == REFERENCE["apgd-ce"][1]
    assert plan["apgd-t"]["torchattacks"] == "APGDT"
    assert plan["apgd-t"]["params"]["steps"] == 100 and plan["apgd-t"]["n_target_classes"] == 9
    assert plan["apgd-t"]["params"]["n_restarts"] == 1
    assert plan["fab-t"]["torchattacks"] == "FAB" and plan["fab-t"]["params"]["multi_targeted"] is True
    assert plan["fab-t"]["params"]["steps"] == 100 and plan["fab-t"]["n_target_classes"] == 9
    assert plan["square"]["torchattacks"] == "Square" and plan["square"]["params"]["n_queries"] == 5000
    assert plan["square"]["params"]["n_restarts"] == 1 and plan["square"]["params"]["resc_schedule"] is False
    # describe() carries the same, so evaluation summaries and leaderboards do.
    described = AutoAttack().describe()
    assert described["settings"] == settings
    assert described["fingerprint"] == aa.fingerprint_of(settings)


def test_overrides_need_version_custom():
    with pytest.raises(ParameterError, match="version=custom"):
        AutoAttack(steps=10)
    with pytest.raises(ParameterError, match="version=custom"):
        AutoAttack(version="standard", n_queries=100)
    with pytest.raises(ParameterError, match="attacks"):
        AutoAttack(version="custom", attacks="apgd-ce,deepfool")
    with pytest.raises(ParameterError, match="exceeds"):
        AutoAttack(eps=8)
    with pytest.raises(ParameterError):
        AutoAttack(norm="l1")


def test_fingerprint_changes_with_every_setting():
    base = AutoAttack(eps=0.1)
    assert AutoAttack(eps=0.1).fingerprint == base.fingerprint
    assert AutoAttack(eps=0.1, norm="Linf").fingerprint == base.fingerprint  # both spellings
    variants = [
        AutoAttack(eps=0.2), AutoAttack(eps=0.1, norm="l2"), AutoAttack(eps=0.1, seed=1),
        AutoAttack(eps=0.1, n_classes=10), AutoAttack(eps=0.1, version="plus"), AutoAttack(eps=0.1, version="rand"),
        AutoAttack(eps=0.1, version="custom", steps=10), AutoAttack(eps=0.1, version="custom", n_queries=100),
        AutoAttack(eps=0.1, version="custom", n_target_classes=3),
        AutoAttack(eps=0.1, version="custom", attacks="apgd-ce,square"),
    ]
    prints = {v.fingerprint for v in variants}
    assert len(prints) == len(variants) and base.fingerprint not in prints
    # custom with nothing overridden runs the standard plan, yet says it is custom.
    custom = AutoAttack(eps=0.1, version="custom")
    assert custom.plan == base.plan and custom.fingerprint != base.fingerprint


def test_named_versions_follow_the_reference():
    plus = AutoAttack(version="plus").plan
    assert [i["name"] for i in plus] == ["apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"]
    assert [i["params"]["n_restarts"] for i in plus] == [5, 5, 5, 1, 1, 1]
    rand = AutoAttack(version="rand").plan
    assert [(i["name"], i["params"]["eot_iter"]) for i in rand] == [("apgd-ce", 20), ("apgd-dlr", 20)]


# --- running: pointwise chaining -------------------------------------------------------------


@pytest.fixture
def spy(monkeypatch):
    """Replace the classes the default backend builds with subclasses that record the images each call receives."""
    from robustkit_autoattack import parts

    seen: list[tuple[str, torch.Tensor]] = []

    def spying(cls):
        class Spy(cls):
            def forward(self, images, labels=None):
                tag = {"APGD": "apgd-ce", "APGDT": "apgd-t", "FAB": "fab-t", "Square": "square"}[cls.__name__]
                seen.append((tag, images.detach().clone()))
                return super().forward(images, labels)

        Spy.__name__ = cls.__name__
        return Spy

    for name in ("APGD", "APGDT", "FAB", "Square"):
        monkeypatch.setattr(parts, name, spying(getattr(parts, name)))
    return seen


def test_only_still_robust_images_reach_the_next_attack(spy):
    model = tiny_model()
    x, y = batch(model)
    attack = AutoAttack(eps=0.03, **FAST)
    result = attack(model, x, y)
    extra = result.extra
    assert [tag for tag, _ in spy] == ["apgd-ce", "apgd-t", "fab-t", "square"]

    robust = (model(x).argmax(1) == y).tolist()
    assert robust[:2] == [False, False]
    for (tag, received), item in zip(spy, attack.plan):
        expected = x[torch.tensor(robust)]
        assert torch.equal(received, expected), tag  # exactly the images nobody has fooled yet, in order
        assert extra["n_attacked"][tag] == len(expected)
        for i, by in enumerate(extra["fooled_by"]):
            if by == tag:
                robust[i] = False
    assert extra["n_attacked"]["apgd-ce"] == len(x) - 2
    assert sum(extra["n_fooled"].values()) == sum(by not in (None, "clean") for by in extra["fooled_by"])
    assert extra["fooled_by"][:2] == ["clean", "clean"]
    # The chain did something: some fooled, fewer passed on.
    assert 0 < sum(extra["n_fooled"].values()) < len(x) - 2


@pytest.mark.parametrize("norm, eps", [("linf", 0.03), ("l2", 0.2)])
def test_each_image_keeps_its_first_success_within_the_budget(norm, eps):
    model = tiny_model()
    x, y = batch(model)
    attack = AutoAttack(norm=norm, eps=eps, **FAST)
    result = attack(model, x, y)
    by = result.extra["fooled_by"]
    pred = model(result.adversarial).argmax(1)
    dist = (result.adversarial - x).flatten(1).norm(p=float("inf") if norm == "linf" else 2, dim=1)
    assert float(dist.max()) <= eps + 1e-5
    assert any(w not in (None, "clean") for w in by)
    for i, who in enumerate(by):
        if who in (None, "clean"):
            assert torch.equal(result.adversarial[i], x[i])  # robust or already wrong: returned unchanged
        else:
            assert pred[i] != y[i]
    assert result.extra["fooled_by_index"].tolist() == [
        -2 if w == "clean" else -1 if w is None else [i["name"] for i in attack.plan].index(w) for w in by]
    # Provenance in the result equals describe().
    assert result.extra["fingerprint"] == attack.describe()["fingerprint"]
    assert result.extra["settings"]["resolved"] == {"n_classes": 10, "n_target_classes": {"apgd-t": 2, "fab-t": 2},
                                                    "skipped": {}}


def test_not_weaker_than_any_single_sub_attack():
    norm, eps = "linf", 0.02
    model = tiny_model()
    x, y = batch(model, n=16)
    y = model(x).argmax(1)
    settings = dict(FAST, norm=norm, eps=eps)
    full = robust_accuracy(model, AutoAttack(**settings)(model, x, y).adversarial, y)
    singles = {sub: robust_accuracy(model, AutoAttack(**settings, attacks=sub)(model, x, y).adversarial, y)
               for sub in ("apgd-ce", "apgd-t", "fab-t", "square")}
    assert full < 1.0
    for sub, acc in singles.items():
        assert full <= acc, (sub, full, singles)


def test_few_classes_cap_targets_and_skip_apgd_t():
    model = tiny_model(classes=3)
    x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    y = model(x).argmax(1)
    result = AutoAttack(eps=0.05, **FAST)(model, x, y)
    resolved = result.extra["settings"]["resolved"]
    assert "apgd-t" in resolved["skipped"] and resolved["n_target_classes"] == {"fab-t": 2}
    assert "apgd-t" not in result.extra["n_attacked"]


def test_evaluation_summary_and_leaderboard_carry_the_fingerprint():
    model = tiny_model()
    x, y = batch(model, n=8)
    attack = AutoAttack(eps=0.03, **FAST)
    result = evaluate(model, (x, y), {"autoattack": attack}, device="cpu")
    described = json.loads(json.dumps(result.summary()))["attacks"]["autoattack"]["description"]
    assert described["fingerprint"] == attack.fingerprint
    assert described["settings"]["plan"][0]["params"]["steps"] == 5
    entry = leaderboard_entry(result, defense="natural", model="tiny-mlp", dataset="digits", eps=0.03,
                              attack_suite="autoattack")
    assert entry["provenance"]["attacks"][0]["fingerprint"] == attack.fingerprint
    validate_leaderboard(leaderboard_document([entry]))


# --- progress lines, table rows and summary steps per sub-attack -----------------------------


def test_cli_reports_each_sub_attack_and_writes_its_steps(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from robustkit.cli import cli

    monkeypatch.setenv("ROBUSTKIT_PROGRESS", "0")
    out = tmp_path / "out"
    spec = "autoattack eps=0.1 version=custom attacks=apgd-ce,square steps=3 n_queries=20"
    result = CliRunner().invoke(cli, ["attack", "--model", "lenet", "--n-examples", "20", "--batch-size", "8",
                                      "--seed", "2", "--attack", spec, "--grid-examples", "0", "--out", str(out)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("autoattack: ")]
    # One line per sub-attack per batch that had clean-correct examples (20 examples in batches of 8: 3);
    # the untrained lenet with seed 2 gets some right in two of them.
    assert lines and len(lines) % 2 == 0 and len(lines) <= 6
    assert all(" done: robust accuracy so far " in line and ", attacked " in line and ", fooled " in line
               for line in lines)
    assert [line.split()[1] for line in lines] == ["apgd-ce", "square"] * (len(lines) // 2)

    summary = json.loads((out / "summary.json").read_text())
    entry = summary["attacks"]["autoattack"]
    steps = entry["steps"]
    assert [s["attack"] for s in steps] == ["apgd-ce", "square"]
    n_correct = summary["n_examples"] - summary["n_clean_wrong"]
    assert steps[0]["attacked"] == n_correct
    assert steps[1]["attacked"] == steps[0]["attacked"] - steps[0]["fooled"]
    accuracies = [s["robust_accuracy"] for s in steps]
    assert accuracies == sorted(accuracies, reverse=True) and accuracies[0] <= summary["clean_accuracy"]
    assert accuracies[-1] == pytest.approx(entry["robust_accuracy"])
    assert sum(s["fooled"] for s in steps) == entry["n_success"]
    assert all(s["seconds"] >= 0 for s in steps)
    for s in steps:  # robust after each step = clean-correct minus everything fooled so far, over all examples
        assert 0.0 <= s["robust_accuracy"] <= 1.0

    table = result.stdout.splitlines()
    row = next(i for i, line in enumerate(table) if line.startswith("autoattack"))
    assert table[row + 1].startswith("  after apgd-ce") and table[row + 2].startswith("  after square")
    assert f"{100 * accuracies[0]:.2f}" in table[row + 1] and f"{100 * accuracies[1]:.2f}" in table[row + 2]


def test_steps_in_extra_match_the_counts():
    model = tiny_model()
    x, y = batch(model)
    result = AutoAttack(eps=0.1, attacks="apgd-ce,square", **FAST)(model, x, y)
    steps = result.extra["steps"]
    assert [s["attack"] for s in steps] == ["apgd-ce", "square"]
    assert [s["attacked"] for s in steps] == [result.extra["n_attacked"][n] for n in ("apgd-ce", "square")]
    assert [s["fooled"] for s in steps] == [result.extra["n_fooled"][n] for n in ("apgd-ce", "square")]
    assert steps[-1]["robust"] == round(robust_accuracy(model, result.adversarial, y) * len(x))
    assert steps[0]["robust"] == steps[0]["attacked"] - steps[0]["fooled"]


@pytest.mark.parametrize("norm, eps", [("linf", 0.1), ("l2", 0.5)])
def test_a_candidate_inside_the_threat_is_checked_as_returned_and_one_outside_is_projected(norm, eps):
    """Projecting moves an in-budget point by rounding (x + (adv - x) is not adv in floats), so only candidates
    outside the ball or outside [0, 1] are projected; the reference checks its candidates as they are."""
    from robustkit.threat import ThreatModel, distances

    threat = ThreatModel(norm, eps)
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.4 + 0.3
    step = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    step = step / step.flatten(1).norm(p=float("inf") if norm == "linf" else 2, dim=1).view(-1, 1, 1, 1)
    # Rows 0-2 and 5 within the budget (row 2 on its edge), row 3 three times beyond it, row 4 outside [0, 1].
    candidate = x + step * eps * torch.tensor([0.5, 0.999, 1.0, 3.0, 0.1, 0.5]).view(-1, 1, 1, 1)
    candidate[4, 0, 0, 0] = 1.5
    kept = aa.within_threat(threat, candidate, x)
    projected = threat.project(candidate, x)
    for i in (0, 1, 2, 5):
        assert torch.equal(kept[i], candidate[i]), i
    for i in (3, 4):
        assert torch.equal(kept[i], projected[i]) and not torch.equal(kept[i], candidate[i]), i
    assert float(distances(kept, x)[norm].max()) <= eps + 1e-6 and 0 <= float(kept.min()) <= float(kept.max()) <= 1
