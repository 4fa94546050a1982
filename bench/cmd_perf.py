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

from bench.config import PerfConfig, add_arguments, build_perf_config, values_from_args


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
    # One option per PerfConfig field, declared once there (bench.config.option); None: not
    # given, the field's default applies.
    add_arguments(parser, PerfConfig)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=perf_command)


def perf_command(args: argparse.Namespace) -> int:
    """Measure, print the result (text or JSON); the exit status."""
    from bench.perf import render_text, run_perf

    config = build_perf_config(values_from_args(args, PerfConfig))
    result = run_perf(config, progress=lambda line: print(line, file=sys.stderr, flush=True))
    print(json.dumps(result, indent=2) if args.json else render_text(result))
    return 0
