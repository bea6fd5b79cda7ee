"""FGS, FGV and hot/cold (robustkit_hotcold): directions, the batched line search, PASS filter."""

import math

import pytest
import torch
from torch import nn

from robustkit.errors import ParameterError
from robustkit.host import make_host
from robustkit.models import Classifier, ModelSpec, Normalize
from robustkit_hotcold import FGS, FGV, HotCold, line_search
from robustkit_hotcold.hotcold import hot_classes, hot_cold_weights
from robustkit_hotcold.line_search import STEPS, loss_gradient


def classifier(net: nn.Module) -> Classifier:
    """``net`` behind an identity normalization (mean 0, std 1), in eval mode."""
    return Classifier(nn.Sequential(nn.Flatten(), net), Normalize((0.0,), (1.0,)), ModelSpec("test")).eval()


def linear_two_class(seed: int = 0, symmetric: bool = True):
    """Logits ``W x + b`` on 1 x 8 x 8 images; symmetric means ``W = [w; -w]``, ``b = [c; -c]``."""
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(64, 2)
    with torch.no_grad():
        w = torch.randn(64, generator=g)
        weight = torch.stack([w, -w]) if symmetric else torch.randn(2, 64, generator=g)
        bias = torch.tensor([0.3, -0.3]) if symmetric else torch.randn(2, generator=g)
        lin.weight.copy_(weight)
        lin.bias.copy_(bias)
    return classifier(lin), weight.double(), bias.double()


