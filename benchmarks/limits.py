"""What holds an architecture's clean-protocol Dice below a target? A diagnostic over a run.

    .venv/bin/python benchmarks/limits.py RUN_DIR [--architecture NAME] [--data-dir DIR]
        [--json FILE] [--figure FILE] [--worst N]

When the best architecture of a run falls short of the thesis's published (leaky) Dice, a
reader asks what limits it: the amount of data, the labels, or the model. This reads a
run directory (its ``per_image.csv`` rows, saved label maps and final checkpoints) and
measures four things that tell those apart; it trains nothing.

* **Fit gap** (needs ``checkpoints/``): each cell's final weights score the images they
  were fitted on, the cell's validation images and its test images, through the run's own
  evaluation path (:func:`bench.predict.predict_classes`: its speed options and test-time
  flips). A model that scores its own training images no better than new ones is limited
  by what it can fit (capacity or optimisation); one that fits them far better than it
  generalises is limited by data (too few images, or labels it cannot learn).
* **Tail**: the seed-averaged per-image Dice of each class (the unit the report's SEM
  counts), its quantiles and the share of images at or above the target. A mean held down
  by a few images, with the median above the target, points at those images.
* **Where the errors lie**: every misclassified pixel of the saved predictions (every
  seed), by its distance to the nearest class boundary of the ground truth. The Dice each
  class would reach if only the errors within ``BAND`` pixels of a boundary remained, and
  if only the others remained, splits the shortfall into boundary placement and gross
  errors (a missed or invented region).
* **Annotation precision**: the Dice of the ground truth against itself moved by one
  pixel (mean of the four directions): what a segmentation that places every boundary one
  pixel off scores. A shortfall of that size is within how precisely a human draws.

``--figure`` draws the ``--worst`` test images (lowest seed-averaged foreground Dice):
input, ground truth, each seed's prediction, and the errors coloured by their distance
to the boundary, to judge by eye whether the labels or the model are wrong there.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from bench import environment, metrics, stats
from bench.config import RunConfig
from bench.report import (
    THESIS_GOAL_MODEL,
    _reference,
    invocation_environments,
    label_palette,
    load_thesis_reference,
    read_label_map,
)
from bench.run_dir import RunDir
from bench.suite import load_suite_dataset, metric_classes

#: Errors within this many pixels of a true class boundary count as boundary placement.
BAND = 2
QUANTILES = (0.05, 0.1, 0.25, 0.5)


def boundary_distance(truth: np.ndarray) -> np.ndarray:
    """Each pixel's Euclidean distance (in pixels) to the nearest pixel of ``truth`` whose
    4-neighbour has another class. Pixels on a boundary are at 0."""
    edge = np.zeros(truth.shape, dtype=bool)
    vertical = truth[1:, :] != truth[:-1, :]
    horizontal = truth[:, 1:] != truth[:, :-1]
    edge[1:, :] |= vertical
    edge[:-1, :] |= vertical
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    if not edge.any():
        return np.full(truth.shape, np.inf)
    return ndimage.distance_transform_edt(~edge)


def shifted(labels: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``labels`` moved by (dy, dx) pixels, the uncovered edge repeating its neighbour."""
    padded = np.pad(labels, ((abs(dy), abs(dy)), (abs(dx), abs(dx))), mode="edge")
    height, width = labels.shape
    top, left = abs(dy) - dy, abs(dx) - dx
    return padded[top : top + height, left : left + width]


def one_pixel_dice(
    truth: np.ndarray, classes: Mapping[str, Sequence[int]], names: Sequence[str]
) -> dict[str, float]:
    """Per class of ``names``, the mean Dice of the four one-pixel moves of ``truth``
    against itself (``classes``: the metric classes, as :func:`bench.metrics.image_metrics`)."""
    scores: dict[str, list[float]] = {name: [] for name in names}
    for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        result = metrics.image_metrics(shifted(truth, dy, dx), truth, classes=classes)
        for name in names:
            scores[name].append(result[name]["dice"])
    return {name: float(np.mean(values)) for name, values in scores.items()}


