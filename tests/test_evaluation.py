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
from robustkit.evaluation import EvaluationState, evaluate
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

# --- resuming with a state file -----------------------------------------------------------------------------


class TwoSteps(Attack):
    """Two noise steps from torch's global RNG, resumable between them (``batch_checkpoint``), with
    ``extra["steps"]``; ``stop_in`` raises KeyboardInterrupt in the second step of that batch (a kill)."""

    batch_checkpoint = None

    def __init__(self, stop_in: int | None = None, **params):
        super().__init__(**params)
        self.stop_in, self.batches, self.first_steps = stop_in, 0, 0

    def perturb(self, model, images, labels, target_labels=None):
        self.batches += 1
        saved = self.batch_checkpoint.load() if self.batch_checkpoint is not None else None
        if saved is None:
            self.first_steps += 1
            torch.manual_seed(1)
            adv = (images + 0.3 * torch.rand_like(images)).clamp(0, 1)
            fooled = int((model(adv).argmax(1) != labels).sum())
            if self.batch_checkpoint is not None:
                self.batch_checkpoint.save({"fooled": fooled}, {"adv": adv})
        else:
            adv, fooled = saved[1]["adv"], saved[0]["fooled"]
        if self.stop_in == self.batches:
            raise KeyboardInterrupt
        torch.manual_seed(2)
        adv = (adv - 0.3 * torch.rand_like(adv)).clamp(0, 1)
        n = len(images)
        robust = int((model(adv).argmax(1) == labels).sum())
        steps = [{"attack": "up", "attacked": n, "fooled": fooled, "robust": n - fooled, "seconds": 0.0},
                 {"attack": "down", "attacked": n - fooled, "fooled": n - fooled - robust, "robust": robust,
                  "seconds": 0.0}]
        return AttackResult(adv, extra={"steps": steps})


def _numbers(result) -> dict:
    summary = json.loads(json.dumps(result.summary()))
    summary.pop("seconds")
    for attack in summary["attacks"].values():
        attack.pop("seconds")
    return summary


def test_a_stopped_evaluation_resumes_inside_a_batch_with_the_same_result(tmp_path):
    data = grey_images(LABELS)

    def run(attacks, **kw):
        return evaluate(Brightness(), data, attacks, batch_size=8, seed=3, device="cpu", keep_examples=3, **kw)

    reference = run({"noise": GlobalNoise(), "two": TwoSteps()})
    state = tmp_path / "eval.state"
    with pytest.raises(KeyboardInterrupt):  # stopped in the second batch, between the two steps
        run({"noise": GlobalNoise(), "two": TwoSteps(stop_in=2)}, state=state)
    doc, tensors = EvaluationState(state).read()
    assert doc["format"] == "robustkit-evaluation-state" and len(doc["batches"]) == 1
    assert len(doc["records"]) == 8 and doc["current"]["index"] == 1 and doc["current"]["done"] == ["noise"]
    assert doc["current"]["partial"]["attack"] == "two" and doc["current"]["partial"]["meta"]["fooled"] >= 0
    assert "partial/adv" in tensors and any(key.startswith("kept/") for key in tensors)

    calls: list[int] = []
    noise, two = GlobalNoise(), TwoSteps()
    real = noise.perturb
    noise.perturb = lambda *args, **kwargs: calls.append(1) or real(*args, **kwargs)
    resumed = run({"noise": noise, "two": two}, state=state)
    # Batch 1 is not attacked again, batch 2 runs only the second step of "two", batch 3 everything.
    assert len(calls) == 1 and two.batches == 2 and two.first_steps == 1
    assert not hasattr(noise, "batch_checkpoint") and two.batch_checkpoint is None  # handed over only to "two"
    assert _numbers(resumed) == _numbers(reference)
    assert [r.to_dict() for r in resumed.records] == [r.to_dict() for r in reference.records]
    assert resumed.attacks["two"].steps == reference.attacks["two"].steps and resumed.attacks["two"].steps
    for name in ("noise", "two"):
        assert torch.equal(resumed.examples.adversarial[name], reference.examples.adversarial[name])
    assert EvaluationState(state).read()[0]["complete"] is True and not list(tmp_path.glob(".*.tmp"))


def test_a_finished_state_gives_the_result_without_attacking(tmp_path):
    state = tmp_path / "eval.state"
    data = grey_images(LABELS)
    first = evaluate(Brightness(), data, {"to-zero": FixedImage(target=0)}, batch_size=8, device="cpu", state=state)
    attack = FixedImage(target=0)
    again = evaluate(Brightness(), data, {"to-zero": attack}, batch_size=8, device="cpu", state=state)
    assert attack.seen == 0 and _numbers(again) == _numbers(first)


def test_a_state_of_other_settings_other_data_or_a_damaged_one_is_refused(tmp_path):
    state = tmp_path / "eval.state"
    data = grey_images(LABELS)

    def attacks(target=0):
        return {"to-zero": FixedImage(target=target)}

    evaluate(Brightness(), data, attacks(), batch_size=8, device="cpu", state=state)
    fix = "delete the file to start afresh, or give another state file"

    with pytest.raises(RobustkitError, match="belongs to another evaluation") as err:
        evaluate(Brightness(), data, attacks(9), batch_size=8, device="cpu", state=state)
    assert "attacks.to-zero.params.target: 0 there, 9 now" in str(err.value) and fix in str(err.value)
    with pytest.raises(RobustkitError, match="data.batch_size: 8 there, 4 now"):
        evaluate(Brightness(), data, attacks(), batch_size=4, device="cpu", state=state)
    with pytest.raises(RobustkitError, match="model.class"):
        evaluate(nn.Sequential(Brightness()), data, attacks(), batch_size=8, device="cpu", state=state)
    shuffled = grey_images(LABELS[8:16] + LABELS[:8] + LABELS[16:])
    with pytest.raises(RobustkitError, match="other data \\(batch 1 holds other images or labels\\)"):
        evaluate(Brightness(), shuffled, attacks(), batch_size=8, device="cpu", state=state)
    longer = tmp_path / "longer.state"  # n_examples=None: all there are, so a longer dataset is other data
    evaluate(Brightness(), data, attacks(), batch_size=4, device="cpu", state=longer)
    with pytest.raises(RobustkitError, match="it goes on after the 5 batches recorded"):
        evaluate(Brightness(), grey_images(LABELS + [1, 2, 3, 4]), attacks(), batch_size=4, device="cpu", state=longer)

    whole = state.read_bytes()
    for damage in (whole[: len(whole) // 2], b"not a state file", b""):
        state.write_bytes(damage)
        with pytest.raises(RobustkitError, match="is damaged or truncated") as err:
            evaluate(Brightness(), data, attacks(), batch_size=8, device="cpu", state=state)
        assert len(str(err.value).splitlines()) == 1 and fix in str(err.value)

    import safetensors.torch

    other = tmp_path / "weights.safetensors"
    safetensors.torch.save_file({"w": torch.zeros(1)}, str(other))
    with pytest.raises(RobustkitError, match="damaged or truncated"):
        evaluate(Brightness(), data, attacks(), batch_size=8, device="cpu", state=other)
    link = tmp_path / "link.state"
    link.symlink_to(tmp_path / "elsewhere.state")
    with pytest.raises(RobustkitError, match="is a symbolic link"):
        evaluate(Brightness(), data, attacks(), batch_size=8, device="cpu", state=link)
    assert not (tmp_path / "elsewhere.state").exists()
    with pytest.raises(RobustkitError, match="is a folder"):
        evaluate(Brightness(), data, attacks(), batch_size=8, device="cpu", state=tmp_path)
