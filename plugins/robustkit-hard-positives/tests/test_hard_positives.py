"""Hard positives (robustkit_hard_positives): types, generation inside the PASS band, the cache,
fine-tuning from a base checkpoint, exact resume, the effect on held-out adversarials, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn
from torch.utils.data import TensorDataset

from robustkit.checkpoints import load_training_state, load_weights, read_metadata, save_checkpoint
from robustkit.data import DatasetInfo, ImageDataset, stack, take
from robustkit.errors import ParameterError, RobustkitError
from robustkit.host import make_host
from robustkit_hotcold.pass_metric import pass_score
from robustkit.models import Classifier, ModelSpec, Normalize
from robustkit.essentials.defenses import Natural
from robustkit_hard_positives import HardPositives, parse_types
from robustkit_hotcold import FGV, HotCold
from robustkit_hotcold.line_search import LineSearchAttack
from robustkit.training import TrainConfig, train
from robustkit.testing import InterruptAt

CPU = torch.device("cpu")
INFO = DatasetInfo("toy", num_classes=3, channels=1, image_size=(8, 8), mean=(0.5,), std=(0.25,))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The default cache folder of every test is its own (never ~/.cache)."""
    monkeypatch.setenv("ROBUSTKIT_CACHE_DIR", str(tmp_path / "default-cache"))
    return tmp_path / "default-cache"


def toy_set(n: int, seed: int) -> TensorDataset:
    """Three classes: fixed random prototypes plus noise, on the k / 255 grid."""
    protos = 0.2 + 0.6 * torch.rand(3, 64, generator=torch.Generator().manual_seed(123))
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = (protos[y] + 0.12 * torch.randn(n, 64, generator=g)).clamp(0, 1)
    return TensorDataset(((x * 255).round() / 255).view(n, 1, 8, 8), y)


def toy_data(n_train: int = 96) -> ImageDataset:
    return ImageDataset(INFO, toy_set(n_train, seed=0), toy_set(48, seed=1))


def toy_mlp(seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 3))
    return Classifier(net, Normalize(INFO.mean, INFO.std), ModelSpec("toy-mlp", {}, INFO))


def config(out_dir: Path | None = None, **overrides: Any) -> TrainConfig:
    settings: dict[str, Any] = dict(epochs=3, batch_size=16, lr=0.01, seed=3, device="cpu", val_examples=16,
                                    out_dir=out_dir)
    settings.update(overrides)
    return TrainConfig(**settings)


