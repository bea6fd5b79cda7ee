"""``autoattack backend=original``: the authors' package (``pyautoattack``) run with robustkit's provenance: settings
read from the package's objects, a fingerprint of its own, per-sub-attack counts and seconds, its checks' warnings
as progress lines, resuming inside a batch per sub-attack, and a one-line error when the package is missing."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import robustkit.host as host_module
from robustkit.cli import cli
from robustkit.errors import RobustkitError
from robustkit.evaluation import EvaluationState, evaluate
from robustkit.leaderboard import leaderboard_document, leaderboard_entry, validate_leaderboard
from robustkit.models import Classifier, ModelSpec, Normalize
from robustkit_autoattack.autoattack import AutoAttack

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = dict(version="custom", steps=5, n_queries=30, n_target_classes=2)


def tiny_model(classes: int = 10) -> Classifier:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, classes))
    return Classifier(net, Normalize((0.5,), (0.25,)), ModelSpec("tiny-mlp")).eval()


def data(model: nn.Module, n: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:3] = (y[:3] + 1) % model.net[-1].out_features  # misclassified before any attack
    return x, y


# --- settings read from the package's objects --------------------------------------------------------------


def test_standard_settings_are_read_from_the_authors_objects():
    settings = AutoAttack(eps=0.03, backend="original").settings()
    assert settings["backend"] == "original" and settings["library"].startswith("pyautoattack ")
    plan = {item["name"]: item for item in settings["plan"]}
    assert list(plan) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert plan["apgd-ce"]["pyautoattack"] == "APGDAttack"
    assert plan["apgd-ce"]["params"] == {"loss": "ce", "steps": 100, "n_restarts": 1, "eot_iter": 1, "rho": 0.75}
    assert plan["apgd-t"]["pyautoattack"] == "APGDAttack_targeted" and plan["apgd-t"]["n_target_classes"] == 9
    assert plan["apgd-t"]["params"] == {"steps": 100, "n_restarts": 1, "eot_iter": 1, "rho": 0.75}
    assert plan["fab-t"]["pyautoattack"] == "FABAttack_PT" and plan["fab-t"]["n_target_classes"] == 9
    assert plan["fab-t"]["params"] == {"multi_targeted": True, "steps": 100, "n_restarts": 1, "alpha_max": 0.1,
                                       "eta": 1.05, "beta": 0.9}
    assert plan["square"]["pyautoattack"] == "SquareAttack"
    assert plan["square"]["params"] == {"n_queries": 5000, "n_restarts": 1, "p_init": 0.8, "loss": "margin",
                                        "resc_schedule": False}
    assert all((item["norm"], item["eps"], item["seed"]) == ("Linf", pytest.approx(0.03), 0) for item in plan.values())
    # The same plan as the default backend's, read from other objects, so only the library and backend differ.
    default = AutoAttack(eps=0.03).settings()
    assert [i["params"] for i in default["plan"]] == [i["params"] for i in settings["plan"]]
    assert AutoAttack(eps=0.03, backend="original").fingerprint != AutoAttack(eps=0.03).fingerprint


def test_named_versions_come_from_the_authors_set_version():
    """``plus`` restarts APGD and FAB five times: the package's ``_set_version`` says so, and it is read back."""
    plan = AutoAttack(version="plus", backend="original").settings()["plan"]
    assert [i["name"] for i in plan] == ["apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"]
    assert [i["params"]["n_restarts"] for i in plan] == [5, 5, 5, 1, 1, 1]
    assert [i["params"].get("loss") for i in plan[:2]] == ["ce", "dlr"]
    assert [i["params"]["multi_targeted"] for i in plan if i["name"].startswith("fab")] == [False, True]
    rand = AutoAttack(version="rand", backend="original").settings()["plan"]
    assert [(i["name"], i["params"]["eot_iter"]) for i in rand] == [("apgd-ce", 20), ("apgd-dlr", 20)]


def test_custom_settings_reach_the_authors_objects():
    settings = AutoAttack(backend="original", version="custom", steps=7, n_queries=40, n_restarts=2,
                          n_target_classes=3, n_classes=4).settings()
    plan = {item["name"]: item for item in settings["plan"]}
    assert plan["apgd-ce"]["params"]["steps"] == 7 and plan["apgd-ce"]["params"]["n_restarts"] == 2
    assert plan["apgd-t"]["params"]["steps"] == 7 and plan["apgd-t"]["n_target_classes"] == 3
    assert plan["fab-t"]["params"]["steps"] == 7 and plan["fab-t"]["params"]["n_restarts"] == 1  # always once
    assert plan["square"]["params"]["n_queries"] == 40 and plan["square"]["params"]["n_restarts"] == 2


# --- running ------------------------------------------------------------------------------------------------


