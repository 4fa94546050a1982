"""Reading images and masks with Pillow, strictly.

Every reader forces a full decode (``Image.load()``) so that a truncated or corrupt file
fails here, with a :class:`~bench.errors.DataError` naming it, instead of producing a
half-grey image that silently poisons a benchmark. Pillow's ``LOAD_TRUNCATED_IMAGES`` is
never switched on. An image over :data:`MAX_IMAGE_PIXELS` (4096 x 4096) is refused from its
header, before decoding, and so is anything Pillow flags as a decompression bomb.

* Images come back as ``uint8`` arrays of shape ``(H, W, 3)`` in RGB order; grey (``L``),
  palette (``P``), ``RGBA``/``LA`` (alpha dropped), 1-bit and 16-bit images are converted.
* Masks come back as ``uint8`` arrays of shape ``(H, W)`` holding the raw grey values of
  the file. A mask stored as RGB(A) or palette (``P``) is accepted when its three colour
  channels are equal (it is grey); a real colour mask is an error naming the file.
  :func:`mask_to_classes` then maps grey values to class indices.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

from bench.atomic import atomic_write_png
from bench.errors import DataError

# Refuse to guess at missing bytes: a truncated file must raise, not load half-grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False

# Pixels per image (4096 x 4096 = 16.7 Mpx), checked from the file's header before decoding:
# a 140 KB PNG can declare 12000 x 12000 and decode to gigabytes. At the cap one image is
# 48 MiB as RGB uint8, and the data sets are held in memory and padded to the largest size.
MAX_IMAGE_PIXELS = 4096 * 4096

IMAGE_SUFFIXES = (".bmp", ".png", ".jpg", ".jpeg", ".tif", ".tiff")
MASK_SUFFIXES = (".png", ".bmp", ".tif", ".tiff", ".gif")

_READ_ERRORS = (OSError, SyntaxError, ValueError, EOFError)


def _open_decoded(path: str | os.PathLike[str], what: str) -> Image.Image:
    """Open and fully decode ``path``; any failure becomes a DataError naming the file.

    The size in the header is checked against :data:`MAX_IMAGE_PIXELS` before any pixel is
    decoded, and Pillow's own decompression-bomb warning is an error here.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} file not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height = img.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise DataError(_over_cap(what, path, f"{width}x{height} pixels"))
                img.load()
                # Detach from the file handle: the returned image holds its decoded pixels.
                return img.copy()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        # Pillow's own limit (89 Mpx) fires inside Image.open, before the check above.
        raise DataError(_over_cap(what, path, str(error))) from error
    except _READ_ERRORS as error:
        raise DataError(f"cannot read {what} {path}: {error}") from error


def _over_cap(what: str, path: Path, detail: str) -> str:
    return (
        f"{what} {path} is too large ({detail}): the cap is {MAX_IMAGE_PIXELS} "
        "(4096x4096) pixels per image (bench.images.MAX_IMAGE_PIXELS); tile or downscale it"
    )


def _wide_to_uint8(array: np.ndarray, path: Path, what: str) -> np.ndarray:
    """Accept 16/32-bit grey data only when its values already fit 0..255."""
    if array.size and (array.min() < 0 or array.max() > 255):
        raise DataError(
            f"{what} {path} has values {int(array.min())}..{int(array.max())}, "
            "outside the 8-bit range 0..255"
        )
    return array.astype(np.uint8)


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image as a ``uint8`` RGB array ``(H, W, 3)``; models expect 3 channels."""
    path = Path(path)
    img = _open_decoded(path, "image")
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        grey = _wide_to_uint8(np.asarray(img), path, "image")
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")  # resolve the palette (and any transparency) first
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.array(img, dtype=np.uint8)


def read_mask(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a mask as its raw ``uint8`` grey values ``(H, W)``.

    Colour is refused rather than converted to luminance: a colour mask encodes classes by
    hue, and guessing a grey mapping would silently mislabel pixels.
    """
    path = Path(path)
    img = _open_decoded(path, "mask")
    mode = img.mode
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return _wide_to_uint8(np.asarray(img), path, "mask")
    if mode in ("1", "L"):
        return np.array(img.convert("L"), dtype=np.uint8)
    if mode == "LA":
        return np.array(img.getchannel("L"), dtype=np.uint8)
    rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
    red, green, blue = rgb[:, :, 0], rgb[:, :, 1], rgb[:, :, 2]
    if not (np.array_equal(red, green) and np.array_equal(red, blue)):
        differing = int(np.count_nonzero((red != green) | (red != blue)))
        raise DataError(
            f"mask {path} is a colour image ({mode}, {differing} pixels with unequal "
            "channels); masks must be grey, one value per class"
        )
    return np.ascontiguousarray(red)


def mask_to_classes(grey: np.ndarray, palette: Mapping[int, int]) -> tuple[np.ndarray, int]:
    """Map grey values to class indices; values off the palette go to the NEAREST palette value.

    Returns ``(classes, off_palette_pixels)``. Nearest-value mapping repairs the usual damage
    (anti-aliased or re-compressed edges) while the count lets the caller warn about it.
    """
    if not palette:
        raise ValueError("palette is empty")
    keys = np.array(sorted(palette), dtype=np.int64)
    values = np.arange(256, dtype=np.int64)
    nearest = keys[np.abs(values[:, None] - keys[None, :]).argmin(axis=1)]  # ties: lower key
    lut = np.array([palette[int(k)] for k in nearest], dtype=np.uint8)
    histogram = np.bincount(grey.ravel(), minlength=256)
    on_palette = np.zeros(256, dtype=bool)
    on_palette[keys] = True
    off = int(histogram[~on_palette].sum())
    return lut[grey], off


def write_mask(
    path: str | os.PathLike[str], classes: np.ndarray, palette: tuple[int, ...] | list[int]
) -> None:
    """Write class indices as a grey PNG using ``palette[class] = grey`` (same as the inputs)."""
    lut = np.zeros(256, dtype=np.uint8)
    lut[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    classes = np.asarray(classes)
    if classes.size and int(classes.max()) >= len(palette):
        raise ValueError(f"class index {int(classes.max())} has no palette entry")
    atomic_write_png(Path(path), lut[classes.astype(np.uint8)])
