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
# --lr-search's default grid: half-decade steps centred on Adam's own default, 1e-3. The
# protocols' 1e-4 is the thesis's choice and slow for their budget (30 epochs of ~12 steps on
# wbc1's clean folds); --lr-grid 1e-4,3e-4,1e-3,3e-3 adds it back, at one more training.
DEFAULT_LR_GRID = (3e-4, 1e-3, 3e-3)


@dataclass(frozen=True)
class RunConfig:
    architectures: tuple[str, ...] = ()  # names or fnmatch patterns
    all: bool = False  # every registered architecture
    dataset: str = "synthetic"  # wbc1 | synthetic | folder:PATH
    data_dir: str | None = None
    palette: str | None = None  # folder datasets: "GREY:CLASS,..." e.g. "0:0,128:1,255:2"
    protocol: str = "clean"  # clean | thesis | thesis-noleak
    fold: int = 0
    folds: str = "one"  # "one" (just --fold) or "all"
    num_folds: int = 5
    split_seed: int = 0  # the fold partition; fixed across training seeds so images pair up
    seeds: tuple[int, ...] = (0,)
    epochs: int | None = None  # None: the protocol's default
    batch_size: int | None = None
    lr: float | None = None
    # Pick each architecture's Adam learning rate from lr_grid (None: DEFAULT_LR_GRID) on a
    # validation split carved from the training images (bench.runner.search_lr).
    lr_search: bool = False
    lr_grid: tuple[float, ...] | None = None
    loss: str | None = None
    width: float = 1.0
    encoder: str = "resnet34"  # encoder of the smp_* baselines
    device: str = "auto"
    deterministic: bool = False
    # torch intra-op threads of each cell. None: under --deterministic the run resolves
    # it (bench.executors.resolve_threads) and records it, so local and Ray cells compute
    # the same sums in the same order; otherwise where the cell runs decides.
    threads: int | None = None
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
    "lr_search": bool,
    "lr_grid": tuple,
    "loss": str,
    "width": float,
    "encoder": str,
    "device": str,
    "deterministic": bool,
    "threads": int,
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
        element = {"seeds": int, "lr_grid": float}.get(key, str)
        # A float list takes integers too (lr_grid = [1, 0.1]), as a float key does.
        accepted = (int, float) if element is float else element
        if not all(isinstance(v, accepted) and not isinstance(v, bool) for v in items):
            raise ConfigError(f"{source}: {key!r} must be a list of {element.__name__}")
        return tuple(float(v) for v in items) if element is float else tuple(items)
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


# Seeds feed random.seed, torch.manual_seed (-2**63..2**64-1) and numpy's legacy
# RandomState (the split's permutation, np.random.seed): the last accepts only 0..2**32-1,
# so that is the range every generator takes unchanged.
SEED_MAX = 2**32 - 1
# --width scales channel counts, so parameters and FLOPs grow as width**2: at 4 the thesis
# models already have 0.27-0.54 G parameters (about 8 GB with Adam's state); more is a typo.
WIDTH_MAX = 4.0
# A synthetic image side above this would exceed the readers' per-image pixel cap
# (bench.images.MAX_IMAGE_PIXELS = 4096 x 4096).
SYNTHETIC_SIZE_MAX = 4096


