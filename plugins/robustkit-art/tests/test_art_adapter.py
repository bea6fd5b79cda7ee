"""The ART adapter: every evasion attack registered, parameters checked, results equal to ART's."""

from __future__ import annotations

import gc
import importlib.util
import inspect
import random
import sys
import types
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from robustkit.testing.contracts import check_attack
from robustkit.attacks import GOALS, KNOWLEDGE
from robustkit.errors import InputError, ParameterError
from robustkit.host import make_host
from robustkit.models import Classifier, ModelSpec, Normalize
from robustkit_art import adapter

art_evasion = pytest.importorskip("art.attacks.evasion")
from art.attacks.attack import EvasionAttack  # noqa: E402
from art.estimators.classification import PyTorchClassifier  # noqa: E402

ALL_NAMES = [f"art:{n}" for n in adapter.ALL_NAMES]
RUN_PARAMS = {adapter.PREFIX + name: params for name, params in adapter.CHEAP_PARAMS.items()}
# Their ART defaults cost minutes; with these parameters they still cost too much for the contract run.
CONSTRUCT_ONLY = {"art:AutoAttack"}
PIXEL_NORMS = {"linf": float("inf"), "l2": 2.0, "l1": 1.0}


def tiny_model(shape: tuple[int, int, int] = (1, 8, 8), classes: int = 10, seed: int = 0) -> Classifier:
    """A linear classifier, normalization inside like every robustkit model."""
    torch.manual_seed(seed)
    c = shape[0]
    net = nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(shape)), classes))
    return Classifier(net, Normalize((0.5,) * c, (0.25,) * c), ModelSpec("tiny-linear")).eval()


def batch(model: nn.Module, n: int = 2, shape: tuple[int, int, int] = (1, 8, 8), seed: int = 1):
    """Random images labelled with the model's own predictions, so every attack has something to flip."""
    x = torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return x, model(x).argmax(1)


def art_classifier(model: nn.Module, shape=(1, 8, 8), classes: int = 10) -> PyTorchClassifier:
    """The PyTorchClassifier the adapter promises to build, built here by hand."""
    return PyTorchClassifier(model=model, loss=nn.CrossEntropyLoss(), input_shape=shape, nb_classes=classes,
                             clip_values=(0.0, 1.0), device_type="cpu")


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def one_hot(labels: torch.Tensor, classes: int = 10) -> np.ndarray:
    return np.eye(classes, dtype=np.float32)[labels.numpy()]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # ART makes many tiny torch calls; on a busy 2-core machine a second intra-op thread slows them 10-30x.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def host():
    # Only this plugin, still through its entry point: other plugins' import time and failures stay out.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ROBUSTKIT_LOAD_PLUGINS", "art")
        return make_host()


# --- registration and declared facts ----------------------------------------------------------


def test_every_art_evasion_attack_is_registered(host):
    exported = {n for n, o in vars(art_evasion).items() if inspect.isclass(o) and issubclass(o, EvasionAttack)}
    exported.add("BrendelBethgeAttack")  # exported by ART only when numba is installed
    assert set(adapter.ALL_NAMES) == exported
    assert {e.name for e in host.attacks.list("art:*")} == set(ALL_NAMES)
    assert not [f for f in host.failures if f.plugin == "art"]


def test_registering_does_not_import_art(monkeypatch):
    # ART takes seconds to import; `robustkit attacks list` must not pay for it. Make every ART import fail.
    for module in [m for m in sys.modules if m == "art" or m.startswith("art.")]:
        monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.setenv("ROBUSTKIT_LOAD_PLUGINS", "art")
    fresh = make_host()
    assert not fresh.failures
    assert len(fresh.attacks.list("art:*")) == len(ALL_NAMES)
    entry = fresh.attacks.get("art:DeepFool")
    assert entry.description.startswith("DeepFool") and entry.info["goal"] == "minimal-distortion"
    monkeypatch.delattr(entry.factory, "_params_cache", raising=False)  # an earlier test may have read them
    adapter.library_class.cache_clear()
    with pytest.raises(ImportError):  # parameters are read from ART, so listing them imports it
        entry.declared_params()


def test_unavailable_attacks_are_listed_with_a_reason(host):
    unavailable = {e.name: e.info for e in host.attacks.list("art:*") if not e.info["available"]}
    assert {f"art:{n}" for n in adapter.UNAVAILABLE} <= set(unavailable)
    for name in ("art:DPatch", "art:RobustDPatch", "art:CarliniWagnerASR", "art:DecisionTreeAttack",
                 "art:AdversarialPatchPyTorch", "art:ProjectedGradientDescentTensorFlowV2", "art:LowProFool"):
        assert name in unavailable
    for name, info in unavailable.items():
        assert info["reason"], name
        if name.removeprefix("art:") in adapter.FACTS:  # an applicable attack whose optional package is missing
            assert "pip install" in info["reason"]


