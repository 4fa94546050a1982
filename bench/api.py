"""The Python API: run a suite and read a run directory from a notebook or a script.

    from bench.api import load_run, run
    from bench.config import RunConfig

    result = run(RunConfig(architectures=("unet_thesis",), dataset="synthetic", epochs=5))
    result.summary[["architecture", "nucleus_dice_mean", "nucleus_dice_sem"]]
    old = load_run("reports/thesis_wbc1_cpu")
    old.per_image.query("`class` == 'nucleus'").groupby("architecture").dice.describe()

Why a separate face: a notebook wants DataFrames and exceptions, not files and exit codes.
:func:`load_run` builds its tables from :meth:`bench.run_dir.RunDir.tables` (the cell records
of a format-2 directory, the CSVs of a format-1 one; typed, in suite order), so it reads
exactly what ``bench report`` reads and nothing here parses a CSV; the summary is derived
the way the report derives ``summary.csv`` (:func:`bench.aggregate.summarize` and the flags
of :mod:`bench.flags`). :func:`run` is ``bench run`` without the command line: the same
suite, resume and run directory, with errors raised (:class:`~bench.errors.BenchError` for
bad input, :class:`~bench.suite.SuiteInterrupted` on Ctrl-C) instead of exit statuses.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from bench.run_dir import (
    CELL_COLUMNS,
    HISTORY_COLUMNS,
    PER_IMAGE_COLUMNS,
    RunDir,
    metric_classes_of,
    summary_columns,
)

if TYPE_CHECKING:
    from bench.config import RunConfig

__all__ = ["Run", "command_line", "load_run", "run"]

# Integer columns of the tables, as pandas' nullable Int64: a fold is an integer, or
# missing for a fixed-split protocol (a float64 column would turn fold 0 into 0.0).
_INTEGER_COLUMNS = ("seed", "fold", "epoch", "params", "epochs", "batch_size", "runs", "seeds")
_INTEGER_COLUMNS += ("images", "tp", "fp", "fn", "tn")


@dataclass(frozen=True)
class Run:
    """One run directory as DataFrames.

    ``cells``: one row per (architecture, seed, fold) with status, timings and final losses
    (``cells.csv``). ``history``: per epoch and split (``history.csv``). ``per_image``: per test
    image and class, scores and confusion counts (``per_image.csv``). ``summary``: per
    architecture, mean ± SEM over test images and the flags (``summary.csv``, derived anew).
    ``config``: the whole ``config.json`` (resolved settings under ``"config"``, then
    ``"dataset"``, ``"protocol"``, ``"environment"``, ``"command"``). ``run_dir``: the
    directory's layout (``run_dir.checkpoint_path(...)``, ``run_dir.prediction_path(...)``).
    """

    path: Path
    config: dict[str, Any]
    cells: pd.DataFrame
    history: pd.DataFrame
    per_image: pd.DataFrame
    summary: pd.DataFrame
    run_dir: RunDir

    @property
    def architectures(self) -> list[str]:
        """The architectures of the run, in suite order."""
        return list(dict.fromkeys(self.cells["architecture"]))

    def checkpoint(self, architecture: str, seed: int = 0, fold: int | None = 0) -> Path:
        """The final checkpoint of a cell, for ``bench predict`` (fold None: fixed split)."""
        return self.run_dir.checkpoint_path(architecture, seed, fold)


def _frame(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> pd.DataFrame:
    """Rows as a DataFrame with ``columns`` first (then any extra keys, e.g. a cell's
    ``lr_search``), integers as nullable Int64 and missing values as NA/NaN."""
    extra = list(dict.fromkeys(k for row in rows for k in row if k not in columns))
    frame = pd.DataFrame(list(rows), columns=[*columns, *extra])
    for column in _INTEGER_COLUMNS:
        if column in frame.columns:
            frame[column] = frame[column].astype("Int64")
    return frame


def load_run(path: str | os.PathLike[str]) -> Run:
    """Read a run directory (format 1 or 2) into a :class:`Run`.

    A path that is not a run directory, or a damaged record or table, is a
    :class:`~bench.errors.ConfigError` naming the file (as for ``bench report``). Nothing is
    written: unlike ``bench report`` this never rewrites the CSVs.
    """
    from bench.aggregate import flagged_summary

    run_dir = RunDir(path)
    meta = run_dir.read_meta()
    tables = run_dir.tables(meta)
    summary, _ = flagged_summary(meta, tables)
    return Run(
        path=run_dir.path,
        config=meta,
        cells=_frame(tables.cells, CELL_COLUMNS),
        history=_frame(tables.history, HISTORY_COLUMNS),
        per_image=_frame(tables.per_image, PER_IMAGE_COLUMNS),
        summary=_frame(summary, summary_columns(metric_classes_of(meta))),
        run_dir=run_dir,
    )


def command_line(config: RunConfig) -> list[str]:
    """``bench run`` arguments that give ``config``: the command a run started from Python
    records in its config.json (and its report shows), so that it can be rerun from a shell.

    Only what differs from the defaults is written. Each flag is the field's own
    (``bench.config.option``'s metadata: ``--plugin`` for ``plugins``, ``--no-...``
    switches, positional architectures); the TOML file a config was read from is left out,
    since its values are in the config already.
    """
    argv = ["run"]
    options: list[str] = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        meta = f.metadata
        if f.name == "config" or value == f.default:
            continue
        if meta.get("positional", f.name == "architectures"):
            argv += [str(v) for v in value] if isinstance(value, tuple) else [str(value)]
            continue
        flag = meta.get("flag") or "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            # a switch: present when it is on, or when a --no-... switch turns something off
            if value != flag.startswith("--no-"):
                options.append(flag)
        elif isinstance(value, tuple):
            if meta.get("action") == "append" or f.name == "plugins":
                for item in value:
                    options += [flag, str(item)]
            else:
                options += [flag, *map(str, value)]
        elif value is not None:
            options += [flag, str(value)]
    return argv + options


def run(config: RunConfig, argv: list[str] | None = None) -> Run:
    """Run a suite as ``bench run`` does, and return its run directory as a :class:`Run`.

    This is the way to run a suite from a notebook: the same cells, run directory, resume
    (call it again with the same ``config.out`` to finish an interrupted run) and report as
    the command line, with no exit statuses to decode. Bad input raises
    :class:`~bench.errors.BenchError`; a Ctrl-C (or SIGTERM) raises
    :class:`~bench.suite.SuiteInterrupted` once the finished cells are written; a failed
    cell does not raise (it is ``status == "failed"`` in ``cells``, as in ``cells.csv``).

    ``argv``: the ``bench`` arguments recorded in config.json as the command that made the
    run. By default the ``bench run`` arguments equivalent to ``config``
    (:func:`command_line`), since a notebook's own ``sys.argv`` is the kernel's.
    ``config`` is validated as the command line validates its flags.
    """
    from bench.config import validate
    from bench.suite import run_suite

    validate(config)
    outcome = run_suite(config, argv=command_line(config) if argv is None else list(argv))
    return load_run(outcome.out_dir)
