"""Which parts of the modern recipe help? Each part added in turn, scored on validation images.

    .venv/bin/python benchmarks/recipe_ablation.py --data-dir ../shared/datasets/segmentation_WBC \
        --json reports/recipe/ablation.json --markdown reports/recipe/ablation.md

The data: ``wbc1``, clean protocol, fold 0 of 5 (split seed 0). Only its *training* images
are used: :func:`bench.protocols.carve_validation` holds out 20 % of them by source image (the
split seed's draw, the one early stopping and ``--lr-search`` use); every variant trains on
the rest and is scored on those held-out images. The fold's test images are never loaded
into a model, so choosing the recipe from this record does not touch the test set.

The variants add one part each to the one before (:data:`STEPS`), from the thesis recipe to
the modern one, at the same epoch budget; test-time flips are scored on the last variant's
weights. Per variant the record keeps the validation foreground Dice per image (mean Dice of
cytoplasm and nucleus), the per-epoch validation Dice (from which early stopping's choice of
epoch can be read), and the training time. The report gives each step's change of the
per-image Dice with a paired 95 % t interval over the validation images, and says from those
intervals whether the step helped, hurt, or changed nothing measurable.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import architectures
from bench import recipes, runner
from bench.data import load_dataset
from bench.environment import cpu_model, git_commit
from bench.protocols import ProtocolSplit, carve_validation, get_protocol

#: (step name, what it changes, the recipe after it). Cumulative: each adds to the last.
STEPS: list[tuple[str, str, dict[str, Any]]] = [
    ("thesis", "Adam 1e-4, cross-entropy, the clean protocol's augmentation", {}),
    ("lr 1e-3", "Adam's own default rate instead of the thesis's 1e-4", {"lr": 1e-3}),
    (
        "AdamW + warm-up + cosine",
        "decoupled weight decay 0.01, 5 % linear warm-up, cosine decay to 0",
        {"optimizer": "adamw", "weight_decay": 0.01, "warmup_fraction": 0.05, "schedule": "cosine"},
    ),
    ("+ Dice loss", "cross-entropy + soft Dice of the foreground", {"loss": "dice_ce"}),
    ("+ strong augmentation", "rotation, scale, wider colour jitter", {"augmentation": "strong"}),
]
TTA_STEP = ("+ test-time flips", "probabilities averaged over 4 flips (same weights)")
NOISE_STEP = ("seed noise", "the last training step again with the next seed")


def validation_split(data_dir: str) -> ProtocolSplit:
    """Fold 0's training images as (fit, validation): the only images this script uses."""
    dataset = load_dataset("wbc1", data_dir)
    split = get_protocol("clean").split(dataset, fold=0, folds=5, seed=0)
    fit, validation = carve_validation(split.train, seed=0)
    return dataclasses.replace(split, train=fit, test=validation)


def per_image_dice(predictions: np.ndarray, split: ProtocolSplit, classes: int) -> list[float]:
    """Per validation image: the mean Dice of classes 1..K-1 (the report's endpoint)."""
    return [
        runner.validation_dice(predictions[i : i + 1], _one(split.test, i), classes)
        for i in range(len(split.test))
    ]


def _one(arrays, i):
    return dataclasses.replace(
        arrays,
        images=arrays.images[i : i + 1],
        labels=arrays.labels[i : i + 1],
        image_ids=arrays.image_ids[i : i + 1],
        sizes=arrays.sizes[i : i + 1],
    )


def ladder_name(architecture: str, seed: int) -> str:
    """The record's key of one ladder of steps: an architecture trained from one seed."""
    return f"{architecture} (seed {seed})"


def _with_seed(args: argparse.Namespace) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), "seed": args.seed + 1})


def train_variant(
    architecture: str, recipe: recipes.Recipe, split: ProtocolSplit, args: argparse.Namespace
) -> tuple[dict[str, Any], runner.CellResult]:
    settings = runner.CellSettings(
        epochs=args.epochs,
        batch_size=20,
        lr=recipe.lr or 1e-4,
        loss=recipe.loss or "cross_entropy",
        width=args.width,
        options=architectures.architecture_options(architecture, args.encoder),
        deterministic=False,
        progress=False,
        num_classes=3,
        recipe=dataclasses.replace(recipe, tta=False),
        threads=args.threads,
    )
    started = time.perf_counter()
    result = runner.train_cell(architecture, args.seed, 0, split, settings, torch.device("cpu"))
    if result.status != "ok":
        raise SystemExit(f"{architecture} {recipe}: {result.error}")
    assert result.predictions is not None
    curve = [r["dice"] for r in result.history if r["split"] == "test"]
    entry = {
        "recipe": recipe.to_dict(),
        "validation_dice": per_image_dice(result.predictions, split, 3),
        "validation_dice_per_epoch": curve,
        "train_seconds": result.train_seconds,
        "wall_seconds": time.perf_counter() - started,
        "images_per_second": result.images_per_second,
    }
    return entry, result