@pytest.fixture(scope="module")
def base_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A toy MLP trained naturally for a few epochs, saved as a robustkit checkpoint."""
    model = train(toy_mlp(), toy_data(), Natural(), config(epochs=4, val_examples=0)).model
    path = tmp_path_factory.mktemp("base") / "base"
    save_checkpoint(path, model)
    return path.with_suffix(".json")


def prepared(base: Path, model_seed: int = 7, **params: Any) -> HardPositives:
    """A defense after setup() and prepare() on the toy data (the hooks the loop calls)."""
    defense = HardPositives(base=str(base), **params)
    model = toy_mlp(model_seed)
    defense.setup(model, CPU)
    defense.prepare(model, toy_data(), CPU)
    return defense


# --- registration and parameters ------------------------------------------------------------------


def test_entry_point_registers_hard_positives(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROBUSTKIT_LOAD_PLUGINS", "hard-positives")
    host = make_host()
    assert not host.failures
    entry = host.defenses.get("hard-positives")
    assert entry.plugin == "hard-positives"
    assert entry.description.startswith("Hard positives (Rozsa et al.)")
    defense = host.defenses.create("hard-positives", {"types": "fgv,hc-s-5", "scale": "1.1", "mix": "0.25"})
    assert defense.knob == "scale"
    assert defense.cost() == pytest.approx(4 / 3) and defense.passes_per_batch == 2.0
    assert HardPositives().cost() == 2.0 and HardPositives(mix=1).cost() == 1.0 and HardPositives(mix=0).cost() == 1.0
    assert defense.reference["authors"] == "Andras Rozsa, Ethan M. Rudd, Terrance E. Boult"
    assert defense.reference["title"] == "Adversarial Diversity and Hard Positive Generation"
    assert defense.reference["link"] and defense.reference["venue"]
    assert "cache_dir" not in defense.describe()["params"]  # where the set is kept is not part of the run


@pytest.mark.parametrize("given, fragment", [
    ({"types": "hc-x-3"}, "unknown type 'hc-x-3'"),
    ({"types": "pgd"}, "unknown type 'pgd'"),
    ({"types": "fgs,,fgv"}, "empty entry"),
    ({"types": " "}, "'types' is empty"),
    ({"types": "hc-d-0"}, "X >= 1"),
    ({"types": "fgs,FGS"}, "given twice"),
    ({"types": "hc-d-9,hc-d-9-1.05"}, "given twice"),  # the default scale is 1.05: the same generator
    ({"types": "fgv-0.9"}, "scale Y must be in"),
    ({"scale": 0.5}, "'scale' must be >= 1"),
    ({"pass_low": 0.9, "pass_high": 0.8}, "the PASS band is empty"),
    ({"pass_high": 1.5}, "'pass_high' must be <= 1"),
    ({"mix": 1.5}, "'mix' must be <= 1"),
    ({"gen_examples": 0}, "'gen_examples' must be >= 1"),
    ({"typs": "fgs"}, "did you mean types"),
])
def test_bad_params_are_refused_at_construction(given: dict, fragment: str) -> None:
    with pytest.raises(ParameterError, match=fragment) as info:
        HardPositives(**given)
    message = str(info.value)
    assert message.startswith("hard-positives") and "\n" not in message


def test_a_missing_base_checkpoint_is_refused_at_construction(tmp_path: Path) -> None:
    with pytest.raises(RobustkitError, match="no checkpoint metadata"):
        HardPositives(base=str(tmp_path / "nowhere"))


def test_types_syntax_names_and_scales() -> None:
    kinds = parse_types(" FGS, fgv-1.1 ,hc-s-5, HC-D-9-1 ", default_scale=1.05)
    assert [k.name for k in kinds] == ["FGS-1.05", "FGV-1.1", "HC-S-5-1.05", "HC-D-9"]
    assert [(k.method, k.mode, k.ranks, k.scale) for k in kinds][2:] == [("hc", "S", 5, 1.05), ("hc", "D", 9, 1.0)]
    attack = kinds[2].attack()
    assert isinstance(attack, HotCold)
    assert attack.config == {"mode": "S", "rank": 5, "all_ranks": True, "scale": 1.05, "pass_threshold": None,
                             "report_pass": True}
    assert [k.name for k in HardPositives().kinds] == ["HC-D-9-1.05"]  # the paper's best set by default


# --- generation -----------------------------------------------------------------------------------


def test_kept_hard_positives_lie_in_the_pass_band(base_checkpoint: Path, tmp_path: Path) -> None:
    wide = prepared(base_checkpoint, types="fgv,hc-d-2", cache_dir=str(tmp_path / "c"))
    narrow = prepared(base_checkpoint, types="fgv,hc-d-2", pass_low=0.6, pass_high=0.8, cache_dir=str(tmp_path / "c"))
    for defense, (low, high) in ((wide, (0.0, 1.0)), (narrow, (0.6, 0.8))):
        hard = defense.hard
        assert len(hard) > 0
        assert bool(((hard.pass_scores >= low) & (hard.pass_scores <= high)).all())
        # The stored PASS is the real one: recompute it against the source images.
        x_all, y_all = toy_data().train.tensors
        images = hard.images.float() / 255
        assert torch.allclose(pass_score(images, x_all[hard.sources]), hard.pass_scores, atol=1e-9)
        assert torch.equal(hard.labels, y_all[hard.sources])  # labels are the originals
        assert images.min() >= 0 and images.max() <= 1 and hard.images.dtype == torch.uint8  # k / 255 exactly
        summary = defense.summary
        assert summary["total"] == len(hard) == sum(summary["per_type"].values())
        assert list(summary["per_type"]) == ["FGV-1.05", "HC-D-2-1.05"]
        assert 0 < summary["kept_fraction"] <= 1 and summary["attacked"] <= summary["images"] == 96
        assert all(n > 0 for n in summary["per_type"].values())
    assert len(narrow.hard) < len(wide.hard)  # the band filter is real
    assert narrow.summary["kept_fraction"] < wide.summary["kept_fraction"]
    # Every adversarial the wide band kept with PASS in [0.6, 0.8] is in the narrow set, and nothing else.
    in_band = (wide.hard.pass_scores >= 0.6) & (wide.hard.pass_scores <= 0.8)
    assert int(in_band.sum()) == len(narrow.hard)
    # The base model misclassifies every kept hard positive (they are adversarial, scaled by Y).
    base = toy_mlp()
    HardPositives(base=str(base_checkpoint)).setup(base, CPU)
    with torch.no_grad():
        assert bool((base(wide.hard.images.float() / 255).argmax(1) != wide.hard.labels).all())


def test_generation_subset_and_correct_only(base_checkpoint: Path) -> None:
    some = prepared(base_checkpoint, types="fgv", gen_examples=30, gen_seed=1, cache_dir="off")
    assert some.summary["images"] == 30 and set(some.hard.sources.tolist()) <= set(range(96))
    assert some.cache_file is None and some.generated
    other = prepared(base_checkpoint, types="fgv", gen_examples=30, gen_seed=2, cache_dir="off")
    assert set(some.hard.sources.tolist()) != set(other.hard.sources.tolist())
    everything = prepared(base_checkpoint, types="fgv", correct_only=False, cache_dir="off")
    assert everything.summary["attacked"] == 96


def test_an_empty_set_is_a_clear_error_before_training(base_checkpoint: Path, tmp_path: Path) -> None:
    defense = HardPositives(base=str(base_checkpoint), types="fgv", pass_low=-1.0, pass_high=-0.99,
                            cache_dir=str(tmp_path))
    with pytest.raises(RobustkitError, match=r"no hard positive was kept .* widen the PASS band") as info:
        train(toy_mlp(), toy_data(), defense, config())
    assert "\n" not in str(info.value)


# --- the cache ------------------------------------------------------------------------------------


@pytest.fixture
def attack_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records the name of every line-search attack that runs."""
    calls: list[str] = []
    original = LineSearchAttack.perturb

    def counting(self, *args, **kwargs):
        calls.append(self.display_name())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LineSearchAttack, "perturb", counting)
    return calls


