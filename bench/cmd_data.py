"""``bench data``: fetch a dataset (verified download) and describe one before training on it.

    bench data fetch NAME [--data-dir DIR] [--url URL] [--timeout S] [--quiet]
    bench data info  NAME [--data-dir DIR] [--json] [--count N] [--size N] [--seed N]
                          [--palette GREY:CLASS,...]

``NAME`` is ``wbc1``, ``synthetic`` or ``folder:PATH`` (``fetch`` only knows downloadable
names). ``--count``/``--size``/``--seed`` apply to ``synthetic``; ``--palette`` to
``wbc1`` and ``folder:`` datasets.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from bench.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench data`` with its ``fetch`` and ``info`` actions."""
    from bench.data import DATA_DIR_ENV, available_datasets

    names = ", ".join(available_datasets())
    data = subparsers.add_parser(
        "data",
        help="fetch or describe a dataset",
        description=f"Fetch or describe a dataset. Datasets: {names}.",
    )
    actions = data.add_subparsers(dest="data_command", metavar="ACTION")
    data.set_defaults(func=lambda args: _help(data))

    data_dir_help = (
        f"folder holding the datasets (default: ${DATA_DIR_ENV}, else the user cache folder)"
    )

    fetch = actions.add_parser(
        "fetch",
        help="download a dataset and verify its checksums",
        description="Download a dataset archive, extract it safely and verify every file "
        "against the checksum manifest. Does nothing when the data is already verified; "
        "never deletes or changes anything it did not create (something else already at "
        "the target is refused: move it away or pass another --data-dir).",
    )
    fetch.add_argument("name", metavar="NAME", help="dataset name, e.g. wbc1")
    fetch.add_argument("--data-dir", metavar="DIR", help=data_dir_help)
    fetch.add_argument(
        "--url",
        metavar="URL",
        help="download the archive from here instead (http(s)://, file:// or a local path)",
    )
    fetch.add_argument(
        "--timeout", type=float, default=60, metavar="S", help="network timeout in seconds"
    )
    fetch.add_argument("--quiet", action="store_true", help="no progress messages")
    fetch.set_defaults(func=_fetch)

    info = actions.add_parser(
        "info",
        help="image count, sizes, class fractions and protocol split sizes",
        description="Describe a dataset: image count, sizes, class pixel fractions and the "
        "split sizes each protocol makes.",
    )
    info.add_argument("name", metavar="NAME", help=f"one of: {names}")
    info.add_argument("--data-dir", metavar="DIR", help=data_dir_help)
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.add_argument("--count", type=int, metavar="N", help="synthetic: number of images (60)")
    info.add_argument("--size", type=int, metavar="N", help="synthetic: image side (120, >= 32)")
    info.add_argument("--seed", type=int, metavar="N", help="synthetic: generator seed (0)")
    info.add_argument(
        "--palette",
        metavar="GREY:CLASS,...",
        help="mask grey value to class index or name, e.g. 0:0,128:1,255:2 or "
        "0:background,255:nucleus (wbc1 and folder:)",
    )
    info.set_defaults(func=_info)


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _fetch(args: argparse.Namespace) -> int:
    from bench.fetch import fetch_dataset

    root = fetch_dataset(
        args.name, args.data_dir, url=args.url, timeout=args.timeout, progress=not args.quiet
    )
    print(root)
    return 0


def _info(args: argparse.Namespace) -> int:
    from bench.data import load_dataset, parse_class_names, parse_palette
    from bench.protocols import dataset_info

    synthetic_options = {"--count": args.count, "--size": args.size, "--seed": args.seed}
    if args.name != "synthetic":
        given = [option for option, value in synthetic_options.items() if value is not None]
        if given:
            raise ConfigError(f"{', '.join(given)} only apply to the synthetic dataset")
    kwargs: dict[str, Any] = {}
    if args.count is not None:
        kwargs["synthetic_count"] = args.count
    if args.size is not None:
        kwargs["synthetic_size"] = args.size
    if args.seed is not None:
        kwargs["seed"] = args.seed
    if args.palette is not None:
        kwargs["palette"] = parse_palette(args.palette)
        kwargs["class_names"] = parse_class_names(args.palette)
    dataset = load_dataset(args.name, args.data_dir, **kwargs)
    info = dataset_info(dataset)
    if args.json:
        json.dump(info, sys.stdout, indent=2)
        print()
    else:
        print(format_info(info))
    return 0


def format_info(info: dict[str, Any]) -> str:
    """A readable table of :func:`bench.protocols.dataset_info`."""
    lines = [f"dataset   {info['name']}", f"images    {info['count']}", "sizes"]
    for size, count in info["sizes"].items():
        lines.append(f"  {size:>9}  {count:>6}")
    lines.append("class pixel fractions")
    for name, fraction in info["class_fractions"].items():
        lines.append(f"  {name:<12} {fraction:7.2%}")
    lines.append("protocol splits")
    if not info["protocols"]:
        lines.append("  (no protocols available)")
    for protocol, splits in info["protocols"].items():
        if isinstance(splits, dict):
            text = ", ".join(f"{split} {size}" for split, size in splits.items())
        else:
            text = str(splits)
        lines.append(f"  {protocol:<14} {text}")
    if info["warnings"]:
        lines.append(f"warnings ({len(info['warnings'])})")
        lines.extend(f"  {warning}" for warning in info["warnings"])
    return "\n".join(lines)
