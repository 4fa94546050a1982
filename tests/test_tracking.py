"""``--track tensorboard``: each finished cell's curves, configuration and results as an event
file, read back with TensorBoard's own reader from a real (tiny) run directory."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import bench.cli
from bench import tracking
from bench.config import build_config
from bench.errors import ConfigError
from bench.run_dir import CellRecord, RunDir

from tiny_runs import run_argv

pytest.importorskip("tensorboard", reason="the [tracking] extra (tensorboard) is not installed")


def _accumulator(path: Path) -> Any:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(path), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def _f32(value: float) -> float:
    """What TensorBoard stores of a float: its float32 rounding."""
    return float(np.float32(value))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> RunDir:
    """A real run: two architectures, 3 epochs each, on tiny synthetic data."""
    out = tmp_path_factory.mktemp("tracking") / "run"
    argv = run_argv("unet_thesis", "segnet_basic", epochs=3, out=out)
    assert bench.cli.main(argv) == 0
    return RunDir(out)


def test_event_file_holds_the_records_curves_and_results(run: RunDir) -> None:
    meta = run.read_meta()
    records, problems = run.load_records()
    assert not problems and len(records) == 2
    paths = tracking.write_run(run.path)
    assert len(paths) == 2
    for key, record in records.items():
        path = tracking.event_path(run.path, record)
        assert path in paths
        assert path.parent == run.path / "tensorboard" / f"{key[0]}_seed{key[1]}_fold0"
        events = _accumulator(path.parent)
        tags = events.Tags()
        for (split, column), tag in tracking.CURVES.items():
            rows = [r for r in record.history if r["split"] == split]
            assert len(rows) == 3
            got = events.Scalars(tag)
            assert [e.step for e in got] == [r["epoch"] for r in rows] == [1, 2, 3]
            assert [e.value for e in got] == [_f32(r[column]) for r in rows]

        from tensorboard.plugins.hparams import plugin_data_pb2

        classes = list(dict.fromkeys(r["class"] for r in record.per_image))
        assert classes == meta["dataset"]["metric_classes"]
        for cls in classes:
            for metric in ("dice", "jaccard"):
                scores = [r[metric] for r in record.per_image if r["class"] == cls]
                (result,) = events.Scalars(f"results/{metric}/{cls}")
                mean = math.fsum(s for s in scores if not math.isnan(s)) / len(scores)
                assert result.value == _f32(mean)
                assert result.step == 3

        # the configuration, as text, and the hyperparameters of the HPARAMS tab
        assert {"config", "cell"} <= set(tags["tensors"])
        config_text = events.Tensors("config")[0].tensor_proto.string_val[0].decode()
        assert f'"architecture": "{key[0]}"' in config_text
        assert '"epochs": 3' in config_text and '"out"' not in config_text
        content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
        hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
        assert hparams["architecture"].string_value == key[0]
        assert hparams["seed"].number_value == key[1] and hparams["fold"].number_value == 0
        assert hparams["lr"].number_value == record.row["lr"]
        assert "options.encoder" not in hparams  # not an smp model: no options
        assert "out" not in hparams and "progress" not in hparams


def test_rewriting_gives_the_same_bytes(run: RunDir) -> None:
    """Made from the record and config.json only: a resumed run rewrites it identically."""
    meta = run.read_meta()
    records, _ = run.load_records()
    record = next(iter(records.values()))
    first = tracking.write_cell_events(run.path, record, meta).read_bytes()
    tracker = tracking.make_tracker("tensorboard", run.path, run.read_meta())
    assert tracker.write_cell(record).read_bytes() == first
    # placement (where, how shown) is not part of it
    moved = {**meta, "config": {**meta["config"], "progress": "on", "executor": "ray"}}
    assert tracking.cell_events(record, moved) == first


def test_without_track_nothing_is_written(tmp_path: Path) -> None:
    record = CellRecord({"architecture": "unet_thesis", "seed": 0, "fold": 0, "status": "ok"})
    assert tracking.make_tracker(None, tmp_path, {}).write_cell(record) is None
    assert list(tmp_path.iterdir()) == []


def test_failed_cell_keeps_its_curves_and_nan(tmp_path: Path, run: RunDir) -> None:
    """A cell that diverged then failed: its epochs (NaN loss included), no results."""
    records, _ = run.load_records()
    record = next(iter(records.values()))
    history = [dict(r) for r in record.history if r["epoch"] == 1]
    history[0]["loss"] = float("nan")
    row = {**record.row, "status": "failed", "error": "RuntimeError: boom"}
    failed = dataclasses.replace(record, row=row, history=history, per_image=[])
    path = tracking.write_cell_events(tmp_path, failed, run.read_meta())
    events = _accumulator(path.parent)
    assert math.isnan(events.Scalars("loss/train")[0].value)
    assert not [t for t in events.Tags()["scalars"] if t.startswith("results/")]
    cell_text = events.Tensors("cell")[0].tensor_proto.string_val[0].decode()
    assert "RuntimeError: boom" in cell_text


def test_track_is_a_flag_checked_at_startup(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    assert build_config({"architectures": ("unet_thesis",), "track": "tensorboard"}).track == (
        "tensorboard"
    )
    real = importlib.util.find_spec

    def without_tensorboard(name: str, *args: Any) -> Any:
        return None if name == "tensorboard" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", without_tensorboard)
    with pytest.raises(ConfigError, match=r"--track tensorboard needs the tensorboard package"):
        build_config({"architectures": ("unet_thesis",), "track": "tensorboard"})
    assert bench.cli.main(run_argv("unet_thesis", track="tensorboard")) == 2
    assert "wbc-seg-bench[tracking]" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:  # not a choice: argparse's usage error
        bench.cli.main(run_argv("unet_thesis", track="mlflow"))
    assert info.value.code == 2
