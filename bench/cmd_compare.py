"""``bench compare FIRST SECOND``: what changed from one run to another (see bench.compare)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    compare = subparsers.add_parser(
        "compare",
        help="what changed between two runs on the same test images (e.g. the thesis's leak)",
        description=(
            "Per architecture of both runs: the change of the foreground Dice from FIRST to "
            "SECOND, over seeds (mean difference, 95 % t CI) and over images (median "
            "difference, bootstrap CI, Wilcoxon), and the configuration keys that differ. "
            "Example: bench compare runs/thesis runs/thesis-noleak (what the leak changed)."
        ),
    )
    compare.add_argument("first", metavar="FIRST", help="run directory (the baseline)")
    compare.add_argument("second", metavar="SECOND", help="run directory (the change)")
    compare.add_argument("--out", metavar="DIR", help="write comparison.md and comparison.csv here")
    compare.set_defaults(func=compare_command)


def compare_command(args: argparse.Namespace) -> int:
    from bench.compare import compare_runs, write_comparison

    markdown, rows = compare_runs(args.first, args.second)
    if args.out:
        print(write_comparison(args.out, markdown, rows))
    else:
        print(markdown, end="")
    return 0
