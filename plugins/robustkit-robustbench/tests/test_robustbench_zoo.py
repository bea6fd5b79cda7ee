"""RobustBench zoo models through the plugin: zoo-format checkpoints load strictly and give the zoo's logits.

How correctness is checked here, independently of the plugin's module code:

- Checkpoints are written by the generators below from the zoo's key names and shapes (read off
  ``robustbench/model_zoo/architectures/{wide_resnet,dm_wide_resnet,resnet}.py``), not from the plugin's models.
- Logits are compared with a functional re-implementation of each zoo forward pass (``F.conv2d`` /
  ``F.batch_norm`` over the checkpoint's tensors by name), at reduced widths and depths.
- Full-size key counts and parameter counts (checked once against RobustBench's own classes) are compared for
  every registered entry on the ``meta`` device, so the 267M-parameter WRN-70-16s are never materialized.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import pytest
import safetensors.torch
import torch
from click.testing import CliRunner
from torch.nn import functional as F

from robustkit.cli import cli
from robustkit.data import DatasetInfo
from robustkit.errors import ParameterError, RobustkitError
from robustkit.essentials.datasets import CIFAR10_MEAN as DATASET_MEAN, CIFAR10_STD as DATASET_STD
from robustkit.host import make_host
from robustkit.models import build_model
from robustkit.testing.contracts import check_model_outputs, registered
from robustkit_robustbench.zoo import ZOO, build_architecture, load_zoo_state, read_checkpoint

HOST = make_host()
CIFAR10 = DatasetInfo("cifar10", 10, 3, (32, 32), DATASET_MEAN, DATASET_STD)
ZOO_MEAN = (0.4914, 0.4822, 0.4465)  # dm_wide_resnet.py CIFAR10_MEAN / CIFAR10_STD
ZOO_STD = (0.2471, 0.2435, 0.2616)
State = dict[str, torch.Tensor]


# --- zoo-format checkpoints, from the zoo's key names -----------------------------------------------------


class Checkpoint:
    """Random tensors under the zoo's parameter names."""

    def __init__(self, seed: int = 0):
        self.state: State = {}
        self.gen = torch.Generator().manual_seed(seed)

    def conv(self, name: str, out: int, inp: int, k: int) -> None:
        self.state[f"{name}.weight"] = torch.randn(out, inp, k, k, generator=self.gen) * math.sqrt(2 / (inp * k * k))

    def bn(self, name: str, c: int) -> None:
        self.state[f"{name}.weight"] = 1 + 0.2 * torch.randn(c, generator=self.gen)
        self.state[f"{name}.bias"] = 0.1 * torch.randn(c, generator=self.gen)
        self.state[f"{name}.running_mean"] = 0.1 * torch.randn(c, generator=self.gen)
        self.state[f"{name}.running_var"] = 0.5 + torch.rand(c, generator=self.gen)
        self.state[f"{name}.num_batches_tracked"] = torch.tensor(100)

    def linear(self, name: str, out: int, inp: int) -> None:
        self.state[f"{name}.weight"] = torch.randn(out, inp, generator=self.gen) / math.sqrt(inp)
        self.state[f"{name}.bias"] = 0.1 * torch.randn(out, generator=self.gen)


def trades_wrn_state(depth: int, k: int, sub_block1: bool = False, classes: int = 10) -> State:
    """wide_resnet.py: conv1; block1..3 (and sub_block1).layer.<i>.{bn1,conv1,bn2,conv2[,convShortcut]}; bn1; fc."""
    ck, n = Checkpoint(), (depth - 4) // 6
    widths = [16, 16 * k, 32 * k, 64 * k]
    ck.conv("conv1", 16, 3, 3)
    groups = [("block1", 16, widths[1]), ("sub_block1", 16, widths[1])] if sub_block1 else [("block1", 16, widths[1])]
    groups += [("block2", widths[1], widths[2]), ("block3", widths[2], widths[3])]
    for group, cin, cout in groups:
        for i in range(n):
            p, c = f"{group}.layer.{i}", cin if i == 0 else cout
            ck.bn(f"{p}.bn1", c)
            ck.conv(f"{p}.conv1", cout, c, 3)
            ck.bn(f"{p}.bn2", cout)
            ck.conv(f"{p}.conv2", cout, cout, 3)
            if c != cout:
                ck.conv(f"{p}.convShortcut", cout, c, 1)
    ck.bn("bn1", widths[3])
    ck.linear("fc", classes, widths[3])
    return ck.state


