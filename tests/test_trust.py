"""Comparisons a reviewer would trust: the SEM is over test images (seeds averaged first),
and a dataset with its own classes gets every table and statistic."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.cli import main
from bench.metrics import mean_sem

from tiny_runs import run_argv


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_sem_counts_images_not_seed_image_rows(tmp_path):
    out = tmp_path / "run"
    assert main(run_argv("segnet_basic", seeds=[0, 1, 2], epochs=1, out=out)) == 0
    per_image = rows(out / "per_image.csv")
    (summary,) = rows(out / "summary.csv")
    assert summary["seeds"] == "3"
    for cls in ("cytoplasm", "nucleus", "cell"):
        by_image: dict[str, list[float]] = {}
        for r in per_image:
            if r["class"] == cls:
                by_image.setdefault(r["image_id"], []).append(float(r["dice"]))
        assert all(len(v) == 3 for v in by_image.values())
        mean, sem = mean_sem(np.mean(v) for v in by_image.values())
        assert int(summary["images"]) == len(by_image) == 4
        assert float(summary[f"{cls}_dice_mean"]) == pytest.approx(mean)
        assert float(summary[f"{cls}_dice_sem"]) == pytest.approx(sem)
        # The wrong unit (every seed × image row) would give another, smaller SEM.
        pooled = [float(r["dice"]) for r in per_image if r["class"] == cls]
        assert float(summary[f"{cls}_dice_sem"]) != pytest.approx(mean_sem(pooled)[1])
    report = (out / "report.md").read_text()
    assert "over the 4 test images; each image's score is first averaged over the 3" in report


def write_folder_dataset(folder: Path, greys: list[int], count: int = 9, size: int = 32) -> None:
    """``count`` image/mask pairs whose masks hold nested squares of the ``greys`` values."""
    rng = np.random.default_rng(0)
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for i in range(count):
        mask = np.full((size, size), greys[0], dtype=np.uint8)
        image = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
        for level, grey in enumerate(greys[1:], start=1):
            margin = 3 + 3 * level + int(rng.integers(0, 3))
            mask[margin:-margin, margin:-margin] = grey
            image[margin:-margin, margin:-margin] = 60 * level + rng.integers(0, 40)
        Image.fromarray(image).save(folder / "images" / f"img{i}.png")
        Image.fromarray(mask).save(folder / "masks" / f"img{i}.png")


@pytest.mark.parametrize(
    "palette, classes",
    [
        ("0:background,255:nucleus", ["background", "nucleus"]),
        ("0:0,85:1,170:2,255:3", ["class0", "class1", "class2", "class3"]),
    ],
    ids=["2-classes-named", "4-classes"],
)
def test_a_dataset_with_its_own_classes_gets_every_table(tmp_path, palette, classes):
    data = tmp_path / "data"
    greys = [int(item.split(":")[0]) for item in palette.split(",")]
    write_folder_dataset(data, greys)
    out = tmp_path / "run"
    argv = run_argv(
        "segnet_basic",
        "deconvnet",
        dataset=f"folder:{data}",
        palette=palette,
        synthetic_count=None,
        synthetic_size=None,
        epochs=1,
        out=out,
    )
    assert main(argv) == 0
    summary = rows(out / "summary.csv")
    for row in summary:
        for cls in classes:
            assert row[f"{cls}_dice_mean"] != "" and row[f"{cls}_jaccard_sem"] != ""
        assert "cell_dice_mean" not in row  # the whole-cell union is a WBC extra
    assert {r["class"] for r in rows(out / "per_image.csv")} == set(classes)
    statistics = rows(out / "statistics.csv")
    assert len(statistics) == 2 and all(r["image_mean"] != "" for r in statistics)
    report = (out / "report.md").read_text()
    assert "## Statistical comparison" in report
    primary = " and ".join(", ".join(classes[1:]).rsplit(", ", 1))
    assert f"mean Dice over {primary}" in report
    assert f"| Dice {classes[-1]} |" in report
    # One epoch cannot show convergence: both are flagged, so neither is called better.
    assert all("1 epoch: too few to show convergence" in r["flags"] for r in summary)
    assert all(r["flagged"] == "True" and r["significant"] == "" for r in statistics)
    assert "segnet_basic ⚠" in report and "not compared (⚠ flagged)" in report
