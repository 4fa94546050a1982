"""``bench predict CHECKPOINT IMAGE... --out DIR``: segment new images with a trained cell.

The model is rebuilt from the run directory the checkpoint belongs to and each image is
predicted the way the run's evaluation predicted its test images (see :mod:`bench.predict`).
Nothing heavy is imported here: torch loads only once the inputs have been checked.
"""

from __future__ import annotations

import argparse
import sys

from bench.config import DEVICES


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench predict``."""
    parser = subparsers.add_parser(
        "predict",
        help="segment new images with a trained cell (a run directory's checkpoint)",
        description=(
            "Segment images with the model of RUN_DIR/checkpoints/<arch>_seed<S>_fold<F>.pt, "
            "rebuilt from RUN_DIR/config.json (width, options, classes, plugins). Each image "
            "is padded to the run's input size, predicted as the run's evaluation did, and "
            "cropped back. Writes DIR/<stem>.png (label map in the dataset's grey palette), "
            "DIR/<stem>_overlay.png (the image with the class colours blended in) and "
            "DIR/bench-predict.json (what was written, from what). Images larger than the "
            "input size are refused (not tiled). DIR must be new, empty or an earlier --out "
            "of bench predict. Exit status 2 for bad input; nothing is written then."
        ),
    )
    parser.add_argument(
        "checkpoint", metavar="CHECKPOINT", help="RUN_DIR/checkpoints/<arch>_seed<S>_fold<F>.pt"
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="images to segment")
    parser.add_argument("--out", required=True, metavar="DIR", help="where to write the outputs")
    parser.add_argument(
        "--device",
        choices=DEVICES,
        default="auto",
        help="default auto: cuda, then mps, then cpu. The run's saved predictions are "
        "reproduced exactly on the kind of device that made them",
    )
    parser.set_defaults(func=predict_command)


def predict_command(args: argparse.Namespace) -> int:
    from bench.predict import predict

    written = predict(args.checkpoint, args.images, args.out, device=args.device)
    for prediction in written:
        print(prediction.mask)
    print(
        f"{len(written)} image(s) segmented; label maps and overlays in {args.out}",
        file=sys.stderr,
    )
    return 0