def test_declared_facts_are_valid(host):
    for entry in host.attacks.list("art:*"):
        if not entry.info["available"]:
            continue
        assert entry.info["knowledge"] in KNOWLEDGE, entry.name
        assert entry.info["goal"] in GOALS, entry.name
        threats = set(entry.info["threat_models"])
        assert threats <= {"linf", "l2", "l1", "l0", "unbounded", "wasserstein"}, entry.name
        cls = entry.factory
        assert set(cls.facts.norms) <= threats, entry.name
        assert (cls.threat_models, cls.knowledge, cls.goal, cls.supports_targeted) == (
            entry.info["threat_models"], entry.info["knowledge"], entry.info["goal"], entry.info["supports_targeted"])


@pytest.mark.parametrize("name", sorted(adapter.FACTS))
def test_declared_targeted_mode_matches_the_library(name):
    facts = adapter.FACTS[name]
    if adapter._missing_modules(facts.requires):
        pytest.skip(f"needs {facts.requires}")
    signature = inspect.signature(adapter.library_class(name).__init__).parameters
    if facts.targeted and not facts.targeted_only and facts.untargeted_y == "labels":
        assert "targeted" in signature
    elif "targeted" in signature and not facts.targeted:
        assert "targeted" in facts.note  # ART has the flag, but the note says why it is not offered


def test_adapter_docstrings_are_uniform(host):
    for entry in host.attacks.list("art:*"):
        doc = entry.factory.__doc__
        assert f"ART {adapter.LIBRARY_VERSION}" in doc, entry.name
        if entry.info["available"]:
            assert "Arguments:" in doc and "Shape:" in doc
            for param in entry.factory.params:
                assert f"    {param.name} (" in doc


# --- the contract: every registered attack builds with defaults and (cheaply) runs -----------------


@pytest.mark.parametrize("name", ALL_NAMES)
def test_contract_construct_and_run(host, name):
    """robustkit's contract (robustkit.testing.contracts.check_attack) with the attack's declared cheap settings,
    after its defaults build with seed 0 under its own name."""
    if host.attacks.get(name).info["available"]:
        attack = host.attacks.create(name)
        assert attack.display_name() == name and attack.config["seed"] == 0
    check_attack(name, host=host)


def test_autoattack_runs_once_multiprocess_is_installed(monkeypatch):
    # ART imports multiprocess inside AutoAttack.generate even without a pool; stand in for it if missing.
    if importlib.util.find_spec("multiprocess") is None:
        monkeypatch.setitem(sys.modules, "multiprocess", types.ModuleType("multiprocess"))
    monkeypatch.setattr(adapter, "_missing_modules", lambda names: [])
    attack = adapter.adapter_class("AutoAttack")(eps=0.3)
    model = tiny_model()
    x, y = batch(model, n=1)  # its suite cannot be shortened: one image keeps it under a second
    adv = attack(model, x, y).adversarial
    assert float((adv - x).abs().max()) <= 0.3 + 1e-6
    assert (model(adv).argmax(1) != y).all()


# --- parameter checks ---------------------------------------------------------------------------


def test_unknown_parameter_suggests_the_right_one(host):
    with pytest.raises(ParameterError, match="unknown parameter 'esp'.*did you mean eps"):
        host.attacks.create("art:ProjectedGradientDescent", {"esp": 0.1})


def test_targeted_is_not_a_parameter(host):
    with pytest.raises(ParameterError, match="unknown parameter 'targeted'"):
        host.attacks.create("art:FastGradientMethod", {"targeted": True})


@pytest.mark.parametrize("name, params", [
    ("art:FastGradientMethod", {"eps": 2.0}),
    ("art:ProjectedGradientDescent", {"norm": "inf", "eps": 1.5}),
    ("art:BasicIterativeMethod", {"eps": 3.0}),
    ("art:SquareAttack", {"eps": 1.01}),
    ("art:UniversalPerturbation", {"eps": 10.0}),
    ("art:MomentumIterativeMethod", {"eps": -0.1}),
    ("art:AutoProjectedGradientDescent", {"norm": "l2", "eps": -1.0}),
])
def test_eps_out_of_range_is_rejected(host, name, params):
    with pytest.raises(ParameterError, match="eps"):
        host.attacks.create(name, params)


