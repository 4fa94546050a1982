"""Does a speed option move accuracy? The same seeds trained with and without each option.

    .venv/bin/python benchmarks/speed_options_accuracy.py \
        --data-dir ../shared/datasets/segmentation_WBC --json reports/performance/accuracy.json

For each variant (fp32 contiguous = PyTorch's defaults; channels-last = the CPU default;
channels-last + bf16 autocast; channels-last + torch.compile) it runs ``bench run
unet_thesis --protocol thesis`` with the same seeds into its own run directory (re-running
resumes), then compares per-image foreground Dice (mean of cytoplasm and nucleus Dice) of
each variant with fp32's for the same seed. The noise reference is the difference between
two seeds of fp32: an option "moves accuracy" if it changes Dice by more than a seed does.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.run_dir import RunDir
from bench.stats import image_scores

VARIANTS = {
    "fp32": ["--amp", "off", "--channels-last", "off"],
    "channels_last": ["--amp", "off", "--channels-last", "on"],
    "channels_last_bf16": ["--amp", "bf16", "--channels-last", "on"],
    "channels_last_compile": ["--amp", "off", "--channels-last", "on", "--compile"],
}


def foreground_dice(run_dir: Path) -> dict[int, dict[tuple[str, str], float]]:
    """seed -> (fold, image) -> the report's endpoint: mean of cytoplasm and nucleus Dice."""
    rows = RunDir(run_dir).tables().per_image
    seeds = sorted({row["seed"] for row in rows})
    return {
        seed: image_scores([row for row in rows if row["seed"] == seed])["unet_thesis"]
        for seed in seeds
    }


def images_per_second(run_dir: Path) -> dict[int, float]:
    cells = RunDir(run_dir).tables().cells
    return {row["seed"]: row["images_per_second"] for row in cells}


def mean_abs_difference(a: dict[Any, float], b: dict[Any, float]) -> float:
    return statistics.mean(abs(a[k] - b[k]) for k in a)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out-root", default="runs/speed_options_accuracy")
    parser.add_argument("--json", help="write the comparison here")
    args = parser.parse_args()
    bench = str(Path(sys.executable).with_name("bench"))
    commands, runs = {}, {}
    for variant in args.variants:
        out = Path(args.out_root) / variant
        command = [
            bench, "run", "unet_thesis", "--protocol", "thesis", "--dataset", "wbc1",
            "--data-dir", args.data_dir, "--width", str(args.width), "--epochs",
            str(args.epochs), "--seeds", *map(str, args.seeds), "--progress", "off",
            "--out", str(out), *VARIANTS[variant],
        ]  # fmt: skip
        print("+", " ".join(command), file=sys.stderr, flush=True)
        subprocess.run(command, check=True)
        commands[variant] = " ".join(command)
        runs[variant] = out
    reference = foreground_dice(runs["fp32"]) if "fp32" in runs else None
    rows = []
    for variant, out in runs.items():
        dice, speed = foreground_dice(out), images_per_second(out)
        for seed in args.seeds:
            row = {
                "variant": variant,
                "seed": seed,
                "foreground_dice": statistics.mean(dice[seed].values()),
                "images_per_second": speed[seed],
            }
            if reference is not None:
                change = mean_abs_difference(dice[seed], reference[seed])
                row["mean_abs_dice_change_vs_fp32"] = change
            rows.append(row)
    noise = None
    if reference is not None and len(args.seeds) >= 2:
        noise = mean_abs_difference(reference[args.seeds[0]], reference[args.seeds[1]])
    print("| variant | seed | foreground Dice | train img/s | mean abs Dice change vs fp32 |")
    print("|---|---|---|---|---|")
    for row in rows:
        change = row.get("mean_abs_dice_change_vs_fp32")
        print(
            f"| {row['variant']} | {row['seed']} | {row['foreground_dice']:.4f} | "
            f"{row['images_per_second']:.1f} | {'' if change is None else f'{change:.4f}'} |"
        )
    if noise is not None:
        print(f"\nseed-to-seed (fp32, seeds {args.seeds[0]} vs {args.seeds[1]}): {noise:.4f}")
    # Which code trained each variant, on what: from the run directories' config.json (a
    # resumed run lists its earlier invocations' environments first).
    trained_by = {}
    for variant, out in runs.items():
        meta = RunDir(out).read_meta()
        trained_by[variant] = [
            {key: environment.get(key) for key in ("git_commit", "cpu_model", "torch")}
            for environment in [*meta.get("earlier_environments", []), meta["environment"]]
        ]
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        record = {"rows": rows, "seed_noise": noise, "commands": commands, "trained_by": trained_by}
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
