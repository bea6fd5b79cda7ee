"""FGSM-AT, FGM-AT, TRADES and RLFAT: parameters, losses, the RBS transform, their effect, and the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn
from torch.utils.data import TensorDataset

from robustkit.adversarial import pgd
from robustkit.cli import cli
from robustkit.data import DatasetInfo, ImageDataset
from robustkit.errors import ParameterError
from robustkit.host import make_host
from robustkit.adversarial import kl_batchmean, trades_examples
from robustkit.essentials.defenses import FGMAT, FGSMAT, TRADES, Natural
from robustkit_rlfat.defense import RLFAT, RandomBlockShuffle, random_block_shuffle
from robustkit.threat import ThreatModel
from robustkit.training import TrainConfig, train
from robustkit.testing import linear_model, small_mlp, random_batch


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- tiny models and data --------------------------------------------------------------------------

def numbered(n: int = 4, channels: int = 2, height: int = 8, width: int = 8) -> torch.Tensor:
    """Images whose every value is distinct, so where each output pixel came from can be read off."""
    return torch.arange(n * channels * height * width, dtype=torch.float32).view(n, channels, height, width)


# --- registration and parameters -------------------------------------------------------------------


def test_entry_points_register_the_new_defenses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROBUSTKIT_LOAD_PLUGINS", "baseline-defenses,rlfat")
    host = make_host()
    assert not host.failures
    assert {"natural", "pgd-at", "fgsm-at", "fgm-at", "trades", "rlfat"} <= set(host.defenses.names())
    assert host.defenses.get("rlfat").plugin == "rlfat"
    assert host.defenses.get("trades").plugin == "baseline-defenses"
    assert host.defenses.get("trades").description.startswith("TRADES")
    knobs = {name: host.defenses.create(name).knob for name in ("fgsm-at", "fgm-at", "trades", "rlfat")}
    assert knobs == {"fgsm-at": "eps", "fgm-at": "eps", "trades": "beta", "rlfat": "eps"}
    rlfat = host.defenses.create("rlfat", {"variant": "T", "eps": "8/255", "steps": "7"})
    assert rlfat.config["eps"] == pytest.approx(8 / 255) and rlfat.config["steps"] == 7
    for name in ("fgsm-at", "fgm-at", "trades", "rlfat"):
        reference = type(host.defenses.create(name)).reference
        assert reference["title"] and reference["venue"]


def test_costs_follow_the_parameters() -> None:
    assert FGSMAT().cost() == 2.0
    assert FGSMAT(rand_init=True).cost() == 3.0  # the random start needs its own gradient pass
    assert FGSMAT(rand_init=True, alpha=0).cost() == 2.0
    assert FGSMAT(alpha=1).cost() == 1.0
    assert FGMAT().cost() == 2.0
    assert TRADES(steps=7).cost() == 9.0
    assert RLFAT(steps=7).cost() == 9.0  # RBS(x') and x'
    assert RLFAT(variant="T", steps=7).cost() == 10.0  # x, RBS(x') and x'


def test_rlfat_defaults_depend_on_the_variant() -> None:
    assert RLFAT().config["eta"] == 0.5 and RLFAT().config["beta"] is None
    t = RLFAT(variant="T")
    assert t.config["eta"] == 1.0 and t.config["beta"] == 6.0
    assert RLFAT(variant="T", eta=0.25, beta=2).config["eta"] == 0.25
    assert RLFAT(eps=0.03).step_size == pytest.approx(0.0075)  # the paper's step at its eps and 10 steps
    assert RLFAT(variant="T").describe()["params"]["eta"] == 1.0  # checkpoints record the resolved value


@pytest.mark.parametrize("factory, given, fragment", [
    (FGSMAT, {"eps": 0}, "must be > 0"),
    (FGSMAT, {"eps": 1.5}, "exceeds the data range"),
    (FGSMAT, {"alpha": 1.5}, "must be <= 1"),
    (FGSMAT, {"alpha": -0.1}, "must be >= 0"),
    (FGMAT, {"eps": -1}, "must be > 0"),
    (FGMAT, {"rand_init": True}, "unknown parameter 'rand_init'"),
    (FGMAT, {"norm": "linf"}, "must be one of l2, l1"),
    (TRADES, {"beta": -1}, "must be >= 0"),
    (TRADES, {"norm": "l1"}, "must be one of linf, l2"),
    (TRADES, {"lambda": 6}, "unknown parameter 'lambda'"),
    (RLFAT, {"variant": "X"}, "must be one of P, T"),
    (RLFAT, {"eta": -1}, "must be >= 0"),
    (RLFAT, {"k": 0}, "must be >= 1"),
    (RLFAT, {"eps": 2}, "exceeds the data range"),
    (RLFAT, {"beta": 3}, "applies to variant T only"),
])
def test_bad_params_are_rejected_by_name(factory, given: dict, fragment: str) -> None:
    with pytest.raises(ParameterError, match=fragment) as info:
        factory(**given)
    assert str(info.value).startswith(factory.name)


# --- Random Block Shuffle --------------------------------------------------------------------------


def source_maps(images: torch.Tensor, shuffled: torch.Tensor) -> list[tuple[list[int], list[int]]]:
    """For each image: the source row of every output row, and the source column of every output column.

    Asserts on the way that every output pixel comes from the same image and channel, that the source row
    depends only on the output row and the source column only on the output column.
    """
    n, c, h, w = images.shape
    out = []
    for i in range(n):
        flat = images[i].flatten().tolist()
        where = {value: index for index, value in enumerate(flat)}
        src = torch.tensor([where[v] for v in shuffled[i].flatten().tolist()]).view(c, h, w)
        channel, row, col = src // (h * w), (src // w) % h, src % w
        assert torch.equal(channel, torch.arange(c).view(c, 1, 1).expand(c, h, w))
        assert torch.equal(row, row[:1, :, :1].expand(c, h, w)), "a row's pixels came from different rows"
        assert torch.equal(col, col[:1, :1, :].expand(c, h, w)), "a column's pixels came from different columns"
        out.append((row[0, :, 0].tolist(), col[0, 0, :].tolist()))
    return out


def runs(order: list[int]) -> int:
    """How many contiguous increasing blocks ``order`` is made of."""
    return 1 + sum(1 for a, b in zip(order, order[1:]) if b != a + 1)


@pytest.mark.parametrize("k", [2, 3, 5])
@pytest.mark.parametrize("per_image", [False, True])
def test_rbs_permutes_contiguous_row_and_column_blocks(k: int, per_image: bool) -> None:
    images = numbered(n=6, channels=2, height=8, width=7)
    generator = torch.Generator().manual_seed(k)
    for _ in range(20):
        shuffled = random_block_shuffle(images, k, generator=generator, per_image=per_image)
        assert shuffled.shape == images.shape
        for i in range(images.shape[0]):  # the same multiset of values, image by image
            assert torch.equal(shuffled[i].flatten().sort().values, images[i].flatten().sort().values)
        for rows, cols in source_maps(images, shuffled):
            assert sorted(rows) == list(range(8)) and sorted(cols) == list(range(7))
            assert runs(rows) <= k and runs(cols) <= k


def test_rbs_with_one_block_is_the_identity() -> None:
    images = numbered()
    assert torch.equal(random_block_shuffle(images, 1), images)
    assert torch.equal(random_block_shuffle(images, 1, per_image=True), images)


def test_rbs_draws_once_per_batch_by_default_and_per_image_on_request() -> None:
    images = numbered(n=16, channels=1)
    generator = torch.Generator().manual_seed(0)
    shared = source_maps(images, random_block_shuffle(images, 3, generator=generator))
    assert all(m == shared[0] for m in shared)
    own = source_maps(images, random_block_shuffle(images, 3, generator=generator, per_image=True))
    assert len({(tuple(r), tuple(c)) for r, c in own}) > 4


def test_rbs_is_reproducible_with_a_seeded_generator() -> None:
    images = numbered(n=8)
    first = random_block_shuffle(images, 3, generator=torch.Generator().manual_seed(7), per_image=True)
    again = random_block_shuffle(images, 3, generator=torch.Generator().manual_seed(7), per_image=True)
    assert torch.equal(first, again)
    others = [random_block_shuffle(images, 3, generator=torch.Generator().manual_seed(s), per_image=True)
              for s in range(8, 12)]
    assert any(not torch.equal(first, other) for other in others)
    torch.manual_seed(3)  # without a generator, torch's global one (which training seeds) decides
    a = random_block_shuffle(images, 2)
    torch.manual_seed(3)
    assert torch.equal(a, random_block_shuffle(images, 2))


def test_rbs_cut_points_cover_every_row_and_blocks_may_be_empty() -> None:
    """k = 2: the first output row is row 0 (no swap, or an empty first block) or the cut row c."""
    images = numbered(n=1, channels=1)
    generator = torch.Generator().manual_seed(0)
    first_rows, identities = set(), 0
    for _ in range(400):
        (rows, cols), = source_maps(images, random_block_shuffle(images, 2, generator=generator))
        first_rows.add(rows[0])
        identities += rows == list(range(8))
    assert first_rows == set(range(8))
    # P(rows unchanged) = P(cut 0) + P(cut > 0) / 2 = 1/8 + 7/16 = 9/16.
    assert abs(identities / 400 - 9 / 16) < 0.1


def test_rbs_transform_class_gradients_and_shapes() -> None:
    images = torch.rand(3, 1, 8, 8, requires_grad=True)
    shuffle = RandomBlockShuffle(k=2, per_image=True, generator=torch.Generator().manual_seed(1))
    out = shuffle(images)
    out.sum().backward()
    assert torch.equal(images.grad, torch.ones_like(images))  # a permutation passes gradients one to one
    assert random_block_shuffle(torch.rand(2, 8, 8), 2).shape == (2, 8, 8)  # N x H x W works too
    with pytest.raises(ValueError, match="k must be"):
        RandomBlockShuffle(k=0)
    with pytest.raises(ValueError, match="expected a batch"):
        random_block_shuffle(torch.rand(8, 8), 2)


# --- losses and inner attacks --------------------------------------------------------------------


def test_fgsm_at_loss_is_the_mixed_formula_and_its_gradient_too() -> None:
    model = small_mlp(classes=3)
    x, y = random_batch(classes=3)
    eps, alpha = 0.1, 0.3
    out = FGSMAT(eps=eps, alpha=alpha).batch_loss(model, x, y)

    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(xg), y), xg)
    adv = (x + eps * grad.sign()).clamp(0, 1)
    expected = alpha * F.cross_entropy(model(x), y) + (1 - alpha) * F.cross_entropy(model(adv), y)
    assert torch.allclose(out.loss, expected, atol=1e-6)

    params = list(model.parameters())
    got = torch.autograd.grad(out.loss, params)
    want = torch.autograd.grad(expected, params)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got, want))
    assert out.metrics is not None and "clean_acc" in out.metrics


def test_fgsm_at_adversarial_only_and_random_start_stay_in_the_ball() -> None:
    model = small_mlp(classes=3)
    x, y = random_batch(32, classes=3)
    out = FGSMAT(eps=0.1, alpha=0).batch_loss(model, x, y)
    adv = FGSMAT(eps=0.1).adversarial_examples(model, x, y)
    assert torch.allclose(out.loss, F.cross_entropy(model(adv), y), atol=1e-6)
    torch.manual_seed(0)
    fast = FGSMAT(eps=0.1, rand_init=True)
    assert fast.step_size == pytest.approx(0.125)  # Wong et al.'s 1.25 * eps
    adv = fast.adversarial_examples(model, x, y)
    assert float((adv - x).abs().max()) <= 0.1 + 1e-6
    assert float(adv.min()) >= 0 and float(adv.max()) <= 1


def test_fgm_at_step_has_l2_norm_eps_along_the_gradient() -> None:
    model = small_mlp(classes=3)
    g = torch.Generator().manual_seed(0)
    x = 0.5 + 0.05 * torch.randn(8, 1, 8, 8, generator=g)  # interior: a 0.3 step cannot reach 0 or 1
    y = torch.randint(0, 3, (8,), generator=g)
    eps = 0.3
    adv = FGMAT(eps=eps).adversarial_examples(model, x, y)
    delta = (adv - x).flatten(1)
    assert torch.allclose(delta.norm(dim=1), torch.full((8,), eps), atol=1e-5)
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(xg), y, reduction="sum"), xg)
    assert torch.allclose(F.cosine_similarity(delta, grad.flatten(1)), torch.ones(8), atol=1e-5)
    out = FGMAT(eps=eps).batch_loss(model, x, y)  # default: adversarial examples only
    assert torch.allclose(out.loss, F.cross_entropy(model(adv), y), atol=1e-6)
    l1 = (FGMAT(norm="l1", eps=eps).adversarial_examples(model, x, y) - x).flatten(1)
    assert torch.equal((l1 != 0).sum(1), torch.ones(8, dtype=torch.long))  # the whole step on one pixel...
    assert torch.equal(l1.abs().argmax(1), grad.flatten(1).abs().argmax(1))  # ...the one of largest |gradient|
    assert torch.allclose(l1.abs().sum(1), torch.full((8,), eps), atol=1e-6)


@pytest.mark.parametrize("norm, eps", [("linf", 0.1), ("l2", 0.5)])
def test_trades_inner_attack_stays_in_the_ball_and_raises_the_kl(norm: str, eps: float) -> None:
    model = small_mlp(classes=3)
    x, _ = random_batch(32, classes=3)  # uniform images: many pixels near 0 and 1
    torch.manual_seed(0)
    adv = trades_examples(model, x, ThreatModel(norm, eps), steps=5, step_size=eps / 4)
    delta = (adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert float(size.max()) <= eps + 1e-5
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    assert not adv.requires_grad
    with torch.no_grad():
        assert kl_batchmean(model(x), model(adv)) > 10 * kl_batchmean(model(x), model(x + 0.001 * torch.randn_like(x)))


def test_trades_loss_is_ce_plus_beta_kl_batchmean() -> None:
    model = small_mlp(classes=3)
    x, y = random_batch(classes=3)
    defense = TRADES(eps=0.1, steps=3, beta=4.0)
    torch.manual_seed(5)
    out = defense.batch_loss(model, x, y)
    torch.manual_seed(5)
    adv = defense.adversarial_examples(model, x)
    p, log_p, log_q = F.softmax(model(x), 1), F.log_softmax(model(x), 1), F.log_softmax(model(adv), 1)
    kl = (p * (log_p - log_q)).sum(1).mean()  # summed over classes, averaged over the batch
    assert torch.allclose(out.loss, F.cross_entropy(model(x), y) + 4.0 * kl, atol=1e-6)
    assert out.metrics is not None and set(out.metrics) == {"adv_acc", "kl"}


@pytest.mark.parametrize("variant", ["P", "T"])
def test_rlfat_loss_is_the_specified_formula_with_gradients_through_both_branches(variant: str) -> None:
    model = small_mlp(classes=3)
    x, y = random_batch(classes=3)
    defense = RLFAT(variant=variant, eps=0.1, steps=3, k=3)
    torch.manual_seed(11)
    out = defense.batch_loss(model, x, y)
    torch.manual_seed(11)  # the same draws: the attack's start, then the RBS cut points and order
    adv = defense.adversarial_examples(model, x, y)
    shuffled = random_block_shuffle(adv, 3)
    z_rbs, z_adv = model(shuffled), model(adv)
    transfer = ((z_rbs - z_adv) ** 2).sum(1).mean()
    if variant == "P":
        expected = F.cross_entropy(z_rbs, y) + 0.5 * transfer
    else:
        z = model(x)
        p, log_q = F.log_softmax(z, 1), F.log_softmax(z_rbs, 1)
        expected = F.cross_entropy(z, y) + 6.0 * (p.exp() * (p - log_q)).sum(1).mean() + 1.0 * transfer
    assert float(transfer.detach()) > 0  # the shuffle changed the logits
    assert torch.allclose(out.loss, expected, atol=1e-6)
    params = list(model.parameters())
    got = torch.autograd.grad(out.loss, params)
    want = torch.autograd.grad(expected, params)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got, want))


# --- effect: every adversarial defense beats natural training under attack -------------------------

CHANNELS = 8
TOY = DatasetInfo("toy-local", num_classes=2, channels=CHANNELS, image_size=(8, 8), mean=(0.5,) * CHANNELS,
                  std=(0.25,) * CHANNELS)
PATTERN = torch.randint(0, 2, (CHANNELS - 1, 8, 8), generator=torch.Generator().manual_seed(123)).float() * 2 - 1


def local_vs_global(n: int, seed: int) -> TensorDataset:
    """A robust local feature and a fragile global one.

    Channel 0 is a flat +-0.4 shift (every pixel says the label: a local feature, unchanged by block
    shuffles); channels 1..7 carry the label as a fixed +-1 pattern of amplitude 0.02 (a global
    structure that block shuffles destroy). Natural training spreads its weight over all 512 pixels,
    so a linf attack of 0.1 (or an l2 attack of 2) flips it; a robust model must rest on channel 0.
    """
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    sign = (2 * y - 1).float().view(n, 1, 1, 1)
    x = torch.empty(n, CHANNELS, 8, 8)
    x[:, :1] = 0.5 + 0.4 * sign + 0.05 * torch.randn(n, 1, 8, 8, generator=g)
    x[:, 1:] = 0.5 + 0.02 * sign * PATTERN + 0.005 * torch.randn(n, CHANNELS - 1, 8, 8, generator=g)
    return TensorDataset(x.clamp(0, 1), y)


def margin_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Best other logit minus the true one: unlike cross-entropy it never saturates, so PGD keeps going."""
    true = logits.gather(1, labels[:, None])[:, 0]
    other = logits.scatter(1, labels[:, None], float("-inf")).amax(1)
    return (other - true).sum()


