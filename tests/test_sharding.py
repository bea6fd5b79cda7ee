"""Sharded evaluation without a cluster: the shard plan, shards merged equal to one run exactly (an odd last batch
included), resuming from the shards kept on disk, refusals when merging, and the ``attack --eval-shards`` options.

The same evaluation on Ray tasks is in tests/test_ray.py.
"""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch
from click.testing import CliRunner

import robustkit.host as host_module
from robustkit.cli import cli
from robustkit.errors import RobustkitError
from robustkit.evaluation import evaluate
from robustkit.executors.local import LocalExecutor
from robustkit.host import make_host
from robustkit.sharding import SHARDS_DIR, evaluate_sharded, merge_shards, plan_shards
from robustkit.testing.toys import digit_like, small_cnn

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N, BATCH = 22, 4  # six batches, the last of two examples


@pytest.fixture(scope="module")
def host():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ROBUSTKIT_LOAD_PLUGINS", "")
        return make_host()


@pytest.fixture(scope="module")
def problem(host):
    """A model, examples it mostly gets right (labels are its own predictions, but for a few), and two attacks
    whose random starts depend on each batch's seed."""
    model = small_cnn(size=8)
    images = digit_like(N, size=8, seed=3)
    with torch.no_grad():
        labels = model(images).argmax(dim=1)
    labels[::7] = (labels[::7] + 1) % 10  # some examples wrong before any attack
    attacks = {"pgd": host.attacks.create("pgd", eps=0.3, steps=3, random_start=True),
               "square": host.attacks.create("square", eps=0.3, n_queries=20)}
    return model, images, labels, attacks


def one_run(problem):
    model, images, labels, attacks = problem
    return evaluate(model, (images, labels), attacks, batch_size=BATCH, seed=5)


def same(a, b) -> None:
    """Equal records and summaries, the seconds apart."""
    assert [r.to_dict() for r in a.records] == [r.to_dict() for r in b.records]

    def numbers(value):
        if isinstance(value, dict):
            return {k: numbers(v) for k, v in value.items() if "seconds" not in k}
        if isinstance(value, list):
            return [numbers(v) for v in value]
        return value

    assert numbers(a.summary()) == numbers(b.summary())
    assert {n: asdict(s)["robust_accuracy"] for n, s in a.attacks.items()} == \
        {n: asdict(s)["robust_accuracy"] for n, s in b.attacks.items()}


@pytest.mark.parametrize("n, batch, shards, expected", [
    (22, 4, 3, [range(0, 2), range(2, 4), range(4, 6)]),
    (22, 4, 4, [range(0, 2), range(2, 4), range(4, 5), range(5, 6)]),
    (5, 4, 10, [range(0, 1), range(1, 2)]),  # never more shards than batches
    (8, 4, 1, [range(0, 2)]),
])
def test_plan_shards_covers_every_batch_once(n, batch, shards, expected):
    assert plan_shards(n, batch, shards) == expected


@pytest.mark.parametrize("shards", [1, 3, 6])
def test_shards_merge_into_exactly_one_runs_result(problem, tmp_path, shards):
    model, images, labels, attacks = problem
    said = []
    result, where = evaluate_sharded(model, (images, labels), attacks, shards=shards, out_dir=tmp_path,
                                     executor=LocalExecutor(), batch_size=BATCH, seed=5, threads=1, say=said.append)
    same(result, one_run(problem))
    assert [w["batches"] for w in where] == [[r.start, r.stop] for r in plan_shards(N, BATCH, shards)]
    assert all(w["device"] == "cpu" for w in where)
    assert said[0].startswith(f"evaluation in {shards} shard(s) of whole batches, 0 already in ")
    assert len(list((tmp_path / SHARDS_DIR).rglob("*.json"))) == shards


