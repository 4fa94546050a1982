"""The ``bench`` command: parse arguments, build a configuration, call the library.

Each sub-command lives in a ``cmd_*`` module exposing ``register(subparsers)``, which adds
its parser and sets ``func(args) -> int``. No training or rendering logic lives here.

Quick answers stay quick: neither this module nor building the parser imports torch (or
anything else heavy). A ``cmd_*`` module imports what its command needs inside ``func``, so
``bench --help``, ``bench data info`` or a mistyped option never pay for loading PyTorch
(about 2 s on a small CPU machine, against a few tenths of a second for the parser).
``tests/test_cli.py`` checks that the parser leaves torch unimported.

Exit status: what the command returns (see each one's ``--help``), 2 for bad input (a
:class:`~bench.errors.BenchError`, or a usage error from argparse), and 1 when standard output
is a pipe whose reader went away before bench finished writing (``bench ... | head -1``):
bench then stops quietly, without a traceback, as Python's documentation recommends for
SIGPIPE. The status is 1, not 0, because the command did not finish what it was asked; a
pipeline without ``set -o pipefail`` never sees it.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from bench import __version__
from bench.errors import BenchError

#: Exit status when stdout's reader closed the pipe early (see the module docstring).
BROKEN_PIPE_STATUS = 1


class BenchArgumentParser(argparse.ArgumentParser):
    """argparse with a "did you mean" for a mistyped choice: a sub-command (``bench rnu``),
    a data action, or a value of an option with choices (``--protocol thesis-noleek``).

    Sub-parsers are of this class too (argparse makes them of the parent's class), so the
    hint works at every level. Python 3.14's ``suggest_on_error`` does the same; bench
    supports older Pythons.
    """

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        choices = action.choices
        if choices is not None and isinstance(value, str) and value not in choices:
            import difflib  # only on a mistake: not a cost of every command

            names = [str(choice) for choice in choices]
            close = difflib.get_close_matches(value, names, n=3, cutoff=0.6)
            hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
            raise argparse.ArgumentError(
                action,
                f"invalid choice: {value!r} ({hint}choose from {', '.join(map(repr, names))})",
            )
        super()._check_value(action, value)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line. Light by design: no ``cmd_*`` module imports torch at module
    level or while registering its parser (the commands import it when they run)."""
    from bench import cmd_compare, cmd_data, cmd_list, cmd_perf, cmd_predict, cmd_run

    parser = BenchArgumentParser(
        prog="bench",
        description="Train and compare segmentation architectures honestly.",
    )
    parser.add_argument("--version", action="version", version=f"bench {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in (cmd_data, cmd_list, cmd_run, cmd_compare, cmd_perf, cmd_predict):
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one ``bench`` command; return its exit status (see the module docstring)."""
    try:
        try:
            return _dispatch(argv)
        finally:
            # Inside the try, so that a reader gone while the last buffered lines are
            # written (--help included: it exits through SystemExit) is caught here
            # instead of at interpreter exit, where Python prints "Exception ignored".
            sys.stdout.flush()
    except BrokenPipeError:
        if not _stdout_is_broken():
            raise  # some other pipe (a subprocess, a socket): a real error, not ours
        _silence_stdout()
        return BROKEN_PIPE_STATUS


def _dispatch(argv: list[str] | None) -> int:
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


def _stdout_is_broken() -> bool:
    """Whether stdout is a pipe without a reader (POLLERR, or POLLHUP, on its write end).

    Where that cannot be asked (no poll, no file descriptor) a BrokenPipeError is taken to
    be stdout's, which is by far its most common source in a command-line tool.
    """
    try:
        import select

        fd = sys.stdout.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        gone = select.POLLERR | select.POLLHUP
        return any(events & gone for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):
        return True


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's final flush of what is still
    buffered cannot raise BrokenPipeError again (Python's documented recipe for SIGPIPE)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (AttributeError, OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
