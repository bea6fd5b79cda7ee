"""A model robustkit never saw, through the CLI: a class in the user's own .py file with .pt/.safetensors
weights, or a TorchScript file; its normalization explicit (none unless told); fine-tuned by `train` and
reloaded by `attack CHECKPOINT`; named in a benchmark spec; every bad input one line and exit code 2."""

from __future__ import annotations

import importlib.util
import json
import pickle
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import safetensors.torch
import torch
from click.testing import CliRunner
from torch import nn

from robustkit import hookimpl
from robustkit.checkpoints import load_model, save_checkpoint
from robustkit.cli import cli
from robustkit.data import DatasetInfo, stack, take
from robustkit.host import get_host, make_host
from robustkit.models import Normalization, build_model

N = 150  # test images evaluated
CLEAN = "pgd eps=0.05 steps=1"  # a cheap attack: the tests are about the clean accuracy

MODEL_PY = '''
import torch
from torch import nn


class TinyCNN(nn.Module):
    """The user's own network: robustkit has never seen it."""

    def __init__(self, width: int = 4, classes: int = 10, tuple_out: bool = False):
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be at least 1, got {width}")
        self.conv = nn.Conv2d(1, width, 3, padding=1)
        self.head = nn.Linear(width * 16, classes)
        self.tuple_out = tuple_out

    def forward(self, x):
        x = nn.functional.max_pool2d(torch.relu(self.conv(x)), 2)
        out = self.head(x.flatten(1))
        return (out, x) if self.tuple_out else out


class Other(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(x.flatten(1))


def helper():
    return 1
'''


def run(*args: str):
    return CliRunner(env={"ROBUSTKIT_PROGRESS": "0"}).invoke(cli, [str(a) for a in args])


def import_file(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(f"test_user_models_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


def accuracy(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, mean: float = 0.0, std: float = 1.0) -> float:
    """Clean accuracy computed directly: the module on the images, in batches of 128 as the evaluation runs."""
    net.eval()
    with torch.no_grad():
        preds = torch.cat([net((images[i:i + 128] - mean) / std).argmax(1) for i in range(0, len(images), 128)])
    return int((preds == labels).sum()) / len(labels)


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    """The user's folder: net.py, weights as .pt, .safetensors and a wrapped .pth, a TorchScript file; and the
    accuracies computed directly on the first N digits test images."""
    folder = tmp_path_factory.mktemp("user")
    (folder / "net.py").write_text(MODEL_PY, encoding="utf-8")
    TinyCNN = import_file(folder / "net.py", "TinyCNN")
    digits = get_host().datasets.create("digits", {})
    torch.manual_seed(0)
    net = TinyCNN(width=4)
    x, y = stack(digits.train)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.02)
    for _ in range(25):  # brief full-batch training on [0, 1] images: well above chance, not perfect
        optimizer.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()
    net.eval()
    state = net.state_dict()
    torch.save(state, folder / "net.pt")
    safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, folder / "net.safetensors")
    torch.save({"model_state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, folder / "net.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(net, x[:2]), str(folder / "scripted.pt"))
    (folder / "broken.py").write_text("import torch\n\nclass Net(torch.nn.Module:\n    pass\n", encoding="utf-8")
    images, labels = stack(take(digits.test, N))
    info = digits.info
    return SimpleNamespace(
        folder=folder, py=folder / "net.py", net=net, info=info,
        none=accuracy(net, images, labels),
        dataset=accuracy(net, images, labels, info.mean[0], info.std[0]))


def attack_summary(tmp_path: Path, *options: str) -> tuple[dict, str]:
    out = tmp_path / "out"
    result = run("attack", *options, "--attack", CLEAN, "--n-examples", N, "--out", out, "--grid-examples", 0,
                 "--device", "cpu")  # the direct accuracies are computed on the CPU: the same arithmetic
    assert result.exit_code == 0, result.output
    return json.loads((out / "summary.json").read_text()), result.stderr


def test_the_trained_model_is_informative(user):
    assert 0.6 < user.none < 1.0 and user.none != user.dataset


@pytest.mark.parametrize("weights", ["net.pt", "net.safetensors", "net.pth"])
def test_own_class_with_weights_gives_its_own_clean_accuracy(user, tmp_path, weights):
    summary, stderr = attack_summary(tmp_path, "--model-file", f"{user.py}:TinyCNN", "--model-arg", "width=4",
                                     "--weights", user.folder / weights)
    assert summary["clean_accuracy"] == user.none
    assert "normalization: none (images in [0, 1] go to the model as is)" in stderr.splitlines()
    model = summary["model"]
    assert model["name"] == "net.py:TinyCNN" and model["params"] == {"width": 4}
    assert summary["normalization"] == {"mode": "none", "mean": None, "std": None}
    assert model["source"]["file"] == str(user.py.resolve()) and model["source"]["class"] == "TinyCNN"
    assert model["source"]["weights"] == str((user.folder / weights).resolve())


def test_torchscript_alone_gives_the_same_accuracy(user, tmp_path):
    summary, stderr = attack_summary(tmp_path, "--model-file", user.folder / "scripted.pt")
    assert summary["clean_accuracy"] == user.none
    assert summary["model"]["source"]["kind"] == "torchscript"
    assert "normalization: none" in stderr


def test_normalize_dataset_and_none_give_the_two_direct_accuracies(user, tmp_path):
    base = ["--model-file", f"{user.py}:TinyCNN", "--weights", user.folder / "net.pt"]
    with_dataset, stderr = attack_summary(tmp_path / "d", *base, "--normalize", "dataset")
    as_is, _ = attack_summary(tmp_path / "n", *base, "--normalize", "none")
    assert with_dataset["clean_accuracy"] == user.dataset
    assert as_is["clean_accuracy"] == user.none
    mean, std = user.info.mean[0], user.info.std[0]
    assert with_dataset["normalization"] == {"mode": "dataset", "mean": [mean], "std": [std]}
    assert any(line.startswith("normalization: dataset (digits mean") for line in stderr.splitlines())
    # The same numbers written out: MEAN/STD, one number for every channel.
    custom, _ = attack_summary(tmp_path / "c", *base, "--normalize", f"{mean}/{std}")
    assert custom["clean_accuracy"] == user.dataset and custom["normalization"]["mode"] == "custom"


def test_a_pt_carrying_code_is_refused_without_running_it(user, tmp_path):
    marker = tmp_path / "ran.txt"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"conv.weight": Payload()}, tmp_path / "evil.pt")
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"state_dict": Payload()}, f)
    assert not marker.exists()
    for name in ("evil.pt", "evil.pth"):
        result = run("attack", "--model-file", f"{user.py}:TinyCNN", "--weights", tmp_path / name, "--attack", CLEAN)
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "refused" in lines[0] and "nothing in it was run" in lines[0], lines
        assert not marker.exists()


