"""Fuzz the image and mask readers: any bytes give an array or a DataError naming the file,
never another exception; valid images of any size round-trip exactly."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from bench.errors import DataError
from bench.images import read_image, read_mask

FUZZ = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Valid headers make the decoders go deeper than the format check.
MAGIC = {".png": b"\x89PNG\r\n\x1a\n", ".bmp": b"BM"}


def _write(directory: str, suffix: str, data: bytes) -> Path:
    path = Path(directory) / f"fuzz{suffix}"
    path.write_bytes(data)
    return path


@FUZZ
@given(
    suffix=st.sampled_from(sorted(MAGIC)),
    with_magic=st.booleans(),
    body=st.binary(max_size=2048),
)
def test_random_bytes_raise_data_error_or_decode(suffix, with_magic, body):
    data = (MAGIC[suffix] if with_magic else b"") + body
    with tempfile.TemporaryDirectory() as directory:
        path = _write(directory, suffix, data)
        for reader in (read_image, read_mask):
            try:
                array = reader(path)
            except DataError as error:
                assert str(path) in str(error)
            else:  # vanishingly rare, but then it must be a proper array
                assert array.dtype == np.uint8


@st.composite
def _shapes(draw, channels):
    shape = (draw(st.integers(1, 64)), draw(st.integers(1, 64)))
    return (*shape, channels) if channels else shape


@FUZZ
@given(suffix=st.sampled_from([".png", ".bmp"]), data=st.data())
def test_valid_images_round_trip(suffix, data):
    image = data.draw(arrays(np.uint8, _shapes(3)))
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / f"image{suffix}"
        Image.fromarray(image).save(path)
        loaded = read_image(path)
    assert loaded.dtype == np.uint8
    assert np.array_equal(loaded, image)


@FUZZ
@given(suffix=st.sampled_from([".png", ".bmp"]), data=st.data())
def test_valid_masks_round_trip(suffix, data):
    mask = data.draw(arrays(np.uint8, _shapes(0)))
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / f"mask{suffix}"
        Image.fromarray(mask).save(path)
        loaded = read_mask(path)
    assert np.array_equal(loaded, mask)


@pytest.mark.parametrize("suffix", [".png", ".bmp"])
def test_every_truncation_of_a_valid_file_is_a_data_error(tmp_path, suffix):
    path = tmp_path / f"whole{suffix}"
    Image.fromarray(np.arange(48 * 40 * 3, dtype=np.uint8).reshape(48, 40, 3)).save(path)
    whole = path.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    for length in range(0, len(whole) - 16, 97):  # IEND and BMP padding aside
        cut.write_bytes(whole[:length])
        with pytest.raises(DataError, match="cut"):
            read_image(cut)
