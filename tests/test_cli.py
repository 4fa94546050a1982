"""The ``bench`` command line itself: quick answers stay quick (no torch while parsing), a
closed pipe ends bench quietly, and a mistyped name gets a "did you mean".

Speed is measured in ``benchmarks/test_cli_speed.py``, not asserted here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import BROKEN_PIPE_STATUS, main


def bench_process(
    *args: str, stdout: int = subprocess.PIPE, buffered: bool = True
) -> subprocess.Popen:
    """``bench ARGS`` in a fresh interpreter, as the console script runs it. ``buffered``:
    stdout block-buffered as usual for a pipe (a failed write shows at the flush), else
    PYTHONUNBUFFERED (it shows at the write itself)."""
    code = "import sys\nfrom bench.cli import main\nsys.exit(main())"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if not buffered:
        env["PYTHONUNBUFFERED"] = "1"
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], stdout=stdout, stderr=subprocess.PIPE, env=env
    )


def run_with_closed_stdout(*args: str, buffered: bool) -> tuple[int, str]:
    """Run bench with a stdout pipe whose reader is gone before bench writes anything
    (what ``bench ... | head -1`` does when head has read its line); (status, stderr)."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # no reader: every write to the pipe fails with EPIPE
    try:
        process = bench_process(*args, stdout=write_end, buffered=buffered)
    finally:
        os.close(write_end)
    _, stderr = process.communicate(timeout=120)
    return process.returncode, stderr.decode()


def assert_quiet(stderr: str) -> None:
    assert "Traceback" not in stderr
    assert "BrokenPipeError" not in stderr
    assert "Exception ignored" not in stderr


@pytest.mark.parametrize("buffered", [True, False], ids=["buffered", "unbuffered"])
def test_closed_pipe_ends_a_command_quietly_with_status_1(buffered: bool) -> None:
    args = ("data", "info", "synthetic", "--count", "12", "--size", "32")
    status, stderr = run_with_closed_stdout(*args, buffered=buffered)
    assert_quiet(stderr)
    assert status == BROKEN_PIPE_STATUS


@pytest.mark.parametrize("buffered", [True, False], ids=["buffered", "unbuffered"])
def test_closed_pipe_ends_help_quietly(buffered: bool) -> None:
    status, stderr = run_with_closed_stdout("--help", buffered=buffered)
    assert_quiet(stderr)
    # argparse itself ignores a failed write of the help (unbuffered: status 0); a
    # buffered help fails at bench's flush (status 1).
    assert status == (BROKEN_PIPE_STATUS if buffered else 0)


def test_head_of_data_info_prints_no_traceback(wbc_dir: Path) -> None:
    """The issue's own example, through a real shell pipeline into ``head -1``."""
    code = "import sys; from bench.cli import main; sys.exit(main())"
    command = f"{sys.executable} -c '{code}' data info wbc1 --data-dir '{wbc_dir}' --json | head -1"
    result = subprocess.run(
        ["bash", "-c", command], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.stdout.strip() == "{"
    assert "Traceback" not in result.stderr
    assert "BrokenPipeError" not in result.stderr


def test_a_closed_pipe_mid_output_ends_quietly() -> None:
    """The reader leaves after the first line, while bench still writes (unbuffered: each
    line is its own write), as ``| head -1`` does."""
    args = ("data", "info", "synthetic", "--count", "12", "--size", "32")
    process = bench_process(*args, buffered=False)
    assert process.stdout is not None and process.stderr is not None
    assert process.stdout.readline().startswith(b"dataset")
    process.stdout.close()
    stderr = process.stderr.read().decode()
    process.wait(timeout=120)
    assert_quiet(stderr)
    # The rest may have fitted in the pipe before the reader left: then it exited 0.
    assert process.returncode in (0, BROKEN_PIPE_STATUS)


def test_a_broken_pipe_that_is_not_stdout_is_not_hidden(monkeypatch, capsys) -> None:
    """Only stdout's reader leaving is quiet; a BrokenPipeError from anything else (a
    subprocess, a socket) is a real error and propagates."""

    def fails(argv):
        raise BrokenPipeError("a socket")

    monkeypatch.setattr("bench.cli._dispatch", fails)
    monkeypatch.setattr("bench.cli._stdout_is_broken", lambda: False)
    with pytest.raises(BrokenPipeError):
        main(["list"])


def test_building_the_parser_imports_no_torch() -> None:
    code = (
        "import sys, bench.cli\n"
        "parser = bench.cli.build_parser()\n"
        "parser.parse_args(['predict', 'c.pt', 'a.png', '--out', 'o'])\n"
        "parser.parse_args(['run', 'unet_thesis', '--width', '0.25'])\n"
        "print('torch' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip() == "False", result.stderr


def test_help_of_every_command_needs_no_torch() -> None:
    """``bench COMMAND --help`` answers without loading PyTorch, for every command."""
    code = (
        "import contextlib, io, sys, bench.cli\n"
        "commands = ['data', 'list', 'run', 'report', 'compare', 'perf', 'predict']\n"
        "for command in commands:\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "        bench.cli.main([command, '--help'])\n"
        "print('torch' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip() == "False", result.stderr


@pytest.mark.parametrize(
    ("argv", "hint"),
    [
        (["rnu"], "did you mean 'run'"),
        (["perdict"], "did you mean 'predict'"),
        (["data", "inof", "wbc1"], "did you mean 'info'"),
        (["run", "unet_thesis", "--protocol", "thesis-noleek"], "did you mean 'thesis-noleak'"),
    ],
)
def test_a_mistyped_choice_gets_did_you_mean(argv: list[str], hint: str, capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    stderr = capsys.readouterr().err
    assert hint in stderr
    assert "choose from" in stderr


def test_an_unlike_name_lists_the_choices_without_a_guess(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["zzzzzz"])
    stderr = capsys.readouterr().err
    assert "did you mean" not in stderr
    assert "'predict'" in stderr and "'run'" in stderr


def test_no_command_prints_help_and_exits_2(capsys) -> None:
    assert main([]) == 2
    assert "predict" in capsys.readouterr().out
