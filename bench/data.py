"""Datasets for the harness: in-memory samples, the registry of dataset names, cards, info.

Dataset specs accepted by :func:`load_dataset`:

``wbc1``
    Dataset 1 of Zheng et al. 2018 in the public repository's own layout:
    ``<root>/Dataset 1/NNN.bmp`` + ``<root>/Dataset 1/NNN.png``. ``<root>`` is the data
    dir itself when it holds ``Dataset 1/``, else ``<data dir>/segmentation_WBC/`` (where
    ``bench data fetch wbc1`` puts it). Masks: grey 0 background (red cells included),
    128 cytoplasm, 255 nucleus.
``synthetic``
    The procedural WBC-like generator of :mod:`bench.synthetic`; nothing to download.
``folder:PATH``
    Any folder of image/mask pairs matched by file stem, in one of two layouts:

    * ``PATH/images/<stem>.<ext>`` + ``PATH/masks/<stem>.<ext>``: images may be
      png/bmp/jpg/jpeg/tif/tiff, masks png/bmp/tif/tiff/gif (lossless formats);
    * everything in ``PATH`` itself: masks are the ``.png`` files, images the
      ``.bmp``/``.jpg``/``.jpeg``/``.tif``/``.tiff`` files (the ``wbc1`` layout).

    Other files (csv, txt, hidden files) are ignored. Masks hold one grey value per class;
    ``palette`` maps grey value -> class index (default: the WBC palette
    ``{0: 0, 128: 1, 255: 2}``). Class names are ``background/cytoplasm/nucleus`` for the
    WBC palette, else ``class0..classK``.

Bad input is never silently used: an image without a mask (or a mask without an image),
two images with one stem, an image/mask size mismatch, an unreadable or truncated file, a
colour mask or an empty folder raise :class:`~bench.errors.DataError` naming the file.
Mask values off the palette are mapped to the nearest palette value and counted in a
warning (``dataset.warnings`` and :func:`warnings.warn`) that names the mask file.
"""

from __future__ import annotations

import importlib.resources
import os
import warnings
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

import bench
from bench.errors import ConfigError, DataError
from bench.images import IMAGE_SUFFIXES, MASK_SUFFIXES, mask_to_classes, read_image, read_mask

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    tomllib = None  # type: ignore[assignment]

WBC_CLASS_NAMES = ("background", "cytoplasm", "nucleus")
WBC_PALETTE = (0, 128, 255)  # palette[class_index] = grey value in the mask files
WBC_PALETTE_MAP: dict[int, int] = {grey: index for index, grey in enumerate(WBC_PALETTE)}

WBC1_FOLDER = "segmentation_WBC"  # where `bench data fetch wbc1` extracts, inside the data dir
WBC1_SUBDIR = "Dataset 1"
DATA_DIR_ENV = "BENCH_DATA_DIR"

# In the single-folder layout, masks are the .png files and images these.
_FLAT_IMAGE_SUFFIXES = (".bmp", ".jpg", ".jpeg", ".tif", ".tiff")
_DATASET_NAMES = ("synthetic", "wbc1")


class DataWarning(UserWarning):
    """Data was usable but not clean (e.g. mask values off the palette were repaired)."""


@dataclass(frozen=True, eq=False)
class Sample:
    """One image with its mask, already decoded (the data sets are small: keep them in memory)."""

    image_id: str  # the file stem, e.g. "001"
    image: np.ndarray  # uint8, shape (H, W, 3), RGB
    mask: np.ndarray  # uint8, shape (H, W), class indices 0..C-1
    path: str | None = None  # the image file, for messages


@dataclass(frozen=True, eq=False)
class SegmentationDataset:
    """A named, ordered set of samples plus what is needed to write predictions back."""

    name: str  # "wbc1", "synthetic", "folder:/abs/path"
    class_names: tuple[str, ...]
    palette: tuple[int, ...]  # grey value for each class index (used to write predictions)
    samples: tuple[Sample, ...]
    warnings: tuple[str, ...] = ()  # e.g. off-palette pixel counts

    def __len__(self) -> int:
        return len(self.samples)


# --------------------------------------------------------------------------- data dir, cards


def resolve_data_dir(data_dir: str | os.PathLike[str] | None) -> Path:
    """Where datasets live: the explicit argument, else ``$BENCH_DATA_DIR``, else the user cache.

    An explicit value wins so a command line can always override the environment.
    """
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    env = os.environ.get(DATA_DIR_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("bench"))


