"""The ``ray`` executor on real Ray: benchmark cells embedded in this process and on a local cluster the module
starts (two nodes; GPU assignment, a worker killed mid-cell, Ctrl-C, each cell's evaluation in shards), and one
model's evaluation in shards on that cluster.

The numbers must not depend on the executor, so every run here is compared with one ``--jobs 1`` run of the
same spec (module fixture ``reference``): same records, timings and folder names apart. The cluster is
``ray start --head --block`` with 2 CPUs and 2 logical GPUs (no real GPU: the cells still run on the CPU) and a
second node, ``ray start --address ... --block`` with 1 CPU, both on this machine, started once the embedded run is
over (two Ray instances starting at once can mix up their sessions) and stopped by ending those two processes,
which stop the Ray processes they started (never `ray stop`, which would stop every Ray instance of this user on
the machine), and the note of its address that ``ray start`` leaves for a later ``ray.init()`` is put back as it
was. Both use a token of their own (``RAY_AUTH_TOKEN``), so nothing
touches ``~/.ray``. Every worker loads only the essential set (``ROBUSTKIT_LOAD_PLUGINS=``, shipped to them).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

ray = pytest.importorskip("ray")

import robustkit.host as host_module  # noqa: E402
from robustkit.bench.runner import run_benchmark  # noqa: E402
from robustkit.bench.spec import load_spec  # noqa: E402
from robustkit.cli import cli  # noqa: E402
from robustkit.executors.ray_executor import WORKERS_DIR  # noqa: E402
from robustkit.host import make_host  # noqa: E402
from robustkit.store import ResultStore  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Natural plus PGD-AT at two eps; the audit's transfer check makes both PGD-AT cells wait for the natural one.
SPEC = """\
name = "tiny-ray"
seeds = [0]
dataset = {name = "digits"}
model = {name = "lenet", params = {width = 0.25}}
training = {epochs = 1, batch_size = 64, lr = 5e-3, val_examples = 0}
threat = {norm = "linf", eps = 0.1}
evaluation = {n_examples = 40, batch_size = 16, eps_curve = [0.1]}
protocol = {targets = ["natural"]}
audit = {steps = 2, more_steps = 4}

[[attacks]]
name = "pgd"
label = "pgd"
params = {step_size = 0.04, steps = 3}

[[defenses]]
name = "natural"

[[defenses]]
name = "pgd-at"
params = {steps = 2}
sweep = [0.05, 0.1]
"""


@pytest.fixture(scope="module")
def ray_environment():
    """This module's Ray settings, for this process and (inherited) every Ray process it starts: a token of its
    own; token authentication switched on by Ray itself for the embedded run (Ray reads ``RAY_AUTH_MODE`` when
    it is imported, so the cluster and its drivers get it in the environment they start with)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
        patch.delenv("RAY_AUTH_MODE", raising=False)  # ray.init sets it; restored afterwards
        patch.setenv("RAY_USAGE_STATS_ENABLED", "0")
        patch.delenv("RAY_ADDRESS", raising=False)
        patch.setenv("ROBUSTKIT_LOAD_PLUGINS", "")
        yield


def cluster_environment() -> dict[str, str]:
    return {**os.environ, "RAY_AUTH_MODE": "token", "ROBUSTKIT_PROGRESS": "0", "OMP_NUM_THREADS": "1"}


