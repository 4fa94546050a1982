"""The Python API (``bench.api``): a suite run from Python, a run directory as DataFrames."""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from bench import api
from bench.cli import build_parser
from bench.config import RunConfig, build_config, values_from_args
from bench.errors import ConfigError
from bench.run_dir import (
    CELL_COLUMNS,
    HISTORY_COLUMNS,
    PER_IMAGE_COLUMNS,
    RunDir,
    summary_columns,
)

TINY = RunConfig(
    architectures=("unet_thesis",),
    dataset="synthetic",
    synthetic_count=12,
    synthetic_size=48,
    num_folds=3,
    width=0.0625,
    epochs=2,
    batch_size=4,
    progress="off",
    deterministic=True,
)
METRIC_CLASSES = ("background", "cytoplasm", "nucleus", "cell")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> api.Run:
    """A tiny suite run through the API, as a notebook would."""
    out = tmp_path_factory.mktemp("api") / "run"
    return api.run(dataclasses.replace(TINY, out=str(out)))


def assert_matches_csv(frame: pd.DataFrame, path: Path) -> None:
    """``frame`` holds what the CSV bench wrote holds (numbers to float precision)."""
    written = pd.read_csv(path, keep_default_na=False, na_values=[""])
    assert list(frame.columns[: len(written.columns)]) == list(written.columns)
    assert len(frame) == len(written)
    for column in written.columns:
        ours, theirs = frame[column], written[column]
        if pd.api.types.is_numeric_dtype(theirs) and not pd.api.types.is_bool_dtype(theirs):
            # an empty text column (no error anywhere) reads back as all-NaN numbers
            numbers = pd.to_numeric(ours.replace("", np.nan)).astype(float)
            np.testing.assert_allclose(numbers, theirs.astype(float), rtol=1e-12, err_msg=column)
        else:
            assert ours.fillna("").astype(str).tolist() == theirs.fillna("").astype(str).tolist()


def test_run_returns_the_run_directory_as_dataframes(tiny: api.Run) -> None:
    assert tiny.architectures == ["unet_thesis"]
    assert tiny.cells["status"].tolist() == ["ok"]
    assert list(tiny.cells.columns[: len(CELL_COLUMNS)]) == list(CELL_COLUMNS)
    assert list(tiny.history.columns) == list(HISTORY_COLUMNS)
    assert list(tiny.per_image.columns) == list(PER_IMAGE_COLUMNS)
    assert list(tiny.summary.columns) == list(summary_columns(METRIC_CLASSES))
    assert len(tiny.history) == 2 * TINY.epochs  # train and test per epoch
    test_images = tiny.config["protocol"]["test_images"]
    assert len(tiny.per_image) == test_images * len(METRIC_CLASSES)
    assert tiny.summary.loc[0, "images"] == test_images
    assert tiny.config["config"]["width"] == TINY.width
    assert tiny.checkpoint("unet_thesis").is_file()


def test_tables_are_typed(tiny: api.Run) -> None:
    assert str(tiny.cells["seed"].dtype) == "Int64"
    assert str(tiny.per_image["fold"].dtype) == "Int64"
    assert str(tiny.per_image["tp"].dtype) == "Int64"
    assert tiny.per_image["dice"].dtype == np.float64
    assert tiny.per_image["dice"].between(0, 1).all()


def test_tables_are_the_ones_bench_wrote(tiny: api.Run) -> None:
    for name in ("cells", "history", "per_image", "summary"):
        assert_matches_csv(getattr(tiny, name), tiny.path / f"{name}.csv")


def test_run_records_an_equivalent_command(tiny: api.Run) -> None:
    """Not the notebook kernel's argv: the bench run command that gives the same config."""
    command = tiny.config["command"]
    assert command == "bench " + shlex.join(
        api.command_line(dataclasses.replace(TINY, out=str(tiny.path)))
    )
    assert command.startswith("bench run unet_thesis ")
    assert "--synthetic-count 12" in command and "--deterministic" in command
    assert "--dataset" not in command  # synthetic is the default: only changes are written


