"""robustkit.benchmark and robustkit.attack (robustkit.api), keyword parameters of Registry.create, and the
labels of a repeated attack name."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import robustkit
from robustkit.commands.common import build_components
from robustkit.data import stack, take
from robustkit.errors import ParameterError, RobustkitError
from robustkit.evaluation import evaluate
from robustkit.host import get_host
from robustkit.leaderboard import leaderboard_document, validate_leaderboard
from robustkit.registry import distinct_labels

EPS = 0.1


class Linear(nn.Module):
    """A fixed linear classifier of 8x8 grey digits: class c scores how much the image looks like digit c."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.fc = nn.Linear(64, 10)
        with torch.no_grad():
            self.fc.weight.copy_(weight)
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


@pytest.fixture(scope="module")
def digits():
    return get_host().datasets.create("digits", {}, root=None)


@pytest.fixture(scope="module")
def net(digits):
    """Class means as weights (centred): right on most digits, fooled by a small eps."""
    x, y = stack(digits.train)
    means = torch.stack([x[y == c].flatten(1).mean(0) for c in range(10)])
    return Linear(means - means.mean(0))


@pytest.fixture(scope="module")
def tensors(digits):
    return stack(take(digits.test, 96))


def _pgd(**params):
    return get_host().attacks.create("pgd", {"eps": EPS, "steps": 5, **params})


def test_benchmark_on_digits_matches_evaluate(net, digits):
    result = robustkit.benchmark(net, "digits", eps=EPS, attacks=["pgd steps=5", "cw-linf steps=3"], n_examples=96,
                                 batch_size=32)
    cw = get_host().attacks.create("cw-linf", {"eps": EPS, "steps": 3})
    direct = evaluate(net, digits, {"pgd": _pgd(), "cw-linf": cw},
                      n_examples=96, batch_size=32)
    assert 0.5 < result.clean_accuracy == direct.clean_accuracy
    assert result.attack_accuracy == direct.robust_accuracy
    assert result.robust_accuracy == direct.worst_case_within(result.threat) < result.clean_accuracy
    assert set(result.attacks) == {"pgd", "cw-linf"} and result.evaluation.n_examples == 96
    assert result.attacks["pgd"].description["params"]["eps"] == EPS  # the threat's eps reached the attack
    assert "clean_accuracy" in repr(result)


def test_benchmark_on_tensors_and_a_loader_gives_the_same_numbers(net, tensors):
    x, y = tensors
    on_tensors = robustkit.benchmark(net, (x, y), eps=EPS, attacks="pgd steps=5", batch_size=32)
    for loader_batch in (32, 20):  # re-batched to batch_size: the loader's own size does not matter
        loader = DataLoader(TensorDataset(x, y), batch_size=loader_batch)
        on_loader = robustkit.benchmark(net, loader, eps=EPS, attacks="pgd steps=5", batch_size=32)
        assert on_loader.robust_accuracy == on_tensors.robust_accuracy
        assert on_loader.attack_accuracy == on_tensors.attack_accuracy
        assert [r.attacks["pgd"].l2 for r in on_loader.evaluation.records] == \
            [r.attacks["pgd"].l2 for r in on_tensors.evaluation.records]
    generator = ((x[i:i + 10], y[i:i + 10]) for i in range(0, len(x), 10))
    assert robustkit.benchmark(net, generator, eps=EPS, attacks="pgd steps=5", batch_size=32).attack_accuracy == \
        on_tensors.attack_accuracy
    first = robustkit.benchmark(net, DataLoader(TensorDataset(x, y), batch_size=7), eps=EPS, attacks="pgd steps=5",
                                batch_size=32, n_examples=50)
    assert first.n_examples == 50
    assert on_tensors.dataset_name == "custom"


def test_benchmark_with_attack_instances_and_cheap_autoattack(net, tensors):
    x, y = tensors
    result = robustkit.benchmark(net, (x[:32], y[:32]), eps=EPS, attacks={"mine": _pgd(steps=3)})
    assert list(result.attacks) == ["mine"]
    if "autoattack" not in get_host().attacks:
        pytest.skip("the autoattack plugin is not installed")
    cheap = get_host().attacks.get("autoattack").factory.cheap_params
    spec = "autoattack " + " ".join(f"{k}={v}" for k, v in cheap.items())
    aa = robustkit.benchmark(net, (x[:16], y[:16]), eps=EPS, attacks=spec)
    assert aa.attack_suite == "autoattack" and aa.robust_accuracy <= aa.clean_accuracy
    entry = aa.to_leaderboard_entry(defense="none", model="linear")
    assert entry["attack_suite"] == "autoattack" and entry["autoattack_acc"] == entry["robust_acc"]


