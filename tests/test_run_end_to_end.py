"""`bench run` end to end: every file of the run directory, recomputable metrics, re-rendering."""

from __future__ import annotations

import csv
import json
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

import architectures
from bench import metrics
from bench.cli import main
from bench.run_dir import (
    CELL_COLUMNS,
    HISTORY_COLUMNS,
    PER_IMAGE_COLUMNS,
    WBC_METRIC_CLASS_NAMES,
    summary_columns,
)

from tiny_runs import run_argv

TINY = ["--width", "0.0625", "--epochs", "2", "--batch-size", "4", "--progress", "off"]


def read_rows(path):
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        return reader.fieldnames, list(reader)


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "synthetic"
    plugin = tmp_path_factory.mktemp("plugin") / "broken_arch.py"
    plugin.write_text(
        textwrap.dedent("""
        import torch
        from architectures import register_architecture

        @register_architecture("e2e_nan", description="NaN logits while training")
        class GoesNaN(torch.nn.Module):
            def __init__(self, num_classes=3, in_channels=3, width=1.0):
                super().__init__()
                self.conv = torch.nn.Conv2d(in_channels, num_classes, 1)

            def forward(self, x):
                logits = self.conv(x)
                return logits * float("nan") if self.training else logits
    """)
    )
    argv = run_argv("unet_thesis", "segnet_basic", "e2e_nan", plugin=plugin, out=out)
    code = main(argv)
    return out, code


def test_failed_architecture_is_recorded_and_the_suite_completes(synthetic_run):
    out, code = synthetic_run
    assert code == 1  # some cell failed
    _, summary = read_rows(out / "summary.csv")
    status = {row["architecture"]: row for row in summary}
    assert status["unet_thesis"]["status"] == "ok"
    assert status["segnet_basic"]["status"] == "ok"
    assert status["e2e_nan"]["status"] == "failed"
    assert "NonFiniteLoss" in status["e2e_nan"]["error"]
    assert "training loss became nan" in (out / "report.md").read_text()


def test_every_file_and_column(synthetic_run):
    out, _ = synthetic_run
    for name in (
        "config.json",
        "cells.csv",
        "history.csv",
        "per_image.csv",
        "summary.csv",
        "report.md",
        "curves_accuracy.png",
        "curves_loss.png",
        "predictions.png",
    ):
        assert (out / name).is_file(), name
    for name, columns in (
        ("history.csv", HISTORY_COLUMNS),
        ("per_image.csv", PER_IMAGE_COLUMNS),
        ("summary.csv", summary_columns(WBC_METRIC_CLASS_NAMES)),
        ("cells.csv", CELL_COLUMNS),
    ):
        header, rows = read_rows(out / name)
        assert tuple(header) == columns, name
        assert rows, name
    meta = json.loads((out / "config.json").read_text())
    env = meta["environment"]
    for key in (
        "python",
        "torch",
        "segmentation_models_pytorch",
        "cuda",
        "cudnn",
        "device_name",
        "cpu_model",
        "git_commit",
    ):
        assert key in env
    assert meta["started_utc"] and meta["finished_utc"]
    assert meta["config"]["epochs"] == 2 and meta["config"]["architectures"][0] == "unet_thesis"
    assert meta["command"].startswith("bench run unet_thesis")

    _, history = read_rows(out / "history.csv")
    unet = [r for r in history if r["architecture"] == "unet_thesis"]
    assert [(r["epoch"], r["split"]) for r in unet] == [
        ("1", "train"),
        ("1", "test"),
        ("2", "train"),
        ("2", "test"),
    ]
    assert all(float(r["seconds"]) > 0 for r in unet)

    _, summary = read_rows(out / "summary.csv")
    ok = next(r for r in summary if r["architecture"] == "unet_thesis")
    for column in (
        "params",
        "gflops",
        "train_seconds",
        "images_per_second",
        "peak_memory_mb",
    ):
        assert float(ok[column]) > 0, column
    for column in ("nucleus_dice_mean", "background_dice_mean", "cytoplasm_jaccard_mean"):
        assert 0 <= float(ok[column]) <= 1, column  # two tiny epochs: any score is possible
    # The summary is the mean over the test images of the per-image rows (one seed here).
    _, per_image = read_rows(out / "per_image.csv")
    background = [
        float(r["dice"])
        for r in per_image
        if r["architecture"] == "unet_thesis" and r["class"] == "background"
    ]
    assert float(ok["background_dice_mean"]) == pytest.approx(sum(background) / len(background))
    assert int(ok["images"]) == len(background) > 0
    assert float(ok["total_seconds"]) >= float(ok["train_seconds"])

    report = (out / "report.md").read_text()
    assert "bench run unet_thesis" in report
    for figure in ("curves_accuracy.png", "curves_loss.png", "predictions.png"):
        assert f"]({figure})" in report


