"""The executor interface without a cluster: the registry and its hook, a plugin's executor running a benchmark
through the CLI, option and device checks (one line, exit code 2), the ray executor without Ray installed, which
cells wait for which, the preflight comparison of nodes, and the resources a Ray cell asks for.

Ray itself is exercised in tests/test_ray.py.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
from click.testing import CliRunner

import robustkit.host as host_module
from robustkit import hookimpl
from robustkit.bench.runner import run_benchmark
from robustkit.bench.spec import load_spec
from robustkit.cli import cli
from robustkit.errors import RobustkitError
from robustkit.bench.runner import natural_dependencies
from robustkit.executors import CellWork, Executor
from robustkit.executors.preflight import check_nodes, path_fingerprint
from robustkit.executors.ray_executor import RayExecutor
from robustkit.host import make_host
from robustkit.store import ResultStore

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Natural plus PGD-AT at two eps, the audit's transfer check on (the PGD-AT cells reuse the natural weights).
SPEC = """\
name = "tiny-executors"
seeds = [0]
dataset = {name = "digits"}
model = {name = "lenet", params = {width = 0.25}}
training = {epochs = 1, batch_size = 64, lr = 5e-3, val_examples = 0}
threat = {norm = "linf", eps = 0.1}
evaluation = {n_examples = 24}
protocol = {targets = ["natural"]}
audit = {steps = 2, more_steps = 3}

[[attacks]]
name = "pgd"
label = "pgd"
params = {step_size = 0.04, steps = 2}

[[defenses]]
name = "natural"

