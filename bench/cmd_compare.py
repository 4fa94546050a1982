"""``bench compare FIRST SECOND``: what changed from one run to another (bench.compare);
``bench combine RUN... --out DIR``: several runs as one comparison (bench.combine)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    compare = subparsers.add_parser(
        "compare",
        help="what changed between two runs on the same test images (e.g. the thesis's leak)",
        description=(
            "Per architecture of both runs: the change of the foreground Dice from FIRST to "
            "SECOND, over seeds (mean difference, 95 % t CI) and over images (median "
            "difference, bootstrap CI, Wilcoxon), the configuration keys that differ, and "
            "the training time of the cells both finished. "
            "Example: bench compare runs/thesis runs/thesis-noleak (what the leak changed)."
        ),
    )
    compare.add_argument("first", metavar="FIRST", help="run directory (the baseline)")
    compare.add_argument("second", metavar="SECOND", help="run directory (the change)")
    compare.add_argument(
        "--out",
        metavar="DIR",
        help="write comparison.md, comparison.csv and comparison_cost.csv here",
    )
    compare.set_defaults(func=compare_command)

    combine = subparsers.add_parser(
        "combine",
        help="several comparable runs as one comparison (add a model without retraining)",
        description=(
            "Combine run directories of different architectures, trained with the same "
            "data, protocol, split, seeds, folds and settings, into one new run directory "
            "with its report; each cell keeps the provenance of the run that trained it. "
            "Runs that differ are refused with the differing keys. Example: bench run "
            "my_model --plugin my_model.py <the baseline's other flags> --out runs/mine; "
            "bench combine runs/baseline runs/mine --out runs/with_mine."
        ),
    )
    combine.add_argument("runs", nargs="+", metavar="RUN", help="run directories (2 or more)")
    combine.add_argument("--out", required=True, metavar="DIR", help="the new run directory")
    combine.set_defaults(func=combine_command)


def compare_command(args: argparse.Namespace) -> int:
    from bench.compare import compare_runs, write_comparison

    markdown, rows, cost = compare_runs(args.first, args.second)
    if args.out:
        print(write_comparison(args.out, markdown, rows, cost))
    else:
        print(markdown, end="")
    return 0


def combine_command(args: argparse.Namespace) -> int:
    import sys

    from bench.combine import combine_runs

    argv = args.argv if args.argv is not None else sys.argv[1:]
    print(combine_runs(args.runs, args.out, argv))
    return 0