def test_to_leaderboard_entry_validates(net, tensors):
    result = robustkit.benchmark(net, tensors, eps=EPS, attacks="pgd steps=5", batch_size=48)
    entry = result.to_leaderboard_entry(defense="none", name="class means")
    validate_leaderboard(leaderboard_document([entry]))
    assert entry["eps"] == EPS and entry["threat_model"] == "linf" and entry["model"] == "Linear"
    assert entry["robust_acc"] == round(100 * result.robust_accuracy, 4)
    assert entry["provenance"]["normalization"] == {"mode": "none", "mean": None, "std": None}


def test_benchmark_normalization(net, digits, tensors):
    plain = robustkit.benchmark(net, tensors, eps=EPS, attacks="pgd steps=2")
    shifted = robustkit.benchmark(net, tensors, eps=EPS, attacks="pgd steps=2", normalize="0.5/0.25")
    assert plain.normalization.mode == "none" and shifted.normalization.mode == "custom"
    with pytest.raises(RobustkitError, match="needs a registered dataset"):
        robustkit.benchmark(net, tensors, eps=EPS, attacks="pgd", normalize="dataset")
    on_digits = robustkit.benchmark(net, "digits", eps=EPS, attacks="pgd steps=2", normalize="dataset", n_examples=8)
    assert on_digits.normalization.mean == tuple(digits.info.mean)