def error_split(
    prediction: np.ndarray,
    truth: np.ndarray,
    classes: Mapping[str, Sequence[int]],
    names: Sequence[str],
    band: int = BAND,
) -> dict[str, Any]:
    """Misclassified pixels near (≤ ``band`` px) and far from a true boundary, and each
    class's Dice with only the near errors left and with only the far ones left."""
    distance = boundary_distance(truth)
    wrong = prediction != truth
    near = distance <= band
    only_near = np.where(near, prediction, truth)
    only_far = np.where(near, truth, prediction)
    near_metrics = metrics.image_metrics(only_near, truth, classes=classes)
    far_metrics = metrics.image_metrics(only_far, truth, classes=classes)
    return {
        "errors": int(wrong.sum()),
        "errors_near": int((wrong & near).sum()),
        "dice_only_near": {c: near_metrics[c]["dice"] for c in names},
        "dice_only_far": {c: far_metrics[c]["dice"] for c in names},
    }


def tail(per_image: Sequence[dict[str, Any]], architecture: str, cls: str, target: float | None):
    """Seed-averaged per-image Dice of one class: its distribution against ``target``."""
    scores = stats.image_scores(
        [r for r in per_image if r["architecture"] == architecture], "dice", (cls,)
    )[architecture]
    values = np.array(sorted(scores.values()))
    result: dict[str, Any] = {
        "images": len(values),
        "mean": float(values.mean()),
        "quantiles": {f"{q:g}": float(np.quantile(values, q)) for q in QUANTILES},
        "mean_without_worst_5pct": float(values[int(np.ceil(0.05 * len(values))) :].mean()),
    }
    if target is not None:
        result["target"] = target
        result["share_at_or_above_target"] = float(np.mean(values >= target))
    return result


def worst_images(
    per_image: Sequence[dict[str, Any]], architecture: str, classes: Sequence[str], count: int
) -> list[tuple[str, str, float]]:
    """The ``count`` test images with the lowest seed-averaged foreground Dice:
    ``(fold, image_id, Dice)``, worst first."""
    scores = stats.image_scores(
        [r for r in per_image if r["architecture"] == architecture], "dice", classes
    )[architecture]
    ranked = sorted(scores.items(), key=lambda item: (item[1], item[0]))
    return [(fold, image_id, score) for (fold, image_id), score in ranked[:count]]


def saved_predictions(run: RunDir, meta: dict[str, Any], architecture: str):
    """``(seed, image_id, prediction, truth)`` for every saved label map of ``architecture``
    (class indices, read with the dataset's palette)."""
    palette = label_palette(meta)
    seeds = meta["config"]["seeds"]
    truths = {p.stem: p for p in sorted((run.path / "truth").glob("*.png"))}
    for seed in seeds:
        for image_id, truth_path in truths.items():
            path = run.prediction_path(architecture, seed, image_id, seeds[0])
            if path.is_file():
                yield (
                    seed,
                    image_id,
                    read_label_map(path, palette),
                    read_label_map(truth_path, palette),
                )


def recorded_config(config: dict[str, Any], data_dir: str | None) -> RunConfig:
    """The run's configuration as config.json recorded it (``data_dir`` replaced if given)."""
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    values = {
        key: tuple(value) if isinstance(value, list) else value
        for key, value in config.items()
        if key in fields
    }
    if data_dir:
        values["data_dir"] = data_dir
    return RunConfig(**values)