class Cluster:
    """Two Ray nodes on this machine, each ``ray start ... --block`` in the background: the head (2 CPUs and 2
    logical GPUs) and a second node (1 CPU, no GPU), so cells and shards spread over nodes and the preflight
    checks each. :meth:`address` waits until both are up."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._note_before = address_note().read_text() if address_note().exists() else None
        self.head = self._start("head", "--head", "--port", "0", "--num-cpus", "2", "--num-gpus", "2",
                                "--include-dashboard=false")
        self.node: subprocess.Popen | None = None
        self._address: str | None = None

    def _start(self, name: str, *args: str) -> subprocess.Popen:
        with open(self.folder / f"{name}.log", "w") as log:
            return subprocess.Popen([str(Path(sys.executable).with_name("ray")), "start", *args, "--node-ip-address",
                                     "127.0.0.1", "--disable-usage-stats", "--block"], stdout=log,
                                    stderr=subprocess.STDOUT, env=cluster_environment())

    def _wait_for(self, name: str, proc: subprocess.Popen, pattern: str) -> re.Match:
        log, deadline = self.folder / f"{name}.log", time.monotonic() + 120
        while True:
            found = re.search(pattern, log.read_text())
            if found:
                return found
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the test's Ray {name} node did not start:\n{log.read_text()}")
            time.sleep(0.2)

    def address(self) -> str:
        if self._address is None:
            address = self._wait_for("head", self.head, r"ray start --address='([^']+)'").group(1)
            self.node = self._start("node", "--address", address, "--num-cpus", "1", "--num-gpus", "0")
            self._wait_for("node", self.node, r"Ray runtime started")
            self._address = address
        return self._address

    def stop(self) -> None:
        for proc in (self.node, self.head):  # --block: each stops the Ray processes it started, then exits
            if proc is None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        restore_address_note(self._address, self._note_before)


def address_note() -> Path:
    """Where ``ray start --head`` notes its cluster for a later ``ray.init()`` or ``--address auto`` here."""
    from ray._common.utils import get_ray_address_file

    return Path(get_ray_address_file(None))


def restore_address_note(address: str | None, before: str | None) -> None:
    """Put back the note this machine had before the test's cluster replaced it (or remove it), so nothing
    later tries the stopped cluster; a note naming another cluster is left alone."""
    note = address_note()
    with contextlib.suppress(OSError):
        if address is None or note.read_text().strip() != address:
            return
        if before is None:
            note.unlink()
        else:
            note.write_text(before)


@pytest.fixture(scope="module")
def cluster(ray_environment, tmp_path_factory):
    started = Cluster(tmp_path_factory.mktemp("ray-cluster"))
    started.address()  # up before any test uses it: two Ray instances starting at once can join each other's
    yield started
    started.stop()


@pytest.fixture(scope="module")
def host(ray_environment):
    return make_host()


@pytest.fixture(scope="module")
def spec_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ray-spec") / "spec.toml"
    path.write_text(SPEC, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def reference_run(host, spec_path, tmp_path_factory) -> Path:
    """The ``--jobs 1`` run of SPEC: its output folder."""
    out = tmp_path_factory.mktemp("ray-reference") / "out"
    summary = run_benchmark(load_spec(str(spec_path), host), out, host, threads=1, say=lambda line: None)
    assert not summary.failed and len(summary.finished) == 3
    return out


@pytest.fixture(scope="module")
def reference(reference_run):
    """``--jobs 1`` records of SPEC: ``{key: record without timings and folder}``."""
    return comparable(reference_run)


def comparable(out: Path) -> dict[str, dict]:
    """Every record of ``out`` as numbers: timings and where shards ran left out, the output folder's path
    replaced."""
    def numbers(value):
        if isinstance(value, dict):
            return {k: numbers(v) for k, v in value.items()
                    if "seconds" not in k and "time" not in k and k != "evaluation_shards"}
        if isinstance(value, list):
            return [numbers(v) for v in value]
        return value

    text = {r["key"]: json.dumps(r) for r in ResultStore(out)}
    return {key: numbers(json.loads(t.replace(str(out.absolute()), "OUT").replace(str(out), "OUT")))
            for key, t in text.items()}


def placements(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (out / WORKERS_DIR).glob("*.json")}


def invoke(host, args: list[str]):
    host_module._HOST = host  # the test environment fixture resets it after the test
    return CliRunner().invoke(cli, args)


def test_embedded_ray_records_what_jobs_1_records(host, spec_path, reference, tmp_path):
    out = tmp_path / "out"
    result = invoke(host, ["bench", "run", str(spec_path), "--out", str(out), "--executor", "ray", "--threads", "1",
                           "--cpus-per-cell", "2", "--no-report"])
    assert result.exit_code == 0, result.output
    assert "3 to run on Ray embedded in this process with 1 torch thread(s) each" in result.output
    assert "ray (embedded): 1 node(s)" in result.output and "done 3/3" in result.output
    assert comparable(out) == reference
    assert json.loads((out / "benchmark.json").read_text())["environment"]["device"] == "cpu"
    assert not ray.is_initialized()  # the run started Ray, so it stopped it
    assert not list(out.glob(".robustkit-shared-*"))  # the preflight marker is removed


def drive(spec_path: Path, out: Path, *options: str) -> subprocess.Popen:
    """``robustkit bench run`` in another process: a driver that joins the cluster as a user's would (with the
    cluster's ``RAY_AUTH_MODE`` from the start); its output goes to ``out``'s sibling ``.log`` file."""
    return command(out, "bench", "run", str(spec_path), "--out", str(out), "--executor", "ray", "--threads", "1",
                   "--no-report", *options)


def command(out: Path, *args: str) -> subprocess.Popen:
    """``robustkit ARGS`` in another process, with the cluster's environment, its output in ``out``'s log."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(log_of(out), "a") as log:
        return subprocess.Popen([sys.executable, "-m", "robustkit", *args], stdout=log, stderr=subprocess.STDOUT,
                                env=cluster_environment())


