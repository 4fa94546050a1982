"""Configuration of ``bench run`` and ``bench perf``: each option is defined once.

A config dataclass's fields are its options. Each field is declared with :func:`option`,
whose metadata (help, choices, group, metavar, flag name, checks) is the single source for
the command line (:func:`add_arguments`), the TOML schema (:func:`load_toml`; the value
types come from the field's annotation) and the per-field checks (:func:`check_fields`).
Only checks that relate several fields are written out, in :func:`validate`.

A TOML file (``bench run --config FILE.toml``) holds the same keys as the flags
(``batch_size`` or ``batch-size``); flags given on the command line win. Values left
``None`` are filled from the protocol's defaults when a run starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import sys
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from bench.errors import ConfigError
from bench.host_memory import HOST_MEMORY_MODES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    tomllib = None

PROTOCOLS = ("clean", "thesis", "thesis-noleak")  # bench.protocols.PROTOCOLS, without its import
DEVICES = ("auto", "cpu", "cuda", "mps")
LOSSES = ("bce", "cross_entropy", "dice_ce")
RECIPES = ("thesis", "modern")  # bench.recipes.RECIPES, without importing it
EXECUTORS = ("local", "ray")
AMP_MODES = ("auto", "off", "bf16", "fp16")  # auto: bf16 on CUDA, off elsewhere
SWITCHES = ("auto", "on", "off")
DEFAULT_ENCODER = "resnet34"  # smp always has it: validating it needs no import of smp
# --track: experiment trackers, each with (the package it needs, the extra that installs it).
TRACKER_PACKAGES = {"tensorboard": ("tensorboard", "tracking")}
TRACKERS = tuple(TRACKER_PACKAGES)
# --lr-search's default grid: half-decade steps centred on Adam's own default, 1e-3. The
# protocols' 1e-4 is the thesis's choice and slow for their budget (30 epochs of ~12 steps on
# wbc1's clean folds); --lr-grid 1e-4,3e-4,1e-3,3e-3 adds it back, at one more training.
DEFAULT_LR_GRID = (3e-4, 1e-3, 3e-3)
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

# Titles of the help's option groups (a field's ``group``).
SPEED_GROUP = "speed (each may move results within floating-point noise)"
EXECUTOR_GROUP = "executor (where cells run; results do not depend on it)"

#: A per-field check: ``check(option, value)`` raises ConfigError naming ``option``
#: (``--width``). It never sees ``None`` for a field typed ``X | None`` (not given).
Check = Callable[[str, Any], None]


# ---------------------------------------------------------------------------- declaring options


def option(
    default: Any,
    help: str,
    *,
    choices: Sequence[str] | None = None,
    type: Callable[[str], Any] | None = None,
    group: str | None = None,
    metavar: str | None = None,
    flag: str | None = None,
    action: str | None = None,
    positional: bool = False,
    check: Sequence[Check] = (),
    toml: bool = True,
    compare: bool = True,
) -> Any:
    """A config field that is also a flag, a TOML key and a checked value, declared once.

    - ``help``, ``metavar``, ``group`` (an option group's title): the flag's help.
    - ``choices``: the values the flag takes, checked in TOML too; the field's default is
      valid as well (``--folds`` takes only ``all``: its default ``one`` is leaving it out).
    - ``type``: how argparse reads one word; default: the annotation's type (a tuple's
      element type). A word read as a list (``--lr-grid 1e-4,3e-4``) is spliced in.
    - ``flag``: the option's name when it is not ``--field-name`` (``--plugin``); a bool
      field is a switch (``store_true``, or ``store_false`` for a ``--no-...`` flag).
    - ``action``: argparse's, when not derived (``append``: a repeatable flag).
    - ``positional``: a positional argument (a tuple takes ``*`` words, a scalar ``?``).
    - ``check``: per-field checks run in order by :func:`check_fields`.
    - ``toml=False``: not a TOML key (``--config`` itself).
    """
    metadata = {
        "help": help,
        "choices": tuple(choices) if choices is not None else None,
        "type": type,
        "group": group,
        "metavar": metavar,
        "flag": flag,
        "action": action,
        "positional": positional,
        "check": tuple(check),
        "toml": toml,
    }
    return field(default=default, compare=compare, metadata=metadata)


@dataclass(frozen=True)
class FieldKind:
    """What a field's annotation says its values are: ``tuple[int, ...] | None`` is
    ``FieldKind(tuple, int, True)``; the TOML coercion and argparse types derive from it."""

    base: type
    element: type | None  # of a tuple
    optional: bool  # None allowed: "not given", filled later


def _kind_of(hint: Any) -> FieldKind:
    optional = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(members) < len(typing.get_args(hint))
        (hint,) = members
    if typing.get_origin(hint) is tuple:
        return FieldKind(tuple, typing.get_args(hint)[0], optional)
    return FieldKind(hint, None, optional)


@functools.cache
def field_kinds(cls: type) -> dict[str, FieldKind]:
    """``{field: FieldKind}`` of a config dataclass's options (the TOML schema's types)."""
    hints = typing.get_type_hints(cls)
    return {f.name: _kind_of(hints[f.name]) for f in option_fields(cls)}


def option_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of ``cls`` declared with :func:`option`, in declaration order."""
    return [f for f in fields(cls) if "help" in f.metadata]


