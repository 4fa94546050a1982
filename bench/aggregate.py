"""Aggregation of a run's rows into the per-architecture summary (pure: rows in, rows out).

The unit of analysis is the test image: an image's score is first averaged over the
training seeds that ran, then the mean ± SEM is taken over images (each (fold, image) once).
More seeds make each image's score more precise; they do not make the SEM over images
shrink as if they were more images.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from bench.flags import architecture_flags
from bench.metrics import mean_sem
from bench.run_dir import RUN_MEASURES, RunTables, metric_classes_of, summary_columns
from bench.stats import primary_classes


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _mean(values: Iterable[Any]) -> float | None:
    array = np.asarray([_float(v) for v in values], dtype=float)
    array = array[~np.isnan(array)]
    return float(array.mean()) if array.size else None


def _none_if_nan(value: float) -> float | None:
    return None if np.isnan(value) else value


def seed_averaged(rows: Sequence[Mapping[str, Any]], metric: str) -> dict[tuple[str, str], float]:
    """``{(fold, image_id): value}``: one image's ``metric`` averaged over its seeds."""
    by_image: dict[tuple[str, str], list[float]] = {}
    for row in rows:
        by_image.setdefault((str(row["fold"]), str(row["image_id"])), []).append(
            _float(row[metric])
        )
    return {key: float(np.nanmean(values)) for key, values in by_image.items()}


def summarize(
    cells: Sequence[Mapping[str, Any]],
    per_image: Sequence[Mapping[str, Any]],
    metric_classes: Sequence[str],
) -> list[dict[str, Any]]:
    """One row per architecture, in the order the architectures first appear in ``cells``.

    Timings, memory and final losses are the mean over the architecture's successful runs
    (seeds × folds). Jaccard/Dice per class of ``metric_classes`` are the mean ± SEM over
    test images of each image's seed-averaged score (``images`` says how many). An
    architecture with any failed run is ``failed`` and carries the first error; its metrics
    still summarise the runs that finished.
    """
    order: list[str] = []
    for cell in cells:
        if cell["architecture"] not in order:
            order.append(cell["architecture"])
    columns = summary_columns(metric_classes)
    rows = []
    for name in order:
        mine = [c for c in cells if c["architecture"] == name]
        ok = [c for c in mine if c["status"] == "ok"]
        failed = [c for c in mine if c["status"] != "ok"]
        images = [r for r in per_image if r["architecture"] == name]
        row: dict[str, Any] = {
            "architecture": name,
            "status": "failed" if failed else "ok",
            "error": failed[0]["error"] if failed else "",
            "runs": len(mine),
            "seeds": len({c["seed"] for c in ok}),
            "images": len({(str(r["fold"]), str(r["image_id"])) for r in images}),
            "params": next((c["params"] for c in mine if c.get("params") not in (None, "")), None),
            "gflops": next((c["gflops"] for c in mine if c.get("gflops") not in (None, "")), None),
            "lr": _mean(c.get("lr") for c in ok),
        }
        for key in RUN_MEASURES:
            row[key] = _mean(c.get(key) for c in ok)
        for class_name in metric_classes:
            of_class = [r for r in images if r["class"] == class_name]
            for metric in ("jaccard", "dice"):
                mean, sem = mean_sem(seed_averaged(of_class, metric).values())
                row[f"{class_name}_{metric}_mean"] = _none_if_nan(mean)
                row[f"{class_name}_{metric}_sem"] = _none_if_nan(sem)
            legacy = _mean(seed_averaged(of_class, "jaccard_legacy").values())
            row[f"{class_name}_jaccard_legacy_mean"] = legacy
        rows.append({column: row.get(column) for column in columns})
    return rows


def flagged_summary(
    meta: Mapping[str, Any], tables: RunTables
) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
    """A run's summary (:func:`summarize` over its metric classes) with each row's ``flags``
    filled in, and those flags by architecture (:func:`bench.flags.architecture_flags`,
    judged on the primary classes against the run's epoch budget)."""
    primary = primary_classes(meta["dataset"]["class_names"])
    flagged = architecture_flags(
        tables.cells, tables.history, tables.per_image, primary, meta["config"].get("epochs")
    )
    summary = summarize(tables.cells, tables.per_image, metric_classes_of(meta))
    for row in summary:
        row["flags"] = "; ".join(flagged.get(row["architecture"], []))
    return summary, flagged