def flip_averaged_dice(
    architecture: str, result: runner.CellResult, split: ProtocolSplit, args: argparse.Namespace
) -> list[float]:
    # The trained weights in a fresh model of the same build (width, encoder).
    model = architectures.build(
        architecture,
        num_classes=3,
        in_channels=3,
        width=args.width,
        **architectures.architecture_options(architecture, args.encoder),
    )
    assert result.model_state is not None
    model.load_state_dict(result.model_state)
    data = runner._DeviceSplit.of(split.test, torch.device("cpu"))
    speed = runner.resolve_speed("auto", "auto", False, torch.device("cpu"))
    forward = runner.place_model(model, torch.device("cpu"), speed)
    evaluation = runner.evaluate_scores(
        forward, data.images, data.labels, "dice_ce", 20, torch.device("cpu"), speed, tta=True
    )
    assert evaluation.predictions is not None
    return per_image_dice(evaluation.predictions, split, 3)


def paired_interval(after: list[float], before: list[float]) -> tuple[float, float, float]:
    """Mean paired difference and its 95 % t interval over images."""
    from scipy import stats

    differences = np.asarray(after) - np.asarray(before)
    mean = float(differences.mean())
    half = float(stats.t.ppf(0.975, len(differences) - 1) * stats.sem(differences))
    return mean, mean - half, mean + half


def verdict(change: float, low: float, high: float, noise: float | None) -> str:
    """From a step's paired interval, and the mean change a new seed alone made (``noise``):
    a change no larger than the seed's is not told apart from training noise."""
    if noise is not None and abs(change) <= abs(noise):
        return "within seed noise"
    if low > 0:
        return "helps"
    if high < 0:
        return "hurts"
    return "no measurable change"


def render(record: dict[str, Any]) -> str:
    lines = [
        "# Which parts of the modern recipe help (validation images only)",
        "",
        f"Machine: {record['machine']}. Each ladder was trained by the command, commit and "
        "at the times below; the machine's 2 cores were shared with other work, so read "
        "times as rough:",
        "",
        *(
            f"- {name}: `{run['command']}` at commit `{run['git_commit']}`, "
            f"{run['started_utc']} to {run['finished_utc']} (UTC), load average "
            f"{run['load_average'][0]:.1f} at the start and {run['load_average'][1]:.1f} at the end"
            for name, run in record["invocations"].items()
        ),
        "",
        f"Data: wbc1, clean protocol fold 0; {record['fit_images']} training images fitted, "
        f"{record['validation_images']} held out by source image as validation (the test "
        f"images are never used). Width {record['width']}, batch 20, {record['epochs']} epochs, "
        "the training seed in each ladder's name. Endpoint: per validation image the mean "
        "Dice of cytoplasm and nucleus. Each step adds one part to the step above it; Δ is "
        "the mean paired change over the validation images with its 95 % t interval.",
        "",
    ]
    lines += summary_across_ladders(record)
    for architecture, steps in record["architectures"].items():
        by_name = {step["step"]: step for step in steps}
        last_trained = by_name[STEPS[-1][0]]["validation_dice"]
        noise = None
        if NOISE_STEP[0] in by_name:
            noise, *_ = paired_interval(by_name[NOISE_STEP[0]]["validation_dice"], last_trained)
        lines += [
            f"## {architecture}",
            "",
            "| step | what it adds | validation Dice (mean ± SEM) | Δ vs step above [95 % CI] "
            "| verdict | best epoch (Dice) | train s |",
            "|---|---|---:|---:|---|---:|---:|",
        ]
        previous = None
        for step in steps:
            scores = step["validation_dice"]
            mean = statistics.mean(scores)
            sem = statistics.stdev(scores) / math.sqrt(len(scores))
            if step["step"] == NOISE_STEP[0]:
                d, low, high = paired_interval(scores, last_trained)
                change, judged = f"{d:+.4f} [{low:+.4f}, {high:+.4f}]", "(the reference)"
            elif previous is None:
                change, judged = "", ""
            else:
                d, low, high = paired_interval(scores, previous)
                change = f"{d:+.4f} [{low:+.4f}, {high:+.4f}]"
                judged = verdict(d, low, high, noise)
            curve = step.get("validation_dice_per_epoch") or []
            if curve:
                best = max(curve)
                best_text = f"{curve.index(best) + 1} of {len(curve)} ({best:.4f})"
            else:
                best_text = "(same weights)"
            seconds = f"{step['train_seconds']:.0f}" if step.get("train_seconds") else ""
            lines.append(
                f"| {step['step']} | {step['what']} | {mean:.4f} ± {sem:.4f} | {change} "
                f"| {judged} | {best_text} | {seconds} |"
            )
            if step["step"] != NOISE_STEP[0]:
                previous = scores
        lines += [
            "",
            "The seed-noise row trains the last training step again with the next seed and "
            "compares it with that step over the same images: a step whose mean change is no "
            'larger than that one\'s is marked "within seed noise". One seed per step, so this '
            "screens the parts; it does not rank them.",
            "",
        ]
    return "\n".join(lines) + "\n"


