"""``bench predict``: a trained cell segments new images exactly as its run's evaluation did,
and every bad input is refused with exit status 2 before anything is written."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.cli import main
from bench.images import read_image, read_mask
from bench.predict import MANIFEST_NAME
from bench.run_dir import RunDir

ARCH = "unet_thesis"
CHECKPOINT = f"checkpoints/{ARCH}_seed0_fold0.pt"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny deterministic run (one epoch of unet_thesis on 12 synthetic 48x48 images)."""
    out = tmp_path_factory.mktemp("predict") / "run"
    argv = ["run", ARCH, "--dataset", "synthetic", "--synthetic-count", "12"]
    argv += ["--synthetic-size", "48", "--num-folds", "3", "--width", "0.0625", "--epochs", "1"]
    argv += ["--batch-size", "4", "--progress", "off", "--deterministic", "--out", str(out)]
    assert main(argv) == 0
    return out


@pytest.fixture
def run_copy(trained: Path, tmp_path: Path) -> Path:
    """A copy of the tiny run a test may edit (config.json, checkpoints)."""
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy


def checksums(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative path -> SHA-256): to show nothing was touched."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def edit_config(run: Path, edit) -> None:
    path = run / "config.json"
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))


def refused(argv: list[str], capsys) -> str:
    """Run ``bench`` expecting exit status 2; its error message."""
    capsys.readouterr()  # what earlier commands of the test printed
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("bench: error: ")
    return err


# --------------------------------------------------------------------------- predictions


def test_predict_reproduces_the_runs_saved_predictions(trained: Path, tmp_path: Path) -> None:
    run = RunDir(trained)
    ids = run.figure_input_ids()
    assert ids  # the run kept inputs of its first test images
    out = tmp_path / "out"
    assert (
        main(
            ["predict", str(trained / CHECKPOINT), *map(str, map(run.input_path, ids))]
            + ["--out", str(out)]
        )
        == 0
    )
    for image_id in ids:
        ours = read_mask(out / f"{image_id}.png")
        saved = read_mask(run.prediction_path(ARCH, 0, image_id, 0))
        np.testing.assert_array_equal(ours, saved, err_msg=image_id)
        overlay = np.asarray(Image.open(out / f"{image_id}_overlay.png"))
        assert overlay.shape == (*saved.shape, 3) and overlay.dtype == np.uint8
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert sorted(manifest["predictions"]) == ids
    assert manifest["predictions"][ids[0]]["architecture"] == ARCH


def test_one_test_image_pixel_for_pixel(trained: Path, tmp_path: Path) -> None:
    """The issue's check: one test image's input gives the run's own saved prediction."""
    run = RunDir(trained)
    image_id = run.figure_input_ids()[0]
    out = tmp_path / "out"
    argv = ["predict", str(trained / CHECKPOINT), str(run.input_path(image_id)), "--out", str(out)]
    assert main(argv) == 0
    ours = np.asarray(Image.open(out / f"{image_id}.png"))
    saved = np.asarray(Image.open(run.prediction_path(ARCH, 0, image_id, 0)))
    assert ours.dtype == saved.dtype and ours.shape == saved.shape
    assert (ours == saved).all()
    assert set(np.unique(ours)) <= {0, 128, 255}  # the dataset's palette


def test_a_smaller_image_is_padded_and_cropped_back(trained: Path, tmp_path: Path) -> None:
    """An image smaller than the input size is predicted as its zero-padded version is,
    cropped back to its own size (as the runner pads test images)."""
    run = RunDir(trained)
    image = read_image(run.input_path(run.figure_input_ids()[0]))
    small = image[:30, :40]
    padded = np.zeros_like(image)
    padded[:30, :40] = small
    Image.fromarray(small).save(tmp_path / "small.png")
    Image.fromarray(padded).save(tmp_path / "padded.png")
    out = tmp_path / "out"
    argv = ["predict", str(trained / CHECKPOINT), str(tmp_path / "small.png")]
    assert main([*argv, str(tmp_path / "padded.png"), "--out", str(out)]) == 0
    small_mask = read_mask(out / "small.png")
    assert small_mask.shape == (30, 40)
    np.testing.assert_array_equal(small_mask, read_mask(out / "padded.png")[:30, :40])
    assert np.asarray(Image.open(out / "small_overlay.png")).shape == (30, 40, 3)


