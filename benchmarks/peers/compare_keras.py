"""Training speed of ``bench run unet_thesis`` next to the thesis's own Keras U-Net, in one run.

For each width, one after the other and nothing else in parallel: the Keras model of the annex
(``keras_unet.py``) trains in a subprocess on the thesis-protocol training arrays the way the
thesis did (``model.fit`` on in-memory numpy arrays, batch 20, Adam 1e-4, binary cross-entropy),
then ``bench run unet_thesis`` trains in another subprocess on the same split. Each side runs
alone in its own process so TensorFlow's and torch's thread pools never compete for the cores.

Images/s is computed the same way for both from per-epoch training wall times: over all
epochs, and over epochs >= 2 ("steady": excludes Keras' graph tracing and first-touch costs).

    .venv/bin/python benchmarks/peers/compare_keras.py --epochs 2 --json peers.json
    .venv/bin/python benchmarks/peers/compare_keras.py --widths 0.25 --epochs 1 --max-images 40
    .venv/bin/python benchmarks/peers/compare_keras.py --bench-args "--channels-last off"

TensorFlow's threading is left at its defaults (the "default CPU build" peer); the values TF
reports are recorded in the JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DEFAULT_DATA_DIR = REPO.parent / "shared" / "datasets" / "segmentation_WBC"
BATCH = 20
LR = 1e-4
NUM_CLASSES = 3
SEED = 0


# ----------------------------------------------------------------------------- shared helpers
def images_per_second(seconds: list[float], images_per_epoch: int) -> dict[str, float | None]:
    """Images/s over all epochs and over epochs >= 2 (None when there is no second epoch)."""
    steady = seconds[1:]
    return {
        "all": images_per_epoch * len(seconds) / sum(seconds) if seconds else None,
        "steady": images_per_epoch * len(steady) / sum(steady) if steady else None,
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def git_state() -> dict[str, Any]:
    """Commit and dirtiness of the checkout (read-only git calls)."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=REPO, capture_output=True, text=True, check=True
            )
        except (OSError, subprocess.CalledProcessError):
            return None
        return done.stdout.strip()

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


# ----------------------------------------------------------------------------- Keras worker
def keras_worker(data: Path, width: float, epochs: int, result: Path) -> None:
    """Train the annex model with ``model.fit`` and write per-epoch wall times to ``result``.

    Runs in its own process (TensorFlow only; torch is never imported here).
    """
    import keras
    import numpy as np
    import tensorflow as tf
    from keras_unet import build_keras_unet, trainable_parameters

    arrays = np.load(data)
    # The thesis's preprocessing: x / 255 as float32, masks one-hot ("dummy") per class.
    x = arrays["images"].astype(np.float32) / 255.0
    labels = arrays["labels"]
    if labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise SystemExit(f"labels outside 0..{NUM_CLASSES - 1} (padded images?)")
    y = np.eye(NUM_CLASSES, dtype=np.float32)[labels]

    keras.utils.set_random_seed(SEED)
    model = build_keras_unet(width, NUM_CLASSES)  # compiled as the annex: Adam 1e-4, BCE

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.seconds: list[float] = []
            self.losses: list[float] = []
            self._start = 0.0

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            self.seconds.append(time.perf_counter() - self._start)
            self.losses.append(float((logs or {}).get("loss", math.nan)))

    timer = EpochTimer()
    start = time.perf_counter()
    model.fit(x, y, batch_size=BATCH, epochs=epochs, shuffle=True, verbose=0, callbacks=[timer])
    fit_seconds = time.perf_counter() - start
    record = {
        "images_per_epoch": len(x),
        "steps_per_epoch": math.ceil(len(x) / BATCH),
        "epoch_seconds": timer.seconds,
        "fit_seconds": fit_seconds,
        "train_loss": timer.losses,
        "params": trainable_parameters(model),
        "tf_threads": {
            "inter_op_parallelism_threads": tf.config.threading.get_inter_op_parallelism_threads(),
            "intra_op_parallelism_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        },
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "onednn_env": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
    }
    result.write_text(json.dumps(record, indent=2))


# ----------------------------------------------------------------------------- driver
def prepare_data(data_dir: Path, max_images: int | None, out: Path) -> int:
    """Thesis-protocol training arrays, exactly as ``bench run --protocol thesis`` splits them."""
    import dataclasses

    import numpy as np

    from bench.data import load_dataset
    from bench.protocols import get_protocol

    dataset = load_dataset("wbc1", data_dir)
    if max_images is not None:  # the same subset as bench's --max-images
        dataset = dataclasses.replace(dataset, samples=dataset.samples[:max_images])
    train = get_protocol("thesis").split(dataset).train
    np.savez(out, images=train.images, labels=train.labels)
    return len(train.images)


def run_keras(data: Path, width: float, epochs: int, work: Path) -> dict[str, Any]:
    result = work / f"keras_w{width}.json"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--keras-worker",
        "--data",
        str(data),
        "--width",
        str(width),
        "--epochs",
        str(epochs),
        "--result",
        str(result),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"Keras worker failed (width {width}, exit {done.returncode})")
    return json.loads(result.read_text())


