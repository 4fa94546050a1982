"""The ``bench`` command: parse arguments, build a configuration, call the library.

Each sub-command lives in a ``cmd_*`` module exposing ``register(subparsers)``, which adds
its parser and sets ``func(args) -> int``. No training or rendering logic lives here.
"""

from __future__ import annotations

import argparse
import sys

from bench import __version__
from bench.errors import BenchError


def build_parser() -> argparse.ArgumentParser:
    from bench import cmd_compare, cmd_data, cmd_list, cmd_perf, cmd_run

    parser = argparse.ArgumentParser(
        prog="bench",
        description="Train and compare segmentation architectures honestly.",
    )
    parser.add_argument("--version", action="version", version=f"bench {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in (cmd_data, cmd_list, cmd_run, cmd_compare, cmd_perf):
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv  # recorded in config.json as the command that made a run
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except BenchError as error:
        print(f"bench: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