def test_earlier_predictions_may_be_overwritten_and_kept(trained: Path, tmp_path: Path) -> None:
    run = RunDir(trained)
    first, second = (str(run.input_path(i)) for i in run.figure_input_ids()[:2])
    out = tmp_path / "out"
    checkpoint = str(trained / CHECKPOINT)
    assert main(["predict", checkpoint, first, "--out", str(out)]) == 0
    assert main(["predict", checkpoint, first, second, "--out", str(out)]) == 0
    assert main(["predict", checkpoint, second, "--out", str(out)]) == 0
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert sorted(manifest["predictions"]) == sorted(Path(p).stem for p in (first, second))
    assert len(list(out.iterdir())) == 5  # two masks, two overlays, the manifest


# --------------------------------------------------------------------------- refusals


def test_out_with_other_files_is_refused_and_untouched(
    trained: Path, tmp_path: Path, capsys
) -> None:
    run = RunDir(trained)
    image = str(run.input_path(run.figure_input_ids()[0]))
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "scan.png").write_bytes(b"not ours")
    before, run_before = checksums(out), checksums(trained)
    err = refused(["predict", str(trained / CHECKPOINT), image, "--out", str(out)], capsys)
    assert "notes.txt" in err and "scan.png" in err
    assert checksums(out) == before
    assert checksums(trained) == run_before


def test_out_that_was_an_earlier_out_plus_a_foreign_file_is_refused(
    trained: Path, tmp_path: Path, capsys
) -> None:
    run = RunDir(trained)
    image = str(run.input_path(run.figure_input_ids()[0]))
    out = tmp_path / "out"
    argv = ["predict", str(trained / CHECKPOINT), image, "--out", str(out)]
    assert main(argv) == 0
    (out / "extra").mkdir()
    before = checksums(out)
    assert "extra" in refused(argv, capsys)
    assert checksums(out) == before


def test_the_runs_own_prediction_folder_is_refused_as_out(
    trained: Path, tmp_path: Path, capsys
) -> None:
    run = RunDir(trained)
    image = str(run.input_path(run.figure_input_ids()[0]))
    before = checksums(trained)
    out = trained / "predictions" / ARCH
    refused(["predict", str(trained / CHECKPOINT), image, "--out", str(out)], capsys)
    assert checksums(trained) == before


def test_an_unreadable_image_is_refused_before_writing(
    trained: Path, tmp_path: Path, capsys
) -> None:
    run = RunDir(trained)
    good = str(run.input_path(run.figure_input_ids()[0]))
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    out = tmp_path / "out"
    err = refused(["predict", str(trained / CHECKPOINT), good, str(bad), "--out", str(out)], capsys)
    assert str(bad) in err
    assert not out.exists()


def test_a_missing_image_is_refused(trained: Path, tmp_path: Path, capsys) -> None:
    missing = tmp_path / "nowhere.png"
    err = refused(
        ["predict", str(trained / CHECKPOINT), str(missing), "--out", str(tmp_path / "o")], capsys
    )
    assert str(missing) in err


def test_an_image_larger_than_the_input_size_is_refused(
    trained: Path, tmp_path: Path, capsys
) -> None:
    big = tmp_path / "big.png"
    Image.fromarray(np.zeros((48, 60, 3), dtype=np.uint8)).save(big)
    out = tmp_path / "out"
    err = refused(["predict", str(trained / CHECKPOINT), str(big), "--out", str(out)], capsys)
    assert "60x48" in err and "input size of 48x48" in err
    assert not out.exists()


def test_two_images_of_one_name_are_refused(trained: Path, tmp_path: Path, capsys) -> None:
    run = RunDir(trained)
    image = run.input_path(run.figure_input_ids()[0])
    (tmp_path / "a").mkdir()
    twin = tmp_path / "a" / image.name
    shutil.copy(image, twin)
    err = refused(
        ["predict", str(trained / CHECKPOINT), str(image), str(twin), "--out", str(tmp_path / "o")],
        capsys,
    )
    assert "same name" in err


@pytest.mark.parametrize(
    "where",
    ["elsewhere/unet_thesis_seed0_fold0.pt", "resume/unet_thesis_seed0_fold0.pt", "model.pt"],
)
def test_a_file_that_is_not_a_runs_final_checkpoint_is_refused(
    trained: Path, tmp_path: Path, where: str, capsys
) -> None:
    path = tmp_path / where
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(trained / CHECKPOINT, path)
    image = str(RunDir(trained).input_path(RunDir(trained).figure_input_ids()[0]))
    err = refused(["predict", str(path), image, "--out", str(tmp_path / "o")], capsys)
    assert str(path) in err
    assert not (tmp_path / "o").exists()


def test_a_checkpoints_folder_outside_a_run_directory_is_refused(
    trained: Path, tmp_path: Path, capsys
) -> None:
    path = tmp_path / "checkpoints" / "unet_thesis_seed0_fold0.pt"
    path.parent.mkdir()
    shutil.copy(trained / CHECKPOINT, path)
    image = str(RunDir(trained).input_path(RunDir(trained).figure_input_ids()[0]))
    err = refused(["predict", str(path), image, "--out", str(tmp_path / "o")], capsys)
    assert "not a bench run directory" in err


