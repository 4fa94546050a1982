"""Statistics for comparing architectures on the same test images (pure functions).

Primary endpoint: the per-image **foreground Dice**, the mean Dice over the dataset's
non-background classes (class index 0 is background; for WBC: cytoplasm and nucleus; the
WBC "whole cell" union is not part of it). Images are the unit of analysis: an image's
score is first averaged over the training seeds that ran, so each (fold, image) counts once
and architectures are paired on exactly the same images.

- Paired comparison of every architecture against the best one (highest mean score):
  Wilcoxon signed-rank test (two-sided, zero differences dropped) with Holm's correction
  across the comparisons, and the median paired difference with a seeded percentile
  bootstrap 95 % confidence interval (10,000 resamples of images).
- Ranking as challenge leaderboards do it: per test image, rank the architectures by score
  (1 = best, ties share the average rank), then average the ranks over images.
- Two levels of uncertainty, labelled apart: mean ± SEM over test images (of the
  seed-averaged scores; variation between images) and mean ± SEM over runs (one mean per
  seed × fold; variation between training runs).

Hand-written although a library has it (one reason each; timings on the shared 2-core CPU):

- :func:`bootstrap_median_ci`, not ``scipy.stats.bootstrap(method="percentile")``: scipy
  draws the same resamples (CIs identical on the committed reports' data, at most 7e-18 apart
  on random data) at the same speed (``benchmarks/test_stats_speed.py``, 10,000 resamples,
  medians: n=30 8.1 vs 8.7 ms, n=300 59 vs 58-62 ms), but refuses a single paired image and
  renamed its seed argument within our ``scipy>=1.10`` (``random_state``; ``rng`` from 1.15).
- :func:`holm`, not statsmodels' ``multipletests(method="holm")``: the same step-down in 8
  lines is not worth statsmodels and patsy as dependencies; scipy has no Holm.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

from bench.metrics import mean_sem

#: The WBC task's primary classes (what primary_classes gives for its class names).
PRIMARY_CLASSES = ("cytoplasm", "nucleus")
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
ALPHA = 0.05


def primary_classes(class_names: Sequence[str]) -> tuple[str, ...]:
    """The classes of the primary endpoint: every class but background (index 0)."""
    return tuple(class_names[1:])


def image_scores(
    per_image: Sequence[Mapping[str, Any]],
    metric: str = "dice",
    classes: Sequence[str] = PRIMARY_CLASSES,
) -> dict[str, dict[tuple[str, str], float]]:
    """``{architecture: {(fold, image_id): score}}``: averaged over classes, then seeds."""
    collected: dict[str, dict[tuple[str, str], dict[str, list[float]]]] = {}
    for row in per_image:
        if row["class"] not in classes:
            continue
        key = (str(row["fold"]), str(row["image_id"]))
        by_seed = collected.setdefault(row["architecture"], {}).setdefault(key, {})
        by_seed.setdefault(str(row["seed"]), []).append(float(row[metric]))
    scores: dict[str, dict[tuple[str, str], float]] = {}
    for name, images in collected.items():
        scores[name] = {
            key: float(np.mean([np.mean(values) for values in by_seed.values()]))
            for key, by_seed in images.items()
        }
    return scores


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (step-down, monotone, capped at 1)."""
    order = np.argsort(p_values)
    m = len(p_values)
    adjusted = [0.0] * m
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(p_values[index])))
        adjusted[index] = running
    return adjusted