[[defenses]]
name = "pgd-at"
params = {steps = 2}
sweep = [0.05, 0.1]
"""


@pytest.fixture(scope="module")
def host():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ROBUSTKIT_LOAD_PLUGINS", "")  # the essential set is all these tests use
        return make_host()


@pytest.fixture
def spec_file(tmp_path) -> Path:
    path = tmp_path / "spec.toml"
    path.write_text(SPEC, encoding="utf-8")
    return path


def invoke(host, args: list[str]):
    host_module._HOST = host  # the test environment fixture resets it after the test
    return CliRunner().invoke(cli, args)


def error_lines(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith("Error:")]


def test_the_essential_set_registers_local_and_ray(host):
    assert host.executors.names() == ["local", "ray"]
    assert {host.executors.get(n).plugin for n in ("local", "ray")} == {"executors"}
    assert host.records["executors"].registered == {"executor": ["local", "ray"]}
    assert [p.name for p in host.executors.get("ray").declared_params()] == ["address", "gpus_per_cell",
                                                                           "cpus_per_cell", "max_retries"]


class Reversed(Executor):
    """Runs the cells in this process in reverse order, after the natural cells they wait for."""

    name = "reversed"
    ran: list[str] = []

    def run_cells(self, cells, work, finished, host=None):
        waits = work.waits_for  # what the runner says each cell waits for
        order = sorted(reversed(cells), key=lambda c: c.key in waits)
        for cell in order:
            Reversed.ran.append(cell.key)
            finished(cell, work.run(cell.settings, host), None)


def test_a_plugins_executor_runs_the_benchmark_and_the_driver_writes_the_records(tmp_path, spec_file):
    plugin = types.SimpleNamespace(__name__="reversed-plugin",
                                   register_executors=hookimpl(lambda register: register("reversed", Reversed)))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ROBUSTKIT_LOAD_PLUGINS", "")
        host = make_host(plugins=[("reversed-plugin", plugin)])
    assert host.executors.get("reversed").plugin == "reversed-plugin"
    Reversed.ran = []
    out = tmp_path / "out"
    result = invoke(host, ["bench", "run", str(spec_file), "--out", str(out), "--executor", "reversed",
                           "--threads", "1", "--no-report"])
    assert result.exit_code == 0, result.output
    spec = load_spec(str(spec_file), host)
    keys = [c.key for c in spec.cells()]
    assert Reversed.ran == [keys[0], keys[2], keys[1]]  # natural first (both PGD-AT cells wait for it), then reversed
    assert {r["key"] for r in ResultStore(out)} == set(keys)
    assert "done 3/3" in result.output

    # The same numbers as the default executor, which runs them in spec order.
    local = tmp_path / "local"
    assert not run_benchmark(spec, local, host, threads=1, say=lambda line: None).failed
    ours = {r["key"]: json.dumps(r["result"]["outcomes"]) for r in ResultStore(out)}
    theirs = {r["key"]: json.dumps(r["result"]["outcomes"]) for r in ResultStore(local)}
    assert ours == theirs


@pytest.mark.parametrize("args, message", [
    (["--address", "auto"], "Error: --address does not apply to --executor local (it takes --jobs)"),
    (["--executor", "ray", "--jobs", "2"], "Error: --jobs does not apply to --executor ray (it takes --address, "
                                           "--cpus-per-cell, --gpus-per-cell, --max-retries)"),
    (["--executor", "rya"], "Error: unknown executor 'rya'; did you mean ray? run `robustkit plugins` to see them all"),
    (["--executor", "ray", "--device", "cuda:1"], "Error: --device cuda:1 with --executor ray: a cell sees only the "
                                                  "GPUs Ray gives it, as cuda; use --device cuda or auto (and "
                                                  "--gpus-per-cell)"),
    (["--executor", "ray", "--gpus-per-cell", "-1"], "Error: Invalid value for '--gpus-per-cell': -1.0 is not in the "
                                                     "range x>=0."),
])
def test_executor_options_are_checked_in_one_line(host, tmp_path, spec_file, args, message):
    pytest.importorskip("ray")  # without Ray, every ray case says that instead (below)
    result = invoke(host, ["bench", "run", str(spec_file), "--out", str(tmp_path / "out"), *args])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    (line,) = error_lines(result)
    assert line.startswith(message)
    assert not (tmp_path / "out" / "cells").exists()


def test_without_ray_the_ray_executor_names_the_extra(host, tmp_path, spec_file, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as when it is not installed
    result = invoke(host, ["bench", "run", str(spec_file), "--out", str(tmp_path / "out"), "--executor", "ray"])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert error_lines(result) == ["Error: --executor ray needs Ray, which is not installed here: "
                                   "pip install 'robustkit[ray]'"]


def test_cells_wait_for_the_natural_cell_only_when_they_use_its_weights(host, tmp_path):
    spec = load_spec(str(_write(tmp_path, SPEC)), host)
    natural, low, high = spec.cells()
    assert natural_dependencies(spec.cells()) == {low.key: natural.key, high.key: natural.key}
    assert natural_dependencies([low, high]) == {}  # the natural cell is recorded already: nothing to wait for
    no_audit = load_spec(str(_write(tmp_path, SPEC.replace("audit = {steps = 2, more_steps = 3}",
                                                             "audit = {enabled = false}"))), host)
    assert natural_dependencies(no_audit.cells()) == {}
    no_transfer = load_spec(str(_write(tmp_path, SPEC.replace("more_steps = 3}", "more_steps = 3, transfer = false}"))),
                            host)
    assert natural_dependencies(no_transfer.cells()) == {}


# --- a cell in steps (bench run --eval-shards K) ---------------------------------------------------------

#: SPEC evaluated in batches of 5: five batches, the last of four.
SHARDED = SPEC.replace("evaluation = {n_examples = 24}", "evaluation = {n_examples = 24, batch_size = 5}")


def recorded(out: Path) -> dict[str, dict]:
    """Every record of ``out``: timings, where the shards ran and the output folder's path left out."""
    def numbers(value):
        if isinstance(value, dict):
            return {k: numbers(v) for k, v in value.items()
                    if "seconds" not in k and "time" not in k and k not in ("evaluation_shards", "checkpoint")}
        if isinstance(value, list):
            return [numbers(v) for v in value]
        return value

    return {r["key"]: numbers(r["result"]) for r in ResultStore(out)}


@pytest.fixture(scope="module")
def whole_cells(host, tmp_path_factory) -> tuple[Path, Path]:
    """SHARDED's spec file and its cells' records, each cell run whole."""
    spec = _write(tmp_path_factory.mktemp("sharded"), SHARDED)
    out = spec.parent / "whole"
    assert not run_benchmark(load_spec(str(spec), host), out, host, threads=1, say=lambda line: None).failed
    return spec, out


