"""RobustBench model_info files: import into a leaderboard, export from benchmark runs, round trips, bad inputs.

The model_info files here are made up (names, authors, numbers), written in the shapes RobustBench's
files take: accuracies as strings ("89.69", "76.9"), eps as "8/255", "0.031" or "0.5", ``reported`` as a
string, ``""`` or the string "null", optional ``external``, ``unreliable`` and ``footnote`` (a string,
``""`` or null), and a corruptions folder with ``eps: null`` and extra ImageNet metrics.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

import robustkit.host as host_module
from robustkit.bench.leaderboard import export_leaderboard
from robustkit.bench.runner import run_benchmark
from robustkit.bench.spec import load_spec
from robustkit.cli import cli
from robustkit.errors import RobustkitError
from robustkit.host import make_host
from robustkit.leaderboard import validate_leaderboard
from robustkit.robustbench_format import (
    export_model_infos, format_eps, import_model_infos, merge_with_published, parse_eps, parse_fraction,
    read_model_info,
)
from test_bench import TINY, edited, write

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NUMBERS = ("eps", "clean_acc", "robust_acc", "autoattack_acc", "external", "reported", "unreliable", "footnote",
           "attack_suite", "attack_acc", "dataset", "threat_model", "name", "architecture", "additional_data",
           "number_forward_passes")


def base(**fields):
    info = {"link": "https://example.org/paper", "name": "A Made-Up Defense", "authors": "A. Author, B. Author",
            "additional_data": False, "number_forward_passes": 1, "dataset": "cifar10", "venue": "Made-Up Venue 2021",
            "architecture": "WideResNet-28-10", "eps": "8/255", "clean_acc": "89.69", "reported": "62.5",
            "autoattack_acc": "59.53"}
    info.update(fields)
    return {k: v for k, v in info.items() if v is not ...}


LINF = {
    "Example2019Unlabeled": base(additional_data=True, unreliable=False),
    "Example2024Mixed": base(number_forward_passes=2, architecture="ResNet-152 + WideResNet-70-16", clean_acc="95.19",
                             reported="69.71", autoattack_acc="70.08", external="69.71", unreliable=False,
                             footnote="An ensemble; 69.71% is from the authors' adaptive evaluation."),
    "Example2021Ode": base(clean_acc="93.73", reported="71.28", autoattack_acc="71.28", external="64.20",
                           unreliable=True, footnote="64.20% robust accuracy is due to AutoAttack + transfer APGD"),
    "Example2018Small": base(eps="0.031", clean_acc="76.9", reported="", autoattack_acc="0.0", footnote=None,
                             architecture="ResNet-18"),
}
L2 = {
    "Example2020Ltwo": base(eps="0.5", clean_acc="91.08", reported="73.27", autoattack_acc="72.91", footnote=""),
    "Example2021Extra": base(eps="0.5", clean_acc="95.74", reported="82.32", autoattack_acc="82.32", footnote="",
                             unreliable=False, architecture="WideResNet-70-16"),
}
CORRUPTIONS = {
    "Example2020Augment": base(eps=None, clean_acc="94.78", reported="null", autoattack_acc=..., footnote=None,
                               corruptions_acc="73.46"),
    "Example2020Trained": base(eps="8/255", clean_acc="85.29", reported="", autoattack_acc=..., corruptions_acc="76.37",
                               footnote="Trained for Linf robustness with eps 8/255."),
}
IMAGENET_CORRUPTIONS = {
    "Example2012Alex": base(dataset="imagenet", eps=None, clean_acc="56.24", reported=None, autoattack_acc=...,
                            corruptions_acc="21.12", corruptions_mce="100.0", corruptions_acc_3d="28.47",
                            corruptions_mce_3d="100.0", footnote=None),
}


def write_infos(root: Path, dataset: str, threat: str, infos: dict) -> list[Path]:
    folder = root / dataset / threat
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for model_id, info in infos.items():
        path = folder / f"{model_id}.json"
        path.write_text(json.dumps(info, indent=2), encoding="utf-8")
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def host():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ROBUSTKIT_BLOCK_PLUGINS", "timm-models")
        made = make_host()
    host_module._HOST = made  # the CLI's host: no plugin reloading per invocation
    return made


def invoke(args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def numbers(entry):
    return {k: entry.get(k) for k in NUMBERS}


# -- parsing -----------------------------------------------------------------------------------------


def test_budgets_and_their_spelling():
    assert parse_fraction("8/255") == parse_fraction(" 8/255 ") and parse_fraction("0.5") * 2 == 1
    assert parse_eps("8/255", "f") == 8 / 255 and parse_eps("0.031", "f") == 0.031 and parse_eps(0.5, "f") == 0.5
    assert format_eps(8 / 255, "Linf") == "8/255" and format_eps(4 / 255, "Linf") == "4/255"
    assert format_eps(0.031, "Linf") == "0.031" and format_eps(0.1, "Linf") == "0.1"
    assert format_eps(0.5, "L2") == "0.5" and format_eps(1.0, "L2") == "1.0"  # L2 budgets stay decimal
    assert format_eps(1e-5, "L2") == "0.00001"
    for bad, message in (("8/0", "divides by zero"), ("abc", "not a budget"), ("-0.1", "finite number >= 0"),
                         ("nan", "not a budget"), (True, "expected a budget")):
        with pytest.raises(RobustkitError, match=f"^f: eps: .*{message}"):
            parse_eps(bad, "f")


def test_import_reads_strings_fractions_and_the_optional_fields(tmp_path):
    paths = write_infos(tmp_path, "cifar10", "Linf", LINF)
    doc = import_model_infos(paths)
    assert validate_leaderboard(doc) == doc and "benchmark" not in doc
    by_id = {e["defense"]: e for e in doc["entries"]}
    first = by_id["Example2019Unlabeled"]
    assert first["eps"] == 8 / 255 and first["threat_model"] == "linf" and first["dataset"] == "cifar10"
    assert (first["clean_acc"], first["robust_acc"], first["autoattack_acc"], first["reported"]) == (89.69, 59.53,
                                                                                                    59.53, 62.5)
    assert first["attack_suite"] == "autoattack" and first["attack_acc"] == {"autoattack": 59.53}
    assert first["additional_data"] is True and first["unreliable"] is False and "footnote" not in first
    assert "external" not in first and first["model"] == "WideResNet-28-10"
    assert first["source"] == "robustbench" and first["robustbench"] == {"model_id": "Example2019Unlabeled",
                                                                          "threat_model": "Linf"}
    prov = first["provenance"]
    assert prov["source"] == "robustbench" and prov["imported_from"] == str(paths[0])
    assert len(prov["sha256"]) == 64 and "seed" not in prov and "n_examples" not in prov
    # No measurement fields: these are reported numbers.
    assert not {"points", "matched", "robust_acc_interval", "rank"} & set(first)
    mixed = by_id["Example2024Mixed"]
    assert mixed["external"] == 69.71 and mixed["robust_acc"] == 70.08 and mixed["number_forward_passes"] == 2
    assert by_id["Example2021Ode"]["unreliable"] is True and by_id["Example2021Ode"]["external"] == 64.2
    small = by_id["Example2018Small"]
    assert small["eps"] == 0.031 and small["clean_acc"] == 76.9 and small["reported"] is None
    assert small["footnote"] is None and small["robust_acc"] == 0.0
    # Ordered by robust_acc (the AutoAttack number), as robustkit ranks.
    assert [e["robust_acc"] for e in doc["entries"]] == [71.28, 70.08, 59.53, 0.0]


def test_l2_and_corruptions_files(tmp_path):
    l2 = import_model_infos(write_infos(tmp_path, "cifar10", "L2", L2))
    assert {e["eps"] for e in l2["entries"]} == {0.5} and {e["threat_model"] for e in l2["entries"]} == {"l2"}
    assert {e["footnote"] for e in l2["entries"]} == {""}
    corruptions = import_model_infos(write_infos(tmp_path, "cifar10", "corruptions", CORRUPTIONS))
    by_id = {e["defense"]: e for e in corruptions["entries"]}
    augment = by_id["Example2020Augment"]
    assert augment["eps"] is None and augment["threat_model"] == "corruptions" and augment["reported"] is None
    assert augment["robust_acc"] == 73.46 and augment["attack_suite"] == "corruptions"
    assert "autoattack_acc" not in augment
    assert by_id["Example2020Trained"]["robustbench"]["eps"] == "8/255"  # the training budget, kept as written
    imagenet = import_model_infos(write_infos(tmp_path, "imagenet", "corruptions", IMAGENET_CORRUPTIONS))
    assert imagenet["entries"][0]["robustbench"]["metrics"] == {"corruptions_mce": 100.0, "corruptions_acc_3d": 28.47,
                                                                "corruptions_mce_3d": 100.0}


def test_threat_from_the_folder_or_the_option(tmp_path, host):
    loose = tmp_path / "Loose.json"
    loose.write_text(json.dumps(LINF["Example2019Unlabeled"]))
    with pytest.raises(RobustkitError, match="Loose.json: cannot tell the threat model.*--threat"):
        read_model_info(loose)
    assert read_model_info(loose, "linf")["threat_model"] == "linf"
    in_l2 = write_infos(tmp_path, "cifar10", "L2", {"Example2020Ltwo": L2["Example2020Ltwo"]})[0]
    with pytest.raises(RobustkitError, match="is in a L2/ folder but --threat is Linf"):
        read_model_info(in_l2, "Linf")
    result = invoke(["leaderboard", "import", loose, "--from", "robustbench", "--threat", "LINF",
                     "-o", tmp_path / "one.json"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "one.json").read_text())["entries"][0]["robustbench"]["threat_model"] == "Linf"


def test_the_folder_decides_the_dataset_with_a_warning(tmp_path, host):
    wrong = write_infos(tmp_path, "cifar100", "Linf", {"Example2019Pre": base(dataset="cifar10")})[0]
    result = invoke(["leaderboard", "import", wrong, "--from", "robustbench", "-o", tmp_path / "out.json"])
    assert result.exit_code == 0, result.output
    assert "warning" in result.output and "cifar100/ folder" in result.output
    assert json.loads((tmp_path / "out.json").read_text())["entries"][0]["dataset"] == "cifar100"


def test_one_dataset_and_threat_model_per_import(tmp_path):
    linf = write_infos(tmp_path, "cifar10", "Linf", LINF)
    l2 = write_infos(tmp_path, "cifar10", "L2", L2)
    with pytest.raises(RobustkitError, match="cifar10 L2, but .* is cifar10 Linf; .*import them separately"):
        import_model_infos([linf[0], l2[0]])
    with pytest.raises(RobustkitError, match="was already read from"):
        import_model_infos([linf[0], linf[0]])


# -- round trips -------------------------------------------------------------------------------------


@pytest.mark.parametrize("dataset,threat,infos", [("cifar10", "Linf", LINF), ("cifar10", "L2", L2),
                                                   ("cifar10", "corruptions", CORRUPTIONS),
                                                   ("imagenet", "corruptions", IMAGENET_CORRUPTIONS)])
def test_import_export_import_keeps_every_number_and_field_type(tmp_path, host, dataset, threat, infos):
    paths = write_infos(tmp_path / "in", dataset, threat, infos)
    result = invoke(["leaderboard", "import", *paths, "--from", "robustbench", "-o", tmp_path / "a.json"])
    assert result.exit_code == 0, result.output
    assert "RobustBench, reported" in result.output
    result = invoke(["leaderboard", "export", tmp_path / "a.json", "--format", "robustbench", "-o", tmp_path / "out"])
    assert result.exit_code == 0, result.output
    for model_id, original in infos.items():
        written = json.loads((tmp_path / "out" / dataset / threat / f"{model_id}.json").read_text())
        assert set(written) == set(original)
        for key, value in original.items():
            again = written[key]
            if key in ("reported",) and value in ("", "null", None):
                assert again == ""  # "not reported", in the spelling most RobustBench files use
            elif key.endswith("_acc") or key in ("reported", "external") or key.startswith("corruptions_"):
                assert isinstance(again, str) and len(again.split(".")[1]) == 2 and float(again) == float(value)
            else:
                assert again == value and type(again) is type(value), key
    exported = sorted((tmp_path / "out" / dataset / threat).glob("*.json"))
    result = invoke(["leaderboard", "import", *exported, "--from", "robustbench", "-o", tmp_path / "b.json"])
    assert result.exit_code == 0, result.output
    first, second = (json.loads((tmp_path / name).read_text()) for name in ("a.json", "b.json"))
    assert [numbers(e) for e in first["entries"]] == [numbers(e) for e in second["entries"]]
    assert [e["robustbench"] for e in first["entries"]] == [e["robustbench"] for e in second["entries"]]


# -- export from a benchmark run ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory, host):
    """A two-cell run (natural, PGD-AT at one eps) under linf 8/255: PGD plus DeepFool, audited."""
    folder = tmp_path_factory.mktemp("rbrun")
    text = edited(TINY, ("sweep = [0.05, 0.1]", "sweep = [0.05]"), ("eps_curve = [0.05, 0.2]", "eps_curve = []"),
                  ('threat = {norm = "linf", eps = 0.1}', f'threat = {{norm = "linf", eps = {8 / 255!r}}}'))
    spec = load_spec(str(write(folder, text)), host)
    run_benchmark(spec, folder / "out", host, say=lambda _: None)
    return folder / "out"


def records(root: Path) -> dict[str, dict]:
    found = [json.loads(p.read_text())["result"] for p in (root / "cells").glob("*.json")]
    return {f"{r['defense']}" + (f"_{r['knob']}-{r['knob_value']}" if r["knob"] else "") + f"_seed{r['seed']}": r
            for r in found}


TYPES = {"link": str, "name": str, "authors": str, "additional_data": bool, "number_forward_passes": int,
         "dataset": str, "venue": str, "architecture": str, "eps": str, "clean_acc": str, "reported": str,
         "external": str, "footnote": str, "unreliable": bool}


def test_export_writes_one_model_info_per_trained_model(bench_run, tmp_path, host):
    result = invoke(["leaderboard", "export", bench_run, "--format", "robustbench", "-o", tmp_path / "mi"])
    assert result.exit_code == 0, result.output
    cells = records(bench_run)
    folder = tmp_path / "mi" / "digits" / "Linf"
    assert sorted(p.stem for p in folder.iterdir()) == sorted(cells) == ["natural_seed0", "pgd-at_eps-0.05_seed0"]
    for model_id, record in cells.items():
        info = json.loads((folder / f"{model_id}.json").read_text())
        assert list(info) == list(TYPES)  # RobustBench's field order, no autoattack_acc: not AutoAttack
        assert {k: type(v) for k, v in info.items()} == TYPES
        assert info["eps"] == "8/255" and info["additional_data"] is False and info["number_forward_passes"] == 1
        assert info["clean_acc"] == f"{100 * record['clean_accuracy']:.2f}"
        assert info["external"] == f"{100 * record['worst_case_accuracy']:.2f}" and info["reported"] == ""
        assert info["dataset"] == "digits" and info["architecture"] == "lenet (width=0.25)"
        assert "pgd (torchattacks:PGD)" in info["footnote"] and "deepfool (art:DeepFool" in info["footnote"]
        assert "Not evaluated with standard AutoAttack" in info["footnote"] and "40 test examples" in info["footnote"]
        assert info["unreliable"] is bool(record["audit"]["flags"])
    natural = json.loads((folder / "natural_seed0.json").read_text())
    assert natural["name"] == "Natural (standard) training (seed 0)"
    # And back: the same numbers, at RobustBench's two decimals.
    doc = import_model_infos(sorted(folder.glob("*.json")))
    for entry in doc["entries"]:
        record = cells[entry["defense"]]
        assert entry["clean_acc"] == round(100 * record["clean_accuracy"], 2)
        assert entry["robust_acc"] == entry["external"] == round(100 * record["worst_case_accuracy"], 2)
        assert entry["attack_suite"] == "external" and entry["eps"] == 8 / 255


def test_export_writes_autoattack_acc_only_for_standard_autoattack(bench_run, tmp_path):
    """The run's first attack renamed to AutoAttack in benchmark.json: its accuracy becomes autoattack_acc."""
    copy_root = tmp_path / "aa"
    shutil.copytree(bench_run / "cells", copy_root / "cells")
    benchmark = json.loads((bench_run / "benchmark.json").read_text())
    benchmark["attacks"][0]["name"] = "autoattack"
    (copy_root / "benchmark.json").write_text(json.dumps(benchmark))
    # One model where the other attack (deepfool) breaks one example more than AutoAttack: its worst case is lower.
    cell = next(p for p in sorted((copy_root / "cells").glob("*.json"))
                if json.loads(p.read_text())["result"]["attacks"]["pgd"]["robust_accuracy"] > 0)
    stored = json.loads(cell.read_text())
    stored["result"]["worst_case_accuracy"] = stored["result"]["attacks"]["pgd"]["robust_accuracy"] - 1 / 40
    cell.write_text(json.dumps(stored))
    export_model_infos(copy_root, tmp_path / "out")
    lowered = 0
    for model_id, record in records(copy_root).items():
        info = json.loads((tmp_path / "out" / "digits" / "Linf" / f"{model_id}.json").read_text())
        pgd = f"{100 * record['attacks']['pgd']['robust_accuracy']:.2f}"
        worst = f"{100 * record['worst_case_accuracy']:.2f}"
        assert info["autoattack_acc"] == pgd
        if worst != pgd:  # the other attack lowered it: RobustBench's "best known" with the attacks named
            assert info["external"] == worst and "due to AutoAttack + deepfool" in info["footnote"]
            lowered += 1
        else:
            assert "external" not in info and info["footnote"].startswith("Standard AutoAttack")
            assert "other attacks (deepfool (art:DeepFool" in info["footnote"]
    assert lowered >= 1
    benchmark["attacks"][0]["params"]["version"] = "custom"
    (copy_root / "benchmark.json").write_text(json.dumps(benchmark))
    export_model_infos(copy_root, tmp_path / "custom")
    for path in (tmp_path / "custom" / "digits" / "Linf").glob("*.json"):
        assert "autoattack_acc" not in json.loads(path.read_text())