def dm_wrn_state(depth: int, width: int, classes: int = 10) -> State:
    """dm_wide_resnet.py DMWideResNet: init_conv; layer.<g>.block.<i>.{batchnorm_0,conv_0,batchnorm_1,conv_1
    [,shortcut]}; batchnorm; logits."""
    ck, n = Checkpoint(1), (depth - 4) // 6
    widths = [16, 16 * width, 32 * width, 64 * width]
    ck.conv("init_conv", 16, 3, 3)
    for g in range(3):
        for i in range(n):
            p, c, cout = f"layer.{g}.block.{i}", widths[g] if i == 0 else widths[g + 1], widths[g + 1]
            ck.bn(f"{p}.batchnorm_0", c)
            ck.conv(f"{p}.conv_0", cout, c, 3)
            ck.bn(f"{p}.batchnorm_1", cout)
            ck.conv(f"{p}.conv_1", cout, cout, 3)
            if c != cout:
                ck.conv(f"{p}.shortcut", cout, c, 1)
    ck.bn("batchnorm", widths[3])
    ck.linear("logits", classes, widths[3])
    return ck.state


def resnet18_state(scale: int = 1, preact: bool = False, classes: int = 10) -> State:
    """resnet.py ResNet18 (conv1, bn1, layerN.i.{conv1,bn1,conv2,bn2[,shortcut.0,shortcut.1]}, linear) or
    PreActResNet18 (conv1, layerN.i.{bn1,conv1,bn2,conv2[,shortcut.0]}, linear)."""
    ck = Checkpoint(2)
    widths = [64 // scale, 128 // scale, 256 // scale, 512 // scale]
    ck.conv("conv1", widths[0], 3, 3)
    if not preact:
        ck.bn("bn1", widths[0])
    cin = widths[0]
    for stage, cout in enumerate(widths):
        for i in range(2):
            p, c, stride = f"layer{stage + 1}.{i}", cin if i == 0 else cout, (1 if stage == 0 or i else 2)
            if preact:
                ck.bn(f"{p}.bn1", c)
                ck.conv(f"{p}.conv1", cout, c, 3)
                ck.bn(f"{p}.bn2", cout)
                ck.conv(f"{p}.conv2", cout, cout, 3)
            else:
                ck.conv(f"{p}.conv1", cout, c, 3)
                ck.bn(f"{p}.bn1", cout)
                ck.conv(f"{p}.conv2", cout, cout, 3)
                ck.bn(f"{p}.bn2", cout)
            if stride != 1 or c != cout:
                ck.conv(f"{p}.shortcut.0", cout, c, 1)
                if not preact:
                    ck.bn(f"{p}.shortcut.1", cout)
        cin = cout
    ck.linear("linear", classes, widths[3])
    return ck.state


def dm_preact_state(scale: int = 1, classes: int = 10) -> State:
    """dm_wide_resnet.py DMPreActResNet-18: conv_2d; layer_<s>.<i>.{batchnorm_0,conv_2d_1,batchnorm_1,conv_2d_2
    [,shortcut (3x3)]}; batchnorm; logits."""
    ck = Checkpoint(3)
    widths = [64 // scale, 128 // scale, 256 // scale, 512 // scale]
    ck.conv("conv_2d", widths[0], 3, 3)
    cin = widths[0]
    for stage, cout in enumerate(widths):
        for i in range(2):
            p, c, stride = f"layer_{stage}.{i}", cin if i == 0 else cout, (1 if stage == 0 or i else 2)
            ck.bn(f"{p}.batchnorm_0", c)
            ck.conv(f"{p}.conv_2d_1", cout, c, 3)
            ck.bn(f"{p}.batchnorm_1", cout)
            ck.conv(f"{p}.conv_2d_2", cout, cout, 3)
            if stride != 1 or c != cout:
                ck.conv(f"{p}.shortcut", cout, c, 3)
        cin = cout
    ck.bn("batchnorm", widths[3])
    ck.linear("logits", classes, widths[3])
    return ck.state


# --- the zoo's forward passes, functionally --------------------------------------------------------------


def _bn(s: State, p: str, x: torch.Tensor) -> torch.Tensor:
    return F.batch_norm(x, s[f"{p}.running_mean"], s[f"{p}.running_var"], s[f"{p}.weight"], s[f"{p}.bias"],
                        training=False, eps=1e-5)


def _conv(s: State, p: str, x: torch.Tensor, stride: int = 1, padding: int = 1) -> torch.Tensor:
    return F.conv2d(x, s[f"{p}.weight"], stride=stride, padding=padding)


def _tf_same(x: torch.Tensor, stride: int) -> torch.Tensor:
    return F.pad(x, (1, 1, 1, 1) if stride == 1 else (0, 1, 0, 1))


def _normalize(x: torch.Tensor, mean: tuple | None, std: tuple | None) -> torch.Tensor:
    if mean is None:
        return x
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def ref_trades_wrn(s: State, x: torch.Tensor, mean: tuple | None = None, std: tuple | None = None) -> torch.Tensor:
    out = _conv(s, "conv1", _normalize(x, mean, std))
    for g, group in enumerate(("block1", "block2", "block3")):
        i = 0
        while f"{group}.layer.{i}.conv1.weight" in s:
            p, stride = f"{group}.layer.{i}", 2 if g and i == 0 else 1
            if f"{p}.convShortcut.weight" in s:  # width changes: both paths start from the activated input
                out = F.relu(_bn(s, f"{p}.bn1", out))
                residual = _conv(s, f"{p}.convShortcut", out, stride, 0)
                branch = _conv(s, f"{p}.conv1", out, stride)
            else:
                residual, branch = out, _conv(s, f"{p}.conv1", F.relu(_bn(s, f"{p}.bn1", out)), stride)
            out = residual + _conv(s, f"{p}.conv2", F.relu(_bn(s, f"{p}.bn2", branch)))
            i += 1
    out = F.avg_pool2d(F.relu(_bn(s, "bn1", out)), 8).flatten(1)  # the zoo's fixed 8x8 pool
    return F.linear(out, s["fc.weight"], s["fc.bias"])


def ref_dm_wrn(s: State, x: torch.Tensor, mean: tuple = ZOO_MEAN, std: tuple = ZOO_STD) -> torch.Tensor:
    out = _conv(s, "init_conv", _normalize(x, mean, std))
    for g in range(3):
        i = 0
        while f"layer.{g}.block.{i}.conv_0.weight" in s:
            p, stride = f"layer.{g}.block.{i}", 2 if g and i == 0 else 1
            act = F.silu(_bn(s, f"{p}.batchnorm_0", out))
            residual = _conv(s, f"{p}.shortcut", act, stride, 0) if f"{p}.shortcut.weight" in s else out
            branch = F.conv2d(_tf_same(act, stride), s[f"{p}.conv_0.weight"], stride=stride)
            out = residual + _conv(s, f"{p}.conv_1", F.silu(_bn(s, f"{p}.batchnorm_1", branch)))
            i += 1
    out = F.avg_pool2d(F.silu(_bn(s, "batchnorm", out)), 8).flatten(1)
    return F.linear(out, s["logits.weight"], s["logits.bias"])


def ref_resnet18(s: State, x: torch.Tensor, preact: bool = False, mean: tuple | None = None,
                 std: tuple | None = None) -> torch.Tensor:
    out = _conv(s, "conv1", _normalize(x, mean, std))
    if not preact:
        out = F.relu(_bn(s, "bn1", out))
    for stage in range(4):
        for i in range(2):
            p, stride = f"layer{stage + 1}.{i}", 2 if stage and i == 0 else 1
            projected = f"{p}.shortcut.0.weight" in s
            if preact:
                residual = _conv(s, f"{p}.shortcut.0", out, stride, 0) if projected else out
                branch = _conv(s, f"{p}.conv1", F.relu(_bn(s, f"{p}.bn1", out)), stride)
                out = residual + _conv(s, f"{p}.conv2", F.relu(_bn(s, f"{p}.bn2", branch)))
            else:
                residual = _bn(s, f"{p}.shortcut.1", _conv(s, f"{p}.shortcut.0", out, stride, 0)) if projected else out
                branch = F.relu(_bn(s, f"{p}.bn1", _conv(s, f"{p}.conv1", out, stride)))
                out = F.relu(residual + _bn(s, f"{p}.bn2", _conv(s, f"{p}.conv2", branch)))
    out = F.avg_pool2d(out, 4).flatten(1)  # the zoo's fixed 4x4 pool
    return F.linear(out, s["linear.weight"], s["linear.bias"])


def ref_dm_preact(s: State, x: torch.Tensor, mean: tuple = ZOO_MEAN, std: tuple = ZOO_STD) -> torch.Tensor:
    out = _conv(s, "conv_2d", _normalize(x, mean, std))
    for stage in range(4):
        for i in range(2):
            p, stride = f"layer_{stage}.{i}", 2 if stage and i == 0 else 1
            act = F.silu(_bn(s, f"{p}.batchnorm_0", out))
            residual = (F.conv2d(_tf_same(out, stride), s[f"{p}.shortcut.weight"], stride=stride)
                        if f"{p}.shortcut.weight" in s else out)
            branch = F.conv2d(_tf_same(act, stride), s[f"{p}.conv_2d_1.weight"], stride=stride)
            out = residual + _conv(s, f"{p}.conv_2d_2", F.silu(_bn(s, f"{p}.batchnorm_1", branch)))
    out = F.avg_pool2d(F.silu(_bn(s, "batchnorm", out)), 4).flatten(1)
    return F.linear(out, s["logits.weight"], s["logits.bias"])


# Per architecture, at reduced size: (a zoo entry using it, constructor overrides, checkpoint, reference forward).
AUGUSTIN_MEAN = (0.4913997551666284, 0.48215855929893703, 0.4465309133731618)
AUGUSTIN_STD = (0.24703225141799082, 0.24348516474564, 0.26158783926049628)
SMALL: dict[str, tuple[str, dict, Callable[[], State], Callable[[State, torch.Tensor], torch.Tensor]]] = {
    "trades-wrn": ("Standard", {"depth": 16, "widen_factor": 2},
                   lambda: trades_wrn_state(16, 2), ref_trades_wrn),
    "trades-wrn-sub_block1": ("Carmon2019Unlabeled", {"depth": 10, "widen_factor": 2},
                              lambda: trades_wrn_state(10, 2, sub_block1=True), ref_trades_wrn),
    "trades-wrn-normalized": ("Augustin2020Adversarial_34_10", {"depth": 10, "widen_factor": 1},
                              lambda: trades_wrn_state(10, 1),
                              lambda s, x: ref_trades_wrn(s, x, AUGUSTIN_MEAN, AUGUSTIN_STD)),
    "dm-wrn": ("Gowal2020Uncovering_70_16", {"depth": 16, "width": 2}, lambda: dm_wrn_state(16, 2), ref_dm_wrn),
    "resnet18": ("Sehwag2021Proxy_R18", {"width": 0.125}, lambda: resnet18_state(8), ref_resnet18),
    "preact-resnet18": ("Wong2020Fast", {"width": 0.125}, lambda: resnet18_state(8, preact=True),
                        lambda s, x: ref_resnet18(s, x, preact=True, mean=ZOO_MEAN, std=ZOO_STD)),
    "dm-preact-resnet": ("Rebuffi2021Fixing_R18_ddpm", {"channels_scale": 0.125}, lambda: dm_preact_state(8),
                         ref_dm_preact),
}


def _save(state: State, path: Path, wrap: str) -> Path:
    """Write ``state`` as the zoo's files come: plain, under ``state_dict`` with ``module.`` prefixes, or safetensors."""
    if wrap == "safetensors":
        safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, path)
    elif wrap == "state_dict+module":
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 100}, path)
    elif wrap == "model_state_dict":
        torch.save({"model_state_dict": state}, path)
    else:
        torch.save(state, path)
    return path


