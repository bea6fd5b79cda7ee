"""Progress on stderr: bars on a terminal, one plain line per finished unit of work otherwise."""

from __future__ import annotations

import io
import json
import re

import pytest
from click.testing import CliRunner

from robustkit import progress as progress_module
from robustkit.cli import cli
from robustkit.host import make_host
from robustkit.progress import bars_enabled, progress, report

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONTROL = re.compile(r"\r|\x1b")  # carriage returns and escape (cursor) codes
EPOCH_LINE = re.compile(r"^train pgd-at: epoch (\d+)/2 loss \d+\.\d{3} train \d+\.\d% val clean \d+\.\d% "
                        r"val pgd \d+\.\d%  \d+\.\d s(, ETA \d+ s)?$")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def train_args(out) -> list[str]:
    return ["train", "--model", "lenet", "--model-param", "width=0.25", "--defense", "pgd-at", "--param",
            "eps=0.1", "--param", "steps=1", "--epochs", "2", "--val-examples", "20", "--out", str(out)]


def invoke(args: list[str]):
    result = CliRunner().invoke(cli, args, catch_exceptions=False)  # click >= 8.2: stdout and stderr kept apart
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.parametrize("mode", ["0", None])  # the test plugin's setting, and unset (auto, not a terminal)
def test_train_without_a_terminal_writes_one_plain_line_per_epoch_on_stderr(tmp_path, monkeypatch, mode):
    if mode is None:
        monkeypatch.delenv("ROBUSTKIT_PROGRESS", raising=False)
    else:
        monkeypatch.setenv("ROBUSTKIT_PROGRESS", mode)
    result = invoke(train_args(tmp_path / "run"))
    epoch_lines = [line for line in result.stderr.splitlines() if line.startswith("train ")]
    assert [EPOCH_LINE.match(line).group(1) for line in epoch_lines] == ["1", "2"], result.stderr
    assert "ETA" in epoch_lines[0] and "ETA" not in epoch_lines[1]
    assert not any(line.startswith("train ") for line in result.stdout.splitlines())  # stdout: results only
    for text in (result.stdout, result.stderr, result.output):
        assert not CONTROL.search(text), repr(text[:500])


def test_a_terminal_gets_bars_instead_of_plain_lines(tmp_path, monkeypatch):
    monkeypatch.delenv("ROBUSTKIT_PROGRESS", raising=False)
    monkeypatch.setattr(progress_module, "_stream_is_terminal", lambda stream: True)  # stderr "is a terminal"
    result = invoke(train_args(tmp_path / "run"))
    assert "\r" in result.stderr and "epochs" in result.stderr  # tqdm redraws in place
    assert not any(line.startswith("train pgd-at: epoch") for line in re.split(r"[\r\n]", result.stderr))
    assert "\r" not in result.stdout


def test_bars_follow_the_terminal_and_the_environment_switch(monkeypatch):
    from tqdm import tqdm

    monkeypatch.delenv("ROBUSTKIT_PROGRESS", raising=False)
    monkeypatch.setattr("sys.stderr", Terminal())
    assert bars_enabled()
    bar = progress(range(3), desc="work")
    assert isinstance(bar.bar, tqdm)
    assert list(bar) == [0, 1, 2]
    assert bar.bar.n == 3  # the bar counted every item
    report("not shown under bars")
    assert "not shown" not in __import__("sys").stderr.getvalue()

    monkeypatch.setattr("sys.stderr", io.StringIO())  # not a terminal
    assert not bars_enabled()
    monkeypatch.setenv("ROBUSTKIT_PROGRESS", "1")  # forces bars
    assert bars_enabled() and isinstance(progress(range(2)).bar, tqdm)
    for off in ("0", "off", "false"):
        monkeypatch.setenv("ROBUSTKIT_PROGRESS", off)
        monkeypatch.setattr("sys.stderr", Terminal())
        assert not bars_enabled()


def test_without_bars_progress_is_a_silent_pass_through_and_report_writes_plain_lines(monkeypatch):
    monkeypatch.setenv("ROBUSTKIT_PROGRESS", "0")
    err = Terminal()  # even on a terminal, 0 means no bars
    monkeypatch.setattr("sys.stderr", err)
    bar = progress(range(3), total=3, desc="x", bar_format="{l_bar}")
    assert list(bar) == [0, 1, 2]
    bar.set_postfix(loss="1"), bar.update(1), bar.close()
    empty = progress(total=5)
    empty.update(2)
    report("evaluate: 3 examples, 1 attack, clean 100.0%  0.1 s")
    assert err.getvalue() == "evaluate: 3 examples, 1 attack, clean 100.0%  0.1 s\n"


def test_evaluation_reports_one_line_when_it_finishes(monkeypatch):
    import torch
    from torch import nn

    from robustkit.evaluation import evaluate

    monkeypatch.setenv("ROBUSTKIT_PROGRESS", "0")
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    images, labels = torch.rand(10, 1, 2, 2), torch.randint(0, 2, (10,))
    evaluate(model, (images, labels), {}, batch_size=4, device="cpu")
    lines = err.getvalue().splitlines()
    assert len(lines) == 1 and re.fullmatch(r"evaluate: 10 examples, 0 attacks, clean \d+\.\d%  \d+\.\d s", lines[0])


def test_a_benchmark_writes_one_line_per_cell_not_one_per_epoch(tmp_path, monkeypatch, capsys):
    """In a pipe, the cells' own epoch and evaluation lines are muted: the runner's "done" line stands for each."""
    from robustkit.bench import runner
    from robustkit.bench.spec import load_spec
    from test_bench import TINY, write

    def fake_cell(settings, work_dir, **kwargs):
        report("train inside a cell: epoch 1/1")
        return {"clean_accuracy": 0.5, "attacks": {}, "audit": None}

    monkeypatch.setattr(runner, "run_cell", fake_cell)
    spec = load_spec(str(write(tmp_path, TINY)), make_host())
    lines: list[str] = []
    runner.run_benchmark(spec, tmp_path / "out", make_host(), say=lines.append)
    assert "train inside a cell" not in capsys.readouterr().err
    assert sum(line.strip().startswith("done") for line in lines) == 3
    report("outside any cell")
    assert "outside any cell" in capsys.readouterr().err


def test_bars_do_not_change_what_training_computes(tmp_path, monkeypatch):
    # tqdm.auto calls iter() on what it wraps when built and again when iterated; a second iter() of a
    # shuffled DataLoader draws another order, so a run on a terminal trained on other batches than in a pipe.
    histories = {}
    for mode in ("0", "1"):
        monkeypatch.setenv("ROBUSTKIT_PROGRESS", mode)
        invoke(train_args(tmp_path / mode))
        rows = [json.loads(line) for line in (tmp_path / mode / "metrics.jsonl").read_text().splitlines()]
        histories[mode] = [(row["train_loss"], row["train_acc"], row["val_pgd_acc"]) for row in rows]
    assert histories["1"] == histories["0"]


def test_a_bar_iterates_a_shuffled_loader_once_with_the_same_batches():
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    data = TensorDataset(torch.arange(64.0), torch.arange(64))

    def order(wrap) -> list[list[int]]:
        loader = DataLoader(data, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(3))
        return [labels.tolist() for _, labels in wrap(loader)]

    with_bar = progress_module._Bar  # what progress() returns on a terminal
    from tqdm import tqdm

    assert order(lambda loader: with_bar(loader, tqdm(total=len(loader), disable=True))) == order(iter)
