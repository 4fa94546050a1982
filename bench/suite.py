"""Run a suite (architectures × seeds × folds) and write the run directory as it goes.

Results are written after every cell, atomically, so an interrupted suite loses at most
the cell in progress. Reports are rendered at the end by :mod:`bench.report` from the data
files alone (``bench report RUN_DIR`` does the same later).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import architectures
from bench import environment, report
from bench.config import RunConfig
from bench.data import SegmentationDataset, load_dataset
from bench.errors import ConfigError, DataError
from bench.protocols import ProtocolSplit, get_protocol
from bench.results import (
    CELL_COLUMNS,
    FORMAT_VERSION,
    HISTORY_COLUMNS,
    PER_IMAGE_COLUMNS,
    SUMMARY_COLUMNS,
    prepare_out_dir,
    write_csv,
    write_json,
)
from bench.runner import (
    CellResult,
    CellSettings,
    resolve_architectures,
    save_label_map,
    select_device,
    train_cell,
)

FIGURE_IMAGES = 5  # test images shown in predictions.png


@dataclass
class SuiteOutcome:
    out_dir: Path
    cells: list[CellResult]

    @property
    def failed(self) -> list[CellResult]:
        return [c for c in self.cells if c.status != "ok"]

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def default_out_dir(protocol: str) -> Path:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return Path("runs") / f"{stamp}_{protocol}"


def load_suite_dataset(config: RunConfig) -> SegmentationDataset:
    dataset = load_dataset(
        config.dataset,
        config.data_dir,
        synthetic_count=config.synthetic_count,
        synthetic_size=config.synthetic_size,
        seed=config.split_seed,
    )
    if config.max_images is not None:
        dataset = dataclasses.replace(dataset, samples=dataset.samples[: config.max_images])
    if len(dataset) == 0:
        raise DataError(f"dataset {config.dataset!r}: zero images after filtering")
    return dataset


def run_suite(config: RunConfig, argv: list[str] | None = None) -> SuiteOutcome:
    """Train and measure every cell of the suite; return what happened."""
    for plugin in config.plugins:
        architectures.load_plugin_file(plugin)
    names = resolve_architectures(config)
    protocol = get_protocol(config.protocol)
    defaults = protocol.defaults
    dataset = load_suite_dataset(config)
    device = select_device(config.device)

    folds: list[int | None]
    if protocol.name == "thesis":
        folds = [None]  # one fixed split
    elif config.folds == "all":
        folds = list(range(config.num_folds))
    else:
        folds = [config.fold]
    splits: dict[int | None, ProtocolSplit] = {
        fold: protocol.split(
            dataset, fold=fold or 0, folds=config.num_folds, seed=config.split_seed
        )
        for fold in folds
    }
    epochs = config.epochs or defaults.epochs
    batch_size = config.batch_size or defaults.batch_size
    smallest_train = min(len(s.train) for s in splits.values())
    if batch_size > smallest_train:
        raise ConfigError(
            f"--batch-size {batch_size} is larger than the training set ({smallest_train} images)"
        )
    out_dir = prepare_out_dir(Path(config.out) if config.out else default_out_dir(protocol.name))

    resolved = {
        **config.to_dict(),
        "architectures": names,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": config.lr or defaults.lr,
        "loss": config.loss or defaults.loss,
        "optimizer": defaults.optimizer,
        "folds_run": folds,
    }
    first_split = next(iter(splits.values()))
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "command": "bench " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "config": resolved,
        "dataset": {
            "name": dataset.name,
            "images": len(dataset),
            "class_names": list(dataset.class_names),
            "palette": list(dataset.palette),
            "warnings": list(dataset.warnings),
        },
        "protocol": {
            "name": protocol.name,
            "summary": protocol.summary,
            "train_images": len(first_split.train),
            "test_images": len(first_split.test),
            "input_size": list(first_split.train.labels.shape[1:]),
            "leaked_test_images": first_split.leaked_test_images,
        },
        "environment": environment.describe(device),
        "started_utc": utc_now(),
        "finished_utc": None,
    }
    write_json(out_dir / "config.json", meta)
    for split in splits.values():
        write_test_images(out_dir, split, dataset.palette)

    settings = CellSettings(
        epochs=epochs,
        batch_size=batch_size,
        lr=resolved["lr"],
        loss=resolved["loss"],
        width=config.width,
        options={},
        deterministic=config.deterministic,
        progress=config.progress == "on" or (config.progress == "auto" and sys.stderr.isatty()),
    )
    cells: list[CellResult] = []
    history: list[dict[str, Any]] = []
    per_image: list[dict[str, Any]] = []
    for name in names:
        options = (
            {"encoder": config.encoder} if architectures.get_spec(name).source == "smp" else {}
        )
        for seed in config.seeds:
            for fold in folds:
                cell = train_cell(
                    name,
                    seed,
                    fold,
                    splits[fold],
                    dataclasses.replace(settings, options=options),
                    device,
                )
                cells.append(cell)
                history.extend(cell.history)
                per_image.extend(cell.per_image)
                save_cell_outputs(
                    out_dir, cell, splits[fold], dataset.palette, primary_seed=config.seeds[0]
                )
                write_csv(out_dir / "cells.csv", CELL_COLUMNS, (c.row() for c in cells))
                write_csv(out_dir / "history.csv", HISTORY_COLUMNS, history)
                write_csv(out_dir / "per_image.csv", PER_IMAGE_COLUMNS, per_image)
                print(summary_line(cell), flush=True)

    from bench.aggregate import summarize

    write_csv(
        out_dir / "summary.csv", SUMMARY_COLUMNS, summarize([c.row() for c in cells], per_image)
    )
    meta["finished_utc"] = utc_now()
    write_json(out_dir / "config.json", meta)
    report.render_run(out_dir)
    return SuiteOutcome(out_dir, cells)


def summary_line(cell: CellResult) -> str:
    where = f"seed {cell.seed}" + (f", fold {cell.fold}" if cell.fold is not None else "")
    if cell.status != "ok":
        return f"{cell.architecture} ({where}): FAILED: {cell.error}"
    nucleus = np.mean([r["dice"] for r in cell.per_image if r["class"] == "nucleus"])
    cytoplasm = np.mean([r["dice"] for r in cell.per_image if r["class"] == "cytoplasm"])
    return (
        f"{cell.architecture} ({where}): test acc {cell.test_accuracy:.4f}, "
        f"Dice cytoplasm {cytoplasm:.4f}, nucleus {nucleus:.4f}, "
        f"train {cell.train_seconds:.1f} s ({cell.images_per_second:.1f} img/s)"
    )


def write_test_images(out_dir: Path, split: ProtocolSplit, palette: tuple[int, ...]) -> None:
    """Ground truth of every test image (and inputs of the figure's images), original size."""
    import io

    from PIL import Image

    from bench.results import atomic_write_bytes

    test = split.test
    for i, image_id in enumerate(test.image_ids):
        h, w = test.sizes[i]
        save_label_map(out_dir / "truth" / f"{image_id}.png", test.labels[i, :h, :w], palette)
        if i < FIGURE_IMAGES:
            buffer = io.BytesIO()
            Image.fromarray(test.images[i, :h, :w]).save(buffer, format="PNG")
            atomic_write_bytes(out_dir / "inputs" / f"{image_id}.png", buffer.getvalue())


def save_cell_outputs(
    out_dir: Path,
    cell: CellResult,
    split: ProtocolSplit,
    palette: tuple[int, ...],
    primary_seed: int,
) -> None:
    """Predicted label maps (padding removed) and the final checkpoint of one cell."""
    if cell.status != "ok" or cell.predictions is None:
        return
    folder = out_dir / "predictions" / cell.architecture
    if cell.seed != primary_seed:
        folder = folder / f"seed-{cell.seed}"
    for i, image_id in enumerate(split.test.image_ids):
        h, w = split.test.sizes[i]
        save_label_map(folder / f"{image_id}.png", cell.predictions[i, :h, :w], palette)
    if cell.model_state is not None:
        fold = "all" if cell.fold is None else cell.fold
        path = out_dir / "checkpoints" / f"{cell.architecture}_seed{cell.seed}_fold{fold}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".pt.tmp")
        torch.save(
            {
                "architecture": cell.architecture,
                "seed": cell.seed,
                "fold": cell.fold,
                "state_dict": cell.model_state,
            },
            tmp,
        )
        tmp.replace(path)
        cell.model_state = None  # free memory; the file is the record