def test_a_damaged_checkpoint_is_refused(run_copy: Path, tmp_path: Path, capsys) -> None:
    (run_copy / CHECKPOINT).write_bytes(b"PK\x03\x04 not a checkpoint")
    image = str(RunDir(run_copy).input_path(RunDir(run_copy).figure_input_ids()[0]))
    err = refused(
        ["predict", str(run_copy / CHECKPOINT), image, "--out", str(tmp_path / "o")], capsys
    )
    assert "not a readable bench checkpoint" in err
    assert not (tmp_path / "o").exists()


def test_a_checkpoint_that_does_not_fit_the_rebuilt_model_is_refused(
    run_copy: Path, tmp_path: Path, capsys
) -> None:
    """config.json says width 0.25; the weights are of width 0.0625."""
    edit_config(run_copy, lambda meta: meta["config"].update(width=0.25))
    image = str(RunDir(run_copy).input_path(RunDir(run_copy).figure_input_ids()[0]))
    err = refused(
        ["predict", str(run_copy / CHECKPOINT), image, "--out", str(tmp_path / "o")], capsys
    )
    assert "do not fit" in err and "width 0.25" in err
    assert not (tmp_path / "o").exists()


def rename_architecture(run: Path, name: str, plugins: list[str]) -> Path:
    """Make the run's cell one of architecture ``name`` (and its plugins ``plugins``)."""

    def edit(meta: dict) -> None:
        meta["config"]["architectures"] = [name]
        meta["config"]["plugins"] = plugins
        meta["architectures"] = {name: meta["architectures"][ARCH]}

    edit_config(run, edit)
    state = torch.load(run / CHECKPOINT, weights_only=True)
    state["architecture"] = name
    path = run / "checkpoints" / f"{name}_seed0_fold0.pt"
    torch.save(state, path)
    return path


def test_an_unknown_architecture_is_refused_with_a_suggestion(
    run_copy: Path, tmp_path: Path, capsys
) -> None:
    checkpoint = rename_architecture(run_copy, "unet_thesiss", [])
    image = str(RunDir(run_copy).input_path(RunDir(run_copy).figure_input_ids()[0]))
    err = refused(["predict", str(checkpoint), image, "--out", str(tmp_path / "o")], capsys)
    assert "unknown architecture 'unet_thesiss'" in err and "did you mean unet_thesis" in err


def test_an_architecture_whose_plugin_cannot_be_loaded_is_refused(
    run_copy: Path, tmp_path: Path, capsys
) -> None:
    plugin = str(tmp_path / "gone" / "my_plugin.py")
    checkpoint = rename_architecture(run_copy, "my_net", [plugin])
    image = str(RunDir(run_copy).input_path(RunDir(run_copy).figure_input_ids()[0]))
    err = refused(["predict", str(checkpoint), image, "--out", str(tmp_path / "o")], capsys)
    assert plugin in err and "cannot be loaded" in err


def test_an_architecture_from_a_plugin_is_rebuilt_from_it(
    run_copy: Path, tmp_path: Path, fresh_registry
) -> None:
    """A run's plugin (config.json ``plugins``) is loaded to rebuild its architecture."""
    plugin = tmp_path / "plugin.py"
    plugin.write_text(
        "from architectures import register_architecture, build\n\n"
        "@register_architecture('thesis_again')\n"
        "def thesis_again(num_classes=3, in_channels=3, width=1.0):\n"
        "    return build('unet_thesis', num_classes=num_classes, in_channels=in_channels, "
        "width=width)\n"
    )
    checkpoint = rename_architecture(run_copy, "thesis_again", [str(plugin)])
    run = RunDir(run_copy)
    image_id = run.figure_input_ids()[0]
    out = tmp_path / "o"
    assert main(["predict", str(checkpoint), str(run.input_path(image_id)), "--out", str(out)]) == 0
    np.testing.assert_array_equal(
        read_mask(out / f"{image_id}.png"), read_mask(run.prediction_path(ARCH, 0, image_id, 0))
    )


def test_refusals_that_need_no_model_do_not_import_torch(trained: Path, tmp_path: Path) -> None:
    """``bench predict`` imports torch only once the inputs are known to be good."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    image = str(RunDir(trained).input_path(RunDir(trained).figure_input_ids()[0]))
    argv = ["predict", str(trained / CHECKPOINT), image, "--out", str(out)]
    code = (
        "import sys\nfrom bench.cli import main\n"
        f"status = main({argv!r})\n"
        "print(status, 'torch' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.split() == ["2", "False"], result.stderr