def test_export_from_a_benchmark_leaderboard_file_matches_the_folder(bench_run, tmp_path):
    path = tmp_path / "board.json"
    path.write_text(json.dumps(export_leaderboard(bench_run)))
    from_file = sorted(export_model_infos(path, tmp_path / "from-file"))
    from_folder = sorted(export_model_infos(bench_run, tmp_path / "from-folder"))
    assert [p.relative_to(tmp_path / "from-file") for p in from_file] == \
        [p.relative_to(tmp_path / "from-folder") for p in from_folder]
    for a, b in zip(from_file, from_folder):
        assert json.loads(a.read_text()) == json.loads(b.read_text())


def test_outputs_are_never_written_through_a_symlink(bench_run, tmp_path, host):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "link").symlink_to(elsewhere, target_is_directory=True)
    result = invoke(["leaderboard", "export", bench_run, "--format", "robustbench", "-o", tmp_path / "link"])
    assert result.exit_code == 2 and "symbolic link" in result.output and not any(elsewhere.iterdir())
    (tmp_path / "out" / "digits").mkdir(parents=True)
    (tmp_path / "out" / "digits" / "Linf").symlink_to(elsewhere, target_is_directory=True)
    result = invoke(["leaderboard", "export", bench_run, "--format", "robustbench", "-o", tmp_path / "out"])
    assert result.exit_code == 2 and "Linf is a symbolic link" in result.output and not any(elsewhere.iterdir())
    target = elsewhere / "board.json"
    (tmp_path / "board.json").symlink_to(target)
    paths = write_infos(tmp_path / "in", "cifar10", "Linf", LINF)
    result = invoke(["leaderboard", "import", *paths, "--from", "robustbench", "-o", tmp_path / "board.json"])
    assert result.exit_code == 2 and "symbolic link" in result.output and not target.exists()
    os.unlink(tmp_path / "board.json")


