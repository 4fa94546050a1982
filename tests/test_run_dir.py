"""The run directory has one owner: a finished cell's results appear all at once, a
directory that is not a run is never written, damaged files give clear errors (or the cell
is trained again), and every refusal leaves what existed before unchanged.

Kills at every write point are in tests/test_crash_safety.py.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
import textwrap
from pathlib import Path

import pytest
import torch

from bench import runner
from bench.cli import main
from bench.run_dir import ERROR_TEXT_LIMIT, CellRecord, RunDir, cap_text, read_csv
from bench.suite import new_default_out_dir

from tiny_runs import checksums, on_epoch_end, run_argv

ARGV = run_argv("segnet_basic", seeds=[0, 1], epochs=1, deterministic=True)


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rundir") / "run"
    assert main([*ARGV, "--out", str(out)]) == 0
    return out


@pytest.fixture
def copy_of(finished, tmp_path):
    def make() -> Path:
        target = tmp_path / "copy"
        shutil.copytree(finished, target)
        return target

    return make


def must_not_train(*args, **kwargs):
    raise AssertionError("a finished cell was trained again")


# ------------------------------------------------------------------ derived tables


def test_every_finished_cell_has_one_record_and_the_tables_derive_from_them(finished):
    records, problems = RunDir(finished).load_records()
    assert not problems
    assert sorted(records) == [("segnet_basic", 0, 0), ("segnet_basic", 1, 0)]
    per_image = rows(finished / "per_image.csv")
    assert len(per_image) == sum(len(r.per_image) for r in records.values()) > 0


@pytest.mark.parametrize("table", ["per_image", "history", "cells"])
def test_a_lost_table_is_derived_again_without_training(copy_of, monkeypatch, capsys, table):
    run = copy_of()
    before = (run / f"{table}.csv").read_bytes()
    (run / f"{table}.csv").unlink()  # as a kill between two renames, or a user, leaves it
    monkeypatch.setattr("bench.suite.train_cell", must_not_train)
    assert main([*ARGV, "--out", str(run)]) == 0
    assert (run / f"{table}.csv").read_bytes() == before
    assert "over the 4 test images" in (run / "report.md").read_text()


def test_bench_report_derives_a_deleted_per_image_table(copy_of, capsys):
    run = copy_of()
    before = (run / "per_image.csv").read_bytes()
    (run / "per_image.csv").write_text("architecture,seed\n")  # stale, as after a crash
    assert main(["report", str(run)]) == 0
    assert (run / "per_image.csv").read_bytes() == before


def test_a_record_whose_outputs_are_missing_is_trained_again(copy_of, capsys):
    run = copy_of()
    (run / "predictions" / "segnet_basic" / "seed-1").rename(run / "moved")
    assert main([*ARGV, "--out", str(run)]) == 0
    err = capsys.readouterr().err
    assert "segnet_basic_seed1_fold0: incomplete (no predicted mask" in err
    assert "1 cell(s) already done" in err
    assert sorted(p.name for p in (run / "moved").iterdir()) == sorted(
        p.name for p in (run / "predictions" / "segnet_basic" / "seed-1").iterdir()
    )


def test_a_run_made_before_recipes_resumes_as_the_thesis_recipe(copy_of, monkeypatch, capsys):
    run = copy_of()
    meta = json.loads((run / "config.json").read_text())
    assert meta["config"].pop("recipe") == "thesis"
    meta["config"].pop("recipe_settings")
    (run / "config.json").write_text(json.dumps(meta))
    monkeypatch.setattr("bench.suite.train_cell", must_not_train)
    assert main([*ARGV, "--out", str(run)]) == 0
    assert "Recipe `thesis`" in (run / "report.md").read_text()


def test_a_run_committed_without_checkpoints_resumes_without_training(copy_of, monkeypatch, capsys):
    # Reference runs are committed without their final checkpoints (size) and finished in a
    # later invocation: the finished cells stand, nothing is trained or changed again.
    run = copy_of()
    shutil.rmtree(run / "checkpoints")
    before = checksums(run / "cells"), (run / "per_image.csv").read_bytes()
    monkeypatch.setattr("bench.suite.train_cell", must_not_train)
    assert main([*ARGV, "--out", str(run)]) == 0
    err = capsys.readouterr().err
    assert "2 finished cell(s) have no final checkpoint" in err and "results stand" in err
    assert (checksums(run / "cells"), (run / "per_image.csv").read_bytes()) == before
    assert not (run / "checkpoints").exists() or not any((run / "checkpoints").iterdir())


@pytest.mark.parametrize(
    "damage",
    [
        lambda text: text[: len(text) // 2],  # truncated
        lambda text: text.replace('"seed": 1', '"seed": "one"'),  # wrong type
        lambda text: "[]",
    ],
    ids=["truncated", "wrong-type", "not-an-object"],
)
def test_a_damaged_record_is_reported_and_its_cell_trained_again(copy_of, capsys, damage):
    run = copy_of()
    path = run / "cells" / "segnet_basic_seed1_fold0.json"
    expected = rows(run / "per_image.csv")
    path.write_text(damage(path.read_text()))
    assert main([*ARGV, "--out", str(run)]) == 0
    err = capsys.readouterr().err
    assert "segnet_basic_seed1_fold0.json" in err and "trained again" in err
    assert rows(run / "per_image.csv") == expected  # deterministic: the same numbers
    CellRecord.from_json(path, json.loads(path.read_text()))  # a good record again


def test_a_resumed_cell_counts_the_time_of_every_invocation(tmp_path, monkeypatch, capsys):
    out = tmp_path / "cut"
    argv = [*run_argv("segnet_basic", epochs=2, deterministic=True), "--out", str(out)]

    def cut(result, epoch):
        if epoch == 1:
            raise runner.CellInterrupted()

    on_epoch_end(monkeypatch, cut)
    assert main(argv) == 130
    checkpoint = out / "resume" / "segnet_basic_seed0_fold0.pt"
    earlier = torch.load(checkpoint, weights_only=True)["elapsed_seconds"]
    assert earlier > 0
    on_epoch_end(monkeypatch, None)
    assert main(argv) == 0
    (cell,) = rows(out / "cells.csv")
    assert float(cell["total_seconds"]) > earlier
    assert float(cell["total_seconds"]) > float(cell["train_seconds"])


def _suite_cost():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "suite_cost.py"
    spec = importlib.util.spec_from_file_location("suite_cost", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_write_phase_is_timed_and_the_cost_table_adds_up(copy_of, monkeypatch, capsys):
    """Each record holds its predictions' and checkpoint's write time (measured before the
    record, its commit point); timing.json the writes after it and the report's; the cost
    table's phases add up to each cell's total plus its writes, and a resume keeps the
    times of the cells done before it."""
    run = copy_of()
    records, _ = RunDir(run).load_records()
    timing = RunDir(run).read_timing()
    assert timing["report_seconds"] > 0
    for key, record in records.items():
        assert record.row["write_seconds"] > 0
        assert timing["after_record_seconds"][f"segnet_basic_seed{key[1]}_fold0"] > 0
    assert [float(r["write_seconds"]) > 0 for r in rows(run / "cells.csv")] == [True, True]

    cost = _suite_cost().suite_cost(run)
    (row,) = cost["architectures"]
    assert row["cells"] == 2 and row["write_unmeasured"] == 0
    expected_total = sum(
        r.row["total_seconds"] + r.row["write_seconds"] for r in records.values()
    ) + sum(timing["after_record_seconds"].values())
    assert row["total"] == pytest.approx(expected_total)
    assert row["train"] == pytest.approx(
        sum(h["seconds"] for r in records.values() for h in r.history if h["split"] == "train")
    )
    assert row["validate"] == 0.0  # no validation split under the thesis recipe
    assert sum(row["shares"].values()) == pytest.approx(1.0)
    assert cost["wall_seconds"] >= 0 and not cost["resumed"]
    table = "\n".join(_suite_cost().render_cost(cost))
    assert "| `segnet_basic` | 2 |" in table and "not measured" not in table

    # A resume keeps the times of the cells done before it and times the cell it trains.
    seed0 = timing["after_record_seconds"]["segnet_basic_seed0_fold0"]
    (run / "cells" / "segnet_basic_seed1_fold0.json").unlink()  # trained again
    assert main([*ARGV, "--out", str(run)]) == 0
    after = RunDir(run).read_timing()["after_record_seconds"]
    assert after["segnet_basic_seed0_fold0"] == seed0
    assert sorted(after) == ["segnet_basic_seed0_fold0", "segnet_basic_seed1_fold0"]
    assert _suite_cost().suite_cost(run)["resumed"]
    # A lost timing.json loses no result: the table says which writes were not measured.
    (run / "timing.json").unlink()
    cost = _suite_cost().suite_cost(run)
    assert cost["architectures"][0]["write_unmeasured"] == 2
    assert "(2 cell(s) not measured)" in "\n".join(_suite_cost().render_cost(cost))


# ------------------------------------------------------------------ ownership


def test_out_that_is_not_a_run_directory_is_refused_and_untouched(tmp_path, capsys):
    out = tmp_path / "mine"
    (out / "checkpoints").mkdir(parents=True)
    (out / "report.md").write_text("my notes\n")
    (out / "summary.csv").write_text("a,b\n1,2\n")
    (out / "checkpoints" / "model.pt").write_bytes(b"weights")
    before = checksums(out)
    assert main([*ARGV, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "is not a bench run directory" in err and str(out) in err and "report.md" in err
    assert checksums(out) == before


def test_an_empty_folder_may_become_a_run(tmp_path, capsys):
    out = tmp_path / "empty"
    out.mkdir()
    (out / ".config.json.abcd1234.tmp").write_bytes(b"{")  # left by a run killed at once
    assert main([*run_argv("segnet_basic", epochs=1), "--out", str(out)]) == 0
    assert (out / "config.json").is_file() and (out / "cells.csv").is_file()


def test_a_run_directory_being_written_is_locked(finished, copy_of, capsys):
    run = copy_of()
    with RunDir(run).lock():
        before = checksums(run)
        assert main([*ARGV, "--out", str(run)]) == 2
        assert "another bench process" in capsys.readouterr().err
        assert main(["report", str(run)]) == 2
        assert "another bench process" in capsys.readouterr().err
    assert checksums(run) == before


def test_default_run_directories_started_in_the_same_second_differ(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    made = {new_default_out_dir("clean") for _ in range(3)}
    assert len(made) == 3 and all(p.is_dir() and not any(p.iterdir()) for p in made)


def test_stale_temporaries_are_removed_and_nothing_else(copy_of, monkeypatch, capsys):
    run = copy_of()
    stale = run / "predictions" / ".syn0002.png.abcd1234.tmp"
    stale.write_bytes(b"half")
    kept = run / "predictions" / "notes.tmp"  # not a name bench gives its temporaries
    kept.write_bytes(b"mine")
    monkeypatch.setattr("bench.suite.train_cell", must_not_train)
    assert main([*ARGV, "--out", str(run)]) == 0
    assert not stale.exists() and kept.read_bytes() == b"mine"
    assert "left half-written by a killed run" in capsys.readouterr().err


# ------------------------------------------------------------------ long and damaged text

HUGE_ERROR_PLUGIN = """
import torch
from architectures import register_architecture


