"""--lr-search: each architecture's learning rate picked on a validation split carved from
its training images only, recorded in cells.csv, never searched again on resume."""

from __future__ import annotations

import contextlib
import csv
import io
import json

import numpy as np
import pytest
import torch

from bench import runner
from bench.cli import main
from bench.config import DEFAULT_LR_GRID, build_config
from bench.data import load_dataset
from bench.errors import ConfigError
from bench.protocols import SplitArrays, carve_validation, get_protocol

from tiny_runs import RUN_DEFAULTS, cell_settings, on_epoch_end, run_argv

# segnet_basic learns within 6 tiny epochs at 1e-3 (validation Dice ~0.4), while 10.0
# wrecks it (~0.1): the absurd rate must lose. Two architectures, so both see the split.
ARCHITECTURES = ("segnet_basic", "unet_thesis")
GRID = (1e-3, 10.0)
ARGV = run_argv(*ARCHITECTURES, epochs=6, deterministic=True, lr_search=True, lr_grid="1e-3,10")


def rows(path):
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def image_rows(path, architecture):
    return [r for r in rows(path / "per_image.csv") if r["architecture"] == architecture]


def tiny_split():
    """The fold-0 split every run here trains on (RUN_DEFAULTS' data)."""
    dataset = load_dataset(
        "synthetic",
        None,
        synthetic_count=RUN_DEFAULTS["synthetic_count"],
        synthetic_size=RUN_DEFAULTS["synthetic_size"],
        seed=0,
    )
    return get_protocol("clean").split(dataset, fold=0, folds=RUN_DEFAULTS["num_folds"], seed=0)


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A finished --lr-search run, what its searches saw and returned, and its stderr."""
    out = tmp_path_factory.mktemp("lr_search") / "run"
    carved, searches = [], []
    real_carve, real_search = runner.carve_validation, runner.search_lr

    def spy_carve(train, seed, *args, **kwargs):
        fit, validation = real_carve(train, seed, *args, **kwargs)
        carved.append((train.image_ids, fit.image_ids, validation.image_ids))
        return fit, validation

    def spy_search(architecture, *args, **kwargs):
        chosen, scores = real_search(architecture, *args, **kwargs)
        searches.append((architecture, chosen, scores))
        return chosen, scores

    stderr = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stderr(stderr):
        patch.setattr(runner, "carve_validation", spy_carve)
        patch.setattr(runner, "search_lr", spy_search)
        assert main([*ARGV, "--out", str(out)]) == 0
    return {"out": out, "carved": carved, "searches": searches, "stderr": stderr.getvalue()}


def test_validation_split_comes_from_training_images_only_and_is_shared(searched):
    carved = searched["carved"]
    assert len(carved) == len(ARCHITECTURES)  # one search per cell
    assert all(c == carved[0] for c in carved)  # every architecture: the same images
    train, fit, validation = carved[0]
    test_ids = {r["image_id"] for r in rows(searched["out"] / "per_image.csv")}
    assert test_ids == set(tiny_split().test.image_ids)
    assert validation and fit
    assert not set(validation) & test_ids and not set(fit) & test_ids
    assert sorted(fit + validation) == sorted(train) and not set(fit) & set(validation)
    assert len(validation) == round(0.2 * len(train))


def test_twins_never_straddle_the_validation_split():
    n = 10
    ids = tuple(f"img{i}" for i in range(n)) + tuple(f"img{i}_aug" for i in range(n))
    train = SplitArrays(
        np.zeros((2 * n, 4, 4, 3), np.uint8),
        np.zeros((2 * n, 4, 4), np.int64),
        ids,
        ((4, 4),) * (2 * n),
    )
    fit, validation = carve_validation(train, seed=3)

    def sources(arrays):
        return {i.removesuffix("_aug") for i in arrays.image_ids}

    assert not sources(fit) & sources(validation)
    assert len(validation) == 4  # 20 % of the 10 sources, both images of each
    assert carve_validation(train, seed=3)[1].image_ids == validation.image_ids  # seeded
    assert len(validation.images) == len(validation.labels) == len(validation.sizes) == 4


def test_chosen_rate_is_of_the_grid_recorded_and_never_the_absurd_one(searched):
    cells = {r["architecture"]: r for r in rows(searched["out"] / "cells.csv")}
    for architecture, chosen, scores in searched["searches"]:
        assert float(cells[architecture]["lr"]) == chosen in GRID
        assert [s["lr"] for s in scores] == sorted(GRID)
        assert [s["lr"] for s in scores if s["chosen"]] == [chosen]
        json.dumps(scores)  # stored as it is in the cell record
    assert float(cells["segnet_basic"]["lr"]) == 1e-3  # 10.0 wrecks the model
    err = searched["stderr"]
    assert "segnet_basic seed 0 fold 0: lr 0.001 → validation Dice" in err
    assert err.count("→") == len(ARCHITECTURES) * len(GRID)  # one line per candidate
    meta = json.loads((searched["out"] / "config.json").read_text())["config"]
    assert meta["lr_search"] is True and meta["lr_grid"] == list(GRID)


def test_the_cell_trains_with_its_pick_exactly_as_with_lr(searched, tmp_path):
    """The search leaves no trace on the cell's own training: same numbers as --lr."""
    out = tmp_path / "fixed"
    argv = run_argv("segnet_basic", epochs=6, deterministic=True, lr="0.001")
    assert main([*argv, "--out", str(out)]) == 0
    assert image_rows(out, "segnet_basic") == image_rows(searched["out"], "segnet_basic")


