"""Progress and cost up front: the plan line, ``[cell k/N]`` counters, per-epoch log lines
with a rough suite ETA when stderr is not a terminal, and ``--dry-run``."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
from pathlib import Path

import pytest

from bench.cli import main
from bench.config import load_toml
from bench.executors import CellJob, CellProgress, format_duration, with_epoch_callback
from bench.runner import CellResult

from tiny_runs import cell_settings, on_epoch_end, run_argv

PLAN = (
    "plan: 2 cells (1 architecture × 2 seeds × 1 fold), 2 epochs each, "
    "8 training / 4 test images per epoch; {done} done, {left} to train"
)


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under ``root`` with the SHA-256 of its bytes."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def test_a_run_without_a_terminal_logs_every_epoch_with_counter_and_eta(
    tmp_path, monkeypatch, capsys
):
    # progress auto, and capsys's stderr is no terminal: no bars, a line per epoch.
    out = tmp_path / "run"
    seen: list[tuple[int, int, str]] = []  # (seed, epoch, stderr printed up to that epoch)
    stdout: list[str] = []

    def read(result: CellResult, epoch: int) -> None:
        captured = capsys.readouterr()
        seen.append((result.seed, epoch, captured.err))
        stdout.append(captured.out)

    on_epoch_end(monkeypatch, read)
    assert main(run_argv("unet_thesis", seeds=[0, 1], out=out, progress="auto")) == 0
    stdout.append(capsys.readouterr().out)

    # Each epoch's line is on stderr when the epoch ends, not when its cell does.
    assert [(seed, epoch) for seed, epoch, _ in seen] == [(0, 1), (0, 2), (1, 1), (1, 2)]
    for number, (seed, epoch, err) in enumerate(seen):
        cell = number // 2 + 1
        line = err.strip().splitlines()[-1]
        assert re.fullmatch(
            rf"\[cell {cell}/2\] unet_thesis seed {seed} fold 0: epoch {epoch}/2, "
            r"train loss \d+\.\d{4}, test acc \d\.\d{4}, (test Dice \d\.\d{4}, )?\d+\.\d s; "
            r"(suite ETA ~\d+(\.\d)? (s|min|h|days) \(rough\)|last epoch of the suite)",
            line,
        ), line
    first = seen[0][2]
    # The plan comes before any training, the cell's counter before its first epoch, and
    # the ETA from the first epoch on.
    assert first.index(PLAN.format(done=0, left=2)) < first.index("[cell 1/2] unet_thesis")
    assert "[cell 1/2] unet_thesis seed 0 fold 0: 2 epochs\n" in first
    assert "suite ETA ~" in first.splitlines()[-1] and "(rough)" in first
    assert re.search(r"\[cell 2/2\] unet_thesis seed 1 fold 0: 2 epochs; suite ETA ~", seen[2][2])
    assert seen[-1][2].strip().endswith("last epoch of the suite")

    # The summary lines (stdout) carry the counter too.
    summaries = [line for line in "".join(stdout).splitlines() if line.startswith("[cell")]
    assert [s.split(" test acc")[0] for s in summaries] == [
        "[cell 1/2] unet_thesis (seed 0, fold 0):",
        "[cell 2/2] unet_thesis (seed 1, fold 0):",
    ]
    # --dry-run is how the command acts, not the run's configuration: a later version's
    # resume must not see it as a difference.
    assert "dry_run" not in json.loads((out / "config.json").read_text())["config"]


def test_progress_bars_replace_the_epoch_lines(tmp_path, capsys):
    assert main(run_argv("unet_thesis", out=tmp_path / "run", epochs=1, progress="on")) == 0
    err = capsys.readouterr().err
    assert "[cell 1/1] unet_thesis seed 0 fold 0: 1 epoch\n" in err  # the counter stays
    assert "epoch 1/1, train loss" not in err  # the bar shows it: no double printing


def test_dry_run_prints_plan_and_estimate_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # without --out a run would create runs/ here
    before = tree_digest(tmp_path)
    argv = run_argv("unet_thesis", "segnet_basic", seeds=[0, 1], dry_run=True)
    assert main(argv) == 0
    assert main([*argv, "--out", str(tmp_path / "new")]) == 0
    out = capsys.readouterr().out
    assert tree_digest(tmp_path) == before and not any(tmp_path.iterdir())

    plan = "plan: 4 cells (2 architectures × 2 seeds × 1 fold), 2 epochs each"
    assert out.count(plan) == 2
    assert "; 0 done, 4 to train" in out
    assert "estimate (rough): per architecture, the median of 3 training steps" in out
    for name in ("unet_thesis", "segnet_basic"):
        assert re.search(
            rf"^  {name} +[\d.e-]+ s/step × 2 steps × 2 epochs, .* per cell × 2 = ", out, re.M
        )
    assert re.search(r"^estimate: ~\d+(\.\d)? (s|min|h|days) for 4 cells on cpu", out, re.M)


def test_a_resumed_run_plans_and_counts_from_its_done_cells(tmp_path, capsys):
    out = tmp_path / "run"
    argv = run_argv("unet_thesis", seeds=[0, 1], out=out, epochs=1)
    assert main(argv) == 0
    (out / "cells" / "unet_thesis_seed1_fold0.json").unlink()  # as if cut before cell 2
    capsys.readouterr()
    before = tree_digest(out)
    assert main([*argv, "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert tree_digest(out) == before  # a dry run only reads the run directory
    plan = "plan: 2 cells (1 architecture × 2 seeds × 1 fold), 1 epoch each"
    assert f"{plan}, 8 training / 4 test images per epoch; 1 done, 1 to train" in printed
    assert re.search(r"^  unet_thesis +.* per cell × 1 = ", printed, re.M)

    assert main(argv) == 0  # the resume: the same plan, and the counter goes on from 1 done
    captured = capsys.readouterr()
    assert f"{plan}, 8 training / 4 test images per epoch; 1 done, 1 to train" in captured.err
    assert "[cell 2/2] unet_thesis seed 1 fold 0: epoch 1/1, train loss" in captured.err
    assert "[cell 1/2]" not in captured.err + captured.out
    assert "[cell 2/2] unet_thesis (seed 1, fold 0): test acc" in captured.out

    assert main([*argv, "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "; 2 done, 0 to train" in printed and "estimate: nothing to train" in printed


def test_dry_run_is_a_toml_key(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("dry-run = true\n")
    assert load_toml(path) == {"dry_run": True}


def _result(name: str, epoch: int, seconds: float) -> CellResult:
    result = CellResult(name, 0, 0, train_loss=0.5, test_accuracy=0.75)
    result.history = [
        {"epoch": epoch, "split": "train", "seconds": seconds * 0.75},
        {"epoch": epoch, "split": "test", "seconds": seconds * 0.25, "dice": 0.5},
    ]
    return result


def test_eta_is_seconds_per_epoch_times_the_epochs_left(tmp_path, capsys):
    settings = cell_settings(epochs=3)
    jobs = [
        CellJob(name, seed, 0, settings, tmp_path / f"{name}{seed}.pt")
        for name, seed in (("a", 0), ("a", 1), ("b", 0))
    ]
    progress = CellProgress(total=5, lines=True)  # two cells were done before
    progress.cell_started(jobs, 0)
    assert capsys.readouterr().err == "[cell 3/5] a seed 0 fold 0: 3 epochs\n"
    assert progress.eta_seconds(jobs, 0, 0) is None  # nothing timed yet
    for epoch, seconds in ((1, 10.0), (2, 2.0)):
        progress.epoch_ended(jobs, 0, _result("a", epoch, seconds), epoch)
    # median 6 s per epoch of "a"; "b" not seen: the mean of the architectures seen
    assert progress.eta_seconds(jobs, 0, 2) == pytest.approx(6 * (1 + 3 + 3))
    last = capsys.readouterr().err.splitlines()[-1]
    assert last == (
        "[cell 3/5] a seed 0 fold 0: epoch 2/3, train loss 0.5000, test acc 0.7500, "
        "test Dice 0.5000, 2.0 s; suite ETA ~42 s (rough)"
    )
    # --lr-search: the cells after this one train (1 + 0.8 x 3) times
    grid = cell_settings(epochs=3, lr_grid=(1e-3, 3e-3, 1e-2))
    searched = [dataclasses.replace(job, settings=grid) for job in jobs]
    assert progress.eta_seconds(searched, 0, 2) == pytest.approx(6 * (1 + 3.4 * 6))
    assert progress.eta_text(jobs, 2, 3) == "; last epoch of the suite"


def test_epoch_callbacks_compose():
    calls = []

    def train(*args, on_epoch_end=None, **kwargs):
        on_epoch_end("result", 1)

    ours = functools.partial(lambda tag, r, e: calls.append((tag, e)), "ours")
    theirs = functools.partial(lambda tag, r, e: calls.append((tag, e)), "theirs")
    train(**with_epoch_callback(train, ours))
    train(**with_epoch_callback(functools.partial(train, on_epoch_end=theirs), ours))
    assert calls == [("ours", 1), ("ours", 1), ("theirs", 1)]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (4.25, "4.2 s"),
        (42, "42 s"),
        (14 * 60, "14 min"),
        (3.5 * 3600, "3.5 h"),
        (3 * 86400, "3.0 days"),
    ],
)
def test_durations_are_as_precise_as_an_estimate(seconds, text):
    assert format_duration(seconds) == text
