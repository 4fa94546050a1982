"""The run directory: its layout, its schema, and the only code that reads or writes it.

Layout (``RUN_DIR/``)::

    config.json        resolved configuration, environment, versions, start/end (UTC); after
                       a resume also the earlier invocations' environments
    cells/<architecture>_seed<S>_fold<F>.json   the record of one finished cell (ok or
                       failed): its cells.csv row, its history rows and its per-image rows.
                       Written last, after the cell's predictions and checkpoint: a cell is
                       finished exactly when its record exists (the commit point)
    cells.csv          one row per (architecture, seed, fold) run: status, timings, final losses
    history.csv        architecture, seed, fold, epoch, split, loss, accuracy, seconds, dice
                       (the test foreground Dice per epoch; empty on train rows)
    per_image.csv      architecture, seed, fold, image_id, class, jaccard, dice, accuracy,
                       jaccard_legacy
    summary.csv, statistics.csv   per architecture, and the paired comparison
    report.md + *.png  rendered by bench.report from the data, never by training
    report.html        report.md as one self-contained page (figures embedded), for a browser
                       or an e-mail
    predictions/<architecture>/<image_id>.png   predicted label map, ground-truth palette,
                       original size (first seed; other seeds under seed-<S>/)
    truth/<image_id>.png, inputs/<image_id>.png ground truth and inputs of the test images
                       (inputs of those bench.suite keeps: predictions.png picks its
                       rows among them)
    checkpoints/<architecture>_seed<S>_fold<F>.pt   final weights (torch.load(weights_only=True))
    resume/<architecture>_seed<S>_fold<F>.pt   epoch checkpoint of a cell in progress (model,
                       optimiser, history, RNG states; weights_only), deleted once the cell's
                       record is written
    timing.json        seconds of the writes that follow each cell's record (the record
                       itself, the derived CSVs, --track's file) and of the final report;
                       the writes before the record (predictions, checkpoint) are in the
                       record (``write_seconds``). Rewritten after every cell; wall times
                       only, so losing it loses no result (the cost table then says so)

While a process writes the directory it holds an flock on it (:meth:`RunDir.lock`). The
three CSVs are derived from the cell records and rewritten whole after every cell, so
a crash between two of their renames loses nothing: the next run or ``bench report``
derives them again. Every file is written atomically (:mod:`bench.atomic`).
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import os
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.atomic import TEMPORARY_NAME, atomic_torch_save, atomic_write_text
from bench.errors import ConfigError
from bench.recipes import THESIS as THESIS_RECIPE

# 2: per-cell records under cells/ are the source of truth (1: the CSVs were).
FORMAT_VERSION = 2
#: Run directories of these versions can still be rendered by ``bench report``.
READABLE_VERSIONS = (1, 2)

#: ``dice``: the test foreground Dice of the epoch (the primary endpoint: per image the mean
#: Dice of classes 1..K-1, then the mean over the test images); empty on train rows, and
#: absent from directories written before it was recorded.
HISTORY_COLUMNS = (
    "architecture",
    "seed",
    "fold",
    "epoch",
    "split",
    "loss",
    "accuracy",
    "seconds",
    "dice",
)
PER_IMAGE_METRICS = ("jaccard", "dice", "accuracy", "jaccard_legacy")
#: The confusion counts of the class in the image (valid pixels only): every score above
#: is a function of them.
PER_IMAGE_COUNTS = ("tp", "fp", "fn", "tn")
PER_IMAGE_COLUMNS = (
    "architecture",
    "seed",
    "fold",
    "image_id",
    "class",
    *PER_IMAGE_METRICS,
    *PER_IMAGE_COUNTS,
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
    # the epoch whose weights were kept (early stopping); empty: the last one
    "best_epoch",
    "batch_size",
    "lr",
    *RUN_MEASURES,
    # Seconds to write the cell's predictions and checkpoint, measured by the suite before
    # it writes the record (the commit point), so that it can be part of it.
    "write_seconds",
)
#: The WBC task's metric classes ("cell" is the whole cell, cytoplasm ∪ nucleus).
WBC_METRIC_CLASS_NAMES = ("background", "cytoplasm", "nucleus", "cell")
CLASS_STATISTICS = ("jaccard_mean", "jaccard_sem", "dice_mean", "dice_sem", "jaccard_legacy_mean")


def summary_columns(metric_classes: Sequence[str]) -> tuple[str, ...]:
    """summary.csv's columns for a run whose per-image rows have these classes."""
    return (
        "architecture",
        "status",
        "error",
        "flags",
        "runs",
        "seeds",
        "images",
        "params",
        "gflops",
        "lr",
        *RUN_MEASURES,
    ) + tuple(f"{cls}_{stat}" for cls in metric_classes for stat in CLASS_STATISTICS)