def option_name(f: dataclasses.Field) -> str:
    """How messages name a field: its flag (``--batch-size``, ``--plugin``)."""
    if f.metadata.get("positional"):
        return f.name
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _option(name: str) -> str:
    """``"batch_size"`` → ``"--batch-size"``; an option string is kept as it is."""
    return name if name.startswith("-") else "--" + name.replace("_", "-")


# ---------------------------------------------------------------------------- per-field checks


def check_positive(name: str, value: float | None) -> None:
    """``--NAME`` must be a finite number above 0 (``None``: not given, fine)."""
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"{_option(name)} must be positive (got {value})")


def check_non_negative(name: str, value: float) -> None:
    """``--NAME`` must be a finite number, 0 or more."""
    if not (value >= 0 and math.isfinite(value)):
        raise ConfigError(f"{_option(name)} must be 0 or more (got {value})")


def check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    """``--NAME`` must be one of ``choices``."""
    if value not in choices:
        raise ConfigError(f"{_option(name)} must be one of {', '.join(choices)} (got {value!r})")


def at_least(minimum: int) -> Check:
    """A check: a whole number of at least ``minimum``."""

    def check(name: str, value: int) -> None:
        if isinstance(value, bool) or value < minimum:
            raise ConfigError(f"{_option(name)} must be at least {minimum} (got {value})")

    return check


def in_range(low: int, high: int) -> Check:
    """A check: a number in ``low..high``, both ends included."""

    def check(name: str, value: int) -> None:
        if not low <= value <= high:
            raise ConfigError(f"{_option(name)} must be in {low}..{high} (got {value})")

    return check