def robust_accuracy(model: nn.Module, data: TensorDataset, threat: ThreatModel) -> float:
    x, y = data.tensors
    model.eval()
    adv = pgd(model, x, y, threat, steps=20, step_size=threat.eps / 8, rand_init=False, loss_fn=margin_loss)
    with torch.no_grad():
        return float(((model(x).argmax(1) == y) & (model(adv).argmax(1) == y)).float().mean())


TRAIN_EPS = 0.15  # linf defenses train here and are attacked at 0.1; natural's linf radius is about 0.07
L2_EPS = 2.0  # fgm-at trains and is attacked here; natural's l2 radius is about 1.5
EFFECT_CASES = {
    "fgsm-at": (lambda: FGSMAT(eps=TRAIN_EPS), "linf"),
    "fgsm-at fast": (lambda: FGSMAT(eps=TRAIN_EPS, alpha=0, rand_init=True), "linf"),
    "fgm-at": (lambda: FGMAT(eps=L2_EPS), "l2"),
    "trades": (lambda: TRADES(eps=TRAIN_EPS, steps=5), "linf"),
    "rlfat P": (lambda: RLFAT(eps=TRAIN_EPS, steps=5), "linf"),
    "rlfat T": (lambda: RLFAT(variant="T", eps=TRAIN_EPS, steps=5), "linf"),
}
THREATS = {"linf": ThreatModel("linf", 0.1), "l2": ThreatModel("l2", L2_EPS)}