def test_the_cache_is_reused_and_invalidated_by_a_parameter(base_checkpoint: Path, tmp_path: Path,
                                                            attack_calls: list[str]) -> None:
    first = prepared(base_checkpoint, types="fgv,hc-d-2")
    assert first.generated and attack_calls == ["fgv", "hotcold"]  # 96 images: one batch per type
    cache_file = first.cache_file
    assert cache_file.parent == tmp_path / "default-cache" / "hard-positives"  # $ROBUSTKIT_CACHE_DIR
    stamps = {p: p.stat().st_mtime_ns for p in cache_file.parent.iterdir()}
    assert len(stamps) == 2  # KEY.safetensors + KEY.json
    meta = json.loads(cache_file.read_text())
    assert meta["summary"]["total"] == len(first.hard) and meta["identity"]["types"] == ["FGV-1.05", "HC-D-2-1.05"]

    again = prepared(base_checkpoint, model_seed=99, types="fgv,hc-d-2")  # another init: the base overwrites it
    assert not again.generated and attack_calls == ["fgv", "hotcold"]  # nothing regenerated
    assert again.key == first.key and {p: p.stat().st_mtime_ns for p in cache_file.parent.iterdir()} == stamps
    for name in ("images", "labels", "kinds", "pass_scores", "sources"):
        assert torch.equal(getattr(again.hard, name), getattr(first.hard, name))
    assert again.summary["per_type"] == first.summary["per_type"]

    changed = prepared(base_checkpoint, types="fgv,hc-d-2", scale=1.1)
    assert changed.generated and changed.key != first.key and len(attack_calls) == 4
    assert len(list(cache_file.parent.iterdir())) == 4
    other_model = HardPositives(types="fgv,hc-d-2")  # no base: the model as handed over makes the set
    model = toy_mlp(5)
    other_model.prepare(model, toy_data(), CPU)
    assert other_model.generated and other_model.key not in (first.key, changed.key)


@pytest.mark.parametrize("damage", ["tensors", "json"])
def test_a_damaged_cache_entry_is_regenerated_with_a_warning(base_checkpoint: Path, damage: str,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    first = prepared(base_checkpoint, types="fgv")
    tensors = first.cache_file.with_suffix(".safetensors")
    if damage == "tensors":
        tensors.write_bytes(tensors.read_bytes()[:-7])
    else:
        first.cache_file.write_text("{ not json")
    capsys.readouterr()
    again = prepared(base_checkpoint, types="fgv")
    err = capsys.readouterr().err
    assert again.generated and "robustkit: warning: hard-positives: damaged cache entry" in err
    assert len(err.strip().splitlines()) == 1
    assert torch.equal(again.hard.images, first.hard.images)
    third = prepared(base_checkpoint, types="fgv")  # repaired
    assert not third.generated


# --- fine-tuning ----------------------------------------------------------------------------------


class RecordingHardPositives(HardPositives):
    """Remembers the weights the first batch sees, and the batch sizes the model is trained on."""

    def batch_loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor):
        if not hasattr(self, "first_weights"):
            self.first_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        out = super().batch_loss(model, images, labels)
        self.sizes = getattr(self, "sizes", []) + [(labels.shape[0], self.hard_count(labels.shape[0]))]
        return out


