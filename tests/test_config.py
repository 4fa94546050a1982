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
