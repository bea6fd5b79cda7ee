"""A checkpoint's two kinds of weights (raw and their moving average) and a run's two checkpoints (best and
last): which one is loaded, by default and when asked, from Python and from ``robustkit attack``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import robustkit.host as host_module
from robustkit.checkpoints import (CheckpointPaths, chosen_checkpoint, load_model, load_weights, read_metadata,
                                   save_checkpoint)
from robustkit.cli import cli
from robustkit.errors import RobustkitError
from robustkit.host import make_host
from robustkit.models import build_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

HOST = make_host(entry_points=False)


def digits_model(seed: int):
    torch.manual_seed(seed)
    data = HOST.datasets.create("digits", {}, root=None)
    return build_model(HOST, "lenet", data.info)


def state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_ema_is_saved_beside_the_raw_weights_and_served_by_default(tmp_path: Path) -> None:
    raw, average = digits_model(0), digits_model(1)
    paths = save_checkpoint(tmp_path / "ckpt", raw, ema=average.state_dict(), ema_decay=0.999)
    assert paths.ema == tmp_path / "ckpt.ema.safetensors" and paths.ema.is_file()
    assert CheckpointPaths.of(paths.ema) == paths == CheckpointPaths.of(tmp_path / "ckpt.optim.safetensors")
    meta = read_metadata(paths.meta)
    assert meta["files"]["ema"] == "ckpt.ema.safetensors" and len(meta["files"]["ema_sha256"]) == 64
    assert meta["weights"] == {"raw": "ckpt.safetensors", "ema": "ckpt.ema.safetensors", "ema_decay": 0.999,
                               "default": "ema"}
    assert same(state(load_model(paths.meta, HOST)), state(average))
    assert same(state(load_model(paths.meta, HOST, kind="ema")), state(average))
    assert same(state(load_model(paths.meta, HOST, kind="raw")), state(raw))
    fresh = digits_model(2)
    assert load_weights(fresh, paths.meta, "raw")["weights"]["loaded"] == "raw" and same(state(fresh), state(raw))


def test_a_checkpoint_without_an_ema_serves_its_raw_weights_and_refuses_ema(tmp_path: Path) -> None:
    model = digits_model(0)
    save_checkpoint(tmp_path / "ckpt", model, ema=digits_model(1).state_dict())
    paths = save_checkpoint(tmp_path / "ckpt", model)  # saved again without: the old average must go
    assert not paths.ema.exists() and read_metadata(paths.meta)["weights"]["ema"] is None
    assert same(state(load_model(paths.meta, HOST)), state(model))
    with pytest.raises(RobustkitError, match="holds no EMA weights .*--weights-kind raw") as err:
        load_model(paths.meta, HOST, kind="ema")
    assert "\n" not in str(err.value)


def test_a_replaced_ema_file_is_caught_by_its_checksum(tmp_path: Path) -> None:
    paths = save_checkpoint(tmp_path / "ckpt", digits_model(0), ema=digits_model(1).state_dict())
    other = save_checkpoint(tmp_path / "other", digits_model(0), ema=digits_model(3).state_dict())
    paths.ema.write_bytes(other.ema.read_bytes())
    with pytest.raises(RobustkitError, match="does not match the checksum"):
        load_model(paths.meta, HOST)
    assert same(state(load_model(paths.meta, HOST, kind="raw")), state(digits_model(0)))  # the raw ones still load


def test_a_checkpoint_may_name_its_ema_file_only_beside_it(tmp_path: Path) -> None:
    paths = save_checkpoint(tmp_path / "ckpt", digits_model(0), ema=digits_model(1).state_dict())
    meta = json.loads(paths.meta.read_text())
    meta["files"]["ema"] = "../elsewhere.safetensors"
    paths.meta.write_text(json.dumps(meta))
    with pytest.raises(RobustkitError, match="files.ema is '../elsewhere.safetensors'"):
        read_metadata(paths.meta)


def test_chosen_checkpoint_refuses_what_is_not_there(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "last", digits_model(0))
    assert chosen_checkpoint(tmp_path) == tmp_path / "last.json"  # no selection recorded: the last epoch
    with pytest.raises(RobustkitError, match="no best checkpoint in .*--select last"):
        chosen_checkpoint(tmp_path, "best")
    meta = json.loads((tmp_path / "last.json").read_text())
    meta["selection"] = {"select": "best", "checkpoint": "best", "epoch": 1, "by": "val_pgd_acc"}
    (tmp_path / "last.json").write_text(json.dumps(meta))
    with pytest.raises(RobustkitError, match="selected its best epoch, but best.json is missing"):
        chosen_checkpoint(tmp_path)


def test_attack_chooses_the_epoch_and_the_weights(tmp_path: Path) -> None:
    from robustkit.training import TrainConfig, train

    data = HOST.datasets.create("digits", {}, root=None)
    torch.manual_seed(0)
    model = build_model(HOST, "lenet", data.info)
    defense = HOST.defenses.create("pgd-at", {"eps": 0.1, "steps": 1})
    config = TrainConfig(epochs=2, batch_size=128, seed=0, device="cpu", val_examples=64, val_eps=0.1, val_steps=1,
                         select="best", ema_decay=0.5, out_dir=tmp_path / "run")
    result = train(model, data, defense, config, host=HOST)
    host_module._HOST = HOST

    def attacked(*options: str) -> dict:
        out = tmp_path / "eval"
        done = CliRunner().invoke(cli, ["attack", str(tmp_path / "run"), *options, "--attack", "pgd eps=0.1 steps=2",
                                        "--n-examples", "16", "--out", str(out), "--threads", "1"])
        assert done.exit_code == 0, done.output
        return json.loads((out / "summary.json").read_text())["model"]

    kept = attacked()
    assert Path(kept["checkpoint"]).name == "best.json" and kept["epoch"] == result.selected_epoch
    assert kept["weights"] == "ema"
    last = attacked("--select", "last", "--weights-kind", "raw")
    assert Path(last["checkpoint"]).name == "last.json" and last["epoch"] == 2 and last["weights"] == "raw"
    refused = CliRunner().invoke(cli, ["attack", "--model", "lenet", "--select", "best", "--attack", "pgd"])
    assert refused.exit_code == 2 and "--select and --weights-kind choose among a CHECKPOINT's weights" in refused.output