def test_norm_takes_both_spellings_and_l2_budgets_may_exceed_one(host):
    attack = host.attacks.create("art:ProjectedGradientDescent", {"norm": "2", "eps": "2.5"})
    assert attack.config["norm"] == "l2" and attack.norm == "l2" and attack.threat.eps == 2.5
    assert attack.library_kwargs()["norm"] == 2
    assert host.attacks.create("art:FastGradientMethod", {"norm": float("inf")}).library_kwargs()["norm"] == np.inf
    assert host.attacks.create("art:HopSkipJump").config["norm"] == "l2"  # ART's default, robustkit's spelling
    with pytest.raises(ParameterError, match="'norm' must be one of linf, l2"):
        host.attacks.create("art:SquareAttack", {"norm": "l1"})


def test_command_line_strings_are_converted(host):
    attack = host.attacks.create("art:ProjectedGradientDescent",
                                 {"eps": "8/255", "max_iter": "3", "random_eps": "false", "decay": "0.5"})
    assert attack.config["eps"] == 8 / 255 and attack.config["max_iter"] == 3
    assert attack.config["random_eps"] is False and attack.config["decay"] == 0.5
    assert host.attacks.create("art:PixelAttack", {"th": "4"}).config["th"] == 4  # 'int | None' in ART
    with pytest.raises(ParameterError, match="'th' must be of type int"):
        host.attacks.create("art:PixelAttack", {"th": "many"})


def test_choices_and_library_checks_fail_at_construction(host):
    with pytest.raises(ParameterError, match="'decision_rule' must be one of EN, L1, L2"):
        host.attacks.create("art:ElasticNet", {"decision_rule": "L3"})
    with pytest.raises(ParameterError, match="art:SimBA: ART rejects these parameters: .*batch size"):
        host.attacks.create("art:SimBA", {"batch_size": 2})
    with pytest.raises(ParameterError, match="'max_iter' must be >= 300"):
        host.attacks.create("art:GeoDA", {"max_iter": 100})


@pytest.mark.skipif(importlib.util.find_spec("cma") is not None, reason="cma is installed")
def test_cma_strategy_without_cma_is_explained(host):
    assert host.attacks.create("art:ThresholdAttack").config["es"] == 1
    with pytest.raises(ParameterError, match="needs the cma package"):
        host.attacks.create("art:ThresholdAttack", {"es": 0})


def test_input_requirements_are_explained(host):
    model = tiny_model()
    x, y = batch(model)
    with pytest.raises(ParameterError, match="no targeted mode"):
        host.attacks.create("art:DeepFool")(model, x, y, target_labels=(y + 1) % 10)
    with pytest.raises(InputError, match="targeted attack only"):
        host.attacks.create("art:TargetedUniversalPerturbation", {"max_iter": 1})(model, x, y)
    with pytest.raises(InputError, match=r"target labels must lie in 0\.\.9"):
        host.attacks.create("art:FastGradientMethod")(model, x, y, target_labels=y + 10)
    wide = tiny_model((1, 8, 6))
    xw, yw = batch(wide, shape=(1, 8, 6))
    with pytest.raises(InputError, match="square images"):
        host.attacks.create("art:GeoDA")(wide, xw, yw)


def test_geoda_writes_nothing_in_the_working_directory(host, tmp_path, monkeypatch):
    """ART's GeoDA saves its DCT basis (2d_dct_basis_*.npy) in the working directory; robustkit gives it its own."""
    monkeypatch.chdir(tmp_path)
    model = tiny_model()
    x, y = batch(model)
    result = host.attacks.create("art:GeoDA", {"max_iter": 300, "sub_dim": 4})(model, x[:2], y[:2])
    assert result.adversarial.shape == x[:2].shape
    assert list(tmp_path.iterdir()) == []
    assert Path.cwd() == tmp_path


def test_describe_names_the_library_and_norm(host):
    info = host.attacks.create("art:SquareAttack", {"norm": "l2", "eps": 0.5}).describe()
    assert info["name"] == "art:SquareAttack" and info["norm"] == "l2"
    assert info["library"] == f"ART {adapter.LIBRARY_VERSION}"
    assert info["params"]["eps"] == 0.5 and info["params"]["verbose"] is False


# --- equality with ART called directly ---------------------------------------------------------------


CROSS_CHECKS = [
    ("FastGradientMethod", {"eps": 0.05}),
    ("FastGradientMethod", {"norm": "l2", "eps": 0.5}),
    ("ProjectedGradientDescent", {"eps": 0.1, "eps_step": 0.02, "max_iter": 5, "num_random_init": 1}),
    ("DeepFool", {"max_iter": 10}),
    ("SquareAttack", {"eps": 0.1, "max_iter": 30}),
    ("CarliniL2Method", {"max_iter": 5, "binary_search_steps": 2}),
]