def test_run_passes_an_explicit_argv_to_the_suite(tiny: api.Run, monkeypatch) -> None:
    seen = {}

    def run_suite(config: RunConfig, argv: list[str] | None = None) -> SimpleNamespace:
        seen.update(config=config, argv=argv)
        return SimpleNamespace(out_dir=tiny.path)

    monkeypatch.setattr("bench.suite.run_suite", run_suite)
    config = dataclasses.replace(TINY, out=str(tiny.path))
    result = api.run(config, argv=["run", "from", "my", "notebook"])
    assert seen == {"config": config, "argv": ["run", "from", "my", "notebook"]}
    assert result.path == tiny.path


def test_run_refuses_bad_input_with_an_exception(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--width"):
        api.run(dataclasses.replace(TINY, width=-1.0, out=str(tmp_path / "run")))
    assert not (tmp_path / "run").exists()


def test_command_line_parses_back_to_the_same_config(tmp_path: Path) -> None:
    plugin = tmp_path / "plugin.py"
    config = RunConfig(
        architectures=("unet_thesis", "smp_*"),
        dataset="wbc1",
        data_dir=str(tmp_path / "data dir"),
        protocol="thesis-noleak",
        seeds=(0, 1, 2),
        lr_search=True,
        lr_grid=(1e-4, 3e-4),
        width=0.25,
        encoder="resnet18",
        deterministic=True,
        plugins=(str(plugin), str(tmp_path / "second.py")),
        folds="all",
        num_folds=4,
        amp="off",
        channels_last="on",
        compile=True,
        threads=2,
        progress="off",
        out=str(tmp_path / "out"),
    )
    args = build_parser().parse_args(api.command_line(config))
    assert args.command == "run"
    assert build_config(values_from_args(args, RunConfig), args.config) == config


def test_command_line_of_the_defaults_is_bare() -> None:
    assert api.command_line(RunConfig(all=True)) == ["run", "--all"]


def test_load_run_of_the_committed_format_1_directory(repo_root: Path) -> None:
    path = repo_root / "tests" / "data" / "format1_thesis_wbc1"
    run = api.load_run(path)
    names = ["unet_thesis", "segnet_basic", "deconvnet", "smp_unet", "smp_fpn", "smp_deeplabv3plus"]
    assert run.config["format_version"] == 1
    assert run.architectures == names
    assert (run.cells["status"] == "ok").all()
    assert run.cells["fold"].isna().all()  # the thesis protocol has one fixed split
    assert len(run.per_image) == len(names) * 30 * len(METRIC_CLASSES)
    assert run.history["epoch"].max() == 30
    assert run.summary["images"].tolist() == [30] * len(names)
    # Derived anew, the summary is the one the report wrote (flags included).
    assert_matches_csv(run.summary, path / "summary.csv")
    nucleus = run.per_image[run.per_image["class"] == "nucleus"]
    means = nucleus.groupby("architecture", sort=False)["dice"].mean()
    np.testing.assert_allclose(means.to_numpy(), run.summary["nucleus_dice_mean"].to_numpy())


def test_load_run_writes_nothing(repo_root: Path) -> None:
    path = repo_root / "tests" / "data" / "format1_thesis_wbc1"
    before = {p: p.stat().st_mtime_ns for p in path.rglob("*") if p.is_file()}
    api.load_run(path)
    assert {p: p.stat().st_mtime_ns for p in path.rglob("*") if p.is_file()} == before


def test_load_run_of_something_else_names_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config.json"):
        api.load_run(tmp_path)


def test_load_run_agrees_with_run_dir_tables(tiny: api.Run) -> None:
    tables = RunDir(tiny.path).tables()
    assert tiny.per_image["dice"].tolist() == [row["dice"] for row in tables.per_image]
    assert tiny.cells["test_loss"].tolist() == [row["test_loss"] for row in tables.cells]