def test_train_a_users_model_then_attack_its_checkpoint(user, tmp_path):
    py = tmp_path / "mine.py"  # a copy: this test edits it afterwards
    py.write_text(MODEL_PY, encoding="utf-8")
    out = tmp_path / "run"
    trained = run("train", "--model-file", f"{py}:TinyCNN", "--model-arg", "width=4", "--weights",
                  user.folder / "net.pt", "--defense", "pgd-at", "--param", "eps=0.1", "--param", "steps=2",
                  "--epochs", "1", "--val-examples", "50", "--device", "cpu", "--out", out)
    assert trained.exit_code == 0, trained.output
    assert "normalization: none (images in [0, 1] go to the model as is)" in trained.stderr
    meta = json.loads((out / "last.json").read_text())
    assert meta["normalization"]["mode"] == "none"
    assert meta["model"]["source"]["file"] == str(py.resolve()) and meta["model"]["params"] == {"width": 4}
    assert len(meta["model"]["source"]["sha256"]) == 64

    summary, stderr = attack_summary(tmp_path / "a", out / "last.json")
    assert summary["normalization"]["mode"] == "none" and summary["model"]["checkpoint"]
    reloaded = load_model(out / "last.json")
    digits = get_host().datasets.create("digits", {})
    images, labels = stack(take(digits.test, N))
    assert summary["clean_accuracy"] == accuracy(reloaded.net, images, labels)
    assert "changed since" not in stderr

    py.write_text(MODEL_PY + "\n# edited\n", encoding="utf-8")
    result = run("attack", out / "last.json", "--attack", CLEAN, "--n-examples", 20, "--grid-examples", 0)
    assert result.exit_code == 0, result.output
    warned = [line for line in result.stderr.splitlines() if "changed since" in line]
    assert len(warned) == 1 and str(py.resolve()) in warned[0]

    py.unlink()
    gone = run("attack", out / "last.json", "--attack", CLEAN)
    assert gone.exit_code == 2 and len(gone.stderr.strip().splitlines()) == 1 and "not found" in gone.stderr


