"""``bench run`` (train and measure a suite) and ``bench report`` (re-render from data)."""

from __future__ import annotations

import argparse
import sys

from bench.config import (
    AMP_MODES,
    DEFAULT_LR_GRID,
    DEVICES,
    EXECUTORS,
    FIELD_TYPES,
    LOSSES,
    SWITCHES,
    build_config,
)
from bench.errors import ConfigError
from bench.host_memory import HOST_MEMORY_MODES


def register(subparsers: argparse._SubParsersAction) -> None:
    run = subparsers.add_parser(
        "run",
        help="train and measure architectures, write a run directory and its report",
        description=(
            "Train every (architecture, seed, fold) cell with one common loop and write "
            "config.json, history.csv, per_image.csv, summary.csv, report.md and figures. "
            "The same command with the same --out resumes an interrupted run. "
            "Exit status: 0 all cells ok, 1 some cell failed (recorded in the results), "
            "2 bad input, 130 interrupted (Ctrl-C or SIGTERM; the message says how to resume)."
        ),
    )
    # Every flag defaults to None so that a --config file fills what was not given.
    run.add_argument(
        "architectures",
        nargs="*",
        metavar="ARCH",
        help="architecture names or fnmatch patterns, e.g. 'smp_*'",
    )
    run.add_argument(
        "--all", action="store_true", default=None, help="every registered architecture"
    )
    run.add_argument("--dataset", help="wbc1 | synthetic | folder:PATH (default synthetic)")
    run.add_argument("--data-dir", help="where datasets live (default $BENCH_DATA_DIR or cache)")
    run.add_argument(
        "--palette",
        metavar="GREY:CLASS,...",
        help="folder datasets: mask value to class index or name, e.g. 0:background,"
        "255:nucleus (default 0:0,128:1,255:2, the WBC classes); class 0 is background",
    )
    run.add_argument(
        "--protocol", choices=("clean", "thesis", "thesis-noleak"), help="default clean"
    )
    run.add_argument("--fold", type=int, help="test fold of the clean protocol (default 0)")
    run.add_argument("--folds", choices=("all",), help="'all': run every fold")
    run.add_argument("--num-folds", type=int, help="k of the k-fold split (default 5)")
    run.add_argument("--split-seed", type=int, help="seed of the fold partition (default 0)")
    run.add_argument("--seeds", type=int, nargs="+", help="training seeds (default 0)")
    run.add_argument("--epochs", type=int, help="default: the protocol's (30)")
    run.add_argument("--batch-size", type=int, help="default: the protocol's (20)")
    run.add_argument("--lr", type=float, help="Adam learning rate (default: the protocol's)")
    run.add_argument(
        "--lr-search",
        action="store_true",
        default=None,
        help="pick each architecture's learning rate from --lr-grid by foreground Dice on a "
        "validation split (20%% of the training images, by source image); each rate trains "
        "for the full epochs, so a cell costs about 1 + 0.8 x grid size trainings",
    )
    run.add_argument(
        "--lr-grid",
        type=_float_list,
        nargs="+",
        metavar="LR[,LR...]",
        help=f"learning rates --lr-search tries (default {','.join(map(str, DEFAULT_LR_GRID))})",
    )
    run.add_argument("--loss", choices=LOSSES, help="default: the protocol's")
    run.add_argument("--width", type=float, help="channel width multiplier (1.0 = thesis)")
    run.add_argument("--encoder", help="encoder of the smp_* baselines (default resnet34)")
    run.add_argument("--device", choices=DEVICES, help="default auto: cuda, then mps, then cpu")
    run.add_argument(
        "--deterministic",
        action="store_true",
        default=None,
        help="deterministic algorithms (slower; exact reruns on CPU)",
    )
    run.add_argument("--max-images", type=int, help="use only the first N images")
    run.add_argument("--synthetic-count", type=int, help="images of the synthetic dataset")
    run.add_argument("--synthetic-size", type=int, help="side of the synthetic images")
    run.add_argument("--out", help="run directory (default runs/<UTC time>_<protocol>)")
    run.add_argument(
        "--plugin",
        action="append",
        dest="plugins",
        metavar="FILE",
        help="a Python file registering architectures (repeatable)",
    )
    run.add_argument(
        "--progress", choices=("auto", "on", "off"), help="progress bars (auto: only on a terminal)"
    )
    speed = run.add_argument_group("speed (each may move results within floating-point noise)")
    speed.add_argument(
        "--amp",
        choices=AMP_MODES,
        help="mixed precision, loss in fp32 (default auto: bf16 on CUDA, off elsewhere)",
    )
    speed.add_argument(
        "--channels-last",
        choices=SWITCHES,
        help="channels-last memory format (default auto: on for CUDA and CPU convolutions)",
    )
    speed.add_argument(
        "--compile", action="store_true", default=None, help="torch.compile each model"
    )
    speed.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="torch intra-op threads of each cell, on every executor (default: with "
        "--deterministic this process's count, recorded in config.json; otherwise the "
        "local process's count, or --cpus-per-task for a Ray cell)",
    )
    run.add_argument(  # faster too, but never moves a result: not in the speed group
        "--host-memory",
        choices=HOST_MEMORY_MODES,
        help="retain (default): keep freed host memory for the next step instead of "
        "returning it to the system and faulting it back in (glibc; no effect on results); "
        "system: the allocator's defaults",
    )
    scale = run.add_argument_group("executor (where cells run; results do not depend on it)")
    scale.add_argument(
        "--executor",
        choices=EXECUTORS,
        help="local (default): one cell after another here; ray: each cell a Ray task",
    )
    scale.add_argument(
        "--ray-address", metavar="ADDR", help="existing Ray cluster (default: start a local one)"
    )
    scale.add_argument("--cpus-per-task", type=float, help="CPUs a Ray cell asks for (default 1)")
    scale.add_argument("--gpus-per-task", type=float, help="GPUs a Ray cell asks for (default 0)")
    run.add_argument("--config", metavar="FILE.toml", help="TOML file with the same keys")
    run.set_defaults(func=run_command)

    report = subparsers.add_parser(
        "report", help="re-render report.md and the figures of a run directory from its data"
    )
    report.add_argument("run_dir", metavar="RUN_DIR")
    report.set_defaults(func=report_command)


