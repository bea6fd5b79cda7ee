"""Leaderboard entries, the shipped JSON Schema, validation messages and atomic writing."""

from __future__ import annotations

import copy
import json
from importlib import resources

import jsonschema
import pytest
import torch

import robustkit
from robustkit.errors import RobustkitError
from robustkit.evaluation import AttackOutcome, AttackSummary, EvaluationResult, SampleRecord
from robustkit.host import make_host
from robustkit.threat import ThreatModel
from robustkit.leaderboard import (
    leaderboard_document, leaderboard_entry, leaderboard_schema, load_leaderboard, validate_leaderboard,
    write_leaderboard,
)


def fake_result(clean: float = 0.9, worst: float = 0.4, per_attack: dict[str, float] | None = None,
                n: int = 200) -> EvaluationResult:
    """An evaluation result with chosen accuracies, and per-sample records that give them: the first
    ``clean * n`` examples are correct; the first attack breaks a block from ``worst * n`` on, the others a
    block ending at ``clean * n`` (within their linf budget 8/255), so together they leave ``worst``."""
    per_attack = per_attack or {"pgd": 0.5, "square": 0.45}
    correct, low = round(clean * n), round(worst * n)
    records = [SampleRecord(i, 0, 0 if i < correct else 1) for i in range(n)]
    for k, (name, acc) in enumerate(per_attack.items()):
        broken = correct - round(acc * n)
        block = range(low, low + broken) if k == 0 else range(correct - broken, correct)
        for i, r in enumerate(records):
            hit = i in block
            r.attacks[name] = AttackOutcome(r.clean_correct, 1 if hit else r.clean_pred, hit, 0.1 if hit else 0.0,
                                            0.01 if hit else 0.0)
    attacks = {
        name: AttackSummary(description={"name": f"torchattacks:{name.upper()}",
                                         "params": {"eps": 8 / 255, "steps": 10, "dims": (2, 10)}},
                            robust_accuracy=acc, success_rate=None, n_success=0, mean_l2=None, median_l2=None,
                            mean_linf=None, median_linf=None, mean_queries=None, seconds=1.5)
        for name, acc in per_attack.items()
    }
    result = EvaluationResult(n_examples=n, clean_accuracy=clean, worst_case_accuracy=worst, n_clean_wrong=n - correct,
                              attacks=attacks, records=records, seed=3, device="cpu", seconds=12.3456,
                              budgets={name: ThreatModel("linf", 8 / 255) for name in per_attack})
    assert result.worst_case_within(ThreatModel("linf", 8 / 255)) == pytest.approx(worst)
    return result


def entry(**overrides):
    kwargs = dict(defense="pgd-at", model="madry-cnn", dataset="digits", eps=8 / 255,
                  plugin_versions={"torchattacks": "0.1.0", "example": None})
    kwargs.update(overrides)
    result = kwargs.pop("result", None) or fake_result()
    return leaderboard_entry(result, **kwargs)


def test_schema_ships_with_the_package_and_is_valid_2020_12():
    text = resources.files("robustkit").joinpath("schemas/leaderboard.schema.json").read_text()
    schema = json.loads(text)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)
    assert leaderboard_schema() == schema


def test_entry_fields_are_numbers_in_percent_with_provenance():
    e = entry(reported=41.5, link="https://example.org/paper", venue="ICLR 2018")
    assert e["clean_acc"] == 90.0 and e["robust_acc"] == 40.0
    assert e["attack_acc"] == {"pgd": 50.0, "square": 45.0}
    assert e["eps"] == 8 / 255 and e["reported"] == 41.5
    assert e["name"] == "pgd-at (madry-cnn)" and e["architecture"] == "madry-cnn"
    assert e["additional_data"] is False and e["number_forward_passes"] == 1
    assert "autoattack_acc" not in e and e["attack_suite"] == "custom"
    p = e["provenance"]
    assert p["robustkit_version"] == robustkit.__version__ and p["torch_version"] == torch.__version__
    assert p["plugin_versions"] == {"torchattacks": "0.1.0", "example": None}
    assert (p["seed"], p["n_examples"], p["device"], p["runtime_seconds"]) == (3, 200, "cpu", 12.346)
    # robust_acc is the worst case within the entry's threat: a wider eps counts the same successes; a
    # smaller one, or another norm, has no attack that stayed within it to answer for it.
    assert entry(eps=0.1)["robust_acc"] == 40.0
    with pytest.raises(RobustkitError, match="no attack of the suite stays within linf eps 0.005"):
        entry(eps=0.005)
    with pytest.raises(RobustkitError, match="no attack of the suite stays within l2 eps 0.5"):
        entry(threat_model="l2", eps=0.5)
    assert p["attacks"][0] == {"name": "pgd", "attack": "torchattacks:PGD",
                               "params": {"eps": 8 / 255, "steps": 10, "dims": [2, 10]}}
    assert p["timestamp"].endswith("+00:00")
    validate_leaderboard(leaderboard_document([e]))