def test_a_checkpoint_without_normalization_loads_with_the_datasets(tmp_path):
    """Checkpoints written before normalization was recorded: the dataset's, as before."""
    digits = get_host().datasets.create("digits", {})
    model = build_model(get_host(), "lenet", digits.info)
    assert model.spec.normalization.mode == "dataset"
    paths = save_checkpoint(tmp_path / "old", model)
    meta = json.loads(paths.meta.read_text())
    assert meta["normalization"]["mode"] == "dataset"
    del meta["normalization"]
    paths.meta.write_text(json.dumps(meta))
    loaded = load_model(paths.meta)
    assert loaded.spec.normalization.mode == "dataset"
    assert torch.equal(loaded.normalize.mean.flatten(), torch.tensor(digits.info.mean, dtype=torch.float32))


# --- registered models: the registry's fact, the network's attribute, --model-param --------------------------


class Plain(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, image_size: tuple[int, int]):
        super().__init__()
        self.fc = nn.Linear(in_channels * image_size[0] * image_size[1], num_classes)

    def forward(self, x):
        return self.fc(x.flatten(1))


@hookimpl
def register_models(register) -> None:
    register("plain", Plain)
    register("zoo-none", Plain, normalization="none")
    register("zoo-custom", Plain, normalization="0.5/0.25")


INFO = DatasetInfo("toy", num_classes=3, channels=3, image_size=(4, 4), mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.4))


@pytest.mark.parametrize("name, mode, mean", [
    ("plain", "dataset", (0.4, 0.5, 0.6)), ("zoo-none", "none", (0.0, 0.0, 0.0)),
    ("zoo-custom", "custom", (0.5, 0.5, 0.5)),
])
def test_the_registry_says_which_normalization_a_model_gets(name, mode, mean):
    host = make_host(plugins=[("zoo", SimpleNamespace(register_models=register_models))], entry_points=False)
    model = build_model(host, name, INFO)
    assert model.spec.normalization.mode == mode
    assert torch.allclose(model.normalize.mean.flatten(), torch.tensor(mean))
    explicit = build_model(host, name, INFO, normalization="dataset")  # the user's word wins
    assert explicit.spec.normalization.mode == "dataset"
    x = torch.rand(2, 3, 4, 4)
    if mode == "none":
        with torch.no_grad():
            assert torch.equal(model(x), model.net(x))


def test_registered_model_takes_model_param_and_weights(tmp_path):
    digits = get_host().datasets.create("digits", {})
    net = build_model(get_host(), "timm:test_resnet", digits.info).net
    torch.save(net.state_dict(), tmp_path / "resnet.pt")
    for options in (["--model-param", f"weights={tmp_path / 'resnet.pt'}"], ["--weights", tmp_path / "resnet.pt"]):
        result = run("attack", "--model", "timm:test_resnet", *options, "--attack", CLEAN, "--n-examples", 8,
                     "--grid-examples", 0)
        assert result.exit_code == 0, result.output
        assert "normalization: dataset (digits mean" in result.stderr


# --- a benchmark spec naming the user's model ------------------------------------------------------------


SPEC = """
name = "mine"
dataset = {{name = "digits"}}
model = {model}
training = {{epochs = 1, batch_size = 64}}
threat = {{norm = "linf", eps = 0.1}}

[[attacks]]
name = "pgd"
params = {{steps = 2}}

[[defenses]]
name = "natural"
"""


@pytest.mark.parametrize("model, name", [
    ('{file = "net.py", class = "TinyCNN", args = {width = 4}, weights = "net.safetensors"}', "net.py:TinyCNN"),
    ('{file = "net.py", class = "TinyCNN", normalize = "dataset"}', "net.py:TinyCNN"),
    ('{file = "scripted.pt"}', "scripted.pt"),
])
def test_a_spec_with_a_model_file_validates(user, model, name):
    spec = user.folder / "spec.toml"  # relative paths are read from the spec's folder
    spec.write_text(SPEC.format(model=model), encoding="utf-8")
    result = run("bench", "show", spec)
    assert result.exit_code == 0, result.output
    assert f"model {name}," in result.output


def test_spec_cells_name_the_model_by_content_not_place(user, tmp_path):
    from robustkit.bench.spec import load_spec, model_files

    model = '{file = "net.py", class = "TinyCNN", args = {width = 4}, weights = "net.pt"}'
    (user.folder / "spec2.toml").write_text(SPEC.format(model=model), encoding="utf-8")
    spec = load_spec(user.folder / "spec2.toml", get_host())
    moved = tmp_path / "moved"
    moved.mkdir()
    for name in ("net.py", "net.pt"):
        (moved / name).write_bytes((user.folder / name).read_bytes())
    (moved / "spec2.toml").write_text(SPEC.format(model=model), encoding="utf-8")
    again = load_spec(moved / "spec2.toml", get_host())
    assert [c.key for c in spec.cells()] == [c.key for c in again.cells()]
    assert model_files(again.model) == {"file": str((moved / "net.py").resolve()),
                                        "weights": str((moved / "net.pt").resolve())}
    assert "file" not in spec.cells()[0].settings["model"]