def _float_list(text: str) -> list[float]:
    """``"1e-4,3e-4"`` → ``[0.0001, 0.0003]`` (an argparse type: a bad number is exit 2)."""
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of numbers: {text!r}"
        ) from None


def run_command(args: argparse.Namespace) -> int:
    from bench.suite import SuiteInterrupted, run_suite

    # Flags map one-to-one to RunConfig fields; list-valued ones are converted below.
    values = {key: getattr(args, key) for key, kind in FIELD_TYPES.items() if kind is not tuple}
    values["architectures"] = tuple(args.architectures) or None
    values["seeds"] = tuple(args.seeds) if args.seeds else None
    values["plugins"] = tuple(args.plugins) if args.plugins else None
    # "--lr-grid 1e-4,3e-4 1e-3": commas and spaces both separate
    values["lr_grid"] = tuple(v for part in args.lr_grid for v in part) if args.lr_grid else None
    config = build_config(values, args.config)
    try:
        outcome = run_suite(config, argv=sys.argv[1:] if args.argv is None else args.argv)
    except SuiteInterrupted as stopped:
        print(
            f"bench: interrupted; finished cells are in {stopped.out_dir}. Resume with:\n"
            f"  {stopped.command}",
            file=sys.stderr,
        )
        return 130
    print(f"results: {outcome.out_dir}/report.md")
    if outcome.failed:
        names = ", ".join(sorted({c.row["architecture"] for c in outcome.failed}))
        print(f"{len(outcome.failed)} run(s) failed: {names} (see summary.csv)", file=sys.stderr)
    return outcome.exit_code


def report_command(args: argparse.Namespace) -> int:
    from bench.report import render_run
    from bench.run_dir import RunDir

    run = RunDir(args.run_dir)
    if not run.is_run():
        raise ConfigError(f"{run.path}: not a run directory (no config.json)")
    print(render_run(run.path))
    return 0