class Broken(torch.nn.Conv2d):
    def forward(self, x):
        if self.training:
            raise RuntimeError("compile failed: " + "x" * 230_000)
        return super().forward(x)


@register_architecture("huge_error")
def huge_error(num_classes=3, in_channels=3, width=1.0):
    return Broken(in_channels, num_classes, 3, padding=1)
"""


def test_a_huge_error_text_is_capped_and_the_report_renders(tmp_path, capsys):
    plugin = tmp_path / "huge.py"
    plugin.write_text(textwrap.dedent(HUGE_ERROR_PLUGIN))
    out = tmp_path / "run"
    argv = run_argv("huge_error", plugin=plugin, width=None, epochs=1, out=out)
    assert main(argv) == 1
    (cell,) = rows(out / "cells.csv")
    assert len(cell["error"]) <= ERROR_TEXT_LIMIT + 100
    assert cell["error"].startswith("RuntimeError: compile failed: xxx")
    assert "characters omitted" in cell["error"]
    assert main(["report", str(out)]) == 0
    assert main(argv) == 1  # resume reads it back: nothing to train, still failed


def test_cap_text_keeps_head_and_tail():
    text = "head" + "m" * 10_000 + "tail"
    capped = cap_text(text, limit=100)
    assert capped.startswith("headmm") and capped.endswith("mmtail") and len(capped) < 160
    assert cap_text("short") == "short"


def test_read_csv_takes_long_fields_and_names_bad_lines(tmp_path):
    path = tmp_path / "cells.csv"
    path.write_text("a,b\n" + "x" * 300_000 + ",1\n")
    assert len(read_csv(path)[0]["a"]) == 300_000
    path.write_text("a,b\n1,2\n3\n")
    with pytest.raises(Exception, match=r"cells.csv:3: 1 fields where the header has 2"):
        read_csv(path)


# A format-1 directory (as committed under reports/ before cell records existed) keeps its
# CSVs as the only record: `bench report` renders it, and damage there is a clear error.


@pytest.fixture
def format_one(tmp_path, repo_root) -> Path:
    target = tmp_path / "format1"
    shutil.copytree(repo_root / "tests" / "data" / "format1_thesis_wbc1", target)
    return target


def test_a_format_one_directory_still_renders(format_one, capsys):
    before = (format_one / "report.md").read_text()
    assert main(["report", str(format_one)]) == 0
    assert (format_one / "report.md").read_text() == before


@pytest.mark.parametrize(
    "file, damage, message",
    [
        ("cells.csv", lambda b: b.replace(b"unet_thesis", b"unet_\xff\xfe", 1), "not UTF-8"),
        ("cells.csv", lambda b: b.replace(b",0,", b",zero,", 1), "must be an integer"),
        ("cells.csv", lambda b: b.rstrip(b"\n").rsplit(b",", 3)[0] + b"\n", "fields where"),
        ("config.json", lambda b: b"[]", "not a JSON object"),
        ("config.json", lambda b: b"{", "not valid JSON"),
    ],
    ids=["non-utf8", "non-integer-seed", "truncated-row", "config-list", "config-broken"],
)
def test_damaged_run_files_are_clear_errors_and_nothing_changes(
    format_one, capsys, file, damage, message
):
    path = format_one / file
    path.write_bytes(damage(path.read_bytes()))
    before = checksums(format_one)
    assert main(["report", str(format_one)]) == 2
    err = capsys.readouterr().err
    assert message in err and file in err
    assert checksums(format_one) == before


def test_resuming_a_directory_with_a_broken_config_is_a_clear_error(copy_of, capsys):
    run = copy_of()
    (run / "config.json").write_text("[]")
    before = checksums(run)
    assert main([*ARGV, "--out", str(run)]) == 2
    assert "config.json: holds list, not a JSON object" in capsys.readouterr().err
    assert checksums(run) == before
