"""The per-epoch test Dice in history and the figures drawn from it: learning curves on
shared axes, predictions.png's choice of images, and performance.md's computed verdicts."""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import metrics, report, runner
from bench.cli import main
from bench.errors import ConfigError
from bench.protocols import IGNORE_INDEX
from bench.run_dir import HISTORY_COLUMNS, CellRecord

from tiny_runs import run_argv

REPO = Path(__file__).resolve().parents[1]


def read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory) -> Path:
    """Two architectures, two seeds, one epoch: the shortest run that has every figure."""
    out = tmp_path_factory.mktemp("figures") / "run"
    code = main(
        run_argv("unet_thesis", "segnet_basic", epochs=1, seeds=[0, 1], deterministic=True, out=out)
    )
    assert code == 0
    return out


# --------------------------------------------------------------------------- history


def test_history_has_the_test_dice_of_every_epoch(one_epoch_run):
    header, rows = read_rows(one_epoch_run / "history.csv")
    assert tuple(header) == HISTORY_COLUMNS and "dice" in header
    test = [r for r in rows if r["split"] == "test"]
    train = [r for r in rows if r["split"] == "train"]
    assert len(test) == len(train) == 4  # 2 architectures x 2 seeds x 1 epoch
    assert all(0.0 <= float(r["dice"]) <= 1.0 for r in test)
    assert all(r["dice"] == "" for r in train)


def test_the_last_epochs_dice_is_the_mean_of_the_per_image_rows(one_epoch_run):
    """The history's Dice (device confusion counts) and the per-image rows (host metrics on
    the saved predictions) are the same endpoint: per image the mean over cytoplasm and
    nucleus, then the mean over the test images."""
    _, history = read_rows(one_epoch_run / "history.csv")
    _, per_image = read_rows(one_epoch_run / "per_image.csv")
    last = max(int(r["epoch"]) for r in history)
    for row in (r for r in history if r["split"] == "test" and int(r["epoch"]) == last):
        cell = (row["architecture"], row["seed"], row["fold"])
        scores: dict[str, list[float]] = {}
        for p in per_image:
            if (p["architecture"], p["seed"], p["fold"]) == cell and p["class"] in (
                "cytoplasm",
                "nucleus",
            ):
                scores.setdefault(p["image_id"], []).append(float(p["dice"]))
        expected = np.mean([np.mean(values) for values in scores.values()])
        assert float(row["dice"]) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_confusion_per_image_counts_as_the_metrics_do():
    generator = torch.Generator().manual_seed(0)
    predictions = torch.randint(0, 3, (4, 9, 7), generator=generator)
    labels = torch.randint(0, 3, (4, 9, 7), generator=generator)
    labels[1, 5:, :] = IGNORE_INDEX  # padding
    labels[3] = IGNORE_INDEX  # an image of padding only
    confusion = runner.confusion_per_image(predictions, labels, 3).numpy()
    for i in range(4):
        valid = labels[i].numpy() != IGNORE_INDEX
        for c in range(3):
            counts = metrics.confusion_counts(
                predictions[i].numpy(), labels[i].numpy(), (c,), valid
            )
            tp = confusion[i, c, c]
            assert (tp, confusion[i, :, c].sum() - tp, confusion[i, c, :].sum() - tp) == (
                counts.tp,
                counts.fp,
                counts.fn,
            )
    # an image without valid pixels scores 1.0 (both maps empty), as metrics.dice does
    assert runner.foreground_dice(confusion[3:]) == 1.0


def test_dice_is_optional_in_older_histories_only():
    cell = {
        "architecture": "a",
        "seed": 0,
        "fold": 0,
        "status": "ok",
        "error": "",
        "epochs": 1,
        "batch_size": 1,
    }
    history = [
        {"architecture": "a", "seed": 0, "fold": 0, "epoch": 1, "split": s, "loss": 1.0}
        | {"accuracy": 0.5}
        for s in ("train", "test")
    ]
    image = {"architecture": "a", "seed": 0, "fold": 0, "image_id": "x", "class": "nucleus"}
    image |= {"jaccard": 0.5, "dice": 0.6, "accuracy": 0.9, "jaccard_legacy": 0.9}
    data = {"format_version": 2, "cell": cell, "history": history, "per_image": [image]}
    record = CellRecord.from_json(Path("x.json"), data)
    assert [h["dice"] for h in record.history] == [None, None]
    del image["dice"]
    with pytest.raises(ConfigError, match="'dice'"):
        CellRecord.from_json(Path("x.json"), data)


# --------------------------------------------------------------------------- curves


def test_epoch_limits_keep_every_epoch_inside_with_a_margin():
    assert report.epoch_limits([1]) == (0.5, 1.5)
    low, high = report.epoch_limits(range(1, 31))
    assert low < 1 and high > 30 and high - 30 == pytest.approx(1 - low)
    assert report.epoch_limits([]) == (0.5, 1.5)


