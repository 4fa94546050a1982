"""Protocols on the real data: the thesis's exact split (with and without its leak), and the
clean k-fold split."""

from __future__ import annotations

import numpy as np
import pytest

from bench.data import load_dataset
from bench.errors import ConfigError
from bench.protocols import (
    IGNORE_INDEX,
    PROTOCOLS,
    dataset_info,
    get_protocol,
    split_sizes,
    thesis_augment,
)

# The thesis split's 30 test images on wbc1, in split order: computed once from the seed-2
# shuffle and pinned here, so that any change to the shuffle (seed, order of the 448, test
# fraction, which copy is augmented) fails loudly instead of silently moving the test set.
THESIS_TEST_IDS = (
    "034", "039", "210_aug", "052", "214_aug", "037_aug", "166", "271", "242", "070_aug",
    "189", "199", "255_aug", "295", "064_aug", "159_aug", "048", "290", "295_aug", "159",
    "286_aug", "237", "040_aug", "211_aug", "099", "099_aug", "023", "095", "016", "243",
)  # fmt: skip
THESIS_LEAKED = 24  # test images whose twin is in the thesis's training set


def _source(image_id: str) -> str:
    return image_id.removesuffix("_aug")


@pytest.fixture(scope="module")
def wbc(wbc_dir):
    return load_dataset("wbc1", wbc_dir)


@pytest.fixture(scope="module")
def thesis_split(wbc):
    return get_protocol("thesis").split(wbc)


@pytest.fixture(scope="module")
def noleak_split(wbc):
    return get_protocol("thesis-noleak").split(wbc)


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


def test_thesis_split_is_pinned_to_its_30_test_images(thesis_split):
    assert thesis_split.test.image_ids == THESIS_TEST_IDS
    assert thesis_split.leaked_test_images == THESIS_LEAKED
    assert not set(thesis_split.train.image_ids) & set(THESIS_TEST_IDS)


def test_thesis_noleak_keeps_the_test_set_and_drops_only_the_twins(thesis_split, noleak_split):
    # The same test images, in the same order, with the same pixels and labels.
    assert noleak_split.test.image_ids == THESIS_TEST_IDS
    assert np.array_equal(noleak_split.test.images, thesis_split.test.images)
    assert np.array_equal(noleak_split.test.labels, thesis_split.test.labels)
    assert noleak_split.test.sizes == thesis_split.test.sizes
    # No test image's source (original or augmented twin) is left in training.
    test_sources = {_source(i) for i in THESIS_TEST_IDS}
    assert len(test_sources) == 27  # 3 original/twin pairs are both in the test set
    twins = {f"{s}_aug" for s in test_sources} | test_sources
    assert not twins & set(noleak_split.train.image_ids)
    assert noleak_split.leaked_test_images == 0
    # Training = the thesis's training set minus exactly the 24 leaked twins, order kept.
    dropped = [i for i in thesis_split.train.image_ids if _source(i) in test_sources]
    assert len(dropped) == THESIS_LEAKED
    kept = tuple(i for i in thesis_split.train.image_ids if i not in dropped)
    assert noleak_split.train.image_ids == kept
    assert len(noleak_split.train) == 418 - 24 == 394
    index = {image_id: n for n, image_id in enumerate(thesis_split.train.image_ids)}
    rows = [index[i] for i in kept]
    assert np.array_equal(noleak_split.train.images, thesis_split.train.images[rows])
    assert np.array_equal(noleak_split.train.labels, thesis_split.train.labels[rows])
    assert noleak_split.protocol == "thesis-noleak"
    assert noleak_split.fold is None and not noleak_split.augment


def test_thesis_noleak_settings_equal_the_thesis():
    thesis, noleak = get_protocol("thesis"), get_protocol("thesis-noleak")
    assert noleak.defaults == thesis.defaults
    assert noleak.fixed_split and thesis.fixed_split and not get_protocol("clean").fixed_split
    assert "leak" in noleak.summary and "same test images" in noleak.summary


def test_thesis_noleak_of_a_single_image_has_nothing_left_to_train_on():
    from bench.data import Sample, SegmentationDataset
    from bench.errors import DataError

    sample = Sample("000", np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.uint8))
    dataset = SegmentationDataset("one", ("a", "b", "c"), (0, 128, 255), (sample,))
    assert len(get_protocol("thesis").split(dataset).train) == 1
    with pytest.raises(DataError, match="no training images left"):
        get_protocol("thesis-noleak").split(dataset)


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
    assert set(sizes) == set(PROTOCOLS)
    assert sizes["thesis"] == {"train": 418, "test": 30, "leaked_test_images": 24}
    assert sizes["thesis-noleak"] == {"train": 394, "test": 30, "leaked_test_images": 0}
    assert sizes["clean"]["train"] == 240 and sizes["clean"]["test"] == 60
    assert sizes["clean"]["fold_test_sizes"] == [60] * 5


def test_unknown_protocol_lists_known():
    with pytest.raises(ConfigError, match="clean, thesis, thesis-noleak"):
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


def test_split_sizes_name_the_protocols_a_small_dataset_cannot_split():
    from bench.data import Sample, SegmentationDataset

    samples = tuple(
        Sample(f"{i}", np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.uint8)) for i in range(3)
    )
    sizes = split_sizes(SegmentationDataset("toy", ("a", "b", "c"), (0, 128, 255), samples))
    assert sizes["clean"] == "unavailable: cannot make 5 folds from 3 images"
    assert sizes["thesis"]["test"] == 1 and sizes["thesis-noleak"]["train"] == 4


def test_dataset_info_lists_the_split_sizes_beside_the_data():
    dataset = load_dataset("synthetic", synthetic_count=10, synthetic_size=32)
    info = dataset_info(dataset)
    assert list(info) == ["name", "count", "sizes", "class_fractions", "protocols", "warnings"]
    assert info["count"] == 10 and info["sizes"] == {"32x32": 10}
    assert info["protocols"] == split_sizes(dataset)


def test_data_info_json_lists_every_protocol(wbc_dir, capsys):
    import json

    from bench.cli import main

    assert main(["data", "info", "wbc1", "--data-dir", str(wbc_dir), "--json"]) == 0
    protocols = json.loads(capsys.readouterr().out)["protocols"]
    assert set(protocols) == set(PROTOCOLS)
    assert protocols["thesis-noleak"] == {"train": 394, "test": 30, "leaked_test_images": 0}
