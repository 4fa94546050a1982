"""Experiment tracking (``bench run --track tensorboard``): each finished cell as TensorBoard data.

Layout: one run of TensorBoard per cell, ``tensorboard --logdir RUN_DIR/tensorboard``::

    RUN_DIR/tensorboard/<architecture>_seed<S>_fold<F>/events.out.tfevents.bench

What a cell's event file holds:

* per epoch (step = epoch): ``loss/train``, ``loss/test``, ``accuracy/train``,
  ``accuracy/test``, from the record's history;
* ``results/dice/<class>`` and ``results/jaccard/<class>``: the mean over the cell's test
  images of each metric class (its per-image rows), at the last epoch's step;
* the text ``config`` (the run's configuration, what is method, not placement, with this
  architecture's options) and ``cell`` (its cells.csv row: status, error, timings, size);
* hyperparameters (the HPARAMS tab): the architecture, seed, fold, learning rate (the one
  picked, under ``--lr-search``) and the configuration's other single values, so that cells
  can be filtered and compared by them, against the ``results/`` metrics.

It is made from the cell's record and the run's ``config.json`` alone, after the record is
committed (:meth:`bench.run_dir.RunDir.commit_cell`), so the same record gives the same bytes:
rewriting it (a resumed run writes the cells done before again; :func:`write_run` rebuilds
every cell of a run directory) changes nothing. Hence no clock: an event's wall time is the
run's start (``started_utc``) plus the cell's elapsed training and evaluation seconds, so
TensorBoard's "relative" axis is the cell's training time. Scalars are stored as float32
(TensorBoard's ``simple_value``). Needs the ``[tracking]`` extra (tensorboard); the
``--track`` option checks that it is installed at startup (:func:`bench.config.check_tracker`).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench.atomic import atomic_write_bytes
from bench.errors import ConfigError
from bench.run_dir import CellRecord, RunDir, cell_stem

TENSORBOARD_DIR = "tensorboard"
#: One file per cell, whose name never changes: a rewrite replaces it (TensorBoard reads any
#: file whose name holds "tfevents").
EVENT_FILE = "events.out.tfevents.bench"
#: Configuration keys that say where and how a run ran, not what it measured: left out of
#: the ``config`` text and the hyperparameters (a resume may change them).
PLACEMENT_KEYS = frozenset(
    {
        "out",
        "config",
        "progress",
        "dry_run",
        "track",
        "data_dir",
        "executor",
        "ray_address",
        "cpus_per_task",
        "gpus_per_task",
        "host_memory",
    }
)
#: Per-epoch scalars: (history split, history column) -> tag.
CURVES = {
    ("train", "loss"): "loss/train",
    ("test", "loss"): "loss/test",
    ("train", "accuracy"): "accuracy/train",
    ("test", "accuracy"): "accuracy/test",
}
RESULT_METRICS = ("dice", "jaccard")


class Tracker:
    """Writes nothing: what ``--track`` left out gives (:func:`make_tracker`)."""

    def write_cell(self, record: CellRecord) -> Path | None:
        """Record one finished cell (called after its record is committed)."""
        return None


class TensorBoardTracker(Tracker):
    """Writes each finished cell's event file under ``run_dir/tensorboard/``."""

    def __init__(self, run_dir: str | Path, meta: Mapping[str, Any]) -> None:
        self.run_dir = Path(run_dir)
        self.meta = meta

    def write_cell(self, record: CellRecord) -> Path:
        return write_cell_events(self.run_dir, record, self.meta)


def make_tracker(track: str | None, run_dir: str | Path, meta: Mapping[str, Any]) -> Tracker:
    """The tracker ``--track`` asks for (``None``: one that writes nothing). ``meta`` is the
    run's config.json content, as the suite writes it."""
    if track is None:
        return Tracker()
    if track == "tensorboard":
        return TensorBoardTracker(run_dir, meta)
    raise ConfigError(f"--track: unknown tracker {track!r} (known: tensorboard)")


def event_path(run_dir: str | Path, record: CellRecord) -> Path:
    """``RUN_DIR/tensorboard/<architecture>_seed<S>_fold<F>/events.out.tfevents.bench``."""
    return Path(run_dir) / TENSORBOARD_DIR / cell_stem(*record.key) / EVENT_FILE


def write_cell_events(run_dir: str | Path, record: CellRecord, meta: Mapping[str, Any]) -> Path:
    """Write (or rewrite, identically) the event file of one cell; return its path."""
    path = event_path(run_dir, record)
    atomic_write_bytes(path, cell_events(record, meta))
    return path


def write_run(run_dir: str | Path) -> list[Path]:
    """Rebuild the event files of every recorded cell of a run directory (e.g. one trained
    without ``--track``); unreadable records are skipped, as ``bench report`` skips them."""
    run = RunDir(run_dir)
    meta = run.read_meta()
    records, _problems = run.load_records()
    keys = sorted(records, key=lambda key: (key[0], key[1], -1 if key[2] is None else key[2]))
    return [write_cell_events(run.path, records[key], meta) for key in keys]


# ---------------------------------------------------------------------------- the events


