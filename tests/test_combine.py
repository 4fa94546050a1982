"""bench combine: add a model to an existing comparison by training only its own cells."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from bench.cli import main

from tiny_runs import checksums, run_argv, tiny_plugin_source

PLUGIN = tiny_plugin_source("my_model")

SETTINGS = {"seeds": [0, 1], "epochs": 1, "deterministic": True}


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("combine")
    baseline = folder / "baseline"
    assert main(run_argv("segnet_basic", "deconvnet", out=baseline, **SETTINGS)) == 0
    plugin = folder / "my_model.py"
    plugin.write_text(PLUGIN)
    mine = folder / "mine"
    assert main(run_argv("my_model", plugin=plugin, out=mine, **SETTINGS)) == 0
    return baseline, mine, plugin


def test_adding_a_plugin_keeps_the_baselines_rows(runs, tmp_path, capsys):
    baseline, mine, _ = runs
    out = tmp_path / "with_mine"
    before = checksums(baseline)
    assert main(["combine", str(baseline), str(mine), "--out", str(out)]) == 0
    assert checksums(baseline) == before  # the sources are only read
    combined = {r["architecture"]: r for r in rows(out / "summary.csv")}
    assert list(combined) == ["segnet_basic", "deconvnet", "my_model"]
    for original in rows(baseline / "summary.csv"):
        assert combined[original["architecture"]] == original
    assert rows(out / "per_image.csv")[: len(rows(baseline / "per_image.csv"))] == rows(
        baseline / "per_image.csv"
    )
    assert len(rows(out / "statistics.csv")) == 3
    record = json.loads((out / "cells" / "my_model_seed1_fold0.json").read_text())
    assert record["source"]["run"] == str(mine) and record["source"]["git_commit"]
    assert (out / "predictions" / "my_model").is_dir() and (out / "predictions.png").is_file()
    report = (out / "report.md").read_text()
    assert "my_model" in report and "segnet_basic" in report
    # A combined directory is not trained into.
    capsys.readouterr()
    assert main(run_argv("segnet_basic", "deconvnet", "my_model", out=out, **SETTINGS)) == 2
    assert "a combination of other runs" in capsys.readouterr().err


def test_runs_that_differ_are_refused_with_the_keys(runs, tmp_path, capsys):
    baseline, _, plugin = runs
    other = tmp_path / "other"
    argv = run_argv("my_model", plugin=plugin, out=other, **{**SETTINGS, "epochs": 2})
    assert main(argv) == 0
    out = tmp_path / "combined"
    assert main(["combine", str(baseline), str(other), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "is not comparable" in err and "epochs: 1 -> 2" in err
    assert not out.exists()


def test_an_architecture_in_two_runs_is_refused(runs, tmp_path, capsys):
    baseline, _, _ = runs
    assert main(["combine", str(baseline), str(baseline), "--out", str(tmp_path / "x")]) == 2
    assert "is in both" in capsys.readouterr().err