@pytest.mark.parametrize("wrap", ["state_dict+module", "plain", "safetensors", "model_state_dict"])
@pytest.mark.parametrize("arch", list(SMALL))
def test_zoo_checkpoint_loads_strictly_and_gives_the_zoo_logits(arch: str, wrap: str, tmp_path: Path) -> None:
    name, overrides, make_state, reference = SMALL[arch]
    state = make_state()
    path = _save(state, tmp_path / ("ckpt.safetensors" if wrap == "safetensors" else "ckpt.pt"), wrap)
    net = build_architecture(ZOO[name], **overrides).eval()
    assert set(net.state_dict()) == set(state)  # strict: every name of the zoo's, no other
    load_zoo_state(net, read_checkpoint(path, name), str(path), name, arch)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(net(x), reference(state, x), atol=1e-4, rtol=1e-4)


def test_old_checkpoints_without_batch_counters_load(tmp_path: Path) -> None:
    state = {k: v for k, v in trades_wrn_state(10, 1).items() if not k.endswith("num_batches_tracked")}
    net = build_architecture(ZOO["Standard"], depth=10, widen_factor=1)
    path = _save(state, tmp_path / "old.pt", "plain")
    load_zoo_state(net, read_checkpoint(path, "t"), str(path), "t", "WideResNet")
    assert torch.equal(net.fc.weight, state["fc.weight"])