def test_export_refuses_threats_robustbench_has_no_leaderboard_for(bench_run, tmp_path):
    copy_root = tmp_path / "l1"
    shutil.copytree(bench_run / "cells", copy_root / "cells")
    benchmark = json.loads((bench_run / "benchmark.json").read_text())
    benchmark["threat"]["norm"] = "l1"
    (copy_root / "benchmark.json").write_text(json.dumps(benchmark))
    with pytest.raises(RobustkitError, match="threat model is l1; RobustBench has Linf and L2"):
        export_model_infos(copy_root, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# -- beside a benchmark leaderboard ------------------------------------------------------------------


def test_merge_puts_published_entries_beside_the_ranking(bench_run, tmp_path, host):
    board = tmp_path / "board.json"
    board.write_text(json.dumps(export_leaderboard(bench_run)))
    published = write_infos(tmp_path / "in", "digits", "Linf",
                            {"Example2024Digits": base(dataset="digits", architecture="LeNet"),
                             "Example2023Digits": base(dataset="digits", eps="0.1", autoattack_acc="30.00")})
    result = invoke(["leaderboard", "import", *published, "--from", "robustbench", "-o", tmp_path / "pub.json"])
    assert result.exit_code == 0, result.output
    result = invoke(["leaderboard", "merge", board, tmp_path / "pub.json", "-o", tmp_path / "merged.json"])
    assert result.exit_code == 0, result.output
    assert "not ranked with it" in result.output and "eps 0.1 (the benchmark's is 0.0313725)" in result.output
    merged = validate_leaderboard(tmp_path / "merged.json")
    alone = json.loads(board.read_text())
    # The ranked entries are the benchmark's own, untouched by the imported ones.
    assert [{k: v for k, v in e.items() if k != "provenance"} for e in merged["entries"]] == \
        [{k: v for k, v in e.items() if k != "provenance"} for e in alone["entries"]]
    assert merged["benchmark"]["fingerprint"] == alone["benchmark"]["fingerprint"]
    assert [e["defense"] for e in merged["published"]] == ["Example2024Digits", "Example2023Digits"]
    assert all(e["source"] == "robustbench" and "rank" not in e for e in merged["published"])
    # Merging again keeps them (and once each).
    result = invoke(["leaderboard", "merge", tmp_path / "merged.json", tmp_path / "pub.json",
                     "-o", tmp_path / "again.json"])
    assert result.exit_code == 0, result.output
    assert len(json.loads((tmp_path / "again.json").read_text())["published"]) == 2
    # Without imported files, merge is what it was.
    assert "published" not in merge_with_published([("a", alone), ("b", copy.deepcopy(alone))])


def test_merge_refuses_published_numbers_of_another_dataset_or_conflicting_ones(bench_run, tmp_path, host):
    board = tmp_path / "board.json"
    board.write_text(json.dumps(export_leaderboard(bench_run)))
    cifar = write_infos(tmp_path / "in", "cifar10", "Linf", LINF)
    validate = import_model_infos(cifar)
    (tmp_path / "cifar.json").write_text(json.dumps(validate))
    result = invoke(["leaderboard", "merge", board, tmp_path / "cifar.json", "-o", tmp_path / "m.json"])
    assert result.exit_code == 2 and "cifar10 Linf, the benchmark is on digits linf" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "m.json").exists()
    other = copy.deepcopy(validate)
    other["entries"][0]["clean_acc"] = 12.0
    with pytest.raises(RobustkitError, match="both hold RobustBench model .* with different numbers"):
        merge_with_published([("a", validate), ("b", other)])
    # An imported entry cannot pose as one of the benchmark's ranked entries.
    smuggled = json.loads(board.read_text())
    smuggled["entries"].append(validate["entries"][0])
    with pytest.raises(RobustkitError, match=r"\$\.entries\[2\]"):
        validate_leaderboard(smuggled)