def test_a_stopped_evaluation_resumes_from_its_shards(problem, tmp_path):
    model, images, labels, attacks = problem
    settings = dict(shards=3, out_dir=tmp_path, batch_size=BATCH, seed=5, threads=1)

    class StoppedAfterOne(LocalExecutor):
        def run_tasks(self, function, calls, shared, work, done):
            def first_then_stop(i, result, error):
                done(i, result, error)
                raise KeyboardInterrupt  # Ctrl-C once the first shard is kept

            super().run_tasks(function, calls, shared, work, first_then_stop)

    with pytest.raises(RobustkitError, match=r"^evaluation interrupted: 1 of 3 shards are kept in .*; rerun the same "
                                             r"command to continue$"):
        evaluate_sharded(model, (images, labels), attacks, executor=StoppedAfterOne(), **settings)
    ran = []

    class Counting(LocalExecutor):
        def run_tasks(self, function, calls, shared, work, done):
            ran.extend(call["batches"] for call in calls)
            super().run_tasks(function, calls, shared, work, done)

    said = []
    result, _ = evaluate_sharded(model, (images, labels), attacks, executor=Counting(), say=said.append, **settings)
    assert ran == [range(2, 4), range(4, 6)]
    assert said[0].startswith("evaluation in 3 shard(s) of whole batches, 1 already in ")
    same(result, one_run(problem))

    # Another evaluation (another seed) never reads these shards.
    other, _ = evaluate_sharded(model, (images, labels), attacks, executor=LocalExecutor(),
                                **{**settings, "seed": 6})
    assert len(list((tmp_path / SHARDS_DIR).iterdir())) == 2
    assert [r.to_dict() for r in other.records] == [r.to_dict() for r in evaluate(
        model, (images, labels), attacks, batch_size=BATCH, seed=6).records]


def test_merging_refuses_gaps_and_mixed_environments(problem, tmp_path):
    model, images, labels, attacks = problem
    evaluate_sharded(model, (images, labels), attacks, shards=3, out_dir=tmp_path, executor=LocalExecutor(),
                     batch_size=BATCH, seed=5, threads=1)
    shards = [json.loads(p.read_text()) for p in sorted((tmp_path / SHARDS_DIR).rglob("*.json"))]
    with pytest.raises(RobustkitError, match="the shards leave a gap or overlap at batch 2"):
        merge_shards([shards[0], shards[2]], attacks, {}, 5, 0.0)
    shards[1]["environment"] = {**shards[1]["environment"], "device": "cuda"}
    with pytest.raises(RobustkitError, match=r"shards 0-2 and 2-4 were computed in different numeric environments "
                                             r"\(device cpu vs cuda\)"):
        merge_shards(shards, attacks, {}, 5, 0.0)


def test_attack_command_in_shards_writes_one_runs_files(host, tmp_path):
    args = ["attack", "--model", "lenet", "--attack", "pgd eps=0.1 steps=2 random_start=true", "--n-examples", "22",
            "--batch-size", "4", "--threads", "1"]
    host_module._HOST = host
    plain = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "plain"), "--grid-examples", "0"])
    assert plain.exit_code == 0, plain.output
    sharded = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "sharded"), "--eval-shards", "4"])
    assert sharded.exit_code == 0, sharded.output
    assert "shard 4/4 done on" in sharded.output
    assert (tmp_path / "sharded" / "records.jsonl").read_bytes() == (tmp_path / "plain" / "records.jsonl").read_bytes()
    summary = json.loads((tmp_path / "sharded" / "summary.json").read_text())
    assert [s["batches"] for s in summary["shards"]] == [[0, 2], [2, 4], [4, 5], [5, 6]]
    assert not (tmp_path / "sharded" / "grid.png").exists()  # shards bring back no adversarial images


@pytest.mark.parametrize("extra, message", [
    (["--eval-shards", "2"], "Error: --eval-shards needs --out: finished shards are kept there (OUT/shards)"),
    (["--eval-shards", "2", "--out", "OUT", "--state", "STATE"], "Error: --state and --eval-shards: each shard is "
                                                                  "its own resumable piece; give one of them"),
    (["--executor", "ray", "--out", "OUT"], "Error: --executor ray runs an evaluation in shards: give --eval-shards K"),
    (["--eval-shards", "2", "--out", "OUT", "--jobs", "2"], "Error: No such option '--jobs'"),
    (["--eval-shards", "2", "--out", "OUT", "--address", "auto"], "Error: --address does not apply to --executor "
                                                                   "local (it takes no options here)"),
])
def test_attack_sharding_options_are_checked_in_one_line(host, tmp_path, extra, message):
    extra = [str(tmp_path / a) if a in ("OUT", "STATE") else a for a in extra]
    host_module._HOST = host
    result = CliRunner().invoke(cli, ["attack", "--model", "lenet", "--attack", "pgd eps=0.1 steps=1",
                                      "--n-examples", "4", *extra])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    (line,) = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert line.startswith(message)