def cell_events(record: CellRecord, meta: Mapping[str, Any]) -> bytes:
    """The event file of one cell, as bytes: a function of ``record`` and ``meta`` only."""
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.plugins.hparams import summary_v2 as hparams_summary
    from tensorboard.plugins.text import summary_v2 as text_summary
    from tensorboard.summary.writer.record_writer import RecordWriter

    start = _start_seconds(meta)
    buffer = io.BytesIO()
    writer = RecordWriter(buffer)

    def write(event: Any) -> None:
        writer.write(event.SerializeToString())

    def scalar(tag: str, value: float) -> Any:
        return summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=value)])

    write(event_pb2.Event(wall_time=start, file_version="brain.Event:2"))
    elapsed = 0.0
    last_step = 0
    for row in record.history:
        seconds = _number(row.get("seconds"))
        elapsed += seconds if seconds is not None and math.isfinite(seconds) else 0.0
        step = int(row["epoch"])
        last_step = max(last_step, step)
        for column in ("loss", "accuracy"):
            tag = CURVES.get((row.get("split"), column))
            value = _number(row.get(column))  # NaN kept: a diverged training shows as one
            if tag is not None and value is not None:
                summary = scalar(tag, value)
                write(event_pb2.Event(wall_time=start + elapsed, step=step, summary=summary))
    end = start + elapsed
    for tag, value in cell_results(record).items():
        write(event_pb2.Event(wall_time=end, step=last_step, summary=scalar(tag, value)))
    for tag, text in (("config", config_text(record, meta)), ("cell", cell_text(record))):
        summary = text_summary.text_pb(tag, text)
        write(event_pb2.Event(wall_time=end, step=last_step, summary=summary))
    session = hparams_summary.hparams_pb(cell_hparams(record, meta), start_time_secs=start)
    write(event_pb2.Event(wall_time=start, step=0, summary=session))
    return buffer.getvalue()


def cell_results(record: CellRecord) -> dict[str, float]:
    """``{"results/dice/<class>": mean, "results/jaccard/<class>": mean}`` over the cell's test
    images, classes in the order of the per-image rows (none for a failed cell). NaN scores
    (undefined for an image) are left out of the mean, as in the report's."""
    values: dict[str, list[float]] = {}
    for row in record.per_image:
        for metric in RESULT_METRICS:
            value = _number(row.get(metric))
            if value is not None and math.isfinite(value):
                values.setdefault(f"results/{metric}/{row['class']}", []).append(value)
    return {tag: math.fsum(v) / len(v) for tag, v in values.items()}


def method_config(record: CellRecord, meta: Mapping[str, Any]) -> dict[str, Any]:
    """The run's configuration without placement keys, with the smp encoder settings
    replaced by this architecture's own options (``config.json``'s ``architectures``)."""
    config = {k: v for k, v in (meta.get("config") or {}).items() if k not in PLACEMENT_KEYS}
    name = record.row["architecture"]
    options = ((meta.get("architectures") or {}).get(name) or {}).get("options") or {}
    for key in ("encoder", "encoder_weights"):
        config.pop(key, None)
    return {"architecture": name, "options": dict(options), **config}


def config_text(record: CellRecord, meta: Mapping[str, Any]) -> str:
    """The ``config`` text: the method configuration as indented JSON (a Markdown code
    block, as TensorBoard's text tab renders Markdown)."""
    body = json.dumps(method_config(record, meta), indent=2, sort_keys=True, default=str)
    return "\n".join("    " + line for line in body.splitlines())


def cell_text(record: CellRecord) -> str:
    """The ``cell`` text: the cells.csv row (status, error, timings, size) as indented JSON."""
    body = json.dumps(record.row, indent=2, sort_keys=True, default=str)
    return "\n".join("    " + line for line in body.splitlines())


def cell_hparams(
    record: CellRecord, meta: Mapping[str, Any]
) -> dict[str, bool | int | float | str]:
    """Hyperparameters of the HPARAMS tab: every single value (no list, no ``None``) of
    :func:`method_config`, the options flattened (``options.encoder``), and the cell's own
    seed, fold and learning rate."""
    config = method_config(record, meta)
    options = config.pop("options")
    values: dict[str, Any] = {**config, **{f"options.{k}": v for k, v in options.items()}}
    row = record.row
    values.update(seed=row["seed"], fold="all" if row["fold"] is None else row["fold"])
    if row.get("lr") is not None:
        values["lr"] = row["lr"]
    return {
        key: value
        for key, value in values.items()
        if isinstance(value, (bool, int, float, str))
        and not (isinstance(value, float) and not math.isfinite(value))
    }


def _start_seconds(meta: Mapping[str, Any]) -> float:
    """The run's start (config.json ``started_utc``) in seconds since the epoch; 0 if absent."""
    text = meta.get("started_utc")
    try:
        started = dt.datetime.strptime(str(text), "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return 0.0
    return started.replace(tzinfo=dt.timezone.utc).timestamp()


def _number(value: Any) -> float | None:
    """A float (NaN and infinities included), or ``None`` (missing, empty, not a number)."""
    if isinstance(value, bool) or value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
