"""``bench list``: the registered architectures, with their size and cost, before choosing one.

    bench list [--json] [--plugin FILE ...] [PATTERN]

Columns: name, source (builtin, smp, plugin:...), trainable parameters at width 1.0, forward
GFLOPs for one 3x120x120 image as counted by ``torch.utils.flop_counter.FlopCounterMode``
(a multiply-add counts 2 flops; batch norm, activations and pooling are not counted), and a
one-line description. Each architecture is built at width 1.0 and run once on zeros, so a
broken one is listed with its error instead of stopping the list. A ``--plugin`` file that
cannot be loaded is reported on stderr, the rest is still listed and the exit status is 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import torch

SIZE = (120, 120)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench list``."""
    parser = subparsers.add_parser(
        "list",
        help="list the architectures with their parameters and GFLOPs",
        description="List the registered architectures: source, trainable parameters at "
        "width 1.0, forward GFLOPs for one 3x120x120 image (torch FlopCounterMode, a "
        "multiply-add = 2 flops) and a description.",
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
        "--plugin",
        action="append",
        default=[],
        metavar="FILE",
        help="load architectures from this Python file first (repeatable)",
    )
    parser.set_defaults(func=run)


def describe(name: str) -> dict[str, Any]:
    """One row: build at width 1.0, count parameters and flops; an error becomes a field."""
    from architectures import (
        build,
        check_output_shape,
        count_parameters,
        forward_gflops,
        get_spec,
    )

    spec = get_spec(name)
    row: dict[str, Any] = {
        "name": name,
        "source": spec.source,
        "params": None,
        "gflops": None,
        "description": spec.description,
    }
    try:
        model = build(name, width=1.0)
        row["params"] = count_parameters(model)
        outputs: list[Any] = []
        hook = model.register_forward_hook(lambda _module, _inputs, out: outputs.append(out))
        try:
            row["gflops"] = round(forward_gflops(model, SIZE), 4)
        finally:
            hook.remove()
        # The flop-counting forward already gave the output: check its shape without rerunning.
        check_output_shape(name, _Replay(outputs[-1]) if outputs else model, size=SIZE)
    except Exception as error:  # noqa: BLE001 - one broken architecture must not stop the list
        row["error"] = f"{type(error).__name__}: {error}"
    return row


class _Replay(torch.nn.Module):
    """Returns a recorded output, so that ``check_output_shape`` inspects it without a forward."""

    def __init__(self, output: Any) -> None:
        super().__init__()
        self.output = output

    def forward(self, _x: torch.Tensor) -> Any:
        return self.output


def _format_table(rows: list[dict[str, Any]]) -> str:
    header = ("NAME", "SOURCE", "PARAMS", "GFLOPS", "DESCRIPTION")
    lines = []
    for row in rows:
        params = f"{row['params']:,}" if row["params"] is not None else "-"
        gflops = f"{row['gflops']:.2f}" if row["gflops"] is not None else "-"
        text = f"ERROR {row['error']}" if "error" in row else row["description"]
        lines.append((row["name"], row["source"], params, gflops, text))
    widths = [max(len(str(cells[i])) for cells in [header, *lines]) for i in range(4)]
    out = []
    for cells in [header, *lines]:
        out.append(
            f"{cells[0]:<{widths[0]}}  {cells[1]:<{widths[1]}}  {cells[2]:>{widths[2]}}  "
            f"{cells[3]:>{widths[3]}}  {cells[4]}"
        )
    return "\n".join(out)


def run(args: argparse.Namespace) -> int:
    """Load the ``--plugin`` files, then describe every matching architecture."""
    from architectures import available, load_plugin_file, plugin_errors
    from bench.errors import ArchitectureError

    status = 0
    for path in args.plugin:
        try:
            load_plugin_file(path)
        except ArchitectureError as error:
            print(f"bench: error: {error}", file=sys.stderr)
            status = 2
    for message in plugin_errors().values():
        print(f"bench: warning: architecture {message}", file=sys.stderr)
    rows = [describe(name) for name in available(args.pattern)]
    if args.json:
        print(json.dumps(rows, indent=2))
    elif rows:
        print(_format_table(rows))
    else:
        print(f"no architecture matches {args.pattern!r}", file=sys.stderr)
    return status
