"""Tiny training runs for tests: the shared defaults in one place.

``run_argv("unet_thesis", seeds=[0, 1], out=path)`` gives ``bench run`` arguments for a small
synthetic run; ``cell_settings(epochs=1)`` the runner's settings for one such cell;
``on_epoch_end(monkeypatch, callback)`` has ``bench run`` call ``callback`` after each epoch.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any

import pytest

from bench import runner
from bench.runner import CellSettings, EpochCallback

# Small enough for seconds per cell on 2 CPU cores; three folds so a fold has test images.
RUN_DEFAULTS: dict[str, Any] = {
    "dataset": "synthetic",
    "synthetic_count": 12,
    "synthetic_size": 48,
    "num_folds": 3,
    "width": 0.0625,
    "epochs": 2,
    "batch_size": 4,
    "progress": "off",
}


def slow_plugin_source(name: str) -> str:
    """A plugin registering ``name``: a 3x3 conv that sleeps 20 ms per training batch, so a
    run is still going when a test signals it, and resuming it is quick."""
    return f"""
import time
import torch
from architectures import register_architecture


@register_architecture("{name}")
def slow_fcn(num_classes=3, in_channels=3, width=1.0):
    class Slow(torch.nn.Conv2d):
        def forward(self, x):
            if self.training:
                time.sleep(0.02)
            return super().forward(x)

    return Slow(in_channels, num_classes, 3, padding=1)
"""


def tiny_plugin_source(name: str) -> str:
    """A plugin registering ``name``: two small convolutions, so a run's time goes to the
    harness (writing, resuming, combining), not to training."""
    return f"""
import torch
from architectures import register_architecture


@register_architecture("{name}")
def tiny_fcn(num_classes=3, in_channels=3, width=1.0):
    return torch.nn.Sequential(
        torch.nn.Conv2d(in_channels, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, num_classes, 1),
    )
"""


def checksums(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (and every folder, as ``dir``): what must not change."""
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): "dir"
        if p.is_dir()
        else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
    }


def run_argv(*architectures: str, **flags: Any) -> list[str]:
    """``bench run`` arguments: ``RUN_DEFAULTS`` updated by ``flags``.

    ``batch_size=4`` gives ``--batch-size 4``; ``True`` a bare switch; ``None`` or ``False``
    drops the flag; a list or tuple gives several values (``seeds=[0, 1]``).
    """
    argv = ["run", *architectures]
    for name, value in {**RUN_DEFAULTS, **flags}.items():
        flag = "--" + name.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            argv.append(flag)
        elif isinstance(value, (list, tuple)):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return argv


def cell_settings(**overrides: Any) -> CellSettings:
    """Settings of one tiny deterministic cell (as ``run_argv``'s defaults)."""
    values: dict[str, Any] = {
        "epochs": 2,
        "batch_size": 8,
        "lr": 1e-3,
        "loss": "bce",
        "width": 0.0625,
        "options": {},
        "deterministic": True,
        "progress": False,
    }
    return CellSettings(**{**values, **overrides})


def on_epoch_end(monkeypatch: pytest.MonkeyPatch, callback: EpochCallback | None) -> None:
    """Have ``bench run`` (``bench.cli.main``, local executor) train its cells with
    ``train_cell(..., on_epoch_end=callback)``; None: without a callback again.

    The callback gets (result so far, epoch) after each epoch's checkpoint is written;
    raising ``runner.CellInterrupted`` there cuts the cell at that exact epoch.
    """
    train = runner.train_cell
    if callback is not None:
        train = functools.partial(runner.train_cell, on_epoch_end=callback)
    monkeypatch.setattr("bench.suite.train_cell", train)
