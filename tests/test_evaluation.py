"""evaluate(): accuracy arithmetic, the worst case over a suite, records and distortion statistics."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from torch import nn

from robustkit.attacks import Attack, AttackResult
from robustkit.data import DatasetInfo, ImageDataset
from robustkit.errors import InputError, RobustkitError
from robustkit.evaluation import evaluate
from robustkit.host import make_host
from robustkit.image_metrics import ImageMetric
from robustkit.models import Classifier, ModelSpec, Normalize
from robustkit.params import Param

PIXELS = 64  # 1 x 8 x 8


class Brightness(nn.Module):
    """Predicts class k for images whose mean brightness is nearest k/9: exact on the grey images below."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centres = torch.arange(10, dtype=x.dtype, device=x.device) / 9
        return -(x.flatten(1).mean(dim=1, keepdim=True) - centres).abs()


def grey_images(labels: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Image of class k: every pixel k/9. The Brightness model gets all of them right."""
    y = torch.tensor(labels)
    return (y.float() / 9).view(-1, 1, 1, 1).expand(-1, 1, 8, 8).clone(), y


class FixedImage(Attack):
    """Replaces every image by the grey image of class ``target`` (counts the images it saw)."""

    threat_models = ("unbounded",)
    knowledge = "decision-based"
    params = (Param("target", int, 0, "class of the replacement image", low=0, high=9),
              Param("queries", int, -1, "queries to report per image; -1 reports none"))

    def __init__(self, **params):
        super().__init__(**params)
        self.seen = 0

    def perturb(self, model, images, labels, target_labels=None):
        self.seen += images.shape[0]
        adv = torch.full_like(images, self.config["target"] / 9)
        q = self.config["queries"]
        return AttackResult(adv, queries=None if q < 0 else torch.full((images.shape[0],), q))


class Identity(Attack):
    """Returns the images unchanged."""

    def perturb(self, model, images, labels, target_labels=None):
        return AttackResult(images.clone())


class GlobalNoise(Attack):
    """Uniform noise drawn from torch's global RNG (to check seeding)."""

    def perturb(self, model, images, labels, target_labels=None):
        return AttackResult((images + 0.1 * torch.rand_like(images)).clamp(0, 1))


LABELS = list(range(10)) * 2  # 20 examples, two per class


def test_known_answer_per_attack_and_worst_case():
    data = grey_images(LABELS)
    attacks = {"to-zero": FixedImage(target=0), "to-nine": FixedImage(target=9), "identity": Identity()}
    result = evaluate(Brightness(), data, attacks, batch_size=7, device="cpu")
    assert result.n_examples == 20 and result.clean_accuracy == 1.0 and result.n_clean_wrong == 0
    # Only the images already of the replacement's class survive a fixed-image attack.
    assert result.robust_accuracy == {"to-zero": 0.1, "to-nine": 0.1, "identity": 1.0}
    # Pointwise worst case: no image survives both fixed-image attacks, though each spares 10%.
    assert result.worst_case_accuracy == 0.0
    assert [r.index for r in result.records] == list(range(20))
    assert result.attacks["to-zero"].success_rate == 0.9 and result.attacks["to-zero"].n_success == 18


def test_fixed_wrong_class_image_gives_zero_robust_accuracy():
    data = grey_images([1, 2, 3, 4, 5, 6, 7, 8, 9])
    result = evaluate(Brightness(), data, {"to-zero": FixedImage(target=0)}, device="cpu")
    assert result.clean_accuracy == 1.0
    assert result.robust_accuracy["to-zero"] == 0.0 and result.worst_case_accuracy == 0.0


def test_distortion_statistics_cover_successful_adversarials_only():
    result = evaluate(Brightness(), grey_images(LABELS), {"to-zero": FixedImage(target=0)}, device="cpu")
    summary = result.attacks["to-zero"]
    # Class k moves every pixel by k/9: Linf k/9 and L2 8k/9; successes are k = 1..9, twice each.
    assert summary.mean_linf == pytest.approx(5 / 9) and summary.median_linf == pytest.approx(5 / 9)
    assert summary.mean_l2 == pytest.approx(8 * 5 / 9, rel=1e-5)
    assert summary.median_l2 == pytest.approx(8 * 5 / 9, rel=1e-5)
    zero = [r.attacks["to-zero"] for r in result.records if r.label == 0]
    assert all(not o.success and o.l2 == 0.0 for o in zero)


def test_no_successes_give_no_statistics():
    summary = evaluate(Brightness(), grey_images(LABELS), {"identity": Identity()}, device="cpu").attacks["identity"]
    assert summary.n_success == 0 and summary.mean_l2 is None and summary.median_linf is None


def test_clean_mistakes_are_not_attacked_and_count_as_non_robust():
    images, labels = grey_images([0, 3, 5, 7])
    labels[1] = 4  # the model says 3: a clean mistake
    attack = FixedImage(target=3)
    result = evaluate(Brightness(), (images, labels), {"to-three": attack}, device="cpu")
    assert result.clean_accuracy == 0.75 and result.n_clean_wrong == 1
    assert attack.seen == 3  # only the clean-correct images were attacked
    wrong = result.records[1]
    assert not wrong.clean_correct and not wrong.robust
    outcome = wrong.attacks["to-three"]
    assert (outcome.attacked, outcome.success, outcome.adv_pred) == (False, False, 3)
    assert (outcome.l2, outcome.linf) == (0.0, 0.0)
    # Every attacked image becomes class 3 (all fooled), and the clean mistake is non-robust anyway.
    assert result.robust_accuracy["to-three"] == 0.0
    assert result.attacks["to-three"].success_rate == 1.0


def test_queries_are_recorded_when_the_attack_reports_them():
    result = evaluate(Brightness(), grey_images([1, 2, 3]), {"q": FixedImage(target=0, queries=7)}, device="cpu")
    assert result.attacks["q"].mean_queries == 7.0
    assert [r.attacks["q"].queries for r in result.records] == [7, 7, 7]
    silent = evaluate(Brightness(), grey_images([1]), {"q": FixedImage(target=0)}, device="cpu")
    assert silent.attacks["q"].mean_queries is None and silent.records[0].attacks["q"].queries is None


def test_inputs_as_dataset_image_dataset_and_first_n_examples():
    images, labels = grey_images(LABELS)
    pairs = list(zip(images, labels.tolist()))
    info = DatasetInfo("grey", 10, 1, (8, 8), (0.5,), (0.5,))
    for data in (pairs, ImageDataset(info, pairs, pairs)):
        result = evaluate(Brightness(), data, {"id": Identity()}, n_examples=5, batch_size=2, device="cpu")
        assert result.n_examples == 5 and [r.label for r in result.records] == [0, 1, 2, 3, 4]


def test_bad_inputs_fail_with_one_line():
    with pytest.raises(InputError, match="batch_size"):
        evaluate(Brightness(), grey_images([1]), {}, batch_size=0, device="cpu")
    with pytest.raises(InputError, match="empty"):
        evaluate(Brightness(), grey_images([]), {}, device="cpu")
    with pytest.raises(InputError, match="in \\[0, 1\\]"):
        evaluate(Brightness(), (torch.full((2, 1, 8, 8), 3.0), torch.tensor([0, 1])), {"id": Identity()},
                 device="cpu")


def test_records_and_summary_files(tmp_path):
    images, labels = grey_images([0, 5, 9])
    labels[2] = 8
    result = evaluate(Brightness(), (images, labels), {"to-zero": FixedImage(target=0)}, device="cpu")

    lines = (result.save_records(tmp_path / "records.jsonl")).read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["index"] for r in rows] == [0, 1, 2]
    assert rows[1] == {"index": 1, "label": 5, "clean_pred": 5, "clean_correct": True, "robust": False,
                       "attacks": {"to-zero": {"attacked": True, "adv_pred": 0, "success": True,
                                               "l2": pytest.approx(8 * 5 / 9, rel=1e-5),
                                               "linf": pytest.approx(5 / 9), "queries": None,
                                               "metrics": {}, "l1": pytest.approx(64 * 5 / 9, rel=1e-5)}}}
    assert rows[2]["clean_correct"] is False and rows[2]["attacks"]["to-zero"]["attacked"] is False

    with open(result.save_records(tmp_path / "records.csv"), newline="") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 3 and table[1]["to-zero.adv_pred"] == "0" and table[1]["to-zero.success"] == "True"
    assert table[0]["robust"] == "True"

    summary = json.loads(result.save_summary(tmp_path / "out" / "summary.json").read_text())
    assert summary["clean_accuracy"] == pytest.approx(2 / 3) and summary["n_clean_wrong"] == 1
    assert summary["attacks"]["to-zero"]["description"]["params"] == {"target": 0, "queries": -1}
    assert summary["attacks"]["to-zero"]["seconds"] >= 0
    assert "records" not in summary
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "records.csv", "records.jsonl"]  # no temp files

    with pytest.raises(RobustkitError, match=".jsonl or .csv"):
        result.save_records(tmp_path / "records.txt")