def test_curves_of_means_over_runs_and_skips_empty_values():
    rows = [
        {"architecture": "a", "seed": s, "fold": 0, "epoch": e, "split": "test", "dice": v}
        for s, e, v in ((0, 1, 0.2), (1, 1, 0.4), (0, 2, 0.5), (1, 2, None))
    ]
    rows.append({"architecture": "b", "seed": 0, "fold": 0, "epoch": 1, "split": "test"})
    (curve,) = report.curves_of(rows, "test", "dice")
    assert (curve.architecture, curve.epochs, curve.runs) == ("a", (1, 2), 2)
    assert curve.mean == pytest.approx((0.3, 0.5))
    assert (curve.low, curve.high) == ((0.2, 0.5), (0.4, 0.5))
    assert report.curves_of(rows, "test", "dice", runs={("a", 1, 0)})[0].epochs == (1,)


def test_a_one_epoch_run_draws_points_inside_its_axes(one_epoch_run, monkeypatch):
    for name in report.FIGURE_NAMES:
        assert (one_epoch_run / f"{name}.png").is_file(), name
    figures = []
    plt, _ = report._figure_saver()
    monkeypatch.setattr(report, "_figure_saver", lambda: (plt, lambda f, p: figures.append(f)))
    from bench.run_dir import RunDir

    run = RunDir(one_epoch_run)
    meta = run.read_meta()
    report.render_curves(run, meta, run.tables(meta))
    curves = figures[0]
    titles = [ax.get_title() for ax in curves.axes]
    assert titles[0].startswith("test foreground Dice") and len(titles) == 3
    for ax in curves.axes:
        low, high = ax.get_xlim()
        assert low < 1 < high and high - low >= 1
        assert [t for t in ax.get_xticks() if low <= t <= high] == [1]
        for line in ax.get_lines():
            assert line.get_marker() not in (None, "None", "")  # a point, not an empty line
    for figure in figures:
        plt.close(figure)


# --------------------------------------------------------------------------- predictions


def test_image_dice_averages_the_foreground_classes_of_one_seed():
    rows = [
        {"architecture": "a", "seed": seed, "fold": 0, "image_id": "x", "class": cls, "dice": d}
        for seed, cls, d in (
            (0, "background", 0.99),
            (0, "cytoplasm", 0.6),
            (0, "nucleus", 0.8),
            (1, "cytoplasm", 0.0),
            (1, "nucleus", 0.0),
        )
    ]
    assert report.image_dice(rows, 0, ("cytoplasm", "nucleus")) == {"a": {"x": pytest.approx(0.7)}}


def test_predictions_show_the_best_median_worst_and_most_disputed_image():
    scores = {
        "a": {"i1": 0.9, "i2": 0.8, "i3": 0.7, "i4": 0.6, "i5": 0.2},
        "b": {"i1": 0.9, "i2": 0.1, "i3": 0.7, "i4": 0.6, "i5": 0.2},
    }
    # means: i1 0.9, i3 0.7, i4 0.6, i2 0.45, i5 0.2; ranges: i2 0.7, others 0
    chosen = report.choose_figure_images(scores, ["i1", "i2", "i3", "i4", "i5"])
    assert chosen == [
        ("i1", "best"),
        ("i4", "median"),
        ("i5", "worst"),
        ("i2", "most disagreement"),
    ]
    # only images whose input was kept are candidates
    assert report.choose_figure_images(scores, ["i1", "i5"]) == [
        ("i1", "best, median, most disagreement"),
        ("i5", "worst"),
    ]


def test_predictions_merge_reasons_and_break_ties_by_image_id():
    scores = {"a": {"x": 0.5, "y": 0.5, "z": 0.1}, "b": {"x": 0.5, "y": 0.5, "z": 0.9}}
    # means 0.5 each: x before y before z; z is the only disputed image
    assert report.choose_figure_images(scores, ["z", "y", "x"]) == [
        ("x", "best"),
        ("y", "median"),
        ("z", "worst, most disagreement"),
    ]
    # one architecture: nothing to disagree about
    assert report.choose_figure_images({"a": scores["a"]}, ["x", "z"]) == [
        ("x", "best, median"),
        ("z", "worst"),
    ]
    # no scores (every cell failed): the first four candidates, no reason
    assert report.choose_figure_images({}, ["e", "d", "c", "b", "a"]) == [(i, "") for i in "abcd"]


# --------------------------------------------------------------------------- performance.md


