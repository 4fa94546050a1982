"""Combine run directories into one comparison, so adding a model costs only its own cells.

``bench combine RUN... --out DIR`` checks that the runs are comparable — the same dataset
(classes, palette, image count), protocol and split, seeds and folds, and every training
setting — and refuses with the exact differing keys when they are not. The combined
directory is a run directory like any other: every cell record is copied with its
``source`` (the run it came from, and that run's commit, machine and versions), with the
test images' ground truth, inputs and each architecture's predicted masks, and
``bench report`` renders it (tables, statistics, figures). Checkpoints stay in their
source runs. An architecture in two runs is refused: which one would count is not ours
to choose. A combined directory is never resumed or trained into; it is rebuilt by
running the same ``bench combine`` again.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.compare import setting_differences
from bench.config import PLACEMENT_KEYS
from bench.errors import ConfigError
from bench.run_dir import FORMAT_VERSION, CellRecord, RunDir

#: Keys of the resolved configuration that do not have to match: where and how cells ran
#: (placement, not method), what was trained (the point of combining), and the smp encoder
#: (recorded per architecture in config.json's ``architectures``).
NOT_COMPARED = PLACEMENT_KEYS | {
    "architectures",
    "all",
    "plugins",
    "encoder",
    "encoder_weights",
    "threads",
    "data_dir",
}
PROTOCOL_KEYS = ("name", "train_images", "test_images", "input_size", "leaked_test_images")
DATASET_KEYS = ("name", "images", "class_names", "palette")


def differences(first: Mapping[str, Any], other: Mapping[str, Any]) -> list[str]:
    """``key: a -> b`` for each setting in which two runs' config.json differ."""
    parts = {"dataset": DATASET_KEYS, "protocol": PROTOCOL_KEYS}
    return setting_differences(first, other, NOT_COMPARED, parts, arrow="->")


def provenance(run: RunDir, meta: Mapping[str, Any]) -> dict[str, Any]:
    env = meta["environment"]
    return {
        "run": str(run.path),
        "command": meta.get("command"),
        **{k: env.get(k) for k in ("git_commit", "device_name", "cpu_model", "torch", "bench")},
    }


def combine_runs(sources: Sequence[str], out: str, argv: Sequence[str]) -> Path:
    """Write the combined run directory ``out`` from ``sources``; return its path."""
    if len(sources) < 2:
        raise ConfigError("bench combine needs at least two run directories")
    runs = [RunDir(path) for path in sources]
    metas = []
    for run in runs:
        if not run.is_run():
            raise ConfigError(f"{run.path}: not a run directory (no config.json)")
        meta = run.read_meta()
        if meta["format_version"] != FORMAT_VERSION:
            raise ConfigError(
                f"{run.path}: format {meta['format_version']} has no cell records to combine"
            )
        if not meta.get("finished_utc"):
            raise ConfigError(f"{run.path}: unfinished; resume it with its command first")
        metas.append(meta)
    for run, meta in zip(runs[1:], metas[1:], strict=True):
        found = differences(metas[0], meta)
        if found:
            raise ConfigError(
                f"{run.path} is not comparable with {runs[0].path}: {'; '.join(found)}"
            )
    owner: dict[str, Path] = {}
    for run, meta in zip(runs, metas, strict=True):
        for name in meta["config"]["architectures"]:
            if name in owner:
                raise ConfigError(
                    f"architecture {name!r} is in both {owner[name]} and {run.path}; "
                    "combine runs of different architectures"
                )
            owner[name] = run.path
    final = Path(out)
    if final.exists() and (not final.is_dir() or any(final.iterdir())):
        raise ConfigError(
            f"--out {final}: exists and is not empty; bench combine writes a new folder"
        )
    # Built beside its destination and renamed into place: a kill leaves no half-combined run.
    final.parent.mkdir(parents=True, exist_ok=True)
    target = RunDir(
        tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".combining", dir=final.parent)
    )
    try:
        _fill(target, runs, metas, argv)
        os.replace(target.path, final)
    except BaseException:
        shutil.rmtree(target.path, ignore_errors=True)
        raise
    return RunDir(final).report_path


def _fill(
    target: RunDir, runs: Sequence[RunDir], metas: Sequence[Mapping[str, Any]], argv: Sequence[str]
) -> None:
    """Copy the sources' records, test images and predictions; render the report."""
    meta = json.loads(json.dumps(metas[0]))
    meta["command"] = "bench " + " ".join(argv)
    meta["config"]["architectures"] = [n for m in metas for n in m["config"]["architectures"]]
    meta["config"]["plugins"] = sorted({p for m in metas for p in m["config"]["plugins"]})
    meta["architectures"] = {
        name: info for m in metas for name, info in (m.get("architectures") or {}).items()
    }
    meta["combined_from"] = [provenance(run, m) for run, m in zip(runs, metas, strict=True)]
    starts = [m["started_utc"] for m in metas]
    ends = [m.get("finished_utc") for m in metas]
    meta["started_utc"] = min(starts)
    meta["finished_utc"] = None if None in ends else max(ends)
    records: list[CellRecord] = []
    for run, m in zip(runs, metas, strict=True):
        _, problems = run.load_records()
        if problems:
            raise ConfigError(f"{run.path}: {problems[0]}")
        source = provenance(run, m)
        for record in run.ordered_records(m).values():
            record.source = record.source or source
            records.append(record)
        for folder in ("truth", "inputs"):
            if (run.path / folder).is_dir():
                shutil.copytree(run.path / folder, target.path / folder, dirs_exist_ok=True)
        for name in m["config"]["architectures"]:
            predictions = run.path / "predictions" / name
            if predictions.is_dir():
                shutil.copytree(predictions, target.path / "predictions" / name)
    for record in records:
        target.commit_cell(record)
    target.write_meta(meta)
    from bench.report import render_locked

    render_locked(target, meta)