def test_seeded_attacks_repeat_and_do_not_depend_on_suite_order():
    data = grey_images(LABELS)
    run = lambda attacks, seed=0: evaluate(Brightness(), data, attacks, batch_size=8, seed=seed, device="cpu")
    alone = run({"noise": GlobalNoise()})
    after_other = run({"other": GlobalNoise(), "noise": GlobalNoise()})
    assert [r.attacks["noise"] for r in alone.records] == [r.attacks["noise"] for r in after_other.records]
    assert [r.attacks["noise"] for r in run({"noise": GlobalNoise()}, seed=1).records] != \
        [r.attacks["noise"] for r in alone.records]


def test_with_torchattacks_attacks_and_training_mode_restored(monkeypatch):
    monkeypatch.setenv("ROBUSTKIT_LOAD_PLUGINS", "torchattacks")
    host = make_host()
    torch.manual_seed(0)
    model = Classifier(nn.Sequential(nn.Flatten(), nn.Linear(PIXELS, 10)), Normalize((0.5,), (0.25,)),
                       ModelSpec("tiny-linear")).train()
    images = torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        labels = model(images).argmax(1)
    labels[:3] = (labels[:3] + 1) % 10  # three clean mistakes
    attacks = {"fgsm": host.attacks.create("torchattacks:FGSM", {"eps": 0.05}),
               "pgd": host.attacks.create("torchattacks:PGD", {"eps": 0.05, "steps": 5})}
    result = evaluate(model, (images, labels), attacks, batch_size=5, device="cpu")
    assert model.training
    assert result.clean_accuracy == 0.75
    assert result.worst_case_accuracy <= min(result.robust_accuracy.values()) <= result.clean_accuracy
    for record in result.records:
        for outcome in record.attacks.values():
            assert outcome.linf <= 0.05 + 1e-6
    assert result.attacks["pgd"].description["params"]["steps"] == 5


