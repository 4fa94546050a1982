"""Image and mask readers: conversions, strict decoding, palette mapping."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from bench.errors import DataError
from bench.images import MAX_IMAGE_PIXELS, mask_to_classes, read_image, read_mask, write_mask

WBC = {0: 0, 128: 1, 255: 2}


def blank_png(path: Path, width: int, height: int) -> None:
    """A valid all-black 1-bit PNG of any size, written row by row: a 12000x12000 one is
    17 KB on disk and never exists decoded in memory (PIL would allocate 144 MB to save it)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    row = b"\x00" + bytes((width + 7) // 8)  # filter byte "none", then the packed bits
    compressor = zlib.compressobj(9)
    pixels = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit grey
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def _noisy_rgb(h: int = 48, w: int = 40, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "1", "CMYK"])
def test_read_image_converts_modes_to_rgb(tmp_path, mode):
    path = tmp_path / "img.png" if mode != "CMYK" else tmp_path / "img.tif"
    Image.fromarray(_noisy_rgb()).convert(mode).save(path)
    image = read_image(path)
    assert image.dtype == np.uint8
    assert image.shape == (48, 40, 3)


def test_read_image_rgb_roundtrip_bmp(tmp_path):
    pixels = _noisy_rgb()
    Image.fromarray(pixels).save(tmp_path / "a.bmp")
    assert np.array_equal(read_image(tmp_path / "a.bmp"), pixels)


def test_grey_image_channels_are_equal(tmp_path):
    grey = _noisy_rgb()[:, :, 0]
    Image.fromarray(grey).save(tmp_path / "g.png")
    image = read_image(tmp_path / "g.png")
    assert np.array_equal(image[:, :, 0], grey)
    assert np.array_equal(image[:, :, 1], grey)
    assert np.array_equal(image[:, :, 2], grey)


def test_truncated_png_raises_naming_file(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(_noisy_rgb(64, 64)).save(buffer, format="PNG")
    data = buffer.getvalue()
    path = tmp_path / "cut_in_half.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut_in_half.png"):
        read_image(path)
    with pytest.raises(DataError, match="cut_in_half.png"):
        read_mask(path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_random_bytes_raise_naming_file(tmp_path):
    path = tmp_path / "garbage.png"
    path.write_bytes(np.random.default_rng(1).bytes(500))
    with pytest.raises(DataError, match="garbage.png"):
        read_image(path)


def test_missing_file_raises(tmp_path):
    with pytest.raises(DataError, match="nope.bmp"):
        read_image(tmp_path / "nope.bmp")


def test_read_mask_grey_and_equal_channel_rgb(tmp_path):
    grey = np.array([[0, 128], [255, 128]], dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "m.png")
    Image.fromarray(np.stack([grey] * 3, axis=2)).save(tmp_path / "rgb.png")
    Image.fromarray(np.stack([grey] * 3, axis=2)).convert("RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(grey).convert("P").save(tmp_path / "p.png")
    for name in ("m.png", "rgb.png", "rgba.png", "p.png"):
        assert np.array_equal(read_mask(tmp_path / name), grey), name


def test_colour_mask_is_an_error_naming_file(tmp_path):
    colour = np.zeros((4, 4, 3), dtype=np.uint8)
    colour[0, 0] = (255, 0, 0)
    Image.fromarray(colour).save(tmp_path / "colour_mask.png")
    with pytest.raises(DataError, match="colour_mask.png"):
        read_mask(tmp_path / "colour_mask.png")


def test_16bit_mask_accepted_when_values_fit(tmp_path):
    values = np.array([[0, 128], [255, 0]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "m16.png")
    assert read_mask(tmp_path / "m16.png").tolist() == [[0, 128], [255, 0]]
    Image.fromarray(np.array([[0, 1000]], dtype=np.uint16)).save(tmp_path / "big.png")
    with pytest.raises(DataError, match="big.png"):
        read_mask(tmp_path / "big.png")


def test_mask_to_classes_maps_exact_and_nearest():
    grey = np.array([[0, 128, 255, 10], [120, 180, 250, 64]], dtype=np.uint8)
    classes, off = mask_to_classes(grey, WBC)
    assert classes.tolist() == [[0, 1, 2, 0], [1, 1, 2, 0]]  # 64 ties 0/128: lower wins
    assert off == 5
    assert classes.dtype == np.uint8


def test_mask_to_classes_clean_mask_has_no_off_pixels():
    grey = np.array([[0, 128, 255]], dtype=np.uint8)
    assert mask_to_classes(grey, WBC)[1] == 0


def test_write_mask_roundtrip(tmp_path):
    classes = np.array([[0, 1], [2, 1]], dtype=np.uint8)
    write_mask(tmp_path / "pred.png", classes, (0, 128, 255))
    grey = read_mask(tmp_path / "pred.png")
    assert grey.tolist() == [[0, 128], [255, 128]]
    assert mask_to_classes(grey, WBC)[0].tolist() == classes.tolist()
    with pytest.raises(ValueError):
        write_mask(tmp_path / "bad.png", np.array([[3]]), (0, 128, 255))


def test_blank_png_is_a_valid_png(tmp_path):
    blank_png(tmp_path / "small.png", 37, 23)
    assert read_mask(tmp_path / "small.png").shape == (23, 37)
    assert read_image(tmp_path / "small.png").max() == 0


def test_the_pixel_cap_is_4096_squared():
    assert MAX_IMAGE_PIXELS == 4096 * 4096


@pytest.mark.parametrize(
    ("width", "height"),
    [
        (4097, 4096),  # just over the cap: refused from the header by bench
        (12000, 12000),  # over Pillow's warning limit (89 Mpx): the warning is an error
        (14000, 14000),  # over Pillow's error limit (179 Mpx)
    ],
)
@pytest.mark.parametrize("reader", [read_image, read_mask])
def test_images_over_the_pixel_cap_are_refused_naming_file_and_cap(tmp_path, width, height, reader):
    path = tmp_path / f"big_{width}.png"
    blank_png(path, width, height)
    with pytest.raises(DataError) as info:
        reader(path)
    message = str(info.value)
    assert str(path) in message and str(MAX_IMAGE_PIXELS) in message and "4096x4096" in message


def test_an_image_at_the_pixel_cap_is_read(tmp_path):
    blank_png(tmp_path / "cap.png", 4096, 4096)
    assert read_mask(tmp_path / "cap.png").shape == (4096, 4096)
