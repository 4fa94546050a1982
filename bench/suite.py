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
from bench.atomic import atomic_write_png
from bench.config import DEFAULT_LR_GRID, RunConfig
from bench.data import (
    WBC_CLASS_NAMES,
    SegmentationDataset,
    load_dataset,
    parse_class_names,
    parse_palette,
)
from bench.errors import ConfigError, DataError
from bench.executors import CellJob, check_executor, make_executor, resolve_threads
from bench.images import write_mask
from bench.protocols import ProtocolSplit, get_protocol
from bench.run_dir import (
    FORMAT_VERSION,
    CellKey,
    CellRecord,
    RunDir,
    cap_text,
    cell_stem,
    read_json,
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
    cells: list[CellRecord]

    @property
    def failed(self) -> list[CellRecord]:
        return [c for c in self.cells if c.row["status"] != "ok"]

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


def check_resumable(run: RunDir, resolved: dict[str, Any]) -> dict[str, Any] | None:
    """The earlier config.json of ``run`` if it can be resumed with ``resolved``.

    ``None`` when there is no earlier run; a ConfigError when it was written by another
    format version or with a different configuration (naming the differing keys).
    """
    if not run.is_run():
        return None
    old = read_json(run.config_path)
    if old.get("format_version") != FORMAT_VERSION:
        raise ConfigError(
            f"--out {run.path}: written by an incompatible version of bench (format_version "
            f"{old.get('format_version')!r}, this version writes {FORMAT_VERSION}); "
            "use another --out (`bench report` still renders it)"
        )
    old = run.read_meta()
    if old.get("combined_from"):
        raise ConfigError(
            f"--out {run.path}: a combination of other runs (bench combine), not trained "
            "here: resume its source runs, or use another --out"
        )
    before, now = _comparable(old["config"]), _comparable(resolved)
    differing = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
    if differing:
        details = "; ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in differing)
        raise ConfigError(
            f"--out {run.path} holds a run with a different configuration ({details}); "
            "rerun its command or use another --out"
        )
    return old


def incomplete_reason(
    run: RunDir,
    record: CellRecord,
    split: ProtocolSplit,
    class_metrics: dict[str, tuple[int, ...]],
    primary_seed: int,
) -> str | None:
    """Why a recorded cell's results are not whole (then it is trained again), or None."""
    if record.row["status"] != "ok":
        return None
    name, seed, fold = record.key
    expected = len(split.test) * len(class_metrics)
    if len(record.per_image) != expected:
        return f"{len(record.per_image)} per-image rows where {expected} are due"
    for image_id in split.test.image_ids:
        if not run.prediction_path(name, seed, image_id, primary_seed).is_file():
            return f"no predicted mask for test image {image_id}"
    if not run.checkpoint_path(name, seed, fold).is_file():
        return "no final checkpoint"
    return None


def record_of(cell: CellResult) -> CellRecord:
    """The record of a finished cell; a long error text keeps its head and tail."""
    row = cell.row()
    row["error"] = cap_text(row["error"])
    return CellRecord(row, list(cell.history), list(cell.per_image))


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


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_default_out_dir(protocol: str) -> Path:
    """``runs/<UTC time>_<protocol>``, created here; a suffix keeps two runs started in the
    same second apart."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    Path("runs").mkdir(exist_ok=True)
    for attempt in range(1, 1000):
        path = Path("runs") / (f"{stamp}_{protocol}" + (f"-{attempt}" if attempt > 1 else ""))
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise ConfigError(f"runs/: cannot create a new run directory for {stamp}; pass --out")


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
        class_names=parse_class_names(config.palette) if config.palette else None,
    )
    if config.max_images is not None:
        dataset = dataclasses.replace(dataset, samples=dataset.samples[: config.max_images])
    if len(dataset) == 0:
        raise DataError(f"dataset {config.dataset!r}: zero images after filtering")
    return dataset


def run_suite(config: RunConfig, argv: list[str] | None = None) -> SuiteOutcome:
    """Train and measure every cell of the suite; return what happened."""
    check_executor(config)
    if config.out:  # an --out that is not ours is refused before any work
        RunDir(config.out).check_can_own()
    for plugin in config.plugins:
        architectures.load_plugin_file(plugin)
    names = resolve_architectures(config)
    protocol = get_protocol(config.protocol)
    defaults = protocol.defaults
    dataset = load_suite_dataset(config)
    # Ray tasks pick their device on their worker; the driver itself only coordinates.
    device = select_device(config.device if config.executor == "local" else "cpu")

    folds: list[int | None]
    if protocol.fixed_split:
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
    resolved = {
        **config.to_dict(),
        "architectures": names,
        "epochs": epochs,
        "batch_size": batch_size,
        # --lr-search: no one rate; the grid it tries, default filled in (a resume must match)
        "lr": None if config.lr_search else config.lr or defaults.lr,
        "lr_grid": list(config.lr_grid or DEFAULT_LR_GRID) if config.lr_search else None,
        "loss": config.loss or defaults.loss,
        "optimizer": defaults.optimizer,
        "folds_run": folds,
        # torch threads of every cell: part of a deterministic run's configuration
        "threads": resolve_threads(config, config.out),
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
            # what per_image.csv scores: each class, and for WBC the whole cell
            "metric_classes": list(metric_classes(dataset.class_names)),
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
            "fixed_split": protocol.fixed_split,
            "thesis_reference": protocol.thesis_reference,
        },
        # What each architecture is, as trained: the report states it even when a plugin
        # is not loaded at rendering time.
        "architectures": {
            name: {
                "source": architectures.get_spec(name).source,
                "width_note": architectures.get_spec(name).width_note,
                "options": cell_options(config, name),
            }
            for name in names
        },
        "environment": environment.describe(device),
        "started_utc": utc_now(),
        "finished_utc": None,
    }
    settings = CellSettings.from_config(
        config, defaults, num_classes=len(dataset.class_names), threads=resolved["threads"]
    )
    run = RunDir(config.out if config.out else new_default_out_dir(protocol.name))
    run.create()
    with run.lock():
        return _run_locked(
            config,
            run,
            meta,
            names,
            splits,
            settings,
            device,
            dataset.palette,
            metric_classes(dataset.class_names),
        )


def _run_locked(
    config: RunConfig,
    run: RunDir,
    meta: dict[str, Any],
    names: list[str],
    splits: dict[int | None, ProtocolSplit],
    settings: CellSettings,
    device: Any,
    palette: tuple[int, ...],
    class_metrics: dict[str, tuple[int, ...]],
) -> SuiteOutcome:
    """The suite, with the run directory's lock held."""
    for path in run.remove_stale_temporaries():
        print(f"removed {path}, left half-written by a killed run", file=sys.stderr)
    primary_seed = config.seeds[0]
    folds = list(splits)
    order = [(name, seed, fold) for name in names for seed in config.seeds for fold in folds]
    # The same command with the same --out resumes: the finished cells are kept.
    earlier = check_resumable(run, meta["config"])
    done: dict[CellKey, CellRecord] = {}
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
        records, problems = run.load_records()
        for problem in problems:
            print(f"bench: {problem}; its cell is trained again", file=sys.stderr)
        for key in order:
            if key not in records:
                continue
            reason = incomplete_reason(
                run, records[key], splits[key[2]], class_metrics, primary_seed
            )
            if reason:
                print(
                    f"{cell_stem(*key)}: incomplete ({reason}); training it again", file=sys.stderr
                )
                continue
            done[key] = records[key]
            # A kill between the record and this deletion leaves the epoch checkpoint.
            run.resume_path(*key).unlink(missing_ok=True)
        print(f"resuming {run.path}: {len(done)} cell(s) already done", file=sys.stderr)
    run.write_meta(meta)
    for split in splits.values():
        write_test_images(run, split, palette)

    # Rows are written in suite order whatever order the executor finishes cells in, so a
    # run's files do not depend on where its cells ran.
    finished = dict(done)
    jobs = [
        CellJob(
            name,
            seed,
            fold,
            dataclasses.replace(settings, options=cell_options(config, name)),
            run.resume_path(name, seed, fold),
        )
        for name, seed, fold in order
        if (name, seed, fold) not in done
    ]

    def write_rows() -> None:
        run.write_tables([finished[key] for key in order if key in finished])

    stop = threading.Event()
    executor = make_executor(config, stop, device, settings.progress, train=train_cell)
    try:
        with stop_on_signals(stop), closing(executor.run(jobs, splits, class_metrics)) as results:
            for cell in results:
                record = record_of(cell)
                # Outputs first, the record last: a cell is done exactly when its record
                # exists, and until then its epoch checkpoint is kept.
                save_cell_outputs(run, cell, splits[cell.fold], palette, primary_seed)
                run.commit_cell(record)
                run.resume_path(*record.key).unlink(missing_ok=True)
                print(summary_line(record), flush=True)
                finished[record.key] = record
                write_rows()
        write_rows()  # also when every cell was done before
    except (CellInterrupted, KeyboardInterrupt):
        write_rows()  # every finished cell; the cut one has its epoch checkpoint
        command = meta["command"]
        if not config.out:  # the default out dir is new each time: name this one
            command += f" --out {shlex.quote(str(run.path))}"
        raise SuiteInterrupted(run.path, command) from None

    meta["environment"].update(executor.environment())
    meta["finished_utc"] = utc_now()
    run.write_meta(meta)
    report.render_locked(run)  # derives summary.csv and statistics.csv, then renders
    return SuiteOutcome(run.path, [finished[key] for key in order])


def cell_options(config: RunConfig, name: str) -> dict[str, Any]:
    """Architecture options of a cell: the encoder, for the segmentation-models baselines."""
    return architectures.architecture_options(name, config.encoder)


def summary_line(record: CellRecord) -> str:
    row = record.row
    where = f"seed {row['seed']}" + (f", fold {row['fold']}" if row["fold"] is not None else "")
    if row["status"] != "ok":
        return f"{row['architecture']} ({where}): FAILED: {row['error']}"
    classes = dict.fromkeys(r["class"] for r in record.per_image)
    dice = ", ".join(
        f"{name} {np.mean([r['dice'] for r in record.per_image if r['class'] == name]):.4f}"
        for name in classes
    )
    return (
        f"{row['architecture']} ({where}): test acc {row['test_accuracy']:.4f}, Dice {dice}, "
        f"train {row['train_seconds']:.1f} s ({row['images_per_second']:.1f} img/s)"
    )


def write_test_images(run: RunDir, split: ProtocolSplit, palette: tuple[int, ...]) -> None:
    """Ground truth of every test image (and inputs of the figure's images), original size."""
    test = split.test
    for i, image_id in enumerate(test.image_ids):
        h, w = test.sizes[i]
        write_mask(run.truth_path(image_id), test.labels[i, :h, :w], palette)
        if i < FIGURE_IMAGES:
            atomic_write_png(run.input_path(image_id), test.images[i, :h, :w])


def save_cell_outputs(
    run: RunDir,
    cell: CellResult,
    split: ProtocolSplit,
    palette: tuple[int, ...],
    primary_seed: int,
) -> None:
    """Predicted label maps (padding removed) and the final checkpoint of one cell."""
    if cell.status != "ok" or cell.predictions is None:
        return
    for i, image_id in enumerate(split.test.image_ids):
        h, w = split.test.sizes[i]
        path = run.prediction_path(cell.architecture, cell.seed, image_id, primary_seed)
        write_mask(path, cell.predictions[i, :h, :w], palette)
    if cell.model_state is not None:
        run.write_checkpoint(
            (cell.architecture, cell.seed, cell.fold),
            {
                "architecture": cell.architecture,
                "seed": cell.seed,
                "fold": cell.fold,
                "state_dict": cell.model_state,
            },
        )
        cell.model_state = None  # free memory; the file is the record