@pytest.fixture(scope="module")
def effect_setup():
    data = ImageDataset(TOY, local_vs_global(256, seed=0), local_vs_global(256, seed=1))
    config = TrainConfig(epochs=5, batch_size=32, lr=0.01, seed=0, device="cpu", val_examples=0)
    natural = train(linear_model(info=TOY), data, Natural(), config).model
    baseline = {kind: robust_accuracy(natural, data.test, threat) for kind, threat in THREATS.items()}
    return data, config, baseline


@pytest.mark.parametrize("case", list(EFFECT_CASES))
def test_adversarial_defense_beats_natural_under_attack(case: str, effect_setup) -> None:
    data, config, baseline = effect_setup
    make, kind = EFFECT_CASES[case]
    result = train(linear_model(info=TOY), data, make(), config)
    assert all(math.isfinite(row["train_loss"]) for row in result.history)
    x, y = data.test.tensors
    with torch.no_grad():
        assert float((result.model(x).argmax(1) == y).float().mean()) > 0.95
    robust = robust_accuracy(result.model, data.test, THREATS[kind])
    assert baseline[kind] < 0.2, "natural training should be fragile on this problem"
    assert robust > baseline[kind] + 0.6, f"{case}: {robust} vs natural {baseline[kind]}"


# --- registry and command line ---------------------------------------------------------------------