def metric_classes_of(meta: Mapping[str, Any]) -> tuple[str, ...]:
    """The classes a run's per-image rows are scored for (config.json's dataset)."""
    dataset = meta["dataset"]
    if dataset.get("metric_classes"):
        return tuple(dataset["metric_classes"])
    names = tuple(dataset.get("class_names") or ())
    # Directories written before metric_classes was recorded: WBC runs added "cell".
    return WBC_METRIC_CLASS_NAMES if names == WBC_METRIC_CLASS_NAMES[:3] else names


#: A stored error text keeps this many characters: its head and its tail (a compiler's
#: error can run to hundreds of kilobytes; the whole text went to stderr when it happened).
ERROR_TEXT_LIMIT = 4000
STATUSES = ("ok", "failed")

# Column types of the tables; everything else is text.
_INT_COLUMNS = frozenset({"seed", "fold", "epoch", "params", "epochs", "best_epoch", "batch_size"})
_INT_COLUMNS |= frozenset(PER_IMAGE_COUNTS)
_TEXT_COLUMNS = frozenset({"architecture", "status", "error", "split", "image_id", "class"})
_OPTIONAL = frozenset(
    {"fold", *RUN_MEASURES, "params", "gflops", "seconds", "lr", "best_epoch", "write_seconds"}
    | set(PER_IMAGE_COUNTS)
)
#: Optional in history rows only (a per-image row's ``dice`` is required).
_HISTORY_OPTIONAL = _OPTIONAL | {"dice"}

CellKey = tuple[str, int, "int | None"]


def cap_text(text: str, limit: int = ERROR_TEXT_LIMIT) -> str:
    """``text`` itself when short, else its head and tail around a note of what was cut."""
    if len(text) <= limit:
        return text
    keep = limit // 2
    omitted = len(text) - 2 * keep
    return f"{text[:keep]}\n[... {omitted} characters omitted ...]\n{text[-keep:]}"


def cell_stem(architecture: str, seed: int, fold: int | None) -> str:
    return f"{architecture}_seed{seed}_fold{'all' if fold is None else fold}"


def format_value(value: Any) -> str:
    """CSV cell text: floats with full precision (repr), None as empty."""
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def write_csv(path: Path, columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([format_value(row.get(column)) for column in columns])
    atomic_write_text(path, buffer.getvalue())


def read_csv(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV file as text; [] when it does not exist.

    Any field size is accepted (a stored error text can be long), and a file that is not
    UTF-8, is not CSV or has a row of the wrong length is a ConfigError naming the file and
    the line.
    """
    if not path.exists():
        return []
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                return []
            rows = []
            for values in reader:
                if len(values) != len(header):
                    raise ConfigError(
                        f"{path}:{reader.line_num}: {len(values)} fields where the header has "
                        f"{len(header)} (a truncated or edited file?)"
                    )
                rows.append(dict(zip(header, values, strict=True)))
            return rows
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"{path}: not UTF-8 text ({error.reason} at byte {error.start})"
        ) from None
    except csv.Error as error:
        raise ConfigError(f"{path}: not a readable CSV file ({error})") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read ({error.strerror})") from None


def _plain(value: Any) -> Any:
    """NumPy scalars (a metric's float64, a count's int64) as the Python values they hold."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=_plain) + "\n")


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; anything else is a ConfigError naming the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found (is this a bench run directory?)") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text ({error.reason})") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}: not valid JSON ({error})") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read ({error.strerror})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: holds {type(data).__name__}, not a JSON object")
    return data


def _typed(
    path: Path, where: str, column: str, value: Any, optional: frozenset[str] = _OPTIONAL
) -> Any:
    """One table value converted to its column's type; a ConfigError names the place."""
    if column in _TEXT_COLUMNS:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: {where}: {column!r} must be text (got {value!r})")
        return value
    if value in ("", None):
        if column in optional:
            return None
        raise ConfigError(f"{path}: {where}: {column!r} is empty")
    try:
        if column in _INT_COLUMNS:
            if isinstance(value, (float, bool)):
                raise ValueError
            return int(value)
        number = float(value)
    except (TypeError, ValueError):
        kind = "an integer" if column in _INT_COLUMNS else "a number"
        raise ConfigError(f"{path}: {where}: {column!r} must be {kind} (got {value!r})") from None
    return number