def check_seed(name: str, value: int) -> None:
    """A seed must be an integer in 0..SEED_MAX, the range numpy, torch and random all take."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= SEED_MAX:
        raise ConfigError(
            f"{_option(name)} must be in 0..{SEED_MAX} (2**32-1, numpy's seed range; got {value})"
        )


def check_seeds(name: str, seeds: tuple[int, ...]) -> None:
    """At least one seed, no duplicates (they would be the same cells), each a valid seed."""
    if not seeds:
        raise ConfigError(f"{_option(name)} needs at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{_option(name)} has duplicates: {list(seeds)}")
    for seed in seeds:
        check_seed(name, seed)


def check_width_max(name: str, value: float) -> None:
    """At most WIDTH_MAX: parameters grow as width**2, so more is a typo."""
    if value > WIDTH_MAX:
        raise ConfigError(
            f"{_option(name)} must be in (0, {WIDTH_MAX:g}] (got {value}); {WIDTH_MAX:g} "
            f"already means {WIDTH_MAX**2:g}x the published model's parameters"
        )


def check_lr_grid(name: str, grid: tuple[float, ...]) -> None:
    """Two or more distinct positive rates (one rate is ``--lr``)."""
    for value in grid:
        if isinstance(value, bool) or not (value > 0 and math.isfinite(value)):
            raise ConfigError(
                f"{_option(name)}: every learning rate must be positive (got {value})"
            )
    if len(grid) < 2:
        raise ConfigError(f"{_option(name)} needs at least two learning rates (for one, use --lr)")
    if len(set(grid)) != len(grid):
        raise ConfigError(f"{_option(name)} has duplicates: {list(grid)}")


def check_encoder(name: str, encoder: str) -> None:
    """smp must know the encoder. Checked whatever the architectures (a typo is a typo), but
    not for the default, which smp always has: that spares runs without smp models the 2 s
    import of smp."""
    if encoder != DEFAULT_ENCODER:
        problem = encoder_problem(encoder)
        if problem is not None:
            raise ConfigError(f"{_option(name)}: {problem}")


def check_encoder_weights_name(name: str, weights: str) -> None:
    """A weights name is a word (``imagenet``, ``ssl``); whether the encoder has such weights
    is asked from smp before training (``architectures.check_encoder_weights``)."""
    if not weights.strip() or weights != weights.strip():
        raise ConfigError(
            f"{_option(name)} must be a weights name such as imagenet (got {weights!r}); "
            "leave it out for random initialisation"
        )


def check_tracker(name: str, tracker: str) -> None:
    """The tracker's package must be installed: said at startup, not after the first cell."""
    import importlib.util

    package, extra = TRACKER_PACKAGES[tracker]
    if importlib.util.find_spec(package) is None:
        raise ConfigError(
            f"{_option(name)} {tracker} needs the {package} package, which is not installed: "
            f"pip install 'wbc-seg-bench[{extra}]' (from a clone: pip install -c "
            f"constraints.txt -e '.[{extra}]')"
        )


