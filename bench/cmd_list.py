"""``bench list``: the registered architectures, with their size and cost, before choosing one.

    bench list [--json] [--plugin FILE ...] [--width W] [--encoder E] [PATTERN]

Columns: name, source (builtin, smp, plugin:...), trainable parameters and forward GFLOPs
of the model *as ``bench run`` would train it* at ``--width`` and (smp baselines only)
``--encoder`` (defaults: ``bench run``'s, width 1.0 and resnet34), what the width scales
(``ArchitectureSpec.width_note``: "ignored" where it scales nothing, "encoder at full size"
where only the decoder is scaled) and a one-line description. GFLOPs are for one 3x120x120
image, the size ``wbc1`` (padded to its largest image) and the default synthetic data train
at, as counted by
``torch.utils.flop_counter.FlopCounterMode`` (a multiply-add counts 2 flops; batch norm,
activations and pooling are not counted).

Each model is built on PyTorch's ``meta`` device (shapes only: no memory, no initialisation,
no arithmetic), which gives the same counts as a real build in a fraction of the time; a
model that cannot be built or run there (a plugin doing real arithmetic while it is built) is
built and run on the CPU instead. A broken architecture is listed with its error instead of
stopping the list. A ``--plugin`` file that cannot be loaded is reported on stderr, the rest
is still listed and the exit status is 2; so is a width ``bench run`` refuses (outside
(0, 4]) or an encoder smp does not know.

The counts are cached on disk (:mod:`bench.count_cache`, keyed by the code that builds and
counts each model and the versions of torch, smp and timm): a model is built only the first
time it is listed at a width and encoder. Once every row asked for and the registry itself
are cached, a plain ``bench list`` (no ``--plugin``) answers without importing torch. A
``--plugin`` file is still imported (its code may have side effects, and its shape check must
run) but its counts are cached too.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import json
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

SIZE = (120, 120)


def _run_defaults() -> dict[str, Any]:
    """``bench run``'s defaults, so that a plain ``bench list`` describes a plain ``bench run``."""
    from bench.config import RunConfig

    return {f.name: f.default for f in dataclasses.fields(RunConfig)}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench list``."""
    defaults = _run_defaults()
    parser = subparsers.add_parser(
        "list",
        help="list the architectures with their parameters and GFLOPs",
        description="List the registered architectures: source, trainable parameters and "
        "forward GFLOPs for one 3x120x120 image (torch FlopCounterMode, a multiply-add = 2 "
        "flops) of the model as `bench run` trains it at --width and --encoder, what the "
        "width scales, and a description.",
    )
    parser.add_argument(
        "pattern",
        nargs="?",
        default="*",
        metavar="PATTERN",
        help="only names matching this shell-style pattern, e.g. 'smp_*' (default: all)",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON list of objects")
    parser.add_argument(
        "--width",
        type=float,
        default=defaults["width"],
        help="channel width multiplier, as bench run's (default %(default)s); no stage of a "
        "built-in goes below 16 channels",
    )
    parser.add_argument(
        "--encoder",
        default=defaults["encoder"],
        help="encoder of the smp_* baselines, as bench run's (default %(default)s)",
    )
    parser.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="FILE",
        help="load architectures from this Python file first (repeatable)",
    )
    parser.set_defaults(func=run)


def describe(name: str, width: float = 1.0, encoder: str = "resnet34") -> dict[str, Any]:
    """One row: build at ``width`` (and ``encoder`` for smp), count parameters and flops.

    The counts come from the cache when this code, the architecture's and the packages' are
    those that made them; otherwise the model is built on the meta device first (see the
    module docstring), on the CPU if that fails, and the counts are cached. An error of the
    CPU build becomes the row's ``error`` field (errors are not cached).
    """
    from architectures import architecture_options, get_spec
    from bench import count_cache

    spec = _spec_fields(get_spec(name))
    options = architecture_options(name, encoder)
    key = _count_key(spec, width, options)
    cached = count_cache.read_counts(key) if key is not None else None
    if cached is not None:
        return _row(spec, width, options, *cached)
    import torch

    try:
        params, gflops = _measure(name, width, options, torch.device("meta"))
    except Exception:  # noqa: BLE001 - shapes-only builds are an optimisation: retry for real
        try:
            params, gflops = _measure(name, width, options, torch.device("cpu"))
        except Exception as error:  # noqa: BLE001 - one broken architecture must not stop the list
            row = _row(spec, width, options, None, None)
            row["error"] = f"{type(error).__name__}: {error}"
            return row
    if key is not None:
        count_cache.write_counts(key, params, gflops)
    return _row(spec, width, options, params, gflops)


#: The code that builds and counts a listed model: part of each cached count's key.
COUNTING_FILES = (__file__,)


def _count_key(spec: dict[str, Any], width: float, options: dict[str, Any]) -> str | None:
    from bench import count_cache

    return count_cache.count_key(spec, spec["factory_file"], width, options, SIZE, COUNTING_FILES)


def _spec_fields(spec: Any) -> dict[str, Any]:
    """What the list shows of an ``ArchitectureSpec``, and the file defining its factory."""
    from bench import count_cache

    fields = {field: getattr(spec, field) for field in count_cache.SPEC_FIELDS}
    return {**fields, "factory_file": count_cache.source_file(spec.factory)}


def _row(
    spec: dict[str, Any],
    width: float,
    options: dict[str, Any],
    params: int | None,
    gflops: float | None,
) -> dict[str, Any]:
    return {
        "name": spec["name"],
        "source": spec["source"],
        "params": params,
        "gflops": round(gflops, 4) if gflops is not None else None,
        "width": width,
        "encoder": options.get("encoder"),
        "width_note": spec["width_note"],
        "description": spec["description"],
    }


def _cached_rows(args: argparse.Namespace) -> list[dict[str, Any]] | None:
    """The rows of a plain ``bench list`` from the cache alone, without importing torch:
    ``None`` unless the registry and the counts of every row asked for are cached."""
    from bench import count_cache

    specs = count_cache.read_registry()
    if specs is None:
        return None
    _check_width(args.width)
    rows = []
    for spec in sorted(specs, key=lambda spec: spec["name"]):
        if not fnmatch.fnmatchcase(spec["name"], args.pattern):
            continue
        # architectures.architecture_options(name, encoder), without importing torch. No
        # --encoder check either: a cached smp count was built with this encoder, which
        # smp therefore knows (its version is part of the key).
        options = (
            {"encoder": args.encoder, "encoder_weights": None} if spec["source"] == "smp" else {}
        )
        key = _count_key(spec, args.width, options)
        counts = count_cache.read_counts(key) if key is not None else None
        if counts is None:
            return None
        rows.append(_row(spec, args.width, options, *counts))
    return rows


def _record_registry() -> None:
    """Cache the registry as loaded now (built-ins and entry points), for :func:`_cached_rows`."""
    from architectures import registry
    from bench import count_cache

    specs = [_spec_fields(spec) for spec in registry.default.specs()]
    files = [spec["factory_file"] for spec in specs if spec["factory_file"] is not None]
    count_cache.write_registry(specs, files)


def _measure(
    name: str, width: float, options: dict[str, Any], device: torch.device
) -> tuple[int, float]:
    """Build ``name`` on ``device``; its trainable parameters and forward GFLOPs at ``SIZE``."""
    from architectures import build, check_output_shape, count_parameters, forward_gflops

    with device:
        model = build(name, width=width, **options)
    params = count_parameters(model)
    outputs: list[Any] = []
    hook = model.register_forward_hook(lambda _module, _inputs, out: outputs.append(out))
    try:
        gflops = forward_gflops(model, SIZE)
    finally:
        hook.remove()
    # The flop-counting forward already gave the output: check its shape without rerunning.
    check_output_shape(name, _replay(outputs[-1]) if outputs else model, size=SIZE)
    return params, gflops


def _replay(output: Any) -> torch.nn.Module:
    """A module returning a recorded output, so that ``check_output_shape`` inspects it
    without a forward. Defined on first use: torch is not imported until a model is built,
    so that ``bench --help`` and every other command's parser stay fast."""
    import torch

    class _Replay(torch.nn.Module):
        def __init__(self, output: Any) -> None:
            super().__init__()
            self.output = output

        def forward(self, _x: torch.Tensor) -> Any:
            return self.output

    return _Replay(output)