def bootstrap_median_ci(
    differences: np.ndarray,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the median of ``differences``."""
    rng = np.random.default_rng(seed)
    n = len(differences)
    medians = np.empty(resamples)
    for start in range(0, resamples, 1000):  # chunks bound the memory for large n
        stop = min(start + 1000, resamples)
        index = rng.integers(0, n, size=(stop - start, n))
        medians[start:stop] = np.median(differences[index], axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(medians, [tail, 100 - tail])
    return float(low), float(high)


def wilcoxon_p(differences: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value; 1.0 when every difference is zero."""
    if not np.any(differences != 0):
        return 1.0
    return float(scipy_stats.wilcoxon(differences, zero_method="wilcox").pvalue)


@dataclass(frozen=True)
class Comparison:
    architecture: str
    reference: str
    n_images: int
    mean: float
    median_difference: float
    ci_low: float
    ci_high: float
    p_value: float
    p_holm: float

    @property
    def significant(self) -> bool:
        return self.p_holm < ALPHA


def compare_to_best(scores: Mapping[str, Mapping[tuple[str, str], float]]) -> list[Comparison]:
    """Each architecture against the best one, on the test images both were scored on."""
    if len(scores) < 2:
        return []
    means = {name: float(np.mean(list(s.values()))) for name, s in scores.items() if s}
    best = max(means, key=lambda name: (means[name], name))
    raw = []
    for name in scores:
        if name == best:
            continue
        keys = sorted(set(scores[name]) & set(scores[best]))
        if not keys:
            continue
        difference = np.array([scores[name][k] - scores[best][k] for k in keys])
        low, high = bootstrap_median_ci(difference)
        raw.append(
            (name, len(keys), float(np.median(difference)), low, high, wilcoxon_p(difference))
        )
    adjusted = holm([r[5] for r in raw])
    return [
        Comparison(name, best, n, means[name], median, low, high, p, p_adj)
        for (name, n, median, low, high, p), p_adj in zip(raw, adjusted, strict=True)
    ]


def mean_ranks(scores: Mapping[str, Mapping[tuple[str, str], float]]) -> dict[str, float]:
    """Mean rank over the test images every architecture was scored on (1 = best)."""
    names = list(scores)
    common = set.intersection(*(set(s) for s in scores.values())) if scores else set()
    if not common:
        return {}
    keys = sorted(common)
    matrix = np.array([[scores[name][k] for name in names] for k in keys])
    ranks = scipy_stats.rankdata(-matrix, method="average", axis=1)
    return {name: float(ranks[:, i].mean()) for i, name in enumerate(names)}


def welch_difference(
    mean_a: float,
    sem_a: float,
    n_a: int,
    mean_b: float,
    sem_b: float,
    n_b: int,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """``mean_a - mean_b`` and its Welch ``level`` CI, from two independent means' SEMs.

    For a mean measured here against a published one (its SEM and n as printed): neither
    sample's values are at hand, and the two sets of images are not paired. Degrees of
    freedom by Welch-Satterthwaite.
    """
    difference = mean_a - mean_b
    var_a, var_b = sem_a**2, sem_b**2
    scale = math.sqrt(var_a + var_b)
    if scale == 0:
        return difference, difference, difference
    dof = (var_a + var_b) ** 2 / (var_a**2 / (n_a - 1) + var_b**2 / (n_b - 1))
    half = float(scipy_stats.t.ppf(0.5 + level / 2, dof)) * scale
    return difference, difference - half, difference + half


def run_level(
    per_image: Sequence[Mapping[str, Any]],
    metric: str = "dice",
    classes: Sequence[str] = PRIMARY_CLASSES,
) -> dict[str, dict[str, float]]:
    """Per architecture: mean ± SEM over runs (one mean per seed × fold) and mean ± SEM
    over test images (each image's score averaged over seeds first)."""
    per_run: dict[str, dict[tuple[str, str], list[float]]] = {}
    seeds: dict[str, set[str]] = {}
    for row in per_image:
        if row["class"] not in classes:
            continue
        name, value = row["architecture"], float(row[metric])
        per_run.setdefault(name, {}).setdefault((str(row["seed"]), str(row["fold"])), []).append(
            value
        )
        seeds.setdefault(name, set()).add(str(row["seed"]))
    images = image_scores(per_image, metric, classes)
    result = {}
    for name in per_run:
        runs_mean, runs_sem = mean_sem(np.mean(v) for v in per_run[name].values())
        image_mean, image_sem = mean_sem(images[name].values())
        result[name] = {
            "runs": len(per_run[name]),
            "seeds": len(seeds[name]),
            "run_mean": runs_mean,
            "run_sem": runs_sem,
            "images": len(images[name]),
            "image_mean": image_mean,
            "image_sem": image_sem,
        }
    return result


STATISTICS_COLUMNS = (
    "architecture",
    "runs",
    "seeds",
    "run_mean",
    "run_sem",
    "images",
    "image_mean",
    "image_sem",
    "mean_rank",
    "reference",
    "n_paired",
    "median_difference",
    "ci_low",
    "ci_high",
    "p_value",
    "p_holm",
    "significant",
    "flagged",
)


def statistics_rows(
    per_image: Sequence[Mapping[str, Any]],
    classes: Sequence[str] = PRIMARY_CLASSES,
    flagged: Collection[str] = (),
) -> list[dict[str, Any]]:
    """One row per architecture with every number of the statistical comparison of the
    primary endpoint, the mean Dice over ``classes``.

    ``flagged`` architectures (did not learn, not converged: :mod:`bench.flags`) keep their
    means but are neither ranked nor tested: the comparison is among the others.
    """
    scores = image_scores(per_image, "dice", classes)
    levels = run_level(per_image, "dice", classes)
    compared = {name: s for name, s in scores.items() if name not in flagged}
    ranks = mean_ranks(compared)
    comparisons = {c.architecture: c for c in compare_to_best(compared)}
    rows = []
    for name in scores:
        row: dict[str, Any] = {
            "architecture": name,
            **levels.get(name, {}),
            "mean_rank": ranks.get(name),
            "flagged": name in flagged,
        }
        comparison = comparisons.get(name)
        if comparison is not None:
            row.update(
                reference=comparison.reference,
                n_paired=comparison.n_images,
                median_difference=comparison.median_difference,
                ci_low=comparison.ci_low,
                ci_high=comparison.ci_high,
                p_value=comparison.p_value,
                p_holm=comparison.p_holm,
                significant=comparison.significant,
            )
        rows.append(row)
    return rows