def encoder_problem(encoder: str) -> str | None:
    """Why smp cannot build ``encoder`` (with close matches), or ``None`` if it can.

    Shared by :func:`check_encoder` (``--encoder``) and the smp baselines' own check, so both
    say the same. Imports segmentation_models_pytorch (about 2 s): call it only when needed.
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


def float_list(text: str) -> list[float]:
    """``"1e-4,3e-4"`` → ``[0.0001, 0.0003]`` (an argparse type: a bad number is exit 2)."""
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of numbers: {text!r}"
        ) from None


# ---------------------------------------------------------------------------- bench run's options


#: RunConfig keys that change no result: where cells run and how, where the run is written,
#: what is printed and tracked. A resumed run may differ in them (bench.suite), and so may
#: two runs compared or combined (bench.compare, bench.combine).
PLACEMENT_KEYS = frozenset(
    {
        "out",
        "progress",
        "config",
        "executor",
        "ray_address",
        "cpus_per_task",
        "gpus_per_task",
        "host_memory",
        "track",
    }
)


@dataclass(frozen=True)
class RunConfig:
    """One ``bench run``: each field is a flag, a TOML key and its own checks (:func:`option`)."""

    architectures: tuple[str, ...] = option(
        (), "architecture names or fnmatch patterns, e.g. 'smp_*'", positional=True, metavar="ARCH"
    )
    all: bool = option(False, "every registered architecture")
    dataset: str = option("synthetic", "wbc1 | synthetic | folder:PATH (default synthetic)")
    data_dir: str | None = option(None, "where datasets live (default $BENCH_DATA_DIR or cache)")
    palette: str | None = option(
        None,
        "folder datasets: mask value to class index or name, e.g. 0:background,255:nucleus "
        "(default 0:0,128:1,255:2, the WBC classes); class 0 is background",
        metavar="GREY:CLASS,...",
    )
    protocol: str = option("clean", "default clean", choices=PROTOCOLS)
    fold: int = option(0, "test fold of the clean protocol (default 0)")  # < num_folds: validate
    folds: str = option("one", "'all': run every fold", choices=("all",))  # "one": just --fold
    num_folds: int = option(
        5, "k of the k-fold split (default 5)", check=(check_positive, at_least(2))
    )
    # The fold partition; fixed across training seeds so that images pair up.
    split_seed: int = option(0, "seed of the fold partition (default 0)", check=(check_seed,))
    seeds: tuple[int, ...] = option((0,), "training seeds (default 0)", check=(check_seeds,))
    epochs: int | None = option(None, "default: the protocol's (30)", check=(check_positive,))
    batch_size: int | None = option(None, "default: the protocol's (20)", check=(check_positive,))
    lr: float | None = option(
        None, "Adam learning rate (default: the protocol's)", check=(check_positive,)
    )
    # Pick each architecture's Adam learning rate from lr_grid (None: DEFAULT_LR_GRID) on a
    # validation split carved from the training images (bench.runner.search_lr).
    lr_search: bool = option(
        False,
        "pick each architecture's learning rate from --lr-grid by foreground Dice on a "
        "validation split (20%% of the training images, by source image); each rate trains "
        "for the full epochs, so a cell costs about 1 + 0.8 x grid size trainings",
    )
    lr_grid: tuple[float, ...] | None = option(
        None,
        f"learning rates --lr-search tries (default {','.join(map(str, DEFAULT_LR_GRID))})",
        type=float_list,  # "--lr-grid 1e-4,3e-4 1e-3": commas and spaces both separate
        metavar="LR[,LR...]",
        check=(check_lr_grid,),
    )
    loss: str | None = option(
        None,
        "default: the recipe's, else the protocol's (dice_ce: cross-entropy + soft Dice)",
        choices=LOSSES,
    )
    # How every architecture trains (bench.recipes); flags given beside it win.
    recipe: str = option(
        "thesis",
        "training recipe of every architecture: thesis (default: the protocol's Adam, loss, "
        "augmentation and epochs) or modern (AdamW, warm-up + cosine, CE + Dice, strong "
        "augmentation, early stopping on a validation split, test-time flips)",
        choices=RECIPES,
    )
    width: float = option(
        1.0, "channel width multiplier (1.0 = thesis)", check=(check_positive, check_width_max)
    )
    encoder: str = option(
        DEFAULT_ENCODER,
        "encoder of the smp_* baselines (default resnet34)",
        check=(check_encoder,),
    )
    # Pretrained weights of that encoder; None: random initialisation, as the thesis's
    # models. Fetched once before training (architectures.check_encoder_weights), then
    # read from the Hugging Face cache by every cell; recorded per architecture too.
    encoder_weights: str | None = option(
        None,
        "pretrained weights of the smp_* baselines' encoder, e.g. imagenet (default: none, "
        "random initialisation); downloaded once into the Hugging Face cache",
        metavar="NAME",
        check=(check_encoder_weights_name,),
    )
    # Experiment tracking; writes beside the run's files, never changes a result.
    track: str | None = option(
        None,
        "also write each finished cell's curves, configuration and results as TensorBoard "
        "event files under RUN_DIR/tensorboard/ (needs the [tracking] extra)",
        choices=TRACKERS,
        check=(check_tracker,),
    )
    device: str = option("auto", "default auto: cuda, then mps, then cpu", choices=DEVICES)
    deterministic: bool = option(False, "deterministic algorithms (slower; exact reruns on CPU)")
    max_images: int | None = option(None, "use only the first N images", check=(at_least(2),))
    synthetic_count: int = option(60, "images of the synthetic dataset", check=(check_positive,))
    synthetic_size: int = option(
        120, "side of the synthetic images", check=(in_range(32, SYNTHETIC_SIZE_MAX),)
    )
    out: str | None = option(None, "run directory (default runs/<UTC time>_<protocol>)")
    plugins: tuple[str, ...] = option(
        (),
        "a Python file registering architectures (repeatable)",
        flag="--plugin",
        action="append",
        metavar="FILE",
    )
    # Without bars (off, or auto with stderr not a terminal: nohup, CI) the local executor
    # logs a line per epoch instead (bench.executors.CellProgress).
    progress: str = option(
        "auto",
        "progress bars (auto: only on a terminal); without bars, a log line per epoch with "
        "the cell counter and a rough suite ETA",
        choices=SWITCHES,
    )
    # Not part of a run's configuration: bench.suite leaves it out of config.json.
    dry_run: bool = option(
        False,
        "print the plan and a rough time estimate (a few training steps of each architecture "
        "timed on the chosen device), then exit: nothing is trained or written",
    )
    # Speed options; each can change results within floating-point noise, so a resumed run
    # must use the same ones.
    amp: str = option(
        "auto",
        "mixed precision, loss in fp32 (default auto: bf16 on CUDA, off elsewhere)",
        choices=AMP_MODES,
        group=SPEED_GROUP,
    )
    channels_last: str = option(
        "auto",
        "channels-last memory format (default auto: on for CUDA and CPU convolutions)",
        choices=SWITCHES,
        group=SPEED_GROUP,
    )
    compile: bool = option(False, "torch.compile each model", group=SPEED_GROUP)
    # torch intra-op threads of each cell. None: under --deterministic the run resolves
    # it (bench.executors.resolve_threads) and records it, so local and Ray cells compute
    # the same sums in the same order; otherwise where the cell runs decides.
    threads: int | None = option(
        None,
        "torch intra-op threads of each cell, on every executor (default: with "
        "--deterministic this process's count, recorded in config.json; otherwise the "
        "local process's count, or --cpus-per-task for a Ray cell)",
        metavar="N",
        group=SPEED_GROUP,
        check=(at_least(1),),
    )
    # Faster too, but never moves a result: not in the speed group.
    host_memory: str = option(
        "retain",
        "retain (default): keep freed host memory for the next step instead of returning it "
        "to the system and faulting it back in (glibc; no effect on results); system: the "
        "allocator's defaults",
        choices=HOST_MEMORY_MODES,
    )
    # Where cells run; placement only, results do not depend on it (resume may switch).
    executor: str = option(
        "local",
        "local (default): one cell after another here; ray: each cell a Ray task",
        choices=EXECUTORS,
        group=EXECUTOR_GROUP,
    )
    ray_address: str | None = option(
        None,
        "existing Ray cluster (default: start a local one)",
        metavar="ADDR",
        group=EXECUTOR_GROUP,
    )
    cpus_per_task: float = option(
        1.0, "CPUs a Ray cell asks for (default 1)", group=EXECUTOR_GROUP, check=(check_positive,)
    )
    gpus_per_task: float = option(
        0.0,
        "GPUs a Ray cell asks for (default 0)",
        group=EXECUTOR_GROUP,
        check=(check_non_negative,),
    )
    config: str | None = option(  # the TOML file read, if any
        None, "TOML file with the same keys", metavar="FILE.toml", toml=False, compare=False
    )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------- argparse and TOML


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one argparse option per field of ``cls`` (from its :func:`option` metadata).

    Every option defaults to ``None`` ("not given"), so a TOML file or the dataclass's own
    default fills it; :func:`values_from_args` reads them back as field values.
    """
    groups: dict[str, argparse._ArgumentGroup] = {}
    kinds = field_kinds(cls)
    for f in option_fields(cls):
        meta, kind = f.metadata, kinds[f.name]
        target: Any = parser
        if meta["group"]:
            if meta["group"] not in groups:
                groups[meta["group"]] = parser.add_argument_group(meta["group"])
            target = groups[meta["group"]]
        kwargs: dict[str, Any] = {"help": meta["help"]}
        if meta["metavar"]:
            kwargs["metavar"] = meta["metavar"]
        if meta["choices"]:
            kwargs["choices"] = meta["choices"]
        if kind.base is bool:
            store_false = (meta["flag"] or "").startswith("--no-")
            kwargs["action"] = meta["action"] or ("store_false" if store_false else "store_true")
        else:
            word_type = meta["type"] or (kind.element if kind.base is tuple else kind.base)
            if word_type is not str:
                kwargs["type"] = word_type
            if meta["action"]:
                kwargs["action"] = meta["action"]
            elif meta["positional"]:
                kwargs["nargs"] = "*" if kind.base is tuple else "?"
            elif kind.base is tuple:
                kwargs["nargs"] = "+"
        if meta["positional"]:
            target.add_argument(f.name, **kwargs)
        else:
            target.add_argument(option_name(f), dest=f.name, default=None, **kwargs)


