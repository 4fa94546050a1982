"""Run a suite (architectures × seeds × folds) and write the run directory as it goes.

Results are written after every cell, atomically, and the cell in progress writes an epoch
checkpoint under ``resume/``, so an interrupted suite loses at most the epoch in progress:
the same command with the same ``--out`` resumes it. SIGINT/SIGTERM stop the suite after
the current batch (:class:`SuiteInterrupted`; ``bench run`` exits 130). Reports are
rendered at the end by :mod:`bench.report` from the data files alone (``bench report
RUN_DIR`` does the same later).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import shlex
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import architectures
from bench import environment, metrics, report
from bench.config import RunConfig
from bench.data import WBC_CLASS_NAMES, SegmentationDataset, load_dataset, parse_palette
from bench.errors import ConfigError, DataError
from bench.executors import CellJob, check_executor, make_executor
from bench.images import write_mask
from bench.protocols import ProtocolSplit, get_protocol
from bench.results import (
    CELL_COLUMNS,
    FORMAT_VERSION,
    HISTORY_COLUMNS,
    PER_IMAGE_COLUMNS,
    atomic_torch_save,
    atomic_write_png,
    prepare_out_dir,
    read_csv,
    read_json,
    write_csv,
    write_json,
)
from bench.runner import (
    CellInterrupted,
    CellResult,
    CellSettings,
    resolve_architectures,
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


class SuiteInterrupted(Exception):
    """The suite stopped on a signal; what finished is written and ``command`` resumes it."""

    def __init__(self, out_dir: Path, command: str) -> None:
        super().__init__(f"interrupted; resume with: {command}")
        self.out_dir = out_dir
        self.command = command


# Keys of the resolved config that may differ between a run and its resumption: they do
# not change any result (where a cell runs, and where its host memory comes from, are
# placement, not method).
RESUME_IGNORED_KEYS = (
    "out",
    "progress",
    "config",
    "executor",
    "ray_address",
    "cpus_per_task",
    "gpus_per_task",
    "host_memory",
)


def _comparable(resolved: dict[str, Any]) -> dict[str, Any]:
    # Through JSON, as config.json stores it (tuples become lists); plugin order is free.
    values = json.loads(json.dumps(resolved))
    for key in RESUME_IGNORED_KEYS:
        values.pop(key, None)
    values["plugins"] = sorted(values.get("plugins") or [])
    return values


def check_resumable(out_dir: Path, resolved: dict[str, Any]) -> dict[str, Any] | None:
    """The earlier config.json of ``out_dir`` if it can be resumed with ``resolved``.

    ``None`` when there is no earlier run; a ConfigError when it was written by another
    format version or with a different configuration (naming the differing keys).
    """
    path = out_dir / "config.json"
    if not path.is_file():
        return None
    old = read_json(path)
    if old.get("format_version") != FORMAT_VERSION:
        raise ConfigError(
            f"--out {out_dir}: written by an incompatible version of bench (format_version "
            f"{old.get('format_version')!r}, this version writes {FORMAT_VERSION}); "
            "use another --out"
        )
    before, now = _comparable(old.get("config") or {}), _comparable(resolved)
    differing = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
    if differing:
        details = "; ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in differing)
        raise ConfigError(
            f"--out {out_dir} holds a run with a different configuration ({details}); "
            "rerun its command or use another --out"
        )
    return old


def _int_or_none(text: str) -> int | None:
    return None if text in ("", None) else int(text)


def _float_or_none(text: str) -> float | None:
    return None if text in ("", None) else float(text)


def _cell_key(architecture: str, seed: Any, fold: Any) -> tuple[str, int, int | None]:
    return architecture, int(seed), _int_or_none(fold) if isinstance(fold, str) else fold


def load_done_cells(out_dir: Path) -> dict[tuple[str, int, int | None], CellResult]:
    """Completed cells (ok or failed) of an earlier run, with their history/per-image rows."""
    types = {f.name: f.type for f in dataclasses.fields(CellResult)}
    history: dict[tuple[str, int, int | None], list[dict[str, Any]]] = {}
    for row in read_csv(out_dir / "history.csv"):
        typed = {
            **row,
            "seed": int(row["seed"]),
            "fold": _int_or_none(row["fold"]),
            "epoch": int(row["epoch"]),
            **{k: _float_or_none(row[k]) for k in ("loss", "accuracy", "seconds")},
        }
        history.setdefault(_cell_key(row["architecture"], row["seed"], row["fold"]), []).append(
            typed
        )
    per_image: dict[tuple[str, int, int | None], list[dict[str, Any]]] = {}
    for row in read_csv(out_dir / "per_image.csv"):
        typed = {
            **row,
            "seed": int(row["seed"]),
            "fold": _int_or_none(row["fold"]),
            **{k: _float_or_none(row[k]) for k in PER_IMAGE_COLUMNS[5:]},
        }
        per_image.setdefault(_cell_key(row["architecture"], row["seed"], row["fold"]), []).append(
            typed
        )
    done = {}
    for row in read_csv(out_dir / "cells.csv"):
        if row.get("status") not in ("ok", "failed"):
            continue
        values: dict[str, Any] = {}
        for column in CELL_COLUMNS:
            text = row.get(column, "")
            kind = str(types[column])
            if column in ("architecture", "status", "error"):
                values[column] = text
            elif "int" in kind:
                values[column] = _int_or_none(text)
            else:
                values[column] = _float_or_none(text)
        key = _cell_key(row["architecture"], row["seed"], row["fold"])
        done[key] = CellResult(
            **values, history=history.get(key, []), per_image=per_image.get(key, [])
        )
    return done


@contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT/SIGTERM set ``stop`` (the loop stops after its batch); a second SIGINT raises.

    The previous handlers are restored on exit. Outside the main thread (where Python
    cannot install handlers) nothing is installed.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()
        print(
            f"\nbench: {signal.Signals(signum).name}: stopping after the current batch "
            "(Ctrl-C again to stop at once)",
            file=sys.stderr,
            flush=True,
        )

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def resume_path(out_dir: Path, architecture: str, seed: int, fold: int | None) -> Path:
    """The epoch checkpoint of a cell in progress (deleted when the cell completes)."""
    name = f"{architecture}_seed{seed}_fold{'all' if fold is None else fold}.pt"
    return out_dir / "resume" / name


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def default_out_dir(protocol: str) -> Path:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return Path("runs") / f"{stamp}_{protocol}"


def metric_classes(class_names: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    """The classes metrics are reported for: the WBC set (with whole cell), else each class."""
    if tuple(class_names) == WBC_CLASS_NAMES:
        return metrics.WBC_METRIC_CLASSES
    return {name: (index,) for index, name in enumerate(class_names)}


def load_suite_dataset(config: RunConfig) -> SegmentationDataset:
    dataset = load_dataset(
        config.dataset,
        config.data_dir,
        synthetic_count=config.synthetic_count,
        synthetic_size=config.synthetic_size,
        seed=config.split_seed,
        palette=parse_palette(config.palette) if config.palette else None,
    )
    if config.max_images is not None:
        dataset = dataclasses.replace(dataset, samples=dataset.samples[: config.max_images])
    if len(dataset) == 0:
        raise DataError(f"dataset {config.dataset!r}: zero images after filtering")
    return dataset


def run_suite(config: RunConfig, argv: list[str] | None = None) -> SuiteOutcome:
    """Train and measure every cell of the suite; return what happened."""
    check_executor(config)
    for plugin in config.plugins:
        architectures.load_plugin_file(plugin)
    names = resolve_architectures(config)
    protocol = get_protocol(config.protocol)
    defaults = protocol.defaults
    dataset = load_suite_dataset(config)
    # Ray tasks pick their device on their worker; the driver itself only coordinates.
    device = select_device(config.device if config.executor == "local" else "cpu")

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
    out_dir = Path(config.out) if config.out else default_out_dir(protocol.name)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir}: exists and is not a directory")

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
    # The same command with the same --out resumes: the finished cells are kept.
    earlier = check_resumable(out_dir, resolved)
    done = load_done_cells(out_dir) if earlier else {}
    if earlier:
        meta["command"] = earlier.get("command", meta["command"])
        meta["started_utc"] = earlier.get("started_utc", meta["started_utc"])
        meta["resumed_utc"] = [*earlier.get("resumed_utc", []), utc_now()]
        # The cells already done were trained by the earlier invocations' code and machine:
        # keep their environments (commit, versions, device) beside the current one.
        meta["earlier_environments"] = [
            *earlier.get("earlier_environments", []),
            earlier["environment"],
        ]
        print(f"resuming {out_dir}: {len(done)} cell(s) already done", file=sys.stderr)
    prepare_out_dir(out_dir)
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
        num_classes=len(dataset.class_names),
        amp=config.amp,
        channels_last=config.channels_last,
        compile=config.compile,
        host_memory=config.host_memory,
    )
    class_metrics = metric_classes(dataset.class_names)
    # Rows are written in suite order whatever order the executor finishes cells in, so a
    # run's files do not depend on where its cells ran.
    order = [(name, seed, fold) for name in names for seed in config.seeds for fold in folds]
    finished = {key: done[key] for key in order if key in done}
    jobs = [
        CellJob(
            name,
            seed,
            fold,
            dataclasses.replace(settings, options=cell_options(config, name)),
            resume_path(out_dir, name, seed, fold),
        )
        for name, seed, fold in order
        if (name, seed, fold) not in done
    ]

    def write_rows() -> None:
        cells = [finished[key] for key in order if key in finished]
        write_csv(out_dir / "cells.csv", CELL_COLUMNS, (c.row() for c in cells))
        write_csv(out_dir / "history.csv", HISTORY_COLUMNS, (r for c in cells for r in c.history))
        write_csv(
            out_dir / "per_image.csv", PER_IMAGE_COLUMNS, (r for c in cells for r in c.per_image)
        )

    stop = threading.Event()
    executor = make_executor(config, stop, device, settings.progress, train=train_cell)
    try:
        with stop_on_signals(stop), closing(executor.run(jobs, splits, class_metrics)) as results:
            for cell in results:
                save_cell_outputs(
                    out_dir, cell, splits[cell.fold], dataset.palette, primary_seed=config.seeds[0]
                )
                # A cell that ran where the run directory is not visible left any earlier
                # epoch checkpoint of it here.
                resume_path(out_dir, cell.architecture, cell.seed, cell.fold).unlink(
                    missing_ok=True
                )
                print(summary_line(cell), flush=True)
                finished[cell.architecture, cell.seed, cell.fold] = cell
                write_rows()
        write_rows()  # also when every cell was done before
    except (CellInterrupted, KeyboardInterrupt):
        write_rows()  # every finished cell; the cut one has its epoch checkpoint
        command = meta["command"]
        if not config.out:  # the default out dir is new each time: name this one
            command += f" --out {shlex.quote(str(out_dir))}"
        raise SuiteInterrupted(out_dir, command) from None

    meta["environment"].update(executor.environment())
    meta["finished_utc"] = utc_now()
    write_json(out_dir / "config.json", meta)
    report.render_run(out_dir)  # derives summary.csv and statistics.csv, then renders
    return SuiteOutcome(out_dir, [finished[key] for key in order])


def cell_options(config: RunConfig, name: str) -> dict[str, Any]:
    """Architecture options of a cell: the encoder, for the segmentation-models baselines."""
    return {"encoder": config.encoder} if architectures.get_spec(name).source == "smp" else {}


def summary_line(cell: CellResult) -> str:
    where = f"seed {cell.seed}" + (f", fold {cell.fold}" if cell.fold is not None else "")
    if cell.status != "ok":
        return f"{cell.architecture} ({where}): FAILED: {cell.error}"
    classes = dict.fromkeys(r["class"] for r in cell.per_image)
    dice = ", ".join(
        f"{name} {np.mean([r['dice'] for r in cell.per_image if r['class'] == name]):.4f}"
        for name in classes
    )
    return (
        f"{cell.architecture} ({where}): test acc {cell.test_accuracy:.4f}, Dice {dice}, "
        f"train {cell.train_seconds:.1f} s ({cell.images_per_second:.1f} img/s)"
    )


def write_test_images(out_dir: Path, split: ProtocolSplit, palette: tuple[int, ...]) -> None:
    """Ground truth of every test image (and inputs of the figure's images), original size."""
    test = split.test
    for i, image_id in enumerate(test.image_ids):
        h, w = test.sizes[i]
        write_mask(out_dir / "truth" / f"{image_id}.png", test.labels[i, :h, :w], palette)
        if i < FIGURE_IMAGES:
            atomic_write_png(out_dir / "inputs" / f"{image_id}.png", test.images[i, :h, :w])


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
        write_mask(folder / f"{image_id}.png", cell.predictions[i, :h, :w], palette)
    if cell.model_state is not None:
        fold = "all" if cell.fold is None else cell.fold
        path = out_dir / "checkpoints" / f"{cell.architecture}_seed{cell.seed}_fold{fold}.pt"
        atomic_torch_save(
            path,
            {
                "architecture": cell.architecture,
                "seed": cell.seed,
                "fold": cell.fold,
                "state_dict": cell.model_state,
            },
        )
        cell.model_state = None  # free memory; the file is the record
