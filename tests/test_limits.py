"""benchmarks/limits.py: what holds a run's Dice below a target, measured by hand on built
masks and end to end on a tiny trained run (its fit gap reproduces the run's own test
scores, which is what makes the fitted-image scores beside them comparable)."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.cli import main as bench_main
from bench.metrics import WBC_METRIC_CLASSES

from tiny_runs import run_argv

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
FOREGROUND = ("cytoplasm", "nucleus")


@pytest.fixture(scope="module")
def limits():
    # limits.py imports its sibling bn_recalibration as a script does (benchmarks/ on the path)
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location("limits", BENCHMARKS / "limits.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCHMARKS))


def square(size: int = 20, top: int = 5, side: int = 10, value: int = 2) -> np.ndarray:
    labels = np.zeros((size, size), dtype=np.int64)
    labels[top : top + side, top : top + side] = value
    return labels


def test_boundary_distance_is_zero_on_both_sides_of_an_edge(limits):
    distance = limits.boundary_distance(square())
    assert distance[5, 5] == 0 and distance[4, 5] == 0 and distance[5, 4] == 0
    assert distance[10, 10] == 4  # 4 px from the square's inner edge at column 14
    assert distance[0, 0] == pytest.approx(np.hypot(4, 5))  # nearest: (4, 5) or (5, 4)
    assert np.isinf(limits.boundary_distance(np.zeros((4, 4), dtype=np.int64))).all()


def test_one_pixel_moves_of_a_square_score_nine_tenths(limits):
    # A 10x10 square moved by one pixel keeps 90 of its 100 pixels: Dice 2*90/200.
    scores = limits.one_pixel_dice(square(), WBC_METRIC_CLASSES, FOREGROUND)
    assert scores["nucleus"] == pytest.approx(0.9)
    assert scores["cytoplasm"] == 1.0  # absent from truth and moved truth alike
    assert (limits.shifted(square(), 1, 0)[6:16, 5:15] == 2).all()
    assert (limits.shifted(square(), 0, -1)[5:15, 4:14] == 2).all()


def test_errors_split_into_boundary_placement_and_gross_errors(limits):
    truth = square()
    prediction = truth.copy()
    prediction[5, 5] = 0  # on the boundary
    prediction[0:2, 0:2] = 2  # an invented region, far from any boundary
    split = limits.error_split(prediction, truth, WBC_METRIC_CLASSES, FOREGROUND)
    assert split["errors"] == 5 and split["errors_near"] == 1
    # only the boundary error left: 99 of 100 nucleus pixels found, none invented
    assert split["dice_only_near"]["nucleus"] == pytest.approx(2 * 99 / (99 + 100))
    # only the invented region left: 100 found, 4 invented
    assert split["dice_only_far"]["nucleus"] == pytest.approx(2 * 100 / (104 + 100))


def test_the_tail_averages_each_image_over_seeds_before_ranking(limits):
    rows = []
    for image_id, scores in {"a": (0.9, 0.7), "b": (1.0, 1.0), "c": (0.95, 0.95)}.items():
        for seed, dice in enumerate(scores):
            for cls in FOREGROUND:
                rows.append(
                    {
                        "architecture": "m",
                        "seed": seed,
                        "fold": 0,
                        "image_id": image_id,
                        "class": cls,
                        "dice": dice,
                    }
                )
    tail = limits.tail(rows, "m", "nucleus", target=0.96)
    assert tail["images"] == 3
    assert tail["mean"] == pytest.approx((0.8 + 1.0 + 0.95) / 3)
    assert tail["quantiles"]["0.5"] == pytest.approx(0.95)
    assert tail["share_at_or_above_target"] == pytest.approx(1 / 3)
    assert tail["mean_without_worst_5pct"] == pytest.approx((1.0 + 0.95) / 2)
    worst = limits.worst_images(rows, "m", FOREGROUND, 2)
    assert [(image_id, round(d, 6)) for _, image_id, d in worst] == [("a", 0.8), ("c", 0.95)]


def test_on_a_trained_run_the_fit_gap_reproduces_its_test_scores(limits, tmp_path):
    out = tmp_path / "run"
    argv = run_argv("segnet_basic", seeds=[0, 1], recipe="modern", epochs=2, out=out)
    assert bench_main(argv) == 0
    result, figure = tmp_path / "limits.json", tmp_path / "worst.png"
    assert (
        limits.main([str(out), "--json", str(result), "--figure", str(figure), "--worst", "3"]) == 0
    )
    record = json.loads(result.read_text())

    with (out / "per_image.csv").open(newline="") as handle:
        per_image = list(csv.DictReader(handle))
    cells = record["fit_gap"]["cells"]
    assert {(c["seed"], c["fold"]) for c in cells} == {(0, 0), (1, 0)}
    for cell in cells:
        for cls in FOREGROUND:
            run_scores = [
                float(r["dice"])
                for r in per_image
                if (int(r["seed"]), int(r["fold"]), r["class"]) == (cell["seed"], cell["fold"], cls)
            ]
            assert cell["test"][cls] == pytest.approx(np.mean(run_scores), abs=1e-9)
        assert cell["fitted_images"] > 0 and cell["validation_images"] > 0
        assert cell["test_images"] == len(run_scores)
    # the tail is the report's mean (seed-averaged images) and the worst images are its lowest
    for cls in FOREGROUND:
        rows = [float(r["dice"]) for r in per_image if r["class"] == cls]
        assert record["tail"][cls]["mean"] == pytest.approx(np.mean(rows))
        assert "target" not in record["tail"][cls]  # synthetic data: no published target
    assert len(record["worst"]) == 3
    assert record["errors"]["predictions"] == 2 * cells[0]["test_images"]
    assert 0 <= record["errors"]["share_near_boundary"] <= 1
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