def values_from_args(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The options of ``cls`` as parsed: ``None`` where not given, lists made tuples.

    A word read as a list (``--lr-grid 1e-4,3e-4 1e-3``) is spliced into the tuple.
    """
    values: dict[str, Any] = {}
    for f in option_fields(cls):
        value = getattr(args, f.name, None)
        if isinstance(value, list):
            words = (item if isinstance(item, list) else [item] for item in value)
            value = tuple(v for word in words for v in word) or None
        values[f.name] = value
    return values


def toml_keys(cls: type) -> dict[str, FieldKind]:
    """The keys a TOML file may hold for ``cls``, with their types."""
    kinds = field_kinds(cls)
    return {f.name: kinds[f.name] for f in option_fields(cls) if f.metadata["toml"]}


def _coerce(key: str, value: Any, kind: FieldKind, source: str) -> Any:
    """Check one TOML value's type; a wrong type names the key and the file."""
    if kind.base is tuple:
        items = value if isinstance(value, list) else [value]
        element = kind.element or str
        # A float list takes integers too (lr_grid = [1, 0.1]), as a float key does.
        accepted = (int, float) if element is float else element
        if not all(isinstance(v, accepted) and not isinstance(v, bool) for v in items):
            raise ConfigError(f"{source}: {key!r} must be a list of {element.__name__}")
        return tuple(float(v) for v in items) if element is float else tuple(items)
    expected = kind.base
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is int and isinstance(value, bool) or not isinstance(value, expected):
        raise ConfigError(
            f"{source}: {key!r} must be {expected.__name__}, got {type(value).__name__} ({value!r})"
        )
    return value


def load_toml(path: str | Path, cls: type = RunConfig) -> dict[str, Any]:
    """Read a TOML config file into keyword arguments of ``cls``, each of the right type."""
    path = Path(path)
    if tomllib is None:
        raise ConfigError("--config needs Python 3.11 or newer (tomllib)")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"--config: file not found: {path}") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"--config: cannot read {path}: {error}") from None
    schema = toml_keys(cls)
    values: dict[str, Any] = {}
    for raw_key, value in raw.items():
        key = raw_key.replace("-", "_")
        if key not in schema:
            known = ", ".join(sorted(schema))
            raise ConfigError(f"{path}: unknown key {raw_key!r}; known keys: {known}")
        values[key] = _coerce(key, value, schema[key], str(path))
    return values


