"""How fast ``bench`` answers the quick questions (pytest-benchmark), not a test: nothing here
asserts a time (``tests/test_cli.py`` checks the cause instead: building the parser imports
no torch).

Run and save a comparable record (machine and commit info included):

    .venv/bin/python -m pytest benchmarks/test_cli_speed.py --benchmark-enable \
        --benchmark-autosave
    .venv/bin/pytest-benchmark compare                  # lists and compares the saved runs

Each round is a whole process, as a user at a shell sees it: the interpreter's start, the
imports and the answer. ``bench --help`` and ``bench run --help`` are the parser alone (no
torch: a few tenths of a second); ``bench list`` imports torch and the model zoo and builds
every architecture on the meta device (seconds), so it says what a first question about the
models costs.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROUNDS = {"help": 10, "run-help": 10, "list": 3}
COMMANDS = {
    "help": ["--help"],
    "run-help": ["run", "--help"],
    "list": ["list"],
}


def bench_command() -> list[str]:
    """The installed ``bench`` script beside this interpreter, else the same entry point
    through ``-c`` (what the script runs)."""
    script = Path(sys.executable).with_name("bench")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from bench.cli import main; sys.exit(main())"]


@pytest.mark.parametrize("name", COMMANDS)
def test_cli_answer(benchmark, name: str) -> None:
    command = [*bench_command(), *COMMANDS[name]]

    def answer() -> None:
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, timeout=600)

    benchmark.extra_info.update(command=" ".join(["bench", *COMMANDS[name]]))
    benchmark.pedantic(answer, rounds=ROUNDS[name], iterations=1, warmup_rounds=1)