def test_fine_tuning_starts_from_the_base_checkpoint(base_checkpoint: Path) -> None:
    base_model = toy_mlp(42)
    load_weights(base_model, base_checkpoint)
    fresh = toy_mlp(1)
    assert not torch.equal(fresh.net[1].weight, base_model.net[1].weight)
    defense = RecordingHardPositives(base=str(base_checkpoint), types="fgv", cache_dir="off")
    result = train(fresh, toy_data(), defense, config(epochs=1))
    for name, value in base_model.state_dict().items():
        assert torch.equal(defense.first_weights[name], value), name
    assert all(k == round(n * 0.5 / 0.5) for n, k in defense.sizes)  # mix 0.5: as many hard as clean images
    row = result.metrics
    assert row["hp_total"] == len(defense.hard) and 0 < row["hp_kept_fraction"] <= 1 and 0 <= row["hp_acc"] <= 1

    class Other(nn.Module):
        spec = ModelSpec("another-model", {}, INFO)

    with pytest.raises(RobustkitError, match="holds a toy-mlp model, the model to fine-tune is another-model"):
        HardPositives(base=str(base_checkpoint)).setup(Other(), CPU)


def test_the_batch_loss_mixes_clean_images_and_hard_positives(base_checkpoint: Path) -> None:
    defense = prepared(base_checkpoint, types="fgv,hc-d-2", mix=0.2, cache_dir="off")
    model = toy_mlp(3).train()
    x, y = stack(take(toy_data().train, 16))
    torch.manual_seed(11)
    out = defense.batch_loss(model, x, y)
    torch.manual_seed(11)
    idx = torch.randint(len(defense.hard), (4,))  # round(16 * 0.2 / 0.8) = 4, drawn from the global generator
    hard_x = defense.hard.images[idx].float() / 255
    expected = F.cross_entropy(model(torch.cat([x, hard_x])), torch.cat([y, defense.hard.labels[idx]]))
    assert torch.allclose(out.loss, expected) and out.logits.shape == (16, 3) and out.loss.requires_grad
    assert set(out.metrics) == {"hp_acc", "hp_total", "hp_kept_fraction"}

    proportional = prepared(base_checkpoint, types="fgv,hc-d-2", mix=None, cache_dir="off")
    ratio = len(proportional.hard) / 96
    assert proportional.hard_count(16) == round(16 * ratio) and proportional.cost() == pytest.approx(1 + ratio)
    only = prepared(base_checkpoint, types="fgv", mix=1.0, cache_dir="off")
    out = only.batch_loss(model, x, y)
    assert only.hard_count(16) == 16 and out.logits is None
    plain = HardPositives(base=str(base_checkpoint), mix=0.0)
    plain.prepare(model, toy_data(), CPU)  # nothing to generate
    assert plain.hard is None and plain.hard_count(16) == 0
    assert torch.allclose(plain.batch_loss(model, x, y).loss, F.cross_entropy(model(x), y))


class InterruptedHardPositives(InterruptAt, HardPositives):
    """HardPositives that gets a Ctrl-C at a chosen batch."""


def test_resume_gives_exactly_the_straight_run(base_checkpoint: Path, tmp_path: Path) -> None:
    params = dict(base=str(base_checkpoint), types="fgv,hc-d-2", mix=0.25)
    straight = train(toy_mlp(), toy_data(64), InterruptedHardPositives(**params), config(tmp_path / "straight"))

    # Stop after epoch 1: Ctrl-C at the first batch of epoch 2 (64 images / 16 = 4 batches per epoch).
    with pytest.raises(RobustkitError):
        train(toy_mlp(), toy_data(64), InterruptedHardPositives(interrupt_at=5, **params), config(tmp_path / "split"))
    assert read_metadata(tmp_path / "split")["epoch"] == 1
    saved = load_training_state(tmp_path / "split")
    assert saved["hard_positives_key"] and saved["hard_positives"] > 0

    torch.manual_seed(999)  # a different global RNG state and model init: the base and the checkpoint decide
    resumed_defense = InterruptedHardPositives(**params)
    resumed = train(toy_mlp(seed=42), toy_data(64), resumed_defense, config(tmp_path / "split"))
    assert resumed.resumed_from == 1 and resumed.epochs_run == 2 and not resumed_defense.generated  # cached
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    strip = [{k: v for k, v in row.items() if "time" not in k} for row in resumed.history]
    assert strip == [{k: v for k, v in row.items() if "time" not in k} for row in straight.history]

    other = HardPositives(base=str(base_checkpoint), types="fgv,hc-d-2", mix=0.25)
    other.key = "another set"
    with pytest.raises(RobustkitError, match="trained on another hard-positive set"):
        other.load_state_dict(saved)