def _one_line(excinfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text and isinstance(excinfo.value, RobustkitError)
    return text


def test_benchmark_bad_inputs_fail_with_one_line(net, tensors):
    x, y = tensors
    with pytest.raises(RobustkitError) as err:
        robustkit.benchmark(net, tensors, eps=EPS, attacks="no-such-attack")
    assert "unknown attack 'no-such-attack'" in _one_line(err)
    with pytest.raises(RobustkitError) as err:
        robustkit.benchmark(net, (x[:, 0], y), eps=EPS, attacks="pgd")  # N x H x W: no channel axis
    _one_line(err)
    with pytest.raises(RobustkitError) as err:
        robustkit.benchmark(net, "digits", eps=EPS, attacks="pgd", normalize="0.5,0.5,0.5/0.2,0.2,0.2")
    assert "channel" in _one_line(err)
    with pytest.raises(RobustkitError) as err:
        robustkit.benchmark(nn.Linear(64, 3), "digits", eps=EPS, attacks="pgd")
    _one_line(err)
    with pytest.raises(RobustkitError) as err:
        robustkit.benchmark(net, tensors, eps=EPS, attacks="pgd", threat="l2")  # pgd gets norm=l2: fine
        robustkit.benchmark(net, tensors, eps=EPS, attacks={"pgd": _pgd()}, threat="l2")  # linf only: nothing within
    assert "no attack of the suite stays within l2" in _one_line(err)
    with pytest.raises(RobustkitError) as err:
        robustkit.benchmark(net, iter([(x, y, y)]), eps=EPS, attacks="pgd")
    _one_line(err)
    with pytest.raises(RobustkitError):
        robustkit.benchmark("not a model", tensors, eps=EPS, attacks="pgd")


def test_attack_returns_adversarials_within_eps(net, tensors):
    x, y = tensors
    atk = robustkit.attack("pgd", net, eps=EPS, steps=5)
    adv = atk(x, y)
    assert isinstance(adv, torch.Tensor) and adv.shape == x.shape
    assert float((adv - x).abs().max()) <= EPS + 1e-6 and float(adv.min()) >= 0 and float(adv.max()) <= 1
    assert atk.last is not None and torch.equal(atk.last.adversarial, adv)
    assert (net(adv).argmax(1) != y).sum() > (net(x).argmax(1) != y).sum()
    assert torch.equal(atk.run(x, y).adversarial, adv)  # seeded: the same again
    assert "pgd" in repr(atk)


def test_targeted_attack(net, tensors):
    x, y = tensors
    target = (y + 1) % 10
    atk = robustkit.attack("pgd", net, eps=0.3, steps=20, targeted=True)
    adv = atk(x, y, target_labels=target)
    hit = (net(adv).argmax(1) == target).float().mean()
    assert hit > 0.5
    with pytest.raises(RobustkitError) as err:
        atk(x, y)
    assert "target_labels" in _one_line(err)
    with pytest.raises(RobustkitError) as err:
        robustkit.attack("cw-linf", net, eps=EPS, targeted=True)
    assert "targeted" in _one_line(err)


def test_attack_bad_inputs_fail_with_one_line(net, tensors):
    x, y = tensors
    with pytest.raises(RobustkitError) as err:
        robustkit.attack("no-such-attack", net)
    assert "unknown attack" in _one_line(err)
    with pytest.raises(RobustkitError) as err:
        robustkit.attack("pgd", net, no_such_param=1)
    _one_line(err)
    with pytest.raises(RobustkitError) as err:
        robustkit.attack("pgd", net, eps=EPS)(x[:, 0], y)
    _one_line(err)


def test_attack_with_torchattacks(net, tensors):
    if "torchattacks:PGD" not in get_host().attacks:
        pytest.skip("the torchattacks plugin is not installed")
    x, y = tensors
    adv = robustkit.attack("torchattacks:PGD", net, eps=8 / 255, alpha=2 / 255, steps=3)(x, y)
    assert float((adv - x).abs().max()) <= 8 / 255 + 1e-6


def test_create_takes_keyword_parameters():
    host = get_host()
    by_keyword, by_dict = host.attacks.create("pgd", eps=0.1, steps=3), host.attacks.create("pgd", {"eps": 0.1, "steps": 3})
    assert by_keyword.config == by_dict.config and by_keyword.config["steps"] == 3
    assert host.attacks.create("pgd", {"eps": 0.1}, steps="3").config["steps"] == 3  # converted like params
    with pytest.raises(ParameterError, match="given twice"):
        host.attacks.create("pgd", {"steps": 3}, steps=4)
    with pytest.raises(ParameterError):
        host.attacks.create("pgd", steps=0)  # validated
    # context stays context: a model's num_classes, a dataset's root
    assert host.datasets.create("digits", root=None).info.num_classes == 10


def test_repeated_names_get_labels_naming_what_differs():
    host = get_host()
    made = build_components(host.attacks, ("pgd eps=0.1 steps=5", "pgd eps=0.2 steps=5", "cw-linf eps=0.1"))
    assert list(made) == ["pgd eps=0.1", "pgd eps=0.2", "cw-linf"]
    made = build_components(host.attacks, ("pgd steps=5", "pgd steps=5 eps=8/255"))
    assert list(made) == ["pgd eps=0.3", "pgd eps=8/255"]  # the default is named too, as resolved
    made = build_components(host.attacks, ("pgd", "pgd steps=40"))  # the same settings twice
    assert list(made) == ["pgd #1", "pgd #2"]
    labels = distinct_labels([("localized-pgd", {"mask": "exact"}, {"mask": "exact", "eps": 0.3}),
                              ("localized-pgd", {"mask": "broad"}, {"mask": "broad", "eps": 0.3}),
                              ("pgd", {}, {"eps": 0.3})])
    assert labels == ["localized-pgd mask=exact", "localized-pgd mask=broad", "pgd"]


def test_benchmark_labels_repeated_attacks(net, tensors):
    result = robustkit.benchmark(net, tensors, eps=EPS, attacks=["pgd steps=2", "pgd steps=5"])
    assert list(result.attacks) == ["pgd steps=2", "pgd steps=5"]


def test_import_is_lazy():
    import subprocess
    import sys

    code = "import sys, robustkit; print('robustkit.api' in sys.modules, 'torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.split() == ["False", "False"]
    assert robustkit.benchmark is robustkit.api.benchmark and "attack" in robustkit.__all__


def test_bench_spec_derives_the_same_labels_for_repeated_unlabelled_attacks():
    import copy

    from robustkit.bench.spec import parse_spec

    host = get_host()
    doc = copy.deepcopy(host.benchmarks.create("quick"))
    doc["attacks"] = [{"name": "pgd", "params": {"steps": 5}}, {"name": "pgd", "params": {"steps": 20}},
                      {"name": "deepfool", "label": "df"}]
    spec = parse_spec(doc, "test", host)
    assert [a.label for a in spec.attacks] == ["pgd steps=5", "pgd steps=20", "df"]


def test_benchmark_with_a_state_file_repeats_from_it(net, tensors, tmp_path):
    x, y = tensors
    state = tmp_path / "eval.state"
    first = robustkit.benchmark(net, (x[:40], y[:40]), eps=EPS, attacks={"mine": _pgd(steps=2)}, batch_size=16,
                                state=state)
    assert state.is_file()
    again = robustkit.benchmark(net, (x[:40], y[:40]), eps=EPS, attacks={"mine": _pgd(steps=2)}, batch_size=16,
                                state=state)  # every batch is recorded there: read back, not attacked again
    assert again.robust_accuracy == first.robust_accuracy and again.clean_accuracy == first.clean_accuracy
    with pytest.raises(RobustkitError, match="batch"):  # other settings: refused in one line, naming what differs
        robustkit.benchmark(net, (x[:40], y[:40]), eps=EPS, attacks={"mine": _pgd(steps=2)}, batch_size=8,
                            state=state)