def test_extra_and_summary_look_as_with_the_default_backend(tmp_path):
    model = tiny_model()
    x, y = data(model)
    results = {backend: evaluate(model, (x, y), {"aa": AutoAttack(eps=0.05, backend=backend, **FAST)},
                                 batch_size=16, device="cpu") for backend in ("torchattacks", "original")}
    summaries = {b: json.loads(json.dumps(r.summary()))["attacks"]["aa"] for b, r in results.items()}
    ours, theirs = summaries["torchattacks"], summaries["original"]
    assert [(s["attack"], s["attacked"], s["fooled"], s["robust_accuracy"]) for s in theirs["steps"]] == [
        (s["attack"], s["attacked"], s["fooled"], s["robust_accuracy"]) for s in ours["steps"]]
    assert theirs["steps"][0]["fooled"] > 0 and all(s["seconds"] >= 0 for s in theirs["steps"])
    assert theirs["robust_accuracy"] == ours["robust_accuracy"]
    described = theirs["description"]
    assert described["library"].startswith("pyautoattack ") and described["settings"]["backend"] == "original"
    assert described["fingerprint"] == AutoAttack(eps=0.05, backend="original", **FAST).fingerprint
    entry = leaderboard_entry(results["original"], defense="natural", model="tiny-mlp", dataset="digits", eps=0.05,
                              attack_suite="autoattack")
    validate_leaderboard(leaderboard_document([entry]))

    result = AutoAttack(eps=0.05, backend="original", **FAST)(model, x, y)
    assert [r["pyautoattack"] for r in result.extra["ran"]] == ["APGDAttack", "APGDAttack_targeted", "FABAttack_PT",
                                                               "SquareAttack"]
    assert result.extra["settings"]["resolved"]["n_target_classes"] == {"apgd-t": 2, "fab-t": 2}


def test_fewer_classes_skip_apgd_t_and_cap_the_targets():
    model = tiny_model(classes=3)
    x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    y = model(x).argmax(1)
    # A budget too small to fool anything, so every sub-attack that is not skipped runs.
    result = AutoAttack(eps=0.002, backend="original", version="custom", steps=3, n_queries=20)(model, x, y)
    resolved = result.extra["settings"]["resolved"]
    assert "apgd-t" in resolved["skipped"] and resolved["n_target_classes"] == {"fab-t": 2}
    assert [r["name"] for r in result.extra["ran"]] == ["apgd-ce", "fab-t", "square"]
    assert result.extra["ran"][1]["n_target_classes"] == 2


class ZeroGradient(nn.Module):
    """A classifier on 8-level quantized inputs: its input gradient is zero everywhere."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(torch.round(x * 8) / 8)


def test_the_packages_warnings_become_progress_lines(capsys):
    model = ZeroGradient(tiny_model()).eval()
    x = torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    y = model(x).argmax(1)
    result = AutoAttack(eps=0.05, backend="original", version="custom", attacks="apgd-t", steps=2,
                        n_target_classes=2)(model, x, y)
    assert any("zero gradient" in w for w in result.extra["warnings"]), result.extra["warnings"]
    lines = [line for line in capsys.readouterr().err.splitlines() if "the original package warns" in line]
    assert len(lines) == len(result.extra["warnings"]) and "zero gradient" in lines[0]

    # Its check that Square did not beat the white-box sub-attacks needs the whole chain, which no single call
    # sees: the chain runs it. Here no gradient helps, so Square fools what APGD-CE could not.
    result = AutoAttack(eps=0.1, backend="original", version="custom", attacks="apgd-ce,square", steps=2,
                        n_queries=200)(model, x, y)
    assert result.extra["n_fooled"]["square"] > result.extra["n_fooled"]["apgd-ce"]
    assert any(w.startswith("Square Attack has decreased the robust accuracy") for w in result.extra["warnings"])
    default = AutoAttack(eps=0.1, version="custom", attacks="apgd-ce,square", steps=2, n_queries=200)(model, x, y)
    assert default.extra["warnings"] == []  # the default backend runs none of the package's checks


def test_interrupted_inside_a_batch_resumes_at_the_next_sub_attack(tmp_path, monkeypatch):
    """Per sub-attack, as with the default backend: each of the package's sub-attacks reseeds when it starts."""
    model = tiny_model()
    x, y = data(model)

    def suite():
        return {"aa": AutoAttack(eps=0.05, backend="original", **FAST)}

    reference = evaluate(model, (x, y), suite(), batch_size=16, device="cpu")
    path = tmp_path / "aa.state"
    ran: list[str] = []
    kill = True
    real_build = AutoAttack.build

    def build(self, item, net, *args, **kwargs):  # a kill just before the 2nd batch's FAB-T
        if isinstance(net, nn.Linear):  # settings() reads the plan from objects built on a stand-in
            return real_build(self, item, net, *args, **kwargs)
        if kill and item["name"] == "fab-t" and ran.count("fab-t") == 1:
            raise KeyboardInterrupt
        ran.append(item["name"])
        return real_build(self, item, net, *args, **kwargs)

    monkeypatch.setattr(AutoAttack, "build", build)
    with pytest.raises(KeyboardInterrupt):
        evaluate(model, (x, y), suite(), batch_size=16, device="cpu", state=path)
    doc, _ = EvaluationState(path).read()
    assert doc["current"]["partial"]["meta"]["next"] == 2
    ran.clear()
    kill = False
    resumed = evaluate(model, (x, y), suite(), batch_size=16, device="cpu", state=path)
    assert ran[:2] == ["fab-t", "square"]
    assert [r.to_dict() for r in resumed.records] == [r.to_dict() for r in reference.records]
    assert [(s["attack"], s["attacked"], s["fooled"]) for s in resumed.attacks["aa"].steps] == [
        (s["attack"], s["attacked"], s["fooled"]) for s in reference.attacks["aa"].steps]


# --- without the package ------------------------------------------------------------------------------------


def test_without_the_package_one_line_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyautoattack", None)  # import and find_spec both see it as absent
    with pytest.raises(RobustkitError, match="pip install pyautoattack") as err:
        AutoAttack(backend="original")
    assert len(str(err.value).splitlines()) == 1
    AutoAttack()  # the default backend does not need it

    host_module.reset_host()
    result = CliRunner().invoke(cli, ["attack", "--model", "lenet", "--n-examples", "4", "--attack",
                                      "autoattack backend=original", "--threads", "1"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1 and "pip install pyautoattack" in message and "backend=original" in message