def test_search_is_reproducible_and_a_tie_goes_to_the_smaller_rate(monkeypatch, capsys):
    split = tiny_split()
    settings = cell_settings(lr_grid=(3e-3, 1e-3), epochs=1, batch_size=4)

    def search():
        chosen, scores = runner.search_lr("unet_thesis", 0, 0, split, settings, torch.device("cpu"))
        return chosen, [{k: v for k, v in s.items() if k != "seconds"} for s in scores]

    assert search() == search()  # deterministic, every candidate seeded from the cell's seed
    monkeypatch.setattr(runner, "validation_dice", lambda *args: 0.5)
    assert search()[0] == 1e-3


def test_resumed_cell_does_not_search_again(searched, tmp_path, monkeypatch, capsys):
    out = tmp_path / "cut"
    argv = [*ARGV, "--out", str(out)]

    def cut(result, epoch):  # the second cell, right after its first epoch
        if result.architecture == "unet_thesis" and epoch == 1:
            raise runner.CellInterrupted()

    on_epoch_end(monkeypatch, cut)
    assert main(argv) == 130
    assert capsys.readouterr().err.count("→") == len(ARCHITECTURES) * len(GRID)
    state = torch.load(out / "resume" / "unet_thesis_seed0_fold0.pt", weights_only=True)
    assert state["lr"] in GRID and [s["lr"] for s in state["lr_search"]] == sorted(GRID)

    def must_not_search(*args, **kwargs):
        raise AssertionError("a resumed cell searched again")

    monkeypatch.setattr(runner, "search_lr", must_not_search)
    on_epoch_end(monkeypatch, None)
    assert main(argv) == 0
    assert "→" not in capsys.readouterr().err
    assert rows(out / "cells.csv")[1]["lr"] == repr(state["lr"])
    for architecture in ARCHITECTURES:  # the same numbers as the uninterrupted run
        assert image_rows(out, architecture) == image_rows(searched["out"], architecture)


def test_resume_with_another_grid_is_refused(searched, capsys):
    argv = [*ARGV, "--out", str(searched["out"])]
    argv[argv.index("--lr-grid") + 1] = "1e-3,3e-3"
    assert main(argv) == 2
    assert "lr_grid: [0.001, 10.0] -> [0.001, 0.003]" in capsys.readouterr().err


def test_lr_with_lr_search_is_refused_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "never"
    argv = run_argv("unet_thesis", lr="1e-3", lr_search=True, out=str(out))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--lr and --lr-search" in err
    assert not out.exists()


def test_without_the_flag_the_numbers_are_todays(tmp_path):
    """No --lr-search: the protocol's rate, exactly as an explicit --lr of it."""
    plain, explicit = tmp_path / "plain", tmp_path / "explicit"
    argv = run_argv("unet_thesis", deterministic=True)
    assert main([*argv, "--out", str(plain)]) == 0
    assert main([*argv, "--lr", "1e-4", "--out", str(explicit)]) == 0
    assert rows(plain / "cells.csv")[0]["lr"] == "0.0001"
    assert image_rows(plain, "unet_thesis") == image_rows(explicit, "unet_thesis")

    def losses(path):  # every loss and accuracy, not the timings
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rows(path / "history.csv")]

    assert losses(plain) == losses(explicit)


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"lr_grid": (1e-3, 1e-2)}, "--lr-grid needs --lr-search"),
        ({"lr_search": True, "lr_grid": (1e-3, 0.0)}, "must be positive"),
        ({"lr_search": True, "lr_grid": (1e-3, float("inf"))}, "must be positive"),
        ({"lr_search": True, "lr_grid": (1e-3,)}, "at least two"),
        ({"lr_search": True, "lr_grid": (1e-3, 1e-3)}, "duplicates"),
        ({"lr_search": True, "lr": 1e-3}, "--lr and --lr-search"),
    ],
)
def test_bad_lr_search_options_name_the_option(values, match):
    with pytest.raises(ConfigError, match=match):
        build_config({"architectures": ("unet_thesis",), **values})


def test_grid_from_toml_and_the_command_line(tmp_path, capsys):
    path = tmp_path / "run.toml"
    path.write_text("lr_search = true\nlr-grid = [1, 3e-4]\n")
    config = build_config({"architectures": ("unet_thesis",)}, str(path))
    assert config.lr_search and config.lr_grid == (1.0, 3e-4)
    assert build_config({"architectures": ("x",), "lr_search": True}).lr_grid is None
    assert DEFAULT_LR_GRID == (3e-4, 1e-3, 3e-3)
    path.write_text('lr_search = true\nlr_grid = ["fast"]\n')
    with pytest.raises(ConfigError, match="'lr_grid' must be a list of float"):
        build_config({"architectures": ("unet_thesis",)}, str(path))
    # "--lr-grid 1e-4,3e-4 1e-3": commas and spaces both separate; a non-number is exit 2
    from bench.cli import build_parser

    args = build_parser().parse_args(["run", "x", "--lr-grid", "1e-4,3e-4", "1e-3"])
    assert [v for part in args.lr_grid for v in part] == [1e-4, 3e-4, 1e-3]
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["run", "x", "--lr-grid", "1e-3,fast"])
    assert info.value.code == 2
    assert "not a comma-separated list of numbers" in capsys.readouterr().err
