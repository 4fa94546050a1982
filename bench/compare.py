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
  with a seeded bootstrap 95 % CI and a Wilcoxon signed-rank p-value.

It works for any two runs that share test images and architectures (another protocol, a
recipe, a speed option) and lists the configuration keys in which the runs differ, so a
reader sees what was changed. Pure functions over the runs' rows; nothing is trained.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

from bench import stats
from bench.atomic import atomic_write_text
from bench.config import PLACEMENT_KEYS
from bench.errors import ConfigError
from bench.flags import architecture_flags
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
)


def seed_means(
    per_image: Sequence[Mapping[str, Any]], classes: Sequence[str], images: set[tuple[str, str]]
) -> dict[str, dict[int, float]]:
    """``{architecture: {seed: mean foreground Dice over ``images``}}``."""
    values: dict[str, dict[int, dict[tuple[str, str], list[float]]]] = {}
    for row in per_image:
        key = (str(row["fold"]), str(row["image_id"]))
        if row["class"] not in classes or key not in images:
            continue
        by_image = values.setdefault(row["architecture"], {}).setdefault(int(row["seed"]), {})
        by_image.setdefault(key, []).append(float(row["dice"]))
    return {
        name: {
            seed: float(np.mean([np.mean(v) for v in by_image.values()]))
            for seed, by_image in seeds.items()
        }
        for name, seeds in values.items()
    }


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
        first_seeds = seed_means(first.per_image, classes, images).get(name, {})
        second_seeds = seed_means(second.per_image, classes, images).get(name, {})
        seeds = sorted(set(first_seeds) & set(second_seeds))
        by_seed = [second_seeds[s] - first_seeds[s] for s in seeds]
        interval = t_interval(by_seed)
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
            }
        )
    return rows


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


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "—"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def _p_text(value: float | None) -> str:
    """A p-value as the report prints it: below four decimals, "< 0.0001", not "0.0000"."""
    if value is None:
        return "—"
    return "< 0.0001" if value < 1e-4 else f"{value:.4f}"


def compare_runs(first_dir: str, second_dir: str) -> tuple[str, list[dict[str, Any]]]:
    """The Markdown comparison of two run directories and its rows."""
    first_run, second_run = RunDir(first_dir), RunDir(second_dir)
    first_meta, second_meta = first_run.read_meta(), second_run.read_meta()
    names = first_meta["dataset"]["class_names"]
    if second_meta["dataset"]["class_names"] != names:
        raise ConfigError(
            f"{second_dir}: classes {second_meta['dataset']['class_names']} differ from "
            f"{first_dir}'s {names}: the runs score different things"
        )
    classes = stats.primary_classes(names)
    rows = compare_tables(first_run.tables(first_meta), second_run.tables(second_meta), classes)
    if not rows:
        raise ConfigError(
            f"{first_dir} and {second_dir} have no architecture scored on the same test images"
        )
    first_label = f"`{first_meta['protocol']['name']}` ({first_dir})"
    second_label = f"`{second_meta['protocol']['name']}` ({second_dir})"
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
        f"{stats.BOOTSTRAP_SEED}) and Wilcoxon signed-rank p (two-sided).",
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
        low, high = row["seed_ci_low"], row["seed_ci_high"]
        if low is None:
            verdict = "one seed: the change cannot be told from seed noise"
        elif low > 0 or high < 0:
            direction = "rose" if low > 0 else "fell"
            verdict = f"the endpoint {direction}: the 95 % CI over seeds excludes zero"
        else:
            verdict = "no change beyond seed noise: the 95 % CI over seeds includes zero"
        out.append(
            f"- `{row['architecture']}`: {_fmt(row['first_mean'])} → "
            f"{_fmt(row['second_mean'])} ({_fmt(row['seed_mean_difference'], True)}); {verdict}."
        )
    flag_lines = []
    for label, meta, run in (
        (first_label, first_meta, first_run),
        (second_label, second_meta, second_run),
    ):
        tables = run.tables(meta)
        for name, reasons in architecture_flags(
            tables.cells, tables.history, tables.per_image, classes, meta["config"].get("epochs")
        ).items():
            flag_lines.append(f"- ⚠ `{name}` in {label}: {'; '.join(reasons)}.")
    if flag_lines:
        out += [
            "",
            "Flags (as in each run's report: a flagged run's numbers describe its training "
            "budget, so a change between flagged runs is a change at that budget):",
            "",
            *flag_lines,
        ]
    return "\n".join(out) + "\n", rows


def write_comparison(out_dir: str, markdown: str, rows: list[dict[str, Any]]) -> Path:
    """``comparison.md`` and ``comparison.csv`` in ``out_dir``, a new folder or one holding
    only an earlier comparison."""
    folder = Path(out_dir)
    ours = {"comparison.md", "comparison.csv"}
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
    atomic_write_text(folder / "comparison.md", markdown)
    return folder / "comparison.md"