# -- bad inputs --------------------------------------------------------------------------------------


def drop(field):
    info = dict(LINF["Example2019Unlabeled"])
    del info[field]
    return info


BAD = [
    ("missing-clean", drop("clean_acc"), "clean_acc: missing"),
    ("missing-name", drop("name"), "name: missing"),
    ("missing-accuracy", drop("autoattack_acc"), "autoattack_acc: missing"),
    ("accuracy-abc", base(clean_acc="abc"), "clean_acc: \"abc\" is not a percentage"),
    ("accuracy-over-100", base(autoattack_acc="101.5"), "autoattack_acc: '101.5' is out of range"),
    ("reported-abc", base(reported="n.a."), "reported: \"n.a.\" is not a percentage"),
    ("eps-divides-by-zero", base(eps="8/0"), "eps: '8/0' divides by zero"),
    ("eps-words", base(eps="eight"), "eps: 'eight' is not a budget"),
    ("passes-as-string", base(number_forward_passes="1"), "number_forward_passes: expected an integer >= 1"),
    ("additional-data-as-string", base(additional_data="no"), "additional_data: expected true or false"),
    ("unreliable-as-string", base(unreliable="yes"), "unreliable: expected true or false"),
    ("name-as-number", base(name=7), "name: expected a string"),
]


