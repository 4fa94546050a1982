"""bench run --encoder-weights and --track end to end: weights fetched once before training
(from a loopback server), one event file per finished cell, resume without either."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from test_encoder_weights import ENCODER, _point_hub_at, _serve_encoder_weights, hub  # noqa: F401

import bench.cli
from bench import tracking
from bench.run_dir import RunDir

from tiny_runs import run_argv


def test_pretrained_tracked_run(hub, tmp_path: Path, monkeypatch, capsys) -> None:  # noqa: F811
    _serve_encoder_weights(hub)
    out = tmp_path / "run"
    argv = run_argv(
        "unet_thesis",
        "smp_unet",
        encoder=ENCODER,
        encoder_weights="imagenet",
        track="tensorboard",
        out=out,
    )
    assert bench.cli.main(argv) == 0
    meta = json.loads((out / "config.json").read_text())
    assert meta["config"]["encoder_weights"] == "imagenet"
    assert meta["config"]["track"] == "tensorboard"
    assert meta["architectures"]["smp_unet"]["options"] == {
        "encoder": ENCODER,
        "encoder_weights": "imagenet",
    }
    assert meta["architectures"]["unet_thesis"]["options"] == {}
    run = RunDir(out)
    records, _ = run.load_records()
    files = {k: tracking.event_path(out, r).read_bytes() for k, r in records.items()}
    assert len(files) == 2
    for key, record in records.items():
        assert tracking.cell_events(record, run.read_meta()) == files[key]
    gets = [r for r in hub.requests if r.startswith("GET") and "/resolve/" in r]
    assert len(gets) == 2  # config.json + model.safetensors, once for the run

    # resume without --track and with the hub gone: allowed, nothing retrained or fetched
    _point_hub_at(monkeypatch, "http://127.0.0.1:9", hub.cache)
    argv2 = [a for a in argv if a not in ("--track", "tensorboard")]
    assert bench.cli.main(argv2) == 0
    assert "2 cell(s) already done" in capsys.readouterr().err
    assert {k: tracking.event_path(out, r).read_bytes() for k, r in records.items()} == files


def test_offline_fails_before_training(tmp_path: Path, monkeypatch, capsys) -> None:
    from huggingface_hub import constants

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    _point_hub_at(monkeypatch, f"http://127.0.0.1:{port}", tmp_path / "cache")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    out = tmp_path / "run"
    argv = run_argv("smp_unet", "smp_fpn", encoder=ENCODER, encoder_weights="imagenet", out=out)
    assert bench.cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "bench: error: cannot download imagenet weights for resnet18 (no network?)" in err
    assert not (out / "cells").exists()
