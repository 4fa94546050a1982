"""How fast ``bench`` answers the quick questions (pytest-benchmark), not a test: nothing here
asserts a time (``tests/test_cli.py`` checks the cause instead: building the parser imports
no torch).

Run and save a comparable record (machine and commit info included):

    .venv/bin/python -m pytest benchmarks/test_cli_speed.py --benchmark-enable \
        --benchmark-autosave
    .venv/bin/pytest-benchmark compare                  # lists and compares the saved runs

Each round is a whole process, as a user at a shell sees it: the interpreter's start, the
imports and the answer. ``bench --help`` and ``bench run --help`` are the parser alone (no
torch: a few tenths of a second). ``bench list`` is timed twice, each with its count cache
(``$BENCH_CACHE_DIR``) in a temporary folder, never the user's:

* ``list`` (warm): the cache filled by the warm-up round, as every call after the first one
  finds it: the answer comes from the cache without importing torch;
* ``list-cold``: an empty cache every round, as the very first call (or the first after the
  code or torch/smp/timm changed) finds it: torch and the model zoo are imported and every
  architecture is built on the meta device (seconds).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROUNDS = {"help": 10, "run-help": 10, "list": 5, "list-cold": 3}
COMMANDS = {
    "help": ["--help"],
    "run-help": ["run", "--help"],
    "list": ["list"],
    "list-cold": ["list"],
}


def bench_command() -> list[str]:
    """The installed ``bench`` script beside this interpreter, else the same entry point
    through ``-c`` (what the script runs)."""
    script = Path(sys.executable).with_name("bench")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from bench.cli import main; sys.exit(main())"]


@pytest.mark.parametrize("name", COMMANDS)
def test_cli_answer(benchmark, name: str, tmp_path: Path) -> None:
    command = [*bench_command(), *COMMANDS[name]]
    caches = iter(range(1_000_000))

    def answer() -> None:
        # The cold rounds each get a new, empty cache folder; the others share one.
        cache = tmp_path / (f"cold-{next(caches)}" if name == "list-cold" else "warm")
        env = {**os.environ, "BENCH_CACHE_DIR": str(cache)}
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, timeout=600, env=env)

    cache_state = {"list": "warm cache", "list-cold": "empty cache"}.get(name)
    benchmark.extra_info.update(
        command=" ".join(["bench", *COMMANDS[name]]),
        **({"cache": cache_state} if cache_state else {}),
    )
    benchmark.pedantic(answer, rounds=ROUNDS[name], iterations=1, warmup_rounds=1)
