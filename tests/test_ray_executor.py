"""`bench run --executor ray`: the same run directory as the local executor (under
--deterministic, both at their default thread counts), resume across executors, plugins and
failures in workers, SIGTERM; the thread count a deterministic run resolves and applies.

Ray is an optional extra: without it these tests are skipped, except in CI (``CI=true``),
where they fail, so a missing Ray can never pass silently. Ray runs locally on this CPU.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import shlex
import shutil
import signal
import sys
import textwrap
import threading
import time

import pytest
import torch

from bench import runner
from bench.cli import main
from bench.config import RunConfig
from bench.executors import RAY_INSTALL_HINT, resolve_threads
from bench.run_dir import FORMAT_VERSION

from tiny_runs import cell_settings, run_argv, slow_plugin_source

# Two tiny architectures x two seeds, one fold; only the executor flag differs between runs.
ARGV = run_argv("unet_thesis", "segnet_basic", seeds=[0, 1], deterministic=True)
# Ray at its defaults: a cell reserves 1 CPU, and would train on 1 torch thread where the
# local run uses the process's count, were the count not part of the configuration.
RAY_FLAGS = ["--executor", "ray"]
TIMING_COLUMNS = {
    "seconds",
    "train_seconds",
    "total_seconds",
    "images_per_second",
    "peak_memory_mb",
    "write_seconds",
}


def import_ray():
    try:
        import ray
    except ImportError:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"ray is not installed ({RAY_INSTALL_HINT})")
        pytest.skip(f"ray is not installed ({RAY_INSTALL_HINT})")
    return ray


def rows(path, drop=TIMING_COLUMNS):
    with path.open(newline="") as handle:
        return [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(handle)]


def files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def assert_same_results(a, b):
    for name in ("cells.csv", "history.csv", "per_image.csv"):
        assert rows(a / name) == rows(b / name), name
    assert files(a / "predictions") == files(b / "predictions")
    assert files(a / "predictions").keys() and files(a / "truth") == files(b / "truth")
    for path in sorted((a / "checkpoints").glob("*.pt")):
        weights_a = torch.load(path, weights_only=True)["state_dict"]
        weights_b = torch.load(b / "checkpoints" / path.name, weights_only=True)["state_dict"]
        assert weights_a.keys() == weights_b.keys()
        assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a), path.name


@pytest.fixture(autouse=True)
def no_ray_address(monkeypatch):
    # Without --ray-address, bench joins $RAY_ADDRESS: the tests use a local instance.
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


@pytest.fixture(scope="module", autouse=True)
def driver_threads():
    """This process's torch threads, at least 2, so that they differ from the 1 CPU a Ray
    cell reserves by default (with OMP_NUM_THREADS=1 the comparison would prove nothing).
    Both runs start from this count; neither is told a count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(max(2, threads))
    yield torch.get_num_threads()
    torch.set_num_threads(threads)


def recorded_threads(out):
    return json.loads((out / "config.json").read_text())["config"]["threads"]


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, driver_threads):
    out = tmp_path_factory.mktemp("ray") / "local"
    assert main([*ARGV, "--out", str(out)]) == 0
    assert torch.get_num_threads() == driver_threads  # the cells restored the count
    assert recorded_threads(out) == driver_threads
    return out


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray instance for the tests that need not start their own (startup is slow)."""
    ray = import_ray()
    sigterm = signal.getsignal(signal.SIGTERM)
    # address="local": a new instance, never a cluster that `ray start` left on this machine
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    signal.signal(signal.SIGTERM, sigterm)  # ray.init installs its own
    yield ray
    ray.shutdown()
    signal.signal(signal.SIGTERM, sigterm)


def test_missing_ray_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    out = tmp_path / "run"
    assert main([*ARGV, *RAY_FLAGS, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--executor ray" in err and RAY_INSTALL_HINT in err
    assert not out.exists()  # checked before any data is loaded or written


def meta_with(config: dict) -> str:
    """A run directory's config.json holding ``config`` (the rest left empty)."""
    empty = {"dataset": {}, "protocol": {}, "environment": {}}
    return json.dumps({"format_version": FORMAT_VERSION, "config": config, **empty})


def test_threads_resolve_to_a_recorded_part_of_the_configuration(tmp_path, driver_threads):
    config = RunConfig(architectures=("unet_thesis",), deterministic=True)
    assert resolve_threads(config) == driver_threads  # the same for either executor
    assert resolve_threads(dataclasses.replace(config, executor="ray")) == driver_threads
    assert resolve_threads(dataclasses.replace(config, threads=3)) == 3  # --threads wins
    plain = dataclasses.replace(config, deterministic=False)
    assert resolve_threads(plain) is None  # placement decides
    assert resolve_threads(dataclasses.replace(plain, threads=3)) == 3
    # A resumption keeps the count its run recorded, whatever this process has.
    (tmp_path / "config.json").write_text(meta_with({"threads": 7}))
    assert resolve_threads(config, tmp_path) == 7
    assert resolve_threads(dataclasses.replace(config, threads=3), tmp_path) == 3
    # A run directory from before --threads: its cells used placement's count; still so.
    (tmp_path / "config.json").write_text(meta_with({"deterministic": True}))
    assert resolve_threads(config, tmp_path) is None