# --- the effect -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> ImageDataset:
    return make_host().datasets.create("digits", {}, root=None)


def digits_mlp(info: DatasetInfo, seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    return Classifier(net, Normalize(info.mean, info.std), ModelSpec("digits-mlp", {}, info))


def test_hard_positives_lower_the_error_on_held_out_adversarials(digits: ImageDataset, tmp_path: Path) -> None:
    settings = dict(batch_size=64, lr=3e-3, seed=0, device="cpu", val_examples=0)
    base = train(digits_mlp(digits.info), digits, Natural(), TrainConfig(epochs=10, **settings)).model
    save_checkpoint(tmp_path / "base", base)

    # Held out: FGV and HC-D-9 adversarials of the base model on test images (never trained on).
    x, y = stack(take(digits.test, 300))
    with torch.no_grad():
        right = base(x).argmax(1) == y
    x, y = x[right], y[right]
    held_out = []
    for attack in (FGV(report_pass=False), HotCold(rank=9, all_ranks=True, report_pass=False)):
        result = attack(base, x, y)
        ok = result.extra["success"]
        advs = result.extra["adversarials"][ok] if "adversarials" in result.extra else result.adversarial[ok]
        labels = y.unsqueeze(1).expand_as(ok)[ok] if ok.dim() == 2 else y[ok]
        held_out.append((advs, labels))
    assert all(len(labels) > 100 for _, labels in held_out)

    def errors(model: nn.Module) -> list[float]:
        model.eval()
        with torch.no_grad():
            return [float((model(a).argmax(1) != b).float().mean()) for a, b in held_out + [(x, y)]]

    tuned = {}
    for name, params in (("clean", {"mix": 0.0}), ("hard", {"types": "hc-d-9", "gen_examples": 150})):
        defense = HardPositives(base=str(tmp_path / "base.json"), **params)
        tuned[name] = errors(train(digits_mlp(digits.info, seed=5), digits, defense,
                                   TrainConfig(epochs=3, **settings)).model)
    before = errors(base)
    assert before[0] == before[1] == 1.0  # the base model misclassifies all its own adversarials
    for i in (0, 1):  # FGV, HC-D-9: much lower error than the base, and than clean fine-tuning on the same budget
        assert tuned["hard"][i] < before[i] - 0.5
        assert tuned["hard"][i] < tuned["clean"][i] - 0.15
    assert tuned["hard"][2] < 0.12  # clean test error stays small (base: about 4%)


# --- the command line -----------------------------------------------------------------------------


def test_cli_trains_hard_positives_from_a_base_checkpoint(tmp_path: Path) -> None:
    from robustkit.cli import cli

    runner = CliRunner()
    common = ["--model", "lenet", "--epochs", "1", "--val-examples", "20", "--batch-size", "64"]
    base = runner.invoke(cli, ["train", *common, "--defense", "natural", "--out", str(tmp_path / "base")],
                         catch_exceptions=False)
    assert base.exit_code == 0, base.output
    args = ["train", *common, "--defense", "hard-positives", "--param", f"base={tmp_path / 'base' / 'last.json'}",
            "--param", "types=fgv", "--param", "gen_examples=40", "--param", "pass_low=0.5",
            "--out", str(tmp_path / "hp")]
    result = runner.invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "hp" / "last.json").read_text())
    assert meta["defense"]["name"] == "hard-positives" and meta["defense"]["knob"] == "scale"
    assert meta["defense_cost"] == 2.0 and meta["metrics"]["hp_total"] > 0
    assert "hp_acc" in result.output
    bad = runner.invoke(cli, ["train", *common, "--defense", "hard-positives", "--param", "types=hc-q-1"])
    assert bad.exit_code == 2 and "unknown type 'hc-q-1'" in bad.output
