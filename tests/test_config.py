"""Configuration: TOML keys mirror the flags, flags win, bad values name the option."""

from __future__ import annotations

import pytest

from bench.cli import main
from bench.config import RunConfig, build_config, load_toml
from bench.errors import ConfigError


def test_toml_values_and_flag_precedence(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(
        'architectures = ["unet_thesis", "smp_*"]\nbatch-size = 8\nepochs = 3\nlr = 1\n'
        "seeds = [0, 1]\ndeterministic = true\n"
    )
    config = build_config({"epochs": 5, "architectures": None}, str(path))
    assert config.architectures == ("unet_thesis", "smp_*")
    assert config.batch_size == 8
    assert config.epochs == 5  # the flag wins
    assert config.lr == 1.0 and isinstance(config.lr, float)
    assert config.seeds == (0, 1)
    assert config.deterministic is True


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("batchsize = 3\n", "unknown key 'batchsize'"),
        ('epochs = "ten"\n', "'epochs' must be int"),
        ("epochs = true\n", "'epochs' must be int"),
        ('seeds = ["a"]\n', "'seeds' must be a list of int"),
        ("epochs = [\n", "cannot read"),
    ],
)
def test_bad_toml_names_the_key_and_file(tmp_path, text, match):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match) as info:
        load_toml(path)
    assert "bad.toml" in str(info.value)


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.toml"):
        load_toml(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"epochs": 0}, "--epochs must be positive"),
        ({"epochs": -3}, "--epochs must be positive"),
        ({"batch_size": 0}, "--batch-size must be positive"),
        ({"lr": float("nan")}, "--lr must be positive"),
        ({"width": 0.0}, "--width must be positive"),
        ({"fold": 7}, "--fold must be in 0..4"),
        ({"seeds": (1, 1)}, "--seeds has duplicates"),
        ({"device": "tpu"}, "--device must be one of"),
        ({"architectures": ()}, "name at least one architecture"),
    ],
)
def test_invalid_values_name_the_option(values, match):
    base = {"architectures": ("unet_thesis",)}
    with pytest.raises(ConfigError, match=match):
        build_config({**base, **values})


def test_every_field_is_a_flag():
    """The dataclass maps one-to-one to `bench run` flags."""
    from bench.cli import build_parser

    parser = build_parser()
    run = parser._subparsers._group_actions[0].choices["run"]
    dests = {action.dest for action in run._actions}
    fields = set(RunConfig.__dataclass_fields__)
    assert fields <= dests | {"config"}, fields - dests


def test_cli_reports_bad_epochs_with_exit_2(capsys):
    assert main(["run", "unet_thesis", "--epochs", "0"]) == 2
    assert "--epochs must be positive" in capsys.readouterr().err