@pytest.mark.parametrize("case,info,message", BAD, ids=[b[0] for b in BAD])
def test_a_malformed_file_is_one_line_naming_the_file_and_field(tmp_path, host, case, info, message):
    good, bad = write_infos(tmp_path, "cifar10", "Linf", {"Fine2020": LINF["Example2019Unlabeled"], case: info})
    result = invoke(["leaderboard", "import", good, bad, "--from", "robustbench", "-o", tmp_path / "out.json"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"Error: {bad}: ") and message in result.output
    assert result.output.count("\n") == 1 and "Traceback" not in result.output
    assert not (tmp_path / "out.json").exists()


@pytest.mark.parametrize("case", ["directory", "not-json", "a-list", "not-utf8", "missing", "infinity"])
def test_files_that_are_not_model_info_json(tmp_path, host, case):
    path = tmp_path / "cifar10" / "Linf" / "Bad.json"
    path.parent.mkdir(parents=True)
    expected = {"directory": "is a folder, not a model_info JSON file", "not-json": "not JSON: ",
                "a-list": "the top level is an array, not an object", "not-utf8": "not a text file",
                "missing": "cannot read", "infinity": "Infinity is not a number"}[case]
    if case == "directory":
        path.mkdir()
    elif case == "not-json":
        path.write_text("{\"name\": ")
    elif case == "a-list":
        path.write_text("[]")
    elif case == "not-utf8":
        path.write_bytes(b"\xff\xfe\x00")
    elif case == "infinity":
        path.write_text(json.dumps(base(), allow_nan=True).replace('"59.53"', "Infinity"))
    result = invoke(["leaderboard", "import", path, "--from", "robustbench", "-o", tmp_path / "out.json"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"Error: {path}: ") and expected in result.output
    assert result.output.count("\n") == 1 and "Traceback" not in result.output


def test_import_needs_the_format_named(tmp_path, host):
    path = write_infos(tmp_path, "cifar10", "Linf", LINF)[0]
    result = invoke(["leaderboard", "import", path, "-o", tmp_path / "out.json"])
    assert result.exit_code == 2 and "--from" in result.output and "Traceback" not in result.output