@pytest.mark.parametrize("shards", [3, 7])  # 7: more shards than batches, the extra ones have nothing to do
def test_cells_with_their_evaluation_in_shards_record_what_whole_cells_record(host, whole_cells, tmp_path, shards):
    spec, whole = whole_cells
    out = tmp_path / "out"
    result = invoke(host, ["bench", "run", str(spec), "--out", str(out), "--eval-shards", str(shards), "--threads", "1",
                           "--no-report"])
    assert result.exit_code == 0, result.output
    assert f"3 to run with 1 torch thread(s) each, each evaluation in {shards} shards" in result.output
    assert recorded(out) == recorded(whole)
    for r in ResultStore(out):
        where = r["result"]["evaluation_shards"]
        assert [s["batches"] for s in where] == [[0, 2], [2, 4], [4, 5]] if shards == 3 else [[i, i + 1] for i in range(5)]
        assert {s["device"] for s in where} == {"cpu"}
    assert not list(out.glob("train/*/shards"))  # the records hold the shards now


def keep_one_shard(host, spec, out: Path, index: int) -> Path:
    """Train the spec's first cell and evaluate its shard ``index`` of 3 into ``out``, as a killed run leaves it;
    return the kept shard's file."""
    import robustkit.bench.cells as cells

    first = spec.cells()[0]
    work = CellWork(out, "cpu", 1, None, None, steps=cells.CELL_STEPS, pieces=3)
    prepared = work.call(cells.prepare_cell, first.settings, host)
    work.call(cells.evaluate_cell_shard, first.settings, host, prepared=prepared, index=index, count=3)
    (kept,) = out.glob("train/*/shards/*/*.json")
    return kept


def test_a_cell_in_steps_resumes_from_its_finished_shards(host, whole_cells, tmp_path, monkeypatch):
    import robustkit.bench.cells as cells

    spec_path, whole = whole_cells
    spec = load_spec(str(spec_path), host)
    out = tmp_path / "out"
    keep_one_shard(host, spec, out, index=1)  # then the run was killed

    computed = []

    def counted(*args, **kwargs):
        computed.append(args[5])  # the batches
        return evaluate_batches(*args, **kwargs)

    evaluate_batches = cells.evaluate_batches
    monkeypatch.setattr(cells, "evaluate_batches", counted)
    summary = run_benchmark(spec, out, host, threads=1, eval_shards=3, say=lambda line: None)
    assert not summary.failed
    assert len(computed) == 3 * 3 - 1 and computed.count(range(2, 4)) == 2  # the first cell's shard 2 was kept
    assert recorded(out) == recorded(whole)


def test_a_kept_shard_of_another_numeric_environment_is_refused_not_merged(host, whole_cells, tmp_path):
    import shutil

    spec_path, whole = whole_cells
    spec = load_spec(str(spec_path), host)
    out = tmp_path / "out"
    kept = keep_one_shard(host, spec, out, index=0)
    shard = json.loads(kept.read_text())
    shard["environment"]["cpu_capability"] = "ANOTHER"  # as if computed on another kind of CPU
    kept.write_text(json.dumps(shard))

    summary = run_benchmark(spec, out, host, threads=1, eval_shards=3, say=lambda line: None)
    (error,) = summary.failed.values()
    assert error.startswith("the shards of this cell's evaluation ran in another numeric environment than its last "
                            "step (cpu_capability ") and error.endswith(f"delete {kept.parent} to recompute them")
    shutil.rmtree(kept.parent)  # as the message says
    assert not run_benchmark(spec, out, host, threads=1, eval_shards=3, say=lambda line: None).failed
    assert recorded(out) == recorded(whole)


def test_eval_shards_below_one_is_refused_in_one_line(host, tmp_path, spec_file):
    result = invoke(host, ["bench", "run", str(spec_file), "--out", str(tmp_path / "out"), "--eval-shards", "0"])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    (line,) = error_lines(result)
    assert line.startswith("Error: Invalid value for '--eval-shards': 0 is not in the range x>=1.")
    with pytest.raises(RobustkitError, match="--eval-shards must be at least 1, got 0"):
        run_benchmark(load_spec(str(spec_file), host), tmp_path / "out", host, eval_shards=0, say=lambda line: None)


def _write(folder: Path, text: str) -> Path:
    path = folder / "variant.toml"
    path.write_text(text, encoding="utf-8")
    return path


# --- the preflight comparison of nodes ----------------------------------------------------------------

ENV = {"device": "cpu", "threads": 1, "dtype": "float32", "torch": "2.4.1", "cpu_capability": "AVX2"}


def facts(**changes):
    base = {"node": "a", "versions": {"robustkit": "0.1.0", "python": "3.11.7", "torch": "2.4.1",
                                      "plugin hotcold": "0.1.0"},
            "data_root": "3 files, names and sizes 0123", "model_files": {"weights": "file sha256 ab"},
            "environment": dict(ENV),
            "output_folder": "seen", "where": "10.0.0.2 (gpu-2)"}
    return {**base, **changes}


