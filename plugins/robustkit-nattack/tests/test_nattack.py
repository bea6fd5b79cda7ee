"""NATTACK: success on an undefended model, no better than white-box PGD, query accounting,
skipping, the samples the model sees, the legacy other-class term, the saturation margin, and batched ==
per-image."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustkit.adversarial import pgd
from robustkit.data import stack
from robustkit.errors import ParameterError
from robustkit.host import make_host
from robustkit_nattack import nattack
from robustkit_nattack.nattack import NAttack, max_queries
from robustkit.threat import ThreatModel


@pytest.fixture(scope="module")
def host():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ROBUSTKIT_LOAD_PLUGINS", "nattack,datasets")
        return make_host()


@pytest.fixture(scope="module")
def digits(host):
    data = host.datasets.create("digits", {}, root=None)
    return stack(data.train), stack(data.test)


@pytest.fixture(scope="module")
def mlp(digits):
    """A small undefended MLP on the 8x8 digits (full-batch Adam, about a second)."""
    (x, y), _ = digits
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(200):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def test_registered(host):
    entry = host.attacks.get("nattack")
    assert entry.info["knowledge"] == "score-based" and entry.info["threat_models"] == ("linf",)
    attack = host.attacks.create("nattack", {"eps": "8/255", "population": "50", "legacy_other_class": "true"})
    assert attack.config["legacy_other_class"] is True and attack.config["iterations"] == 200
    assert attack.margin() == pytest.approx(8 / 255)  # delta defaults to min(eps, 0.5)
    with pytest.raises(ParameterError, match="delta"):
        host.attacks.create("nattack", {"delta": "0.7"})


def test_model_is_decent(mlp, digits):
    _, (x, y) = digits
    assert accuracy(mlp, x, y) > 0.9


def test_large_eps_drives_accuracy_near_zero(mlp, digits):
    _, (x, y) = digits
    x, y = x[:30], y[:30]
    # Fewer iterations and a smaller population than the defaults, to keep the test fast.
    result = NAttack(eps=0.3, iterations=60, population=100)(mlp, x, y)
    assert accuracy(mlp, result.adversarial, y) <= 0.05
    assert (result.adversarial - x).abs().max() <= 0.3 + 1e-6
    fooled = result.extra["success"]
    with torch.no_grad():
        assert (mlp(result.adversarial[fooled]).argmax(1) != y[fooled]).all()


def test_small_eps_does_not_beat_white_box_pgd(mlp, digits):
    _, (x, y) = digits
    x, y = x[:30], y[:30]
    eps = 0.06
    result = NAttack(eps=eps, iterations=50, population=80)(mlp, x, y)
    adv_pgd = pgd(mlp, x, y, ThreatModel("linf", eps), steps=40, step_size=eps / 8,
                  generator=torch.Generator().manual_seed(0))
    nattack_acc, pgd_acc = accuracy(mlp, result.adversarial, y), accuracy(mlp, adv_pgd, y)
    assert nattack_acc >= pgd_acc - 0.07  # at most two images of noise
    assert nattack_acc < accuracy(mlp, x, y)  # and it does find some


def test_query_accounting_and_skipping(mlp, digits):
    _, (x, y) = digits
    x, y = x[:12].clone(), y[:12].clone()
    y[:3] = (y[:3] + 1) % 10  # wrong labels: "misclassified", so skipped at no cost
    T, b, every = 25, 20, 10
    result = NAttack(eps=0.08, iterations=T, population=b, check_every=every)(mlp, x, y)
    q, success = result.queries, result.extra["success"]
    skipped, at = result.extra["skipped"], result.extra["iterations"]
    with torch.no_grad():
        assert torch.equal(skipped, mlp(x).argmax(1) != y)
    assert skipped[:3].all() and (q[skipped] == 0).all() and not success[skipped].any()
    assert torch.equal(result.adversarial[skipped], x[skipped])
    assert (q <= T * b + math.ceil(T / every)).all() and max_queries(T, b, every) == T * b + 3
    for i in range(len(x)):
        if success[i]:  # fooled at check t: t updates of b samples and t // every + 1 checks
            t = int(at[i])
            assert t % every == 0 and int(q[i]) == t * b + t // every + 1
        elif not skipped[i]:
            assert int(q[i]) == max_queries(T, b, every) and int(at[i]) == -1
            assert torch.equal(result.adversarial[i], x[i])  # not fooled: returned unchanged
    assert success.any() and (~success & ~skipped).any()  # both outcomes exercised


def test_objective_per_sample_and_legacy():
    logits = torch.log(torch.tensor([[[0.6, 0.3, 0.1], [0.5, 0.1, 0.4], [0.2, 0.7, 0.1]]]))
    y = torch.tensor([0])
    per_sample = NAttack().objective(logits, y)
    expected = (torch.log(torch.tensor([0.6, 0.5, 0.2])) - torch.log(torch.tensor([0.3, 0.4, 0.7]))).clamp_min(0)
    assert torch.allclose(per_sample, expected, atol=1e-6)
    # The reference's NumPy `.max(1)[0]`: the first member's other-class max, for every member.
    legacy = NAttack(legacy_other_class=True).objective(logits, y)
    expected = (torch.log(torch.tensor([0.6, 0.5, 0.2])) - math.log(0.3)).clamp_min(0)
    assert torch.allclose(legacy, expected, atol=1e-6)


@pytest.mark.parametrize("scale", [0.1, 3.0, 30.0, 300.0])
def test_objective_matches_the_reference_formula_at_every_logit_scale(scale):
    """The reference's log(p_y + 1e-30) - log(max_other p + 1e-30) in float64, where large gaps hit the floor
    (f saturates at log 1e30 = 69.08); robustkit computes it from the logit gap alone."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 200, 10, generator=gen) * scale
    y = torch.randint(0, 10, (4,), generator=gen)
    logits[torch.arange(4), :, y] += scale  # y is often the top class, by margins up to several times scale
    p = torch.softmax(logits.double(), dim=-1)
    p_y = p.gather(2, y.view(4, 1, 1).expand(4, 200, 1)).squeeze(2)
    p_other = p.scatter(2, y.view(4, 1, 1).expand(4, 200, 1), 0.0).amax(2)
    expected = (torch.log(p_y + 1e-30) - torch.log(p_other + 1e-30)).clamp_min(0).float()
    torch.testing.assert_close(NAttack().objective(logits, y), expected, atol=2e-6, rtol=1e-5)