@pytest.mark.parametrize("name, params", CROSS_CHECKS, ids=[f"{n}-{p.get('norm', 'default')}" for n, p in CROSS_CHECKS])
def test_output_equals_art_called_directly(host, name, params):
    model = tiny_model()
    x, y = batch(model, n=4)
    ours = host.attacks.create(f"art:{name}", {**params, "seed": 7})(model, x, y).adversarial
    library = getattr(art_evasion, name)
    kwargs = {**params, **({"norm": {"l2": 2}[params["norm"]]} if "norm" in params else {})}
    accepted = inspect.signature(library.__init__).parameters
    kwargs.update({k: v for k, v in {"targeted": False, "verbose": False}.items() if k in accepted})
    attack = library(art_classifier(model), **kwargs)
    seed_all(7)
    theirs = attack.generate(x.numpy(), one_hot(y))
    assert torch.equal(ours, torch.from_numpy(theirs))


def test_targeted_output_equals_art_targeted(host):
    model = tiny_model()
    x, y = batch(model, n=4)
    targets = (y + 3) % 10
    params = {"eps": 0.3, "eps_step": 0.05, "max_iter": 10}
    ours = host.attacks.create("art:ProjectedGradientDescent", {**params, "seed": 1})(model, x, y, targets)
    attack = art_evasion.ProjectedGradientDescent(art_classifier(model), **params, targeted=True, verbose=False)
    seed_all(1)
    assert torch.equal(ours.adversarial, torch.from_numpy(attack.generate(x.numpy(), one_hot(targets))))
    assert (model(ours.adversarial).argmax(1) == targets).any()


@pytest.mark.parametrize("name", ["art:HopSkipJump", "art:BoundaryAttack", "art:ProjectedGradientDescent"])
def test_same_seed_repeats_and_other_seeds_differ(host, name):
    # HopSkipJump and BoundaryAttack start from ART's unseeded RandomState(): the adapter seeds it too.
    model = tiny_model()
    x, y = batch(model, n=2)
    params = {**RUN_PARAMS[name], "num_random_init": 1} if name.endswith("Descent") else RUN_PARAMS[name]
    run = lambda seed: host.attacks.create(name, {**params, "seed": seed})(model, x, y).adversarial  # noqa: E731
    assert torch.equal(run(5), run(5))
    assert not torch.equal(run(5), run(6))


def test_labels_are_passed_as_one_hot_truth_and_saliency_map_gets_none(host, monkeypatch):
    model = tiny_model()
    x, y = batch(model)
    seen = {}

    def spy(name):
        original = adapter.library_class(name).generate

        def generate(self, x, y=None, **kwargs):
            seen[name] = y
            return original(self, x, y, **kwargs)
        monkeypatch.setattr(adapter.library_class(name), "generate", generate)

    spy("FastGradientMethod")
    spy("SaliencyMapMethod")
    host.attacks.create("art:FastGradientMethod")(model, x, y)
    host.attacks.create("art:SaliencyMapMethod")(model, x, y)
    assert np.array_equal(seen["FastGradientMethod"], one_hot(y))
    assert seen["SaliencyMapMethod"] is None  # ART would read labels as targets
    host.attacks.create("art:SaliencyMapMethod")(model, x, y, target_labels=(y + 1) % 10)
    assert np.array_equal(seen["SaliencyMapMethod"], one_hot((y + 1) % 10))


def test_model_training_mode_is_restored(host):
    model = tiny_model().train()
    x, y = batch(model)
    host.attacks.create("art:FastGradientMethod")(model, x, y)
    assert model.training


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_runs_on_the_model_device_and_returns_on_the_input_device(host):
    model = tiny_model()
    x, y = batch(model, n=4)
    model.cuda()
    attack = host.attacks.create("art:ProjectedGradientDescent", {"max_iter": 3})
    classifier = adapter.make_classifier(model, (1, 8, 8), 10, torch.device("cuda"))
    assert classifier.device.type == "cuda"
    adv = attack(model, x.cuda(), y.cuda()).adversarial
    assert adv.device.type == "cuda"
    assert attack(model, x, y).adversarial.device.type == "cpu"


# --- the cached classifier: reused per model, rebuilt when it changes, never keeps it alive ------------


def art_fgm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, classes: int = 10, seed: int = 3) -> torch.Tensor:
    """ART's FastGradientMethod (eps 0.05) called directly on a classifier built for ``model`` now."""
    attack = art_evasion.FastGradientMethod(art_classifier(model, classes=classes), eps=0.05)
    seed_all(seed)
    return torch.from_numpy(attack.generate(x.numpy(), one_hot(y, classes)))