def test_a_benchmark_trains_and_evaluates_the_users_model(user, tmp_path):
    model = '{file = "net.py", class = "TinyCNN", args = {width = 4}, weights = "net.pt"}'
    spec = user.folder / "run.toml"
    spec.write_text(SPEC.format(model=model).replace("[[attacks]]", "evaluation = {n_examples = 40}\n"
                                                     "audit = {enabled = false}\n\n[[attacks]]"), encoding="utf-8")
    result = run("bench", "run", spec, "--out", tmp_path / "bench")
    assert result.exit_code == 0, result.output
    records = [json.loads(p.read_text()) for p in (tmp_path / "bench" / "cells").glob("*.json")]
    assert len(records) == 1
    assert records[0]["result"]["normalization"] == {"mode": "none", "mean": None, "std": None}
    assert records[0]["settings"]["model"]["sha256"] and "file" not in records[0]["settings"]["model"]
    described = json.loads((tmp_path / "bench" / "benchmark.json").read_text())
    assert described["model"]["name"] == "net.py:TinyCNN" and described["model"]["normalize"] == "none"


def test_a_registered_model_in_a_spec_may_say_its_normalization(tmp_path):
    from robustkit.bench.cells import build_spec_model
    from robustkit.bench.spec import load_spec

    for model, expected in (('{name = "lenet"}', None), ('{name = "lenet", normalize = "none"}', "none")):
        (tmp_path / "s.toml").write_text(SPEC.format(model=model), encoding="utf-8")
        spec = load_spec(tmp_path / "s.toml", get_host())
        settings = spec.cells()[0].settings["model"]
        if expected is None:  # as before: the keys of existing specs do not change
            assert settings == {"name": "lenet", "params": {}}
        else:
            assert settings["normalize"] == expected
        built = build_spec_model(get_host(), settings, get_host().datasets.create("digits", {}).info)
        assert built.spec.normalization.mode == (expected or "dataset")


def test_a_benchmark_whose_model_misfits_the_dataset_stops_before_any_cell(user, tmp_path):
    model = '{file = "net.py", class = "TinyCNN", args = {classes = 5}}'
    spec = user.folder / "misfit.toml"
    spec.write_text(SPEC.format(model=model), encoding="utf-8")
    result = run("bench", "run", spec, "--out", tmp_path / "bench")
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "$.model: net.py:TinyCNN returned shape (2, 5)" in lines[0] and "digits needs N x 10 logits" in lines[0]
    assert not (tmp_path / "bench" / "cells").exists()


@pytest.mark.parametrize("model, fragment", [
    ('{file = "net.py"}', "$.model.class: net.py is a Python file: name its model class too"),
    ('{file = "missing.py", class = "Net"}', "missing.py: file not found"),
    ('{file = "net.py", class = "TinyCNN", args = {widht = 4}}', "unexpected keyword argument 'widht'"),
    ('{file = "net.py", class = "TinyCNN", normalize = "1/0"}', "a std must be positive"),
    ('{file = "net.py", class = "TinyCNN", name = "x"}', "$.model"),
])
def test_a_bad_model_in_a_spec_is_one_line(user, model, fragment):
    spec = user.folder / "bad.toml"
    spec.write_text(SPEC.format(model=model), encoding="utf-8")
    result = run("bench", "show", spec)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and fragment in lines[0], result.output


# --- every bad input: one line, exit code 2 ------------------------------------------------------------------