def bench_executable() -> str:
    beside = Path(sys.executable).parent / "bench"
    found = str(beside) if beside.exists() else shutil.which("bench")
    if found is None:
        raise SystemExit("the `bench` command is not installed (pip install -e .)")
    return found


def run_bench(
    width: float,
    epochs: int,
    data_dir: Path,
    max_images: int | None,
    extra: list[str],
    work: Path,
) -> dict[str, Any]:
    out = work / f"bench_w{width}"
    command = [
        bench_executable(),
        "run",
        "unet_thesis",
        "--protocol",
        "thesis",
        "--dataset",
        "wbc1",
        "--data-dir",
        str(data_dir),
        "--width",
        str(width),
        "--epochs",
        str(epochs),
        "--out",
        str(out),
        "--progress",
        "off",
    ]
    if max_images is not None:
        command += ["--max-images", str(max_images)]
    command += extra
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"bench run failed (width {width}, exit {done.returncode})")
    from bench.run_dir import RunDir

    run = RunDir(out)
    config = run.read_meta()
    tables = run.tables(config)
    train_rows = sorted(
        (row for row in tables.history if row["split"] == "train"), key=lambda row: row["epoch"]
    )
    cell = tables.cells[0]
    return {
        "command": shlex.join(command),
        "images_per_epoch": int(config["protocol"]["train_images"]),
        "epoch_seconds": [float(row["seconds"]) for row in train_rows],
        "train_loss": [float(row["loss"]) for row in train_rows],
        "cells_images_per_second": float(cell["images_per_second"]),
        "cells_train_seconds": float(cell["train_seconds"]),
        "params": int(cell["params"]),
        "environment": config.get("environment", {}),
    }


def fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| width | Keras img/s (all) | Keras img/s (steady) | bench img/s (all) "
        "| bench img/s (steady) | bench / Keras (all) | bench / Keras (steady) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        keras_ips, bench_ips = row["keras"]["images_per_second"], row["bench"]["images_per_second"]
        lines.append(
            f"| {row['width']:g} | {fmt(keras_ips['all'])} | {fmt(keras_ips['steady'])} "
            f"| {fmt(bench_ips['all'])} | {fmt(bench_ips['steady'])} "
            f"| {fmt(row['ratio_all'], 2)} | {fmt(row['ratio_steady'], 2)} |"
        )
    return "\n".join(lines)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator and denominator else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Side-by-side training speed: Keras annex U-Net vs bench run unet_thesis."
    )
    parser.add_argument("--widths", type=float, nargs="+", default=[1.0, 0.25])
    parser.add_argument("--epochs", type=int, default=2, help="epochs per side (default 2)")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument(
        "--max-images", type=int, help="first N dataset images, for both sides (quick tries)"
    )
    parser.add_argument(
        "--bench-args", default="", help='extra flags for bench run, e.g. "--channels-last off"'
    )
    parser.add_argument("--json", type=Path, help="write the full record here")
    parser.add_argument("--keep", type=Path, help="keep bench's run directories etc. here")
    # Internal: the Keras subprocess.
    parser.add_argument("--keras-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--width", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.keras_worker:
        keras_worker(args.data, args.width, args.epochs, args.result)
        return 0
    if args.epochs < 1:
        parser.error("--epochs must be at least 1")

    extra = shlex.split(args.bench_args)
    with tempfile.TemporaryDirectory(prefix="compare_keras_") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        data = work / "thesis_train.npz"
        n_train = prepare_data(args.data_dir, args.max_images, data)
        print(f"thesis-protocol training images: {n_train}; epochs per side: {args.epochs}")
        if n_train < BATCH:  # bench refuses this; fail before spending time on Keras
            parser.error(f"{n_train} training images, fewer than a batch of {BATCH}")
        rows = []
        tf_threads = None
        bench_commands = []
        for width in args.widths:  # alternate Keras w, bench w, nothing else in parallel
            print(f"width {width:g}: Keras ...", flush=True)
            load_before_keras = os.getloadavg()
            keras_run = run_keras(data, width, args.epochs, work)
            keras_run["loadavg_before"] = load_before_keras
            tf_threads = keras_run["tf_threads"]
            keras_run["images_per_second"] = images_per_second(
                keras_run["epoch_seconds"], keras_run["images_per_epoch"]
            )
            print(f"width {width:g}: bench ...", flush=True)
            load_before_bench = os.getloadavg()
            bench_run = run_bench(width, args.epochs, args.data_dir, args.max_images, extra, work)
            bench_run["loadavg_before"] = load_before_bench
            bench_run["images_per_second"] = images_per_second(
                bench_run["epoch_seconds"], bench_run["images_per_epoch"]
            )
            bench_commands.append(bench_run["command"])
            if bench_run["images_per_epoch"] != keras_run["images_per_epoch"]:
                print(
                    f"warning: bench trained {bench_run['images_per_epoch']} images per epoch, "
                    f"Keras {keras_run['images_per_epoch']}",
                    file=sys.stderr,
                )
            rows.append(
                {
                    "width": width,
                    "keras": keras_run,
                    "bench": bench_run,
                    "ratio_all": ratio(
                        bench_run["images_per_second"]["all"],
                        keras_run["images_per_second"]["all"],
                    ),
                    "ratio_steady": ratio(
                        bench_run["images_per_second"]["steady"],
                        keras_run["images_per_second"]["steady"],
                    ),
                }
            )
        table = markdown_table(rows)
        print()
        print(table)
        if args.json:
            record = {
                "what": "training images/s, Keras annex U-Net vs bench run unet_thesis",
                "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "machine": {
                    "cpu_model": cpu_model(),
                    "cpu_count": os.cpu_count(),
                    "cpus_usable": len(os.sched_getaffinity(0))
                    if hasattr(os, "sched_getaffinity")
                    else None,
                    "platform": platform.platform(),
                },
                "versions": {
                    "python": platform.python_version(),
                    "tensorflow": version("tensorflow-cpu") or version("tensorflow"),
                    "keras": version("keras"),
                    "torch": version("torch"),
                    "numpy": version("numpy"),
                },
                "git": git_state(),
                "epochs": args.epochs,
                "batch_size": BATCH,
                "lr": LR,
                "max_images": args.max_images,
                "train_images": n_train,
                "bench_args": extra,
                "bench_commands": bench_commands,
                "tf_threads": tf_threads,
                "tf_threads_note": "TF defaults left alone; 0 means TensorFlow picks the count",
                "steady_definition": "epochs >= 2",
                "results": rows,
                "table": table,
            }
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(record, indent=2) + "\n")
            print(f"\nrecord: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
