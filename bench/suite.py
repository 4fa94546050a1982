"""Run a suite (architectures × seeds × folds) and write the run directory as it goes.

Results are written after every cell, atomically, and the cell in progress writes an epoch
checkpoint under ``resume/``, so an interrupted suite loses at most the epoch in progress:
the same command with the same ``--out`` resumes it. SIGINT/SIGTERM stop the suite after
the current batch (:class:`SuiteInterrupted`; ``bench run`` exits 130). Reports are
rendered at the end by :mod:`bench.report` from the data files alone (``bench report
RUN_DIR`` does the same later).

Cost up front: before training the suite prints its plan (:func:`plan_line`: cells, how
many are done, epochs, images); ``--dry-run`` (:func:`dry_run`) prints it with an estimate
from a few training steps timed per architecture, and trains and writes nothing.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import shlex
import signal
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch

import architectures
from bench import environment, metrics, report
from bench.atomic import atomic_write_png
from bench.config import DEFAULT_LR_GRID, PLACEMENT_KEYS, RunConfig
from bench.data import (
    WBC_CLASS_NAMES,
    SegmentationDataset,
    load_dataset,
    parse_class_names,
    parse_palette,
)
from bench.errors import ConfigError, DataError
from bench.executors import (
    CellJob,
    check_executor,
    format_duration,
    lr_search_factor,
    make_executor,
    plural,
    resolve_threads,
    task_device_name,
)
from bench.images import write_mask
from bench.protocols import Protocol, ProtocolSplit, carve_validation, get_protocol
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
    compute_loss,
    images_trained,
    intra_op_threads,
    model_input,
    place_model,
    resolve_architectures,
    resolve_speed,
    select_device,
    synchronize,
    to_device_uint8,
    train_cell,
)
from bench.tracking import make_tracker


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


def _comparable(resolved: dict[str, Any]) -> dict[str, Any]:
    # Through JSON, as config.json stores it (tuples become lists); plugin order is free.
    values = json.loads(json.dumps(resolved))
    for key in PLACEMENT_KEYS:  # they may differ between a run and its resumption
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
    name, seed, _fold = record.key
    expected = len(split.test) * len(class_metrics)
    if len(record.per_image) != expected:
        return f"{len(record.per_image)} per-image rows where {expected} are due"
    for image_id in split.test.image_ids:
        if not run.prediction_path(name, seed, image_id, primary_seed).is_file():
            return f"no predicted mask for test image {image_id}"
    # A missing final checkpoint is not a reason: the checkpoint is written before the
    # record, so it is only missing when it was removed after the cell finished (committed
    # reference runs leave checkpoints out); every number and figure comes from the rest.
    return None


def done_cells(
    run: RunDir,
    resolved: dict[str, Any],
    order: list[CellKey],
    splits: dict[int | None, ProtocolSplit],
    class_metrics: dict[str, tuple[int, ...]],
    primary_seed: int,
) -> tuple[dict[str, Any] | None, dict[CellKey, CellRecord]]:
    """The earlier config.json of ``run`` (None: a new run) and its cells that need no
    training again; reads only (a dry run calls it too). Records that cannot be read, and
    ok cells whose outputs are not whole, are reported on stderr and left out."""
    earlier = check_resumable(run, resolved)
    done: dict[CellKey, CellRecord] = {}
    if not earlier:
        return earlier, done
    records, problems = run.load_records()
    for problem in problems:
        print(f"bench: {problem}; its cell is trained again", file=sys.stderr)
    for key in order:
        if key not in records:
            continue
        reason = incomplete_reason(run, records[key], splits[key[2]], class_metrics, primary_seed)
        if reason:
            print(f"{cell_stem(*key)}: incomplete ({reason}); training it again", file=sys.stderr)
            continue
        done[key] = records[key]
    without = [
        k
        for k, r in done.items()
        if r.row["status"] == "ok" and not run.checkpoint_path(*k).is_file()
    ]
    if without:
        print(
            f"bench: {len(without)} finished cell(s) have no final checkpoint (removed after "
            f"training, e.g. {run.checkpoint_path(*without[0])}); their results stand, "
            "but bench predict cannot use them",
            file=sys.stderr,
        )
    return earlier, done


def _span(values: list[int]) -> str:
    """``240``, or ``239-240`` when the folds differ."""
    low, high = min(values), max(values)
    return str(low) if low == high else f"{low}-{high}"


def plan_line(
    config: RunConfig,
    names: list[str],
    splits: dict[int | None, ProtocolSplit],
    settings: CellSettings,
    done: int,
) -> str:
    """``plan: 6 cells (2 architectures × 3 seeds × 1 fold), 30 epochs each, 240 training /
    60 test images per epoch; 2 done, 4 to train``: the cost of a suite before it starts."""
    cells = len(names) * len(config.seeds) * len(splits)
    folds = "the fixed split" if list(splits) == [None] else plural(len(splits), "fold")
    stopping = settings.recipe.patience is not None
    # Early stopping trains on what carve_validation leaves of the training images.
    fitted = [
        len(carve_validation(s.train, settings.validation_seed)[0]) if stopping else len(s.train)
        for s in splits.values()
    ]
    trained = [images_trained(n, settings.batch_size) for n in fitted]
    tested = [len(s.test) for s in splits.values()]
    epochs = plural(settings.epochs, "epoch")
    line = (
        f"plan: {plural(cells, 'cell')} ({plural(len(names), 'architecture')} × "
        f"{plural(len(config.seeds), 'seed')} × {folds}), "
        + (f"up to {epochs} each (early stopping)" if stopping else f"{epochs} each")
        + f", {_span(trained)} training / {_span(tested)} test images per epoch"
    )
    if stopping:
        held_out = [len(s.train) - n for s, n in zip(splits.values(), fitted, strict=True)]
        line += f" ({_span(held_out)} training images held out for validation)"
    if settings.lr_grid:
        line += (
            f", after a learning-rate search over {len(settings.lr_grid)} rates "
            f"(~{lr_search_factor(settings):g}× the training)"
        )
    return line + f"; {done} done, {cells - done} to train"


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


@dataclass
class SuitePlan:
    """What a suite will train, known before anything is trained or written."""

    config: RunConfig
    names: list[str]  # architectures, in suite order
    protocol: Protocol
    dataset: SegmentationDataset
    splits: dict[int | None, ProtocolSplit]  # per fold (None: the protocol's fixed split)
    resolved: dict[str, Any]  # the configuration config.json records
    settings: CellSettings  # every cell's, but for its architecture's options
    device: Any  # where local cells train; the Ray driver's is the CPU

    @property
    def order(self) -> list[CellKey]:
        """Every cell, in suite order (architecture, then seed, then fold)."""
        return [
            (name, seed, fold)
            for name in self.names
            for seed in self.config.seeds
            for fold in self.splits
        ]


def plan_suite(config: RunConfig) -> SuitePlan:
    """Check the configuration against the data and resolve what the suite will train.

    Reads plugins and the dataset; writes nothing (``--dry-run`` stops after it).
    """
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
    # torch threads of every cell: part of a deterministic run's configuration
    threads = resolve_threads(config, config.out)
    # Flags, then the recipe, then the protocol (CellSettings.from_config: one place).
    settings = CellSettings.from_config(
        config, defaults, num_classes=len(dataset.class_names), threads=threads
    )
    epochs, batch_size = settings.epochs, settings.batch_size
    smallest_train = min(len(s.train) for s in splits.values())
    if batch_size > smallest_train:
        raise ConfigError(
            f"--batch-size {batch_size} is larger than the training set ({smallest_train} images)"
        )
    # Pretrained encoder weights, fetched once now: offline, one clear error before any
    # training instead of one failed cell per smp baseline; the cells then read the cache.
    architectures.check_encoder_weights(names, config.encoder, config.encoder_weights)
    resolved = {
        **config.to_dict(),
        "architectures": names,
        "epochs": epochs,
        "batch_size": batch_size,
        # --lr-search: no one rate; the grid it tries, default filled in (a resume must match)
        "lr": None if config.lr_search else settings.lr,
        "lr_grid": list(config.lr_grid or DEFAULT_LR_GRID) if config.lr_search else None,
        "loss": settings.loss,
        "optimizer": settings.recipe.optimizer or defaults.optimizer,
        # what the recipe named by --recipe was when this run trained
        "recipe_settings": settings.recipe.to_dict(),
        "folds_run": folds,
        "threads": threads,
    }
    resolved.pop("dry_run", None)  # how the command was asked to act, not the run's setup
    return SuitePlan(config, names, protocol, dataset, splits, resolved, settings, device)


def run_suite(config: RunConfig, argv: list[str] | None = None) -> SuiteOutcome:
    """Train and measure every cell of the suite; return what happened."""
    if config.dry_run:
        raise ConfigError("dry_run: run_suite trains; bench.suite.dry_run(config) plans only")
    plan = plan_suite(config)
    protocol, dataset = plan.protocol, plan.dataset
    first_split = next(iter(plan.splits.values()))
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "command": "bench " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "config": plan.resolved,
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
            for name in plan.names
        },
        "environment": environment.describe(plan.device),
        "started_utc": utc_now(),
        "finished_utc": None,
    }
    run = RunDir(config.out if config.out else new_default_out_dir(protocol.name))
    run.create()
    with run.lock():
        return _run_locked(
            config,
            run,
            meta,
            plan.names,
            plan.splits,
            plan.settings,
            plan.device,
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
    earlier, done = done_cells(run, meta["config"], order, splits, class_metrics, primary_seed)
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
        for key in done:
            # A kill between the record and this deletion leaves the epoch checkpoint.
            run.resume_path(*key).unlink(missing_ok=True)
        print(f"resuming {run.path}: {len(done)} cell(s) already done", file=sys.stderr)
    print(plan_line(config, names, splits, settings, len(done)), file=sys.stderr, flush=True)
    run.write_meta(meta)
    for split in splits.values():
        write_test_images(run, split, palette)
    # Wall times of the writes after each record, kept for the cells already done.
    timing = run.read_timing()
    done_stems = {cell_stem(*key) for key in done}
    timing["after_record_seconds"] = {
        stem: seconds
        for stem, seconds in timing["after_record_seconds"].items()
        if stem in done_stems
    }
    # --track: each finished cell's event file, made from its committed record. The cells
    # done before a resume are (re)written too: identical bytes, and --track may be new.
    tracker = make_tracker(config.track, run.path, meta)
    for key in order:
        if key in done:
            tracker.write_cell(done[key])

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
    executor = make_executor(
        config, stop, device, settings.progress, train=train_cell, total_cells=len(order)
    )
    try:
        with stop_on_signals(stop), closing(executor.run(jobs, splits, class_metrics)) as results:
            for number, cell in enumerate(results, start=len(done) + 1):
                record = record_of(cell)
                # Outputs first, the record last: a cell is done exactly when its record
                # exists, and until then its epoch checkpoint is kept. The outputs' time
                # is known before the record is written, so the record holds it; the
                # writes after it are timed into timing.json.
                writing = time.perf_counter()
                save_cell_outputs(run, cell, splits[cell.fold], palette, primary_seed)
                record.row["write_seconds"] = time.perf_counter() - writing
                committing = time.perf_counter()
                run.commit_cell(record)
                tracker.write_cell(record)
                run.resume_path(*record.key).unlink(missing_ok=True)
                print(summary_line(record, f"[cell {number}/{len(order)}]"), flush=True)
                finished[record.key] = record
                write_rows()
                timing["after_record_seconds"][cell_stem(*record.key)] = (
                    time.perf_counter() - committing
                )
                run.write_timing(timing)
        write_rows()  # also when every cell was done before
    except (CellInterrupted, KeyboardInterrupt):
        write_rows()  # every finished cell; the cut one has its epoch checkpoint
        command = meta["command"]
        if not config.out:  # the default out dir is new each time: name this one
            command += f" --out {shlex.quote(str(run.path))}"
        try:  # the finished cells' report, with its "Partial run" banner
            report.render_locked(run, meta)
        except (Exception, KeyboardInterrupt) as error:  # never hide how to resume
            print(
                f"bench: partial report not rendered ({error!r}); "
                f"`bench report {run.path}` renders it",
                file=sys.stderr,
            )
        raise SuiteInterrupted(run.path, command) from None

    meta["environment"].update(executor.environment())
    meta["finished_utc"] = utc_now()
    run.write_meta(meta)
    rendering = time.perf_counter()
    report.render_locked(run)  # derives summary.csv and statistics.csv, then renders
    timing["report_seconds"] = time.perf_counter() - rendering
    run.write_timing(timing)
    return SuiteOutcome(run.path, [finished[key] for key in order])


@dataclass(frozen=True)
class CostEstimate:
    """A rough time of one architecture's cells, from a few training steps timed on one
    batch of the real input size (:func:`time_steps`)."""

    architecture: str
    cells: int  # still to train
    epochs: int
    steps: int  # training steps per epoch
    test_batches: int  # evaluated after every epoch, and once more for the final scores
    factor: float  # trainings per cell (--lr-search: more than 1)
    step_seconds: float | None = None  # median of the timed training steps
    test_batch_seconds: float | None = None  # median of the timed test batches
    error: str = ""  # why it could not be timed

    @property
    def cell_seconds(self) -> float | None:
        if self.step_seconds is None or self.test_batch_seconds is None:
            return None
        training = self.epochs * self.steps * self.step_seconds * self.factor
        return training + (self.epochs + 1) * self.test_batches * self.test_batch_seconds


WARMUP_STEPS = 1  # not timed: first-call costs (allocations, cuDNN's search, compilation)
TIMED_STEPS = 3
TIMED_TEST_BATCHES = 2


def time_steps(
    architecture: str,
    split: ProtocolSplit,
    settings: CellSettings,
    device: Any,
) -> tuple[float, float]:
    """Seconds of one training step and of one test batch (eval mode) of ``architecture``
    on ``device``, each a median after a warm-up, on the first training batch of ``split``
    at its real (padded) size, with the cell's speed options and threads."""
    with intra_op_threads(settings.threads):
        speed = resolve_speed(settings.amp, settings.channels_last, settings.compile, device)
        model = architectures.build(
            architecture,
            num_classes=settings.num_classes,
            in_channels=3,
            width=settings.width,
            **settings.options,
        )
        forward = place_model(model, device, speed)
        optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
        scaler = torch.amp.GradScaler(device.type, enabled=speed.amp_dtype is torch.float16)
        n = min(settings.batch_size, len(split.train))
        x = model_input(to_device_uint8(split.train.images[:n], device), speed.channels_last)
        y = torch.from_numpy(split.train.labels[:n]).to(device)

        def train_step() -> None:
            with speed.autocast(device):
                logits = forward(x)
            loss = compute_loss(settings.loss, logits, y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

        def test_batch() -> None:
            with torch.no_grad(), speed.autocast(device):
                forward(x).argmax(dim=1)

        def median_seconds(step: Callable[[], None], times: int) -> float:
            seconds = []
            for _ in range(times):
                synchronize(device)
                started = time.perf_counter()
                step()
                synchronize(device)
                seconds.append(time.perf_counter() - started)
            return statistics.median(seconds)

        model.train()
        median_seconds(train_step, WARMUP_STEPS)
        step_seconds = median_seconds(train_step, TIMED_STEPS)
        model.eval()
        median_seconds(test_batch, 1)  # eval mode's own first call
        return step_seconds, median_seconds(test_batch, TIMED_TEST_BATCHES)


def estimate_costs(
    plan: SuitePlan, to_train: dict[str, int], device: Any
) -> Iterator[CostEstimate]:
    """A :class:`CostEstimate` per architecture with cells to train, timed as it goes."""
    settings = plan.settings
    largest = max(plan.splits.values(), key=lambda s: len(s.train))
    trained = images_trained(len(largest.train), settings.batch_size)
    tested = max(len(s.test) for s in plan.splits.values())
    for name in plan.names:
        if not to_train.get(name):
            continue
        estimate = CostEstimate(
            name,
            cells=to_train[name],
            epochs=settings.epochs,
            steps=math.ceil(trained / settings.batch_size),
            test_batches=math.ceil(tested / settings.batch_size),
            factor=lr_search_factor(settings),
        )
        cell_settings = dataclasses.replace(settings, options=cell_options(plan.config, name))
        try:
            step, test = time_steps(name, largest, cell_settings, device)
        except Exception as error:  # a model that cannot train here (out of memory included)
            first_line = (str(error).strip().splitlines() or [""])[0]
            yield dataclasses.replace(estimate, error=f"{type(error).__name__}: {first_line}")
            continue
        yield dataclasses.replace(estimate, step_seconds=step, test_batch_seconds=test)


def dry_run(config: RunConfig, out: TextIO | None = None) -> None:
    """``bench run --dry-run``: print the plan and a rough time estimate to ``out``
    (stdout), without training or writing anything (``--out`` is only read, to count the
    cells a resumed run would skip)."""
    out = out or sys.stdout
    plan = plan_suite(config)
    order = plan.order
    done: dict[CellKey, CellRecord] = {}
    if config.out and RunDir(config.out).is_run():
        _, done = done_cells(
            RunDir(config.out),
            plan.resolved,
            order,
            plan.splits,
            metric_classes(plan.dataset.class_names),
            config.seeds[0],
        )
    print(plan_line(config, plan.names, plan.splits, plan.settings, len(done)), file=out)
    to_train = Counter(key[0] for key in order if key not in done)
    if not to_train:
        print("estimate: nothing to train", file=out)
        return
    device, where = plan.device, ""
    if config.executor == "ray":  # timed here, on the kind of device the tasks will use
        try:
            device = select_device(task_device_name(config.device, config.gpus_per_task))
        except ConfigError:
            device, where = select_device("cpu"), " (the Ray tasks' device is not here)"
    settings = plan.settings
    height, width = next(iter(plan.splits.values())).train.labels.shape[1:]
    print(
        f"estimate (rough): per architecture, the median of {TIMED_STEPS} training steps "
        f"(after {WARMUP_STEPS} warm-up) and of {TIMED_TEST_BATCHES} test batches, timed on "
        f"{device}{where} with a batch of {settings.batch_size} {height}×{width} training "
        "images; × steps per epoch × epochs (+ a test pass per epoch and the final one) × "
        "cells",
        file=out,
        flush=True,
    )
    total, cells, failed = 0.0, 0, []
    width_of_name = max(len(name) for name in to_train)
    for estimate in estimate_costs(plan, to_train, device):
        name = estimate.architecture.ljust(width_of_name)
        cell_seconds = estimate.cell_seconds
        if cell_seconds is None:
            failed.append(estimate.architecture)
            print(f"  {name}  could not be timed: {estimate.error}", file=out, flush=True)
            continue
        search = f" × {estimate.factor:g} (lr search)" if estimate.factor != 1 else ""
        print(
            f"  {name}  {estimate.step_seconds:.3g} s/step × {estimate.steps} steps"
            f"{search} × {estimate.epochs} epochs, {estimate.test_batch_seconds:.3g} s/test "
            f"batch × {estimate.test_batches}: {format_duration(cell_seconds)} per cell × "
            f"{estimate.cells} = {format_duration(cell_seconds * estimate.cells)}",
            file=out,
            flush=True,
        )
        total += cell_seconds * estimate.cells
        cells += estimate.cells
    line = f"estimate: ~{format_duration(total)} for {plural(cells, 'cell')} on {device}{where}"
    if failed:
        line += f" (not counted: {', '.join(failed)})"
    if config.executor == "ray":
        line += "; Ray runs cells side by side, so the wall time is shorter"
    print(
        line + ". Not counted: building models, writing checkpoints and predictions, the "
        "report; a busy or throttled machine is slower",
        file=out,
    )


def cell_options(config: RunConfig, name: str) -> dict[str, Any]:
    """Architecture options of a cell: the encoder, for the segmentation-models baselines."""
    return architectures.architecture_options(name, config.encoder, config.encoder_weights)


def summary_line(record: CellRecord, counter: str = "") -> str:
    """A finished cell in one line, after ``counter`` (``[cell 3/6]``) if given."""
    row = record.row
    where = f"seed {row['seed']}" + (f", fold {row['fold']}" if row["fold"] is not None else "")
    head = f"{counter} " if counter else ""
    if row["status"] != "ok":
        return f"{head}{row['architecture']} ({where}): FAILED: {row['error']}"
    classes = dict.fromkeys(r["class"] for r in record.per_image)
    dice = ", ".join(
        f"{name} {np.mean([r['dice'] for r in record.per_image if r['class'] == name]):.4f}"
        for name in classes
    )
    return (
        f"{head}{row['architecture']} ({where}): test acc {row['test_accuracy']:.4f}, Dice {dice}, "
        f"train {row['train_seconds']:.1f} s ({row['images_per_second']:.1f} img/s)"
    )


def write_test_images(run: RunDir, split: ProtocolSplit, palette: tuple[int, ...]) -> None:
    """Ground truth and input of every test image, original size (predictions.png picks
    its rows among them by their scores)."""
    test = split.test
    for i, image_id in enumerate(test.image_ids):
        h, w = test.sizes[i]
        write_mask(run.truth_path(image_id), test.labels[i, :h, :w], palette)
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