def card_file(filename: str) -> Path | Traversable:
    """A file of the dataset cards folder: the repository's ``datasets/``, else ``bench.cards``.

    The repository copy comes first so an editable checkout always reads what it ships.
    """
    repo_copy = Path(bench.__file__).resolve().parents[1] / "datasets" / filename
    if repo_copy.is_file():
        return repo_copy
    try:
        return importlib.resources.files("bench.cards") / filename
    except ModuleNotFoundError:
        return repo_copy


def available_datasets() -> list[str]:
    """Dataset specs :func:`load_dataset` accepts, for listings and error messages."""
    return sorted(["folder:PATH", *_DATASET_NAMES])


def load_card(name: str) -> dict[str, Any]:
    """The TOML card of a named dataset (source, licence, citation, archive, manifest)."""
    if name not in _DATASET_NAMES:
        raise ConfigError(f"unknown dataset {name!r}; known: {', '.join(available_datasets())}")
    if tomllib is None:  # pragma: no cover - Python 3.10
        raise ConfigError(
            f"reading the dataset card {name}.toml needs Python >= 3.11 (module tomllib)"
        )
    resource = card_file(f"{name}.toml")
    try:
        return tomllib.loads(resource.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise DataError(f"dataset card {name}.toml not found (looked at {resource})") from error
    except tomllib.TOMLDecodeError as error:
        raise DataError(f"dataset card {resource} is not valid TOML: {error}") from error


# --------------------------------------------------------------------------- palettes


def parse_palette(text: str, option: str = "--palette") -> dict[int, int]:
    """Parse ``"0:0,128:1,255:2"`` (grey value : class index) for command lines."""
    mapping: dict[int, int] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        grey, sep, index = item.partition(":")
        try:
            if not sep:
                raise ValueError
            mapping[int(grey)] = int(index)
        except ValueError:
            raise ConfigError(
                f"{option}: expected GREY:CLASS pairs like 0:0,128:1,255:2, got {item!r}"
            ) from None
    check_palette(mapping, option)
    return mapping


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_palette(palette: Mapping[int, int], option: str = "palette") -> None:
    """Grey values 0..255, class indices covering 0..K without gaps (K+1 classes)."""
    if not palette:
        raise ConfigError(f"{option}: empty palette")
    for grey, index in palette.items():
        if not _is_int(grey) or not 0 <= grey <= 255:
            raise ConfigError(f"{option}: grey value {grey!r} is not an integer in 0..255")
        if not _is_int(index) or index < 0:
            raise ConfigError(f"{option}: class index {index!r} is not a non-negative integer")
    classes = set(palette.values())
    if classes != set(range(max(classes) + 1)):
        missing = sorted(set(range(max(classes) + 1)) - classes)
        raise ConfigError(
            f"{option}: class indices must cover 0..{max(classes)}; missing {missing}"
        )


def _palette_meta(palette: Mapping[int, int]) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Class names and the grey value written for each class (first grey listed per class)."""
    n = max(palette.values()) + 1
    grey_for: dict[int, int] = {}
    for grey, index in palette.items():
        grey_for.setdefault(int(index), int(grey))
    greys = tuple(grey_for[i] for i in range(n))
    if dict(palette) == WBC_PALETTE_MAP:
        return WBC_CLASS_NAMES, WBC_PALETTE
    return tuple(f"class{i}" for i in range(n)), greys


# --------------------------------------------------------------------------- folders


def _files(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    """Files of ``folder`` with one of ``suffixes`` by stem; a stem used twice is an error."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        if path.suffix.lower() not in suffixes:
            continue
        if path.stem in found:
            raise DataError(
                f"two files share the stem {path.stem!r}: {found[path.stem]} and {path}"
            )
        found[path.stem] = path
    return found


def find_pairs(folder: str | os.PathLike[str]) -> list[tuple[str, Path, Path]]:
    """``(stem, image, mask)`` for each pair in ``folder`` (either layout), sorted by stem."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"dataset folder not found: {folder}")
    if (folder / "images").is_dir() and (folder / "masks").is_dir():
        images = _files(folder / "images", IMAGE_SUFFIXES)
        masks = _files(folder / "masks", MASK_SUFFIXES)
        where = f"{folder / 'images'} and {folder / 'masks'}"
    else:
        images = _files(folder, _FLAT_IMAGE_SUFFIXES)
        masks = _files(folder, (".png",))
        where = str(folder)
    if not images and not masks:
        raise DataError(
            f"no image/mask pairs in {where} (expected images/ + masks/ sub-folders, or "
            ".bmp/.jpg/.tif images beside .png masks)"
        )
    for stem, image in images.items():
        if stem not in masks:
            raise DataError(f"image {image} has no mask (looked for {stem}.* in the masks)")
    for stem, mask in masks.items():
        if stem not in images:
            raise DataError(f"mask {mask} has no image (looked for {stem}.* in the images)")
    return [(stem, images[stem], masks[stem]) for stem in sorted(images)]


def load_pair(
    image_path: Path, mask_path: Path, palette: Mapping[int, int]
) -> tuple[np.ndarray, np.ndarray, int]:
    """Read one pair: ``(image RGB, mask class indices, off-palette pixel count)``."""
    image = read_image(image_path)
    grey = read_mask(mask_path)
    if image.shape[:2] != grey.shape:
        h, w = image.shape[:2]
        mh, mw = grey.shape
        raise DataError(
            f"size mismatch: image {image_path} is {w}x{h} but mask {mask_path} is {mw}x{mh}"
        )
    classes, off = mask_to_classes(grey, palette)
    return image, classes, off


def _load_pairs(name: str, folder: Path, palette: Mapping[int, int]) -> SegmentationDataset:
    names, greys = _palette_meta(palette)
    samples = []
    problems = []
    for stem, image_path, mask_path in find_pairs(folder):
        image, mask, off = load_pair(image_path, mask_path, palette)
        if off:
            message = (
                f"{mask_path}: {off} pixels with values off the palette "
                f"{sorted(palette)} were mapped to the nearest palette value"
            )
            problems.append(message)
            warnings.warn(message, DataWarning, stacklevel=3)
        samples.append(Sample(stem, image, mask, str(image_path)))
    return SegmentationDataset(
        name=name,
        class_names=names,
        palette=greys,
        samples=tuple(samples),
        warnings=tuple(problems),
    )


def wbc1_root(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The folder holding ``Dataset 1/``: the data dir, else ``<data dir>/segmentation_WBC``."""
    base = resolve_data_dir(data_dir)
    candidates = (base, base / WBC1_FOLDER)
    for root in candidates:
        if (root / WBC1_SUBDIR).is_dir():
            return root
    looked = " and ".join(str(root / WBC1_SUBDIR) for root in candidates)
    raise DataError(
        f"wbc1 data not found: looked for {looked}; run `bench data fetch wbc1` "
        "or pass --data-dir pointing at a folder that holds 'Dataset 1/'"
    )


# --------------------------------------------------------------------------- entry points


def load_dataset(
    spec: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    synthetic_count: int = 60,
    synthetic_size: int = 120,
    seed: int = 0,
    palette: dict[int, int] | None = None,
) -> SegmentationDataset:
    """Load ``wbc1``, ``synthetic`` or ``folder:PATH`` into memory (see the module docstring).

    ``palette`` (grey value -> class index) applies to ``wbc1`` and ``folder:`` datasets;
    ``synthetic_count``, ``synthetic_size`` and ``seed`` to ``synthetic`` only.
    """
    if palette is not None:
        check_palette(palette)
    if spec == "synthetic":
        if palette is not None:
            raise ConfigError("palette (--palette) does not apply to the synthetic dataset")
        from bench.synthetic import synthetic_pairs

        pairs = synthetic_pairs(synthetic_count, synthetic_size, seed)
        return SegmentationDataset(
            name="synthetic",
            class_names=WBC_CLASS_NAMES,
            palette=WBC_PALETTE,
            samples=tuple(Sample(i, image, mask) for i, image, mask in pairs),
        )
    if spec == "wbc1":
        root = wbc1_root(data_dir)
        return _load_pairs("wbc1", root / WBC1_SUBDIR, palette or WBC_PALETTE_MAP)
    if spec.startswith("folder:"):
        raw = spec[len("folder:") :]
        if not raw:
            raise ConfigError("dataset 'folder:' needs a path, e.g. folder:/data/my_cells")
        folder = Path(raw).expanduser().resolve()
        return _load_pairs(f"folder:{folder}", folder, palette or WBC_PALETTE_MAP)
    raise ConfigError(f"unknown dataset {spec!r}; known: {', '.join(available_datasets())}")


def dataset_info(dataset: SegmentationDataset) -> dict[str, Any]:
    """Counts, sizes, class pixel fractions and protocol split sizes: what to check before a run."""
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
        "protocols": _protocol_split_sizes(dataset),
        "warnings": list(dataset.warnings),
    }


def _protocol_split_sizes(dataset: SegmentationDataset) -> dict[str, Any]:
    """``bench.protocols.split_sizes``; empty while that module is not installed."""
    try:
        from bench import protocols
    except ModuleNotFoundError as error:
        if error.name != "bench.protocols":
            raise
        return {}
    return protocols.split_sizes(dataset)
