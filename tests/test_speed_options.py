"""Speed options of the runner: what ``auto`` resolves to, and that each option leaves the
computation the same up to floating-point noise."""

from __future__ import annotations

import pytest
import torch

import architectures
from bench.data import load_dataset
from bench.errors import ConfigError
from bench.protocols import get_protocol
from bench.runner import resolve_speed, train_cell

from tiny_runs import cell_settings

CPU = torch.device("cpu")


def test_auto_resolution_on_cpu():
    speed = resolve_speed("auto", "auto", False, CPU)
    assert speed.amp_dtype is None  # bf16 on CPU is opt-in
    assert speed.channels_last is True
    assert resolve_speed("bf16", "off", True, CPU).amp_dtype is torch.bfloat16
    assert resolve_speed("off", "off", False, CPU).channels_last is False
    with pytest.raises(ConfigError, match="--amp fp16"):
        resolve_speed("fp16", "auto", False, CPU)


def test_auto_resolution_on_cuda_without_touching_a_gpu():
    speed = resolve_speed("auto", "auto", False, torch.device("cuda"))
    assert speed.amp_dtype is torch.bfloat16
    assert speed.channels_last is True


@pytest.mark.parametrize("name", ["unet_thesis", "segnet_basic", "deconvnet", "smp_unet"])
def test_channels_last_gives_the_same_logits(name):
    torch.manual_seed(0)
    options = {"encoder": "resnet18"} if name.startswith("smp_") else {}
    model = architectures.build(name, width=0.125, **options).eval()
    x = torch.rand(2, 3, 120, 120, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = model(x)
        model.to(memory_format=torch.channels_last)
        fast = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-4)


def tiny_cell(**speed):
    split = get_protocol("thesis").split(load_dataset("synthetic", synthetic_count=24))
    settings = cell_settings(**speed)
    return train_cell("unet_thesis", 0, None, split, settings, CPU)


def test_speed_options_move_results_only_within_noise():
    """Two epochs of the same seed in fp32 contiguous, channels-last and bf16 autocast."""
    plain = tiny_cell(amp="off", channels_last="off")
    fast = tiny_cell(amp="off", channels_last="on")
    bf16 = tiny_cell(amp="bf16", channels_last="on")
    for cell in (plain, fast, bf16):
        assert cell.status == "ok", cell.error
    # Same arithmetic in another layout or precision: the first forward passes agree to
    # ~1e-4 (test above); training amplifies the difference a little with every step.
    first = [cell.history[0]["loss"] for cell in (plain, fast, bf16)]
    assert first[1] == pytest.approx(first[0], rel=2e-3)
    assert first[2] == pytest.approx(first[0], rel=2e-3)
    for cell in (fast, bf16):
        assert cell.train_loss == pytest.approx(plain.train_loss, rel=5e-3)
        assert cell.test_accuracy == pytest.approx(plain.test_accuracy, abs=0.03)
    # And they do differ: the options are really applied.
    assert len({plain.train_loss, fast.train_loss, bf16.train_loss}) == 3


def test_compile_option_compiles_and_keeps_plain_weight_names(monkeypatch):
    calls = []
    real_compile = torch.compile

    def eager_compile(model, **kwargs):
        calls.append(type(model).__name__)
        return real_compile(model, backend="eager")  # dynamo without inductor: fast

    monkeypatch.setattr(torch, "compile", eager_compile)
    cell = tiny_cell(compile=True)
    assert cell.status == "ok", cell.error
    assert calls == ["UNetThesis"]
    assert not any(key.startswith("_orig_mod") for key in cell.model_state)


def test_report_names_the_speed_options_of_new_runs_only():
    from bench.report import speed_options

    text = speed_options({"amp": "bf16", "channels_last": "auto", "compile": True})
    assert "mixed precision bf16" in text
    assert "channels-last auto (on for CUDA and CPU)" in text
    assert "torch.compile" in text
    assert speed_options({"epochs": 30}) == ""  # runs made before the options: unchanged