def images_near_boundary(weight, bias, n=24, seed=0):
    """Grid images (k / 255) at signed distances -60 ... 60 grey levels from the boundary, away from 0 and 255."""
    g = torch.Generator().manual_seed(seed)
    normal = (weight[0] - weight[1]).float()
    unit = (normal / normal.norm()).view(1, 1, 8, 8)
    x0 = torch.randint(100, 156, (n, 1, 8, 8), generator=g).float() / 255
    margin0 = (x0.flatten(1) @ normal + float(bias[0] - bias[1])) / normal.norm()
    target = torch.cat([torch.linspace(-60, -3, n // 2), torch.linspace(3, 60, n - n // 2)]) / 255
    x = x0 + (target - margin0).view(-1, 1, 1, 1) * unit
    return (x * 255).round().clamp(0, 255) / 255


def boundary_distance(x, weight, bias):
    """Exact L2 distance (grey levels) from each image to the two-class linear decision boundary."""
    normal, offset = weight[0] - weight[1], bias[0] - bias[1]
    return (x.flatten(1).double() @ normal + offset).abs() / normal.norm() * 255


def mlp(seed: int = 0, classes: int = 10, hidden: int = 32) -> Classifier:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(64, hidden), nn.Tanh(), nn.Linear(hidden, classes))
    with torch.no_grad():
        net[0].weight.mul_(4.0)
    return classifier(net)


def grid_batch(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, 8, 8), generator=g).float() / 255


# --- the analytic boundary of a linear classifier ---------------------------------------------


@pytest.mark.parametrize("attack", [FGV(), HotCold(rank=1)], ids=["fgv", "hc-d-1"])
def test_line_search_finds_the_linear_boundary(attack):
    model, weight, bias = linear_two_class(symmetric=True)
    x = images_near_boundary(weight, bias)
    y = model(x).argmax(1)
    dist = boundary_distance(x, weight, bias)
    result = attack(model, x, y)
    assert result.extra["success"].all()
    assert (model(result.adversarial).argmax(1) != y).all()
    l2 = (result.adversarial - x).flatten(1).double().norm(dim=1) * 255
    # Never closer than the boundary; beyond it by at most the rounding of 64 pixels (0.5 * sqrt(64)).
    assert (l2 >= dist - 1e-3).all()
    assert (l2 <= dist + 4.0).all(), (l2 - dist).max()
    assert (l2 - dist).median() < 1.5
    # The output is on the integer grid.
    grey = result.adversarial * 255
    assert torch.allclose(grey, grey.round(), atol=1e-3)


def test_fgv_is_the_boundary_normal_of_any_two_class_linear_model():
    model, weight, bias = linear_two_class(seed=3, symmetric=False)
    x = images_near_boundary(weight, bias, seed=1)
    y = model(x).argmax(1)
    d = loss_gradient(model, x, y).flatten(1).double()
    normal = (weight[0] - weight[1]).expand_as(d)
    cos = torch.nn.functional.cosine_similarity(d, normal, dim=1).abs()
    assert (cos > 1 - 1e-6).all()
    # Without quantization the search lands on the boundary itself.
    found = line_search(model, x, y, loss_gradient(model, x, y), quantize=False)
    step_len = found.step * (d / d.abs().amax(dim=1, keepdim=True)).norm(dim=1)
    assert found.found.all()
    assert torch.allclose(step_len, boundary_distance(x, weight, bias), atol=1e-3)


def test_hot_cold_direction_of_a_symmetric_linear_model_is_the_normal():
    model, weight, bias = linear_two_class(symmetric=True)
    x = images_near_boundary(weight, bias)
    y = model(x).argmax(1)
    d, facts = HotCold(rank=1).directions(model, x, y)
    assert torch.equal(facts["hot_class"], 1 - y)
    cos = torch.nn.functional.cosine_similarity(d.flatten(1).double(), (weight[0] - weight[1]).expand(len(x), -1))
    assert (cos.abs() > 1 - 1e-6).all()


# --- hot/cold directions -----------------------------------------------------------------------


def test_hot_cold_moves_toward_the_hot_class():
    # Orthonormal class vectors: h_t - h_y grows along d for every hot class X = 1 ... 9.
    lin = nn.Linear(64, 10, bias=False)
    with torch.no_grad():
        q, _ = torch.linalg.qr(torch.randn(64, 10, generator=torch.Generator().manual_seed(0)))
        lin.weight.copy_(q.T * 4)
    model = classifier(lin)
    x = grid_batch(16)
    h = model(x)
    y = h.argmax(1)
    keep = h.gather(1, y[:, None]).squeeze(1) > 0
    x, y, h = x[keep], y[keep], h[keep]
    assert len(x) >= 8
    d, facts = HotCold(rank=9, all_ranks=True).directions(model, x, y)
    assert d.shape == (len(x), 9, 1, 8, 8)
    for r in range(9):
        t = facts["hot_class"][:, r]
        step = d[:, r] / d[:, r].flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        after = model(x + 1e-3 * step)
        gap_before = h.gather(1, t[:, None]) - h.gather(1, y[:, None])
        gap_after = after.gather(1, t[:, None]) - after.gather(1, y[:, None])
        assert (gap_after > gap_before).all(), r


def test_hot_cold_ascends_its_objective_on_a_nonlinear_model():
    model = mlp()
    x = grid_batch(16)
    h = model(x)
    y = h.argmax(1)
    for rank in (1, 2, 5):
        d, facts = HotCold(rank=rank).directions(model, x, y)
        t = facts["hot_class"]
        others = h.detach().scatter(1, y[:, None], -math.inf)
        assert torch.equal(t, torch.sort(others, 1, descending=True).indices[:, rank - 1])
        w = hot_cold_weights(h, y, t)
        step = d / d.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        with torch.no_grad():
            assert ((model(x + 1e-3 * step) * w).sum(1) > (h * w).sum(1)).all()


def test_hot_cold_weights_follow_equation_7():
    h = torch.tensor([[2.0, -3.0, 0.5, 1.0], [-1.0, -2.0, 4.0, -0.5]])
    y = torch.tensor([0, 2])
    hot = hot_classes(h, y, 3)
    assert hot.tolist() == [[3, 2, 1], [3, 0, 1]]
    w = hot_cold_weights(h, y, hot)
    assert w[0, 0].tolist() == [-2.0, 0.0, 0.0, 1.0]   # hot 3: |1.0|; cold 0: -2.0
    assert w[0, 2].tolist() == [-2.0, 3.0, 0.0, 0.0]   # hot 1: |-3.0|
    assert w[1, 0].tolist() == [0.0, 0.0, -4.0, 0.5]   # hot 3: |-0.5|; cold 2: -4.0


def test_hc_s_is_the_sign_of_hc_d():
    model = mlp(seed=1)
    x = grid_batch(8, seed=1)
    y = model(x).argmax(1)
    for kw in ({"rank": 1}, {"rank": 3}, {"rank": 4, "all_ranks": True}):
        d, _ = HotCold(mode="D", **kw).directions(model, x, y)
        s, _ = HotCold(mode="S", **kw).directions(model, x, y)
        assert torch.equal(s, d.sign())
    g = loss_gradient(model, x, y)
    assert torch.equal(FGS().directions(model, x, y)[0], g.sign())
    assert torch.equal(FGV().directions(model, x, y)[0], g)


# --- the batched search equals a per-image reference -------------------------------------------


def reference_search(model, image, label, direction, tol=1e-6):
    """The search written for one image with Python floats (queries the model at every step)."""
    x = image.double() * 255
    d = direction.double()
    d = d / d.abs().max()

    def wrong(s):
        v = (x + s * d).round().clamp(0, 255)
        with torch.no_grad():
            return int(model((v / 255).float()[None]).argmax(1)) != int(label)

    if wrong(0.0):
        return 0.0
    lo, hi = 0.0, None
    for s in STEPS:
        if wrong(s):
            hi = s
            break
        lo = s
    if hi is None:
        return math.nan
    while hi - lo > tol:
        mid = (lo + hi) / 2
        if wrong(mid):
            hi = mid
        else:
            lo = mid
    return hi


@pytest.mark.parametrize("which", ["fgv", "fgs", "hc-d-2"])
def test_batched_search_equals_the_per_image_reference(which):
    model = mlp(seed=2)
    x = grid_batch(6, seed=2)
    y = model(x).argmax(1)
    attack = {"fgv": FGV(), "fgs": FGS(), "hc-d-2": HotCold(rank=2)}[which]
    d, _ = attack.directions(model, x, y)
    got = line_search(model, x, y, d)
    want = torch.tensor([reference_search(model, x[i], y[i], d[i]) for i in range(len(x))], dtype=torch.float64)
    assert torch.equal(got.found, ~want.isnan())
    assert torch.allclose(got.step, want, atol=1e-9, equal_nan=True)
    for i in range(len(x)):
        if got.found[i]:
            q = ((x[i].double() * 255 + want[i] * d[i].double() / d[i].double().abs().max()).round().clamp(0, 255))
            assert torch.equal(got.adversarial[i], (q / 255).float())
    # Only new quantized images are sent to the model: far fewer calls than one per bisection step.
    assert got.found.all() and (got.queries <= 1 + len(STEPS) + 30).all()


def test_all_ranks_equal_separate_runs():
    model = mlp(seed=3)
    x = grid_batch(6, seed=3)
    y = model(x).argmax(1)
    together = HotCold(rank=3, all_ranks=True, report_pass=False)(model, x, y)
    assert together.extra["s"].shape == (6, 3) and together.extra["adversarials"].shape == (6, 3, 1, 8, 8)
    for r in range(3):
        alone = HotCold(rank=r + 1, report_pass=False)(model, x, y)
        assert torch.allclose(together.extra["s"][:, r], alone.extra["s"], atol=1e-6, equal_nan=True)
        assert torch.equal(together.extra["success"][:, r], alone.extra["success"])
        assert torch.equal(together.extra["hot_class"][:, r], alone.extra["hot_class"])
        assert torch.equal(together.extra["adversarials"][:, r], alone.adversarial)
    # The returned image is each image's closest successful rank.
    dist = (together.extra["adversarials"] - x[:, None]).flatten(2).norm(dim=2)
    dist[~together.extra["success"]] = math.inf
    best = together.extra["best"]
    for i in range(6):
        if best[i] == 0:
            assert torch.equal(together.adversarial[i], x[i])
        else:
            assert best[i] - 1 == dist[i].argmin()
            assert torch.equal(together.adversarial[i], together.extra["adversarials"][i, best[i] - 1])


# --- hard positives, PASS filter, failures -----------------------------------------------------


def test_scale_gives_hard_positives_beyond_the_minimal_step():
    model, weight, bias = linear_two_class()
    x = images_near_boundary(weight, bias)
    y = model(x).argmax(1)
    base = FGV()(model, x, y)
    hard = FGV(scale=1.5)(model, x, y)
    assert torch.allclose(base.extra["s"], hard.extra["s"])
    d = loss_gradient(model, x, y).double()
    d = d / d.flatten(1).abs().amax(1).view(-1, 1, 1, 1)
    want = (x.double() * 255 + 1.5 * hard.extra["s"].view(-1, 1, 1, 1) * d).round().clamp(0, 255) / 255
    assert torch.equal(hard.adversarial, want.float())
    assert hard.extra["success"].all()
    further = (hard.adversarial - x).flatten(1).norm(dim=1) > (base.adversarial - x).flatten(1).norm(dim=1)
    assert further.all()


def test_pass_threshold_keeps_only_similar_adversarials():
    model = mlp(seed=4)
    x = grid_batch(8, seed=4)
    y = model(x).argmax(1)
    free = HotCold()(model, x, y)
    assert free.extra["found"].any()
    assert torch.equal(free.extra["success"], free.extra["found"])
    assert ((free.extra["pass"] <= 1) | free.extra["pass"].isnan()).all()
    strict = HotCold(pass_threshold=1.0)(model, x, y)
    assert not strict.extra["success"].any()
    assert torch.equal(strict.adversarial, x)  # nothing counts: the clean images come back
    assert torch.equal(strict.extra["found"], free.extra["found"])
    tau = float(free.extra["pass"][free.extra["found"]].median())
    mid = HotCold(pass_threshold=tau)(model, x, y)
    assert torch.equal(mid.extra["success"], free.extra["found"] & (free.extra["pass"] >= tau))
    kept = mid.extra["success"]
    assert torch.equal(mid.adversarial[kept], free.adversarial[kept])
    assert torch.equal(mid.adversarial[~kept], x[~kept])
    assert free.queries.shape == (8,) and (free.queries >= 3).all()


def test_a_flat_model_yields_no_adversarial():
    lin = nn.Linear(64, 3)
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.copy_(torch.tensor([1.0, 0.0, -1.0]))
    model = classifier(lin)
    x = grid_batch(4)
    y = torch.zeros(4, dtype=torch.long)
    for attack in (FGS(), FGV(), HotCold(rank=2), HotCold(rank=2, all_ranks=True)):
        result = attack(model, x, y)
        assert not result.extra["found"].any() and not result.extra["success"].any()
        assert result.extra["s"].isnan().all() and result.extra["pass"].isnan().all()
        assert torch.equal(result.adversarial, x)


# --- through the registry ----------------------------------------------------------------------


def test_registered_with_validated_params():
    host = make_host()
    for name in ("fgs", "fgv", "hotcold"):
        entry = host.attacks.get(name)
        assert entry.plugin == "hotcold"
        assert entry.info["threat_models"] == ("unbounded",) and entry.info["goal"] == "minimal-distortion"
    attack = host.attacks.create("hotcold", {"mode": "S", "rank": "3", "scale": "1.05", "pass_threshold": "none"})
    assert attack.config == {"mode": "S", "rank": 3, "all_ranks": False, "scale": 1.05,
                             "pass_threshold": None, "report_pass": True}
    assert host.attacks.create("fgv", {"pass_threshold": "0.99"}).config["pass_threshold"] == 0.99
    for name, bad in [("hotcold", {"mode": "X"}), ("hotcold", {"rank": 0}), ("fgs", {"scale": 0.5}),
                      ("fgv", {"pass_threshold": 1.5}), ("fgv", {"eps": 0.1}), ("hotcold", {"rank": "two"})]:
        with pytest.raises(ParameterError):
            host.attacks.create(name, bad)


def test_rank_must_fit_the_number_of_classes():
    model = mlp(classes=4)
    x = grid_batch(3)
    y = model(x).argmax(1)
    with pytest.raises(ParameterError, match="rank 4"):
        HotCold(rank=4)(model, x, y)
    capped = HotCold(rank=50, all_ranks=True, report_pass=False)(model, x, y)
    assert capped.extra["s"].shape == (3, 3)
