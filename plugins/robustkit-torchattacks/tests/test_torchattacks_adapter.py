"""The torchattacks adapter: every attack registered, parameters checked, results equal to torchattacks'."""

from __future__ import annotations

import contextlib
import gc
import inspect
import io
import weakref

import pytest
import torch
import torchattacks
from torch import nn

from robustkit.testing.contracts import check_attack
from robustkit.attacks import GOALS, KNOWLEDGE
from robustkit.errors import InputError, ParameterError, RobustkitError
from robustkit.host import make_host
from robustkit.library_adapter import FromLibrary
from robustkit.models import Classifier, ModelSpec, Normalize
from robustkit_torchattacks import adapter

ALL_NAMES = [f"torchattacks:{n}" for n in torchattacks.__all__]
# The slow defaults (5,000 queries, 9 x 100 EAD iterations) are only constructed; these smaller
# settings run. Everything else runs with its defaults.
RUN_PARAMS = {adapter.PREFIX + name: params for name, params in adapter.CHEAP_PARAMS.items()}


def tiny_model(channels: int = 1, classes: int = 10, seed: int = 0) -> Classifier:
    """A linear classifier over channels x 8 x 8 images, normalization inside like every robustkit model."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(channels * 64, classes))
    return Classifier(net, Normalize((0.5,) * channels, (0.25,) * channels), ModelSpec("tiny-linear")).eval()


def batch(model: nn.Module, n: int = 2, channels: int = 1, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images labelled with the model's own predictions, so every attack has something to flip."""
    x = torch.rand(n, channels, 8, 8, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return x, model(x).argmax(1)


@pytest.fixture(scope="module")
def host():
    # Only this plugin, still through its entry point: other plugins' import time and failures stay out.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ROBUSTKIT_LOAD_PLUGINS", "torchattacks")
        return make_host()


# --- registration and declared facts ----------------------------------------------------------


def test_every_torchattacks_name_is_registered(host):
    registered = {e.name for e in host.attacks.list("torchattacks:*")}
    assert registered == set(ALL_NAMES)
    assert not [f for f in host.failures if f.plugin == "torchattacks"]


def test_unavailable_attacks_are_listed_with_a_reason(host):
    unavailable = {e.name: e.info for e in host.attacks.list("torchattacks:*") if not e.info["available"]}
    assert set(unavailable) == {f"torchattacks:{n}" for n in adapter.UNAVAILABLE}
    for info in unavailable.values():
        assert info["reason"]


def test_declared_facts_are_valid(host):
    for entry in host.attacks.list("torchattacks:*"):
        if not entry.info["available"]:
            continue
        assert entry.info["knowledge"] in KNOWLEDGE, entry.name
        assert entry.info["goal"] in GOALS, entry.name
        assert set(entry.info["threat_models"]) <= {"linf", "l2", "l1", "l0", "unbounded"}, entry.name
        cls = entry.factory
        assert (cls.threat_models, cls.knowledge, cls.goal, cls.supports_targeted) == (
            entry.info["threat_models"], entry.info["knowledge"], entry.info["goal"], entry.info["supports_targeted"])


@pytest.mark.parametrize("name", sorted(adapter.FACTS))
def test_declared_targeted_mode_matches_the_library(name):
    with contextlib.redirect_stdout(io.StringIO()):
        library_attack = getattr(torchattacks, name)(nn.Linear(1, 1))
    library_targeted = "targeted" in library_attack.supported_mode
    if adapter.FACTS[name].targeted:
        assert library_targeted
    elif library_targeted:
        assert name == "FAB"  # its label-targeted mode is broken in torchattacks 3.5.1; the note says so
        assert "targeted" in adapter.FACTS[name].note


def test_adapter_docstrings_are_uniform(host):
    for entry in host.attacks.list("torchattacks:*"):
        doc = entry.factory.__doc__
        assert f"torchattacks {adapter.LIBRARY_VERSION}" in doc
        if entry.info["available"]:
            assert "Arguments:" in doc and "Shape:" in doc
            for param in entry.factory.params:
                assert f"    {param.name} (" in doc


# --- cheap registration: torchattacks is imported only when needed (see tests/test_startup.py) ----


def test_names_are_read_from_the_source_and_all_reviewed():
    assert adapter.library_names() == tuple(torchattacks.__all__)
    assert set(adapter.FACTS) | set(adapter.UNAVAILABLE) == set(torchattacks.__all__)
    assert not set(adapter.FACTS) & set(adapter.UNAVAILABLE)


@pytest.mark.parametrize("source, names", [
    ("__all__ = ['A', 'B']\n", ("A", "B")),
    ('"""Doc."""\nfrom .x import A\n__all__ = ("A",)\n__version__ = "1"\n', ("A",)),
    ("__all__ = ['A']\n__all__ += ['B']\n", None),
    ("__all__ = ['A']\n__all__.append('B')\n", None),
    ("__all__ = [n for n in dir()]\n", None),
    ("__all__ = ['A', 1]\n", None),
    ("x = 1\n", None),
    ("def (:\n", None),
])
def test_static_all_reads_only_one_plain_literal(source, names):
    assert adapter._static_all(source) == names


def test_library_names_fall_back_to_importing(monkeypatch):
    monkeypatch.setattr(adapter, "_static_all", lambda source: None)
    assert adapter.library_names() == tuple(torchattacks.__all__)


def test_static_tables_match_the_library():
    assert adapter.LIBRARY_VERSION == torchattacks.__version__
    assert set(adapter.TITLES) == set(torchattacks.__all__)
    for name, title in adapter.TITLES.items():
        assert title == adapter._first_line(getattr(torchattacks, name)), name


def test_descriptions_are_the_docstrings_first_lines(host):
    for entry in host.attacks.list("torchattacks:*"):
        assert entry.description == entry.factory.__doc__.splitlines()[0], entry.name


def test_library_details_are_filled_in_on_first_use():
    cls = adapter.adapter_class("PGD")
    assert issubclass(cls, adapter.TorchattacksAttack) and cls.__name__ == "TorchattacksPGD"
    for attr in ("torchattacks_class", "params", "__doc__"):
        assert isinstance(vars(cls)[attr], FromLibrary), attr
    assert (cls.name, cls.threat_models, cls.supports_targeted) == ("torchattacks:PGD", ("linf",), True)
    attack = cls(eps=0.1)  # reads cls.params: all three are computed and stored on the class
    assert vars(cls)["torchattacks_class"] is torchattacks.PGD and attack.torchattacks_class is torchattacks.PGD
    assert vars(cls)["params"] is cls.params and [p.name for p in cls.params][:3] == ["eps", "alpha", "steps"]
    assert vars(cls)["__doc__"].startswith(adapter.TITLES["PGD"]) and "Arguments:" in cls.__doc__
    # Reached through an instance first, the same happens.
    fgsm = adapter.adapter_class("FGSM")
    assert object.__new__(fgsm).torchattacks_class is torchattacks.FGSM and isinstance(vars(fgsm)["params"], tuple)


def test_a_name_missing_from_the_library_is_a_clear_error():
    cls = adapter.adapter_class("PGD")
    cls.library_name = "Gone"
    with pytest.raises(RobustkitError, match="has no attack named Gone"):
        cls.params


def test_an_unreviewed_name_is_registered_unavailable_without_the_library(monkeypatch):
    monkeypatch.setattr(adapter, "library_names", lambda: ("PGD", "NewAttack"))
    host = make_host(plugins=[("torchattacks", adapter)], entry_points=False)
    assert [e.name for e in host.attacks.list("torchattacks:*")] == ["torchattacks:NewAttack", "torchattacks:PGD"]
    entry = host.attacks.get("torchattacks:NewAttack")
    assert entry.info["available"] is False and "not been reviewed" in entry.info["reason"]
    assert entry.declared_params() == ()
    assert entry.description.startswith("NewAttack (torchattacks") and "unavailable" in entry.description
    with pytest.raises(RobustkitError, match="not available through robustkit: the adapter has not been reviewed"):
        host.attacks.create("torchattacks:NewAttack")


# --- the contract: every registered attack builds with defaults and (cheaply) runs -----------------


@pytest.mark.parametrize("name", ALL_NAMES)
def test_contract_construct_and_run(host, name):
    """robustkit's contract (robustkit.testing.contracts.check_attack) with the attack's declared cheap settings,
    after its defaults build with seed 0 under its own name."""
    if host.attacks.get(name).info["available"]:
        attack = host.attacks.create(name)
        assert attack.display_name() == name and attack.config["seed"] == 0
    check_attack(name, host=host)


# --- parameter checks ---------------------------------------------------------------------------


def test_unknown_parameter_suggests_the_right_one(host):
    with pytest.raises(ParameterError, match="unknown parameter 'esp'.*did you mean eps"):
        host.attacks.create("torchattacks:PGD", {"esp": 0.1})


def test_wrong_type_is_rejected(host):
    with pytest.raises(ParameterError, match="'steps' must be of type int"):
        host.attacks.create("torchattacks:PGD", {"steps": "many"})
    with pytest.raises(ParameterError, match="'random_start' must be of type bool"):
        host.attacks.create("torchattacks:PGD", {"random_start": "maybe"})


@pytest.mark.parametrize("name, params", [
    ("torchattacks:PGD", {"eps": 2.0}),
    ("torchattacks:FGSM", {"eps": -0.1}),
    ("torchattacks:PIFGSM", {"max_epsilon": 1.5}),
    ("torchattacks:APGD", {"norm": "Linf", "eps": 2.0}),
    ("torchattacks:AutoAttack", {"eps": 3.0}),
    ("torchattacks:PGDL2", {"eps": -1.0}),
])
def test_eps_out_of_range_is_rejected(host, name, params):
    with pytest.raises(ParameterError, match="eps"):
        host.attacks.create(name, params)


def test_l2_budget_may_exceed_one(host):
    attack = host.attacks.create("torchattacks:APGD", {"norm": "l2", "eps": 2.0})
    assert attack.config["norm"] == "L2" and attack.norm == "l2" and attack.threat.eps == 2.0


def test_command_line_strings_are_converted(host):
    attack = host.attacks.create("torchattacks:PGD", {"eps": "8/255", "steps": "3", "random_start": "false"})
    assert attack.config == {"eps": 8 / 255, "alpha": 2 / 255, "steps": 3, "random_start": False, "seed": 0}
    assert host.attacks.create("torchattacks:CW", {"c": "0.5"}).config["c"] == 0.5  # int default, real value
    assert host.attacks.create("torchattacks:Pixle", {"x_dimensions": "2,5"}).config["x_dimensions"] == (2, 5)


def test_choices_and_library_checks_fail_at_construction(host):
    with pytest.raises(ParameterError, match="'norm' must be one of Linf, L2, linf, l2"):
        host.attacks.create("torchattacks:APGD", {"norm": "L1"})
    with pytest.raises(ParameterError, match="'loss' must be one of"):
        host.attacks.create("torchattacks:APGD", {"loss": "hinge"})
    with pytest.raises(ParameterError, match="torchattacks:Pixle"):  # torchattacks' own check, run early
        host.attacks.create("torchattacks:Pixle", {"x_dimensions": "0,5"})


def test_targets_for_an_untargeted_attack_are_rejected(host):
    model = tiny_model()
    x, y = batch(model)
    with pytest.raises(ParameterError, match="no targeted mode"):
        host.attacks.create("torchattacks:DeepFool")(model, x, y, target_labels=(y + 1) % 10)


def test_rgb_only_attacks_explain_the_channel_count(host):
    model = tiny_model()
    x, y = batch(model)
    with pytest.raises(InputError, match="3-channel"):
        host.attacks.create("torchattacks:TIFGSM")(model, x, y)


def test_jsma_explains_its_class_count(host):
    model = tiny_model(classes=4)
    x, y = batch(model)
    with pytest.raises(InputError, match="at least 10 classes, this one has 4"):
        host.attacks.create("torchattacks:JSMA")(model, x, y)


def test_describe_names_the_library_and_norm(host):
    info = host.attacks.create("torchattacks:Square", {"norm": "L2", "eps": 0.5}).describe()
    assert info["name"] == "torchattacks:Square" and info["norm"] == "l2"
    assert info["library"] == f"torchattacks {torchattacks.__version__}"
    assert info["params"]["eps"] == 0.5


def test_n_classes_is_read_from_the_model(host):
    model = tiny_model(classes=4)
    x, y = batch(model, n=3)
    attack = host.attacks.create("torchattacks:APGDT", {"steps": 3})
    assert attack.build(model, x).n_target_classes == 3
    adv = attack(model, x, y).adversarial
    assert (model(adv).argmax(1) != y).any()
    given = host.attacks.create("torchattacks:APGDT", {"n_classes": 3})
    assert given.build(model, x).n_target_classes == 2


# --- equality with torchattacks called directly -------------------------------------------------------


CROSS_CHECKS = [
    ("PGD", {"eps": 0.1, "alpha": 0.02, "steps": 5}),
    ("FGSM", {"eps": 0.05}),
    ("PGDL2", {"eps": 0.5, "alpha": 0.1, "steps": 5}),
    ("RFGSM", {"eps": 0.1, "alpha": 0.02, "steps": 3}),
    ("APGD", {"eps": 0.1, "steps": 5}),
    ("Square", {"eps": 0.1, "n_queries": 30}),
    ("DeepFool", {"steps": 5}),
    ("CW", {"c": 0.5, "steps": 10}),
]


@pytest.mark.parametrize("name, params", CROSS_CHECKS, ids=[c[0] for c in CROSS_CHECKS])
def test_output_equals_torchattacks_called_directly(host, name, params):
    model = tiny_model()
    x, y = batch(model, n=4)
    ours = host.attacks.create(f"torchattacks:{name}", {**params, "seed": 7})(model, x, y).adversarial
    library_class = getattr(torchattacks, name)
    # Attacks with their own seed get the same one; all others rely on the global RNG seeded here.
    own_seed = {"seed": 7} if "seed" in inspect.signature(library_class).parameters else {}
    torch.manual_seed(7)
    theirs = library_class(model, **params, **own_seed)(x, y)
    assert torch.equal(ours, theirs)


def test_targeted_output_equals_torchattacks_targeted_by_label(host):
    model = tiny_model()
    x, y = batch(model, n=4)
    targets = (y + 3) % 10
    ours = host.attacks.create("torchattacks:PGD", {"eps": 0.2, "steps": 10, "seed": 1})(model, x, y, targets)
    library = torchattacks.PGD(model, eps=0.2, steps=10)
    library.set_mode_targeted_by_label(quiet=True)
    torch.manual_seed(1)
    assert torch.equal(ours.adversarial, library(x, targets))
    assert (model(ours.adversarial).argmax(1) == targets).any()


def test_same_seed_repeats_and_other_seeds_differ(host):
    model = tiny_model()
    x, y = batch(model, n=4)
    run = lambda seed: host.attacks.create("torchattacks:PGD", {"steps": 1, "seed": seed})(model, x, y).adversarial
    assert torch.equal(run(5), run(5))
    assert not torch.equal(run(5), run(6))


def test_model_training_mode_is_restored(host):
    model = tiny_model().train()
    x, y = batch(model)
    host.attacks.create("torchattacks:FGSM")(model, x, y)
    assert model.training


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_runs_on_the_model_device_and_returns_on_the_input_device(host):
    model = tiny_model()
    x, y = batch(model, n=4)
    model.cuda()
    attack = host.attacks.create("torchattacks:PGD", {"steps": 3})
    assert attack.build(model, x).device.type == "cuda"
    adv = attack(model, x.cuda(), y.cuda()).adversarial
    assert adv.device.type == "cuda"


# --- the cached torchattacks object: reused per model, rebuilt when it changes, never keeps it alive ----


def test_one_adapter_on_two_models_equals_torchattacks_on_each(host):
    first, second = tiny_model(seed=0), tiny_model(seed=1)
    x, y = batch(first, n=4)
    attack = host.attacks.create("torchattacks:PGD", {"eps": 0.1, "alpha": 0.02, "steps": 3, "seed": 2})
    for model in (first, second, first, second):
        ours = attack(model, x, y).adversarial
        torch.manual_seed(2)
        assert torch.equal(ours, torchattacks.PGD(model, eps=0.1, alpha=0.02, steps=3)(x, y))
    assert not torch.equal(attack(first, x, y).adversarial, attack(second, x, y).adversarial)


def test_cached_object_follows_weight_changes(host):
    model = tiny_model()
    x, y = batch(model, n=4)
    attack = host.attacks.create("torchattacks:FGSM", {"eps": 0.05, "seed": 3})

    def direct():
        torch.manual_seed(3)
        return torchattacks.FGSM(model, eps=0.05)(x, y)

    before = attack(model, x, y).adversarial
    assert torch.equal(before, direct())
    with torch.no_grad():
        model.net[1].weight.neg_()  # in place, as an optimizer step would
    after = attack(model, x, y).adversarial
    assert torch.equal(after, direct()) and not torch.equal(after, before)
    model.load_state_dict(tiny_model(seed=5).state_dict())
    assert torch.equal(attack(model, x, y).adversarial, direct())
    model.net[1].weight = nn.Parameter(torch.zeros_like(model.net[1].weight))  # a new tensor
    assert torch.equal(attack(model, x, y).adversarial, direct())


def test_class_count_is_read_again_when_the_model_changes_shape(host):
    model = tiny_model(classes=10)
    x, y = batch(model, n=3)
    attack = host.attacks.create("torchattacks:APGDT", {"steps": 2, "seed": 1})
    attack(model, x, y)
    model.net[1] = nn.Linear(64, 4)  # a new head: 4 classes
    with torch.no_grad():
        y = model(x).argmax(1)
    ours = attack(model, x, y).adversarial
    torch.manual_seed(1)
    assert torch.equal(ours, torchattacks.APGDT(model, steps=2, seed=1, n_classes=4)(x, y))


def test_targeted_and_untargeted_calls_share_an_adapter(host):
    model = tiny_model()
    x, y = batch(model, n=4)
    targets = (y + 3) % 10
    attack = host.attacks.create("torchattacks:PGD", {"eps": 0.2, "steps": 5, "seed": 1})
    for _ in range(2):
        targeted = attack(model, x, y, targets).adversarial
        untargeted = attack(model, x, y).adversarial
        library = torchattacks.PGD(model, eps=0.2, steps=5)
        torch.manual_seed(1)
        assert torch.equal(untargeted, library(x, y))
        library.set_mode_targeted_by_label(quiet=True)
        torch.manual_seed(1)
        assert torch.equal(targeted, library(x, targets))


@pytest.mark.parametrize("name", ["torchattacks:FGSM", "torchattacks:APGDT", "torchattacks:AutoAttack"])
def test_the_cache_does_not_keep_a_model_alive(host, name):
    model = tiny_model()
    x, y = batch(model)
    params = {"torchattacks:APGDT": {"steps": 1}, "torchattacks:AutoAttack": {"version": "rand"}}.get(name, {})
    attack = host.attacks.create(name, params)  # AutoAttack: its sub-attacks hold the model too
    attack(model, x, y)
    if attack.supports_targeted:
        attack(model, x, y, (y + 1) % 10)
    alive = weakref.ref(model)
    del model
    gc.collect()
    assert alive() is None


REPEAT_PARAMS = {**RUN_PARAMS, "torchattacks:SPSA": {"nb_iter": 1, "nb_sample": 16}}


@pytest.mark.parametrize("name", [n for n in ALL_NAMES if n.split(":")[1] not in adapter.UNAVAILABLE])
def test_a_reused_object_repeats_a_fresh_ones_result(host, name):
    """Every attack: the second call (cached torchattacks object) equals a first call of a new adapter."""
    model = tiny_model(channels=3)
    x, y = batch(model, channels=3)
    params = {**REPEAT_PARAMS.get(name, {}), "seed": 4}
    attack = host.attacks.create(name, params)
    attack(model, x, y)
    again = attack(model, x, y).adversarial
    assert torch.equal(again, host.attacks.create(name, params)(model, x, y).adversarial)
