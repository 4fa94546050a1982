"""What changed between two runs of the same architectures on the same test images.

The question it answers first: what did the thesis's leak change? ``bench compare
RUN_THESIS RUN_NOLEAK`` takes a ``thesis`` run and a ``thesis-noleak`` run (same 30 test
images; only the augmented twins of those images in training differ) and states, per
architecture, the change of the primary endpoint (foreground Dice) from the first run to
the second:

- over seeds: for each training seed that both runs trained, the run's mean foreground
  Dice over the test images; the mean of the per-seed differences with a 95 % t confidence
  interval (n = seeds; none with a single seed);
- over images: each image's seed-averaged score, paired by image; the median difference
  with a seeded bootstrap 95 % CI and a Wilcoxon signed-rank p-value;
- over training runs, for runs over several folds: each (seed, fold) cell's mean over its
  test images, paired by cell; the mean difference with a 95 % t CI (n = seeds × folds).
  Each cell is a training run of its own, so with 2 seeds and 5 folds this CI has 9
  degrees of freedom where the one over seeds has 1.

It works for any two runs that share test images and architectures (another protocol, a
recipe, a speed option) and lists the configuration keys in which the runs differ, so a
reader sees what was changed. Pure functions over the runs' rows; nothing is trained.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Collection, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

from bench import report, stats
from bench.aggregate import flagged_summary
from bench.atomic import atomic_write_text
from bench.config import PLACEMENT_KEYS
from bench.errors import ConfigError
from bench.report import device_name, invocation_environments
from bench.run_dir import RunDir, RunTables, write_csv

COMPARISON_COLUMNS = (
    "architecture",
    "seeds",
    "images",
    "first_mean",
    "second_mean",
    "seed_mean_difference",
    "seed_ci_low",
    "seed_ci_high",
    "image_median_difference",
    "image_ci_low",
    "image_ci_high",
    "image_p_value",
    "cells",
    "cell_mean_difference",
    "cell_ci_low",
    "cell_ci_high",
)

COST_COLUMNS = (
    "architecture",
    "cells",
    "first_epochs",
    "second_epochs",
    "first_train_seconds",
    "second_train_seconds",
    "first_images_per_second",
    "second_images_per_second",
    "train_time_ratio",
)


def run_means(
    per_image: Sequence[Mapping[str, Any]],
    classes: Sequence[str],
    images: set[tuple[str, str]],
    unit: Callable[[Mapping[str, Any]], Hashable],
) -> dict[str, dict[Any, float]]:
    """``{architecture: {unit: mean foreground Dice over ``images``}}``, where ``unit(row)``
    names what a row's run is counted by (its seed, or its (seed, fold) cell)."""
    values: dict[str, dict[Any, dict[tuple[str, str], list[float]]]] = {}
    for row in per_image:
        key = (str(row["fold"]), str(row["image_id"]))
        if row["class"] not in classes or key not in images:
            continue
        by_image = values.setdefault(row["architecture"], {}).setdefault(unit(row), {})
        by_image.setdefault(key, []).append(float(row["dice"]))
    return {
        name: {
            group: float(np.mean([np.mean(v) for v in by_image.values()]))
            for group, by_image in groups.items()
        }
        for name, groups in values.items()
    }


def seed_of(row: Mapping[str, Any]) -> int:
    return int(row["seed"])


def cell_of(row: Mapping[str, Any]) -> tuple[int, str]:
    """One training run: its seed and fold."""
    return int(row["seed"]), str(row["fold"])


def t_interval(differences: Sequence[float], level: float = 0.95) -> tuple[float, float] | None:
    """The t confidence interval of the mean of ``differences``; None for fewer than two."""
    n = len(differences)
    if n < 2:
        return None
    mean = float(np.mean(differences))
    half = (
        float(scipy_stats.t.ppf((1 + level) / 2, n - 1))
        * float(np.std(differences, ddof=1))
        / math.sqrt(n)
    )
    return mean - half, mean + half