def summary_across_ladders(record: dict[str, Any]) -> list[str]:
    """Each step's mean change in every ladder, beside that ladder's seed noise, and whether
    the step's verdict is the same in all of them."""
    ladders = record["architectures"]
    if not ladders:
        return []
    names = list(ladders)
    lines = [
        "## Summary: each step's mean change of the validation Dice, per ladder",
        "",
        "| step | " + " | ".join(names) + " | in every ladder |",
        "|---|" + "---:|" * len(names) + "---|",
    ]
    order = [name for name, _, _ in STEPS[1:]] + [TTA_STEP[0]]
    for step_name in order:
        cells, verdicts = [], []
        for name in names:
            by_name = {step["step"]: step for step in ladders[name]}
            index = [step["step"] for step in ladders[name]].index(step_name)
            before = ladders[name][index - 1]["validation_dice"]
            d, low, high = paired_interval(by_name[step_name]["validation_dice"], before)
            noise = None
            if NOISE_STEP[0] in by_name:
                noise, *_ = paired_interval(
                    by_name[NOISE_STEP[0]]["validation_dice"],
                    by_name[STEPS[-1][0]]["validation_dice"],
                )
            verdicts.append(verdict(d, low, high, noise))
            cells.append(f"{d:+.4f} ({verdicts[-1]})")
        agreed = verdicts[0] if len(set(verdicts)) == 1 else "differs between ladders"
        lines.append(f"| {step_name} | " + " | ".join(cells) + f" | {agreed} |")
    noise_cells = []
    for name in names:
        by_name = {step["step"]: step for step in ladders[name]}
        if NOISE_STEP[0] in by_name:
            d, *_ = paired_interval(
                by_name[NOISE_STEP[0]]["validation_dice"], by_name[STEPS[-1][0]]["validation_dice"]
            )
            noise_cells.append(f"{d:+.4f}")
        else:
            noise_cells.append("")
    lines += ["| seed noise | " + " | ".join(noise_cells) + " | |", ""]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--architectures", nargs="+", default=["unet_thesis"])
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--encoder", default="tu-mobilenetv3_small_100")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", required=True, help="the record (re-running adds to it)")
    parser.add_argument("--markdown", required=True)
    parser.add_argument("--render-only", action="store_true")
    args = parser.parse_args()
    path = Path(args.json)
    record = json.loads(path.read_text()) if path.exists() else {}
    if not args.render_only:
        split = validation_split(args.data_dir)
        record.update(
            machine=f"{cpu_model()}, {os.cpu_count()} cores, no GPU",
            fit_images=len(split.train),
            validation_images=len(split.test),
            width=args.width,
            epochs=args.epochs,
        )
        invocation = {
            "command": "python " + " ".join(sys.argv),
            "git_commit": git_commit(),
            "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "load_average": [os.getloadavg()[0], 0.0],
        }
        record.setdefault("architectures", {})
        for architecture in args.architectures:
            steps, recipe = [], recipes.THESIS
            for name, what, change in STEPS:
                recipe = dataclasses.replace(recipe, name=name, **change)
                entry, result = train_variant(architecture, recipe, split, args)
                steps.append({"step": name, "what": what, **entry})
                print(
                    f"{architecture} {name}: {statistics.mean(entry['validation_dice']):.4f}",
                    file=sys.stderr,
                    flush=True,
                )
            steps.append(
                {
                    "step": TTA_STEP[0],
                    "what": TTA_STEP[1],
                    "validation_dice": flip_averaged_dice(architecture, result, split, args),
                }
            )
            again, _ = train_variant(architecture, recipe, split, _with_seed(args))
            steps.append({"step": NOISE_STEP[0], "what": NOISE_STEP[1], **again})
            record["architectures"][ladder_name(architecture, args.seed)] = steps
            invocation["finished_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            invocation["load_average"][1] = os.getloadavg()[0]
            record.setdefault("invocations", {})[ladder_name(architecture, args.seed)] = dict(
                invocation
            )
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(record, indent=1) + "\n")  # after each architecture
    Path(args.markdown).write_text(render(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