def _caption(width: float, encoder: str | None) -> str:
    """What the numbers are of: the width, the smp encoder (when an smp row is listed)."""
    smp = f", smp encoder {encoder}" if encoder is not None else ""
    return (
        f"width {width:g}{smp}: parameters and GFLOPs (one 3x{SIZE[0]}x{SIZE[1]} image) "
        "of the models as bench run trains them"
    )


def _format_table(rows: list[dict[str, Any]]) -> str:
    header = ("NAME", "SOURCE", "PARAMS", "GFLOPS", "WIDTH SCALES", "DESCRIPTION")
    lines = []
    for row in rows:
        params = f"{row['params']:,}" if row["params"] is not None else "-"
        gflops = f"{row['gflops']:.2f}" if row["gflops"] is not None else "-"
        note = row["width_note"] or "not stated"
        text = f"ERROR {row['error']}" if "error" in row else row["description"]
        lines.append((row["name"], row["source"], params, gflops, note, text))
    widths = [max(len(str(cells[i])) for cells in [header, *lines]) for i in range(5)]
    out = []
    for cells in [header, *lines]:
        out.append(
            f"{cells[0]:<{widths[0]}}  {cells[1]:<{widths[1]}}  {cells[2]:>{widths[2]}}  "
            f"{cells[3]:>{widths[3]}}  {cells[4]:<{widths[4]}}  {cells[5]}"
        )
    return "\n".join(out)