# --- full size: every entry's architecture, on the meta device ---------------------------------------------


# (architecture, label, sub_block1) -> (state-dict keys, parameters), both counted on RobustBench's own classes.
FULL_SIZE = {
    ("trades-wrn", "WideResNet-28-10", False): (155, 36_479_194),
    ("trades-wrn", "WideResNet-28-10", True): (204, 38_119_866),
    ("trades-wrn", "WideResNet-34-10", False): (191, 46_160_474),
    ("trades-wrn", "WideResNet-34-10", True): (252, 48_262_586),
    ("trades-wrn", "WideResNet-34-20", False): (191, 184_531_674),
    ("trades-wrn", "WideResNet-34-20", True): (252, 192_883_066),
    ("trades-wrn", "WideResNet-70-16", False): (407, 266_796_506),
    ("dm-wrn", "WideResNet-28-10", False): (155, 36_479_194),
    ("dm-wrn", "WideResNet-34-20", False): (191, 184_531_674),
    ("dm-wrn", "WideResNet-70-16", False): (407, 266_796_506),
    ("resnet18", "ResNet-18", False): (122, 11_173_962),
    ("preact-resnet18", "PreActResNet-18", False): (102, 11_171_146),
    ("dm-preact-resnet", "PreActResNet-18", False): (107, 12_548_426),
}
# A few keys and shapes per architecture, transcribed from the zoo's definitions.
SAMPLE_KEYS = {
    "trades-wrn": {"conv1.weight": (16, 3, 3, 3), "block1.layer.0.convShortcut.weight": None,
                   "block3.layer.0.bn1.running_var": None, "bn1.num_batches_tracked": (), "fc.bias": (10,)},
    "dm-wrn": {"init_conv.weight": (16, 3, 3, 3), "layer.1.block.0.shortcut.weight": None,
               "layer.2.block.0.batchnorm_0.running_mean": None, "batchnorm.weight": None, "logits.bias": (10,)},
    "resnet18": {"conv1.weight": (64, 3, 3, 3), "bn1.weight": (64,), "layer2.0.shortcut.0.weight": (128, 64, 1, 1),
                 "layer4.0.shortcut.1.running_var": (512,), "linear.weight": (10, 512)},
    "preact-resnet18": {"conv1.weight": (64, 3, 3, 3), "layer1.0.bn1.weight": (64,),
                        "layer3.0.shortcut.0.weight": (256, 128, 1, 1), "linear.weight": (10, 512)},
    "dm-preact-resnet": {"conv_2d.weight": (64, 3, 3, 3), "layer_1.0.shortcut.weight": (128, 64, 3, 3),
                         "layer_3.1.conv_2d_2.weight": (512, 512, 3, 3), "batchnorm.running_var": (512,),
                         "logits.weight": (10, 512)},
}


