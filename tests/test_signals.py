"""SIGTERM (like Ctrl-C) stops `bench run` after the current batch, writes what is done,
prints the command that resumes and exits 130; that command then finishes the suite."""

from __future__ import annotations

import csv
import shlex
import signal
import subprocess
import sys
import time

import pytest

from bench.cli import main

from tiny_runs import run_argv, slow_plugin_source


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigterm_stops_writes_and_the_hint_resumes(tmp_path):
    out = tmp_path / "run"
    plugin = tmp_path / "slow_fcn.py"
    plugin.write_text(slow_plugin_source("slow_fcn"))
    argv = run_argv(
        "slow_fcn",
        plugin=plugin,
        synthetic_count=9,
        synthetic_size=32,
        seeds=[0, 1],
        epochs=50,
        batch_size=6,
        out=out,
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not list((out / "resume").glob("*.pt")):  # an epoch has finished
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "no epoch checkpoint appeared"
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr
    assert "SIGTERM: stopping after the current batch" in stderr
    assert "Resume with:" in stderr
    hint = stderr.strip().splitlines()[-1].strip()
    assert hint.startswith("bench run slow_fcn") and str(out) in hint
    assert (out / "cells.csv").is_file() and (out / "config.json").is_file()
    assert list((out / "resume").glob("*.pt"))

    assert main(shlex.split(hint)[1:]) == 0
    with (out / "cells.csv").open(newline="") as handle:
        cells = list(csv.DictReader(handle))
    assert [(c["seed"], c["status"]) for c in cells] == [("0", "ok"), ("1", "ok")]
    assert not list((out / "resume").glob("*.pt"))
