"""``bench run`` (train and measure a suite) and ``bench report`` (re-render from data)."""

from __future__ import annotations

import argparse
import shlex
import sys

from bench.config import RunConfig, add_arguments, build_config, values_from_args
from bench.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench run`` (options from :class:`~bench.config.RunConfig`) and ``bench report``."""
    run = subparsers.add_parser(
        "run",
        help="train and measure architectures, write a run directory and its report",
        description=(
            "Train every (architecture, seed, fold) cell with one common loop and write "
            "config.json, history.csv, per_image.csv, summary.csv, report.md, report.html and "
            "figures. "
            "The same command with the same --out resumes an interrupted run. "
            "Exit status: 0 all cells ok, 1 some cell failed (recorded in the results), "
            "2 bad input, 130 interrupted (Ctrl-C or SIGTERM; the message says how to resume)."
        ),
    )
    # One option per RunConfig field, each defaulting to None so that a --config file fills
    # what was not given (bench.config.option declares them).
    add_arguments(run, RunConfig)
    run.set_defaults(func=run_command)

    report = subparsers.add_parser(
        "report",
        help="re-render report.md, report.html and the figures of a run directory from its data",
    )
    report.add_argument("run_dir", metavar="RUN_DIR")
    report.set_defaults(func=report_command)


def run_command(args: argparse.Namespace) -> int:
    """Build and validate the configuration, run the suite; the exit status."""
    from bench.suite import SuiteInterrupted, run_suite

    values = values_from_args(args, RunConfig)
    config = build_config(values, args.config)
    if config.dry_run:  # the plan and a time estimate; nothing is trained or written
        from bench.suite import dry_run

        dry_run(config)
        return 0
    try:
        outcome = run_suite(config, argv=sys.argv[1:] if args.argv is None else args.argv)
    except SuiteInterrupted as stopped:
        out = shlex.quote(str(stopped.out_dir))
        print(
            f"bench: interrupted; the finished cells are in {out} (`bench report {out}` "
            f"renders their report). Resume with:\n  {stopped.command}",
            file=sys.stderr,
        )
        return 130
    print(f"results: {outcome.out_dir}/report.md")
    if outcome.failed:
        names = ", ".join(sorted({c.row["architecture"] for c in outcome.failed}))
        runs = f"{len(outcome.failed)} run{'s' if len(outcome.failed) != 1 else ''}"
        print(f"{runs} failed: {names} (see summary.csv)", file=sys.stderr)
    return outcome.exit_code


def report_command(args: argparse.Namespace) -> int:
    """Re-render a run directory's report from its data files."""
    from bench.report import render_run
    from bench.run_dir import RunDir

    run = RunDir(args.run_dir)
    if not run.is_run():
        raise ConfigError(f"{run.path}: not a run directory (no config.json)")
    print(render_run(run.path))
    return 0
