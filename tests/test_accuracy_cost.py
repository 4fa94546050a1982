"""accuracy_cost.png (the primary endpoint against cost, its Pareto front) and the
per-architecture confusion matrices (confusion.csv, confusion.png)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from bench import report
from bench.images import write_mask
from bench.run_dir import RunDir, RunTables, write_csv

PALETTE = [0, 128, 255]
CLASSES = ["background", "cytoplasm", "nucleus"]


def meta() -> dict:
    return {
        "dataset": {"palette": PALETTE, "class_names": CLASSES},
        "config": {"seeds": [3, 4]},
    }


def tables(*names: str) -> RunTables:
    return RunTables([{"architecture": n} for n in names], [], [])


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


# --------------------------------------------------------------------------- pareto_front


def test_pareto_front_keeps_the_non_dominated_points():
    points = [("a", 1.0, 0.5), ("b", 2.0, 0.7), ("c", 3.0, 0.6), ("d", 4.0, 0.9)]
    assert report.pareto_front(points) == ["a", "b", "d"]


def test_pareto_front_a_point_better_in_both_dominates_all():
    assert report.pareto_front([("x", 5.0, 0.1), ("y", 1.0, 0.9), ("z", 3.0, 0.5)]) == ["y"]


def test_pareto_front_ties_and_equal_points():
    # equal points dominate neither; same cost, lower score is dominated
    assert report.pareto_front([("a", 1.0, 0.5), ("b", 1.0, 0.5), ("c", 1.0, 0.4)]) == [
        "a",
        "b",
    ]
    # same score, higher cost is dominated
    assert report.pareto_front([("a", 1.0, 0.5), ("b", 2.0, 0.5)]) == ["a"]


def test_pareto_front_skips_missing_values_and_empty_input():
    assert report.pareto_front([]) == []
    assert report.pareto_front([("a", math.nan, 0.9), ("b", 2.0, 0.1)]) == ["b"]


# --------------------------------------------------------------------------- accuracy_cost


def write_tables(run: RunDir, rows: list[tuple[str, float, float, float, float, str]]) -> None:
    write_csv(
        run.table_path("summary"),
        ("architecture", "params", "gflops", "train_seconds", "flags"),
        [
            {"architecture": n, "params": p, "gflops": 1.0, "train_seconds": t, "flags": f}
            for n, _, _, p, t, f in rows
        ],
    )
    write_csv(
        run.table_path("statistics"),
        ("architecture", "images", "image_mean", "image_sem"),
        [
            {"architecture": n, "images": 12, "image_mean": m, "image_sem": s}
            for n, m, s, *_ in rows
        ],
    )


def test_accuracy_cost_is_drawn_for_two_or_more_architectures(tmp_path):
    run = RunDir(tmp_path)
    write_tables(
        run,
        [
            ("unet", 0.82, 0.01, 7.8e6, 120.0, ""),
            ("segnet", 0.78, 0.02, 2.9e7, 90.0, ""),
            ("fcn", 0.70, 0.015, 1.3e8, 200.0, "did not learn nucleus"),
            ("tiny", 0.60, 0.03, 4.0e5, 30.0, ""),
        ],
    )
    report.render_accuracy_cost(run, meta(), tables("unet", "segnet", "fcn", "tiny"))
    png = run.figure_path("accuracy_cost")
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_accuracy_cost_is_skipped_for_one_architecture(tmp_path):
    run = RunDir(tmp_path)
    write_tables(run, [("unet", 0.82, 0.01, 7.8e6, 120.0, "")])
    report.render_accuracy_cost(run, meta(), tables("unet"))
    assert not run.figure_path("accuracy_cost").exists()


# --------------------------------------------------------------------------- confusion


@pytest.fixture
def fake_run(tmp_path) -> RunDir:
    run = RunDir(tmp_path)
    (tmp_path / "truth").mkdir()
    (tmp_path / "predictions" / "unet" / "seed-4").mkdir(parents=True)
    truth_a = np.array([[0, 0, 1], [1, 2, 2]])
    pred_a = np.array([[0, 1, 1], [1, 2, 0]])
    truth_b = np.array([[0, 1], [2, 2]])
    pred_b = np.array([[0, 1], [2, 1]])
    write_mask(run.truth_path("a"), truth_a, PALETTE)
    write_mask(run.truth_path("b"), truth_b, PALETTE)
    write_mask(run.prediction_path("unet", 3, "a", 3), pred_a, PALETTE)
    write_mask(run.prediction_path("unet", 3, "b", 3), pred_b, PALETTE)
    # another seed's prediction is not counted
    write_mask(run.prediction_path("unet", 4, "a", 3), np.zeros((2, 3), int), PALETTE)
    return run


def test_confusion_fractions_are_normalised_by_the_truth(fake_run):
    report.render_confusion(fake_run, meta(), tables("unet", "failed_net"))
    rows = read_rows(fake_run.table_path("confusion"))
    assert list(rows[0]) == list(report.CONFUSION_COLUMNS)
    assert {r["architecture"] for r in rows} == {"unet"}  # no predictions: skipped
    got = {(r["true_class"], r["predicted_class"]): r for r in rows}
    # (true, predicted) per pixel, counted by hand:
    # a: (0,0) (0,1) (1,1) / (1,1) (2,2) (2,0);  b: (0,0) (1,1) / (2,2) (2,1)
    expected_pixels = {
        ("background", "background"): 2,
        ("background", "cytoplasm"): 1,
        ("cytoplasm", "cytoplasm"): 3,
        ("nucleus", "nucleus"): 2,
        ("nucleus", "background"): 1,
        ("nucleus", "cytoplasm"): 1,
    }
    totals = {"background": 3, "cytoplasm": 3, "nucleus": 4}
    for t in CLASSES:
        for p in CLASSES:
            pixels = expected_pixels.get((t, p), 0)
            assert int(got[(t, p)]["pixels"]) == pixels
            assert float(got[(t, p)]["fraction"]) == pytest.approx(pixels / totals[t])
        assert sum(float(got[(t, p)]["fraction"]) for p in CLASSES) == pytest.approx(1.0)
    assert fake_run.figure_path("confusion").is_file()


def test_confusion_without_predictions_writes_an_empty_table(tmp_path):
    run = RunDir(tmp_path)
    report.render_confusion(run, meta(), tables("unet"))
    assert read_rows(run.table_path("confusion")) == []
    assert not run.figure_path("confusion").exists()


# --------------------------------------------------------------------------- label placement


def boxes_apart(boxes) -> bool:
    return all(report._overlap(a, b) == 0 for i, a in enumerate(boxes) for b in boxes[i + 1 :])


def test_crowded_labels_get_boxes_apart_inside_the_bounds_and_off_the_markers():
    anchors = [(100.0 + 3 * i, 200.0 + 2 * i) for i in range(6)]
    sizes = [(70.0 + 5 * i, 12.0) for i in range(6)]
    markers = [(x - 6, y - 6, x + 6, y + 6) for x, y in anchors]
    bounds = (0.0, 0.0, 400.0, 400.0)
    boxes = report.place_labels(anchors, sizes, bounds, markers)
    assert boxes_apart(boxes)
    assert all(report._overlap(box, marker) == 0 for box in boxes for marker in markers)
    assert all(b[0] >= 0 and b[1] >= 0 and b[2] <= 400 and b[3] <= 400 for b in boxes)
    for box, size in zip(boxes, sizes, strict=True):
        assert (box[2] - box[0], box[3] - box[1]) == pytest.approx(size)
    # deterministic: the same input gives the same boxes
    assert report.place_labels(anchors, sizes, bounds, markers) == boxes


def test_a_lone_label_sits_right_beside_its_point_and_turns_at_the_edge():
    (box,) = report.place_labels([(50.0, 50.0)], [(40.0, 10.0)], (0.0, 0.0, 400.0, 400.0))
    assert box[0] > 50 and box[0] - 50 <= 10 and box[1] < 50 < box[3]
    # at the right edge the label goes left instead of leaving the bounds
    (box,) = report.place_labels([(395.0, 50.0)], [(40.0, 10.0)], (0.0, 0.0, 400.0, 400.0))
    assert box[2] < 395 and box[0] >= 0


@pytest.mark.parametrize(
    ("name", "architectures"),
    [("reports/clean_modern_wbc1_cpu", 5), ("tests/data/format1_thesis_wbc1", 6)],
)
def test_accuracy_cost_labels_of_the_committed_runs_do_not_overlap(name, architectures, repo_root):
    """The committed runs' points crowd (five or six architectures within 0.02–0.05 Dice):
    every label is drawn apart from the others, inside its panel, off every marker."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.text import Text

    points = report.accuracy_cost_points(RunDir(repo_root / name))
    assert len(points) == architectures
    figure = report.accuracy_cost_figure(plt, points)
    try:
        renderer = figure.canvas.get_renderer()
        for ax in figure.axes:
            labels = [t for t in ax.texts if t.get_text().lstrip("⚠ ") in {p[0] for p in points}]
            assert len(labels) == architectures
            # the text's own box (an Annotation's extent also holds its leader line)
            for label in labels:
                label.update_positions(renderer)
            boxes = [tuple(Text.get_window_extent(t, renderer).extents) for t in labels]
            assert boxes_apart(boxes)
            frame = ax.get_window_extent(renderer).extents
            assert all(
                b[0] >= frame[0] and b[1] >= frame[1] and b[2] <= frame[2] and b[3] <= frame[3]
                for b in boxes
            )
            for label in labels:
                x, y = ax.transData.transform(label.xy)
                marker = (x - 5, y - 5, x + 5, y + 5)
                assert all(report._overlap(box, marker) == 0 for box in boxes)
    finally:
        plt.close(figure)
