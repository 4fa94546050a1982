"""Where a ``bench run`` suite's time went: per architecture, train / evaluate / write.

    .venv/bin/python benchmarks/suite_cost.py RUN_DIR [--json FILE]

Reads a finished run directory, never trains. Per architecture, summed over its cells:

* **train**: the history's train rows' ``seconds`` (the timed training epochs);
* **evaluate**: the history's test rows' ``seconds`` (the test pass after every epoch);
* **validate**: the history's validation rows' ``seconds`` (early stopping's pass over the
  validation split after every epoch; 0 without a validation split);
* **other in the cell**: the cell's ``total_seconds`` minus those three (building the
  model, counting its FLOPs, the epoch checkpoints, the final per-image scoring);
* **write**: the cell's predictions and checkpoint (``write_seconds`` in its record), plus
  the writes after its record (the record, the derived CSVs, ``--track``'s file; in
  ``timing.json``). A cell written before these were timed counts as "not measured".

Then the suite: its wall time from ``config.json`` (``started_utc`` to ``finished_utc``, to
the second; the final report is rendered after ``finished_utc`` and timed on its own),
and what the cells do not account for (loading the data, writing the test images).
Prints the table as Markdown; ``--json`` also writes the numbers as a record that
``benchmarks/render_performance.py`` renders.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

from bench import environment
from bench.run_dir import RunDir, cell_stem

PHASES = ("train", "evaluate", "validate", "other", "write")
PHASE_LABELS = {
    "train": "train",
    "evaluate": "evaluate",
    "validate": "validate",
    "other": "other in the cell",
    "write": "write",
}


def _utc(text: str | None) -> dt.datetime | None:
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ") if text else None


def _empty_row(name: str) -> dict[str, Any]:
    return {"architecture": name, "cells": 0, "write_unmeasured": 0, **dict.fromkeys(PHASES, 0.0)}


def suite_cost(run_dir: Path) -> dict[str, Any]:
    """The seconds of every phase per architecture, and the suite's wall time (JSON-able)."""
    run = RunDir(run_dir)
    meta = run.read_meta()
    records, problems = run.load_records()
    timing = run.read_timing()
    after_record = timing["after_record_seconds"]
    rows = {name: _empty_row(name) for name in meta["config"]["architectures"]}
    for key, record in records.items():
        row = rows.setdefault(key[0], _empty_row(key[0]))
        train = sum(h["seconds"] or 0.0 for h in record.history if h["split"] == "train")
        evaluate = sum(h["seconds"] or 0.0 for h in record.history if h["split"] == "test")
        validate = sum(h["seconds"] or 0.0 for h in record.history if h["split"] == "validation")
        row["cells"] += 1
        row["train"] += train
        row["evaluate"] += evaluate
        row["validate"] += validate
        in_cell = (record.row["total_seconds"] or 0.0) - train - evaluate - validate
        row["other"] += max(0.0, in_cell)
        outputs = record.row.get("write_seconds")
        after = after_record.get(cell_stem(*key))
        if outputs is None or after is None:
            row["write_unmeasured"] += 1
        row["write"] += (outputs or 0.0) + (after or 0.0)
    for row in rows.values():
        row["total"] = sum(row[phase] for phase in PHASES)
        row["shares"] = {
            phase: row[phase] / row["total"] if row["total"] else None for phase in PHASES
        }
    started, finished = _utc(meta.get("started_utc")), _utc(meta.get("finished_utc"))
    wall = (finished - started).total_seconds() if started and finished else None
    in_cells = sum(row["total"] for row in rows.values())
    return {
        "run_dir": str(run_dir),
        "command": meta.get("command"),
        "started_utc": meta.get("started_utc"),
        "finished_utc": meta.get("finished_utc"),
        "resumed": bool(meta.get("resumed_utc")),
        "wall_seconds": wall,
        "report_seconds": timing["report_seconds"],
        "cells_seconds": in_cells,
        "outside_cells_seconds": wall - in_cells if wall is not None else None,
        "architectures": list(rows.values()),
        "unreadable_records": problems,
        "environment": meta.get("environment", {}),
        "measured_by": environment.git_commit(),
    }


def _seconds(value: float | None) -> str:
    return "not measured" if value is None else f"{value:.1f}"


def _share(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.0f} %"


def render_cost(cost: dict[str, Any]) -> list[str]:
    """The cost table (Markdown lines) of one :func:`suite_cost` result."""
    header = " | ".join(f"{PHASE_LABELS[p]} s" for p in PHASES)
    shares = " | ".join(f"{PHASE_LABELS[p]} share" for p in PHASES)
    lines = [
        f"| architecture | cells | {header} | total s | {shares} |",
        "|---|---|" + "---|" * (2 * len(PHASES) + 1),
    ]
    for row in cost["architectures"]:
        write = f"{row['write']:.1f}"
        if row["write_unmeasured"]:
            write += f" ({row['write_unmeasured']} cell(s) not measured)"
        # Records made before a phase was timed apart lack it (0: counted in "other").
        seconds = [f"{row.get(p, 0.0):.1f}" for p in PHASES[:-1]] + [write]
        shares = " | ".join(_share(row["shares"].get(p, 0.0)) for p in PHASES)
        lines.append(
            f"| `{row['architecture']}` | {row['cells']} | {' | '.join(seconds)} | "
            f"{row['total']:.1f} | {shares} |"
        )
    wall = cost["wall_seconds"]
    lines += [
        "",
        f"Suite wall time (config.json, started to finished, whole seconds): "
        f"{_seconds(wall)} s, of which the cells above {cost['cells_seconds']:.1f} s and the "
        f"rest (loading the data, writing the test images and inputs) "
        f"{_seconds(cost['outside_cells_seconds'])} s; then the final report and figures "
        f"{_seconds(cost['report_seconds'])} s."
        + (
            " The run was resumed: its wall time includes the time between invocations."
            if cost["resumed"]
            else ""
        ),
    ]
    if cost["unreadable_records"]:
        lines.append(f"Unreadable cell records, not counted: {len(cost['unreadable_records'])}.")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a finished bench run directory")
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    parser.add_argument("--note", help="kept in the record, e.g. what else ran meanwhile")
    args = parser.parse_args(argv)
    cost = suite_cost(args.run_dir)
    cost["note"] = args.note
    print("\n".join(render_cost(cost)))
    if args.json:
        args.json.write_text(json.dumps(cost, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