def _typed_row(
    path: Path,
    where: str,
    row: Mapping[str, Any],
    columns: Sequence[str],
    optional: frozenset[str] = _OPTIONAL,
) -> dict:
    # An optional column may be absent: older directories lack the newer ones.
    missing = [c for c in columns if c not in row and c not in optional]
    if missing:
        raise ConfigError(f"{path}: {where}: missing {', '.join(map(repr, missing))}")
    return {c: _typed(path, where, c, row.get(c), optional) for c in columns}


@dataclass
class CellRecord:
    """Everything one finished cell measured: its cells.csv row and its table rows."""

    row: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    per_image: list[dict[str, Any]] = field(default_factory=list)
    #: Where a combined run's cell was trained (run directory, commit, machine, versions);
    #: None for a cell trained into this directory.
    source: dict[str, Any] | None = None

    @property
    def key(self) -> CellKey:
        return self.row["architecture"], self.row["seed"], self.row["fold"]

    def to_json(self) -> dict[str, Any]:
        data = {
            "format_version": FORMAT_VERSION,
            "cell": self.row,
            "history": self.history,
            "per_image": self.per_image,
        }
        if self.source is not None:
            data["source"] = self.source
        return data

    @classmethod
    def from_json(cls, path: Path, data: Any) -> CellRecord:
        """A record read back, every value type-checked; a ConfigError names what is wrong."""
        if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION:
            raise ConfigError(f"{path}: not a cell record of format {FORMAT_VERSION}")
        parts = {k: data.get(k) for k in ("cell", "history", "per_image")}
        if not isinstance(parts["cell"], dict) or not all(
            isinstance(parts[k], list) and all(isinstance(r, dict) for r in parts[k])
            for k in ("history", "per_image")
        ):
            raise ConfigError(f"{path}: a cell record needs 'cell', 'history' and 'per_image'")
        row = _typed_row(path, "cell", parts["cell"], CELL_COLUMNS)
        # The learning-rate search's candidates (a list of dicts) stay in the record only.
        search = parts["cell"].get("lr_search")
        row["lr_search"] = search if isinstance(search, list) else None
        if row["status"] not in STATUSES:
            raise ConfigError(f"{path}: status {row['status']!r} is not one of {STATUSES}")
        record = cls(
            row,
            [
                _typed_row(path, f"history[{i}]", r, HISTORY_COLUMNS, _HISTORY_OPTIONAL)
                for i, r in enumerate(parts["history"])
            ],
            [
                _typed_row(path, f"per_image[{i}]", r, PER_IMAGE_COLUMNS)
                for i, r in enumerate(parts["per_image"])
            ],
        )
        if isinstance(data.get("source"), dict):
            record.source = data["source"]
        for name, rows in (("history", record.history), ("per_image", record.per_image)):
            if any((r["architecture"], r["seed"], r["fold"]) != record.key for r in rows):
                raise ConfigError(f"{path}: {name} rows of another cell")
        if row["status"] == "ok" and not (record.history and record.per_image):
            raise ConfigError(f"{path}: an ok cell without history or per-image rows")
        return record


@dataclass
class RunTables:
    """A run's three tables as typed rows (ints, floats, None for empty), in suite order."""

    cells: list[dict[str, Any]]
    history: list[dict[str, Any]]
    per_image: list[dict[str, Any]]

    @classmethod
    def of(cls, records: Iterable[CellRecord]) -> RunTables:
        records = list(records)
        return cls(
            [r.row for r in records],
            [h for r in records for h in r.history],
            [p for r in records for p in r.per_image],
        )