@pytest.mark.parametrize("name", sorted(ZOO))
def test_every_entry_has_the_zoo_architecture_at_full_size(name: str) -> None:
    entry = ZOO[name]
    with torch.device("meta"):
        net = build_architecture(entry)
    state = net.state_dict()
    keys, params = FULL_SIZE[(entry.architecture, entry.label, bool(entry.arch_args.get("sub_block1")))]
    assert (len(state), sum(p.numel() for p in net.parameters())) == (keys, params)
    for key, shape in SAMPLE_KEYS[entry.architecture].items():
        assert key in state, key
        assert shape is None or tuple(state[key].shape) == shape, key
    assert not any(k in state for k in ("mu", "sigma", "mean", "std"))  # constants, not in zoo checkpoints
    assert ("sub_block1.layer.0.conv1.weight" in state) == bool(entry.arch_args.get("sub_block1"))


def test_registered_entries_and_their_facts() -> None:
    names = set(registered("model", plugin="robustbench", host=HOST))
    assert names == {f"robustbench:{n}" for n in ZOO} and len(names) >= 10
    assert {"robustbench:Standard", "robustbench:Carmon2019Unlabeled", "robustbench:Gowal2020Uncovering_70_16",
            "robustbench:Rebuffi2021Fixing_70_16_cutmix_extra", "robustbench:Gowal2020Uncovering"} <= names
    assert {ZOO[n].label for n in ZOO} >= {"WideResNet-28-10", "WideResNet-34-10", "WideResNet-34-20",
                                          "WideResNet-70-16", "PreActResNet-18", "ResNet-18"}
    assert any("l2" in e.results for e in ZOO.values())
    standard = HOST.models.get("robustbench:Standard")
    assert standard.info["architecture"] == "WideResNet-28-10" and standard.info["threat_models"] == ("linf", "l2")
    assert standard.info["linf"] == "eps 8/255: clean 94.78%, AutoAttack 0.00%"
    assert standard.info["source"][0] == "model_info/cifar10/Linf/Standard.json"
    assert HOST.models.get("robustbench:Carmon2019Unlabeled").info["linf"] == \
        "eps 8/255: clean 89.69%, AutoAttack 59.53%"
    gowal = HOST.models.get("robustbench:Gowal2020Uncovering").info
    assert gowal["normalization"] == "none" and gowal["inside_normalization"].startswith("inside")
    assert [p.name for p in standard.declared_params()] == ["weights"]


