"""Where the cells of a suite run: here, one after another, or as tasks on a Ray cluster.

Both executors take the suite's pending cells (:class:`CellJob`, in suite order) and yield
each finished :class:`~bench.runner.CellResult` as it completes; :func:`bench.suite.run_suite`
writes the run directory from them in suite order, so the files do not depend on where or
in which order the cells ran.

Ray (``--executor ray``, the optional extra ``ray``): the driver (this process) loads the
data and puts each split once in the object store; every cell is a task asking for
``--cpus-per-task``/``--gpus-per-task``; its result (metrics, predictions, weights) comes
back to the driver, which writes every file. Workers therefore need the same installation
of this package (and ``--plugin`` files at the same absolute path), not the run directory.
Mid-cell epoch checkpoints are written only by tasks that can see the run directory at the
driver's path (same machine, or a shared filesystem mounted there); elsewhere an
interrupted cell restarts from its first epoch, which gives the same numbers.

Progress: the local executor prints a ``[cell k/N]`` line as each cell starts and, without
progress bars, a line per epoch with a rough suite ETA (:class:`CellProgress`); Ray tasks
print nothing (their output would interleave): the driver counts cells as they finish.

Threads: on a CPU the number of torch intra-op threads decides how kernels split their
sums, so it changes the numbers. Under ``--deterministic`` it is therefore part of the
run's configuration (:func:`resolve_threads`): both executors train every cell with that
count (``CellSettings.threads``), so the executor never changes a result.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import logging
import os
import signal
import socket
import statistics
import sys
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TextIO

import torch

import architectures
from bench import environment
from bench.config import RunConfig
from bench.errors import BenchError, ConfigError
from bench.protocols import ProtocolSplit
from bench.run_dir import RunDir
from bench.runner import (
    CellInterrupted,
    CellResult,
    CellSettings,
    HeapTrimmer,
    select_device,
    train_cell,
)

RAY_INSTALL_HINT = 'pip install -c constraints.txt -e ".[ray]"'
POLL_SECONDS = 0.25  # how often the Ray driver looks at the stop flag while tasks run


@dataclass(frozen=True)
class CellJob:
    """One cell still to run."""

    architecture: str
    seed: int
    fold: int | None
    settings: CellSettings
    checkpoint: Path  # the cell's epoch checkpoint (bench.suite.resume_path)

    @property
    def key(self) -> tuple[str, int, int | None]:
        return self.architecture, self.seed, self.fold

    def where(self) -> str:
        return f"seed {self.seed}" + (f", fold {self.fold}" if self.fold is not None else "")

    def label(self) -> str:
        """``unet_thesis seed 1 fold 0`` (no fold for a fixed split), for progress lines."""
        return f"{self.architecture} {self.where().replace(',', '')}"


class Executor(Protocol):
    def run(
        self,
        jobs: Sequence[CellJob],
        splits: Mapping[int | None, ProtocolSplit],
        class_metrics: dict[str, tuple[int, ...]],
    ) -> Iterator[CellResult]:
        """Yield a result per job as it finishes; raise CellInterrupted once ``stop`` is set."""
        ...

    def environment(self) -> dict[str, Any]:
        """What config.json should add to the driver's environment (where cells ran)."""
        ...


def lr_search_factor(settings: CellSettings) -> float:
    """Trainings a cell costs: --lr-search trains each rate of its grid on 80 % of the
    training images for the full epochs before the cell itself (see the README)."""
    return 1 + 0.8 * len(settings.lr_grid) if settings.lr_grid else 1.0


def plural(n: int, noun: str) -> str:
    """``1 epoch``, ``2 epochs``."""
    return f"{n} {noun}" + ("" if n == 1 else "s")


