"""``bench list``: columns, JSON, plugins, and a failing architecture listed with its error."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from torch import nn

import architectures
from bench.cli import main

PLUGINS = Path(__file__).parent / "plugins"


@pytest.fixture(autouse=True)
def clean_plugins() -> Iterator[None]:
    architectures._reset_plugins_for_tests()
    yield
    architectures._reset_plugins_for_tests()


def test_list_json_unet_thesis(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "--json", "unet_thesis"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["name"] for row in rows] == ["unet_thesis"]
    row = rows[0]
    assert {"name", "source", "params", "gflops", "description"} <= set(row)
    assert "error" not in row
    assert row["source"] == "builtin"
    assert row["params"] == 26_230_851
    assert 10 < row["gflops"] < 20  # ~7.6 GMACs at 120x120, 2 flops each
    assert row["description"]


def test_list_with_plugin_file_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "--plugin", str(PLUGINS / "good_plugin.py"), "test_good_*"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["NAME", "SOURCE", "PARAMS", "GFLOPS", "DESCRIPTION"]
    assert out[1].split()[:2] == ["test_good_plugin_net", "plugin:good_plugin.py"]
    assert len(out) == 2


def test_list_broken_plugin_file_is_reported_and_the_rest_listed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = [
        "list",
        "--json",
        "--plugin",
        str(PLUGINS / "broken_import_plugin.py"),
        "--plugin",
        str(PLUGINS / "wrong_shape_plugin.py"),
        "--plugin",
        str(PLUGINS / "good_plugin.py"),
        "test_*",
    ]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "broken_import_plugin.py" in captured.err
    assert "wrong_shape_plugin.py" in captured.err
    assert [row["name"] for row in json.loads(captured.out)] == ["test_good_plugin_net"]


def test_failing_build_is_listed_with_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    @architectures.register_architecture("test_failing_build")
    def failing(num_classes: int = 3, in_channels: int = 3, width: float = 1.0) -> nn.Module:
        """Always fails."""
        raise RuntimeError("out of cheese")

    try:
        assert main(["list", "--json", "test_failing_build"]) == 0
    finally:
        architectures._unregister("test_failing_build")
    (row,) = json.loads(capsys.readouterr().out)
    assert row["params"] is None and row["gflops"] is None
    assert "out of cheese" in row["error"] and "test_failing_build" in row["error"]


def test_list_no_match(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "--json", "nothing_matches_*"]) == 0
    assert json.loads(capsys.readouterr().out) == []
