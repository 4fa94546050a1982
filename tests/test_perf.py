"""``bench perf``: the three loops run, the JSON has the documented keys, ratios add up."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from bench.cli import main
from bench.errors import ConfigError
from bench.perf import PerfConfig, measure_bare, render_text, run_perf
from bench.runner import images_trained, resolve_speed

TINY = [
    "--width",
    "0.0625",
    "--synthetic-count",
    "24",
    "--epochs",
    "1",
    "--repeats",
    "2",
    "--batch-size",
    "8",
]


def test_perf_json_keys_and_ratios(capsys):
    assert main(["perf", "unet_thesis", *TINY, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("harness_images_per_second", "bare_images_per_second", "ratio"):
        assert result[key] > 0
    assert result["ratio"] == pytest.approx(
        result["harness_images_per_second"] / result["bare_images_per_second"]
    )
    assert result["augmented_ratio"] == pytest.approx(
        result["augmented_harness_images_per_second"] / result["dataloader_images_per_second"]
    )
    assert len(result["samples"]["harness"]) == len(result["samples"]["dataloader"]) == 2
    # 24 synthetic images → thesis split 45 train (48 * 0.933), clean fold 0 → 19 train
    assert result["train_images"] == 45
    assert result["augmented_train_images"] == 19
    assert result["speed"]["channels_last"] is True  # auto on CPU
    assert result["environment"]["cpu_model"]


def test_perf_text_and_no_augmented(capsys):
    assert main(["perf", "segnet_basic", *TINY, "--no-augmented", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "harness / bare" in out
    assert "dataloader" not in out


def test_perf_without_albumentations_skips_the_peer_and_says_why(monkeypatch, capsys):
    # albumentations is the perf extra's: without it the augmented pair is skipped, not failed.
    monkeypatch.setitem(sys.modules, "albumentations", None)  # import fails, find_spec: None
    assert main(["perf", "segnet_basic", *TINY, "--repeats", "1", "--json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert "augmented_ratio" not in result and "dataloader" not in result["samples"]
    assert "albumentations is not installed" in result["augmented_skipped"]
    assert ".[perf]" in result["augmented_skipped"] and "--no-augmented" in captured.err
    assert "augmented comparison skipped" in render_text(result)


def test_perf_bad_options_name_the_option():
    with pytest.raises(ConfigError, match="--width"):
        run_perf(PerfConfig(width=0))
    assert main(["perf", "no_such_model"]) == 2


def test_lone_last_image_is_dropped_like_the_runner():
    assert images_trained(41, 20) == 40
    assert images_trained(40, 20) == 40


def test_bare_loop_trains(monkeypatch):
    """The bare loop really updates the model: its images/s is a finite positive number and
    the Adam steps change the weights (checked through a wrapped optimiser)."""
    from bench import perf
    from bench.data import load_dataset
    from bench.protocols import get_protocol

    steps = []
    original = torch.optim.Adam

    class CountingAdam(original):
        def step(self, *args, **kwargs):
            steps.append(1)
            return super().step(*args, **kwargs)

    monkeypatch.setattr(perf.torch.optim, "Adam", CountingAdam)
    split = get_protocol("thesis").split(load_dataset("synthetic", synthetic_count=24))
    config = PerfConfig(width=0.0625, epochs=2, batch_size=8)
    speed = resolve_speed("off", "off", False, torch.device("cpu"))
    rate = measure_bare(config, split, torch.device("cpu"), speed, "bce")
    assert rate > 0
    assert len(steps) == 2 * -(-images_trained(len(split.train), 8) // 8)


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"device": "tpu"}, "--device must be one of auto, cpu, cuda, mps"),
        ({"repeats": 0}, "--repeats must be positive"),
        ({"seed": -1}, "--seed must be in 0..4294967295"),
        ({"dataset": "folder:x"}, "--dataset must be one of synthetic, wbc1"),
    ],
)
def test_perf_options_are_checked_as_run_options(values, match):
    """PerfConfig is declared and validated like RunConfig (bench.config.option metadata)."""
    from bench.config import build_perf_config

    with pytest.raises(ConfigError, match=match):
        build_perf_config(values)


def test_harness_trains_with_the_protocols_learning_rate(monkeypatch):
    """measure_harness takes its settings from CellSettings.from_config: the protocol's lr."""
    from types import SimpleNamespace

    from bench import perf
    from bench.protocols import get_protocol

    seen = []

    def fake_train_cell(architecture, seed, fold, split, settings, device):
        seen.append(settings)
        return SimpleNamespace(status="ok", images_per_second=1.0, error=None)

    monkeypatch.setattr(perf, "train_cell", fake_train_cell)
    split = SimpleNamespace(protocol="clean", fold=0)
    config = PerfConfig(width=0.0625, epochs=1, batch_size=8, seed=3)
    assert perf.measure_harness(config, split, torch.device("cpu"), "cross_entropy") == 1.0
    (settings,) = seen
    assert settings.lr == get_protocol("clean").defaults.lr
    assert (settings.epochs, settings.batch_size, settings.width) == (1, 8, 0.0625)
    assert settings.loss == "cross_entropy" and settings.progress is False
    assert not settings.deterministic and settings.num_classes == 3