def format_duration(seconds: float) -> str:
    """``4.2 s``, ``42 s``, ``14 min``, ``3.5 h``, ``2.1 days``: as precise as an estimate
    deserves."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


class CellProgress:
    """What the local executor says while its cells train, on stderr.

    At each cell's start a ``[cell k/N]`` line; after each epoch, when progress bars are
    off (``lines``), a line with the epoch's losses and seconds. Both carry a rough suite
    ETA once an epoch has been timed: the median seconds per epoch of the cell's
    architecture (the mean over the architectures seen, for one not yet seen) × the epochs
    left in this cell and the cells after it. Every line is flushed, so a log file (nohup,
    CI, a cluster job) sees it when it happens, not when the cell ends.

    ``total``: the suite's cells, done ones included, so that ``k`` counts from the cells
    an earlier invocation finished.
    """

    def __init__(self, total: int, lines: bool, stream: TextIO | None = None) -> None:
        self.total = total
        self.lines = lines
        self.stream = stream  # None: sys.stderr when printing (tests capture it)
        self.epoch_seconds: dict[str, list[float]] = {}  # architecture -> per epoch

    def counter(self, jobs: Sequence[CellJob], index: int) -> str:
        return f"[cell {self.total - len(jobs) + index + 1}/{self.total}]"

    def eta_seconds(self, jobs: Sequence[CellJob], index: int, epoch: int) -> float | None:
        """Seconds left for ``jobs[index]`` after ``epoch`` and the jobs after it; None
        before any epoch was timed."""
        if not self.epoch_seconds:
            return None
        per_epoch = {name: statistics.median(s) for name, s in self.epoch_seconds.items()}
        unseen = statistics.fmean(per_epoch.values())
        current = jobs[index]
        # Before its first epoch a cell still has its learning-rate search ahead.
        factor = lr_search_factor(current.settings) if epoch == 0 else 1.0
        left = (
            (current.settings.epochs - epoch) * factor * per_epoch.get(current.architecture, unseen)
        )
        for job in jobs[index + 1 :]:
            left += (
                job.settings.epochs
                * lr_search_factor(job.settings)
                * per_epoch.get(job.architecture, unseen)
            )
        return left

    def eta_text(self, jobs: Sequence[CellJob], index: int, epoch: int) -> str:
        left = self.eta_seconds(jobs, index, epoch)
        if left is None:
            return ""
        if left <= 0:
            return "; last epoch of the suite"
        return f"; suite ETA ~{format_duration(left)} (rough)"

    def cell_started(self, jobs: Sequence[CellJob], index: int) -> None:
        job = jobs[index]
        self._print(
            f"{self.counter(jobs, index)} {job.label()}: {plural(job.settings.epochs, 'epoch')}"
            + self.eta_text(jobs, index, 0)
        )

    def epoch_ended(
        self, jobs: Sequence[CellJob], index: int, result: CellResult, epoch: int
    ) -> None:
        """An ``on_epoch_end`` callback (with ``jobs`` and ``index`` bound)."""
        job = jobs[index]
        rows = [row for row in result.history if row.get("epoch") == epoch]
        # The epoch's training and test evaluation, as its history rows timed them.
        seconds = sum(row.get("seconds") or 0.0 for row in rows)
        self.epoch_seconds.setdefault(job.architecture, []).append(seconds)
        if not self.lines:
            return  # the progress bars show it
        dice = {r.get("split"): r.get("dice") for r in rows}
        self._print(
            f"{self.counter(jobs, index)} {job.label()}: epoch {epoch}/{job.settings.epochs}, "
            f"train loss {result.train_loss:.4f}, test acc {result.test_accuracy:.4f}, "
            + "".join(
                f"{split} Dice {dice[split]:.4f}, "
                for split in ("test", "validation")  # validation: early stopping's
                if dice.get(split) is not None
            )
            + f"{seconds:.1f} s"
            + self.eta_text(jobs, index, epoch)
        )

    def _print(self, line: str) -> None:
        # A closed or broken stderr must not fail the cell this is called from.
        with contextlib.suppress(OSError, ValueError):
            print(line, file=self.stream or sys.stderr, flush=True)


def with_epoch_callback(
    train: Callable[..., CellResult], callback: Callable[[CellResult, int], None]
) -> dict[str, Any]:
    """The ``on_epoch_end`` keyword that runs ``callback`` and then any callback ``train``
    already carries (``functools.partial(train_cell, on_epoch_end=...)``, as tests make):
    a keyword given at the call would replace the partial's. Ours runs first, so an epoch
    that the other cuts (CellInterrupted) is still logged; it did finish."""
    inner = train.keywords.get("on_epoch_end") if isinstance(train, functools.partial) else None
    if inner is None:
        return {"on_epoch_end": callback}

    def both(result: CellResult, epoch: int) -> None:
        callback(result, epoch)
        inner(result, epoch)

    return {"on_epoch_end": both}


class LocalExecutor:
    """The cells one after another in this process, on ``device``.

    ``train`` trains one cell (:func:`~bench.runner.train_cell`'s signature). The executor
    owns the :class:`~bench.runner.HeapTrimmer` of its sequence of cells: the free heap
    goes back between cells of different configurations only. ``progress``: what to say
    while cells train (:class:`CellProgress`); None: nothing.
    """

    def __init__(
        self,
        device: Any,
        stop: threading.Event,
        train: Callable[..., CellResult] = train_cell,
        progress: CellProgress | None = None,
    ) -> None:
        self.device = device
        self.stop = stop
        self.train = train
        self.heap = HeapTrimmer()
        self.progress = progress

    def run(
        self,
        jobs: Sequence[CellJob],
        splits: Mapping[int | None, ProtocolSplit],
        class_metrics: dict[str, tuple[int, ...]],
    ) -> Iterator[CellResult]:
        for index, job in enumerate(jobs):
            if self.stop.is_set():
                raise CellInterrupted()
            callback: dict[str, Any] = {}
            if self.progress is not None:
                self.progress.cell_started(jobs, index)
                callback = with_epoch_callback(
                    self.train, functools.partial(self.progress.epoch_ended, jobs, index)
                )
            yield self.train(
                job.architecture,
                job.seed,
                job.fold,
                splits[job.fold],
                job.settings,
                self.device,
                class_metrics=class_metrics,
                checkpoint=job.checkpoint,
                stop=self.stop,
                heap=self.heap,
                **callback,
            )

    def environment(self) -> dict[str, Any]:
        return {}


@contextlib.contextmanager
def keep_sigterm_handler() -> Iterator[None]:
    """Restore the SIGTERM handler after the body: ray.init and ray.shutdown replace it with
    sys.exit, and the suite's handler is the one that stops cleanly."""
    in_main_thread = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGTERM) if in_main_thread else None
    try:
        yield
    finally:
        if in_main_thread and handler is not None:
            signal.signal(signal.SIGTERM, handler)


