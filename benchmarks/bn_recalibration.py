"""Do stale batch-norm statistics hold a trained cell back? A diagnostic, not a recipe.

    .venv/bin/python benchmarks/bn_recalibration.py CHECKPOINT [--data-dir DIR] [--json FILE]

The thesis models use Keras' batch-norm momentum (0.99, PyTorch's 0.01): the running means
and variances that eval mode uses average the last ~100 steps, while the weights they
describe keep moving. Under the thesis recipe (21 steps an epoch, 30 epochs) the test loss
of every thesis-protocol run was still falling at the end while the train loss had long
flattened, which is what statistics that lag the weights would do.

For one trained cell (its final checkpoint, from a run directory), this scores the test
images three ways, with the same weights:

* **as trained**: eval mode, the running statistics the run ended with (what the run
  reported; reproduced here as a check);
* **recalibrated**: the running statistics recomputed as a plain average over one pass of
  the cell's own training images (no augmentation, no gradient, dropout off), then eval
  mode, as "precise BN" does;
* **batch statistics**: train-mode batch norm over the whole test set at once (each image
  normalised with statistics of the test batch; shown only as a bound, since a model used
  one image at a time could not do this).

A large gain from recalibration means the run's numbers understate what its weights can
do, for a reason that lies in the recipe (the momentum), not in the architecture. Reads the
run directory and the data; writes only ``--json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench import environment, metrics
from bench.data import load_dataset
from bench.predict import load_checkpoint, locate_cell, predict_classes, rebuild_model
from bench.protocols import get_protocol
from bench.runner import model_input, place_model, resolve_speed

FOREGROUND = ("cytoplasm", "nucleus")


def foreground_dice(
    predictions: list[np.ndarray],
    labels: np.ndarray,
    valid: np.ndarray,
    classes: Mapping[str, Sequence[int]] = metrics.WBC_METRIC_CLASSES,
    names: Sequence[str] = FOREGROUND,
) -> dict[str, float]:
    """Mean Dice over the images of each class of ``names`` (cytoplasm and nucleus), each
    image scored by :func:`bench.metrics.image_metrics` as ``per_image.csv`` is."""
    rows = [
        metrics.image_metrics(prediction, label, mask, classes)
        for prediction, label, mask in zip(predictions, labels, valid, strict=True)
    ]
    return {name: float(np.mean([r[name]["dice"] for r in rows])) for name in names}


def batch_norms(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def recalibrate(model: torch.nn.Module, forward: Any, images: np.ndarray, speed: Any) -> int:
    """Recompute every batch norm's running statistics as the average over ``images``."""
    norms = batch_norms(model)
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the batches below
    model.eval()
    for norm in norms:
        norm.train()
    with torch.no_grad(), speed.autocast(torch.device("cpu")):
        for start in range(0, len(images), 20):
            batch = torch.from_numpy(images[start : start + 20]).permute(0, 3, 1, 2).contiguous()
            forward(model_input(batch, speed.channels_last))
    model.eval()
    return len(norms)


def predict_with_batch_statistics(
    model: torch.nn.Module, forward: Any, images: np.ndarray, speed: Any
) -> list[np.ndarray]:
    """Label maps with every batch norm in train mode over all ``images`` as one batch."""
    model.eval()
    for norm in batch_norms(model):
        norm.train()
    x = model_input(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), speed.channels_last)
    with torch.no_grad(), speed.autocast(torch.device("cpu")):
        return list(forward(x).argmax(dim=1).numpy())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a final checkpoint in a run directory")
    parser.add_argument("--data-dir", default=None, help="where wbc1 is (as bench run)")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)

    cell = locate_cell(args.checkpoint)
    config = cell.meta["config"]
    dataset = load_dataset(config["dataset"], args.data_dir or config.get("data_dir"))
    split = get_protocol(cell.meta["protocol"]["name"]).split(
        dataset,
        fold=cell.fold if cell.fold is not None else 0,
        folds=config["num_folds"],
        seed=config["split_seed"],
    )
    speed = resolve_speed(
        config.get("amp", "off"), config.get("channels_last", "off"), False, torch.device("cpu")
    )
    test = split.test
    results: dict[str, Any] = {}
    # As the run's evaluation predicted (its speed options, test-time flips if any).
    model = rebuild_model(cell, load_checkpoint(cell))
    results["as_trained"] = foreground_dice(
        predict_classes(cell, model, list(test.images), "cpu"), test.labels, test.valid
    )
    norms = recalibrate(
        model, place_model(model, torch.device("cpu"), speed), split.train.images, speed
    )
    results["recalibrated"] = foreground_dice(
        predict_classes(cell, model, list(test.images), "cpu"), test.labels, test.valid
    )
    model = rebuild_model(cell, load_checkpoint(cell))
    forward = place_model(model, torch.device("cpu"), speed)
    results["batch_statistics"] = foreground_dice(
        predict_with_batch_statistics(model, forward, test.images, speed), test.labels, test.valid
    )
    record = {
        "checkpoint": str(args.checkpoint),
        "architecture": cell.architecture,
        "seed": cell.seed,
        "fold": cell.fold,
        "protocol": cell.meta["protocol"]["name"],
        "batch_norm_layers": norms,
        "train_images": len(split.train),
        "test_images": len(test),
        "dice": results,
        "environment": environment.describe(torch.device("cpu")),
    }
    for way, scores in results.items():
        print(f"{way:17s} cytoplasm {scores['cytoplasm']:.4f}  nucleus {scores['nucleus']:.4f}")
    if args.json:
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