def test_cli_trains_rlfat_t_and_records_it(tmp_path) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, [
        "train", "--model", "lenet", "--model-param", "width=0.25", "--defense", "rlfat", "--param", "variant=T",
        "--param", "eps=0.1", "--param", "steps=2", "--epochs", "1", "--batch-size", "256", "--val-examples", "20",
        "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "last.json").read_text())
    assert meta["defense"]["name"] == "rlfat" and meta["defense"]["knob"] == "eps"
    params = meta["defense"]["params"]
    assert params["variant"] == "T" and params["eps"] == 0.1 and params["eta"] == 1.0 and params["beta"] == 6.0
    assert meta["defense_cost"] == 5.0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["val_pgd_acc"] is not None  # --val-eps followed the defense's eps
    assert {"adv_acc", "transfer", "rbs_acc"} <= set(rows[0])


def test_cli_trains_an_l2_defense_with_eps_above_one(tmp_path) -> None:
    """An l2 budget may exceed 1; the per-epoch linf check must not inherit it."""
    out = tmp_path / "fgm"
    result = CliRunner().invoke(cli, [
        "train", "--model", "lenet", "--model-param", "width=0.25", "--defense", "fgm-at", "--param", "eps=2",
        "--epochs", "1", "--batch-size", "256", "--val-examples", "20", "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert row["val_clean_acc"] is not None and row["val_pgd_acc"] is None


@pytest.mark.parametrize("param, message", [
    ("variant=X", "must be one of P, T"),
    ("eta=-1", "'eta' must be >= 0"),
    ("beta=3", "applies to variant T only"),
])
def test_cli_rejects_bad_rlfat_params_before_training(tmp_path, param: str, message: str) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["train", "--model", "lenet", "--defense", "rlfat", "--param", param,
                                      "--epochs", "1", "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not out.exists()