def import_ray() -> Any:
    """The ``ray`` module, or a ConfigError saying how to install the extra."""
    try:
        import ray
    except ImportError:
        raise ConfigError(
            f"--executor ray needs Ray, an optional extra: {RAY_INSTALL_HINT}"
        ) from None
    return ray


def check_executor(config: RunConfig) -> None:
    """Errors the executor would hit only after the data is loaded, raised up front."""
    if config.executor != "ray":
        return
    import_ray()
    if config.device == "cuda" and config.gpus_per_task == 0:
        # Ray gives a task only the GPUs it asked for; one asking for none must not use any.
        raise ConfigError("--device cuda with --executor ray needs --gpus-per-task above 0")
    if ray_address(config) != "local":
        check_reachable(config)


def ray_address(config: RunConfig) -> str:
    """``--ray-address``, else ``$RAY_ADDRESS`` (``ray job submit`` sets it), else "local".

    Never None: ray.init(address=None) would join the last cluster that ``ray start`` began
    on this machine, even a dead one, instead of starting a local instance.
    """
    return config.ray_address or os.environ.get("RAY_ADDRESS") or "local"


def address_option(config: RunConfig) -> str:
    """Where the address came from, for error messages."""
    if config.ray_address:
        return f"--ray-address {config.ray_address}"
    return f"RAY_ADDRESS={ray_address(config)}"


def check_reachable(config: RunConfig) -> None:
    """Fail fast on a wrong address: ray.init retries an unreachable one for minutes."""
    host_port = ray_address(config).split("://", 1)[-1].rstrip("/")
    host, separator, port = host_port.rpartition(":")
    if not separator or not port.isdigit():
        return  # "auto", "local" or a form Ray resolves itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except OSError as error:
        raise ConfigError(
            f"{address_option(config)}: cannot connect ({error.strerror or error}); is "
            "`ray start --head` running there?"
        ) from None