def log_of(out: Path) -> Path:
    return out.with_name(out.name + ".log")


def finished(proc: subprocess.Popen, out: Path) -> tuple[int, str]:
    """The driver's exit code and everything it wrote (this run's and earlier runs' into ``out``)."""
    proc.wait(timeout=300)
    return proc.returncode, log_of(out).read_text()


def test_a_cluster_gives_each_cell_its_own_gpu(host, spec_path, reference, cluster, tmp_path):
    out = tmp_path / "out"
    code, log = finished(drive(spec_path, out, "--address", cluster.address(), "--cpus-per-cell", "1"), out)
    assert code == 0, log
    assert f"on the Ray cluster at {cluster.address()}" in log
    assert "2 node(s), 3 CPUs, 2 GPUs; each cell holds 1 CPU(s) and 1 GPU(s)" in log
    assert comparable(out) == reference  # logical GPUs: the cells ran on the CPU, as --jobs 1 did
    natural, low, high = load_spec(str(spec_path), host).cells()
    where = placements(out)
    records = {r["key"]: r["result"] for r in ResultStore(out)}
    for key, placement in where.items():
        assert len(placement["gpu_ids"]) == 1 and placement["cuda_visible_devices"] == placement["gpu_ids"][0]
        assert records[key]["device"] == "cpu"
    # The PGD-AT cells waited for the natural one (their audit reuses its weights) ...
    natural_end = where[natural.key]["started"] + records[natural.key]["seconds"]
    assert where[low.key]["started"] >= natural_end and where[high.key]["started"] >= natural_end
    # ... and when they ran at once, they ran on different GPUs.
    (first, a), (second, _) = sorted(((where[c.key], c.key) for c in (low, high)), key=lambda p: p[0]["started"])
    if second["started"] < first["started"] + records[a]["seconds"]:
        assert first["gpu_ids"] != second["gpu_ids"]


def test_more_gpus_per_cell_than_any_node_has_fails_at_once(spec_path, cluster, tmp_path):
    out = tmp_path / "out"
    code, log = finished(drive(spec_path, out, "--address", cluster.address(), "--gpus-per-cell", "3"), out)
    assert code == 2 and "Traceback" not in log, log
    assert [line for line in log.splitlines() if line.startswith("Error:")] == [
        "Error: --gpus-per-cell 3: the Ray cluster has at most 2 GPU(s) on one node; lower --gpus-per-cell or add "
        "GPUs (ray start --num-gpus N)"]
    assert not (out / "cells").exists()


