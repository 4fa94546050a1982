"""Datasets: the real WBC Dataset 1, data-dir resolution, folder datasets and their bad inputs."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import platformdirs
import pytest
from PIL import Image

from bench.data import (
    OFF_PALETTE_LIMIT,
    WBC_CLASS_NAMES,
    WBC_PALETTE,
    DataWarning,
    SegmentationDataset,
    available_datasets,
    card_file,
    load_card,
    load_dataset,
    parse_palette,
    resolve_data_dir,
)
from bench.errors import ConfigError, DataError
from bench.protocols import dataset_info

# --------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def wbc1(wbc_dir) -> SegmentationDataset:
    return load_dataset("wbc1", wbc_dir)


def test_wbc1_has_300_pairs_with_the_known_sizes(wbc1):
    assert wbc1.name == "wbc1"
    assert len(wbc1) == 300
    sizes = [s.image.shape[:2] for s in wbc1.samples]
    assert sum(1 for hw in sizes if hw == (120, 120)) == 224
    sides = [side for hw in sizes for side in hw]
    assert min(sides) == 88 and max(sides) == 120  # the card says 88..120 per side
    assert wbc1.warnings == ()


def test_wbc1_ids_are_sorted_stems_and_paths_point_at_bmps(wbc1, wbc_dir):
    ids = [s.image_id for s in wbc1.samples]
    assert ids == sorted(ids)
    assert ids[0] == "001" and ids[-1] == "300"
    first = Path(wbc1.samples[0].path)
    assert first == wbc_dir / "Dataset 1" / "001.bmp"


def test_wbc1_arrays_and_classes(wbc1):
    seen = set()
    for sample in wbc1.samples:
        assert sample.image.dtype == np.uint8 and sample.image.ndim == 3
        assert sample.image.shape[2] == 3
        assert sample.mask.dtype == np.uint8
        assert sample.mask.shape == sample.image.shape[:2]
        seen |= set(np.unique(sample.mask).tolist())
    assert seen == {0, 1, 2}
    assert wbc1.class_names == WBC_CLASS_NAMES
    assert wbc1.palette == WBC_PALETTE


def test_wbc1_info(wbc1):
    info = dataset_info(wbc1)
    assert info["count"] == 300
    assert info["sizes"]["120x120"] == 224
    assert sum(info["sizes"].values()) == 300
    fractions = info["class_fractions"]
    assert list(fractions) == list(WBC_CLASS_NAMES)
    assert sum(fractions.values()) == pytest.approx(1.0)
    assert fractions["background"] > fractions["cytoplasm"] > fractions["nucleus"] > 0
    assert info["warnings"] == []


def test_wbc1_found_in_the_fetch_layout(tmp_path, wbc_dir):
    (tmp_path / "segmentation_WBC").symlink_to(wbc_dir, target_is_directory=True)
    ds = load_dataset("wbc1", tmp_path)
    assert len(ds) == 300


def test_wbc1_missing_names_both_places_and_the_fix(tmp_path):
    with pytest.raises(DataError) as info:
        load_dataset("wbc1", tmp_path)
    message = str(info.value)
    assert str(tmp_path / "Dataset 1") in message
    assert str(tmp_path / "segmentation_WBC" / "Dataset 1") in message
    assert "bench data fetch wbc1" in message and "--data-dir" in message


# --------------------------------------------------------------------------- data dir


def test_data_dir_env_and_explicit_precedence(monkeypatch, tmp_path, wbc_dir):
    env_dir = tmp_path / "from_env"
    monkeypatch.setenv("BENCH_DATA_DIR", str(env_dir))
    assert resolve_data_dir(None) == env_dir
    assert resolve_data_dir(tmp_path / "explicit") == tmp_path / "explicit"
    monkeypatch.setenv("BENCH_DATA_DIR", str(wbc_dir))
    assert len(load_dataset("wbc1")) == 300  # found through the environment
    with pytest.raises(DataError, match="empty_dir"):  # the explicit argument wins
        load_dataset("wbc1", tmp_path / "empty_dir")


def test_data_dir_default_is_the_user_cache(monkeypatch):
    monkeypatch.delenv("BENCH_DATA_DIR", raising=False)
    assert resolve_data_dir(None) == Path(platformdirs.user_cache_dir("bench"))
    monkeypatch.setenv("BENCH_DATA_DIR", "")
    assert resolve_data_dir(None) == Path(platformdirs.user_cache_dir("bench"))


# --------------------------------------------------------------------------- registry, cards


def test_available_and_unknown():
    assert available_datasets() == ["folder:PATH", "synthetic", "wbc1"]
    with pytest.raises(ConfigError) as info:
        load_dataset("wbc2")
    assert "wbc2" in str(info.value)
    for name in available_datasets():
        assert name in str(info.value)
    with pytest.raises(ConfigError, match="folder:"):
        load_dataset("folder:")


def test_wbc1_card_matches_the_code_and_the_sources():
    card = load_card("wbc1")
    commit = "fa9c01622f52bccb9aeb8a6f2628f564e377767d"
    assert card["name"] == "wbc1"
    assert card["source_url"] == "https://github.com/zxaoyou/segmentation_WBC"
    assert card["archive_url"] == (
        f"https://github.com/zxaoyou/segmentation_WBC/archive/{commit}.zip"
    )
    assert card["commit"] == commit
    assert card["license"] == "GPL-3.0"
    assert "Micron" in card["citation"] and "10.1016/j.micron.2018.01.010" in card["citation"]
    assert "Jiangxi Tecom Science Corporation" in card["acknowledgement"]
    assert tuple(card["class_names"]) == WBC_CLASS_NAMES
    assert tuple(card["palette"]) == WBC_PALETTE
    assert card["layout"]["folder"] == "segmentation_WBC"
    assert card["layout"]["subdir"] == "Dataset 1"
    assert card_file(card["manifest"]).is_file()


def test_synthetic_card():
    card = load_card("synthetic")
    assert card["name"] == "synthetic"
    assert "archive_url" not in card
    assert tuple(card["class_names"]) == WBC_CLASS_NAMES


def test_no_python_package_named_datasets(repo_root):
    assert not (repo_root / "datasets" / "__init__.py").exists()


# --------------------------------------------------------------------------- folder datasets


def _pair(h: int = 20, w: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = np.array(WBC_PALETTE, dtype=np.uint8)[rng.integers(0, 3, (h, w))]
    return image, mask


def _write(folder: Path, stem: str, image_ext: str = ".bmp", **kwargs) -> None:
    image, mask = _pair(**kwargs)
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(folder / f"{stem}{image_ext}")
    Image.fromarray(mask).save(folder / f"{stem}.png")


def test_flat_folder_loads(tmp_path):
    for i, stem in enumerate(["b", "a", "c"]):
        _write(tmp_path, stem, seed=i)
    (tmp_path / "notes.csv").write_text("ignored\n")
    ds = load_dataset(f"folder:{tmp_path}")
    assert ds.name == f"folder:{tmp_path.resolve()}"
    assert [s.image_id for s in ds.samples] == ["a", "b", "c"]
    assert ds.class_names == WBC_CLASS_NAMES
    image, mask = _pair(seed=1)  # "a" was written with seed 1
    assert np.array_equal(ds.samples[0].image, image)
    assert np.array_equal(ds.samples[0].mask, np.searchsorted(WBC_PALETTE, mask))
    assert ds.samples[0].path == str(tmp_path.resolve() / "a.bmp")


def test_images_and_masks_subfolders_load(tmp_path):
    image, mask = _pair()
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(image).save(tmp_path / "images" / "x1.png")
    Image.fromarray(image).save(tmp_path / "images" / "x2.jpg")
    Image.fromarray(mask).save(tmp_path / "masks" / "x1.png")
    Image.fromarray(mask).save(tmp_path / "masks" / "x2.png")
    ds = load_dataset(f"folder:{tmp_path}")
    assert [s.image_id for s in ds.samples] == ["x1", "x2"]
    assert np.array_equal(ds.samples[0].image, image)


def test_custom_palette_gives_generic_class_names(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(_pair()[0]).save(tmp_path / "images" / "a.png")
    two_classes = (np.indices((20, 16)).sum(axis=0) % 2).astype(np.uint8)
    Image.fromarray(two_classes).save(tmp_path / "masks" / "a.png")
    ds = load_dataset(f"folder:{tmp_path}", palette={0: 0, 1: 1})
    assert ds.class_names == ("class0", "class1")
    assert ds.palette == (0, 1)
    assert set(np.unique(ds.samples[0].mask).tolist()) == {0, 1}


def test_parse_palette():
    assert parse_palette("0:0, 128:1,255:2") == {0: 0, 128: 1, 255: 2}
    with pytest.raises(ConfigError, match="--palette"):
        parse_palette("0=0")
    with pytest.raises(ConfigError, match="--palette"):
        parse_palette("0:0,300:1")
    with pytest.raises(ConfigError, match="--palette"):
        parse_palette("0:0,255:2")  # class 1 missing


def test_size_mismatch_names_the_files(tmp_path):
    image, _ = _pair(20, 16)
    _, mask = _pair(18, 16)
    Image.fromarray(image).save(tmp_path / "odd.bmp")
    Image.fromarray(mask).save(tmp_path / "odd.png")
    with pytest.raises(DataError, match=r"odd\.png") as info:
        load_dataset(f"folder:{tmp_path}")
    assert "odd.bmp" in str(info.value) and "16x20" in str(info.value)


def test_unreadable_mask_names_the_file(tmp_path):
    _write(tmp_path, "good")
    Image.fromarray(_pair()[0]).save(tmp_path / "bad.bmp")
    (tmp_path / "bad.png").write_bytes(np.random.default_rng(0).bytes(300))
    with pytest.raises(DataError, match=r"bad\.png"):
        load_dataset(f"folder:{tmp_path}")


def test_truncated_png_names_the_file(tmp_path):
    image, mask = _pair(64, 64)
    Image.fromarray(image).save(tmp_path / "t.bmp")
    buffer = io.BytesIO()
    Image.fromarray(mask).save(buffer, format="PNG")
    data = buffer.getvalue()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"t\.png"):
        load_dataset(f"folder:{tmp_path}")


def test_truncated_image_names_the_file(tmp_path):
    _write(tmp_path, "t", image_ext=".bmp")
    data = (tmp_path / "t.bmp").read_bytes()
    (tmp_path / "t.bmp").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"t\.bmp"):
        load_dataset(f"folder:{tmp_path}")


def test_image_without_mask_names_the_image(tmp_path):
    _write(tmp_path, "paired")
    Image.fromarray(_pair()[0]).save(tmp_path / "lonely.bmp")
    with pytest.raises(DataError, match=r"lonely\.bmp"):
        load_dataset(f"folder:{tmp_path}")


def test_mask_without_image_names_the_mask(tmp_path):
    _write(tmp_path, "paired")
    Image.fromarray(_pair()[1]).save(tmp_path / "orphan.png")
    with pytest.raises(DataError, match=r"orphan\.png"):
        load_dataset(f"folder:{tmp_path}")


def test_two_images_with_one_stem(tmp_path):
    _write(tmp_path, "dup", image_ext=".bmp")
    Image.fromarray(_pair()[0]).save(tmp_path / "dup.jpg")
    with pytest.raises(DataError, match="dup"):
        load_dataset(f"folder:{tmp_path}")


def test_empty_folder_names_the_folder(tmp_path):
    empty = tmp_path / "nothing_here"
    empty.mkdir()
    (empty / "README.txt").write_text("no images\n")
    with pytest.raises(DataError, match="nothing_here"):
        load_dataset(f"folder:{empty}")
    with pytest.raises(DataError, match="does_not_exist"):
        load_dataset(f"folder:{tmp_path / 'does_not_exist'}")


def test_off_palette_values_map_to_nearest_and_warn_with_count(tmp_path):
    image, _ = _pair(4, 4)
    mask = np.zeros((4, 4), dtype=np.uint8)
    mask[0, :] = 128
    mask[1, :] = 255
    mask[2, 0] = 120  # -> 128, cytoplasm
    mask[2, 1] = 250  # -> 255, nucleus
    mask[2, 2] = 3  # -> 0, background
    Image.fromarray(image).save(tmp_path / "noisy.bmp")
    Image.fromarray(mask).save(tmp_path / "noisy.png")
    with pytest.warns(DataWarning, match=r"noisy\.png: 3 pixels"):
        ds = load_dataset(f"folder:{tmp_path}")
    assert ds.samples[0].mask[2, :3].tolist() == [1, 2, 0]
    assert len(ds.warnings) == 1
    assert "noisy.png" in ds.warnings[0] and "3 pixels" in ds.warnings[0]
    assert dataset_info(ds)["warnings"] == list(ds.warnings)


def test_grey_and_rgba_images_become_rgb(tmp_path):
    _, mask = _pair(20, 16)
    rgb = _pair(20, 16, seed=5)[0]
    Image.fromarray(rgb).convert("L").save(tmp_path / "grey.bmp")
    Image.fromarray(rgb).convert("RGBA").save(tmp_path / "alpha.tif")
    for stem in ("grey", "alpha"):
        Image.fromarray(mask).save(tmp_path / f"{stem}.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean mask must not warn
        ds = load_dataset(f"folder:{tmp_path}")
    by_id = {s.image_id: s for s in ds.samples}
    assert by_id["grey"].image.shape == (20, 16, 3)
    assert np.array_equal(by_id["alpha"].image, rgb)


def test_colour_mask_names_the_file(tmp_path):
    image, _ = _pair(4, 4)
    Image.fromarray(image).save(tmp_path / "c.bmp")
    Image.fromarray(image).save(tmp_path / "c.png")
    with pytest.raises(DataError, match=r"c\.png"):
        load_dataset(f"folder:{tmp_path}")


# --------------------------------------------------------------------------- mask encodings


def _masks_folder(tmp_path: Path, values: list[int], count: int = 3) -> Path:
    """``count`` pairs whose masks use ``values`` (background, the first, on 3/4 of pixels)."""
    for i in range(count):
        rng = np.random.default_rng(i)
        choice = rng.choice(
            len(values), size=(16, 16), p=[0.75, *[0.25 / (len(values) - 1)] * (len(values) - 1)]
        )
        Image.fromarray(_pair(16, 16, seed=i)[0]).save(tmp_path / f"m{i}.bmp")
        Image.fromarray(np.array(values, dtype=np.uint8)[choice]).save(tmp_path / f"m{i}.png")
    return tmp_path


def test_class_index_masks_are_refused_with_the_palette_to_pass(tmp_path):
    folder = _masks_folder(tmp_path, [0, 1, 2])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # refused outright, not one warning per mask first
        with pytest.raises(DataError) as info:
            load_dataset(f"folder:{folder}")
    message = str(info.value)
    assert f"folder:{folder.resolve()}" in message
    assert "m0.png" in message or "m1.png" in message or "m2.png" in message
    assert "class indices" in message and "--palette 0:0,1:1,2:2" in message


def test_class_index_masks_load_with_the_identity_palette(tmp_path):
    folder = _masks_folder(tmp_path, [0, 1, 2])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = load_dataset(f"folder:{folder}", palette=parse_palette("0:0,1:1,2:2"))
    assert set(np.unique(ds.samples[0].mask).tolist()) == {0, 1, 2}


def test_two_class_index_masks_under_a_binary_palette_are_refused(tmp_path):
    folder = _masks_folder(tmp_path, [0, 1])
    with pytest.raises(DataError, match="--palette 0:0,1:1 "):
        load_dataset(f"folder:{folder}", palette={0: 0, 255: 1})


@pytest.mark.parametrize(
    ("values", "hint"),
    [
        ([10, 20, 30], "--palette 10:0,20:1,30:2"),  # every value off the palette
        ([0, 64, 192], "--palette 0:0,64:1,192:2"),  # 64 is as near 0 as 128
        ([0, 64, 100, 192], "--palette GREY:CLASS"),
    ],
)
def test_masks_mostly_off_the_palette_are_refused(tmp_path, values, hint):
    folder = _masks_folder(tmp_path, values)
    with pytest.raises(DataError) as info:
        load_dataset(f"folder:{folder}")
    message = str(info.value)
    assert f"folder:{folder.resolve()}" in message and ".png" in message
    assert "do not use the palette [0, 128, 255]" in message and hint in message


def test_edge_damage_below_the_limit_is_repaired_with_a_warning(tmp_path):
    assert OFF_PALETTE_LIMIT == 0.25
    image, mask = _pair(20, 20)
    mask[:4, :] = 127  # 80 of 400 pixels (20 %) just off the cytoplasm value
    Image.fromarray(image).save(tmp_path / "edges.bmp")
    Image.fromarray(mask).save(tmp_path / "edges.png")
    with pytest.warns(DataWarning, match=r"edges\.png: 80 pixels"):
        ds = load_dataset(f"folder:{tmp_path}")
    assert (ds.samples[0].mask[:4, :] == 1).all()
    mask[:6, :] = 127  # 120 of 400 (30 %): over the limit
    Image.fromarray(mask).save(tmp_path / "edges.png")
    with pytest.raises(DataError, match=r"30\.0% of their pixels are off it"):
        load_dataset(f"folder:{tmp_path}")


# --------------------------------------------------------------------------- names


def _non_utf8(folder: Path, name: bytes) -> Path:
    """``folder/name`` for a name that is not UTF-8; skips where the file system refuses it."""
    path = os.fsencode(folder) + b"/" + name
    try:
        with open(path, "wb"):
            pass
    except OSError as error:  # e.g. macOS: names must be UTF-8
        pytest.skip(f"this file system refuses non-UTF-8 names: {error}")
    return Path(os.fsdecode(path))


def test_file_name_not_utf8_is_refused_naming_it(tmp_path):
    _write(tmp_path, "good")
    image_path = _non_utf8(tmp_path, b"caf\xe9.bmp")
    Image.fromarray(_pair()[0]).save(image_path)
    Image.fromarray(_pair()[1]).save(tmp_path / (image_path.stem + ".png"))
    with pytest.raises(DataError) as info:
        load_dataset(f"folder:{tmp_path}")
    assert repr(image_path.name) in str(info.value) and "not valid UTF-8" in str(info.value)
    str(info.value).encode("utf-8", "backslashreplace")  # the message itself can be printed


def test_folder_name_not_utf8_is_refused(tmp_path):
    folder = _non_utf8(tmp_path, b"d\xff")
    folder.unlink()
    folder.mkdir()
    _write(folder, "a")
    with pytest.raises(DataError, match="dataset folder .* is not valid UTF-8"):
        load_dataset(f"folder:{folder}")
