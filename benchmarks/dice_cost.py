"""What recording the per-epoch test Dice (history.csv's ``dice``) costs.

``bench.runner.evaluate_scores`` evaluates the test images after every epoch. With
``num_classes`` it also takes each batch's argmax and one bincount of per-image confusion
counts on the device, and the host turns them into the foreground Dice at the end. This
script times the per-epoch evaluation with and without that part, on wbc1-sized test data
(60 images of 120x120 under the clean protocol, batch 20) and ``unet_thesis`` at width 0.25,
with bench's default CPU speed options, alternating the two in one process so that their
ratio is comparable on a loaded machine. The end-to-end difference is small against the
noise of a shared machine, so the part the Dice adds (argmax, per-image confusion counts,
the host's Dice) is also timed alone, on the logits of the same test images. One training
epoch of 240 images (the clean protocol's training fold) is timed in the same process too,
to put the cost against a whole epoch. Prints a JSON record (and writes it with ``--json``)::

    .venv/bin/python benchmarks/dice_cost.py --repeats 15
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

TEST_IMAGES = 60
TRAIN_IMAGES = 240
SIZE = 120
BATCH = 20
WIDTH = 0.25
NUM_CLASSES = 3


def measure(repeats: int, seed: int = 0) -> dict[str, Any]:
    import torch

    import architectures
    from bench import host_memory
    from bench.runner import (
        compute_loss,
        confusion_per_image,
        evaluate_scores,
        foreground_dice,
        model_input,
        place_model,
        resolve_speed,
    )

    load_at_start = os.getloadavg()
    host_memory.apply("retain")  # as bench run does by default
    device = torch.device("cpu")
    speed = resolve_speed("auto", "auto", False, device)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = architectures.build("unet_thesis", num_classes=NUM_CLASSES, width=WIDTH)
    forward = place_model(model, device, speed)
    images = torch.randint(
        0, 256, (TEST_IMAGES, 3, SIZE, SIZE), dtype=torch.uint8, generator=generator
    )
    labels = torch.randint(0, NUM_CLASSES, (TEST_IMAGES, SIZE, SIZE), generator=generator)
    train_x = torch.rand(TRAIN_IMAGES, 3, SIZE, SIZE, generator=generator)
    train_y = torch.randint(0, NUM_CLASSES, (TRAIN_IMAGES, SIZE, SIZE), generator=generator)
    if speed.channels_last:
        train_x = train_x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def evaluate(with_dice: bool) -> float:
        started = time.perf_counter()
        result = evaluate_scores(
            forward,
            images,
            labels,
            "cross_entropy",
            BATCH,
            device,
            speed,
            keep_predictions=False,  # as every epoch but the last
            num_classes=NUM_CLASSES if with_dice else None,
        )
        seconds = time.perf_counter() - started
        assert (result.dice is not None) == with_dice
        return seconds

    def train_epoch() -> float:
        model.train()
        started = time.perf_counter()
        for start in range(0, TRAIN_IMAGES, BATCH):
            loss = compute_loss(
                "cross_entropy",
                forward(train_x[start : start + BATCH]),
                train_y[start : start + BATCH],
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return time.perf_counter() - started

    model.eval()
    with torch.no_grad():
        batch_logits = [
            forward(model_input(images[start : start + BATCH], speed.channels_last))
            for start in range(0, TEST_IMAGES, BATCH)
        ]

    def dice_part() -> float:
        """Only what num_classes adds to evaluate_scores, on the logits it would see."""
        started = time.perf_counter()
        confusions = []
        for start, logits in zip(range(0, TEST_IMAGES, BATCH), batch_logits, strict=True):
            predicted = logits.argmax(dim=1)
            y = labels[start : start + BATCH]
            confusions.append(confusion_per_image(predicted, y, NUM_CLASSES))
        foreground_dice(torch.cat(confusions).cpu().numpy())
        return time.perf_counter() - started

    train_epoch()  # warm-up: allocator, oneDNN kernels
    dice_part()
    evaluate(True)
    evaluate(False)
    with_dice, without_dice, alone, epochs = [], [], [], []
    for repeat in range(repeats):
        # alternate which goes first, so neither always follows the other; everything is
        # interleaved, so that a change of the machine's load touches each alike
        order = (True, False) if repeat % 2 == 0 else (False, True)
        for flag in order:
            (with_dice if flag else without_dice).append(evaluate(flag))
        alone += [dice_part() for _ in range(5)]
        if repeat in (0, repeats // 2, repeats - 1):
            epochs.append(train_epoch())
    dice_median = statistics.median(with_dice)
    plain_median = statistics.median(without_dice)
    added = dice_median - plain_median
    epoch_median = statistics.median(epochs)
    alone_median = statistics.median(alone)
    return {
        "what": "evaluate_scores on the test images per epoch, with and without the Dice",
        "command": f"python benchmarks/dice_cost.py --repeats {repeats}",
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "load_average_at_start": load_at_start,
            "load_average_at_end": os.getloadavg(),
        },
        "torch": torch.__version__,
        "setting": {
            "architecture": "unet_thesis",
            "width": WIDTH,
            "test_images": TEST_IMAGES,
            "train_images": TRAIN_IMAGES,
            "size": SIZE,
            "batch": BATCH,
            "channels_last": speed.channels_last,
        },
        "seconds_with_dice": with_dice,
        "seconds_without_dice": without_dice,
        "seconds_train_epoch": epochs,
        "median_with_dice": dice_median,
        "median_without_dice": plain_median,
        "added_seconds_per_epoch": added,
        "ratio_with_to_without": dice_median / plain_median,
        "seconds_dice_part_alone": alone,
        "median_dice_part_alone": alone_median,
        "dice_part_share_of_evaluation": alone_median / plain_median,
        "dice_part_share_of_epoch": alone_median / (epoch_median + plain_median),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--json", type=Path, help="also write the record here")
    args = parser.parse_args()
    record = measure(args.repeats)
    text = json.dumps(record, indent=2) + "\n"
    if args.json:
        args.json.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