def test_threads_from_toml_and_flag(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('architectures = ["unet_thesis"]\nthreads = 2\ndeterministic = true\n')
    assert build_config({}, str(path)).threads == 2
    assert build_config({"threads": 3}, str(path)).threads == 3  # the flag wins
    assert build_config({"architectures": ("unet_thesis",)}).threads is None  # not given


@pytest.mark.parametrize("threads", [0, -1])
def test_threads_must_be_at_least_one(threads):
    with pytest.raises(ConfigError, match="--threads must be at least 1"):
        build_config({"architectures": ("unet_thesis",), "threads": threads})


def test_threads_in_toml_must_be_int(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("threads = 1.5\n")
    with pytest.raises(ConfigError, match="'threads' must be int"):
        load_toml(path)


# ------------------------------------------------------------------ options declared once


def test_a_declared_option_is_a_flag_a_toml_key_and_a_check(tmp_path):
    """One `option(...)` field gives the flag (its name, type, choices, group), the TOML key
    with its type, and the check: nothing else to write for a new option."""
    import argparse
    from dataclasses import dataclass

    from bench.config import (
        add_arguments,
        at_least,
        check_fields,
        float_list,
        option,
        values_from_args,
    )

    @dataclass(frozen=True)
    class Toy:
        names: tuple[str, ...] = option((), "names", positional=True, metavar="NAME")
        count: int = option(2, "how many", check=(at_least(2),))
        rates: tuple[float, ...] | None = option(None, "rates", type=float_list)
        mode: str = option("a", "mode", choices=("a", "b"), group="modes")
        files: tuple[str, ...] = option((), "a file", flag="--file", action="append")
        extra: bool = option(True, "skip the extra", flag="--no-extra")

    parser = argparse.ArgumentParser()
    add_arguments(parser, Toy)
    argv = ["x", "y", "--count", "3", "--rates", "1,2", "3", "--mode", "b", "--no-extra"]
    values = values_from_args(parser.parse_args([*argv, "--file", "f", "--file", "g"]), Toy)
    assert Toy(**values) == Toy(("x", "y"), 3, (1.0, 2.0, 3.0), "b", ("f", "g"), False)
    assert set(values_from_args(parser.parse_args([]), Toy).values()) == {None}  # not given
    assert [g.title for g in parser._action_groups][-1] == "modes"
    with pytest.raises(SystemExit):
        parser.parse_args(["--mode", "c"])
    with pytest.raises(ConfigError, match=r"--count must be at least 2 \(got 1\)"):
        check_fields(Toy(count=1))
    with pytest.raises(ConfigError, match="--mode must be one of a, b"):
        check_fields(Toy(mode="c"))
    path = tmp_path / "toy.toml"
    path.write_text('rates = [1, 0.5]\ncount = 4\nfile = "no: the key is the field"\n')
    with pytest.raises(ConfigError, match="unknown key 'file'"):
        load_toml(path, Toy)
    path.write_text("rates = [1, 0.5]\ncount = 4\n")
    assert load_toml(path, Toy) == {"rates": (1.0, 0.5), "count": 4}


def test_toml_keys_are_the_fields_and_take_their_types(tmp_path):
    from bench.config import toml_keys

    keys = toml_keys(RunConfig)
    assert set(keys) == set(RunConfig.__dataclass_fields__) - {"config"}
    assert (keys["seeds"].element, keys["lr_grid"].element, keys["plugins"].element) == (
        int,
        float,
        str,
    )
    assert keys["epochs"].base is int and keys["epochs"].optional
    path = tmp_path / "bad.toml"
    path.write_text("width = true\n")
    with pytest.raises(ConfigError, match="'width' must be float"):
        load_toml(path)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('protocol = "thesys"\n', "--protocol must be one of clean, thesis, thesis-noleak"),
        ('folds = "some"\n', "--folds must be one of one, all"),
        ("synthetic_size = 16\n", r"--synthetic-size must be in 32\.\.4096 \(got 16\)"),
        ("gpus_per_task = -1\n", "--gpus-per-task must be 0 or more"),
        ("max_images = 1\n", "--max-images must be at least 2"),
        ("num_folds = 1\n", "--num-folds must be at least 2"),
        ("seeds = []\n", "--seeds needs at least one seed"),
        ("cpus_per_task = 0\n", "--cpus-per-task must be positive"),
    ],
)
def test_toml_values_get_the_flags_checks(tmp_path, text, match):
    path = tmp_path / "run.toml"
    path.write_text('architectures = ["unet_thesis"]\n' + text)
    with pytest.raises(ConfigError, match=match):
        build_config({}, str(path))


def test_folds_takes_its_default_and_all(tmp_path):
    path = tmp_path / "run.toml"
    for value in ("one", "all"):
        path.write_text(f'architectures = ["unet_thesis"]\nfolds = "{value}"\n')
        assert build_config({}, str(path)).folds == value


def test_cell_settings_from_config_fill_the_protocol_defaults():
    """One RunConfig -> CellSettings mapping for bench run and bench perf."""
    from dataclasses import replace

    from bench.config import DEFAULT_LR_GRID
    from bench.protocols import get_protocol
    from bench.runner import CellSettings

    clean = get_protocol("clean").defaults
    config = build_config({"architectures": ("unet_thesis",), "progress": "off"})
    settings = CellSettings.from_config(config, clean, num_classes=4)
    assert (settings.epochs, settings.batch_size, settings.lr, settings.loss) == (
        clean.epochs,
        clean.batch_size,
        clean.lr,
        clean.loss,
    )
    assert settings.num_classes == 4 and settings.progress is False
    assert settings.threads is None and settings.lr_grid is None
    given = replace(config, epochs=3, lr=0.5, loss="bce", threads=2, split_seed=7)
    settings = CellSettings.from_config(given, clean, num_classes=3)
    assert (settings.epochs, settings.lr, settings.loss, settings.threads) == (3, 0.5, "bce", 2)
    assert settings.validation_seed == 7
    assert CellSettings.from_config(given, clean, 3, threads=5).threads == 5  # the resolved one
    searching = replace(config, lr_search=True)
    assert CellSettings.from_config(searching, clean, 3).lr_grid == DEFAULT_LR_GRID
