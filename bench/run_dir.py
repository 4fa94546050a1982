"""The run directory: every result is written once, as data, atomically.

Layout (``RUN_DIR/``)::

    config.json        resolved configuration, environment, versions, start/end (UTC); after
                       a resume also the earlier invocations' environments
    cells.csv          one row per (architecture, seed, fold) run: status, timings, final losses
    history.csv        architecture, seed, fold, epoch, split, loss, accuracy, seconds
    per_image.csv      architecture, seed, fold, image_id, class, jaccard, dice, accuracy,
                       jaccard_legacy
    summary.csv        one row per architecture (aggregated over its runs)
    report.md + *.png  rendered by bench.report from the files above, never by training
    predictions/<architecture>/<image_id>.png   predicted label map, ground-truth palette,
                       original size (first seed; other seeds under seed-<S>/)
    truth/<image_id>.png, inputs/<image_id>.png ground truth and inputs of the test images
                       (inputs only for the images shown in predictions.png)
    checkpoints/<architecture>_seed<S>_fold<F>.pt   final weights (torch.load(weights_only=True))
    resume/<architecture>_seed<S>_fold<F>.pt   epoch checkpoint of a cell in progress (model,
                       optimiser, history, RNG states; weights_only), deleted when it completes

Every file is written to a temporary name in the same folder and renamed into place, so a
crash at any moment leaves either the old or the new file, never half of one.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.errors import ConfigError

FORMAT_VERSION = 1

HISTORY_COLUMNS = ("architecture", "seed", "fold", "epoch", "split", "loss", "accuracy", "seconds")
PER_IMAGE_COLUMNS = (
    "architecture",
    "seed",
    "fold",
    "image_id",
    "class",
    "jaccard",
    "dice",
    "accuracy",
    "jaccard_legacy",
)
#: What one run measures; summary.csv averages each over an architecture's runs.
RUN_MEASURES = (
    "train_seconds",
    "total_seconds",
    "images_per_second",
    "peak_memory_mb",
    "train_loss",
    "train_accuracy",
    "test_loss",
    "test_accuracy",
)
CELL_COLUMNS = (
    "architecture",
    "seed",
    "fold",
    "status",
    "error",
    "params",
    "gflops",
    "epochs",
    "batch_size",
    *RUN_MEASURES,
)
METRIC_CLASS_NAMES = ("background", "cytoplasm", "nucleus", "cell")
SUMMARY_COLUMNS = (
    "architecture",
    "status",
    "error",
    "runs",
    "params",
    "gflops",
    *RUN_MEASURES,
) + tuple(
    f"{cls}_{stat}"
    for cls in METRIC_CLASS_NAMES
    for stat in ("jaccard_mean", "jaccard_sem", "dice_mean", "dice_sem", "jaccard_legacy_mean")
)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and a rename (atomic on POSIX)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_png(path: Path, array: np.ndarray) -> None:
    """Encode a uint8 grey (H, W) or RGB (H, W, 3) array as PNG and write it atomically."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


def atomic_torch_save(path: Path, obj: Any) -> None:
    """``torch.save`` through :func:`atomic_write_bytes` (checkpoints, resume states)."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def format_value(value: Any) -> str:
    """CSV cell text: floats with full precision (repr), None as empty."""
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def write_csv(path: Path, columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([format_value(row.get(column)) for column in columns])
    atomic_write_text(path, buffer.getvalue())


def read_csv(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found (is this a bench run directory?)") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}: not valid JSON ({error})") from None


def prepare_out_dir(path: Path) -> Path:
    """Create the run directory; a clear error when it is a file or cannot be written."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out {path}: exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise ConfigError(f"--out {path}: cannot write there ({error.strerror})") from None
    return path