def compare_tables(
    first: RunTables, second: RunTables, classes: Sequence[str]
) -> list[dict[str, Any]]:
    """One row per architecture of both runs: the change from ``first`` to ``second``."""
    first_scores = stats.image_scores(first.per_image, "dice", classes)
    second_scores = stats.image_scores(second.per_image, "dice", classes)
    rows = []
    for name in first_scores:
        if name not in second_scores:
            continue
        images = set(first_scores[name]) & set(second_scores[name])
        if not images:
            continue
        first_seeds = run_means(first.per_image, classes, images, seed_of).get(name, {})
        second_seeds = run_means(second.per_image, classes, images, seed_of).get(name, {})
        seeds = sorted(set(first_seeds) & set(second_seeds))
        by_seed = [second_seeds[s] - first_seeds[s] for s in seeds]
        interval = t_interval(by_seed)
        # With folds, each (seed, fold) pair is a training run of its own: n = seeds × folds
        first_cells = run_means(first.per_image, classes, images, cell_of).get(name, {})
        second_cells = run_means(second.per_image, classes, images, cell_of).get(name, {})
        cells = sorted(set(first_cells) & set(second_cells))
        by_cell = [second_cells[c] - first_cells[c] for c in cells]
        cell_interval = t_interval(by_cell)
        keys = sorted(images)
        by_image = np.array([second_scores[name][k] - first_scores[name][k] for k in keys])
        low, high = stats.bootstrap_median_ci(by_image)
        rows.append(
            {
                "architecture": name,
                "seeds": len(seeds),
                "images": len(keys),
                "first_mean": float(np.mean([first_scores[name][k] for k in keys])),
                "second_mean": float(np.mean([second_scores[name][k] for k in keys])),
                "seed_mean_difference": float(np.mean(by_seed)) if by_seed else None,
                "seed_ci_low": interval[0] if interval else None,
                "seed_ci_high": interval[1] if interval else None,
                "image_median_difference": float(np.median(by_image)),
                "image_ci_low": low,
                "image_ci_high": high,
                "image_p_value": stats.wilcoxon_p(by_image),
                "cells": len(cells),
                "cell_mean_difference": float(np.mean(by_cell)) if by_cell else None,
                "cell_ci_low": cell_interval[0] if cell_interval else None,
                "cell_ci_high": cell_interval[1] if cell_interval else None,
            }
        )
    return rows


