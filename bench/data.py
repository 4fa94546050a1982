"""Datasets for the harness: in-memory samples, the registry of dataset names, cards.

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
colour mask, an image over the pixel cap (:data:`bench.images.MAX_IMAGE_PIXELS`), a file
or folder name that is not valid UTF-8 (the stems become image IDs in CSV and JSON) or an
empty folder raise :class:`~bench.errors.DataError` naming the file.
Mask values off the palette are mapped to the nearest palette value and counted in a
warning (``dataset.warnings`` and :func:`warnings.warn`) that names the mask file: that
repairs anti-aliased or re-compressed edges. Masks in another encoding are refused instead
(:func:`check_mask_values`): values that look like class indices (all in ``0..K-1``, some
off the palette, e.g. 0/1/2 under the WBC palette) or more than
:data:`OFF_PALETTE_LIMIT` of the dataset's mask pixels off the palette.

What ``bench data info`` prints (counts, sizes, class fractions and the protocols' split
sizes) is :func:`bench.protocols.dataset_info`: protocols build on datasets, so this module
never imports :mod:`bench.protocols` (``tests/test_layering.py``).
"""

from __future__ import annotations

import importlib.resources
import os
import re
import warnings
from collections.abc import Mapping, Sequence
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

# Above this share of a dataset's mask pixels off the palette, the masks use another
# encoding and are refused. Edge damage (anti-aliasing, re-compression) is a band one or two
# pixels wide along class boundaries: a few per cent of the pixels of WBC-sized cells (none
# in the real wbc1 masks). A quarter off the palette is not damage, and nearest-value mapping
# would invent labels (64 is as near 0 as 128 under the WBC palette).
OFF_PALETTE_LIMIT = 0.25


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


def _parse_palette_items(text: str, option: str) -> tuple[dict[int, int], tuple[str, ...] | None]:
    """``GREY:CLASS`` pairs, CLASS a class index (``0:0,128:1,255:2``) or a class name
    (``0:background,255:nucleus``: indices in order of first appearance, names kept)."""
    pairs: list[tuple[str, str]] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        grey, sep, target = item.partition(":")
        if not sep or not grey.strip() or not target.strip():
            raise ConfigError(
                f"{option}: expected GREY:CLASS pairs like 0:0,128:1,255:2 or "
                f"0:background,255:nucleus, got {item!r}"
            )
        pairs.append((grey.strip(), target.strip()))
    named = [not t.lstrip("-").isdigit() for _, t in pairs]
    if any(named) and not all(named):
        raise ConfigError(
            f"{option}: give every class as an index or every class as a name, not both "
            f"(got {text!r})"
        )
    names: list[str] = []
    mapping: dict[int, int] = {}
    for grey, target in pairs:
        try:
            value = int(grey)
        except ValueError:
            raise ConfigError(f"{option}: grey value {grey!r} is not an integer") from None
        if any(named):
            if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", target):
                raise ConfigError(
                    f"{option}: class name {target!r} must start with a letter and hold "
                    "only letters, digits, '_' and '-'"
                )
            if target not in names:
                names.append(target)
            mapping[value] = names.index(target)
        else:
            mapping[value] = int(target)
    check_palette(mapping, option)
    return mapping, (tuple(names) if names else None)


def parse_palette(text: str, option: str = "--palette") -> dict[int, int]:
    """Parse ``"0:0,128:1,255:2"`` or ``"0:background,255:nucleus"`` into grey value ->
    class index, for command lines."""
    return _parse_palette_items(text, option)[0]


def parse_class_names(text: str, option: str = "--palette") -> tuple[str, ...] | None:
    """The class names a ``--palette`` gives (``0:background,255:nucleus``), else None."""
    return _parse_palette_items(text, option)[1]


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


def _palette_meta(
    palette: Mapping[int, int], class_names: Sequence[str] | None = None
) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Class names (given, the WBC ones, else ``class0..classK``) and the grey value
    written for each class (the first grey listed per class)."""
    n = max(palette.values()) + 1
    grey_for: dict[int, int] = {}
    for grey, index in palette.items():
        grey_for.setdefault(int(index), int(grey))
    greys = tuple(grey_for[i] for i in range(n))
    if class_names is not None:
        if len(class_names) != n:
            raise ConfigError(f"palette: {len(class_names)} class names for {n} classes")
        return tuple(class_names), greys
    if dict(palette) == WBC_PALETTE_MAP:
        return WBC_CLASS_NAMES, WBC_PALETTE
    return tuple(f"class{i}" for i in range(n)), greys


# --------------------------------------------------------------------------- folders


def _check_utf8(text: str, what: str) -> None:
    """Refuse a name that is not valid UTF-8 (os.fsdecode keeps such bytes as surrogates).

    Image IDs (file stems) and paths are written to CSV, JSON and Markdown as UTF-8: such a
    name would train, then fail to be written after the results of the first files were.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise DataError(
            f"{what} is not valid UTF-8; image IDs and paths are written to the results as "
            "UTF-8: rename it"
        ) from None


