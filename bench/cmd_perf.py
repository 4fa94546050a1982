"""``bench perf``: training images/s of the harness against a bare PyTorch loop (and against a
per-sample DataLoader + albumentations pipeline with augmentation on), side by side.

    bench perf [ARCH] [--width X] [--json] [...]

See :mod:`bench.perf` for what each loop includes. ``--json`` prints one JSON object with
the keys ``harness_images_per_second``, ``bare_images_per_second`` and ``ratio`` (and the
augmented ones, the samples of every repeat, the options and the machine).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields

from bench.config import AMP_MODES, DEVICES, SWITCHES
from bench.host_memory import HOST_MEMORY_MODES


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench perf``."""
    parser = subparsers.add_parser(
        "perf",
        help="harness vs bare-loop training images/s (and vs DataLoader+albumentations)",
        description=(
            "Train the same model with bench's loop, with a bare PyTorch loop (tensors in "
            "memory, no metrics) and, with augmentation on, with a per-sample DataLoader + "
            "albumentations pipeline; print training images/s and their ratios. Defaults "
            "need no download: a synthetic dataset of 224 images of 120x120, whose thesis "
            "split has the 418 training images of wbc1."
        ),
    )
    parser.add_argument("architecture", nargs="?", metavar="ARCH", help="default unet_thesis")
    parser.add_argument("--width", type=float, help="channel width multiplier (default 0.25)")
    parser.add_argument("--batch-size", type=int, help="default 20")
    parser.add_argument("--epochs", type=int, help="epochs per measurement (default 2)")
    parser.add_argument("--repeats", type=int, help="measurements per loop; medians (default 3)")
    parser.add_argument("--dataset", choices=("synthetic", "wbc1"), help="default synthetic")
    parser.add_argument("--data-dir", help="where wbc1 lives")
    parser.add_argument("--synthetic-count", type=int, help="synthetic images (default 224)")
    parser.add_argument("--device", choices=DEVICES, help="default auto")
    parser.add_argument("--amp", choices=AMP_MODES, help="as bench run (default auto)")
    parser.add_argument("--channels-last", choices=SWITCHES, help="as bench run (default auto)")
    parser.add_argument("--compile", action="store_true", default=None, help="torch.compile")
    parser.add_argument(
        "--host-memory",
        choices=HOST_MEMORY_MODES,
        help="as bench run, for the harness and bare loops (default retain); the DataLoader "
        "peer runs in its own process with the allocator's defaults",
    )
    parser.add_argument(
        "--no-augmented",
        dest="augmented",
        action="store_false",
        default=None,
        help="skip the augmented comparison (clean protocol vs DataLoader+albumentations)",
    )
    parser.add_argument("--seed", type=int, help="default 0")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=perf_command)


def perf_command(args: argparse.Namespace) -> int:
    from bench.perf import PerfConfig, render_text, run_perf

    values = {
        f.name: getattr(args, f.name)
        for f in fields(PerfConfig)
        if getattr(args, f.name, None) is not None
    }
    config = PerfConfig(**values)
    result = run_perf(config, progress=lambda line: print(line, file=sys.stderr, flush=True))
    print(json.dumps(result, indent=2) if args.json else render_text(result))
    return 0