def test_check_nodes_returns_the_common_environment():
    driver = {k: v for k, v in facts().items() if k not in ("output_folder", "where", "environment")}
    assert check_nodes(driver, [facts(), facts(where="10.0.0.3", environment=None)], Path("/out"), "/data") == ENV


@pytest.mark.parametrize("node, message", [
    (facts(versions={"robustkit": "0.1.0", "python": "3.11.7", "torch": "2.3.0", "plugin hotcold": "0.1.0"}),
     "node 10.0.0.2 (gpu-2) differs from this machine in torch: 2.3.0 there, 2.4.1 here; install the same "
     "robustkit, plugins, torch and Python on every node"),
    (facts(versions={"robustkit": "0.1.0", "python": "3.11.7", "torch": "2.4.1"}),
     "node 10.0.0.2 (gpu-2) differs from this machine in plugin hotcold: not installed there, 0.1.0 here"),
    (facts(output_folder="missing"), "node 10.0.0.2 (gpu-2) cannot read the output folder /out: a run on several "
                                     "machines needs an --out folder every node mounts at the same path"),
    (facts(output_folder="another folder"), "node 10.0.0.2 (gpu-2) sees another folder at the output folder /out"),
    (facts(data_root="missing"), "node 10.0.0.2 (gpu-2) has no data root /data; every node needs the same dataset"),
    (facts(data_root="2 files, names and sizes 9999"), "node 10.0.0.2 (gpu-2) holds other files in the data root "
                                                       "/data (2 files, names and sizes 9999 vs 3 files"),
    (facts(model_files={"weights": "missing"}), "node 10.0.0.2 (gpu-2): the model's weights is missing there"),
])
def test_check_nodes_names_the_node_that_differs(node, message):
    driver = {k: v for k, v in facts().items() if k not in ("output_folder", "where")}
    with pytest.raises(RobustkitError) as caught:
        check_nodes(driver, [facts(where="10.0.0.1"), node], Path("/out"), "/data")
    assert message in str(caught.value)


@pytest.mark.parametrize("environment, difference", [
    ({**ENV, "cpu_capability": "AVX512"}, "cpu_capability AVX2 vs AVX512"),  # the same CPU cell, other rounding
    ({**ENV, "device": "cuda", "cudnn_deterministic": True, "gpu": "NVIDIA H100"}, "device cpu vs cuda"),
    ({**ENV, "threads": 2}, "threads 1 vs 2"),
])
def test_check_nodes_refuses_nodes_that_would_compute_differently(environment, difference):
    driver = {k: v for k, v in facts().items() if k not in ("output_folder", "where")}
    other = facts(where="10.0.0.3", environment=environment)
    with pytest.raises(RobustkitError) as caught:
        check_nodes(driver, [facts(), other], Path("/out"), None)
    assert str(caught.value) == (f"node 10.0.0.3 would compute with another numeric environment than node 10.0.0.2 "
                                 f"(gpu-2) ({difference}); give every node the same hardware kind and software, or "
                                 "run on one kind")


def test_the_numeric_environment_states_the_cpus_instruction_set():
    import torch

    from robustkit.devices import environment_difference, numeric_environment

    env = numeric_environment(torch.device("cpu"), 1)
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    # Records made before a field was recorded do not differ in it; a field both state does.
    older = {k: v for k, v in env.items() if k != "cpu_capability"}
    assert environment_difference(older, env) is None
    assert environment_difference(env, {**env, "cpu_capability": "DEFAULT"}) == \
        f"cpu_capability {env['cpu_capability']} vs DEFAULT"


def test_path_fingerprint_sees_names_and_sizes(tmp_path):
    assert path_fingerprint(str(tmp_path / "nowhere")) == "missing"
    (tmp_path / "data" / "a").mkdir(parents=True)
    (tmp_path / "data" / "a" / "x.bin").write_bytes(b"12345")
    (tmp_path / "data" / "y.bin").write_bytes(b"1")
    first = path_fingerprint(str(tmp_path / "data"))
    assert first.startswith("2 files, names and sizes ")
    assert path_fingerprint(str(tmp_path / "data")) == first
    (tmp_path / "data" / "y.bin").write_bytes(b"12")
    assert path_fingerprint(str(tmp_path / "data")) != first
    assert path_fingerprint(str(tmp_path / "data" / "y.bin")).startswith("file sha256 ")