def _files(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    """Files of ``folder`` with one of ``suffixes`` by stem; a stem used twice is an error."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        if path.suffix.lower() not in suffixes:
            continue
        _check_utf8(path.name, f"file name {path.name!r} in {folder}")
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
    _check_utf8(str(folder), f"dataset folder {str(folder)!r}")
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


def _read_pair(image_path: Path, mask_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(image RGB, raw mask grey values)`` of one pair, their sizes checked."""
    image = read_image(image_path)
    grey = read_mask(mask_path)
    if image.shape[:2] != grey.shape:
        h, w = image.shape[:2]
        mh, mw = grey.shape
        raise DataError(
            f"size mismatch: image {image_path} is {w}x{h} but mask {mask_path} is {mw}x{mh}"
        )
    return image, grey


def load_pair(
    image_path: Path, mask_path: Path, palette: Mapping[int, int]
) -> tuple[np.ndarray, np.ndarray, int]:
    """Read one pair: ``(image RGB, mask class indices, off-palette pixel count)``."""
    image, grey = _read_pair(image_path, mask_path)
    classes, off = mask_to_classes(grey, palette)
    return image, classes, off


def check_mask_values(
    name: str,
    palette: Mapping[int, int],
    histogram: np.ndarray,
    example: Path | None,
) -> None:
    """Refuse masks in another encoding than ``palette``; nearest-value repair is for edges.

    ``histogram[v]`` counts the dataset's mask pixels of grey value ``v``; ``example`` is the
    mask with the most off-palette pixels (named in the message). Refused: values that look
    like class indices (all in ``0..K-1`` and some off the palette) and more than
    :data:`OFF_PALETTE_LIMIT` of all pixels off the palette.
    """
    keys = sorted(palette)
    on_palette = np.zeros(256, dtype=bool)
    on_palette[keys] = True
    total = int(histogram.sum())
    off = int(histogram[~on_palette].sum())
    if total == 0 or off == 0:
        return
    n_classes = max(palette.values()) + 1
    seen = np.flatnonzero(histogram)
    share = off / total
    where = f"dataset {name!r}: masks (e.g. {example})"
    if int(seen.max()) < n_classes:
        identity = ",".join(f"{i}:{i}" for i in range(n_classes))
        raise DataError(
            f"{where} hold class indices, not the palette's grey values: their values are "
            f"{', '.join(str(int(v)) for v in seen)} while the palette expects {keys}; "
            f"{share:.1%} of the pixels would be mapped to the nearest palette value. Pass "
            f"--palette {identity} to read them as class indices"
        )
    if share > OFF_PALETTE_LIMIT:
        common = ", ".join(
            f"{int(v)} ({histogram[v] / total:.1%})"
            for v in np.argsort(-histogram, kind="stable")[:6]
            if histogram[v]
        )
        if len(seen) == n_classes:
            guess = ",".join(f"{int(v)}:{i}" for i, v in enumerate(seen))
            hint = f"--palette {guess} if these values are the classes in order"
        else:
            hint = "--palette GREY:CLASS,... naming the values the masks use"
        raise DataError(
            f"{where} do not use the palette {keys}: {share:.1%} of their pixels are off it "
            f"(at most {OFF_PALETTE_LIMIT:.0%} is repaired as edge damage); the most common "
            f"values are {common}. Pass {hint}"
        )


def _load_pairs(
    name: str,
    folder: Path,
    palette: Mapping[int, int],
    class_names: Sequence[str] | None = None,
) -> SegmentationDataset:
    names, greys = _palette_meta(palette, class_names)
    samples = []
    problems = []
    histogram = np.zeros(256, dtype=np.int64)  # raw mask values over the whole dataset
    worst: tuple[int, Path | None] = (0, None)
    for stem, image_path, mask_path in find_pairs(folder):
        image, grey = _read_pair(image_path, mask_path)
        histogram += np.bincount(grey.ravel(), minlength=256)
        mask, off = mask_to_classes(grey, palette)
        if off:
            problems.append(
                f"{mask_path}: {off} pixels with values off the palette "
                f"{sorted(palette)} were mapped to the nearest palette value"
            )
            worst = max(worst, (off, mask_path), key=lambda item: item[0])
        samples.append(Sample(stem, image, mask, str(image_path)))
    # Before any warning: a refused dataset should say one thing, not warn per mask first.
    check_mask_values(name, palette, histogram, worst[1])
    for message in problems:
        warnings.warn(message, DataWarning, stacklevel=3)
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
    class_names: Sequence[str] | None = None,
) -> SegmentationDataset:
    """Load ``wbc1``, ``synthetic`` or ``folder:PATH`` into memory (see the module docstring).

    ``palette`` (grey value -> class index) and ``class_names`` (one per class index)
    apply to ``wbc1`` and ``folder:`` datasets; ``synthetic_count``, ``synthetic_size`` and
    ``seed`` to ``synthetic`` only.
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
        return _load_pairs("wbc1", root / WBC1_SUBDIR, palette or WBC_PALETTE_MAP, class_names)
    if spec.startswith("folder:"):
        raw = spec[len("folder:") :]
        if not raw:
            raise ConfigError("dataset 'folder:' needs a path, e.g. folder:/data/my_cells")
        folder = Path(raw).expanduser().resolve()
        return _load_pairs(f"folder:{folder}", folder, palette or WBC_PALETTE_MAP, class_names)
    raise ConfigError(f"unknown dataset {spec!r}; known: {', '.join(available_datasets())}")