def check_seed(name: str, value: int) -> None:
    """A seed must be an integer in 0..SEED_MAX, the range numpy, torch and random all take."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= SEED_MAX:
        raise ConfigError(
            f"--{name.replace('_', '-')} must be in 0..{SEED_MAX} (2**32-1, numpy's seed range; "
            f"got {value})"
        )


def encoder_problem(encoder: str) -> str | None:
    """Why smp cannot build ``encoder`` (with close matches), or ``None`` if it can.

    Shared by :func:`validate` (``--encoder``) and the smp baselines' own check, so both say
    the same. Imports segmentation_models_pytorch (about 2 s): call it only when needed.
    """
    import difflib

    from segmentation_models_pytorch import encoders as smp_encoders

    convert = getattr(smp_encoders, "is_equivalent_to_timm_universal", None)
    if convert is not None and convert(encoder):
        return None  # a deprecated "timm-" name smp itself renames to a "tu-" one
    if encoder.startswith("tu-"):
        import timm

        model = encoder[len("tu-") :]
        if timm.is_model(model):
            return None
        close = [f"tu-{m}" for m in difflib.get_close_matches(model, timm.list_models(), n=3)]
        common: list[str] = []
        where = "timm.list_models()"
    else:
        known = list(smp_encoders.get_encoder_names())
        if encoder in known:
            return None
        close = difflib.get_close_matches(encoder, known, n=3)
        common = [n for n in ("resnet18", "resnet34", "resnet50", "efficientnet-b0") if n in known]
        where = "segmentation_models_pytorch.encoders.get_encoder_names(), or use 'tu-<timm model>'"
    if close:
        hint = f" (did you mean {', '.join(close)}?)"
    else:  # nothing alike: name common ones, so the message still shows what a name looks like
        hint = f" (e.g. {', '.join(common)})" if common else ""
    return f"unknown encoder {encoder!r}{hint}; see {where}"


def validate(config: RunConfig) -> None:
    """Reject impossible values before any work starts; messages name the option."""
    for name in ("epochs", "batch_size", "lr", "width", "num_folds", "synthetic_count"):
        check_positive(name, getattr(config, name))
    if config.max_images is not None and config.max_images < 2:
        raise ConfigError(f"--max-images must be at least 2 (got {config.max_images})")
    if config.width > WIDTH_MAX:
        raise ConfigError(
            f"--width must be in (0, {WIDTH_MAX:g}] (got {config.width}); {WIDTH_MAX:g} already "
            f"means {WIDTH_MAX**2:g}x the published model's parameters"
        )
    if not 32 <= config.synthetic_size <= SYNTHETIC_SIZE_MAX:
        raise ConfigError(
            f"--synthetic-size must be in 32..{SYNTHETIC_SIZE_MAX} (got {config.synthetic_size})"
        )
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
    for seed in config.seeds:
        check_seed("seeds", seed)
    check_seed("split_seed", config.split_seed)
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
    # Checked whatever the architectures (a typo is a typo), but not for the default, which
    # smp always has: that spares runs without smp models the 2 s import of smp.
    if config.encoder != RunConfig.encoder:
        problem = encoder_problem(config.encoder)
        if problem is not None:
            raise ConfigError(f"--encoder: {problem}")
    check_threads(config)
    check_lr_search(config)


def check_threads(config: RunConfig) -> None:
    """``--threads`` must be a whole number of at least 1 (``None``: not given, fine)."""
    if config.threads is not None and (isinstance(config.threads, bool) or config.threads < 1):
        raise ConfigError(f"--threads must be at least 1 (got {config.threads})")


def check_lr_search(config: RunConfig) -> None:
    """``--lr-search`` excludes ``--lr``; ``--lr-grid`` needs it and two or more distinct
    positive rates."""
    if config.lr_search and config.lr is not None:
        raise ConfigError(
            "--lr and --lr-search exclude each other: --lr fixes one learning rate for every "
            "architecture, --lr-search picks one per architecture from --lr-grid"
        )
    if config.lr_grid is None:
        return
    if not config.lr_search:
        raise ConfigError("--lr-grid needs --lr-search")
    for value in config.lr_grid:
        if isinstance(value, bool) or not (value > 0 and math.isfinite(value)):
            raise ConfigError(f"--lr-grid: every learning rate must be positive (got {value})")
    if len(config.lr_grid) < 2:
        raise ConfigError("--lr-grid needs at least two learning rates (for one, use --lr)")
    if len(set(config.lr_grid)) != len(config.lr_grid):
        raise ConfigError(f"--lr-grid has duplicates: {list(config.lr_grid)}")
