"""Protocols: how a dataset is split and preprocessed, and the training settings that go with it.

Two protocols ship:

``thesis`` — reproduction only. Exactly §3.1 and §3.3 of the 2019 thesis: keep the images of
the dataset's nominal size (the 224 images of 120×120 in ``wbc1``), add ONE augmented copy of
each (flipped left-right, then rotated 90° to the left), shuffle the 448 with seed 2 and cut
93.3 % / 6.7 % → 418 train / 30 test. Pixels are scaled by 1/255, masks one-hot encoded, the
loss is binary cross-entropy on the softmax output, Adam lr 1e-4, batch 20, 30 epochs.
**It leaks**: because augmentation happens before the split, most test images have their
augmented twin (the same cell, flipped and rotated) in the training set, so its test scores
are optimistic. :attr:`ProtocolSplit.leaked_test_images` counts them. The thesis's wording
("flipped and rotated 90° to the left") does not say which flip; we use a left-right flip.

``clean`` — the default. All images; split by source image *before* any augmentation into
seeded k folds (default 5; ``fold`` picks the test fold); images smaller than the largest
size are padded (bottom/right, zeros) to it and the padded pixels are excluded from loss and
metrics (label ``IGNORE_INDEX``); online training augmentation (flips, 90° rotations, mild
colour jitter; batched on the training device by :mod:`bench.augment`), none at test time;
multi-class cross-entropy; the same optimiser budget as the thesis (Adam 1e-4, batch 20,
30 epochs) so that results compare.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from bench.errors import ConfigError, DataError

if TYPE_CHECKING:
    from bench.data import SegmentationDataset

IGNORE_INDEX = -1


@dataclass(frozen=True)
class TrainingDefaults:
    """Training settings a protocol prescribes; every one can be overridden by a flag."""

    batch_size: int
    epochs: int
    lr: float
    optimizer: str
    loss: str


@dataclass(frozen=True)
class SplitArrays:
    """One side of a split, as arrays ready for the runner."""

    images: np.ndarray  # uint8 (N, H, W, 3), padded
    labels: np.ndarray  # int64 (N, H, W), IGNORE_INDEX on padded pixels
    image_ids: tuple[str, ...]
    sizes: tuple[tuple[int, int], ...]  # (height, width) before padding

    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def valid(self) -> np.ndarray:
        return self.labels != IGNORE_INDEX


@dataclass(frozen=True)
class ProtocolSplit:
    protocol: str
    fold: int | None
    folds: int | None
    train: SplitArrays
    test: SplitArrays
    augment: bool
    leaked_test_images: int  # test images whose augmented twin is in the training set


@dataclass(frozen=True)
class Protocol:
    name: str
    summary: str
    defaults: TrainingDefaults
    make_split: Callable[..., ProtocolSplit]

    def split(
        self, dataset: SegmentationDataset, *, fold: int = 0, folds: int = 5, seed: int = 0
    ) -> ProtocolSplit:
        return self.make_split(dataset, fold=fold, folds=folds, seed=seed)


def _stack(
    images: list[np.ndarray], masks: list[np.ndarray], ids: list[str], height: int, width: int
) -> SplitArrays:
    """Pad every image to (height, width) at the bottom/right and stack."""
    n = len(images)
    out_images = np.zeros((n, height, width, 3), dtype=np.uint8)
    out_labels = np.full((n, height, width), IGNORE_INDEX, dtype=np.int64)
    sizes = []
    for i, (image, mask) in enumerate(zip(images, masks, strict=True)):
        h, w = mask.shape
        out_images[i, :h, :w] = image
        out_labels[i, :h, :w] = mask
        sizes.append((h, w))
    return SplitArrays(out_images, out_labels, tuple(ids), tuple(sizes))


def thesis_augment(array: np.ndarray) -> np.ndarray:
    """The thesis's single augmentation: flip left-right, then rotate 90° to the left."""
    return np.ascontiguousarray(np.rot90(np.fliplr(array), k=1))


def _nominal_size(dataset: SegmentationDataset) -> tuple[int, int]:
    sizes = Counter(sample.mask.shape for sample in dataset.samples)
    if not sizes:
        raise DataError(f"dataset {dataset.name!r} has no images")
    return sizes.most_common(1)[0][0]


THESIS_SEED = 2
THESIS_TEST_FRACTION = 0.067


