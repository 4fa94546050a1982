"""What ``--host-memory retain`` saves: page faults and system time of a CPU training step.

For each width, ``unet_thesis`` trains on one batch shape of the thesis (20 x 3 x 120 x 120,
BCE on softmax, Adam 1e-4, bench's default CPU speed options) in a fresh process per
measurement, with the allocator's defaults (``system``) and with freed memory retained
(``retain``), alternating. Each process times ``--steps`` steps after ``--warmup`` steps and
reports the median seconds per step, minor page faults per step, system and user CPU
seconds per step (both threads together) and its peak resident set.

    .venv/bin/python benchmarks/host_memory_faults.py --json reports/performance/host_memory.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

MODES = ("system", "retain")


def worker(width: float, mode: str, steps: int, warmup: int) -> dict[str, Any]:
    import resource

    import torch

    from bench import host_memory

    applied = host_memory.apply(mode)
    import architectures
    from bench.runner import compute_loss, place_model, resolve_speed

    device = torch.device("cpu")
    speed = resolve_speed("auto", "auto", False, device)
    torch.manual_seed(0)
    model = architectures.build("unet_thesis", num_classes=3, in_channels=3, width=width)
    forward = place_model(model.train(), device, speed)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.rand(20, 3, 120, 120)
    if speed.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 3, (20, 120, 120))

    def step() -> None:
        loss = compute_loss("bce", forward(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    seconds = []
    before = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(steps):
        started = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - started)
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "width": width,
        "mode": mode,
        "applied": applied,
        "seconds_per_step": statistics.median(seconds),
        "seconds": seconds,
        "minor_faults_per_step": (after.ru_minflt - before.ru_minflt) / steps,
        "system_seconds_per_step": (after.ru_stime - before.ru_stime) / steps,
        "user_seconds_per_step": (after.ru_utime - before.ru_utime) / steps,
        "peak_rss_gib": after.ru_maxrss / 2**20,  # KiB on Linux
        "torch_threads": torch.get_num_threads(),
    }


def measure(width: float, mode: str, steps: int, warmup: int) -> dict[str, Any]:
    command = [
        sys.executable,
        __file__,
        "--worker",
        "--width",
        str(width),
        "--mode",
        mode,
        "--steps",
        str(steps),
        "--warmup",
        str(warmup),
    ]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=float, nargs="+", default=[1.0, 0.25])
    parser.add_argument("--steps", type=int, default=6, help="timed steps per process")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--repeats", type=int, default=2, help="processes per mode and width")
    parser.add_argument("--json", type=Path, help="write the record here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--width", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.width, args.mode, args.steps, args.warmup)))
        return 0

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench import environment

    runs = []
    for width in args.widths:
        for repeat in range(args.repeats):
            for mode in MODES:
                run = measure(width, mode, args.steps, args.warmup)
                runs.append(run)
                print(
                    f"width {width:g} {mode:6s} repeat {repeat + 1}: "
                    f"{run['seconds_per_step']:.3f} s/step, "
                    f"{run['minor_faults_per_step']:.0f} faults/step, "
                    f"system {run['system_seconds_per_step']:.3f} s/step",
                    file=sys.stderr,
                    flush=True,
                )
    import torch

    record = {
        "command": " ".join(["python", "benchmarks/host_memory_faults.py", *sys.argv[1:]]),
        "steps": args.steps,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "runs": runs,
        "environment": environment.describe(torch.device("cpu")),
        "platform": platform.platform(),
    }
    text = json.dumps(record, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