def test_a_cell_trains_with_its_threads_and_restores_the_count(monkeypatch, driver_threads):
    seen = []
    monkeypatch.setattr(
        runner, "_train", lambda *args, **kwargs: seen.append(torch.get_num_threads())
    )
    for threads in (1, None):
        result = runner.train_cell(
            "unet_thesis", 0, 0, None, cell_settings(threads=threads), torch.device("cpu")
        )
        assert result.status == "ok"
        assert torch.get_num_threads() == driver_threads
    assert seen == [1, driver_threads]


def test_ray_run_equals_local_run(local_run, tmp_path, capsys, driver_threads):
    ray = import_ray()
    assert not ray.is_initialized()
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    out = tmp_path / "ray"
    assert main([*ARGV, *RAY_FLAGS, "--out", str(out)]) == 0
    assert not ray.is_initialized()  # the local instance it started is shut down
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers
    captured = capsys.readouterr()
    assert "ray: 4 cell(s) submitted to a local Ray instance" in captured.err
    # The Ray cells reserved fewer CPUs than the local run's threads, and trained with those.
    assert f"each cell trains with {driver_threads} torch threads" in captured.err
    assert recorded_threads(out) == driver_threads
    assert "[4/4] " in captured.err
    assert captured.out.count("test acc") == 4  # the local executor's summary lines
    assert_same_results(local_run, out)
    assert (out / "report.md").is_file() and (out / "summary.csv").is_file()
    assert not list((out / "resume").glob("*"))  # no checkpoint or probe left


def test_resume_across_executors(local_run, ray_session, tmp_path, capsys):
    # A local run missing one cell (in the middle of the suite order) is finished by Ray.
    out = tmp_path / "resumed"
    shutil.copytree(local_run, out)
    for name in ("cells.csv", "history.csv", "per_image.csv"):
        path = out / name
        lines = path.read_text().splitlines(keepends=True)
        kept = [line for line in lines if not line.startswith("unet_thesis,1,")]
        assert len(kept) < len(lines)
        path.write_text("".join(kept))
    shutil.rmtree(out / "predictions" / "unet_thesis" / "seed-1")
    (out / "checkpoints" / "unet_thesis_seed1_fold0.pt").unlink()

    assert main([*ARGV, *RAY_FLAGS, "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "3 cell(s) already done" in err
    assert "ray: 1 cell(s) submitted" in err and "[1/1] unet_thesis (seed 1, fold 0): done" in err
    assert_same_results(local_run, out)


SLOW_AND_FAILING = (
    slow_plugin_source("ray_slow_fcn")
    + """

class Boom(BaseException):  # not an Exception: train_cell does not record it, the task fails
    pass


@register_architecture("ray_boom")
def boom(num_classes=3, in_channels=3, width=1.0):
    class Exploding(torch.nn.Conv2d):
        def forward(self, x):
            if self.training:  # not while the plugin is validated
                raise Boom("the worker's task raised")
            return super().forward(x)

    return Exploding(in_channels, num_classes, 3, padding=1)
"""
)


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    # One file for the module: a name registered by two files would clash in a process.
    path = tmp_path_factory.mktemp("plugin") / "ray_plugin.py"
    path.write_text(textwrap.dedent(SLOW_AND_FAILING))
    return path


def plugin_argv(plugin, out, *architectures, epochs):
    return run_argv(
        *architectures,
        plugin=plugin,
        synthetic_size=32,
        epochs=epochs,
        executor="ray",
        out=out,
    )


def test_plugins_load_in_workers_and_a_raising_task_is_a_failed_cell(ray_session, plugin, tmp_path):
    argv = plugin_argv(plugin, tmp_path / "run", "ray_slow_fcn", "ray_boom", epochs=1)
    assert main(argv) == 1
    cells = {row["architecture"]: row for row in rows(tmp_path / "run" / "cells.csv")}
    assert cells["ray_slow_fcn"]["status"] == "ok"
    assert cells["ray_boom"]["status"] == "failed"
    assert "Boom: the worker's task raised" in cells["ray_boom"]["error"]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigterm_cancels_the_tasks_and_the_hint_resumes(ray_session, plugin, tmp_path, capsys):
    out = tmp_path / "run"
    argv = [*plugin_argv(plugin, out, "ray_slow_fcn", epochs=40), "--seeds", "0", "1"]

    returned = threading.Event()

    def terminate_after_a_checkpoint():  # written by a worker: it sees the run directory
        deadline = time.monotonic() + 120
        while not returned.is_set() and time.monotonic() < deadline:
            if list((out / "resume").glob("*.pt")):
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=terminate_after_a_checkpoint)
    killer.start()
    try:
        code = main(argv)
    finally:
        returned.set()
        killer.join()
    assert code == 130
    err = capsys.readouterr().err
    assert "SIGTERM: stopping after the current batch" in err
    hint = err.strip().splitlines()[-1].strip()
    assert hint.startswith("bench run ray_slow_fcn") and str(out) in hint
    assert rows(out / "cells.csv") == []  # nothing finished: both cells were cancelled
    assert list((out / "resume").glob("*.pt"))

    assert main(shlex.split(hint)[1:]) == 0
    cells = rows(out / "cells.csv")
    assert [(c["seed"], c["status"]) for c in cells] == [("0", "ok"), ("1", "ok")]
    assert not list((out / "resume").glob("*"))
