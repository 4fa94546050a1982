"""Run configuration: one frozen dataclass whose fields map one-to-one to ``bench run`` flags.

A TOML file (``--config FILE.toml``) holds the same keys as the flags (``batch_size`` or
``batch-size``); flags given on the command line win. Values left ``None`` are filled from
the protocol's defaults by :func:`resolve`.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from bench.errors import ConfigError
from bench.host_memory import HOST_MEMORY_MODES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    tomllib = None

DEVICES = ("auto", "cpu", "cuda", "mps")
LOSSES = ("bce", "cross_entropy")
EXECUTORS = ("local", "ray")
AMP_MODES = ("auto", "off", "bf16", "fp16")  # auto: bf16 on CUDA, off elsewhere
SWITCHES = ("auto", "on", "off")


@dataclass(frozen=True)
class RunConfig:
    architectures: tuple[str, ...] = ()  # names or fnmatch patterns
    all: bool = False  # every registered architecture
    dataset: str = "synthetic"  # wbc1 | synthetic | folder:PATH
    data_dir: str | None = None
    palette: str | None = None  # folder datasets: "GREY:CLASS,..." e.g. "0:0,128:1,255:2"
    protocol: str = "clean"  # clean | thesis
    fold: int = 0
    folds: str = "one"  # "one" (just --fold) or "all"
    num_folds: int = 5
    split_seed: int = 0  # the fold partition; fixed across training seeds so images pair up
    seeds: tuple[int, ...] = (0,)
    epochs: int | None = None  # None: the protocol's default
    batch_size: int | None = None
    lr: float | None = None
    loss: str | None = None
    width: float = 1.0
    encoder: str = "resnet34"  # encoder of the smp_* baselines
    device: str = "auto"
    deterministic: bool = False
    max_images: int | None = None  # use only the first N images of the dataset
    synthetic_count: int = 60
    synthetic_size: int = 120
    out: str | None = None
    plugins: tuple[str, ...] = ()
    progress: str = "auto"  # auto (bars on a terminal only) | on | off
    # Speed options; each can change results within floating-point noise, so a resumed run
    # must use the same ones.
    amp: str = "auto"  # mixed precision: auto (bf16 on CUDA, off elsewhere) | off | bf16 | fp16
    channels_last: str = "auto"  # memory format of activations: auto | on | off
    compile: bool = False  # torch.compile the model
    # Host allocator: retain (keep freed memory for the next step) | system; no effect on results.
    host_memory: str = "retain"
    # Where cells run; placement only, results do not depend on it (resume may switch).
    executor: str = "local"  # local | ray
    ray_address: str | None = None  # an existing Ray cluster; None starts a local one
    cpus_per_task: float = 1.0  # Ray resource request of one cell
    gpus_per_task: float = 0.0
    config: str | None = field(default=None, compare=False)  # the TOML file read, if any

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELD_TYPES: dict[str, type] = {
    "architectures": tuple,
    "all": bool,
    "dataset": str,
    "data_dir": str,
    "palette": str,
    "protocol": str,
    "fold": int,
    "folds": str,
    "num_folds": int,
    "split_seed": int,
    "seeds": tuple,
    "epochs": int,
    "batch_size": int,
    "lr": float,
    "loss": str,
    "width": float,
    "encoder": str,
    "device": str,
    "deterministic": bool,
    "max_images": int,
    "synthetic_count": int,
    "synthetic_size": int,
    "out": str,
    "plugins": tuple,
    "progress": str,
    "amp": str,
    "channels_last": str,
    "compile": bool,
    "host_memory": str,
    "executor": str,
    "ray_address": str,
    "cpus_per_task": float,
    "gpus_per_task": float,
}
assert set(FIELD_TYPES) == {f.name for f in fields(RunConfig)} - {"config"}


def _coerce(key: str, value: Any, source: str) -> Any:
    """Check one TOML value's type; a wrong type names the key and the file."""
    expected = FIELD_TYPES[key]
    if expected is tuple:
        items = value if isinstance(value, list) else [value]
        element = int if key == "seeds" else str
        if not all(isinstance(v, element) and not isinstance(v, bool) for v in items):
            raise ConfigError(f"{source}: {key!r} must be a list of {element.__name__}")
        return tuple(items)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is int and isinstance(value, bool) or not isinstance(value, expected):
        raise ConfigError(
            f"{source}: {key!r} must be {expected.__name__}, got {type(value).__name__} ({value!r})"
        )
    return value


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file into validated RunConfig keyword arguments."""
    path = Path(path)
    if tomllib is None:
        raise ConfigError("--config needs Python 3.11 or newer (tomllib)")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"--config: file not found: {path}") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"--config: cannot read {path}: {error}") from None
    values: dict[str, Any] = {}
    for raw_key, value in raw.items():
        key = raw_key.replace("-", "_")
        if key not in FIELD_TYPES:
            known = ", ".join(sorted(FIELD_TYPES))
            raise ConfigError(f"{path}: unknown key {raw_key!r}; known keys: {known}")
        values[key] = _coerce(key, value, str(path))
    return values


def build_config(cli_values: dict[str, Any], config_file: str | None = None) -> RunConfig:
    """Merge a TOML file (if any) and the flags the user gave (``None`` = not given)."""
    values: dict[str, Any] = load_toml(config_file) if config_file else {}
    values.update({k: v for k, v in cli_values.items() if v is not None})
    config = RunConfig(**values, config=config_file)
    validate(config)
    return config


def check_positive(name: str, value: float | None) -> None:
    """``--NAME`` must be a finite number above 0 (``None``: not given, fine)."""
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"--{name.replace('_', '-')} must be positive (got {value})")


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    """``--NAME`` must be one of ``choices``."""
    if value not in choices:
        raise ConfigError(
            f"--{name.replace('_', '-')} must be one of {', '.join(choices)} (got {value!r})"
        )


def validate(config: RunConfig) -> None:
    """Reject impossible values before any work starts; messages name the option."""
    for name in ("epochs", "batch_size", "lr", "width", "num_folds", "synthetic_count"):
        check_positive(name, getattr(config, name))
    if config.max_images is not None and config.max_images < 2:
        raise ConfigError(f"--max-images must be at least 2 (got {config.max_images})")
    if config.synthetic_size < 32:
        raise ConfigError(f"--synthetic-size must be at least 32 (got {config.synthetic_size})")
    check_choice("device", config.device, DEVICES)
    if config.loss is not None:
        check_choice("loss", config.loss, LOSSES)
    if config.folds not in ("one", "all"):
        raise ConfigError(f"--folds must be 'all' (got {config.folds!r})")
    if config.num_folds < 2:
        raise ConfigError(f"--num-folds must be at least 2 (got {config.num_folds})")
    if not 0 <= config.fold < config.num_folds:
        raise ConfigError(f"--fold must be in 0..{config.num_folds - 1} (got {config.fold})")
    if not config.seeds:
        raise ConfigError("--seeds needs at least one seed")
    if len(set(config.seeds)) != len(config.seeds):
        raise ConfigError(f"--seeds has duplicates: {list(config.seeds)}")
    check_choice("progress", config.progress, SWITCHES)
    check_choice("amp", config.amp, AMP_MODES)
    check_choice("channels_last", config.channels_last, SWITCHES)
    check_choice("host_memory", config.host_memory, HOST_MEMORY_MODES)
    check_choice("executor", config.executor, EXECUTORS)
    check_positive("cpus_per_task", config.cpus_per_task)
    if not (config.gpus_per_task >= 0 and math.isfinite(config.gpus_per_task)):
        raise ConfigError(f"--gpus-per-task must be 0 or more (got {config.gpus_per_task})")
    if config.executor != "ray" and config.ray_address is not None:
        raise ConfigError("--ray-address needs --executor ray")
    if not config.architectures and not config.all:
        raise ConfigError("name at least one architecture (or a pattern), or pass --all")
