"""bench compare: what changed between two runs on the same test images, with a CI over
seeds; first of all what the thesis's leak changed (thesis vs thesis-noleak)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from scipy import stats as scipy_stats

from bench.cli import main
from bench.compare import compare_tables, cost_tables, t_interval
from bench.run_dir import RunTables

from tiny_runs import checksums, run_argv, tiny_plugin_source

PLUGIN = tiny_plugin_source("tiny_fcn")


def rows(name, seed, values, classes=("cytoplasm", "nucleus")):
    return [
        {
            "architecture": name,
            "seed": seed,
            "fold": None,
            "image_id": f"{i}",
            "class": c,
            "dice": v,
        }
        for i, v in enumerate(values)
        for c in classes
    ]


def test_the_change_over_seeds_is_a_t_interval_of_per_seed_differences():
    first = RunTables([], [], rows("a", 0, [0.5, 0.7]) + rows("a", 1, [0.6, 0.8]))
    second = RunTables(
        [], [], rows("a", 0, [0.6, 0.8]) + rows("a", 1, [0.8, 0.9]) + rows("b", 0, [1, 1])
    )
    (row,) = compare_tables(first, second, ("cytoplasm", "nucleus"))
    differences = [0.7 - 0.6, 0.85 - 0.7]  # per seed: mean over the two images
    assert row["seeds"] == 2 and row["images"] == 2
    assert row["seed_mean_difference"] == pytest.approx(np.mean(differences))
    half = scipy_stats.t.ppf(0.975, 1) * np.std(differences, ddof=1) / np.sqrt(2)
    assert row["seed_ci_low"] == pytest.approx(np.mean(differences) - half)
    assert row["seed_ci_high"] == pytest.approx(np.mean(differences) + half)
    assert t_interval([0.1]) is None


@pytest.fixture(scope="module")
def leak_runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("leak")
    plugin = folder / "tiny_fcn.py"
    plugin.write_text(PLUGIN)
    runs = {}
    for protocol in ("thesis", "thesis-noleak"):
        out = folder / protocol
        argv = run_argv(
            "tiny_fcn",
            plugin=plugin,
            protocol=protocol,
            synthetic_count=20,
            synthetic_size=120,
            num_folds=None,
            seeds=[0, 1],
            epochs=2,
            batch_size=8,
            out=out,
        )
        assert main(argv) == 0
        runs[protocol] = out
    return runs


def test_bench_compare_states_what_the_leak_changed(leak_runs, tmp_path, capsys):
    out = tmp_path / "leak"
    assert (
        main(
            [
                "compare",
                str(leak_runs["thesis"]),
                str(leak_runs["thesis-noleak"]),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    markdown = (out / "comparison.md").read_text()
    assert "protocol: 'thesis' → 'thesis-noleak'" in markdown
    assert "protocol leaked_test_images:" in markdown and "→ 0" in markdown
    with (out / "comparison.csv").open(newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["architecture"] == "tiny_fcn" and row["seeds"] == "2"
    # Recomputed from the two runs' per-image rows: the same test images, per seed.
    means = {}
    for protocol, run in leak_runs.items():
        with (run / "per_image.csv").open(newline="") as handle:
            per_image = list(csv.DictReader(handle))
        for seed in ("0", "1"):
            by_image = {}
            for r in per_image:
                if r["seed"] == seed and r["class"] in ("cytoplasm", "nucleus"):
                    by_image.setdefault(r["image_id"], []).append(float(r["dice"]))
            means[protocol, seed] = np.mean([np.mean(v) for v in by_image.values()])
    differences = [means["thesis-noleak", s] - means["thesis", s] for s in ("0", "1")]
    assert float(row["seed_mean_difference"]) == pytest.approx(np.mean(differences))
    assert int(row["images"]) == len(by_image)
    assert "`tiny_fcn`:" in markdown and ("CI over seeds" in markdown)
    # Cost: recomputed from the two runs' cells.csv (both trained here, on this machine).
    seconds = {}
    for protocol, run in leak_runs.items():
        with (run / "cells.csv").open(newline="") as handle:
            seconds[protocol] = sum(float(c["train_seconds"]) for c in csv.DictReader(handle))
    with (out / "comparison_cost.csv").open(newline="") as handle:
        (cost,) = list(csv.DictReader(handle))
    assert cost["architecture"] == "tiny_fcn" and cost["cells"] == "2"
    assert float(cost["first_train_seconds"]) == pytest.approx(seconds["thesis"] / 2)
    assert float(cost["train_time_ratio"]) == pytest.approx(
        seconds["thesis-noleak"] / seconds["thesis"]
    )
    assert "## Cost" in markdown and "so their times compare directly" in markdown


def test_compare_refuses_an_out_holding_other_files(leak_runs, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    before = checksums(out)
    assert (
        main(
            [
                "compare",
                str(leak_runs["thesis"]),
                str(leak_runs["thesis-noleak"]),
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert "holds other files (notes.txt)" in capsys.readouterr().err
    assert checksums(out) == before


def test_compare_needs_shared_test_images(leak_runs, tmp_path, capsys):
    other = tmp_path / "clean"
    plugin = leak_runs["thesis"].parent / "tiny_fcn.py"
    assert main(run_argv("tiny_fcn", plugin=plugin, epochs=1, out=other)) == 0
    assert main(["compare", str(leak_runs["thesis"]), str(other)]) == 2
    assert "no architecture scored on the same test images" in capsys.readouterr().err


def test_tiny_p_values_read_as_below_the_printed_precision():
    from bench.compare import _p_text

    assert _p_text(0.00003) == "< 0.0001"
    assert _p_text(0.0312) == "0.0312"
    assert _p_text(None) == "—"


def cell(name, seed, fold, seconds, epochs=10, images_per_second=None, status="ok"):
    return {
        "architecture": name,
        "seed": seed,
        "fold": fold,
        "status": status,
        "epochs": epochs,
        "train_seconds": seconds,
        "images_per_second": images_per_second,
    }


def test_the_cost_counts_only_cells_both_runs_finished():
    first = [
        cell("a", 0, 0, 100.0, epochs=30, images_per_second=60.0),
        cell("a", 0, 1, 120.0, epochs=30, images_per_second=50.0),
        cell("a", 1, 0, 999.0),  # not in the second run
        cell("b", 0, 0, 50.0),
    ]
    second = [
        cell("a", 0, 0, 400.0, epochs=100, images_per_second=48.0),
        cell("a", 0, 1, 500.0, epochs=120, images_per_second=46.0),
        cell("b", 0, 0, None, status="failed"),  # failed: b has no shared cell
        cell("c", 0, 0, 10.0),
    ]
    (row,) = cost_tables(first, second)
    assert row["architecture"] == "a" and row["cells"] == 2
    assert row["first_epochs"] == 30 and row["second_epochs"] == 110
    assert row["first_train_seconds"] == 110 and row["second_train_seconds"] == 450
    assert row["first_images_per_second"] == 55 and row["second_images_per_second"] == 47
    assert row["train_time_ratio"] == pytest.approx(900 / 220)


def test_times_from_different_machines_are_said_to_differ():
    from bench.compare import cost_section

    def meta(device, earlier=()):
        return {
            "environment": {"device_name": device},
            "earlier_environments": [{"device_name": d} for d in earlier],
        }

    rows = cost_tables([cell("a", 0, 0, 10.0)], [cell("a", 0, 0, 20.0)])
    same = "\n".join(cost_section(rows, meta("CPU: X"), meta("CPU: X", ["CPU: X"])))
    assert "Both runs were trained on CPU: X" in same and "| a | 1 |" in same
    assert "2.00×" in same
    mixed = "\n".join(cost_section(rows, meta("CPU: X"), meta("CPU: X", ["CPU: Y"])))
    assert "the second on CPU: X; CPU: Y" in mixed and "only the epochs compare" in mixed


def wbc1_meta(protocol: str, recipe: str) -> dict:
    thesis = protocol in ("thesis", "thesis-noleak")
    return {
        "config": {"recipe": recipe, "epochs": 30},
        "dataset": {
            "name": "wbc1",
            "class_names": ["background", "cytoplasm", "nucleus"],
            "metric_classes": ["background", "cytoplasm", "nucleus"],
        },
        "protocol": {"name": protocol, "thesis_reference": thesis},
    }


def wbc1_tables(values: dict[str, list[tuple[float, float]]]) -> RunTables:
    """One cell per architecture (seed 0, fold 0); ``values`` gives each test image's
    (cytoplasm, nucleus) Dice."""
    cells, per_image = [], []
    for name, images in values.items():
        cells.append(cell(name, 0, 0, 10.0))
        for i, (cytoplasm, nucleus) in enumerate(images):
            for cls, dice in (("background", 0.99), ("cytoplasm", cytoplasm), ("nucleus", nucleus)):
                per_image.append(
                    {
                        "architecture": name,
                        "seed": 0,
                        "fold": 0,
                        "image_id": str(i),
                        "class": cls,
                        "dice": dice,
                        "jaccard": dice / (2 - dice),
                        "jaccard_legacy": dice,
                    }
                )
    return RunTables(cells, [], per_image)


def test_a_recipe_comparison_on_wbc1_holds_both_runs_against_the_thesis():
    from bench import report, stats
    from bench.aggregate import flagged_summary
    from bench.compare import run_labels, thesis_goal_section

    first_meta, second_meta = wbc1_meta("clean", "thesis"), wbc1_meta("clean", "modern")
    first, _ = flagged_summary(
        first_meta, wbc1_tables({"a": [(0.90, 0.93), (0.92, 0.95), (0.91, 0.94)]})
    )
    second, _ = flagged_summary(
        second_meta, wbc1_tables({"a": [(0.97, 0.985), (0.975, 0.99), (0.965, 0.99)]})
    )
    labels = run_labels(first_meta, second_meta)
    # Two clean runs are told apart by their recipe; the leak comparison keeps its names.
    assert labels == ("`clean`, recipe `thesis`", "`clean`, recipe `modern`")
    leak = run_labels(wbc1_meta("thesis", "thesis"), wbc1_meta("thesis-noleak", "thesis"))
    assert leak == ("`thesis`", "`thesis-noleak`")
    reference = report.load_thesis_reference()
    runs = ((labels[0], first_meta, first), (labels[1], second_meta, second))
    text = "\n".join(thesis_goal_section(runs, ["a"], reference))
    table = [line for line in text.splitlines() if line.startswith("| a |")]
    assert len(table) == 2 and labels[0] in table[0] and labels[1] in table[1]
    # First run, cytoplasm: mean ± SEM over its three images, minus the published 0.970
    # with the Welch CI, recomputed here.
    cytoplasm = [0.90, 0.92, 0.91]
    sem = np.std(cytoplasm, ddof=1) / np.sqrt(3)
    change, low, high = stats.welch_difference(np.mean(cytoplasm), sem, 3, 0.970, 0.0030, 30)
    assert (
        f"{np.mean(cytoplasm):.4f} ± {sem:.4f} | {change:+.4f} [{low:+.4f}, {high:+.4f}]"
        in (table[0])
    )
    assert table[0].endswith("| falls short on cytoplasm and nucleus |")
    assert table[1].endswith("| reaches it (not told apart) |")
    assert f"- {labels[0]}: The best unflagged architecture in this run, `a`" in text
    # Not for a thesis protocol (its own tables carry the published rows), nor other data.
    thesis = (labels[0], wbc1_meta("thesis", "thesis"), first)
    assert thesis_goal_section((thesis, runs[1]), ["a"], reference) == []
    other = wbc1_meta("clean", "modern")
    other["dataset"]["name"] = "synthetic"
    assert thesis_goal_section((runs[0], (labels[1], other, second)), ["a"], reference) == []


def test_runs_over_folds_are_also_compared_per_training_run():
    def fold_rows(seed, fold, values):
        return [dict(r, fold=fold) for r in rows("a", seed, values)]

    first = RunTables(
        [],
        [],
        fold_rows(0, 0, [0.5, 0.7])
        + fold_rows(0, 1, [0.4, 0.6])
        + fold_rows(1, 0, [0.6, 0.8])
        + fold_rows(1, 1, [0.5, 0.5]),
    )
    second = RunTables(
        [],
        [],
        fold_rows(0, 0, [0.6, 0.8])
        + fold_rows(0, 1, [0.6, 0.6])
        + fold_rows(1, 0, [0.8, 0.8])
        + fold_rows(1, 1, [0.6, 0.7]),
    )
    (row,) = compare_tables(first, second, ("cytoplasm", "nucleus"))
    # per (seed, fold) cell: the difference of its mean over its two images
    by_cell = [0.7 - 0.6, 0.6 - 0.5, 0.8 - 0.7, 0.65 - 0.5]
    assert row["seeds"] == 2 and row["cells"] == 4 and row["images"] == 4
    assert row["cell_mean_difference"] == pytest.approx(np.mean(by_cell))
    half = scipy_stats.t.ppf(0.975, 3) * np.std(by_cell, ddof=1) / np.sqrt(4)
    assert row["cell_ci_low"] == pytest.approx(np.mean(by_cell) - half)
    assert row["cell_ci_high"] == pytest.approx(np.mean(by_cell) + half)
    # a single fold (the thesis protocols): the cells are the seeds
    (single,) = compare_tables(
        RunTables([], [], rows("a", 0, [0.5, 0.7]) + rows("a", 1, [0.6, 0.8])),
        RunTables([], [], rows("a", 0, [0.6, 0.8]) + rows("a", 1, [0.8, 0.9])),
        ("cytoplasm", "nucleus"),
    )
    assert single["cells"] == single["seeds"] == 2
    assert single["cell_ci_low"] == pytest.approx(single["seed_ci_low"])


def test_the_verdict_counts_training_runs_where_the_runs_span_folds():
    from bench.compare import change_verdict

    row = {
        "seeds": 2,
        "seed_ci_low": -0.02,
        "seed_ci_high": 0.15,
        "cells": 10,
        "cell_ci_low": 0.05,
        "cell_ci_high": 0.08,
    }
    text = change_verdict(row)
    assert text.startswith("the endpoint rose: the 95 % CI over its 10 training runs")
    assert text.endswith("over its 2 seeds alone ([-0.0200, +0.1500]) it does not")
    assert "it does too" in change_verdict({**row, "seed_ci_low": 0.01})
    assert change_verdict({**row, "cell_ci_low": -0.01}).startswith("no change beyond the noise")
    assert change_verdict({**row, "seeds": 1, "seed_ci_low": None, "seed_ci_high": None}).endswith(
        "with one seed there is no CI over seeds"
    )
    # one fold: the cells are the seeds, and the verdict is the one over seeds
    single = {**row, "cells": 2, "cell_ci_low": -0.02, "cell_ci_high": 0.15}
    assert change_verdict(single).startswith("no change beyond seed noise")
    assert change_verdict({**single, "seed_ci_low": 0.01}).startswith("the endpoint rose")
