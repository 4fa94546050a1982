"""Aggregation of a run's rows into the per-architecture summary (pure: rows in, rows out)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from bench.metrics import mean_sem
from bench.results import METRIC_CLASS_NAMES, RUN_MEASURES


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _mean(values: Iterable[Any]) -> float | None:
    array = np.asarray([_float(v) for v in values], dtype=float)
    array = array[~np.isnan(array)]
    return float(array.mean()) if array.size else None


def summarize(
    cells: Sequence[Mapping[str, Any]], per_image: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """One row per architecture, in the order the architectures first appear in ``cells``.

    Timings, memory and final losses are the mean over the architecture's successful runs
    (seeds × folds); Jaccard/Dice are the mean ± SEM over every test image of every
    successful run, pooled. An architecture with any failed run is ``failed`` and carries
    the first error; its metrics still summarise the runs that finished.
    """
    order: list[str] = []
    for cell in cells:
        if cell["architecture"] not in order:
            order.append(cell["architecture"])
    rows = []
    for name in order:
        mine = [c for c in cells if c["architecture"] == name]
        ok = [c for c in mine if c["status"] == "ok"]
        failed = [c for c in mine if c["status"] != "ok"]
        row: dict[str, Any] = {
            "architecture": name,
            "status": "failed" if failed else "ok",
            "error": failed[0]["error"] if failed else "",
            "runs": len(mine),
            "params": next((c["params"] for c in mine if c.get("params") not in (None, "")), None),
            "gflops": next((c["gflops"] for c in mine if c.get("gflops") not in (None, "")), None),
        }
        for key in RUN_MEASURES:
            row[key] = _mean(c.get(key) for c in ok)
        images = [r for r in per_image if r["architecture"] == name]
        for class_name in METRIC_CLASS_NAMES:
            of_class = [r for r in images if r["class"] == class_name]
            for metric in ("jaccard", "dice"):
                mean, sem = mean_sem(_float(r[metric]) for r in of_class)
                row[f"{class_name}_{metric}_mean"] = None if np.isnan(mean) else mean
                row[f"{class_name}_{metric}_sem"] = None if np.isnan(sem) else sem
            legacy = _mean(r["jaccard_legacy"] for r in of_class)
            row[f"{class_name}_jaccard_legacy_mean"] = legacy
        rows.append(row)
    return rows
