"""Resuming AutoAttack: a run killed inside a batch continues at the next sub-attack with the same numbers, in
``evaluate(state=...)``, in ``robustkit attack --state`` after a real SIGKILL, and the benchmark cell records
carry the per-sub-attack steps (their evaluation resumes through a state file of their own)."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import robustkit.host as host_module
from robustkit.bench.cells import run_cell
from robustkit.bench.spec import parse_spec
from robustkit.cli import cli
from robustkit.errors import RobustkitError
from robustkit.evaluation import EvaluationState, evaluate
from robustkit.host import make_host
from robustkit.models import Classifier, ModelSpec, Normalize
from robustkit_autoattack.autoattack import AutoAttack

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = dict(version="custom", steps=5, n_queries=30, n_target_classes=2)

# A small MLP for the digits' 8x8 images; the test trains it for a second so most examples are attacked.
MODEL_FILE = """\
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x):
        return self.layers(x)
"""

# About a second of work in six batches, in which APGD-CE, APGD-T and FAB-T each fool some examples.
SPEC = "autoattack eps=0.1 version=custom steps=2 n_queries=300 n_target_classes=3"


def tiny_model() -> Classifier:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    return Classifier(net, Normalize((0.5,), (0.25,)), ModelSpec("tiny-mlp")).eval()


def data(model: nn.Module, n: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:3] = (y[:3] + 1) % 10  # misclassified before any attack
    return x, y


def numbers(summary: dict) -> dict:
    """A summary without its wall times: what must not change when a run is resumed."""
    summary = json.loads(json.dumps(summary))
    summary.pop("seconds", None)
    for attack in summary["attacks"].values():
        attack.pop("seconds")
        for step in attack.get("steps", []):
            step.pop("seconds")
    return summary


def test_interrupted_inside_a_batch_resumes_at_the_next_sub_attack(tmp_path, monkeypatch):
    model = tiny_model()
    x, y = data(model)

    def suite():
        return {"aa": AutoAttack(eps=0.05, **FAST)}

    reference = evaluate(model, (x, y), suite(), batch_size=16, device="cpu", keep_examples=4)
    path = tmp_path / "aa.state"
    ran: list[str] = []
    kill = True
    real_build = AutoAttack.build

    def build(self, item, model, *args, **kwargs):  # stands in for a kill just before the 2nd batch's FAB-T
        if isinstance(model, nn.Linear):  # settings() reads the plan from objects built on a stand-in
            return real_build(self, item, model, *args, **kwargs)
        if kill and item["name"] == "fab-t" and ran.count("fab-t") == 1:
            raise KeyboardInterrupt
        ran.append(item["name"])
        return real_build(self, item, model, *args, **kwargs)

    monkeypatch.setattr(AutoAttack, "build", build)
    with pytest.raises(KeyboardInterrupt):
        evaluate(model, (x, y), suite(), batch_size=16, device="cpu", keep_examples=4, state=path)
    doc, tensors = EvaluationState(path).read()
    assert len(doc["batches"]) == 1 and doc["current"]["index"] == 1 and doc["current"]["done"] == []
    assert doc["current"]["partial"]["attack"] == "aa" and doc["current"]["partial"]["meta"]["next"] == 2
    assert {"partial/adversarial", "partial/robust", "partial/fooled_by"} <= set(tensors)

    ran.clear()
    kill = False
    resumed = evaluate(model, (x, y), suite(), batch_size=16, device="cpu", keep_examples=4, state=path)
    # Batch 2 starts at FAB-T, batch 3 runs the whole chain; batch 1 runs nothing.
    assert ran[:2] == ["fab-t", "square"] and ran[2:] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert numbers(resumed.summary()) == numbers(reference.summary())
    assert [r.to_dict() for r in resumed.records] == [r.to_dict() for r in reference.records]
    for name in ("aa",):
        assert torch.equal(resumed.examples.adversarial[name], reference.examples.adversarial[name])
    steps = resumed.attacks["aa"].steps
    assert [s["attack"] for s in steps] == ["apgd-ce", "apgd-t", "fab-t", "square"] and steps[0]["fooled"] > 0


def test_a_checkpoint_saved_by_other_settings_is_refused(tmp_path):
    model = tiny_model()
    x, y = data(model, n=8)
    attack = AutoAttack(eps=0.05, **FAST)

    class Saved:  # what evaluate hands over, here with progress saved by another eps
        def load(self):
            other = AutoAttack(eps=0.06, **FAST).fingerprint
            return ({"next": 1, "fingerprint": other},
                    {"adversarial": x.clone(), "robust": torch.ones(8, dtype=torch.bool),
                     "fooled_by": torch.full((8,), -1)})

        def save(self, meta, tensors):
            raise AssertionError("nothing runs before the refusal")

    attack.batch_checkpoint = Saved()
    with pytest.raises(RobustkitError, match="does not fit this batch or these settings"):
        attack(model, x, y)


# --- robustkit attack --state, killed with SIGKILL ----------------------------------------------------------


@pytest.fixture(scope="module")
def user_model(tmp_path_factory) -> tuple[Path, Path]:
    """``net.py`` and weights trained for a second on the digits (about 90% clean accuracy)."""
    folder = tmp_path_factory.mktemp("user-model")
    (folder / "net.py").write_text(MODEL_FILE, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("resume_test_net", folder / "net.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    net = module.Net()
    from robustkit.data import stack

    images, labels = stack(make_host().datasets.create("digits", {}, root=None).train)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(150):
        optimizer.zero_grad()
        nn.functional.cross_entropy(net(images), labels).backward()
        optimizer.step()
    torch.save(net.state_dict(), folder / "net.pt")
    return folder / "net.py", folder / "net.pt"


def attack_args(user_model: tuple[Path, Path], out: Path, state: Path | None, spec: str = SPEC) -> list[str]:
    file, weights = user_model
    args = ["attack", "--model-file", f"{file}:Net", "--weights", str(weights), "--dataset", "digits",
            "--n-examples", "96", "--batch-size", "16", "--attack", spec, "--grid-examples", "0", "--threads", "1",
            "--out", str(out)]
    return args + (["--state", str(state)] if state is not None else [])


def in_process(args: list[str]):
    host_module.reset_host()
    return CliRunner().invoke(cli, args)


def state_progress(path: Path) -> tuple[int, int]:
    """Finished batches, and sub-attacks saved in the batch in progress (0 while there is no whole file)."""
    try:
        doc, _ = EvaluationState(path).read()
    except RobustkitError:  # not written yet
        return 0, 0
    partial = (doc.get("current") or {}).get("partial")
    return len(doc["batches"]), partial["meta"]["next"] if partial else 0


def test_resumes_after_sigkill_with_the_numbers_of_an_uninterrupted_run(tmp_path, user_model):
    state = tmp_path / "run.state"
    killed_out, resumed_out = tmp_path / "killed", tmp_path / "resumed"
    env = {**os.environ, "ROBUSTKIT_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "robustkit", *attack_args(user_model, killed_out, state)]
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline, seen = time.monotonic() + 300, (0, 0)
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            seen = state_progress(state)
            if seen[0] >= 1 and seen[1] >= 1:  # a finished batch, and a sub-attack of the next one, on disk
                break
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    log = (tmp_path / "killed.log").read_text()
    assert proc.returncode == -signal.SIGKILL, f"the run ended ({proc.returncode}) before it was killed:\n{log}"
    assert seen[0] >= 1 and seen[1] >= 1 and not (killed_out / "summary.json").exists(), log
    left = state_progress(state)  # what the killed run left (it may have gone on a little after `seen`)

    # The same command again (here, in this process: a second start-up would double the test's time) continues
    # from the state file the killed process left.
    done = in_process(attack_args(user_model, resumed_out, state))
    assert done.exit_code == 0, done.output
    resuming = done.stderr.split(f"evaluate: resuming from {state}: ", 1)[1].splitlines()[0]
    assert resuming.startswith(f"{left[0]} batch")
    if left[1]:  # killed inside a batch: it restarts at the sub-attack after the last one saved
        assert "in progress" in resuming and "autoattack: resuming the batch after " in done.stderr

    reference = in_process(attack_args(user_model, tmp_path / "reference", None))
    assert reference.exit_code == 0, reference.output
    ours = json.loads((resumed_out / "summary.json").read_text())
    theirs = json.loads((tmp_path / "reference" / "summary.json").read_text())
    assert numbers(ours) == numbers(theirs)  # clean, robust, worst case, per-sub-attack counts
    steps = ours["attacks"]["autoattack"]["steps"]
    assert [s["attack"] for s in steps] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert steps[0]["attacked"] == ours["n_examples"] - ours["n_clean_wrong"] > 60 and steps[0]["fooled"] > 0
    assert sum(s["fooled"] for s in steps[1:]) > 0  # later sub-attacks' counts are compared too
    assert (resumed_out / "records.jsonl").read_text() == (tmp_path / "reference" / "records.jsonl").read_text()
    assert not list(tmp_path.glob(".run.state.*.tmp"))  # the killed write's temporary, if any, was cleaned

    # Finished: the same command again only reads the file (kept) and reports the same.
    again = in_process(attack_args(user_model, tmp_path / "again", state))
    assert again.exit_code == 0 and "every batch done" in again.stderr
    assert numbers(json.loads((tmp_path / "again" / "summary.json").read_text())) == numbers(theirs)


def test_cli_refuses_a_state_of_other_settings_and_a_damaged_one(tmp_path, user_model):
    state = tmp_path / "run.state"
    first = in_process(attack_args(user_model, tmp_path / "a", state, "autoattack eps=0.05 " + " ".join(
        f"{k}={v}" for k, v in FAST.items())))
    assert first.exit_code == 0, first.output
    other = in_process(attack_args(user_model, tmp_path / "b", state, "autoattack eps=0.06 " + " ".join(
        f"{k}={v}" for k, v in FAST.items())))
    assert other.exit_code == 2
    message = other.stderr.strip()
    assert len(message.splitlines()) == 1 and "Traceback" not in other.output
    assert f"state file {state} belongs to another evaluation" in message
    assert "attacks.autoattack.params.eps: 0.05 there, 0.06 now" in message and "delete the file" in message

    state.write_bytes(state.read_bytes()[:200])  # truncated, as a copy cut short would be
    damaged = in_process(attack_args(user_model, tmp_path / "c", state, "autoattack eps=0.05 " + " ".join(
        f"{k}={v}" for k, v in FAST.items())))
    assert damaged.exit_code == 2 and len(damaged.stderr.strip().splitlines()) == 1
    assert "is damaged or truncated" in damaged.stderr and "Traceback" not in damaged.output


# --- benchmark cells ---------------------------------------------------------------------------------------

CELL_SPEC = {
    "name": "aa-steps", "seeds": [0], "dataset": {"name": "digits"},
    "model": {"name": "lenet", "params": {"width": 0.25}},
    "training": {"epochs": 1, "batch_size": 64, "lr": 5e-3, "val_examples": 0},
    "threat": {"norm": "linf", "eps": 0.1},
    "evaluation": {"n_examples": 24, "batch_size": 12},
    "protocol": {"targets": [0.5]},
    "audit": {"enabled": False},
    "attacks": [{"name": "autoattack", "label": "aa",
                 "params": {"eps": 0.1, "version": "custom", "attacks": "apgd-ce,square", "steps": 3,
                            "n_queries": 20}}],
    "defenses": [{"name": "natural"}],
}


def test_bench_cell_records_carry_the_sub_attack_steps_and_drop_their_state(tmp_path):
    host = make_host()
    cell = parse_spec(CELL_SPEC, "aa-steps", host).cells()[0]
    saved: list[Path] = []
    real_save = EvaluationState.save

    def save(self, identity, run):
        saved.append(self.path)
        real_save(self, identity, run)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(EvaluationState, "save", save)
        record = run_cell(cell.settings, tmp_path, device="cpu", host=host, threads=1)
    facts = record["attacks"]["aa"]
    steps = facts["steps"]
    assert [s["attack"] for s in steps] == ["apgd-ce", "square"]
    n_correct = record["n_examples"] - record["n_clean_wrong"]
    assert steps[0]["attacked"] == n_correct and steps[1]["attacked"] == n_correct - steps[0]["fooled"]
    assert steps[-1]["robust_accuracy"] == pytest.approx(facts["robust_accuracy"])  # eps equals the threat's
    assert sum(s["fooled"] for s in steps) == facts["n_success"]
    json.dumps(record, allow_nan=False)  # the record stays plain JSON
    # The evaluation kept one state file, in the cell's training folder and named by the cell's key, rewritten
    # after each batch (two) and inside each after APGD-CE, and the cell removed it at the end.
    path = saved[0]
    assert len(saved) >= 4 and set(saved) == {path} and not path.exists()
    assert path.parent.parent == tmp_path / "train" and path.name == f"evaluation-{cell.key}.state"