def resolve_threads(config: RunConfig, out_dir: str | Path | None = None) -> int | None:
    """The torch intra-op threads every cell of the run trains with (None: placement decides).

    ``--threads`` when given. Otherwise, under ``--deterministic``, the count recorded by
    the run being resumed in ``out_dir`` (``--out``: a resumption, by either executor or on
    another machine, computes what the interrupted run did), else this process's
    ``torch.get_num_threads()``. The value goes into config.json's resolved configuration
    (so a resumption with another ``--threads`` is refused) and into every cell's settings.

    Why this process's count and not a constant such as 1: a deterministic run is then as
    fast locally as a plain one (1 thread would halve the speed of a 2-core machine), and
    Ray tasks get the same count, so local and Ray runs agree by default. The price: the
    default depends on the driver's machine; config.json records it, and ``--threads N``
    reproduces the run elsewhere. (CPUs of another kind may still round differently.)

    Without ``--deterministic`` and ``--threads`` the count stays placement: a local cell
    uses the process's threads, a Ray cell ``--cpus-per-task``; None is recorded.
    """
    if config.threads is not None:
        return config.threads
    if not config.deterministic:
        return None
    run = RunDir(out_dir) if out_dir is not None else None
    if run is not None and run.is_run():
        try:
            earlier_config = run.read_meta()["config"]
        except BenchError:
            earlier_config = None  # bench.suite.check_resumable reports the broken file
        if isinstance(earlier_config, dict):
            if "threads" not in earlier_config:
                # Written before --threads existed: its cells ran with placement's count;
                # None keeps doing that, and keeps it resumable.
                return None
            recorded = earlier_config["threads"]
            if isinstance(recorded, int) and not isinstance(recorded, bool) and recorded >= 1:
                if recorded != torch.get_num_threads():
                    print(
                        f"resuming {out_dir} with --threads {recorded}, as it was started "
                        f"(this process has {torch.get_num_threads()})",
                        file=sys.stderr,
                    )
                return recorded
    return torch.get_num_threads()


def task_device_name(device: str, gpus_per_task: float) -> str:
    """The device a Ray task uses: ``auto`` means CPU when the task reserved no GPU."""
    if device == "auto" and gpus_per_task == 0:
        return "cpu"
    return device


# A Ray worker process runs task after task: its heap, and so when to release it, is the
# process's (see bench.runner.HeapTrimmer), whichever task it runs.
_WORKER_HEAP = HeapTrimmer()


def _ray_cell(
    job: CellJob,
    split: ProtocolSplit,
    class_metrics: dict[str, tuple[int, ...]],
    device: str,
    cpus_per_task: float,
    plugins: tuple[str, ...],
    probe: tuple[str, str],
) -> tuple[CellResult, dict[str, Any]]:
    """The body of one Ray task: train the cell on this worker; return it and the worker."""
    hostname = socket.gethostname()
    # Use the CPUs the task asked for, no more (Ray sets OMP_NUM_THREADS, torch may not),
    # unless the run fixes the count: then train_cell applies job.settings.threads.
    torch.set_num_threads(job.settings.threads or max(1, int(cpus_per_task)))
    try:
        # Architectures of --plugin files exist in a worker only once it loaded them too.
        for plugin in plugins:
            architectures.load_plugin_file(plugin)
        # With GPUs requested Ray sets CUDA_VISIBLE_DEVICES, so "cuda" is the task's own.
        selected = select_device(device)
    except BenchError as error:
        raise type(error)(f"on Ray worker {hostname}: {error}") from None
    # The object store hands out read-only shared views; the runner gets arrays of its own,
    # as when it runs locally (tensors made from them may be written to).
    split = copy.deepcopy(split)
    path, token = probe
    try:
        sees_run_dir = Path(path).read_text() == token
    except OSError:
        sees_run_dir = False
    result = train_cell(
        job.architecture,
        job.seed,
        job.fold,
        split,
        job.settings,
        selected,
        class_metrics=class_metrics,
        checkpoint=job.checkpoint if sees_run_dir else None,
        stop=None,  # a threading.Event cannot cross processes; the driver cancels instead
        heap=_WORKER_HEAP,
    )
    worker = {
        "hostname": hostname,
        "device": str(selected),
        "device_name": environment.device_name(selected),
    }
    return result, worker