class MeanAbsoluteChange(ImageMetric):
    """A metric with a known answer: the mean absolute pixel change."""

    name = "mac"

    def score(self, adversarial, clean):
        return (adversarial - clean).abs().flatten(1).mean(1)


def test_image_metrics_are_measured_on_successful_adversarials_when_asked():
    images, labels = grey_images(LABELS)
    plain = evaluate(Brightness(), (images, labels), {"to-zero": FixedImage(target=0)}, device="cpu")
    assert plain.attacks["to-zero"].metrics == {}
    assert all(r.attacks["to-zero"].metrics == {} for r in plain.records)

    result = evaluate(Brightness(), (images, labels), {"to-zero": FixedImage(target=0)}, device="cpu",
                      metrics={"mac": MeanAbsoluteChange()})
    expected = images.flatten(1).mean(1)  # the attack replaces every image by zeros
    for record in result.records:
        outcome = record.attacks["to-zero"]
        if outcome.success:
            assert outcome.metrics == {"mac": pytest.approx(float(expected[record.index]))}
        else:  # class 0 is already the replacement: not fooled, nothing to measure
            assert outcome.metrics == {}
    fooled = sorted(float(expected[i]) for i, y in enumerate(LABELS) if y != 0)
    summary = result.attacks["to-zero"].metrics["mac"]
    assert summary["mean"] == pytest.approx(sum(fooled) / len(fooled))
    assert result.summary()["attacks"]["to-zero"]["metrics"]["mac"]["mean"] == pytest.approx(summary["mean"])