def test_models_list_shows_them() -> None:
    result = CliRunner().invoke(cli, ["models", "list", "robustbench:*"])
    assert result.exit_code == 0, result.output
    for name in ZOO:
        assert f"robustbench:{name} " in result.output
    assert "timm:" not in result.output and "wide-resnet " not in result.output


# --- through build_model: no dataset normalization in front, the zoo's logits ----------------------------


def test_no_dataset_normalization_in_front_of_a_zoo_model() -> None:
    """The zoo's models take [0, 1]: the robustkit wrapper's normalization must be the identity, not CIFAR's."""
    torch.manual_seed(0)
    model = build_model(HOST, "robustbench:Standard", CIFAR10).eval()
    assert HOST.models.get("robustbench:Standard").info["normalization"] == "none"
    assert torch.equal(model.normalize.mean.flatten(), torch.zeros(3))
    assert torch.equal(model.normalize.std.flatten(), torch.ones(3))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.net(x))


@pytest.mark.parametrize("name, wrap, make_state, reference", [
    ("Sehwag2021Proxy_R18", "state_dict+module", lambda: resnet18_state(), ref_resnet18),
    ("Rebuffi2021Fixing_R18_ddpm", "safetensors", lambda: dm_preact_state(), ref_dm_preact),
    ("Wong2020Fast", "plain", lambda: resnet18_state(preact=True),
     lambda s, x: ref_resnet18(s, x, preact=True, mean=ZOO_MEAN, std=ZOO_STD)),
])
def test_build_model_with_a_full_size_zoo_checkpoint(name: str, wrap: str, make_state, reference,
                                                     tmp_path: Path) -> None:
    state = make_state()
    path = _save(state, tmp_path / ("w.safetensors" if wrap == "safetensors" else "w.pt"), wrap)
    model = build_model(HOST, f"robustbench:{name}", CIFAR10, {"weights": str(path)}).eval()
    assert model.spec.params["weights"] == str(path)
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():  # images in [0, 1] straight into the zoo's forward pass
        torch.testing.assert_close(model(x), reference(state, x), atol=1e-4, rtol=1e-4)
    check_model_outputs(model, 3, 32)


# --- refusals, each in one line ---------------------------------------------------------------------------