def _thesis_split(
    dataset: SegmentationDataset, *, fold: int = 0, folds: int = 5, seed: int = 0
) -> ProtocolSplit:
    # fold/folds/seed are ignored on purpose: the thesis had one split, seeded 2.
    height, width = _nominal_size(dataset)
    kept = [s for s in dataset.samples if s.mask.shape == (height, width)]
    images = [s.image for s in kept] + [thesis_augment(s.image) for s in kept]
    masks = [s.mask for s in kept] + [thesis_augment(s.mask) for s in kept]
    ids = [s.image_id for s in kept] + [f"{s.image_id}_aug" for s in kept]
    total = len(ids)
    if total < 2:
        raise DataError(f"dataset {dataset.name!r}: too few {width}x{height} images for a split")
    order = np.random.RandomState(THESIS_SEED).permutation(total)
    n_test = max(1, round(total * THESIS_TEST_FRACTION))
    train_idx, test_idx = order[: total - n_test], order[total - n_test :]

    # A non-square nominal size turns on its side when rotated: pad both to the larger side.
    side_h, side_w = (height, width) if height == width else (max(height, width),) * 2

    def pick(indices: np.ndarray) -> SplitArrays:
        return _stack(
            [images[i] for i in indices],
            [masks[i] for i in indices],
            [ids[i] for i in indices],
            side_h,
            side_w,
        )

    train, test = pick(train_idx), pick(test_idx)
    train_sources = {_source_id(i) for i in train.image_ids}
    leaked = sum(_source_id(i) in train_sources for i in test.image_ids)
    return ProtocolSplit("thesis", None, None, train, test, False, leaked)


def _source_id(image_id: str) -> str:
    return image_id.removesuffix("_aug")


def fold_indices(n: int, folds: int, seed: int) -> list[np.ndarray]:
    """Seeded k-fold partition of range(n): a permutation cut into ``folds`` near-equal parts."""
    if folds < 2:
        raise ConfigError(f"--folds must be at least 2 (got {folds})")
    if n < folds:
        raise DataError(f"cannot make {folds} folds from {n} images")
    order = np.random.RandomState(seed).permutation(n)
    return [np.sort(part) for part in np.array_split(order, folds)]


def _clean_split(
    dataset: SegmentationDataset, *, fold: int = 0, folds: int = 5, seed: int = 0
) -> ProtocolSplit:
    samples = dataset.samples
    parts = fold_indices(len(samples), folds, seed)
    if not 0 <= fold < folds:
        raise ConfigError(f"--fold must be in 0..{folds - 1} (got {fold})")
    height = max(s.mask.shape[0] for s in samples)
    width = max(s.mask.shape[1] for s in samples)
    test_set = set(parts[fold].tolist())

    def pick(indices: list[int]) -> SplitArrays:
        chosen = [samples[i] for i in indices]
        return _stack(
            [s.image for s in chosen],
            [s.mask for s in chosen],
            [s.image_id for s in chosen],
            height,
            width,
        )

    train = pick([i for i in range(len(samples)) if i not in test_set])
    test = pick(sorted(test_set))
    return ProtocolSplit("clean", fold, folds, train, test, True, 0)


THESIS = Protocol(
    name="thesis",
    summary=(
        "Reproduction of the 2019 thesis (§3.1, §3.3): 120x120 images only, one augmented copy "
        "of each added BEFORE the split (leaks test twins into training), seed-2 shuffle, "
        "418 train / 30 test, BCE on softmax."
    ),
    defaults=TrainingDefaults(batch_size=20, epochs=30, lr=1e-4, optimizer="adam", loss="bce"),
    make_split=_thesis_split,
)

CLEAN = Protocol(
    name="clean",
    summary=(
        "All images, split by source image into seeded k folds before any augmentation; "
        "padding excluded from loss and metrics; online flips/rotations/colour jitter on the "
        "training fold only; cross-entropy."
    ),
    defaults=TrainingDefaults(
        batch_size=20, epochs=30, lr=1e-4, optimizer="adam", loss="cross_entropy"
    ),
    make_split=_clean_split,
)

PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (CLEAN, THESIS)}


def get_protocol(name: str) -> Protocol:
    try:
        return PROTOCOLS[name]
    except KeyError:
        known = ", ".join(sorted(PROTOCOLS))
        raise ConfigError(f"unknown protocol {name!r}; known protocols: {known}") from None


def split_sizes(dataset: SegmentationDataset, folds: int = 5, seed: int = 0) -> dict[str, dict]:
    """Train/test sizes each protocol makes of ``dataset`` (fold 0 for ``clean``)."""
    thesis = _thesis_split(dataset)
    result: dict[str, dict] = {
        "thesis": {
            "train": len(thesis.train),
            "test": len(thesis.test),
            "leaked_test_images": thesis.leaked_test_images,
        }
    }
    try:
        parts = fold_indices(len(dataset), folds, seed)
    except DataError:
        return result
    result["clean"] = {
        "train": len(dataset) - len(parts[0]),
        "test": len(parts[0]),
        "folds": folds,
        "fold_test_sizes": [len(p) for p in parts],
    }
    return result