def build_config(cli_values: dict[str, Any], config_file: str | None = None) -> RunConfig:
    """Merge a TOML file (if any) and the flags the user gave (``None`` = not given)."""
    values: dict[str, Any] = load_toml(config_file) if config_file else {}
    values.update({k: v for k, v in cli_values.items() if v is not None and k != "config"})
    config = RunConfig(**values, config=config_file)
    validate(config)
    return config


# ---------------------------------------------------------------------------- validation


def check_fields(config: Any) -> None:
    """Run every field's own checks (its choices, then its ``check`` list), in field order.

    ``None`` in a field typed ``X | None`` means "not given" and is not checked.
    """
    kinds = field_kinds(type(config))
    for f in option_fields(type(config)):
        value = getattr(config, f.name)
        if value is None and kinds[f.name].optional:
            continue
        name = option_name(f)
        choices = f.metadata["choices"]
        if choices and value != f.default and value not in choices:
            valid = choices if f.default is None or f.default in choices else (f.default, *choices)
            check_choice(name, value, valid)
        for check in f.metadata["check"]:
            check(name, value)


def validate(config: RunConfig) -> None:
    """Reject impossible values before any work starts; messages name the option.

    Each field's own constraints are in its metadata (:func:`check_fields`); what relates
    several fields is checked here.
    """
    check_fields(config)
    if not 0 <= config.fold < config.num_folds:
        raise ConfigError(f"--fold must be in 0..{config.num_folds - 1} (got {config.fold})")
    if config.executor != "ray" and config.ray_address is not None:
        raise ConfigError("--ray-address needs --executor ray")
    if not config.architectures and not config.all:
        raise ConfigError("name at least one architecture (or a pattern), or pass --all")
    check_lr_search(config)


