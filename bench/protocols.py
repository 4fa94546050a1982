"""Protocols: how a dataset is split and preprocessed, and the training settings that go with it.

Three protocols ship:

``thesis`` — reproduction only. Exactly §3.1 and §3.3 of the 2019 thesis: keep the images of
the dataset's nominal size (the 224 images of 120×120 in ``wbc1``), add ONE augmented copy of
each (flipped left-right, then rotated 90° to the left), shuffle the 448 with seed 2 and cut
93.3 % / 6.7 % → 418 train / 30 test. Pixels are scaled by 1/255, masks one-hot encoded, the
loss is binary cross-entropy on the softmax output, Adam lr 1e-4, batch 20, 30 epochs.
**It leaks**: because augmentation happens before the split, most test images have their
augmented twin (the same cell, flipped and rotated) in the training set, so its test scores
are optimistic. :attr:`ProtocolSplit.leaked_test_images` counts them. The thesis's wording
("flipped and rotated 90° to the left") does not say which flip; we use a left-right flip.

``thesis-noleak`` — the leak measured alone. The ``thesis`` split with the SAME test images
(same 30 on ``wbc1``, same pixels) and, removed from its training set, the augmented twin (or
original) of every test image: 418 - 24 = 394 train images on ``wbc1``. Everything else (the
120×120 filter, the seed-2 shuffle, scaling, loss, optimiser budget) is ``thesis``'s, so the
difference between the two protocols' test scores is the effect of the leak.

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
from typing import TYPE_CHECKING, Any

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
    """A named protocol.

    ``fixed_split``: the protocol has one fixed split; ``fold``, ``folds`` and ``seed`` are
    ignored and a suite runs it once per training seed (no folds).
    ``thesis_reference``: its results are comparable with the thesis's published numbers
    (it is the thesis's split, or that split changed only as its summary says).
    """

    name: str
    summary: str
    defaults: TrainingDefaults
    make_split: Callable[..., ProtocolSplit]
    fixed_split: bool = False
    thesis_reference: bool = False

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
    return _thesis_like_split(dataset, name="thesis", drop_test_twins=False)


def _thesis_noleak_split(
    dataset: SegmentationDataset, *, fold: int = 0, folds: int = 5, seed: int = 0
) -> ProtocolSplit:
    return _thesis_like_split(dataset, name="thesis-noleak", drop_test_twins=True)


def _thesis_like_split(
    dataset: SegmentationDataset, *, name: str, drop_test_twins: bool
) -> ProtocolSplit:
    """The thesis's split; with ``drop_test_twins`` the training images that share a source
    image with a test image (the test image's augmented twin, or its original) are dropped.
    The test set is the same either way."""
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
    if drop_test_twins:
        test_sources = {_source_id(ids[i]) for i in test_idx}
        train_idx = np.array(
            [i for i in train_idx if _source_id(ids[i]) not in test_sources], dtype=np.int64
        )
        if len(train_idx) == 0:
            raise DataError(
                f"dataset {dataset.name!r}: no training images left once the test images' "
                "twins are removed"
            )

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
    return ProtocolSplit(name, None, None, train, test, False, leaked)


def _source_id(image_id: str) -> str:
    return image_id.removesuffix("_aug")


#: Share of the training split's source images that --lr-search holds out for validation.
VALIDATION_FRACTION = 0.2
_VALIDATION_STREAM = 0x76616C  # keeps the validation draw apart from the fold permutation


def carve_validation(
    train: SplitArrays, seed: int, fraction: float = VALIDATION_FRACTION
) -> tuple[SplitArrays, SplitArrays]:
    """Split a training split into (fit, validation) by source image, seeded by ``seed``.

    An image and its augmented twin (``<id>`` and ``<id>_aug``) share a source and land on
    the same side, so validation never scores a twin of a fitted image. The draw depends
    only on the training split's image ids and ``seed`` (the split seed): every
    architecture and training seed of a fold sees the same validation images. At least one
    source goes to each side.
    """
    sources = sorted({_source_id(i) for i in train.image_ids})
    if len(sources) < 2:
        raise DataError(f"too few training images ({len(train)}) to hold out a validation split")
    n_validation = min(len(sources) - 1, max(1, round(fraction * len(sources))))
    order = np.random.default_rng([_VALIDATION_STREAM, seed]).permutation(len(sources))
    held_out = {sources[i] for i in order[:n_validation]}
    in_validation = np.array([_source_id(i) in held_out for i in train.image_ids])

    def pick(mask: np.ndarray) -> SplitArrays:
        index = np.flatnonzero(mask)
        return SplitArrays(
            train.images[index],
            train.labels[index],
            tuple(train.image_ids[i] for i in index),
            tuple(train.sizes[i] for i in index),
        )

    return pick(~in_validation), pick(in_validation)


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


THESIS_DEFAULTS = TrainingDefaults(batch_size=20, epochs=30, lr=1e-4, optimizer="adam", loss="bce")

THESIS = Protocol(
    name="thesis",
    summary=(
        "Reproduction of the 2019 thesis (§3.1, §3.3): 120x120 images only, one augmented copy "
        "of each added BEFORE the split (leaks test twins into training), seed-2 shuffle, "
        "418 train / 30 test, BCE on softmax."
    ),
    defaults=THESIS_DEFAULTS,
    make_split=_thesis_split,
    fixed_split=True,
    thesis_reference=True,
)

THESIS_NOLEAK = Protocol(
    name="thesis-noleak",
    summary=(
        "The thesis protocol without its leak: the same split and the same test images as "
        "`thesis`, with every test image's augmented twin (or original) removed from the "
        "training set (394 train / 30 test on wbc1); otherwise identical to `thesis`. Compare "
        "with `thesis` to measure what the leak is worth."
    ),
    defaults=THESIS_DEFAULTS,
    make_split=_thesis_noleak_split,
    fixed_split=True,
    thesis_reference=True,
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

PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (CLEAN, THESIS, THESIS_NOLEAK)}


def get_protocol(name: str) -> Protocol:
    try:
        return PROTOCOLS[name]
    except KeyError:
        known = ", ".join(sorted(PROTOCOLS))
        raise ConfigError(f"unknown protocol {name!r}; known protocols: {known}") from None


def split_sizes(
    dataset: SegmentationDataset, folds: int = 5, seed: int = 0
) -> dict[str, dict[str, Any] | str]:
    """Train/test sizes each registered protocol makes of ``dataset``.

    A fixed-split protocol gives ``train``, ``test`` and ``leaked_test_images``; a k-fold one
    gives fold 0's ``train`` and ``test``, ``folds`` and ``fold_test_sizes``. A protocol that
    cannot split ``dataset`` gives the reason, as a string.
    """
    result: dict[str, dict[str, Any] | str] = {}
    for name, protocol in PROTOCOLS.items():
        try:
            if protocol.fixed_split:
                split = protocol.split(dataset)
                result[name] = {
                    "train": len(split.train),
                    "test": len(split.test),
                    "leaked_test_images": split.leaked_test_images,
                }
            else:
                parts = fold_indices(len(dataset), folds, seed)
                result[name] = {
                    "train": len(dataset) - len(parts[0]),
                    "test": len(parts[0]),
                    "folds": folds,
                    "fold_test_sizes": [len(p) for p in parts],
                }
        except DataError as error:
            result[name] = f"unavailable: {error}"
    return result


def dataset_info(dataset: SegmentationDataset) -> dict[str, Any]:
    """Counts, sizes, class pixel fractions and protocol split sizes: what to check before a run.

    ``bench data info`` prints it. It lives here, not in :mod:`bench.data`, because the split
    sizes are the protocols' (:func:`split_sizes`) and datasets sit below protocols.
    """
    sizes = Counter(f"{s.image.shape[1]}x{s.image.shape[0]}" for s in dataset.samples)
    n_classes = len(dataset.class_names)
    pixels = np.zeros(n_classes, dtype=np.int64)
    for sample in dataset.samples:
        pixels += np.bincount(sample.mask.ravel(), minlength=n_classes)[:n_classes]
    total = int(pixels.sum())
    fractions = {
        name: (float(pixels[i]) / total if total else 0.0)
        for i, name in enumerate(dataset.class_names)
    }
    return {
        "name": dataset.name,
        "count": len(dataset),
        "sizes": dict(sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0]))),
        "class_fractions": fractions,
        "protocols": split_sizes(dataset),
        "warnings": list(dataset.warnings),
    }