def _check_width(width: float) -> None:
    from bench.config import WIDTH_MAX
    from bench.errors import ConfigError

    if not 0 < width <= WIDTH_MAX:  # NaN fails too
        raise ConfigError(f"--width must be in (0, {WIDTH_MAX:g}] (got {width}), as for run")


def _check_arguments(args: argparse.Namespace, names: list[str]) -> None:
    """Bad input is refused before anything is built (exit status 2, naming the option)."""
    from architectures import architecture_options
    from bench.errors import ConfigError

    _check_width(args.width)
    if names and any(architecture_options(name, args.encoder) for name in names):
        from bench.config import encoder_problem

        problem = encoder_problem(args.encoder)
        if problem is not None:
            raise ConfigError(f"--encoder: {problem}")


def run(args: argparse.Namespace) -> int:
    """Load the ``--plugin`` files, then describe every matching architecture."""
    # The cached registry holds the built-ins and entry points as a fresh process loads
    # them: not what a process that already imported (and perhaps extended) it has.
    fresh_process = "architectures" not in sys.modules and not args.plugin
    rows = _cached_rows(args) if fresh_process else None
    status = 0
    if rows is None:
        rows, status = _measured_rows(args)
        if fresh_process:
            from architectures import plugin_errors

            if not plugin_errors():  # their warnings must be printed by every call
                _record_registry()
    if args.json:
        print(json.dumps(rows, indent=2))
    elif rows:
        encoder = args.encoder if any(row["encoder"] for row in rows) else None
        print(_caption(args.width, encoder))
        print(_format_table(rows))
    else:
        print(f"no architecture matches {args.pattern!r}", file=sys.stderr)
    return status


def _measured_rows(args: argparse.Namespace) -> tuple[list[dict[str, Any]], int]:
    """The rows from the registry (plugins loaded), each counted or read from the cache."""
    from architectures import available, load_plugin_file, plugin_errors
    from bench.errors import ArchitectureError

    _check_width(args.width)
    status = 0
    for path in args.plugin:
        try:
            load_plugin_file(path)
        except ArchitectureError as error:
            print(f"bench: error: {error}", file=sys.stderr)
            status = 2
    for message in plugin_errors().values():
        print(f"bench: warning: architecture {message}", file=sys.stderr)
    names = available(args.pattern)
    _check_arguments(args, names)
    return [describe(name, args.width, args.encoder) for name in names], status