def cost_tables(
    first_cells: Sequence[Mapping[str, Any]], second_cells: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """One row per architecture that both runs trained: over the (seed, fold) cells both
    finished, the mean epochs, training seconds and training images/s per cell, and the
    ratio of the total training time (second / first). Cells that failed in either run are
    left out, so both sides count the same cells."""

    def finished(cells: Sequence[Mapping[str, Any]]) -> dict[tuple[str, Any, Any], Mapping]:
        return {
            (str(c["architecture"]), c["seed"], c["fold"]): c
            for c in cells
            if c.get("status") == "ok" and c.get("train_seconds") is not None
        }

    first, second = finished(first_cells), finished(second_cells)
    shared: dict[str, list[tuple[Any, Any]]] = {}
    for key in first:
        if key in second:
            shared.setdefault(key[0], []).append(key)

    def mean(run: Mapping, keys: list, column: str) -> float | None:
        values = [run[k][column] for k in keys if run[k].get(column) is not None]
        return float(np.mean(values)) if values else None

    rows = []
    for name, keys in shared.items():
        first_total = sum(float(first[k]["train_seconds"]) for k in keys)
        second_total = sum(float(second[k]["train_seconds"]) for k in keys)
        rows.append(
            {
                "architecture": name,
                "cells": len(keys),
                "first_epochs": mean(first, keys, "epochs"),
                "second_epochs": mean(second, keys, "epochs"),
                "first_train_seconds": first_total / len(keys),
                "second_train_seconds": second_total / len(keys),
                "first_images_per_second": mean(first, keys, "images_per_second"),
                "second_images_per_second": mean(second, keys, "images_per_second"),
                "train_time_ratio": second_total / first_total if first_total > 0 else None,
            }
        )
    return rows


def cost_section(
    rows: Sequence[Mapping[str, Any]], first_meta: Mapping, second_meta: Mapping
) -> list[str]:
    """The "Cost" part of a comparison: training time per architecture, and where the two
    runs were trained, so a reader knows whether the times can be set side by side."""
    machines = [
        sorted({device_name(env) for env in invocation_environments(dict(meta))})
        for meta in (first_meta, second_meta)
    ]
    if len(machines[0]) == 1 and machines[0] == machines[1]:
        where = (
            f"Both runs were trained on {machines[0][0]}, so their times compare directly "
            "(each cell is timed by the invocation that trained it)."
        )
    else:
        where = (
            f"The first run was trained on {'; '.join(machines[0])}, the second on "
            f"{'; '.join(machines[1])}: times from different machines differ by the "
            "machines as well as by the runs, so only the epochs compare directly."
        )
    out = [
        "",
        "## Cost",
        "",
        "Training time per cell (a cell is one architecture, seed and fold), over the cells "
        "both runs finished: mean epochs trained, mean training seconds, mean training "
        "images/s (training images × epochs / training seconds), and the ratio of the "
        "total training time, second / first. " + where,
        "",
        "| Architecture | Cells | Epochs (first → second) | Training s per cell (first → "
        "second) | Images/s (first → second) | Time ratio |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        ratio = row["train_time_ratio"]
        out.append(
            f"| {row['architecture']} | {row['cells']} | "
            f"{_fmt(row['first_epochs'], digits=1)} → {_fmt(row['second_epochs'], digits=1)} | "
            f"{_fmt(row['first_train_seconds'], digits=1)} → "
            f"{_fmt(row['second_train_seconds'], digits=1)} | "
            f"{_fmt(row['first_images_per_second'], digits=1)} → "
            f"{_fmt(row['second_images_per_second'], digits=1)} | "
            f"{'—' if ratio is None else f'{ratio:.2f}×'} |"
        )
    if not rows:
        out.append("| (no cell finished in both runs) | | | | | |")
    return out


def thesis_goal_section(
    runs: Sequence[tuple[str, Mapping[str, Any], list[dict[str, Any]]]],
    architectures: Sequence[str],
    reference: list[dict[str, str]],
) -> list[str]:
    """On the thesis's data under protocols that do not leak: each architecture's Dice per
    class in each run, held against the thesis's best published row (as each run's own
    report does), side by side. ``runs`` is ``(label, meta, summary)`` per run, the summary
    with its flags (:func:`bench.aggregate.flagged_summary`); empty where either run has no
    goal (other data, a thesis protocol)."""
    held = []
    for label, meta, summary in runs:
        goal = report.thesis_goal(dict(meta), summary, reference)
        if goal is None:
            return []
        held.append((label, goal[1]))
    goal_means = goal[0]
    out = [
        "",
        "## Against the thesis's published numbers",
        "",
        report.goal_introduction(goal_means)
        + " Each run's Dice per class and its difference from that row, as in each run's "
        "own report:",
        "",
        *[f"- {label}: {report.goal_headline(rows, 'in this run')}" for label, rows in held],
        "",
        "| Architecture | Run | Dice cytoplasm | − thesis "
        f"{goal_means['cytoplasm'][0]:.4f} (95 % CI) | Dice nucleus | − thesis "
        f"{goal_means['nucleus'][0]:.4f} (95 % CI) | Against the thesis |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for name in architectures:
        for label, rows in held:
            row = next((r for r in rows if r.architecture == name), None)
            if row is None:
                continue
            cells = [row.label, label]
            for cls in report.GOAL_CLASSES:
                cells += [
                    row.dice_text(cls),
                    report.goal_difference_text(row.differences.get(cls)),
                ]
            out.append("| " + " | ".join([*cells, row.verdict]) + " |")
    out += [
        "",
        report.GOAL_METHOD + " Every test image of each run counts (its means are those of "
        "its report); the published model was the full-width Keras U-Net trained on the "
        "leaky split.",
    ]
    return out


def run_labels(first: Mapping[str, Any], second: Mapping[str, Any]) -> tuple[str, str]:
    """How the comparison names each run: its protocol, and its training recipe when the
    two runs' recipes differ (two clean runs are told apart by their recipe)."""
    recipes = (first["config"].get("recipe"), second["config"].get("recipe"))

    def label(meta: Mapping[str, Any], recipe: Any) -> str:
        name = f"`{meta['protocol']['name']}`"
        return name + (f", recipe `{recipe}`" if recipes[0] != recipes[1] else "")

    return label(first, recipes[0]), label(second, recipes[1])


def setting_differences(
    first: Mapping[str, Any],
    second: Mapping[str, Any],
    ignored: Collection[str],
    parts: Mapping[str, Sequence[str]],
    arrow: str = "→",
) -> list[str]:
    """``key: old <arrow> new`` for every key of two config.json's ``config`` that differs
    (but ``ignored``), then ``part key: ...`` for the listed keys of other ``parts``
    (``{"protocol": ("train_images", ...)}``). Values are compared as JSON stores them."""
    a, b = _plain(first["config"]), _plain(second["config"])
    changes = [
        f"{key}: {a.get(key)!r} {arrow} {b.get(key)!r}"
        for key in sorted((set(a) | set(b)) - set(ignored))
        if a.get(key) != b.get(key)
    ]
    for part, keys in parts.items():
        for key in keys:
            old, new = _plain(first[part].get(key)), _plain(second[part].get(key))
            if old != new:
                changes.append(f"{part} {key}: {old!r} {arrow} {new!r}")
    return changes


def change_verdict(row: Mapping[str, Any]) -> str:
    """What a comparison row says about the change: over training runs (seed × fold) where
    the runs span several folds, else over seeds."""
    low, high = row["seed_ci_low"], row["seed_ci_high"]
    if row["cells"] > row["seeds"] and row["cell_ci_low"] is not None:
        # several folds: each (seed, fold) cell is a training run, the finer unit of noise
        c_low, c_high = row["cell_ci_low"], row["cell_ci_high"]
        runs = (
            f"the 95 % CI over its {row['cells']} training runs (seed × fold, paired), "
            f"[{_fmt(c_low, True)}, {_fmt(c_high, True)}]"
        )
        if low is None:
            seeds = "with one seed there is no CI over seeds"
        else:
            inside = "it does too" if low > 0 or high < 0 else "it does not"
            seeds = (
                f"over its {row['seeds']} seeds alone ([{_fmt(low, True)}, "
                f"{_fmt(high, True)}]) {inside}"
            )
        if c_low > 0 or c_high < 0:
            direction = "rose" if c_low > 0 else "fell"
            verdict = f"the endpoint {direction}: {runs}, excludes zero; {seeds}"
        else:
            verdict = f"no change beyond the noise of training runs: {runs}, includes zero"
    elif low is None:
        verdict = "one seed: the change cannot be told from seed noise"
    elif low > 0 or high < 0:
        direction = "rose" if low > 0 else "fell"
        verdict = f"the endpoint {direction}: the 95 % CI over seeds excludes zero"
    else:
        verdict = "no change beyond seed noise: the 95 % CI over seeds includes zero"
    return verdict


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _fmt(value: float | None, signed: bool = False, digits: int = 4) -> str:
    if value is None:
        return "—"
    return f"{value:+,.{digits}f}" if signed else f"{value:,.{digits}f}"


def _p_text(value: float | None) -> str:
    """A p-value as the report prints it: below four decimals, "< 0.0001", not "0.0000"."""
    if value is None:
        return "—"
    return "< 0.0001" if value < 1e-4 else f"{value:.4f}"


def compare_runs(
    first_dir: str, second_dir: str
) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]]]:
    """The Markdown comparison of two run directories, its accuracy rows and its cost
    rows."""
    first_run, second_run = RunDir(first_dir), RunDir(second_dir)
    first_meta, second_meta = first_run.read_meta(), second_run.read_meta()
    names = first_meta["dataset"]["class_names"]
    if second_meta["dataset"]["class_names"] != names:
        raise ConfigError(
            f"{second_dir}: classes {second_meta['dataset']['class_names']} differ from "
            f"{first_dir}'s {names}: the runs score different things"
        )
    classes = stats.primary_classes(names)
    first_tables, second_tables = first_run.tables(first_meta), second_run.tables(second_meta)
    rows = compare_tables(first_tables, second_tables, classes)
    if not rows:
        raise ConfigError(
            f"{first_dir} and {second_dir} have no architecture scored on the same test images"
        )
    first_name, second_name = run_labels(first_meta, second_meta)
    first_label, second_label = f"{first_name} ({first_dir})", f"{second_name} ({second_dir})"
    primary = " and ".join(", ".join(classes).rsplit(", ", 1))
    out = [
        f"# What changed from {first_label} to {second_label}",
        "",
        "Commands:",
        "",
        "```",
        first_meta["command"],
        second_meta["command"],
        "```",
        "",
        "Differences in configuration: "
        + (
            "; ".join(
                setting_differences(
                    first_meta,
                    second_meta,
                    PLACEMENT_KEYS,
                    {"protocol": ("train_images", "test_images", "leaked_test_images")},
                )
            )
            or "none"
        )
        + ".",
        "",
        f"Endpoint: per-image foreground Dice (mean Dice over {primary}), on the test images "
        "both runs scored. Over seeds: for each training seed both runs trained, the "
        "difference of the runs' mean endpoint (second − first), then the mean of these "
        "differences with a 95 % t confidence interval (n = seeds). Over images: each "
        "image's seed-averaged score, paired by image; median difference, percentile "
        f"bootstrap 95 % CI ({stats.BOOTSTRAP_RESAMPLES:,} resamples, seed "
        f"{stats.BOOTSTRAP_SEED}) and Wilcoxon signed-rank p (two-sided)."
        + (
            " Runs over several folds are also compared per training run: for each (seed, "
            "fold) cell both runs trained, the difference of the cell's mean endpoint over "
            "its test images, then their mean with a 95 % t CI (n = cells; in the lines "
            "under the table)."
            if any(row["cells"] > row["seeds"] for row in rows)
            else ""
        ),
        "",
        "| Architecture | Seeds | Images | First | Second | Δ over seeds [95 % CI] "
        "| Median Δ over images [95 % CI] | p (Wilcoxon) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        seed_ci = (
            f" [{_fmt(row['seed_ci_low'], True)}, {_fmt(row['seed_ci_high'], True)}]"
            if row["seed_ci_low"] is not None
            else " (one seed: no CI)"
        )
        out.append(
            f"| {row['architecture']} | {row['seeds']} | {row['images']} | "
            f"{_fmt(row['first_mean'])} | {_fmt(row['second_mean'])} | "
            f"{_fmt(row['seed_mean_difference'], True)}{seed_ci} | "
            f"{_fmt(row['image_median_difference'], True)} [{_fmt(row['image_ci_low'], True)}, "
            f"{_fmt(row['image_ci_high'], True)}] | {_p_text(row['image_p_value'])} |"
        )
    out.append("")
    for row in rows:
        verdict = change_verdict(row)
        out.append(
            f"- `{row['architecture']}`: {_fmt(row['first_mean'])} → "
            f"{_fmt(row['second_mean'])} ({_fmt(row['seed_mean_difference'], True)}); {verdict}."
        )
    first_summary, first_flags = flagged_summary(first_meta, first_tables)
    second_summary, second_flags = flagged_summary(second_meta, second_tables)
    flag_lines = [
        f"- ⚠ `{name}` in {label}: {'; '.join(reasons)}."
        for label, flagged in ((first_label, first_flags), (second_label, second_flags))
        for name, reasons in flagged.items()
    ]
    if flag_lines:
        out += [
            "",
            "Flags (as in each run's report: a flagged run's numbers describe its training "
            "budget, so a change between flagged runs is a change at that budget):",
            "",
            *flag_lines,
        ]
    # runs of the same protocol and recipe (a speed option, say) are told apart by order
    goal_names = (first_name, second_name) if first_name != second_name else ("first", "second")
    out += thesis_goal_section(
        ((goal_names[0], first_meta, first_summary), (goal_names[1], second_meta, second_summary)),
        [row["architecture"] for row in rows],
        report.load_thesis_reference(),
    )
    cost = cost_tables(first_tables.cells, second_tables.cells)
    out += cost_section(cost, first_meta, second_meta)
    return "\n".join(out) + "\n", rows, cost


def write_comparison(
    out_dir: str,
    markdown: str,
    rows: list[dict[str, Any]],
    cost: list[dict[str, Any]],
) -> Path:
    """``comparison.md``, ``comparison.csv`` (accuracy) and ``comparison_cost.csv`` in
    ``out_dir``, a new folder or one holding only an earlier comparison."""
    folder = Path(out_dir)
    ours = {"comparison.md", "comparison.csv", "comparison_cost.csv"}
    if folder.exists():
        if not folder.is_dir():
            raise ConfigError(f"--out {folder}: exists and is not a directory")
        foreign = sorted(p.name for p in folder.iterdir() if p.name not in ours)
        if foreign:
            raise ConfigError(
                f"--out {folder}: holds other files ({', '.join(foreign[:5])}); "
                "bench compare writes only into a new folder or an earlier comparison's"
            )
    write_csv(folder / "comparison.csv", COMPARISON_COLUMNS, rows)
    write_csv(folder / "comparison_cost.csv", COST_COLUMNS, cost)
    atomic_write_text(folder / "comparison.md", markdown)
    return folder / "comparison.md"
