"""The synthetic WBC-like generator: deterministic, WBC-shaped, fast."""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.data import WBC_CLASS_NAMES, WBC_PALETTE, load_dataset
from bench.errors import ConfigError
from bench.synthetic import synthetic_pair, synthetic_pairs


def _nucleus_enclosed(mask: np.ndarray) -> bool:
    """Every nucleus pixel's 4-neighbours are nucleus or cytoplasm (and it is not on the edge)."""
    nucleus = mask == 2
    if nucleus[0, :].any() or nucleus[-1, :].any() or nucleus[:, 0].any() or nucleus[:, -1].any():
        return False
    cell = mask > 0
    up, down = np.roll(cell, 1, axis=0), np.roll(cell, -1, axis=0)
    left, right = np.roll(cell, 1, axis=1), np.roll(cell, -1, axis=1)
    return bool(np.all((up & down & left & right)[nucleus]))


def test_same_seed_gives_identical_bytes():
    a = synthetic_pairs(5, 64, seed=7)
    b = synthetic_pairs(5, 64, seed=7)
    for (ia, xa, ma), (ib, xb, mb) in zip(a, b, strict=True):
        assert ia == ib
        assert xa.tobytes() == xb.tobytes()
        assert ma.tobytes() == mb.tobytes()


def test_different_seeds_differ():
    a = synthetic_pairs(3, 64, seed=0)
    b = synthetic_pairs(3, 64, seed=1)
    for (_, xa, ma), (_, xb, mb) in zip(a, b, strict=True):
        assert xa.tobytes() != xb.tobytes()
        assert ma.tobytes() != mb.tobytes()


def test_smaller_set_is_a_prefix_of_a_larger_one():
    small = synthetic_pairs(2, 48, seed=3)
    large = synthetic_pairs(4, 48, seed=3)
    assert all(np.array_equal(s[1], g[1]) for s, g in zip(small, large[:2], strict=True))


def test_dataset_shapes_ids_and_classes():
    ds = load_dataset("synthetic", synthetic_count=12, synthetic_size=80, seed=0)
    assert ds.name == "synthetic"
    assert len(ds) == 12
    assert ds.class_names == WBC_CLASS_NAMES
    assert ds.palette == WBC_PALETTE
    assert [s.image_id for s in ds.samples[:3]] == ["syn0000", "syn0001", "syn0002"]
    for sample in ds.samples:
        assert sample.image.shape == (80, 80, 3) and sample.image.dtype == np.uint8
        assert sample.mask.shape == (80, 80) and sample.mask.dtype == np.uint8
        assert set(np.unique(sample.mask).tolist()) == {0, 1, 2}
        assert sample.path is None


def test_nucleus_surrounded_by_cytoplasm_and_background_dominant():
    for _, _image, mask in synthetic_pairs(30, 120, seed=0):
        assert _nucleus_enclosed(mask)
        fractions = np.bincount(mask.ravel(), minlength=3) / mask.size
        assert fractions[0] > 0.5
        assert fractions[0] > fractions[1] and fractions[0] > fractions[2]
        assert fractions[1] > 0 and fractions[2] > 0


def test_colours_look_like_a_stained_smear():
    _, image, mask = synthetic_pairs(1, 120, seed=0)[0]
    background = image[mask == 0].mean(axis=0)
    nucleus = image[mask == 2].mean(axis=0)
    assert background.mean() > nucleus.mean() + 60  # dark nucleus on a bright background
    assert background[0] > background[2]  # yellowish: more red than blue
    assert nucleus[2] > nucleus[1]  # purple: more blue than green


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), index=st.integers(0, 10_000), size=st.integers(32, 72))
def test_invariants_hold_for_any_seed_and_size(seed, index, size):
    image, mask = synthetic_pair(seed, index, size)
    assert image.shape == (size, size, 3)
    assert set(np.unique(mask).tolist()) == {0, 1, 2}
    assert _nucleus_enclosed(mask)


def test_fast_enough():
    start = time.perf_counter()
    synthetic_pairs(60, 120, seed=0)
    assert time.perf_counter() - start < 3.0  # typically ~0.2 s; generous for a shared CPU


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"synthetic_size": 31}, "--size"),
        ({"synthetic_count": 0}, "--count"),
        ({"seed": -1}, "--seed"),
    ],
)
def test_bad_options_name_the_option(kwargs, option):
    with pytest.raises(ConfigError, match=option):
        load_dataset("synthetic", **kwargs)


def test_palette_does_not_apply_to_synthetic():
    with pytest.raises(ConfigError, match="palette"):
        load_dataset("synthetic", palette={0: 0, 255: 1})