class KillOnce:
    """SIGKILLs the worker process that runs one cell, once, the moment the cell notes where it runs."""

    def __init__(self, out: Path, key: str, after: int | None = None):
        """:param after: the pid the cell's note holds now (an earlier run's): wait for another one."""
        self.path, self.after, self.pid = out / WORKERS_DIR / f"{key}.json", after, None
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            pid = json.loads(self.path.read_text())["pid"] if self.path.exists() else self.after
            if pid != self.after:
                self.pid = pid
                os.kill(pid, signal.SIGKILL)
                return
            time.sleep(0.01)

    def join(self) -> int:
        self.thread.join(timeout=60)
        assert self.pid is not None, "the cell to kill never started"
        return self.pid


#: CPU cells, one at a time (each holds both CPUs), all in one worker process but for those killed: starting
#: a worker (Python, Ray, torch, robustkit) costs more than a cell here.
CPU_CELLS = ("--gpus-per-cell", "0", "--cpus-per-cell", "2")


def test_a_killed_cell_fails_without_retries_and_is_restarted_with_them(host, spec_path, reference, cluster, tmp_path):
    high = load_spec(str(spec_path), host).cells()[2]
    out = tmp_path / "out"
    killer = KillOnce(out, high.key)
    code, log = finished(drive(spec_path, out, "--address", cluster.address(), "--max-retries", "0", *CPU_CELLS), out)
    killer.join()
    assert code == 2, log
    assert "  failed: pgd-at eps=0.1 seed 0: its worker died (killed, or its node lost) and 0 restart(s) did not " \
           "finish it; rerun the same command to continue" in log
    assert [line for line in log.splitlines() if line.startswith("Error:")] == [
        f"Error: 1 of 3 cells failed (first: pgd-at eps=0.1 seed 0: its worker died (killed, or its node lost) and 0 "
        f"restart(s) did not finish it; rerun the same command to continue); the others are recorded in {out}; fix "
        "the cause and rerun the same command"]
    assert len(ResultStore(out)) == 2

    # The rerun runs only that cell; killed again, Ray restarts it in a new worker, and its record is unchanged.
    killer = KillOnce(out, high.key, after=placements(out)[high.key]["pid"])
    code, log = finished(drive(spec_path, out, "--address", cluster.address(), "--max-retries", "1", *CPU_CELLS), out)
    killed = killer.join()
    assert code == 0 and "3 cells, 2 already recorded" in log and "done 3/3" in log, log
    assert placements(out)[high.key]["pid"] != killed
    assert comparable(out) == reference


def test_ctrl_c_cancels_the_cells_in_flight_and_the_next_run_resumes(host, spec_path, reference, cluster, tmp_path):
    _, low, high = load_spec(str(spec_path), host).cells()
    out = tmp_path / "out"
    options = ("--address", cluster.address(), *CPU_CELLS)
    driver = drive(spec_path, out, *options)
    deadline = time.monotonic() + 300
    started = [out / WORKERS_DIR / f"{cell.key}.json" for cell in (low, high)]
    while not any(path.exists() for path in started) and time.monotonic() < deadline:
        time.sleep(0.01)
    driver.send_signal(signal.SIGINT)  # Ctrl-C, once a PGD-AT cell runs
    code, log = finished(driver, out)
    assert code == 2, log
    (line,) = [line for line in log.splitlines() if line.startswith("Error:")]
    recorded = len(ResultStore(out))
    assert line == (f"Error: benchmark interrupted: {recorded} of 3 cells are recorded in {out}; rerun the same "
                    "command to continue")
    # The workers of the cells in flight were stopped, not left running.
    stopped = 0
    for key in (low.key, high.key):
        placement = placements(out).get(key)
        if placement is not None and not (out / "cells" / f"{key}.json").exists():
            assert wait_gone(placement["pid"]), f"the worker of cell {key} still runs after Ctrl-C"
            stopped += 1
    assert stopped or recorded == 3, log
    code, log = finished(drive(spec_path, out, *options), out)
    assert code == 0 and f"3 cells, {recorded} already recorded" in log, log
    assert comparable(out) == reference


