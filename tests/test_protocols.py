"""Protocols on the real data: the thesis's exact split, and the clean k-fold split."""

from __future__ import annotations

import numpy as np
import pytest

from bench.data import load_dataset
from bench.errors import ConfigError
from bench.protocols import IGNORE_INDEX, get_protocol, split_sizes, thesis_augment


@pytest.fixture(scope="module")
def wbc(wbc_dir):
    return load_dataset("wbc1", wbc_dir)


def test_thesis_split_reproduces_448_418_30(wbc):
    split = get_protocol("thesis").split(wbc)
    assert len(split.train) == 418 and len(split.test) == 30
    assert split.train.images.shape == (418, 120, 120, 3)
    ids = split.train.image_ids + split.test.image_ids
    assert len(set(ids)) == 448
    assert sum(i.endswith("_aug") for i in ids) == 224
    # Augmentation before the split leaks: count test images whose twin is in training.
    train_sources = {i.removesuffix("_aug") for i in split.train.image_ids}
    leaked = sum(i.removesuffix("_aug") in train_sources for i in split.test.image_ids)
    assert split.leaked_test_images == leaked
    assert leaked > 20  # nearly all of them: the flaw the report must state
    assert not split.augment


def test_thesis_augmented_copy_is_flip_then_rotate_left(wbc):
    split = get_protocol("thesis").split(wbc)
    samples = {s.image_id: s for s in wbc.samples}
    ids = list(split.train.image_ids)
    aug = next(i for i in ids if i.endswith("_aug"))
    original = samples[aug.removesuffix("_aug")]
    index = ids.index(aug)
    expected = np.rot90(original.image[:, ::-1], k=1)
    assert np.array_equal(split.train.images[index], expected)
    assert np.array_equal(thesis_augment(original.mask), np.rot90(original.mask[:, ::-1]))


def test_thesis_split_is_deterministic(wbc):
    a = get_protocol("thesis").split(wbc)
    b = get_protocol("thesis").split(wbc)
    assert a.test.image_ids == b.test.image_ids


def test_clean_folds_partition_all_300_images(wbc):
    protocol = get_protocol("clean")
    tested = []
    for fold in range(5):
        split = protocol.split(wbc, fold=fold, folds=5, seed=0)
        assert len(split.train) + len(split.test) == 300
        assert len(split.test) == 60
        assert not set(split.train.image_ids) & set(split.test.image_ids)
        tested.extend(split.test.image_ids)
        assert split.augment
    assert sorted(tested) == sorted(s.image_id for s in wbc.samples)


def test_clean_pads_small_images_and_marks_padding_ignored(wbc):
    split = get_protocol("clean").split(wbc, fold=0)
    assert split.train.images.shape[1:] == (120, 120, 3)
    sizes = dict(
        zip(
            split.test.image_ids + split.train.image_ids,
            split.test.sizes + split.train.sizes,
            strict=True,
        )
    )
    small = [i for i, (h, w) in sizes.items() if (h, w) != (120, 120)]
    assert small, "the real data has images smaller than 120x120"
    for side in (split.train, split.test):
        for i, (h, w) in enumerate(side.sizes):
            assert (side.labels[i, h:, :] == IGNORE_INDEX).all()
            assert (side.labels[i, :, w:] == IGNORE_INDEX).all()
            assert (side.labels[i, :h, :w] != IGNORE_INDEX).all()


def test_clean_split_changes_with_seed_and_rejects_bad_fold(wbc):
    protocol = get_protocol("clean")
    a = protocol.split(wbc, fold=0, seed=0).test.image_ids
    b = protocol.split(wbc, fold=0, seed=1).test.image_ids
    assert a != b
    with pytest.raises(ConfigError, match="--fold"):
        protocol.split(wbc, fold=5, folds=5)


def test_split_sizes(wbc):
    sizes = split_sizes(wbc)
    assert sizes["thesis"]["train"] == 418 and sizes["thesis"]["test"] == 30
    assert sizes["clean"]["train"] == 240 and sizes["clean"]["test"] == 60
    assert sizes["clean"]["fold_test_sizes"] == [60] * 5


def test_unknown_protocol_lists_known():
    with pytest.raises(ConfigError, match="clean, thesis"):
        get_protocol("nope")


def test_thesis_split_of_non_square_images_pads_the_rotated_copies():
    from bench.data import Sample, SegmentationDataset

    rng = np.random.default_rng(0)
    samples = tuple(
        Sample(
            f"{i:03d}",
            rng.integers(0, 255, (6, 8, 3), dtype=np.uint8),
            rng.integers(0, 3, (6, 8), dtype=np.uint8),
        )
        for i in range(20)
    )
    dataset = SegmentationDataset("toy", ("a", "b", "c"), (0, 128, 255), samples)
    split = get_protocol("thesis").split(dataset)
    assert split.train.images.shape[1:3] == (8, 8)
    for side in (split.train, split.test):
        for i, image_id in enumerate(side.image_ids):
            assert side.sizes[i] == ((8, 6) if image_id.endswith("_aug") else (6, 8))
