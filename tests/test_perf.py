"""``bench perf``: the three loops run, the JSON has the documented keys, ratios add up."""

from __future__ import annotations

import json
import sys
from dataclasses import replace

import pytest
import torch

import architectures
from bench.cli import main
from bench.errors import ConfigError
from bench.peak import fraction_of_peak, matmul_flops, measure_matmul_peak, training_tflops
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
    "--peak-size",
    "128",
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
    # The machine's own limit, measured in the same run, and the harness's share of it.
    for key in ("achieved_tflops", "peak_tflops", "fraction_of_peak"):
        assert result[key] > 0
    assert result["fraction_of_peak"] == pytest.approx(
        result["achieved_tflops"] / result["peak_tflops"]
    )
    model = architectures.build("unet_thesis", num_classes=3, width=0.0625)
    gflops = architectures.forward_gflops(model, (120, 120))
    assert result["forward_gflops_per_image"] == pytest.approx(gflops)
    assert result["achieved_tflops"] == pytest.approx(
        gflops * 3 * result["harness_images_per_second"] / 1e3
    )
    measured = result["peak"]["measurements"]
    assert len(measured) == 2  # before the first repeat and after the last; the best counts
    assert result["peak_tflops"] == max(m["peak_tflops"] for m in measured)
    assert {m["dtype"] for m in measured} == {"float32"}
    assert {m["threads"] for m in measured} == {torch.get_num_threads()}  # the training's
    assert len(result["load_average"]["start"]) == len(result["load_average"]["end"]) == 3


def test_perf_text_and_no_augmented(capsys):
    argv = ["perf", "segnet_basic", *TINY, "--no-augmented", "--repeats", "1", "--note", "busy"]
    assert main([*argv, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["note"] == "busy" and result["config"]["note"] == "busy"
    text = render_text(result)
    assert "harness / bare" in text and "achieved / peak" in text and "load average" in text
    assert "dataloader" not in text


def test_matmul_peak_on_a_tiny_size_is_sane():
    """A 64×64 matmul on this CPU: positive, finite rates, the best sample reported, below
    any CPU's reach (1 PFLOP/s), and the thread count restored after a measurement at 1."""
    threads = torch.get_num_threads()
    measured = measure_matmul_peak(torch.device("cpu"), size=64, repeats=3, threads=1)
    assert torch.get_num_threads() == threads
    assert measured["threads"] == 1 and measured["size"] == 64 and measured["dtype"] == "float32"
    assert len(measured["samples_tflops"]) == 3
    assert all(0 < rate < 1000 for rate in measured["samples_tflops"])
    assert measured["peak_tflops"] == max(measured["samples_tflops"])
    bf16 = measure_matmul_peak(torch.device("cpu"), torch.bfloat16, size=64, repeats=1)
    assert bf16["dtype"] == "bfloat16" and bf16["peak_tflops"] > 0


def test_flop_conventions():
    assert matmul_flops(3) == 54  # 27 multiply-adds, 2 FLOPs each
    # 1 forward GFLOP per image at 100 images/s: 300 GFLOP/s of training = 0.3 TFLOP/s
    assert training_tflops(1.0, 100.0) == pytest.approx(0.3)
    assert fraction_of_peak(0.3, 1.2) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="positive"):
        fraction_of_peak(0.3, 0.0)


def test_perf_builds_the_smp_encoder_it_is_given():
    """--encoder reaches the model whose FLOPs are counted (and the loops': same builder)."""
    from bench import perf

    config = PerfConfig(architecture="smp_unet", width=0.0625, encoder="resnet18")
    peaks = [{"peak_tflops": 1.0}]
    counted = perf.fraction_of_peak(config, [64, 64], 10.0, peaks)
    resnet18 = architectures.build("smp_unet", width=0.0625, encoder="resnet18")
    assert counted["forward_gflops_per_image"] == pytest.approx(
        architectures.forward_gflops(resnet18, (64, 64))
    )
    resnet34 = perf.fraction_of_peak(replace(config, encoder="resnet34"), [64, 64], 10.0, peaks)
    assert resnet34["forward_gflops_per_image"] > counted["forward_gflops_per_image"]


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
