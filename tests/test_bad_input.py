"""Bad input to `bench run`: exit status 2 and a message that names the culprit.

Covered elsewhere, not repeated here (library level unless said):
- `--epochs 0` through the CLI: tests/test_config.py::test_cli_reports_bad_epochs_with_exit_2;
  negative epochs and other values: test_config.py::test_invalid_values_name_the_option.
- TOML unknown keys and wrong types: test_config.py::test_bad_toml_names_the_key_and_file
  (one CLI case below checks the exit status).
- unknown dataset: test_data.py::test_available_and_unknown, test_cmd_data.py (`data info`).
- missing wbc1 data: test_data.py::test_wbc1_missing_names_both_places_and_the_fix.
- truncated PNG / corrupt image / mask: test_data.py::test_truncated_png_names_the_file,
  test_truncated_image_names_the_file, test_unreadable_mask_names_the_file;
  test_images.py::test_random_bytes_raise_naming_file.
- image/mask size mismatch: test_data.py::test_size_mismatch_names_the_files.
- empty folder: test_data.py::test_empty_folder_names_the_folder.
- plugin with the wrong output shape: test_plugins.py::
  test_plugin_file_wrong_shape_names_file_and_architecture.
- plugin exiting or interrupted in its forward, entry points doing so: test_plugins.py.
- mask encodings (edge damage repaired, indices accepted with --palette), a non-UTF-8 folder
  name, images just over and at the pixel cap: test_data.py, test_images.py.
The cases below drive the whole CLI (bench.cli.main) for each of these kinds of input; the
ones from "Refused before anything is written" on also check that nothing was written: the
--out directory does not appear and every file of the dataset is unchanged (SHA-256).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.cli import main
from bench.config import SEED_MAX, WIDTH_MAX
from bench.run_dir import FORMAT_VERSION

PLUGINS = Path(__file__).parent / "plugins"
RUN = ["run", "unet_thesis", "--width", "0.0625", "--epochs", "1", "--batch-size", "2"]
SYNTHETIC = ["--dataset", "synthetic", "--synthetic-count", "6", "--synthetic-size", "32"]


def run_fails(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run `bench` and return its stderr, asserting the bad-input exit status."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    return err


def folder_dataset(tmp_path: Path) -> Path:
    """Three valid image/mask pairs in images/ and masks/."""
    rng = np.random.default_rng(0)
    for i in range(3):
        image = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
        mask = np.array([0, 128, 255], dtype=np.uint8)[rng.integers(0, 3, (40, 40))]
        (tmp_path / "data" / "images").mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(tmp_path / "data" / "images" / f"img{i}.png")
        Image.fromarray(mask).save(tmp_path / "data" / "masks" / f"img{i}.png")
    return tmp_path / "data"


def test_unknown_architecture(capsys):
    err = run_fails(["run", "no_such_net", *SYNTHETIC], capsys)
    assert "no architecture matches 'no_such_net'" in err


def test_unknown_dataset(capsys):
    err = run_fails([*RUN, "--dataset", "wbc2"], capsys)
    assert "wbc2" in err


def test_missing_data_dir(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    err = run_fails([*RUN, "--dataset", f"folder:{missing}"], capsys)
    assert str(missing) in err


def test_wbc1_missing_from_data_dir(tmp_path, capsys):
    err = run_fails([*RUN, "--dataset", "wbc1", "--data-dir", str(tmp_path)], capsys)
    assert str(tmp_path) in err


def test_corrupt_image(tmp_path, capsys):
    data = folder_dataset(tmp_path)
    bad = data / "images" / "img1.png"
    bad.write_bytes(os.urandom(300))
    err = run_fails([*RUN, "--dataset", f"folder:{data}"], capsys)
    assert str(bad) in err


def test_truncated_png(tmp_path, capsys):
    data = folder_dataset(tmp_path)
    bad = data / "masks" / "img2.png"
    bad.write_bytes(bad.read_bytes()[:60])
    err = run_fails([*RUN, "--dataset", f"folder:{data}"], capsys)
    assert str(bad) in err


def test_image_and_mask_sizes_differ(tmp_path, capsys):
    data = folder_dataset(tmp_path)
    Image.new("L", (33, 40)).save(data / "masks" / "img0.png")
    err = run_fails([*RUN, "--dataset", f"folder:{data}"], capsys)
    assert "img0" in err


def test_zero_images(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    err = run_fails([*RUN, "--dataset", f"folder:{tmp_path / 'empty'}"], capsys)
    assert str(tmp_path / "empty") in err


@pytest.mark.parametrize("epochs", ["0", "-2"])
def test_epochs_not_positive(epochs, capsys):
    err = run_fails(["run", "unet_thesis", *SYNTHETIC, "--epochs", epochs], capsys)
    assert "--epochs must be positive" in err


def test_batch_size_larger_than_the_training_set(tmp_path, capsys):
    # 6 images, 3 folds: 4 training images.
    argv = [*RUN, *SYNTHETIC, "--num-folds", "3", "--batch-size", "10"]
    err = run_fails([*argv, "--out", str(tmp_path / "run")], capsys)
    assert "--batch-size 10 is larger than the training set (4 images)" in err


@pytest.mark.parametrize(
    ("text", "match"),
    [("epochz = 3\n", "unknown key 'epochz'"), ('epochs = "three"\n', "'epochs' must be int")],
)
def test_toml_config(tmp_path, capsys, text, match):
    config = tmp_path / "bench.toml"
    config.write_text(text)
    err = run_fails([*RUN, "--config", str(config)], capsys)
    assert match in err and str(config) in err


def test_plugin_with_the_wrong_shape(capsys):
    plugin = PLUGINS / "wrong_shape_plugin.py"
    err = run_fails([*RUN, *SYNTHETIC, "--plugin", str(plugin)], capsys)
    assert "wrong_shape_plugin.py" in err and "test_wrong_shape_net" in err


def test_out_dir_is_a_file(tmp_path, capsys):
    out = tmp_path / "a_file"
    out.write_text("")
    err = run_fails([*RUN, *SYNTHETIC, "--num-folds", "3", "--out", str(out)], capsys)
    assert f"--out {out}: exists and is not a directory" in err


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can write anywhere"
)
def test_out_dir_not_writable(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        argv = [*RUN, *SYNTHETIC, "--num-folds", "3", "--out", str(locked / "run")]
        err = run_fails(argv, capsys)
    finally:
        locked.chmod(0o700)
    assert f"--out {locked / 'run'}: cannot write there" in err


def test_run_dir_of_an_incompatible_version(tmp_path, capsys):
    out = tmp_path / "old_run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"format_version": FORMAT_VERSION + 1}))
    err = run_fails([*RUN, *SYNTHETIC, "--num-folds", "3", "--out", str(out)], capsys)
    assert "written by an incompatible version" in err and str(out) in err


# --------------------------------------------------------------- refused before anything is written


def snapshot(*roots: Path) -> dict[str, str | None]:
    """SHA-256 of every file (and a mark for every folder) under ``roots``; None: missing."""
    state: dict[str, str | None] = {}
    for root in roots:
        if not root.exists():
            state[str(root)] = None
            continue
        for path in sorted([root, *root.rglob("*")]):
            is_file = path.is_file() and not path.is_symlink()
            state[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest() if is_file else "dir"
    return state


def refused(argv: list[str], capsys: pytest.CaptureFixture[str], out: Path, *watched: Path) -> str:
    """Run ``bench run ... --out OUT``: exit 2, OUT not created, ``watched`` unchanged."""
    assert not out.exists()
    before = snapshot(*watched)
    err = run_fails([*argv, "--out", str(out)], capsys)
    assert not out.exists(), "a refused run created its --out directory"
    assert snapshot(*watched) == before
    return err


@pytest.mark.parametrize(
    ("arch", "encoder", "hint"),
    [
        ("smp_unet", "nope", "(e.g. resnet18, resnet34"),
        ("smp_unet", "resnt18", "(did you mean resnet18"),
        ("unet_thesis", "resnt18", "(did you mean resnet18"),  # a typo is a typo
        ("smp_fpn", "tu-resnt18", "(did you mean tu-resnet18"),
    ],
)
def test_unknown_encoder(tmp_path, capsys, arch, encoder, hint):
    argv = ["run", arch, *SYNTHETIC, "--epochs", "1", "--encoder", encoder]
    err = refused(argv, capsys, tmp_path / "run")
    assert f"--encoder: unknown encoder {encoder!r}" in err and hint in err


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--seeds", "-5"),
        ("--seeds", "1" * 22),
        ("--seeds", str(SEED_MAX + 1)),
        ("--split-seed", "-1"),
        ("--split-seed", "1" * 22),
    ],
)
def test_seed_out_of_range(tmp_path, capsys, flag, value):
    err = refused([*RUN, *SYNTHETIC, flag, value], capsys, tmp_path / "run")
    assert f"{flag} must be in 0..4294967295" in err and "numpy" in err and value in err


@pytest.mark.parametrize("width", ["10000", "4.01"])
def test_width_out_of_range(tmp_path, capsys, width):
    argv = ["run", "unet_thesis", *SYNTHETIC, "--epochs", "1", "--width", width]
    err = refused(argv, capsys, tmp_path / "run")
    assert f"--width must be in (0, {WIDTH_MAX:g}]" in err and width in err


def test_the_range_ends_are_accepted():
    from bench.config import RunConfig, validate

    validate(RunConfig(architectures=("x",), seeds=(0, SEED_MAX), split_seed=SEED_MAX, width=4))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("import sys\nsys.exit(0)\n", "called sys.exit(0) during its import"),
        # What Ctrl-C raises while a plugin hangs at import.
        ("raise KeyboardInterrupt\n", "interrupted (Ctrl-C) during its import"),
    ],
)
def test_plugin_exiting_or_interrupted_at_import(tmp_path, capsys, body, message):
    plugin = tmp_path / "plugins" / "quitter.py"
    plugin.parent.mkdir()
    plugin.write_text(body)
    argv = [*RUN, *SYNTHETIC, "--plugin", str(plugin)]
    err = refused(argv, capsys, tmp_path / "run")  # (Python may cache the plugin's bytecode)
    assert f"plugin file {str(plugin)!r}" in err and message in err


def test_class_index_masks(tmp_path, capsys):
    data = folder_dataset(tmp_path)
    for mask in (data / "masks").iterdir():  # 0/128/255 -> class indices 0/1/2
        grey = np.asarray(Image.open(mask))
        Image.fromarray(np.searchsorted([0, 128, 255], grey).astype(np.uint8)).save(mask)
    err = refused([*RUN, "--dataset", f"folder:{data}"], capsys, tmp_path / "run", data)
    assert f"folder:{data}" in err and str(data / "masks" / "img") in err
    assert "--palette 0:0,1:1,2:2" in err


def test_masks_all_off_the_palette(tmp_path, capsys):
    data = folder_dataset(tmp_path)
    for mask in (data / "masks").iterdir():  # 0/128/255 -> 10/138/245: no pixel on the palette
        grey = np.asarray(Image.open(mask)).astype(np.int64)
        Image.fromarray(np.clip(grey + 10, 0, 245).astype(np.uint8)).save(mask)
    err = refused([*RUN, "--dataset", f"folder:{data}"], capsys, tmp_path / "run", data)
    assert f"folder:{data}" in err and "100.0% of their pixels are off it" in err
    assert "--palette 10:0,138:1,245:2" in err


def test_file_name_not_utf8(tmp_path, capsys):
    data = folder_dataset(tmp_path)
    name = b"img\xff.png"  # a Latin-1 name, as os.fsdecode sees it: 'img\udcff.png'
    for sub in ("images", "masks"):
        source = os.fsencode(data / sub / "img0.png")
        try:
            os.rename(source, os.fsencode(data / sub) + b"/" + name)
        except OSError as error:  # e.g. macOS: names must be UTF-8
            pytest.skip(f"this file system refuses non-UTF-8 names: {error}")
    err = refused([*RUN, "--dataset", f"folder:{data}"], capsys, tmp_path / "run", data)
    assert repr(os.fsdecode(name)) in err and "not valid UTF-8" in err


def test_image_over_the_pixel_cap(tmp_path, capsys):
    from test_images import blank_png

    data = folder_dataset(tmp_path)
    big = data / "images" / "img1.png"
    blank_png(big, 12000, 12000)  # 17 KB on disk, 144 Mpx decoded
    err = refused([*RUN, "--dataset", f"folder:{data}"], capsys, tmp_path / "run", data)
    assert str(big) in err and "the cap is 16777216 (4096x4096) pixels per image" in err
