"""The statistics of comparisons: Holm, Wilcoxon, bootstrap, ranks, run-level aggregation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as scipy_stats

from bench import stats


def rows_for(name, values, seed=0, fold=0, classes=("cytoplasm", "nucleus")):
    return [
        {
            "architecture": name,
            "seed": seed,
            "fold": fold,
            "image_id": f"{i:03d}",
            "class": cls,
            "dice": value,
        }
        for i, value in enumerate(values)
        for cls in classes
    ]


def test_holm_matches_hand_computation():
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert stats.holm([]) == []


def test_clear_difference_is_significant_and_identical_models_are_not():
    rng = np.random.default_rng(0)
    good = 0.9 + 0.02 * rng.standard_normal(30)
    worse = good - 0.05 + 0.01 * rng.standard_normal(30)
    rows = rows_for("good", good) + rows_for("worse", worse) + rows_for("same", good)
    table = {r["architecture"]: r for r in stats.statistics_rows(rows)}
    best = table["good"] if "reference" not in table["good"] else table["same"]
    assert best.get("reference") is None
    worse_row = table["worse"]
    assert worse_row["significant"]
    assert worse_row["ci_low"] < worse_row["median_difference"] < worse_row["ci_high"] < 0
    expected = scipy_stats.wilcoxon(worse - good).pvalue
    assert worse_row["p_value"] == pytest.approx(expected)
    tie = table["same"] if best is table["good"] else table["good"]
    assert tie["p_value"] == 1.0 and not tie["significant"]


def test_bootstrap_is_seeded_and_covers_the_median():
    differences = np.random.default_rng(1).normal(-0.02, 0.01, 40)
    first = stats.bootstrap_median_ci(differences, resamples=2000)
    assert first == stats.bootstrap_median_ci(differences, resamples=2000)
    assert first[0] <= np.median(differences) <= first[1]


def test_holm_is_the_step_down_maximum():
    # statsmodels' multipletests(method="holm") and the textbook: sort the m p-values,
    # multiply the i-th smallest (i from 0) by m - i, carry the running maximum, cap at 1.
    assert stats.holm([0.01, 0.02, 0.03, 0.04, 0.05]) == pytest.approx(
        [0.05, 0.08, 0.09, 0.09, 0.09]
    )
    rng = np.random.default_rng(3)
    for m in (1, 2, 5, 12):
        p = rng.uniform(0, 0.3, m)
        p[rng.integers(0, m)] = p[0]  # a tie
        order = np.argsort(p, kind="stable")
        expected = np.minimum(1, np.maximum.accumulate((m - np.arange(m)) * p[order]))
        adjusted = np.empty(m)
        adjusted[order] = expected
        assert stats.holm(list(p)) == pytest.approx(list(adjusted))


@pytest.mark.parametrize("n", [2, 30, 300])
def test_bootstrap_equals_scipy_percentile_bootstrap_of_the_median(n):
    # The same resamples as scipy.stats.bootstrap (one sample, percentile method, the same
    # Generator): bench.stats keeps its own for the reasons in its module docstring.
    rng = np.random.default_rng(n)
    for differences in (rng.normal(-0.02, 0.05, n), np.round(rng.normal(0, 0.05, n), 2)):
        scipy_ci = scipy_stats.bootstrap(
            (differences,),
            np.median,
            n_resamples=stats.BOOTSTRAP_RESAMPLES,
            vectorized=True,
            method="percentile",
            rng=np.random.default_rng(stats.BOOTSTRAP_SEED),
        ).confidence_interval
        low, high = stats.bootstrap_median_ci(differences)
        assert low == pytest.approx(scipy_ci.low, abs=1e-12)
        assert high == pytest.approx(scipy_ci.high, abs=1e-12)


def test_bootstrap_of_one_paired_image_is_that_image():
    # scipy.stats.bootstrap refuses one observation; a comparison on one image must not fail.
    assert stats.bootstrap_median_ci(np.array([0.25])) == (0.25, 0.25)


def test_mean_ranks_average_ties():
    scores = {"a": {("0", "x"): 0.9, ("0", "y"): 0.5}, "b": {("0", "x"): 0.8, ("0", "y"): 0.5}}
    assert stats.mean_ranks(scores) == {"a": 1.25, "b": 1.75}


def test_seeds_are_averaged_per_image_before_pairing():
    rows = rows_for("a", [0.8, 0.6], seed=0) + rows_for("a", [1.0, 0.8], seed=1)
    scores = stats.image_scores(rows)
    assert scores["a"] == {("0", "000"): pytest.approx(0.9), ("0", "001"): pytest.approx(0.7)}
    level = stats.run_level(rows)["a"]
    # Two runs (seeds), two images: the image level counts each image once, its score
    # averaged over the seeds; more seeds must not look like more images.
    assert level["runs"] == 2 and level["seeds"] == 2 and level["images"] == 2
    assert level["run_mean"] == pytest.approx(0.8)
    assert level["run_sem"] == pytest.approx(np.std([0.7, 0.9], ddof=1) / np.sqrt(2))
    assert level["image_mean"] == pytest.approx(0.8)
    assert level["image_sem"] == pytest.approx(np.std([0.9, 0.7], ddof=1) / np.sqrt(2))


def test_primary_classes_are_every_class_but_background():
    assert stats.primary_classes(("background", "cytoplasm", "nucleus")) == stats.PRIMARY_CLASSES
    assert stats.primary_classes(("background", "nucleus")) == ("nucleus",)
    rows = rows_for("a", [0.5, 0.7], classes=("nucleus",))
    assert stats.image_scores(rows, classes=("nucleus",))["a"][("0", "001")] == 0.7


def test_welch_difference_matches_scipys_welch_test():
    rng = np.random.default_rng(3)
    a, b = rng.normal(0.92, 0.05, 300), rng.normal(0.97, 0.02, 30)
    sem = [x.std(ddof=1) / np.sqrt(x.size) for x in (a, b)]
    difference, low, high = stats.welch_difference(
        a.mean(), sem[0], a.size, b.mean(), sem[1], b.size
    )
    assert difference == pytest.approx(a.mean() - b.mean())
    ci = scipy_stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert (low, high) == pytest.approx((ci.low, ci.high), rel=1e-9)
