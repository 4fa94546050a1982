"""Metrics are checked against scikit-learn, on random masks and on the real WBC masks."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import stats as scipy_stats
from sklearn.metrics import accuracy_score, f1_score, jaccard_score

from bench import metrics


def sklearn_reference(prediction, target, ids):
    p = np.isin(prediction, ids).ravel()
    t = np.isin(target, ids).ravel()
    return (
        jaccard_score(t, p, zero_division=1.0),
        f1_score(t, p, zero_division=1.0),
        accuracy_score(t, p),
    )


def check_against_sklearn(prediction, target):
    scores = metrics.image_metrics(prediction, target)
    for name, ids in metrics.WBC_METRIC_CLASSES.items():
        jac, f1, acc = sklearn_reference(prediction, target, ids)
        assert scores[name]["jaccard"] == pytest.approx(jac, abs=1e-9)
        assert scores[name]["dice"] == pytest.approx(f1, abs=1e-9)
        assert scores[name]["jaccard_legacy"] == pytest.approx(acc, abs=1e-9)
        assert scores[name]["accuracy"] == pytest.approx(
            accuracy_score(target.ravel(), prediction.ravel()), abs=1e-9
        )


def test_random_masks_match_sklearn():
    rng = np.random.default_rng(0)
    for _ in range(25):
        shape = tuple(rng.integers(1, 40, size=2))
        target = rng.integers(0, 3, size=shape)
        # Mostly right predictions with some noise, and sometimes a class missing.
        prediction = np.where(rng.random(shape) < 0.7, target, rng.integers(0, 3, size=shape))
        if rng.random() < 0.3:
            prediction[prediction == 2] = 1
        check_against_sklearn(prediction, target)


def test_real_masks_match_sklearn(wbc_dir):
    from bench.data import load_dataset

    dataset = load_dataset("wbc1", wbc_dir)
    rng = np.random.default_rng(1)
    for sample in dataset.samples[:12]:
        target = sample.mask
        # A plausible wrong prediction: the truth shifted by a few pixels plus speckle.
        prediction = np.roll(target, shift=(2, -3), axis=(0, 1))
        speckle = rng.random(target.shape) < 0.02
        prediction = np.where(speckle, rng.integers(0, 3, size=target.shape), prediction)
        check_against_sklearn(prediction, target)
        # A perfect prediction scores 1 everywhere.
        perfect = metrics.image_metrics(target, target)
        assert all(v["jaccard"] == 1.0 and v["dice"] == 1.0 for v in perfect.values())


def test_valid_mask_excludes_padding():
    target = np.array([[1, 1], [0, 0]])
    prediction = np.array([[1, 0], [2, 2]])
    valid = np.array([[True, False], [True, True]])
    counts = metrics.confusion_counts(prediction, target, (1,), valid)
    assert counts == metrics.ConfusionCounts(tp=1, fp=0, fn=0, tn=2)
    assert metrics.pixel_accuracy(prediction, target, valid) == pytest.approx(1 / 3)


def test_empty_versus_empty_is_one_by_definition():
    target = np.zeros((4, 4), dtype=int)
    scores = metrics.image_metrics(target, target)
    assert scores["nucleus"]["jaccard"] == 1.0
    assert scores["nucleus"]["dice"] == 1.0
    counts = metrics.confusion_counts(target, target, (2,))
    assert math.isnan(metrics.jaccard(counts, empty=float("nan")))
    # Absent from the truth but predicted: an error, scored 0.
    prediction = target.copy()
    prediction[0, 0] = 2
    assert metrics.image_metrics(prediction, target)["nucleus"]["jaccard"] == 0.0


def test_mean_sem_uses_sample_standard_deviation():
    values = [0.9, 0.8, 0.95, 0.85]
    mean, sem = metrics.mean_sem(values)
    assert mean == pytest.approx(np.mean(values))
    assert sem == pytest.approx(np.std(values, ddof=1) / 2)
    assert math.isnan(metrics.mean_sem([0.5])[1])
    assert math.isnan(metrics.mean_sem([])[0])


def test_mean_sem_equals_scipy_sem_without_its_warnings():
    values = [0.9, float("nan"), 0.8, 0.95, 0.85, float("nan"), 0.7]
    kept = [v for v in values if not math.isnan(v)]
    mean, sem = metrics.mean_sem(iter(values))  # any iterable, NaN ignored
    assert mean == pytest.approx(np.mean(kept))
    assert sem == pytest.approx(scipy_stats.sem(values, ddof=1, nan_policy="omit"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scipy warns on these two; mean_sem says NaN quietly
        assert math.isnan(metrics.mean_sem([0.5, float("nan")])[1])
        assert all(math.isnan(v) for v in metrics.mean_sem([float("nan")]))


def test_legacy_jaccard_exceeds_true_jaccard_on_small_objects():
    """Why the thesis's "Jaccard" was above its Dice: pixel accuracy rewards background."""
    target = np.zeros((100, 100), dtype=int)
    target[40:60, 40:60] = 2
    prediction = np.zeros_like(target)
    prediction[45:65, 45:65] = 2
    scores = metrics.image_metrics(prediction, target)["nucleus"]
    assert scores["jaccard_legacy"] > scores["dice"] > scores["jaccard"]


masks = st.integers(1, 24).flatmap(
    lambda n: st.tuples(
        arrays(np.int64, (n, n), elements=st.integers(0, 2)),
        arrays(np.int64, (n, n), elements=st.integers(0, 2)),
    )
)


@settings(max_examples=150, deadline=None)
@given(masks)
def test_properties_on_any_masks(pair):
    prediction, target = pair
    forward = metrics.image_metrics(prediction, target)
    backward = metrics.image_metrics(target, prediction)
    for name, ids in metrics.WBC_METRIC_CLASSES.items():
        values = forward[name]
        scores = {k: v for k, v in values.items() if k not in ("tp", "fp", "fn", "tn")}
        assert all(0.0 <= v <= 1.0 for v in scores.values())
        # The counts partition the pixels, and the scores follow from them.
        assert values["tp"] + values["fp"] + values["fn"] + values["tn"] == target.size
        counts = metrics.ConfusionCounts(values["tp"], values["fp"], values["fn"], values["tn"])
        assert values["dice"] == metrics.dice(counts)
        assert values["jaccard"] <= values["dice"] + 1e-12
        # Dice and Jaccard are symmetric in prediction and truth.
        assert values["jaccard"] == pytest.approx(backward[name]["jaccard"], abs=1e-12)
        assert values["dice"] == pytest.approx(backward[name]["dice"], abs=1e-12)
        jac, f1, acc = sklearn_reference(prediction, target, ids)
        assert values["jaccard"] == pytest.approx(jac, abs=1e-9)
        assert values["dice"] == pytest.approx(f1, abs=1e-9)
        assert values["jaccard_legacy"] == pytest.approx(acc, abs=1e-9)
