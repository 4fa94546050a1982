"""Failure isolation: CUDA out of memory is retried once with half the batch size (the
size used is recorded in cells.csv), then recorded as failed; the suite goes on.

Exceptions and NaN/inf losses are covered by tests/test_run_end_to_end.py
(test_failed_architecture_is_recorded_and_the_suite_completes)."""

from __future__ import annotations

import csv
import textwrap

import pytest

from bench.cli import main

from tiny_runs import run_argv

PLUGIN = """
import torch
from architectures import register_architecture


class _OOM(torch.nn.Conv2d):
    limit = None  # largest training batch that "fits"; None: nothing fits

    def forward(self, x):
        if self.training and (self.limit is None or x.shape[0] > self.limit):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return super().forward(x)


@register_architecture("oom_big_batch")
def oom_big_batch(num_classes=3, in_channels=3, width=1.0):
    model = _OOM(in_channels, num_classes, 3, padding=1)
    model.limit = 2
    return model


@register_architecture("oom_always")
def oom_always(num_classes=3, in_channels=3, width=1.0):
    return _OOM(in_channels, num_classes, 3, padding=1)
"""


def test_out_of_memory_retries_with_half_the_batch_then_fails(tmp_path, capsys):
    plugin = tmp_path / "oom_archs.py"
    plugin.write_text(textwrap.dedent(PLUGIN))
    out = tmp_path / "run"
    code = main(
        run_argv(
            "oom_big_batch",
            "oom_always",
            plugin=plugin,
            synthetic_size=32,
            width=None,
            epochs=1,
            out=out,
        )
    )
    assert code == 1  # one cell failed
    err = capsys.readouterr().err
    assert "oom_big_batch (seed 0): out of memory; retrying with batch size 2" in err
    assert "oom_always (seed 0): out of memory; retrying with batch size 2" in err
    with (out / "cells.csv").open(newline="") as handle:
        cells = {row["architecture"]: row for row in csv.DictReader(handle)}
    assert cells["oom_big_batch"]["status"] == "ok"
    assert cells["oom_big_batch"]["batch_size"] == "2"  # the size actually used
    assert cells["oom_always"]["status"] == "failed"
    assert cells["oom_always"]["batch_size"] == "2"
    assert "OutOfMemoryError" in cells["oom_always"]["error"]
    assert not list((out / "resume").glob("*.pt"))


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    from bench import atomic

    path = tmp_path / "cells.csv"
    atomic.atomic_write_text(path, "old\n")

    def crash(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(atomic.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        atomic.atomic_write_text(path, "new\n")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["cells.csv"]  # no temporary left over