def check_lr_search(config: RunConfig) -> None:
    """``--lr-search`` excludes ``--lr``; ``--lr-grid`` needs it."""
    if config.lr_search and config.lr is not None:
        raise ConfigError(
            "--lr and --lr-search exclude each other: --lr fixes one learning rate for every "
            "architecture, --lr-search picks one per architecture from --lr-grid"
        )
    if config.lr_grid is not None and not config.lr_search:
        raise ConfigError("--lr-grid needs --lr-search")


# ---------------------------------------------------------------------------- bench perf's options


@dataclass(frozen=True)
class PerfConfig:
    """One ``bench perf`` measurement: each field is a flag with its own checks, declared
    with :func:`bench.config.option` as ``bench run``'s are."""

    architecture: str = option(
        "unet_thesis",
        "default unet_thesis",
        positional=True,
        metavar="ARCH",
    )  # a registered name: bench.perf checks it (the registry sits above this module)
    width: float = option(0.25, "channel width multiplier (default 0.25)", check=(check_positive,))
    encoder: str = option(
        DEFAULT_ENCODER,
        "encoder of the smp_* baselines, as bench run (default resnet34)",
        check=(check_encoder,),
    )
    batch_size: int = option(20, "default 20", check=(check_positive,))
    epochs: int = option(2, "epochs per measurement (default 2)", check=(check_positive,))
    repeats: int = option(3, "measurements per loop; medians (default 3)", check=(check_positive,))
    # synthetic: 224 images, whose thesis split is wbc1's 418 train / 30 test
    dataset: str = option("synthetic", "default synthetic", choices=("synthetic", "wbc1"))
    data_dir: str | None = option(None, "where wbc1 lives")
    synthetic_count: int = option(224, "synthetic images (default 224)", check=(check_positive,))
    device: str = option("auto", "default auto", choices=DEVICES)
    amp: str = option("auto", "as bench run (default auto)", choices=AMP_MODES)
    channels_last: str = option("auto", "as bench run (default auto)", choices=SWITCHES)
    compile: bool = option(False, "torch.compile")
    host_memory: str = option(
        "retain",
        "as bench run, for the harness and bare loops (default retain); the DataLoader "
        "peer runs in its own process with the allocator's defaults",
        choices=HOST_MEMORY_MODES,
    )
    augmented: bool = option(  # also measure the clean protocol against DataLoader+albumentations
        True,
        "skip the augmented comparison (clean protocol vs DataLoader+albumentations)",
        flag="--no-augmented",
    )
    seed: int = option(0, "default 0", check=(check_seed,))
    # The device's own limit, measured in the same run (bench.peak.measure_matmul_peak).
    peak_size: int | None = option(
        None,
        "side of the square matmul timed for the device's peak (default 2048 on a CPU, "
        "8192 on a GPU)",
        check=(check_positive,),
    )
    # Free text kept in the record, e.g. what else ran on the machine while it measured.
    note: str | None = option(None, "a note stored in the result (--json), e.g. the load")

    def run_config(self, loss: str) -> RunConfig:
        """The ``bench run`` options of the harness's cells, so that ``bench.perf.measure_harness``
        trains as ``bench run`` does (``bench.runner.CellSettings.from_config``)."""
        return RunConfig(
            architectures=(self.architecture,),
            dataset=self.dataset,
            data_dir=self.data_dir,
            synthetic_count=self.synthetic_count,
            seeds=(self.seed,),
            epochs=self.epochs,
            batch_size=self.batch_size,
            loss=loss,
            width=self.width,
            encoder=self.encoder,
            device=self.device,
            amp=self.amp,
            channels_last=self.channels_last,
            compile=self.compile,
            host_memory=self.host_memory,
            progress="off",
        )


def validate_perf(config: PerfConfig) -> None:
    """Reject impossible values before any measurement, naming the option, as
    :func:`validate` does for ``bench run`` (perf has no constraint across fields)."""
    check_fields(config)


def build_perf_config(cli_values: dict[str, Any]) -> PerfConfig:
    """The flags the user gave (``None`` = not given) over PerfConfig's defaults, validated."""
    config = PerfConfig(**{k: v for k, v in cli_values.items() if v is not None})
    validate_perf(config)
    return config
