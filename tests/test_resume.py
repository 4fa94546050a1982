"""Resume: the same command with the same --out skips finished cells and continues a cut
cell from its last epoch checkpoint, giving exactly the numbers of an uninterrupted run."""

from __future__ import annotations

import csv
import json
import signal

import pytest
import torch

from bench import runner
from bench.cli import main

from tiny_runs import on_epoch_end, run_argv

ARGV = run_argv("unet_thesis", seeds=[0, 1], epochs=3, deterministic=True)
METRICS = ("jaccard", "dice", "accuracy", "jaccard_legacy")


def rows(path):
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def assert_same_numbers(a, b):
    history_a, history_b = rows(a / "history.csv"), rows(b / "history.csv")
    assert [(r["seed"], r["epoch"], r["split"]) for r in history_a] == [
        (r["seed"], r["epoch"], r["split"]) for r in history_b
    ]
    for ra, rb in zip(history_a, history_b, strict=True):
        for key in ("loss", "accuracy"):
            assert float(ra[key]) == pytest.approx(float(rb[key]), abs=1e-6), (ra, rb)
    image_a, image_b = rows(a / "per_image.csv"), rows(b / "per_image.csv")
    assert len(image_a) == len(image_b) > 0
    for ra, rb in zip(image_a, image_b, strict=True):
        assert (ra["seed"], ra["image_id"], ra["class"]) == (
            rb["seed"],
            rb["image_id"],
            rb["class"],
        )
        for key in METRICS:
            assert float(ra[key]) == pytest.approx(float(rb[key]), abs=1e-6), (ra, rb)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("resume") / "whole"
    assert main([*ARGV, "--out", str(out)]) == 0
    return out


def test_interrupted_then_resumed_equals_uninterrupted(
    uninterrupted, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "cut"
    argv = [*ARGV, "--out", str(out)]

    def cut(result, epoch):  # stop the second cell right after its first epoch
        if result.seed == 1 and epoch == 1:
            raise runner.CellInterrupted()

    on_epoch_end(monkeypatch, cut)
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    assert main(argv) == 130
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers
    err = capsys.readouterr().err
    assert "Resume with:" in err and "bench run unet_thesis" in err and str(out) in err
    assert [r["seed"] for r in rows(out / "cells.csv")] == ["0"]
    checkpoint = out / "resume" / "unet_thesis_seed1_fold0.pt"
    state = torch.load(checkpoint, weights_only=True)  # no pickled objects
    assert state["epoch"] == 1 and len(state["history"]) == 2

    seen = []
    on_epoch_end(monkeypatch, lambda r, e: seen.append((r.seed, e)))
    assert main(argv) == 0
    assert seen == [(1, 2), (1, 3)]  # seed 0 skipped, seed 1 continued from epoch 2
    assert not checkpoint.exists()
    assert [r["seed"] for r in rows(out / "cells.csv")] == ["0", "1"]
    assert_same_numbers(uninterrupted, out)
    meta = json.loads((out / "config.json").read_text())
    assert meta["finished_utc"] and len(meta["resumed_utc"]) == 1
    # The first invocation's environment (it trained seed 0) is kept beside the current one.
    assert len(meta["earlier_environments"]) == 1
    assert meta["earlier_environments"][0]["git_commit"] == meta["environment"]["git_commit"]


def test_resuming_a_finished_run_trains_nothing(uninterrupted, monkeypatch, capsys):
    before = rows(uninterrupted / "per_image.csv")

    def must_not_train(*args, **kwargs):
        raise AssertionError("a finished cell was trained again")

    monkeypatch.setattr("bench.suite.train_cell", must_not_train)
    assert main([*ARGV, "--out", str(uninterrupted)]) == 0
    assert rows(uninterrupted / "per_image.csv") == before


def test_resume_with_another_config_names_the_keys(uninterrupted, capsys):
    argv = [*ARGV, "--out", str(uninterrupted)]
    argv[argv.index("--epochs") + 1] = "4"
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "different configuration" in err and "epochs: 3 -> 4" in err