class RunDir:
    """One run directory: where each file lives and how it is read and written."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    # ------------------------------------------------------------------ layout
    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def records_dir(self) -> Path:
        return self.path / "cells"

    def table_path(self, name: str) -> Path:
        """``cells``, ``history``, ``per_image``, ``summary`` or ``statistics`` (.csv)."""
        return self.path / f"{name}.csv"

    @property
    def report_path(self) -> Path:
        return self.path / "report.md"

    @property
    def html_report_path(self) -> Path:
        return self.path / "report.html"

    def figure_path(self, name: str) -> Path:
        return self.path / f"{name}.png"

    def record_path(self, architecture: str, seed: int, fold: int | None) -> Path:
        return self.records_dir / f"{cell_stem(architecture, seed, fold)}.json"

    def checkpoint_path(self, architecture: str, seed: int, fold: int | None) -> Path:
        return self.path / "checkpoints" / f"{cell_stem(architecture, seed, fold)}.pt"

    def resume_path(self, architecture: str, seed: int, fold: int | None) -> Path:
        """The epoch checkpoint of a cell in progress."""
        return self.path / "resume" / f"{cell_stem(architecture, seed, fold)}.pt"

    def prediction_path(
        self, architecture: str, seed: int, image_id: str, primary_seed: int
    ) -> Path:
        folder = self.path / "predictions" / architecture
        if seed != primary_seed:
            folder = folder / f"seed-{seed}"
        return folder / f"{image_id}.png"

    def truth_path(self, image_id: str) -> Path:
        return self.path / "truth" / f"{image_id}.png"

    def input_path(self, image_id: str) -> Path:
        return self.path / "inputs" / f"{image_id}.png"

    def figure_input_ids(self) -> list[str]:
        """The test images whose inputs were kept: predictions.png picks its rows among
        them (:func:`bench.report.choose_figure_images`)."""
        return sorted(p.stem for p in (self.path / "inputs").glob("*.png"))

    # ------------------------------------------------------------------ ownership
    def is_run(self) -> bool:
        return self.config_path.is_file()

    def check_can_own(self) -> None:
        """Refuse a path that exists and is not a run directory (nothing is touched).

        An empty folder, or one holding only the temporaries of a run killed before its
        config.json was written, may become a run directory.
        """
        if not self.path.exists():
            return
        if not self.path.is_dir():
            raise ConfigError(f"--out {self.path}: exists and is not a directory")
        if self.is_run():
            return
        foreign = sorted(
            p.name
            for p in self.path.iterdir()
            if p.name != ".write-test" and not TEMPORARY_NAME.fullmatch(p.name)
        )
        if foreign:
            shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            raise ConfigError(
                f"--out {self.path}: exists, is not empty ({shown}) and is not a bench run "
                "directory (no config.json); bench writes only into a new or empty folder "
                "or its own run directory: choose another --out"
            )

    def create(self) -> None:
        """Create the folder; a clear error when it is a file or cannot be written."""
        self.check_can_own()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as error:
            raise ConfigError(f"--out {self.path}: cannot write there ({error.strerror})") from None

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the directory's lock, or refuse at once when another process holds it.

        The lock is an flock on the directory itself: no file is created for it, and it dies
        with its process, so a killed run never leaves a stale lock.
        """
        fd = os.open(self.path, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ConfigError(
                    f"{self.path}: another bench process is writing this run directory; "
                    "wait for it to finish or use another --out"
                ) from None
            yield
        finally:
            os.close(fd)  # releases the flock

    def remove_stale_temporaries(self) -> list[Path]:
        """Delete the half-written temporaries a killed process left (ours by their name)."""
        removed = []
        for path in self.path.rglob("*.tmp"):
            if path.is_file() and TEMPORARY_NAME.fullmatch(path.name):
                path.unlink(missing_ok=True)
                removed.append(path)
        return removed

    # ------------------------------------------------------------------ configuration
    def read_meta(self) -> dict[str, Any]:
        meta = read_json(self.config_path)
        version = meta.get("format_version")
        if version not in READABLE_VERSIONS:
            raise ConfigError(
                f"{self.path}: written by an incompatible version of bench (format_version "
                f"{version!r}; this version reads {', '.join(map(str, READABLE_VERSIONS))})"
            )
        for key in ("config", "dataset", "protocol", "environment"):
            if not isinstance(meta.get(key), dict):
                raise ConfigError(f"{self.config_path}: {key!r} is missing or not an object")
        # Runs made before recipes existed trained as the thesis recipe does: said so, they
        # resume, compare and combine with runs that name it.
        if "recipe" not in meta["config"]:
            meta["config"]["recipe"] = THESIS_RECIPE.name
            meta["config"]["recipe_settings"] = THESIS_RECIPE.to_dict()
        return meta

    def write_meta(self, meta: Mapping[str, Any]) -> None:
        write_json(self.config_path, meta)

    @property
    def timing_path(self) -> Path:
        return self.path / "timing.json"

    def read_timing(self) -> dict[str, Any]:
        """timing.json: ``after_record_seconds`` (cell stem → seconds) and
        ``report_seconds``; empty ones when the file is missing or not readable (it holds
        wall times only: a run without it has lost no result)."""
        timing: dict[str, Any] = {"after_record_seconds": {}, "report_seconds": None}
        try:
            data = read_json(self.timing_path)
        except ConfigError:
            return timing
        seconds = data.get("after_record_seconds")
        if isinstance(seconds, dict):
            timing["after_record_seconds"] = {
                str(stem): float(value)
                for stem, value in seconds.items()
                if isinstance(value, (int, float)) and not isinstance(value, bool)
            }
        report = data.get("report_seconds")
        if isinstance(report, (int, float)) and not isinstance(report, bool):
            timing["report_seconds"] = float(report)
        return timing

    def write_timing(self, timing: Mapping[str, Any]) -> None:
        write_json(self.timing_path, timing)

    # ------------------------------------------------------------------ cells
    def commit_cell(self, record: CellRecord) -> None:
        """Write a finished cell's record: from now on the cell counts as done."""
        write_json(self.record_path(*record.key), record.to_json())

    def load_records(self) -> tuple[dict[CellKey, CellRecord], list[str]]:
        """The valid cell records, and one line for each file that is not one.

        A record that cannot be read (edited, or damaged on disk) does not stop anything:
        its cell simply is not done, and a resumed run trains it again.
        """
        records: dict[CellKey, CellRecord] = {}
        problems: list[str] = []
        if not self.records_dir.is_dir():
            return records, problems
        for path in sorted(self.records_dir.glob("*.json")):
            try:
                record = CellRecord.from_json(path, read_json(path))
                if path != self.record_path(*record.key):
                    raise ConfigError(f"{path}: holds the record of {cell_stem(*record.key)}")
            except ConfigError as error:
                problems.append(str(error))
                continue
            records[record.key] = record
        return records, problems

    def write_tables(self, records: Sequence[CellRecord]) -> None:
        """Derive cells.csv, history.csv and per_image.csv from the records, in their order."""
        write_csv(self.table_path("cells"), CELL_COLUMNS, (r.row for r in records))
        write_csv(
            self.table_path("history"), HISTORY_COLUMNS, (h for r in records for h in r.history)
        )
        write_csv(
            self.table_path("per_image"),
            PER_IMAGE_COLUMNS,
            (p for r in records for p in r.per_image),
        )

    def tables(self, meta: Mapping[str, Any] | None = None) -> RunTables:
        """The run's tables, typed: from the cell records (format 2, in the suite order of
        config.json), or from the CSVs of a format-1 directory."""
        meta = meta if meta is not None else self.read_meta()
        if meta["format_version"] == 1:
            return RunTables(
                *(
                    [
                        _typed_row(path, f"line {i + 2}", row, columns, optional)
                        for i, row in enumerate(read_csv(path))
                    ]
                    for path, columns, optional in (
                        (self.table_path("cells"), CELL_COLUMNS, _OPTIONAL),
                        (self.table_path("history"), HISTORY_COLUMNS, _HISTORY_OPTIONAL),
                        (self.table_path("per_image"), PER_IMAGE_COLUMNS, _OPTIONAL),
                    )
                )
            )
        return RunTables.of(self.ordered_records(meta).values())

    def ordered_records(self, meta: Mapping[str, Any]) -> dict[CellKey, CellRecord]:
        """Valid records in suite order (architectures × seeds × folds of config.json)."""
        records, problems = self.load_records()
        for problem in problems:
            print(f"bench: warning: {problem}; that cell is not counted", file=sys.stderr)
        config = meta["config"]
        order = [
            (name, seed, fold)
            for name in config.get("architectures", [])
            for seed in config.get("seeds", [])
            for fold in config.get("folds_run", [None])
        ]
        ranked = {key: records[key] for key in order if key in records}
        ranked.update({k: v for k, v in records.items() if k not in ranked})
        return ranked

    # ------------------------------------------------------------------ files of a cell
    def write_checkpoint(self, key: CellKey, state: Mapping[str, Any]) -> None:
        atomic_torch_save(self.checkpoint_path(*key), dict(state))

    def write_report(self, text: str) -> None:
        atomic_write_text(self.report_path, text)

    def write_html_report(self, text: str) -> None:
        atomic_write_text(self.html_report_path, text)