def _render_performance():
    path = REPO / "benchmarks" / "render_performance.py"
    spec = importlib.util.spec_from_file_location("render_performance", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def records(tmp_path: Path) -> Path:
    """A records folder with the real default `bench perf` record and accuracy record."""
    source = REPO / "reports" / "performance"
    for name in ("perf_unet_thesis_w0.25.json", "speed_options_accuracy.json"):
        shutil.copy(source / name, tmp_path / name)
    return tmp_path


def _edit(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_performance_verdicts_follow_the_records(records):
    render_performance = _render_performance()
    perf = records / "perf_unet_thesis_w0.25.json"
    goal = render_performance.DATALOADER_GOAL

    _edit(perf, augmented_ratio=goal + 0.1)
    text = render_performance.render(records)
    row = next(line for line in text.splitlines() if "DataLoader + albumentations" in line)
    assert "| **met** |" in row
    assert f"is above the {goal:g} goal" in text

    _edit(perf, augmented_ratio=goal - 0.1)
    text = render_performance.render(records)
    row = next(line for line in text.splitlines() if "DataLoader + albumentations" in line)
    assert "| not met |" in row and "**met**" not in row
    assert f"is below the {goal:g} goal" in text

    # the run-to-run records decide "at the margin"
    (records / "perf_history").mkdir()
    for i, ratio in enumerate((goal - 0.02, goal + 0.03)):
        (records / "perf_history" / f"{i}.json").write_text(
            json.dumps({"environment": {}, "repeats": 3, "ratio": 1.0, "augmented_ratio": ratio})
        )
    _edit(perf, augmented_ratio=goal + 0.03)
    text = render_performance.render(records)
    assert "at the margin" in text and f"at the {goal:g} goal rather than clear of it" in text

    for word in ("issue", "session", "lent"):
        assert word not in text.lower().split()


def test_seed_noise_verdict_follows_the_records(records):
    render_performance = _render_performance()
    accuracy = records / "speed_options_accuracy.json"
    text = render_performance.render(records)
    assert "## Accuracy does not move" in text
    assert "`channels_last_bf16` is within seed noise" in text

    _edit(accuracy, seed_noise=0.01)  # below bf16's largest change, 0.0120
    text = render_performance.render(records)
    assert "## Accuracy does not move" not in text
    assert "`channels_last_bf16` is beyond seed noise" in text
    assert "Beyond seed noise:" in text and "`channels_last_bf16`" in text


def _fraction_record(architecture: str, fraction: float) -> dict:
    """A bench perf record's fraction-of-peak keys, consistent with each other."""
    peak = 0.04
    return {
        "architecture": architecture,
        "width": 0.25,
        "harness_images_per_second": 10.0,
        "forward_gflops_per_image": fraction * peak * 1e3 / 30,
        "achieved_tflops": fraction * peak,
        "peak_tflops": peak,
        "fraction_of_peak": fraction,
        "peak": {"measurements": [{"dtype": "float32", "size": 2048}]},
        "load_average": {"start": [7.5, 7, 7], "end": [6.5, 7, 7]},
        "note": "shared machine",
        "config": {"architecture": architecture, "width": 0.25, "note": "shared machine"},
        "environment": {"cpu_model": "Test CPU", "device_name": "CPU: Test CPU (2 threads)"},
    }


def test_fraction_of_peak_and_lever_verdicts_follow_the_records(tmp_path):
    render_performance = _render_performance()
    folder = tmp_path / "fraction_of_peak"
    folder.mkdir()
    for name, fraction in (("unet_thesis", 0.13), ("segnet_basic", 0.42)):
        (folder / f"sweep1_{name}.json").write_text(json.dumps(_fraction_record(name, fraction)))
    text = render_performance.render(tmp_path)
    assert "lowest fraction `unet_thesis` (0.13), highest `segnet_basic` (0.42)" in text
    assert "sweep1 (Test CPU)" in text  # each sweep names its machine's CPU
    assert "| sweep1 | `unet_thesis` w0.25 | 10.0 |" in text and "| 7.5 → 6.5 |" in text
    assert "Note recorded with the runs: shared machine" in text
    assert "--note" not in text  # the note is shown, not part of the command

    (folder / "sweep1_unet_thesis.json").write_text(
        json.dumps(_fraction_record("unet_thesis", 0.5))
    )
    text = render_performance.render(tmp_path)
    assert "lowest fraction `segnet_basic` (0.42), highest `unet_thesis` (0.50)" in text

    def lever(variant, change):
        return {
            "description": "a lever",
            "baseline": {"seconds": [1.0, 1.1]},
            "control": {"seconds": [1.05, 1.0]},
            "variant": {"seconds": variant},
            "largest_weight_change": {"control": 1e-4, "variant": change},
        }

    assert "Adopted." in render_performance.lever_lines(lever([0.5, 0.6], 1e-4))[0]
    beyond = render_performance.lever_lines(lever([0.5, 0.6], 1e-2))[0]
    assert "beyond it. Not adopted." in beyond
    overlap = render_performance.lever_lines(lever([0.9, 1.05], 1e-5))[0]
    assert "inconclusive" in overlap and "Not adopted." in overlap
    assert "slower beyond" in render_performance.lever_lines(lever([2.0, 2.1], 0.0))[0]