def test_one_adapter_on_two_models_equals_art_on_each(host):
    first, second = tiny_model(seed=0), tiny_model(seed=1)
    x, y = batch(first, n=4)
    attack = host.attacks.create("art:FastGradientMethod", {"eps": 0.05, "seed": 3})
    for model in (first, second, first, second):
        assert torch.equal(attack(model, x, y).adversarial, art_fgm(model, x, y))
    assert not torch.equal(attack(first, x, y).adversarial, attack(second, x, y).adversarial)


def test_cached_classifier_follows_weight_changes(host):
    model = tiny_model()
    x, y = batch(model, n=4)
    attack = host.attacks.create("art:FastGradientMethod", {"eps": 0.05, "seed": 3})
    before = attack(model, x, y).adversarial
    assert torch.equal(before, art_fgm(model, x, y))
    with torch.no_grad():
        model.net[1].weight.neg_()  # in place, as an optimizer step would
    after = attack(model, x, y).adversarial
    assert torch.equal(after, art_fgm(model, x, y)) and not torch.equal(after, before)
    model.load_state_dict(tiny_model(seed=5).state_dict())
    assert torch.equal(attack(model, x, y).adversarial, art_fgm(model, x, y))


def test_class_count_input_shape_and_dtype_are_read_again(host):
    model = tiny_model()
    x, y = batch(model, n=4)
    attack = host.attacks.create("art:FastGradientMethod", {"eps": 0.05, "seed": 3})
    attack(model, x, y)
    model.net[1] = nn.Linear(64, 4)  # a new head: 4 classes
    with torch.no_grad():
        y4 = model(x).argmax(1)
    assert torch.equal(attack(model, x, y4).adversarial, art_fgm(model, x, y4, classes=4))
    with pytest.raises(InputError, match=r"labels must lie in 0\.\.3"):
        attack(model, x, (y4 + 4) % 10)
    model.net[1] = nn.Linear(64, 12)  # more classes: labels beyond the cached count are not refused
    y12 = y4 + 8
    assert torch.equal(attack(model, x, y12).adversarial, art_fgm(model, x, y12, classes=12))
    model.net[1] = nn.Linear(64, 4)
    # Another input shape (the model flattens whatever it gets into 64 features): a classifier of its own.
    x2 = x.view(4, 1, 4, 16)
    ours = attack(model, x2, y4).adversarial
    direct = art_evasion.FastGradientMethod(art_classifier(model, shape=(1, 4, 16), classes=4), eps=0.05)
    seed_all(3)
    assert torch.equal(ours, torch.from_numpy(direct.generate(x2.numpy(), one_hot(y4, 4))))
    # Cast to float64: ART hands float32 arrays, which the rebuilt wrapper casts to the model's dtype.
    model.double()
    try:
        ours = attack(model, x.double(), y4).adversarial
        assert torch.equal(ours, host.attacks.create("art:FastGradientMethod", {"eps": 0.05, "seed": 3})(
            model, x.double(), y4).adversarial)
    finally:
        model.float()


@pytest.mark.parametrize("name", ["art:FastGradientMethod", "art:SimBA", "art:ShadowAttack"])
def test_the_cache_does_not_keep_a_model_alive(host, name):
    model = tiny_model()
    x, y = batch(model)
    attack = host.attacks.create(name, RUN_PARAMS.get(name, {}))  # SimBA: softmax on top; Shadow: per image
    attack(model, x, y)
    alive = weakref.ref(model)
    del model
    gc.collect()
    assert alive() is None


@pytest.mark.parametrize("name", sorted(set(RUN_PARAMS) | {"art:FastGradientMethod", "art:SaliencyMapMethod"}))
def test_a_reused_classifier_repeats_a_fresh_ones_result(host, name):
    """Every attack that runs quickly: the second call (cached classifier) equals a first call of a new adapter."""
    entry = host.attacks.get(name)
    if not entry.info["available"]:
        pytest.skip(entry.info["reason"])
    attack = host.attacks.create(name, {**RUN_PARAMS.get(name, {}), "seed": 4})
    shape = attack.facts.input_shape or (1, 8, 8)
    model = tiny_model(shape)
    x, y = batch(model, shape=shape)
    targets = (y + 1) % 10 if attack.facts.targeted_only else None
    attack(model, x, y, targets)
    again = attack(model, x, y, targets).adversarial
    fresh = host.attacks.create(name, {**RUN_PARAMS.get(name, {}), "seed": 4})(model, x, y, targets).adversarial
    assert torch.equal(again, fresh)