# --- what a Ray cell asks for (checked before any task starts) --------------------------------------


def node(cpus: float, gpus: float = 0) -> dict:
    return {"Resources": {"CPU": cpus, **({"GPU": gpus} if gpus else {})}}


def work(device: str = "auto", threads: int = 1) -> CellWork:
    return CellWork(Path("out"), device, threads, None, None, lambda *a, **k: {})


@pytest.mark.parametrize("options, nodes, device, expected", [
    ({}, [node(4)], "auto", (1.0, 0.0)),  # no GPU anywhere: CPU cells
    ({}, [node(4), node(8, 2)], "auto", (1.0, 1.0)),  # GPUs somewhere: one each by default
    ({}, [node(8, 2)], "cpu", (1.0, 0.0)),
    ({"gpus_per_cell": 0.5, "cpus_per_cell": 3}, [node(4, 1)], "cuda", (3.0, 0.5)),
])
def test_ray_cell_resources(options, nodes, device, expected):
    assert RayExecutor(**options)._cell_resources(nodes, work(device)) == expected


@pytest.mark.parametrize("options, nodes, device, threads, message", [
    ({"gpus_per_cell": 3}, [node(8, 2), node(8, 1)], "auto", 1,
     "--gpus-per-cell 3: the Ray cluster has at most 2 GPU(s) on one node; lower --gpus-per-cell or add GPUs"),
    ({"gpus_per_cell": 1}, [node(8)], "auto", 1, "--gpus-per-cell 1: the Ray cluster has no GPU"),
    ({"gpus_per_cell": 1}, [node(8, 1)], "cpu", 1, "--gpus-per-cell 1 with --device cpu: the cells would hold GPUs"),
    ({}, [node(8)], "cuda", 1, "--device cuda: the cells hold no GPU"),
    ({}, [node(2), node(4)], "auto", 8, "--cpus-per-cell 8: no node of the Ray cluster has 8 CPUs (at most 4); "
                                        "lower --cpus-per-cell, or --threads, which it defaults to"),
])
def test_ray_cells_that_no_node_can_hold_fail_fast(options, nodes, device, threads, message):
    with pytest.raises(RobustkitError) as caught:
        RayExecutor(**options)._cell_resources(nodes, work(device, threads))
    assert str(caught.value).startswith(message)


def test_an_address_where_nothing_listens_fails_at_once_in_one_line():
    import socket

    from robustkit.executors.ray_executor import _check_listening

    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        _check_listening(f"127.0.0.1:{port}")  # a head node's port answers: Ray goes on to join it
    with pytest.raises(RobustkitError, match=rf"nothing answers at --address 127.0.0.1:{port} .*ray start --head"):
        _check_listening(f"127.0.0.1:{port}")  # closed now: refused at once, not after Ray's minutes of retries
    _check_listening("auto")  # left to Ray


class _InterruptedRay:
    """Enough of ``ray`` for ``_wait_all``: the first task ends, then Ctrl-C arrives; cancels are noted."""

    def __init__(self):
        self.waits, self.cancelled = 0, []

    def wait(self, refs, num_returns=1, timeout=None):
        self.waits += 1
        if self.waits == 1:
            return refs[:1], refs[1:]
        if self.waits == 2:
            raise KeyboardInterrupt
        return [], list(refs)  # the cancelled tasks have not ended within the grace time

    def cancel(self, ref, force=False):
        self.cancelled.append((ref, force))


@pytest.mark.parametrize("cancel", [True, False])
def test_ray_ctrl_c_cancels_only_in_a_ray_the_caller_started(cancel):
    """``ray.cancel`` can race a finishing task's reply and abort the driver inside Ray, so a run that started
    or joined Ray itself leaves its tasks to its disconnect; in the caller's Ray, the rest and each cell's earlier
    steps are cancelled, gently first, then forced."""
    from robustkit.executors.ray_executor import _wait_all

    ray, ended = _InterruptedRay(), []
    with pytest.raises(KeyboardInterrupt):
        _wait_all(ray, {"a": "cell a", "b": "cell b"}, lambda item, ref: ended.append(item),
                  before={"b": ["b-train"]}, cancel=cancel)
    assert ended == ["cell a"]
    expected = [("b", False), ("b-train", False), ("b", True), ("b-train", True)]
    assert ray.cancelled == (expected if cancel else [])