def fit_gap(
    run: RunDir,
    meta: dict[str, Any],
    architecture: str,
    data_dir: str | None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Per cell with a final checkpoint: foreground Dice on its fitted, validation and test
    images, predicted as the run's evaluation predicts."""
    from bn_recalibration import foreground_dice

    from bench.predict import load_checkpoint, locate_cell, predict_classes, rebuild_model
    from bench.protocols import carve_validation, get_protocol

    config = meta["config"]
    dataset = load_suite_dataset(recorded_config(config, data_dir))
    classes = metric_classes(tuple(meta["dataset"]["class_names"]))
    names = stats.primary_classes(meta["dataset"]["class_names"])
    rows = []
    checkpoints = sorted((run.path / "checkpoints").glob(f"{architecture}_seed*_fold*.pt"))
    for checkpoint in checkpoints[:limit]:
        cell = locate_cell(checkpoint)
        split = get_protocol(cell.meta["protocol"]["name"]).split(
            dataset,
            fold=cell.fold if cell.fold is not None else 0,
            folds=config["num_folds"],
            seed=config["split_seed"],
        )
        # As the runner: early stopping fits all but the validation images it holds out.
        if (config.get("recipe_settings") or {}).get("patience") is not None:
            fitted, validation = carve_validation(split.train, config["split_seed"])
            parts = {"fitted": fitted, "validation": validation, "test": split.test}
        else:
            parts = {"fitted": split.train, "test": split.test}
        model = rebuild_model(cell, load_checkpoint(cell))
        row: dict[str, Any] = {"seed": cell.seed, "fold": cell.fold}
        for name, part in parts.items():
            predictions = predict_classes(cell, model, list(part.images), "cpu")
            row[name] = foreground_dice(predictions, part.labels, part.valid, classes, names)
            row[f"{name}_images"] = len(part)
        rows.append(row)
        print(
            f"seed {cell.seed} fold {cell.fold}: "
            + "  ".join(
                f"{part} " + "/".join(f"{row[part][c]:.4f}" for c in names) for part in parts
            ),
            flush=True,
        )
    return rows


def draw_worst(
    run: RunDir, meta: dict[str, Any], architecture: str, worst, path: Path, band: int = BAND
) -> None:
    """Rows: the worst images; columns: input, truth, each seed's prediction, errors."""
    from matplotlib.patches import Patch
    from PIL import Image

    from bench.report import _colourise, _figure_saver

    plt, save = _figure_saver()
    palette = meta["dataset"]["palette"]
    lookup = label_palette(meta)
    seeds = meta["config"]["seeds"]
    columns = ["input", "ground truth", *[f"seed {s}" for s in seeds], f"errors (seed {seeds[0]})"]
    figure, axes = plt.subplots(
        len(worst),
        len(columns),
        figsize=(1.7 * len(columns), 1.75 * len(worst) + 0.8),
        squeeze=False,
        layout="constrained",
    )
    for r, (fold, image_id, score) in enumerate(worst):
        truth = read_label_map(run.truth_path(image_id), lookup)
        for c, column in enumerate(columns):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(column, fontsize=8)
            if column == "input":
                ax.imshow(np.asarray(Image.open(run.input_path(image_id))))
                ax.set_ylabel(f"{image_id} (fold {fold})\nDice {score:.3f}", fontsize=8)
            elif column == "ground truth":
                ax.imshow(_colourise(run.truth_path(image_id), palette))
            elif column.startswith("seed"):
                seed = int(column.split()[1])
                ax.imshow(
                    _colourise(run.prediction_path(architecture, seed, image_id, seeds[0]), palette)
                )
            else:
                prediction = read_label_map(
                    run.prediction_path(architecture, seeds[0], image_id, seeds[0]), lookup
                )
                wrong = prediction != truth
                near = boundary_distance(truth) <= band
                picture = np.full((*truth.shape, 3), 255, dtype=np.uint8)
                picture[wrong & near] = (240, 160, 40)
                picture[wrong & ~near] = (200, 20, 20)
                ax.imshow(picture)
    figure.legend(
        handles=[
            Patch(
                facecolor=(240 / 255, 160 / 255, 40 / 255),
                label=f"error within {band} px of a true boundary",
            ),
            Patch(facecolor=(200 / 255, 20 / 255, 20 / 255), label="error farther away"),
        ],
        loc="outside lower center",
        ncols=2,
        frameon=False,
        fontsize=8,
    )
    figure.suptitle(
        f"{architecture}: the {len(worst)} test images with the lowest foreground Dice "
        "(mean over cytoplasm and nucleus, averaged over seeds)",
        fontsize=8,
        color="0.3",
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    save(figure, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--architecture", help="default: the run's first architecture")
    parser.add_argument("--data-dir", default=None, help="where the dataset is (as bench run)")
    parser.add_argument("--json", type=Path, help="write the result here")
    parser.add_argument("--figure", type=Path, help="draw the worst test images here (PNG)")
    parser.add_argument("--worst", type=int, default=8, help="images in --figure (default 8)")
    parser.add_argument("--no-fit-gap", action="store_true", help="skip the checkpoints")
    parser.add_argument("--cells", type=int, help="score only the first N checkpoints")
    args = parser.parse_args(argv)

    run = RunDir(args.run_dir)
    meta = run.read_meta()
    tables = run.tables(meta)
    architecture = args.architecture or meta["config"]["architectures"][0]
    class_names = tuple(meta["dataset"]["class_names"])
    names = stats.primary_classes(class_names)
    classes = metric_classes(class_names)
    # The thesis's published Dice is a target on its own data only.
    reference = load_thesis_reference() if meta["dataset"].get("name") == "wbc1" else []
    targets = {
        c: (_reference(reference, THESIS_GOAL_MODEL, "dice", "test", c) or (None,))[0]
        for c in names
    }
    record: dict[str, Any] = {
        "command": "python benchmarks/limits.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "run": str(args.run_dir),
        "run_commits": sorted({str(e.get("git_commit")) for e in invocation_environments(meta)}),
        "architecture": architecture,
        "band_px": BAND,
        "tail": {c: tail(tables.per_image, architecture, c, targets[c]) for c in names},
    }
    saved = list(saved_predictions(run, meta, architecture))
    splits = [error_split(prediction, truth, classes, names) for _, _, prediction, truth in saved]
    # one per image: every seed's prediction shares its ground truth
    truths = {image_id: truth for _, image_id, _, truth in saved}
    precision = [one_pixel_dice(truth, classes, names) for truth in truths.values()]
    record["errors"] = {
        "predictions": len(splits),
        "share_near_boundary": sum(s["errors_near"] for s in splits)
        / max(1, sum(s["errors"] for s in splits)),
        "dice_only_near": {
            c: float(np.mean([s["dice_only_near"][c] for s in splits])) for c in names
        },
        "dice_only_far": {
            c: float(np.mean([s["dice_only_far"][c] for s in splits])) for c in names
        },
    }
    record["one_pixel_dice"] = {c: float(np.mean([p[c] for p in precision])) for c in names}
    worst = worst_images(tables.per_image, architecture, names, args.worst)
    record["worst"] = [{"fold": f, "image_id": i, "dice": d} for f, i, d in worst]
    if not args.no_fit_gap:
        cells = fit_gap(run, meta, architecture, args.data_dir, args.cells)
        # the image sets each cell was scored on (fitted, validation, test): its dict entries
        parts = [key for key, value in cells[0].items() if isinstance(value, dict)] if cells else []
        record["fit_gap"] = {
            "cells": cells,
            "mean": {
                part: {c: float(np.mean([cell[part][c] for cell in cells])) for c in names}
                for part in parts
            },
        }
    record["environment"] = environment.describe(torch.device("cpu"))
    for line in summary_lines(record, names):
        print(line)
    if args.figure:
        draw_worst(run, meta, architecture, worst, args.figure)
    if args.json:
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    return 0


def summary_lines(record: dict[str, Any], names: Sequence[str]) -> list[str]:
    """The record in a few lines, one number per class."""

    def per_class(values: dict[str, float]) -> str:
        return ", ".join(f"{c} {values[c]:.4f}" for c in names)

    lines = [
        f"{record['architecture']} in {record['run']}",
        "mean Dice over images: " + per_class({c: record["tail"][c]["mean"] for c in names}),
        "median: " + per_class({c: record["tail"][c]["quantiles"]["0.5"] for c in names}),
    ]
    errors = record["errors"]
    lines += [
        f"errors within {record['band_px']} px of a true boundary: "
        f"{errors['share_near_boundary']:.1%} of misclassified pixels",
        "Dice with only those left: " + per_class(errors["dice_only_near"]),
        "Dice with only the others left: " + per_class(errors["dice_only_far"]),
        "the truth moved by one pixel: " + per_class(record["one_pixel_dice"]),
    ]
    for part, values in (record.get("fit_gap") or {}).get("mean", {}).items():
        lines.append(f"{part} images, mean over cells: " + per_class(values))
    return lines


if __name__ == "__main__":
    sys.exit(main())