def bad_cases(u: SimpleNamespace) -> list[tuple[str, list, str]]:
    py, folder = u.py, u.folder
    own = ["--model-file", f"{py}:TinyCNN"]
    return [
        ("missing-file", ["--model-file", f"{folder}/nowhere.py:Net"], "nowhere.py: file not found"),
        ("py-without-class", ["--model-file", str(py)], "name the class too, as"),
        ("syntax-error", ["--model-file", f"{folder}/broken.py:Net"], "broken.py: line 3: SyntaxError:"),
        ("unknown-class", ["--model-file", f"{py}:Nope"], "net.py has no 'Nope' (its nn.Module classes: Other, TinyCNN)"),
        ("not-a-module", ["--model-file", f"{py}:helper"], "net.py:helper is a function, not an nn.Module subclass"),
        ("bad-model-arg", [*own, "--model-arg", "widht=3"], "unexpected keyword argument 'widht'"),
        ("model-arg-not-k-v", [*own, "--model-arg", "width"], "--model-arg expects key=value"),
        ("constructor-raises", [*own, "--model-arg", "width=0"],
         "net.py:TinyCNN(width=0) failed at net.py line 12 (ValueError: width must be at least 1, got 0)"),
        ("wrong-output-shape", [*own, "--model-arg", "classes=5"],
         "net.py:TinyCNN returned shape (2, 5) for 2 digits images (2 x 1 x 8 x 8); digits needs N x 10 logits"),
        ("tuple-output", [*own, "--model-arg", "tuple_out=true"], "returned a tuple for 2 digits images"),
        ("weights-of-another-width", [*own, "--model-arg", "width=6", "--weights", folder / "net.pt"],
         "the weights do not fit net.py:TinyCNN (size mismatch for conv.weight"),
        ("weights-of-another-class", ["--model-file", f"{py}:Other", "--weights", folder / "net.pt"],
         "the keys do not match net.py:Other (missing fc.weight, fc.bias; unexpected conv.weight"),
        ("missing-weights", [*own, "--weights", folder / "nowhere.pt"], "--weights"),
        ("torchscript-as-weights", [*own, "--weights", folder / "scripted.pt"],
         "a TorchScript archive (code and weights), not a state dict; give it alone as --model-file"),
        ("state-dict-as-torchscript", ["--model-file", folder / "net.pt"],
         "a file saved with torch.save (a state dict holds weights, not the model's code), not a TorchScript"),
        ("torchscript-with-args", ["--model-file", folder / "scripted.pt", "--model-arg", "width=2"],
         "a TorchScript file takes no constructor arguments"),
        ("weights-for-lenet", ["--model", "lenet", "--weights", folder / "net.pt"],
         "--weights: model 'lenet' takes no weights"),
        ("model-arg-for-lenet", ["--model", "lenet", "--model-arg", "width=2"], "--model-arg sets the constructor"),
        ("model-param-for-own", [*own, "--model-param", "width=2"], "--model-param sets parameters of a registered"),
        ("model-and-model-file", [*own, "--model", "lenet"], "not several; got --model and --model-file"),
        ("normalize-channels", [*own, "--normalize", "1,2/3"],
         "--normalize 1,2/3: 2 mean values, but digits images have 1 channel"),
        ("normalize-std-zero", [*own, "--normalize", "0.5/0"], "a std must be positive"),
        ("normalize-garbage", [*own, "--normalize", "dataset2"], "give none, dataset, or MEAN/STD"),
        ("normalize-not-numbers", [*own, "--normalize", "a/b"], "the mean must be numbers"),
    ]


CASE_IDS = [case[0] for case in bad_cases(SimpleNamespace(py=Path("x.py"), folder=Path(".")))]


@pytest.mark.parametrize("case", CASE_IDS)
def test_bad_input_is_one_line_with_exit_code_2(user, case):
    _, argv, fragment = next(c for c in bad_cases(user) if c[0] == case)
    result = run("attack", *argv, "--attack", CLEAN)
    assert result.exit_code == 2, (result.output, result.exception)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and fragment in lines[0], result.stderr


def test_train_refuses_bad_model_options_in_one_line(user):
    for argv, fragment in ((["--model-file", f"{user.py}:TinyCNN", "--model-arg", "classes=3"], "needs N x 10"),
                           (["--model", "lenet", "--model-file", f"{user.py}:TinyCNN"], "not several"),
                           ([], "no model given: give --model NAME (e.g. madry-cnn) or your own model")):
        result = run("train", *argv, "--epochs", "1", "--out", user.folder / "never")
        lines = result.stderr.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1 and fragment in lines[0], result.output


def test_a_checkpoint_refuses_normalize_and_weights(user, tmp_path):
    digits = get_host().datasets.create("digits", {})
    paths = save_checkpoint(tmp_path / "ck", build_model(get_host(), "lenet", digits.info))
    for extra, fragment in ((["--normalize", "none"], "keeps the normalization it was trained with"),
                            (["--weights", user.folder / "net.pt"], "a CHECKPOINT holds its own weights")):
        result = run("attack", paths.meta, *extra, "--attack", CLEAN)
        lines = result.stderr.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1 and fragment in lines[0], result.output


def test_normalization_text_round_trips():
    norm = Normalization.parse("0.4914,0.4822,0.4465/0.2471,0.2435,0.2616")
    assert norm.mode == "custom" and Normalization.parse(norm.text()) == norm
    assert Normalization.coerce(norm.to_json()) == norm
    assert Normalization.coerce(None) is None and Normalization.parse(" None ").mode == "none"
    assert Normalization.parse("0.5/0.25").resolve(INFO).mean == (0.5, 0.5, 0.5)