class _CodeCarrier:
    """Unpickling this would run code: it creates the file named."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def test_a_pickle_carrying_code_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "Standard.pt"
    torch.save({"state_dict": trades_wrn_state(10, 1), "payload": _CodeCarrier(marker)}, path)
    with pytest.raises(RobustkitError, match="refused") as err:
        build_model(HOST, "robustbench:Standard", CIFAR10, {"weights": str(path)})
    message = str(err.value)
    assert "\n" not in message and str(path) in message and "exec" in message
    assert not marker.exists()
    # the control: an unsafe load does run it, so the refusal above is what kept the file from appearing
    control = tmp_path / "control"
    torch.save({"payload": _CodeCarrier(control)}, tmp_path / "control.pt")
    torch.load(tmp_path / "control.pt", weights_only=False)
    assert control.exists()


def test_missing_damaged_and_foreign_files(tmp_path: Path) -> None:
    def error(path: Path, name: str = "Standard") -> str:
        with pytest.raises(RobustkitError) as err:
            build_model(HOST, f"robustbench:{name}", CIFAR10, {"weights": str(path)})
        assert "\n" not in str(err.value) and str(path) in str(err.value)
        return str(err.value)

    assert "does not exist" in error(tmp_path / "nope.pt")
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    assert "cannot read" in error(text)
    good = _save(resnet18_state(), tmp_path / "r18.safetensors", "safetensors")
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(good.read_bytes()[:2000])
    assert "cannot read" in error(truncated, "Sehwag2021Proxy_R18")
    scalar = tmp_path / "scalars.pt"
    torch.save({"epoch": 3}, scalar)
    assert "no state dict" in error(scalar)
    # a ResNet-18 checkpoint given to a PreActResNet-18 entry: strict matching names the architecture and keys
    message = error(good, "Wong2020Fast")
    assert "PreActResNet-18 of resnet.py PreActResNet(PreActBlock)" in message
    assert "20 unexpected (bn1.bias, bn1.running_mean, bn1.running_var and 17 more)" in message
    assert "of another shape (layer2.0.bn1.weight: (128,) in the file, (64,) here)" in message


def test_strict_match_errors_name_the_odd_keys(tmp_path: Path) -> None:
    net = build_architecture(ZOO["Standard"], depth=10, widen_factor=2)
    carmon = trades_wrn_state(10, 2, sub_block1=True)
    with pytest.raises(RobustkitError, match="WideResNet-28-10") as err:
        load_zoo_state(net, carmon, "carmon.pt", "robustbench:Standard", "WideResNet-28-10")
    assert "unexpected (sub_block1.layer.0.bn1.weight" in str(err.value) and "missing" not in str(err.value)
    hundred = build_architecture(ZOO["Standard"], num_classes=100, depth=10, widen_factor=2)
    with pytest.raises(RobustkitError, match="the file has 10 classes, the dataset 100"):
        load_zoo_state(hundred, trades_wrn_state(10, 2), "w.pt", "robustbench:Standard", "WideResNet-28-10")


def test_normalization_constants_in_a_file_must_be_the_entrys(tmp_path: Path) -> None:
    """A state dict re-saved from a zoo model carries its mu/sigma buffers: fine when they are the entry's."""
    state = resnet18_state(8, preact=True)
    net = build_architecture(ZOO["Wong2020Fast"], width=0.125)
    same = {**state, "mu": torch.tensor(ZOO_MEAN).view(1, 3, 1, 1), "sigma": torch.tensor(ZOO_STD).view(1, 3, 1, 1)}
    load_zoo_state(net, same, "w.pt", "robustbench:Wong2020Fast", "PreActResNet-18")
    other = {**state, "mu": torch.full((1, 3, 1, 1), 0.5), "sigma": torch.full((1, 3, 1, 1), 0.5)}
    with pytest.raises(RobustkitError, match="normalizes with mu"):
        load_zoo_state(net, other, "w.pt", "robustbench:Wong2020Fast", "PreActResNet-18")
    plain = build_architecture(ZOO["Sehwag2021Proxy_R18"], width=0.125)
    with pytest.raises(RobustkitError, match="unexpected \\(mu"):
        load_zoo_state(plain, {**resnet18_state(8), "mu": same["mu"]}, "w.pt", "x", "ResNet-18")


def test_zoo_models_need_rgb_images_and_even_sizes_for_the_deepmind_ones() -> None:
    with pytest.raises(ParameterError, match="3-channel"):
        build_model(HOST, "robustbench:Sehwag2021Proxy_R18", DatasetInfo("d", 10, 1, (32, 32), (0.5,), (0.25,)))
    with pytest.raises(ParameterError, match="halve evenly"):
        build_architecture(ZOO["Gowal2020Uncovering_70_16"], image_size=(30, 30), depth=10, width=1)