class _Recorder(nn.Module):
    """The model, keeping a copy of every batch it is queried with."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.inputs = model, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.detach().clone())
        return self.model(x)


@pytest.mark.parametrize("delta", [0.0, None])
def test_samples_are_the_clipped_tanh_of_the_search_distribution(mlp, digits, delta):
    """The first iteration's population, as the model sees it, is clip((tanh(w0 + mu + sigma e) + 1) / 2,
    x - eps, x + eps) in [0, 1], computed here in float64 from the same noise stream (saturated digit pixels,
    where w0 is about -7.25 with delta = 0, included)."""
    _, (x, y) = digits
    x, y = x[:4], y[:4]
    with torch.no_grad():
        x, y = x[mlp(x).argmax(1) == y], y[mlp(x).argmax(1) == y]
    eps, b, sigma, seed = 0.05, 16, 0.1, 7
    attack = NAttack(eps=eps, iterations=1, population=b, sigma=sigma, seed=seed, delta=delta)
    recorder = _Recorder(mlp)
    attack(recorder, x, y)
    samples = next(q for q in recorder.inputs if len(q) == len(x) * b).view(len(x), b, -1)  # the first population

    gen = torch.Generator().manual_seed(seed)  # the shared stream: the initial mean, then iteration 0's noise
    mu = torch.empty(64).normal_(generator=gen).double() * 0.001
    e = torch.empty(1, b, 64).normal_(generator=gen).double()
    flat = x.view(len(x), -1).double()
    margin = attack.margin()
    w0 = torch.atanh((2 * flat.clamp(margin, 1 - margin) - 1) * (1 - 1e-6)).unsqueeze(1)
    expected = (torch.tanh(w0 + mu + sigma * e) + 1) / 2
    expected = torch.minimum(torch.maximum(expected, (flat - eps).clamp_min(0).unsqueeze(1)),
                             (flat + eps).clamp_max(1).unsqueeze(1))
    assert (flat == 0).any()  # saturated pixels are among those checked
    torch.testing.assert_close(samples.double(), expected, atol=2e-6, rtol=0)


def test_legacy_flag_changes_the_search(mlp, digits):
    _, (x, y) = digits
    x, y = x[:8], y[:8]
    kwargs = dict(eps=0.08, iterations=30, population=40, seed=1)
    new = NAttack(**kwargs)(mlp, x, y)
    old = NAttack(legacy_other_class=True, **kwargs)(mlp, x, y)
    assert not torch.equal(new.queries, old.queries) or not torch.equal(new.adversarial, old.adversarial)


@pytest.mark.parametrize("shared_noise", [True, False])
def test_batched_equals_per_image(mlp, digits, shared_noise, monkeypatch):
    """Same seed: attacking a batch, chunk by chunk, or one image at a time gives the same result."""
    _, (x, y) = digits
    model = mlp.double()  # float64, so batched and single forward passes agree to ~1e-16
    try:
        x, y = x[20:26].double(), y[20:26]
        kwargs = dict(eps=0.1, iterations=40, population=30, seed=3, shared_noise=shared_noise)
        attack = NAttack(**kwargs)
        batched = attack(model, x, y)
        with monkeypatch.context() as patch:  # one image per pass, at most 2 images' logits scored together
            patch.setattr(nattack, "_CPU_PASS_ELEMENTS", 30 * 64 // torch.get_num_threads())
            patch.setattr(nattack, "_LOGITS_ELEMENTS", 2 * 10 * 30)
            grouped = attack(model, x, y)
        assert torch.equal(grouped.queries, batched.queries)
        assert torch.allclose(grouped.adversarial, batched.adversarial, atol=1e-9)
        chunked = NAttack(batch_size=30, **kwargs)(model, x, y)  # one image per forward pass
        singles = [attack(model, x[i:i + 1], y[i:i + 1]) for i in reversed(range(len(x)))][::-1]
        single = (torch.cat([s.queries for s in singles]), torch.cat([s.extra["success"] for s in singles]),
                  torch.cat([s.adversarial for s in singles]))
        for queries, success, adversarial in [(chunked.queries, chunked.extra["success"], chunked.adversarial),
                                              single]:
            assert torch.equal(queries, batched.queries)
            assert torch.equal(success, batched.extra["success"])
            assert torch.allclose(adversarial, batched.adversarial, atol=1e-9)
        assert batched.extra["success"].any() and not batched.extra["success"].all()
        # A different seed is a different search.
        other_seed = NAttack(**{**kwargs, "seed": 4})(model, x, y)
        assert not torch.equal(other_seed.adversarial, batched.adversarial)
    finally:
        mlp.float()


def test_saturation_margin(mlp, digits):
    """Pixels at exactly 0 or 1 freeze the reference search (delta=0); the default margin frees them."""
    _, (x, y) = digits
    x, y = (x[:40] > 0.5).float(), y[:40]  # binarized: every pixel saturated
    with torch.no_grad():
        keep = mlp(x).argmax(1) == y
    x, y = x[keep][:12], y[keep][:12]
    kwargs = dict(eps=0.3, iterations=60, population=50)
    reference = NAttack(delta=0.0, **kwargs)(mlp, x, y)
    default = NAttack(**kwargs)(mlp, x, y)
    assert int(reference.extra["success"].sum()) <= 2
    assert int(default.extra["success"].sum()) >= len(x) - 1