def test_per_image_recomputes_from_saved_predictions(synthetic_run):
    out, _ = synthetic_run
    _, rows = read_rows(out / "per_image.csv")
    palette = json.loads((out / "config.json").read_text())["dataset"]["palette"]
    to_class = {value: index for index, value in enumerate(palette)}
    checked = 0
    for row in rows:
        prediction_png = out / "predictions" / row["architecture"] / f"{row['image_id']}.png"
        truth_png = out / "truth" / f"{row['image_id']}.png"
        prediction = np.vectorize(to_class.get)(np.asarray(Image.open(prediction_png)))
        truth = np.vectorize(to_class.get)(np.asarray(Image.open(truth_png)))
        assert set(np.unique(np.asarray(Image.open(prediction_png)))) <= set(palette)
        scores = metrics.image_metrics(prediction, truth)[row["class"]]
        for key in ("jaccard", "dice", "accuracy", "jaccard_legacy"):
            assert float(row[key]) == pytest.approx(scores[key], abs=1e-12)
        checked += 1
    assert checked == 2 * 4 * 4  # 2 architectures x 4 test images x 4 classes


def test_report_rerenders_byte_for_byte(synthetic_run, capsys):
    out, _ = synthetic_run
    original = (out / "report.md").read_bytes()
    derived = {name: (out / name).read_bytes() for name in ("summary.csv", "statistics.csv")}
    for name in ("report.md", "predictions.png", *derived):
        (out / name).unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.md").read_bytes() == original
    for name, content in derived.items():
        assert (out / name).read_bytes() == content, name
    assert (out / "predictions.png").is_file()


def test_checkpoint_loads_with_weights_only(synthetic_run):
    out, _ = synthetic_run
    path = out / "checkpoints" / "unet_thesis_seed0_fold0.pt"
    checkpoint = torch.load(path, weights_only=True)
    model = architectures.build("unet_thesis", width=0.0625)
    model.load_state_dict(checkpoint["state_dict"])
    assert checkpoint["architecture"] == "unet_thesis"
    assert not (out / "checkpoints" / "e2e_nan_seed0_fold0.pt").exists()


def test_report_of_a_non_run_directory_is_an_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_real_images_thesis_protocol(wbc_dir, tmp_path):
    out = tmp_path / "thesis"
    code = main(
        [
            "run",
            "unet_thesis",
            "--dataset",
            "wbc1",
            "--data-dir",
            str(wbc_dir),
            "--protocol",
            "thesis",
            "--max-images",
            "16",
            "--out",
            str(out),
            *TINY,
        ]
    )
    assert code == 0
    meta = json.loads((out / "config.json").read_text())
    assert meta["protocol"]["train_images"] + meta["protocol"]["test_images"] == 32
    report = (out / "report.md").read_text()
    assert "thesis 2019 (published; Keras" in report  # the thesis's rows stand beside ours
    assert "0.9882 ± 0.0013" in report  # U-Net's published nucleus Dice, from the CSV
    _, per_image = read_rows(out / "per_image.csv")
    truth_ids = {p.stem for p in (out / "truth").glob("*.png")}
    assert {r["image_id"] for r in per_image} == truth_ids
    assert len(per_image) == meta["protocol"]["test_images"] * 4
    predictions = list((out / "predictions" / "unet_thesis").glob("*.png"))
    assert len(predictions) == meta["protocol"]["test_images"]


def test_real_images_clean_protocol_keeps_original_sizes(wbc_dir, tmp_path):
    out = tmp_path / "clean"
    code = main(
        [
            "run",
            "segnet_basic",
            "--dataset",
            "wbc1",
            "--data-dir",
            str(wbc_dir),
            "--max-images",
            "12",
            "--num-folds",
            "3",
            "--out",
            str(out),
            *TINY,
        ]
    )
    assert code == 0
    from bench.data import load_dataset

    sizes = {s.image_id: s.mask.shape for s in load_dataset("wbc1", wbc_dir).samples[:12]}
    for png in (out / "predictions" / "segnet_basic").glob("*.png"):
        assert np.asarray(Image.open(png)).shape == sizes[png.stem]


def test_folder_dataset_with_its_own_palette(tmp_path):
    """A user's binary data set: two classes from a 0/255 palette, metrics per class."""
    folder = tmp_path / "mine"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        mask = np.zeros((48, 48), dtype=np.uint8)
        mask[10 + i : 30 + i, 12:36] = 255
        image = rng.integers(0, 60, (48, 48, 3), dtype=np.uint8)
        image[mask == 255] += 150
        Image.fromarray(image).save(folder / "images" / f"img{i}.png")
        Image.fromarray(mask).save(folder / "masks" / f"img{i}.png")
    out = tmp_path / "run"
    code = main(
        [
            "run",
            "segnet_basic",
            "--dataset",
            f"folder:{folder}",
            "--palette",
            "0:0,255:1",
            "--num-folds",
            "2",
            "--out",
            str(out),
            *TINY,
        ]
    )
    assert code == 0
    _, rows = read_rows(out / "per_image.csv")
    assert {r["class"] for r in rows} == {"class0", "class1"}
    assert len(rows) == 4 * 2
    for png in (out / "predictions" / "segnet_basic").glob("*.png"):
        assert set(np.unique(np.asarray(Image.open(png)))) <= {0, 255}
