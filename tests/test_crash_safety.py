"""A kill at any write of a run leaves a directory that the same command resumes into
exactly the files of an uninterrupted run.

Black-box: every run is ``bench.cli.main`` in a real child process. The child counts the
renames that commit the run directory's files (:func:`bench.atomic.atomic_write_bytes`)
and SIGKILLs itself at the k-th one, either with the new file complete but not yet renamed
into place ("during") or just after the rename ("after"). Then a fresh child runs the same
command, and its files must equal those of a run that was never killed. The children are
forked from a server that has already imported torch, so each costs its training only.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import signal
from pathlib import Path

import pytest

from tiny_runs import run_argv, tiny_plugin_source

# One small convolution, so that a child's time goes to writing, not training; two seeds
# and two epochs write every kind of file twice: config, truth, inputs, epoch checkpoints,
# predictions, final checkpoints, cell records, tables, report, figures and report.html.
PLUGIN = tiny_plugin_source("tiny_fcn")


def crash_argv(plugin: Path) -> list[str]:
    return run_argv(
        "tiny_fcn",
        plugin=plugin,
        synthetic_count=6,
        synthetic_size=32,
        num_folds=3,
        seeds=[0, 1],
        epochs=2,
        batch_size=2,
        deterministic=True,
    )


# Columns that hold wall times: they differ between any two runs.
TIMING_COLUMNS = {"seconds", "train_seconds", "total_seconds", "images_per_second"}
TIMING_COLUMNS |= {"peak_memory_mb", "write_seconds"}


class _CountingOs:
    """``os`` for bench.atomic, whose ``replace`` counts and may kill the process."""

    def __init__(self, kill_at: int, mode: str, log: list[str]) -> None:
        self.kill_at, self.mode, self.log = kill_at, mode, log

    def __getattr__(self, name: str):
        return getattr(os, name)

    def replace(self, source, target) -> None:
        self.log.append(str(target))
        if len(self.log) == self.kill_at and self.mode == "during":
            os.kill(os.getpid(), signal.SIGKILL)
        os.replace(source, target)
        if len(self.log) == self.kill_at and self.mode == "after":
            os.kill(os.getpid(), signal.SIGKILL)


def _child(argv: list[str], kill_at: int, mode: str, log_path: str | None) -> None:
    import contextlib
    import io

    from bench import atomic
    from bench.cli import main

    log: list[str] = []
    atomic.os = _CountingOs(kill_at, mode, log)  # type: ignore[assignment]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = main(argv)
    if log_path:
        Path(log_path).write_text(json.dumps(log))
    os._exit(code)


@pytest.fixture(scope="module")
def fork() -> multiprocessing.context.BaseContext:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(
        # torch._inductor: what torch.use_deterministic_algorithms imports (2 s)
        [
            "torch",
            "torch._inductor",
            "matplotlib.pyplot",
            "bench.cli",
            "bench.suite",
            "bench.report",
        ]
    )
    return context


def run_child(fork, argv, kill_at=0, mode="", log_path=None) -> int:
    process = fork.Process(target=_child, args=(argv, kill_at, mode, log_path))
    process.start()
    process.join(timeout=300)
    if process.is_alive():
        process.kill()
        pytest.fail(f"bench run did not finish: {argv}")
    return process.exitcode


def _strip_timing(text: str) -> list[list[str]]:
    import csv

    rows = list(csv.reader(text.splitlines()))
    keep = [i for i, name in enumerate(rows[0]) if name not in TIMING_COLUMNS]
    return [[row[i] for i in keep] for row in rows]


def snapshot(out: Path) -> dict[str, object]:
    """What a run's results are: file contents, with wall times and binary pickles aside."""
    files: dict[str, object] = {}
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        name = str(path.relative_to(out))
        if (
            name in ("config.json", "report.md", "report.html", ".lock", "timing.json")
            or name.endswith(".png")
            and "/" not in name
        ):
            # times and machine; figures (and report.html, which embeds them) are rendered
            # from the tables compared here
            continue
        data = path.read_bytes()
        if name.endswith(".csv"):
            files[name] = _strip_timing(data.decode())
        elif name.startswith("cells/"):
            record = json.loads(data)
            for row in [record["cell"], *record["history"]]:
                for column in TIMING_COLUMNS & set(row):
                    row[column] = None
            files[name] = record
        elif name.startswith("checkpoints/"):
            import torch

            state = torch.load(path, weights_only=True)["state_dict"]
            files[name] = {
                k: hashlib.sha256(v.numpy().tobytes()).hexdigest() for k, v in state.items()
            }
        else:
            files[name] = hashlib.sha256(data).hexdigest()
    return files


@pytest.fixture(scope="module")
def reference(fork, tmp_path_factory) -> tuple[dict[str, object], list[str], list[str]]:
    """The uninterrupted run: its snapshot, its writes in order, and its arguments."""
    folder = tmp_path_factory.mktemp("crash")
    plugin = folder / "tiny_fcn.py"
    plugin.write_text(PLUGIN)
    argv = crash_argv(plugin)
    out = folder / "whole"
    log_path = folder / "writes.json"
    assert run_child(fork, [*argv, "--out", str(out)], log_path=str(log_path)) == 0
    writes = [str(Path(p).relative_to(out)) for p in json.loads(log_path.read_text())]
    return snapshot(out), writes, argv


def test_the_run_writes_every_kind_of_file(reference):
    _, writes, _ = reference
    kinds = {w.split("/")[0] for w in writes}
    assert {
        "config.json",
        "truth",
        "inputs",
        "resume",
        "predictions",
        "checkpoints",
        "cells",
    } <= kinds
    assert {"cells.csv", "history.csv", "per_image.csv", "summary.csv", "report.md"} <= kinds
    assert "report.html" in kinds and "timing.json" in kinds
    # report.html embeds the figures drawn before it; timing.json then records the report's time
    assert writes[-2:] == ["report.html", "timing.json"]
    assert {"curves_loss.png", "predictions.png"} <= kinds


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["during", "after"])
def test_a_kill_at_any_write_resumes_to_the_uninterrupted_result(fork, reference, tmp_path, mode):
    expected, writes, base = reference
    failures = []
    for k in range(1, len(writes) + 1):
        out = tmp_path / f"{mode}-{k}"
        argv = [*base, "--out", str(out)]
        code = run_child(fork, argv, kill_at=k, mode=mode)
        assert code == -signal.SIGKILL, f"write {k} ({writes[k - 1]}): exit {code}, not killed"
        assert run_child(fork, argv) == 0, f"resume after a kill at write {k} ({writes[k - 1]})"
        leftovers = [p for p in out.rglob("*.tmp")] + list((out / "resume").glob("*.pt"))
        got = snapshot(out)
        if got != expected or leftovers:
            differing = sorted(
                name for name in set(got) | set(expected) if got.get(name) != expected.get(name)
            )
            failures.append(f"kill {mode} write {k} ({writes[k - 1]}): {differing} {leftovers}")
    assert not failures, "\n".join(failures)