def test_percent_is_rounded_to_four_decimals():
    e = entry(result=fake_result(clean=2 / 3, worst=1 / 3, per_attack={"pgd": 1 / 3}, n=600))
    assert e["clean_acc"] == 66.6667 and e["robust_acc"] == 33.3333


def test_plugin_versions_default_to_the_host(monkeypatch):
    monkeypatch.setenv("ROBUSTKIT_LOAD_PLUGINS", "torchattacks")
    e = entry(plugin_versions=None)
    assert e["provenance"]["plugin_versions"] == make_host().plugin_versions()
    assert "torchattacks" in e["provenance"]["plugin_versions"]


def test_autoattack_suite_adds_autoattack_acc_and_only_then():
    e = entry(attack_suite="AutoAttack")
    assert e["attack_suite"] == "autoattack" and e["autoattack_acc"] == e["robust_acc"] == 40.0
    validate_leaderboard(leaderboard_document([e]))
    missing = copy.deepcopy(e)
    del missing["autoattack_acc"]
    with pytest.raises(RobustkitError, match=r"\$\.entries\[0\]: 'autoattack_acc' is a required property"):
        validate_leaderboard(leaderboard_document([missing]))
    stray = entry()
    stray["autoattack_acc"] = 40.0
    with pytest.raises(RobustkitError, match=r"\$\.entries\[0\]\.autoattack_acc: .*only with attack_suite autoattack"):
        validate_leaderboard(leaderboard_document([stray]))


def test_write_ranks_validates_and_reads_back(tmp_path):
    weak = entry(defense="none", result=fake_result(clean=0.99, worst=0.0))
    strong = entry(defense="trades", result=fake_result(clean=0.8, worst=0.5, per_attack={"pgd": 0.6, "square": 0.55}))
    middle = entry()
    path = tmp_path / "board" / "leaderboard.json"
    doc = write_leaderboard(path, [weak, strong, middle])
    assert [e["defense"] for e in doc["entries"]] == ["trades", "pgd-at", "none"]
    assert doc["units"]["accuracy"] == "percent"
    assert load_leaderboard(path) == doc
    assert json.loads(path.read_text())["entries"][0]["robust_acc"] == 50.0
    assert [p.name for p in path.parent.iterdir()] == ["leaderboard.json"]  # no temp file left behind


def test_string_instead_of_number_names_the_json_path():
    bad = entry()
    bad["clean_acc"] = "90.00"  # RobustBench's spelling
    with pytest.raises(RobustkitError) as err:
        validate_leaderboard(leaderboard_document([entry(defense="x"), bad]))
    message = str(err.value)
    assert "$.entries[1].clean_acc" in message and "'90.00' is not of type 'number'" in message
    assert "\n" not in message


def test_nested_problems_name_their_path():
    bad = entry()
    bad["provenance"]["seed"] = 1.5
    with pytest.raises(RobustkitError, match=r"\$\.entries\[0\]\.provenance\.seed: 1\.5 is not of type 'integer'"):
        validate_leaderboard(leaderboard_document([bad]))
    out_of_range = entry()
    out_of_range["robust_acc"] = 140.0
    with pytest.raises(RobustkitError, match=r"\$\.entries\[0\]\.robust_acc: 140\.0 is greater than the maximum"):
        validate_leaderboard(leaderboard_document([out_of_range]))


def test_one_entry_per_defense_and_model():
    with pytest.raises(RobustkitError, match=r"\$\.entries\[1\].*already appears at \$\.entries\[0\]"):
        validate_leaderboard(leaderboard_document([entry(), entry()]))


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "leaderboard.json"
    write_leaderboard(path, [entry()])
    before = path.read_text()
    bad = entry(defense="other")
    bad["eps"] = "8/255"
    with pytest.raises(RobustkitError, match=r"\$\.entries\[\d\]\.eps"):
        write_leaderboard(path, [entry(), bad])
    assert path.read_text() == before


def test_file_problems_are_one_line(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(RobustkitError, match="broken.json: not JSON"):
        validate_leaderboard(broken)
    with pytest.raises(RobustkitError, match="missing.json: cannot read"):
        validate_leaderboard(tmp_path / "missing.json")
    wrong_top = tmp_path / "list.json"
    wrong_top.write_text("[]")
    with pytest.raises(RobustkitError, match=r"list.json: \$: \[\] is not of type 'object'"):
        validate_leaderboard(wrong_top)
