"""Where a training step spends its time: torch.profiler over a few steps, top ops by self CPU.

    .venv/bin/python benchmarks/profile_training.py ARCH [--width 0.25] [--encoder resnet18] \
        [--steps 3] [--batch-size 20] [--json FILE]

The step is ``bench run``'s on a CPU with its default speed options (channels-last, fp32,
the thesis protocol's BCE loss, Adam): a batch of synthetic 120×120 images, after
``--warmup`` untimed steps. The record keeps the top ``--top`` ops by self CPU time (time
in the op itself, not in the ops it calls), each with its share of all self CPU time, the
machine, the load average at start and end and the command. It measures; the report is
rendered from its JSON by ``benchmarks/render_performance.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

import architectures
from bench import environment
from bench.data import load_dataset
from bench.runner import (
    compute_loss,
    model_input,
    place_model,
    resolve_speed,
    seed_everything,
    to_device_uint8,
)

#: Levers a profile may point to: name → (what it changes, build_step keyword arguments).
LEVERS: dict[str, tuple[str, dict[str, Any]]] = {
    "fused-adam": (
        "Adam's fused CPU kernel (`fused=True`) instead of its per-tensor loop",
        {"fused_adam": True},
    ),
    "contiguous": (
        "PyTorch's contiguous memory format instead of channels-last",
        {"channels_last": "off"},
    ),
}


def build_step(
    architecture: str,
    width: float,
    encoder: str,
    batch_size: int,
    *,
    channels_last: str = "auto",
    fused_adam: bool = False,
):
    """One training step of ``architecture`` on a fixed synthetic batch, as bench run trains
    (the keyword arguments: the levers' variants); returns the step, the speed options and
    the model."""
    seed_everything(0, deterministic=False)
    device = torch.device("cpu")
    speed = resolve_speed("auto", channels_last, False, device)
    model = architectures.build(
        architecture,
        num_classes=3,
        in_channels=3,
        width=width,
        **architectures.architecture_options(architecture, encoder),
    )
    forward = place_model(model.train(), device, speed)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=fused_adam or None)
    dataset = load_dataset("synthetic", synthetic_count=batch_size, seed=0)
    images = [sample.image for sample in dataset.samples[:batch_size]]
    labels = [sample.mask for sample in dataset.samples[:batch_size]]
    x = model_input(to_device_uint8(np.stack(images), device), speed.channels_last)
    y = torch.from_numpy(np.stack(labels)).long()

    def step() -> None:
        with speed.autocast(device):
            logits = forward(x)
        loss = compute_loss("bce", logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step, speed, model


def _largest_change(a: torch.nn.Module, b: torch.nn.Module) -> float:
    """The largest absolute difference between two models' parameters and buffers."""
    theirs = b.state_dict()
    return max(
        (value.float() - theirs[key].float()).abs().max().item()
        for key, value in a.state_dict().items()
        if value.is_floating_point()
    )


def compare_lever(
    lever: str, architecture: str, width: float, encoder: str, batch_size: int, steps: int
) -> dict[str, Any]:
    """Baseline, a second baseline (the control) and the variant, steps alternated in one
    process so that a slow spell of the machine hits all three, each after one untimed step.
    The control gives the noise of both measures: its step times against the baseline's,
    and its weights against the baseline's after the same steps (CPU training is not bit
    for bit reproducible unless run with --deterministic)."""
    description, variant_options = LEVERS[lever]
    runs = {
        "baseline": build_step(architecture, width, encoder, batch_size),
        "control": build_step(architecture, width, encoder, batch_size),
        "variant": build_step(architecture, width, encoder, batch_size, **variant_options),
    }
    for step, _, _ in runs.values():
        step()
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(steps):
        for name, (step, _, _) in runs.items():
            started = time.perf_counter()
            step()
            seconds[name].append(time.perf_counter() - started)
    baseline_model = runs["baseline"][2]
    return {
        "lever": lever,
        "description": description,
        **{name: {"seconds": seconds[name]} for name in runs},
        "largest_weight_change": {
            name: _largest_change(baseline_model, runs[name][2]) for name in ("control", "variant")
        },
    }


def profile_steps(
    architecture: str,
    width: float,
    encoder: str,
    batch_size: int,
    warmup: int,
    steps: int,
    top: int,
) -> dict[str, Any]:
    step, speed, _ = build_step(architecture, width, encoder, batch_size)
    for _ in range(warmup):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for _ in range(steps):
            step()
    events = profiler.key_averages()
    total = sum(event.self_cpu_time_total for event in events)
    ranked = sorted(events, key=lambda event: event.self_cpu_time_total, reverse=True)
    return {
        "self_cpu_seconds_total": total / 1e6,
        "top_ops": [
            {
                "op": event.key,
                "self_cpu_seconds": event.self_cpu_time_total / 1e6,
                "share": event.self_cpu_time_total / total if total else None,
                "calls": event.count,
            }
            for event in ranked[:top]
        ],
        "speed": {
            "amp": "off" if speed.amp_dtype is None else str(speed.amp_dtype),
            "channels_last": speed.channels_last,
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("architecture")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--encoder", default="resnet34")
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--json", type=Path, help="write the record here")
    parser.add_argument(
        "--lever", action="append", choices=sorted(LEVERS), help="also time this lever (repeatable)"
    )
    parser.add_argument("--lever-steps", type=int, default=6, help="alternated steps each")
    args = parser.parse_args(argv)
    load_at_start = os.getloadavg()
    result = profile_steps(
        args.architecture,
        args.width,
        args.encoder,
        args.batch_size,
        args.warmup,
        args.steps,
        args.top,
    )
    record = {
        "architecture": args.architecture,
        "width": args.width,
        "encoder": args.encoder,
        "batch_size": args.batch_size,
        "warmup": args.warmup,
        "steps": args.steps,
        **result,
    }
    record["levers"] = [
        compare_lever(
            lever, args.architecture, args.width, args.encoder, args.batch_size, args.lever_steps
        )
        for lever in args.lever or []
    ]
    record |= {
        "load_average": {"start": list(load_at_start), "end": list(os.getloadavg())},
        "command": "python benchmarks/profile_training.py "
        + shlex.join(sys.argv[1:] if argv is None else argv),
        "environment": environment.describe(torch.device("cpu")),
    }
    for op in record["top_ops"]:
        print(
            f"{op['self_cpu_seconds']:8.3f} s  {100 * op['share']:5.1f} %  {op['calls']:6d}  "
            f"{op['op']}"
        )
    for lever in record["levers"]:
        print(
            f"lever {lever['lever']}: baseline {lever['baseline']['seconds']}, variant "
            f"{lever['variant']['seconds']}, control {lever['control']['seconds']}, weight "
            f"change {lever['largest_weight_change']}"
        )
    if args.json:
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