class RayExecutor:
    """Every cell a Ray task, on the cluster at ``config.ray_address`` or a local instance."""

    def __init__(self, config: RunConfig, stop: threading.Event, progress: bool) -> None:
        self.config = config
        self.stop = stop
        self.progress = progress
        self.ray = import_ray()
        self.workers: dict[tuple[str, str, str], int] = {}  # (host, device, name) -> cells

    def run(
        self,
        jobs: Sequence[CellJob],
        splits: Mapping[int | None, ProtocolSplit],
        class_metrics: dict[str, tuple[int, ...]],
    ) -> Iterator[CellResult]:
        if not jobs:
            return
        ray = self.ray
        started = self._connect()
        pending: dict[Any, CellJob] = {}
        probe: Path | None = None
        bar = None
        try:
            self._check_resources(started)
            # Workers use the checkpoint paths only where they see this token at that path.
            run_dir_token = uuid.uuid4().hex
            probe = jobs[0].checkpoint.resolve().parent / f".ray-probe-{run_dir_token}"
            probe.parent.mkdir(parents=True, exist_ok=True)
            probe.write_text(run_dir_token)
            split_refs = {fold: ray.put(splits[fold]) for fold in {job.fold for job in jobs}}
            task = ray.remote(_ray_cell).options(
                num_cpus=self.config.cpus_per_task,
                num_gpus=self.config.gpus_per_task,
                name="bench-cell",
            )
            device = task_device_name(self.config.device, self.config.gpus_per_task)
            self._warn_threads(jobs[0].settings.threads)
            plugins = tuple(str(Path(p).resolve()) for p in self.config.plugins)
            for job in jobs:
                remote_job = dataclasses.replace(
                    job,
                    # Progress bars of tasks would interleave in the driver's log.
                    settings=dataclasses.replace(job.settings, progress=False),
                    checkpoint=job.checkpoint.resolve(),
                )
                ref = task.remote(
                    remote_job,
                    split_refs[job.fold],
                    class_metrics,
                    device,
                    self.config.cpus_per_task,
                    plugins,
                    (str(probe), run_dir_token),
                )
                pending[ref] = job
            address = ray_address(self.config)
            where = "a local Ray instance" if address == "local" else address
            print(
                f"ray: {len(jobs)} cell(s) submitted to {where} "
                f"({self.config.cpus_per_task:g} CPU, {self.config.gpus_per_task:g} GPU each)",
                file=sys.stderr,
                flush=True,
            )
            from tqdm.auto import tqdm

            bar = tqdm(total=len(jobs), desc="cells", unit="cell", disable=not self.progress)
            finished = 0
            while pending:
                if self.stop.is_set():
                    # Keep what already finished, then stop; the rest resumes later.
                    ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0)
                    for ref in ready:
                        result = self._collect(ref, pending.pop(ref), interrupted=True)
                        if result is not None:
                            yield result
                    raise CellInterrupted()
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_SECONDS)
                for ref in ready:
                    job = pending.pop(ref)
                    result = self._collect(ref, job, interrupted=self.stop.is_set())
                    if result is None:  # the task died of the stop itself
                        continue
                    finished += 1
                    state = "done" if result.status == "ok" else "FAILED"
                    bar.update(1)
                    bar.write(
                        f"[{finished}/{len(jobs)}] {job.architecture} ({job.where()}): {state}",
                        file=sys.stderr,
                    )
                    yield result
        finally:
            for ref in pending:  # stopped, or an error: nothing more is wanted from them
                # A task that has just ended cannot be cancelled: nothing to do then.
                with contextlib.suppress(Exception):
                    ray.cancel(ref)
            if bar is not None:
                bar.close()
            if probe is not None:
                probe.unlink(missing_ok=True)
            if started:
                self._disconnect()

    def _connect(self) -> bool:
        """Connect (or start a local instance); True when this call started the connection."""
        ray = self.ray
        if ray.is_initialized():  # e.g. a notebook or test that already called ray.init
            return False
        try:
            with keep_sigterm_handler():
                ray.init(
                    address=ray_address(self.config),
                    include_dashboard=False,
                    log_to_driver=True,  # tracebacks of failed cells reach this terminal
                    logging_level=logging.WARNING,
                )
        except (
            ConnectionError,
            getattr(ray.exceptions, "AuthenticationError", ConnectionError),
        ) as error:
            raise ConfigError(
                f"{address_option(self.config)}: cannot connect ({error}); a cluster with "
                "token authentication also needs RAY_AUTH_MODE=token and its token here "
                "(see the README)"
            ) from None
        return True

    def _disconnect(self) -> None:
        with keep_sigterm_handler():
            self.ray.shutdown()  # also stops the local instance if this process started it

    def _check_resources(self, started: bool) -> None:
        """A request no node can meet would wait forever: say so (an error when local)."""
        wanted = {"CPU": self.config.cpus_per_task, "GPU": self.config.gpus_per_task}
        nodes = [n.get("Resources", {}) for n in self.ray.nodes() if n.get("Alive")]
        if any(all(node.get(k, 0) >= v for k, v in wanted.items() if v) for node in nodes):
            return
        largest = {k: max((node.get(k, 0) for node in nodes), default=0) for k in wanted}
        message = (
            f"--cpus-per-task {wanted['CPU']:g} --gpus-per-task {wanted['GPU']:g}: no node of "
            f"the Ray cluster has that much (largest: {largest['CPU']:g} CPU, "
            f"{largest['GPU']:g} GPU)"
        )
        if started and ray_address(self.config) == "local":  # no node will join it
            raise ConfigError(message)
        print(f"ray: warning: {message}; tasks wait until such a node joins", file=sys.stderr)

    def _warn_threads(self, threads: int | None) -> None:
        """Cells that train with more threads than they reserve CPUs share cores."""
        if threads is None or threads <= self.config.cpus_per_task:
            return
        print(
            f"ray: note: each cell trains with {threads} torch threads (--threads, or under "
            f"--deterministic this process's count) but reserves --cpus-per-task "
            f"{self.config.cpus_per_task:g}, so cells share cores; --cpus-per-task {threads} "
            "reserves them (or set a smaller --threads)",
            file=sys.stderr,
        )

    def _collect(self, ref: Any, job: CellJob, interrupted: bool) -> CellResult | None:
        """The task's result; a task that raised becomes a failed cell (None if stopped)."""
        ray = self.ray
        try:
            result, worker = ray.get(ref)
        except ray.exceptions.TaskCancelledError:
            return None
        except ray.exceptions.RayError as error:
            cause = getattr(error, "cause", None) or error
            if isinstance(cause, BenchError):  # the worker's setup, not the model: stop
                raise type(cause)(str(cause)) from None
            if interrupted or isinstance(cause, KeyboardInterrupt):
                return None  # killed by the same Ctrl-C; it resumes with the suite
            print(
                f"ray: {job.architecture} ({job.where()}): the task failed:\n{error}",
                file=sys.stderr,
            )
            first_line = (str(cause).strip().splitlines() or [""])[0]
            return CellResult(
                job.architecture,
                job.seed,
                job.fold,
                status="failed",
                error=f"{type(cause).__name__}: {first_line}",
                epochs=job.settings.epochs,
                batch_size=job.settings.batch_size,
            )
        key = (worker["hostname"], worker["device"], worker["device_name"])
        self.workers[key] = self.workers.get(key, 0) + 1
        return result

    def environment(self) -> dict[str, Any]:
        """The workers that ran cells in this session, for config.json and the report."""
        if not self.workers:
            return {"executor": "ray"}
        device_names = sorted({name for _, _, name in self.workers})
        return {
            "executor": "ray",
            "device": ", ".join(sorted({device for _, device, _ in self.workers})),
            "device_name": "; ".join(device_names),
            "ray_workers": [
                {"hostname": host, "device": device, "device_name": name, "cells": cells}
                for (host, device, name), cells in sorted(self.workers.items())
            ],
        }


def make_executor(
    config: RunConfig,
    stop: threading.Event,
    device: Any,
    progress: bool,
    train: Callable[..., CellResult] = train_cell,
    total_cells: int | None = None,
) -> Executor:
    """The executor ``config.executor`` names (``device`` and ``train`` serve the local one).

    ``total_cells``: the suite's cells, done ones included; given, the local executor
    prints a ``[cell k/N]`` counter, and without progress bars a line per epoch
    (:class:`CellProgress`). Ray tasks print nothing: the driver counts finished cells.
    """
    if config.executor == "ray":
        return RayExecutor(config, stop, progress)
    cell_progress = None
    if total_cells is not None:
        cell_progress = CellProgress(total_cells, lines=not progress)
    return LocalExecutor(device, stop, train, cell_progress)