def test_cells_evaluated_in_shards_on_the_cluster_record_what_jobs_1_records(host, spec_path, reference, cluster,
                                                                             tmp_path):
    """Each cell as training, 3 shard tasks (at once: the head's 2 CPUs and the second node's) and its record;
    one shard's worker is SIGKILLed mid-run and Ray restarts it."""
    high = load_spec(str(spec_path), host).cells()[2]
    out = tmp_path / "out"
    killer = KillOnce(out, f"{high.key}.piece-1")
    code, log = finished(drive(spec_path, out, "--address", cluster.address(), "--eval-shards", "3",
                               "--gpus-per-cell", "0", "--cpus-per-cell", "1", "--max-retries", "1"), out)
    killed = killer.join()
    assert code == 0 and "each evaluation in 3 shards" in log and "done 3/3" in log, log
    assert re.search(r"\n    pgd-at eps=0.1 seed 0: piece 3/3 done: evaluation batch 2 on \S+ \(cpu\), \d+ s\n", log), log
    assert comparable(out) == reference
    assert "2 node(s), 3 CPUs, 2 GPUs; each cell holds 1 CPU(s) and 0 GPU(s)" in log
    where = placements(out)
    assert where[f"{high.key}.piece-1"]["pid"] != killed
    assert len({p["node_id"] for p in where.values()}) == 2  # 3 shards at once: the head's 2 CPUs and the other's
    for r in ResultStore(out):
        shards = r["result"]["evaluation_shards"]
        assert [s["batches"] for s in shards] == [[0, 1], [1, 2], [2, 3]]  # 40 examples: 16, 16 and 8
        assert {f"{r['key']}.piece-{i}" for i in range(3)} <= set(where)


def wait_gone(pid: int, seconds: float = 30) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def test_an_evaluation_in_shards_on_the_cluster_equals_one_run(host, spec_path, reference_run, cluster, tmp_path):
    natural = load_spec(str(spec_path), host).cells()[0]
    checkpoint = reference_run / "train" / natural.train_key / "last.json"  # a trained model
    args = ["attack", str(checkpoint), "--attack", "pgd eps=0.1 steps=3 random_start=true", "--attack",
            "deepfool max_iter=5", "--n-examples", "50", "--batch-size", "8", "--threads", "1"]  # 7 batches, the last of 2
    plain = invoke(host, [*args, "--out", str(tmp_path / "plain"), "--grid-examples", "0"])
    assert plain.exit_code == 0, plain.output
    out = tmp_path / "sharded"
    code, log = finished(command(out, *args, "--out", str(out), "--eval-shards", "3", "--executor", "ray",
                                 "--address", cluster.address(), "--gpus-per-cell", "0", "--cpus-per-cell", "1"), out)
    assert code == 0, log
    assert "evaluation in 3 shard(s) of whole batches, 0 already in" in log and "shard 3/3 done on" in log
    assert (out / "records.jsonl").read_bytes() == (tmp_path / "plain" / "records.jsonl").read_bytes()
    summary = json.loads((out / "summary.json").read_text())
    plain_summary = json.loads((tmp_path / "plain" / "summary.json").read_text())
    assert summary["clean_accuracy"] == plain_summary["clean_accuracy"] > 0.3
    assert summary["attacks"]["pgd"]["robust_accuracy"] == plain_summary["attacks"]["pgd"]["robust_accuracy"]
    assert summary["attacks"]["deepfool"]["mean_l2"] == plain_summary["attacks"]["deepfool"]["mean_l2"]
    assert [s["batches"] for s in summary["shards"]] == [[0, 3], [3, 5], [5, 7]]
    assert {s["device"] for s in summary["shards"]} == {"cpu"}
