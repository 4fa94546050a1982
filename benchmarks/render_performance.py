"""Render ``reports/performance.md`` from the measurement records in ``reports/performance/``.

    .venv/bin/python benchmarks/render_performance.py [--records DIR] [--out FILE]

It only reads JSON written by the measuring commands (``bench perf --json``,
``benchmarks/peers/compare_keras.py --json``, ``benchmarks/speed_options_accuracy.py
--json``); it never measures. A record that is missing leaves its rows "not measured".
Every verdict in the text (met or not, at the margin, within seed noise, faster or
slower) is computed here from the records and the goal constants below, so a new record
changes the words as well as the numbers.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shlex
import statistics
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

from bench.perf import PerfConfig

REPO = Path(__file__).resolve().parents[1]
RECORDS = REPO / "reports" / "performance"
OUT = REPO / "reports" / "performance.md"
# The defaults of `bench perf`'s flags: a record's command names only what differs.
PERF_DEFAULTS = {field.name: field.default for field in fields(PerfConfig)}

#: The speed goals: harness over a bare PyTorch loop; harness over a per-sample DataLoader
#: with albumentations (augmentation on); `bench run` over the thesis's Keras U-Net.
BARE_LOOP_GOAL = 0.95
DATALOADER_GOAL = 1.5
KERAS_GOAL = 1.2
#: Seconds per step of 20 images assumed for the thesis's Keras stack when the Keras goal
#: was set, by width.
EXPECTED_KERAS_SECONDS_PER_STEP = {1.0: 7.0, 0.25: 0.7}
#: A ratio this close to 1 reads "about as fast".
SAME_SPEED = 0.05
NO_GPU = "no GPU measurement yet"


def load(name: str, records: Path = RECORDS) -> dict[str, Any] | None:
    path = records / name
    return json.loads(path.read_text()) if path.is_file() else None


def perf_command(record: dict[str, Any]) -> str:
    """The ``bench perf`` command that reproduces a record (its non-default options)."""
    config = record["config"]
    words = ["bench", "perf", config["architecture"]]
    for key, default in PERF_DEFAULTS.items():
        value = config.get(key, default)
        # the note is what the record says about the machine, not how to measure again
        if key in ("architecture", "note") or (value == default and key != "width"):
            continue
        if key == "augmented":
            words.append("--no-augmented")
        elif key == "compile":
            words.append("--compile")
        else:
            words += [f"--{key.replace('_', '-')}", str(value)]
    return shlex.join([*words, "--json"])


def versions(environment: dict[str, Any]) -> str:
    keys = ("torch", "torchvision", "albumentations", "numpy", "python")
    return ", ".join(f"{k} {environment.get(k)}" for k in keys if environment.get(k))


def yes_no(value: float | None, goal: float) -> str:
    if value is None:
        return "not measured"
    return "**met**" if value >= goal else "not met"


def margin_note(goal: float, runs: list[float]) -> str:
    """How the recorded runs of the same command fall around ``goal`` ("" for one run)."""
    if len(runs) < 2:
        return ""
    below = sum(value < goal for value in runs)
    spread = f"{min(runs):.2f}-{max(runs):.2f} over {len(runs)} runs"
    if below == 0:
        return f" (every run above it: {spread})"
    if below == len(runs):
        return f" (every run below it: {spread})"
    return f" (at the margin: {spread}, {below} below {goal:g})"


def against_goal(value: float, goal: float, runs: list[float]) -> str:
    """``value`` set against ``goal`` in words, with the runs of the same command."""
    side = "above" if value >= goal else "below"
    below = sum(run < goal for run in runs)
    if len(runs) < 2:
        return f"{side} the {goal:g} goal (one recorded run)"
    spread = f"{min(runs):.2f}-{max(runs):.2f} over {len(runs)} recorded runs; see Run to run"
    if below == 0 or below == len(runs):
        return f"{side} the {goal:g} goal, as every recorded run of the same command is ({spread})"
    return (
        f"at the {goal:g} goal rather than clear of it: {below} of the {len(runs)} recorded "
        f"runs of the same command were below it ({spread})"
    )


def speed_words(ratio: float) -> str:
    """``ratio`` (ours over theirs, higher is faster) as a comparison."""
    if abs(ratio - 1) <= SAME_SPEED:
        return "about as fast as"
    return "faster than" if ratio > 1 else "slower than"


def seed_noise_verdict(changes: list[float], noise: float | None) -> str:
    """Whether a variant's per-seed changes against fp32 stay below the seed-to-seed noise."""
    if not changes or noise is None:
        return "not measured"
    largest = max(changes)
    side = "within" if largest < noise else "beyond"
    return f"{side} seed noise (largest change {largest:.4f}; between seeds {noise:.4f})"


def variant_changes(accuracy: dict[str, Any]) -> dict[str, list[float]]:
    """Per variant other than fp32, its per-seed mean absolute per-image Dice change."""
    changes: dict[str, list[float]] = {}
    for row in accuracy["rows"]:
        change = row.get("mean_abs_dice_change_vs_fp32")
        if row["variant"] != "fp32" and change is not None:
            changes.setdefault(row["variant"], []).append(float(change))
    return changes


def fmt(value: float | None, digits: int = 2) -> str:
    return "not measured" if value is None else f"{value:.{digits}f}"


def keras_row(record: dict[str, Any] | None, width: float) -> dict[str, Any] | None:
    if record is None:
        return None
    return next((row for row in record["results"] if float(row["width"]) == width), None)


def pytest_benchmark_section(records: Path = RECORDS) -> list[str]:
    """Medians of the latest saved pytest-benchmark run, one row per architecture."""
    storage = records / "pytest-benchmark"
    lines = [
        "## pytest-benchmark",
        "",
        "`benchmarks/test_step_speed.py`: a training step (forward, loss, backward, Adam) and "
        "inference (forward + argmax) for every builtin architecture at width 0.25 (smp "
        "encoders resnet18), batch 20, 120×120, in PyTorch's default (contiguous) and in "
        "channels-last memory format. Saved runs are in `reports/performance/pytest-benchmark/`; "
        "make and compare another with:",
        "",
        "```bash",
        ".venv/bin/python -m pytest benchmarks/test_step_speed.py --benchmark-enable \\",
        "    --benchmark-storage reports/performance/pytest-benchmark --benchmark-autosave",
        ".venv/bin/pytest-benchmark --storage reports/performance/pytest-benchmark compare",
        "```",
        "",
    ]
    runs = sorted(storage.glob("*/*.json"))
    if not runs:
        return [*lines, "No saved run.", ""]
    run = json.loads(runs[-1].read_text())
    medians: dict[str, dict[str, float]] = {}
    for bench in run["benchmarks"]:
        kind = "train" if bench["name"].startswith("test_train_step") else "infer"
        column = f"{kind} {bench['params']['memory_format']}"
        medians.setdefault(bench["params"]["name"], {})[column] = bench["stats"]["median"]
    commit = run["commit_info"]
    lines += [
        f"Latest saved run `{runs[-1].relative_to(storage)}`: {run['datetime']}, "
        f"{run['machine_info'].get('cpu', {}).get('brand_raw', '?')}, commit "
        f"`{commit.get('id', '?')[:12]}`"
        + (" (uncommitted changes present)" if commit.get("dirty") else "")
        + ". Median milliseconds:",
        "",
        "| architecture | train step, contiguous | train step, channels-last | inference, "
        "contiguous | inference, channels-last |",
        "|---|---|---|---|---|",
    ]
    columns = ("train contiguous", "train channels_last", "infer contiguous", "infer channels_last")
    for name in sorted(medians):
        cells = " | ".join(
            f"{medians[name][c] * 1000:.0f}" if c in medians[name] else "—" for c in columns
        )
        lines.append(f"| `{name}` | {cells} |")
    return [*lines, ""]


def seconds_per_step(run: dict[str, Any]) -> float:
    """Mean seconds per batch of 20 over all epochs of one side of a Keras comparison."""
    steps = -(-run["images_per_epoch"] // 20)
    return sum(run["epoch_seconds"]) / (steps * len(run["epoch_seconds"]))


def record_command(command: str, name: str) -> str:
    """A recorded command with its ``--json`` output pointed at the record's place here."""
    words = command.split()
    if "--json" in words:
        at = words.index("--json")
        del words[at : at + 2]
    return " ".join([*words, "--json", f"reports/performance/{name}"])


def perf_history(records: Path = RECORDS) -> list[tuple[str, dict[str, Any]]]:
    """Every recorded run of the default ``bench perf`` command, oldest first."""
    history = sorted((records / "perf_history").glob("*.json"))
    return [(path.name, json.loads(path.read_text())) for path in history]


def history_section(history: list[tuple[str, dict[str, Any]]]) -> list[str]:
    if not history:
        return []
    lines = [
        "## Run to run: every recorded run of the default `bench perf` command",
        "",
        "The same command on the same machine, at the commits named (records in "
        "`reports/performance/perf_history/`); the goals table uses the last.",
        "",
        "| record | commit | repeats | harness / bare | harness / DataLoader (augmented) |",
        "|---|---|---|---|---|",
    ]
    for name, record in history:
        lines.append(
            f"| {name} | `{str(record['environment'].get('git_commit'))[:12]}` | "
            f"{record['repeats']} | {record['ratio']:.3f} | "
            f"{fmt(record.get('augmented_ratio'), 3)} |"
        )
    return [*lines, ""]


def host_memory_section(record: dict[str, Any] | None) -> list[str]:
    """Page faults and system time of a CPU step with the allocator's defaults and retained."""
    if not record:
        return []
    env = record["environment"]
    lines = [
        "## Host memory: `--host-memory system` vs `retain`",
        "",
        f"`unet_thesis` train steps (batch 20, 120×120, bench's default CPU options), each "
        f"row a fresh process: median seconds per step over {record['steps']} steps after "
        f"{record['warmup']} untimed ones; page faults and CPU seconds per step (user and "
        f"system, both threads together). {env.get('cpu_model', '?')}, "
        f"{env.get('torch_threads', '?')} torch threads; commit `{env.get('git_commit')}`. "
        f"Command: `{record_command(record['command'], 'host_memory.json')}`.",
        "",
        "| width | host memory | s/step | minor faults/step | system s/step | user s/step | "
        "peak RSS GiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in record["runs"]:
        lines.append(
            f"| {run['width']:g} | {run['mode']} | {run['seconds_per_step']:.3f} | "
            f"{run['minor_faults_per_step']:,.0f} | {run['system_seconds_per_step']:.3f} | "
            f"{run['user_seconds_per_step']:.3f} | {run['peak_rss_gib']:.2f} |"
        )
    return [*lines, ""]


def reading(
    perf: dict[str, Any] | None,
    keras: dict[str, Any] | None,
    accuracy: dict[str, Any] | None,
    spread: list[float],
) -> list[str]:
    """What the goals table says, in words, from the same records. ``spread``: the
    augmented ratios of every recorded run of the default ``bench perf`` command."""
    lines = ["## Reading", ""]
    if perf:
        met = "meets" if perf["ratio"] >= BARE_LOOP_GOAL else "misses"
        lines.append(
            f"- The harness trains {speed_words(perf['ratio'])} a bare loop (ratio "
            f"{perf['ratio']:.2f}; it {met} the {BARE_LOOP_GOAL:g} goal): the data is indexed "
            "on the device and the host reads the loss once per epoch. Both keep freed host "
            "memory for reuse (`--host-memory retain`); the harness also hands the free heap "
            "back before a cell whose configuration differs from the previous cell's, so that "
            "each cell's peak memory is its own, and grows it again in the first steps (in "
            "`bench perf`, the first harness repeat)."
        )
    if perf and "augmented_ratio" in perf:
        dataloader = perf["samples"]["dataloader"]
        ratio = perf["augmented_ratio"]
        why = (
            " because it trains as PyTorch and glibc do by default: contiguous memory "
            "format, and an allocator that returns every freed activation to the system and "
            "faults it back in the next step (it runs in its own process; see Host memory "
            "below)"
            if ratio > 1
            else ""
        )
        lines.append(
            f"- With augmentation on, the per-sample DataLoader + albumentations pipeline "
            f"({min(dataloader):.1f}-{max(dataloader):.1f} img/s over {len(dataloader)} "
            f"repeats) is {speed_words(1 / ratio)} the harness{why}. The ratio with default "
            f"options, {ratio:.2f}, is {against_goal(ratio, DATALOADER_GOAL, spread)}."
        )
    if keras:
        steps = {float(r["width"]): r["keras"] for r in keras["results"]}
        measured = [
            (width, seconds_per_step(steps[width]), expected)
            for width, expected in EXPECTED_KERAS_SECONDS_PER_STEP.items()
            if width in steps
        ]
        if measured:
            faster = [m < expected for _, m, expected in measured]
            side = "faster than" if all(faster) else "slower than" if not any(faster) else "against"
            consequence = {
                "faster than": ", so the 1.2× goal is against a stronger peer than expected",
                "slower than": ", so the 1.2× goal is against a weaker peer than expected",
                "against": "",
            }[side].replace("1.2", f"{KERAS_GOAL:g}")
            lines.append(
                "- The Keras peer on this machine ran at "
                + " and ".join(f"{m:.2f} s at width {w:g}" for w, m, _ in measured)
                + f" per step of 20 (mean over all epochs): {side} the "
                + " and ".join(f"{e:.1f} s" for _, _, e in measured)
                + f" assumed for the thesis's stack when the goal was set{consequence}."
            )
        spreads = [
            max(r[side]["epoch_seconds"]) / min(r[side]["epoch_seconds"])
            for r in keras["results"]
            for side in ("keras", "bench")
        ]
        keras_spread = max(spreads[0::2])
        bench_spread = max(spreads[1::2])
        verdicts = ", ".join(
            f"width {float(r['width']):g}: {min(r['ratio_all'], r['ratio_steady']):.2f}"
            for r in keras["results"]
        )
        lines.append(
            f"- Keras's epoch times varied up to {keras_spread:.2f}× between epochs of one "
            f"run (bench's up to {bench_spread:.2f}×), so each Keras figure is one sample of "
            "a spread; goals are judged on the lower of the all-epochs and steady-state "
            f"ratios (default options: {verdicts})."
        )
    bf16 = {
        variant: changes
        for variant, changes in (variant_changes(accuracy) if accuracy else {}).items()
        if "bf16" in variant
    }
    if bf16:
        verdicts = "; ".join(
            f"`{variant}` is {seed_noise_verdict(changes, accuracy.get('seed_noise'))}"
            for variant, changes in bf16.items()
        )
        lines.append(
            "- bf16 autocast stays opt-in on CPU (`--amp bf16`; `auto` means bf16 only on "
            f"CUDA): it changes the arithmetic. In the accuracy table below {verdicts}, for "
            "one model (`unet_thesis`), not for every model."
        )
    return [*lines, ""]


def _sibling(name: str) -> Any:
    """A script of this folder as a module (``suite_cost``), wherever this one is run from."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_average(record: dict[str, Any]) -> str:
    """The 1-minute load average at a measurement's start and end (2 cores: 2 is busy)."""
    load = record.get("load_average")
    if not load:
        return "not recorded"
    return f"{load['start'][0]:.1f} → {load['end'][0]:.1f}"


def fraction_records(records: Path = RECORDS) -> dict[str, list[dict[str, Any]]]:
    """The ``bench perf`` records of the fraction-of-peak table by sweep: the records of one
    sweep were measured one after the other, ``<sweep>_<architecture>.json``."""
    sweeps: dict[str, list[dict[str, Any]]] = {}
    for path in sorted((records / "fraction_of_peak").glob("*_*.json")):
        record = json.loads(path.read_text())
        if "fraction_of_peak" in record:
            sweeps.setdefault(path.name.split("_")[0], []).append(record)
    return sweeps


def fraction_of_peak_section(sweeps: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Achieved training TFLOP/s against the device's matmul peak measured in the same run."""
    lines = [
        "## Fraction of the machine's own peak",
        "",
        "Each row is one `bench perf` run (records in `reports/performance/fraction_of_peak/`); "
        "a sweep is the four commands run one after another, so its rows share the "
        "machine's conditions more than rows of different sweeps do. "
        "Achieved = forward GFLOPs per image (torch's FlopCounterMode: a multiply-add is 2 "
        "FLOPs; convolutions and matmuls only) × 3 (forward + backward, the standard 1:2 "
        "estimate) × the harness's training images/s. Peak = a square dense `torch.matmul` "
        "at the training's dtype and thread count, timed in the same run before the first "
        "repeat and after the last, best sample. The load average is the 1-minute one at the "
        "run's start and end, on 2 cores: above 2, other work was competing for them, and "
        f"both rates were measured under it. GPU: {NO_GPU}.",
        "",
    ]
    if not sweeps:
        return [*lines, "Not measured.", ""]
    lines += [
        "| sweep | architecture | images/s | forward GFLOPs/image | achieved TFLOP/s | "
        "peak TFLOP/s (dtype, n) | fraction | load average | command |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    found = [(sweep, record) for sweep, records in sweeps.items() for record in records]
    for sweep, record in found:
        name = record["architecture"]
        if record["config"].get("encoder") and name.startswith("smp_"):
            name += f" ({record['config']['encoder']})"
        measured = record["peak"]["measurements"][0]
        lines.append(
            f"| {sweep} | `{name}` w{record['width']:g} | "
            f"{record['harness_images_per_second']:.1f} | "
            f"{record['forward_gflops_per_image']:.3f} | {record['achieved_tflops']:.4f} | "
            f"{record['peak_tflops']:.4f} ({measured['dtype']}, {measured['size']}) | "
            f"{record['fraction_of_peak']:.2f} | {load_average(record)} | "
            f"`{perf_command(record)}` |"
        )
    lines.append("")
    for sweep, records in sweeps.items():
        lowest = min(records, key=lambda r: r["fraction_of_peak"])
        highest = max(records, key=lambda r: r["fraction_of_peak"])
        loads = [r["load_average"]["start"][0] for r in records]
        cpus = sorted({str(r["environment"].get("cpu_model", "?")) for r in records})
        notes = sorted({r["note"] for r in records if r.get("note")})
        lines.append(
            f"- {sweep} ({', '.join(cpus)}): lowest fraction `{lowest['architecture']}` "
            f"({lowest['fraction_of_peak']:.2f}), highest `{highest['architecture']}` "
            f"({highest['fraction_of_peak']:.2f}); load average at the starts "
            f"{min(loads):.1f}-{max(loads):.1f}."
            + "".join(f" Note recorded with the runs: {note}." for note in notes)
        )
    lines += dtype_speedups(sweeps)
    return [*lines, ""]


def dtype_speedups(sweeps: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Per architecture, bf16 against fp32 images/s, between sweeps of one CPU model."""

    def key(record: dict[str, Any]) -> tuple[str, str, float, str]:
        encoder = (
            record["config"].get("encoder", "") if record["architecture"].startswith("smp_") else ""
        )
        return (
            record["architecture"],
            encoder,
            record["width"],
            str(record["environment"].get("cpu_model")),
        )

    by_dtype: dict[str, dict[tuple[str, str, float, str], dict[str, Any]]] = {}
    for records in sweeps.values():
        for record in records:
            dtype = record["peak"]["measurements"][0]["dtype"]
            by_dtype.setdefault(dtype, {})[key(record)] = record
    pairs = [
        (k, fp32, by_dtype["bfloat16"][k])
        for k, fp32 in by_dtype.get("float32", {}).items()
        if k in by_dtype.get("bfloat16", {})
    ]
    if not pairs:
        return []
    lines = ["", "bf16 against fp32, training images/s of the harness on the same CPU model:", ""]
    for (name, encoder, width, cpu), fp32, bf16 in pairs:
        ratio = bf16["harness_images_per_second"] / fp32["harness_images_per_second"]
        peak = bf16["peak_tflops"] / fp32["peak_tflops"]
        label = f"{name} ({encoder})" if encoder else name
        lines.append(
            f"- `{label}` w{width:g} on {cpu}: {ratio:.2f}× "
            f"({fp32['harness_images_per_second']:.1f} → {bf16['harness_images_per_second']:.1f} "
            f"img/s), where the matmul peak rose {peak:.1f}×: "
            + (
                "bf16 is faster."
                if ratio > 1.05
                else "bf16 gains nothing here."
                if ratio >= 0.95
                else "bf16 is slower."
            )
        )
    return lines


def profile_section(records: Path = RECORDS) -> list[str]:
    """Top ops by self CPU time of the recorded profiles, and any lever measured side by side."""
    found = [json.loads(p.read_text()) for p in sorted(records.glob("profile_*.json"))]
    lines: list[str] = []
    for record in found:
        env = record["environment"]
        name = f"profile_{record['architecture']}.json"
        lines += [
            f"## Where `{record['architecture']}` spends its training time",
            "",
            f"torch.profiler over {record['steps']} training steps (batch "
            f"{record['batch_size']}, 120×120, width {record['width']:g}, after "
            f"{record['warmup']} untimed), {env.get('cpu_model', '?')}, "
            f"{env.get('torch_threads', '?')} torch threads, load average "
            f"{load_average(record)}; commit `{str(env.get('git_commit'))[:12]}`. Command: "
            f"`{record_command(record['command'], name)}`. "
            "Top ops by self CPU time (all threads):",
            "",
            "| op | self CPU s | share | calls |",
            "|---|---|---|---|",
        ]
        top = record["top_ops"]
        convolution = sum(op["share"] for op in top if "convolution" in op["op"])
        heaviest = top[0]
        summary = (
            f"The convolutions (forward and backward, the ops whose FLOPs are counted) take "
            f"{convolution:.0%} of the self CPU time, the other ops of the table "
            f"{sum(op['share'] for op in top) - convolution:.0%}; the heaviest op is "
            f"`{heaviest['op']}` ({heaviest['share']:.0%})."
        )
        for op in top:
            lines.append(
                f"| `{op['op']}` | {op['self_cpu_seconds']:.2f} | {100 * op['share']:.1f} % | "
                f"{op['calls']} |"
            )
        lines += ["", summary, ""]
        for lever in record.get("levers", []):
            lines += lever_lines(lever)
    return lines


def lever_lines(lever: dict[str, Any]) -> list[str]:
    """A lever's side-by-side step times and weights against its control's, and the verdict."""
    base, control, variant = lever["baseline"], lever["control"], lever["variant"]
    median = statistics.median
    gain = median(base["seconds"]) / median(variant["seconds"])
    noise = abs(median(base["seconds"]) / median(control["seconds"]) - 1)
    unchanged = base["seconds"] + control["seconds"]
    # Beyond noise: every variant step faster than the fastest step without the lever.
    if max(variant["seconds"]) < min(unchanged):
        speed = f"faster beyond run-to-run noise ({gain:.2f}× on the medians; control {noise:.0%})"
    elif min(variant["seconds"]) > max(unchanged):
        speed = f"slower beyond run-to-run noise ({gain:.2f}× on the medians)"
    else:
        speed = (
            f"inconclusive ({gain:.2f}× on the medians, but its step times overlap those "
            f"without it; the control differs from the baseline by {noise:.0%})"
        )
    change = lever["largest_weight_change"]
    same_results = change["variant"] <= change["control"]
    results = (
        f"its weights after the same steps differ from the baseline's by at most "
        f"{change['variant']:.2g}, against {change['control']:.2g} for the control: "
        + ("within the training's own run-to-run difference" if same_results else "beyond it")
    )
    adopted = speed.startswith("faster") and same_results
    return [
        f"Lever tried: {lever['description']}. Steps alternated in one run with a second "
        "baseline as control, seconds per step: baseline "
        f"{', '.join(f'{s:.2f}' for s in base['seconds'])}; control "
        f"{', '.join(f'{s:.2f}' for s in control['seconds'])}; variant "
        f"{', '.join(f'{s:.2f}' for s in variant['seconds'])}. Speed: {speed}. Results: "
        f"{results}. {'Adopted' if adopted else 'Not adopted'}.",
        "",
    ]


def suite_cost_section(suites: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """The per-phase cost of each recorded suite (``suite_cost_*.json``), reference suites
    first, then the small demonstration."""
    lines = [
        "## Cost of a suite, per architecture and phase",
        "",
        "Seconds summed over each architecture's cells: train (timed training epochs), "
        "evaluate (the test pass after every epoch), validate (early stopping's pass over the "
        "validation split after every epoch), other in the cell (building the model, counting "
        "its FLOPs, epoch checkpoints, final per-image scoring), write (predictions, "
        "checkpoint, record, derived CSVs). Each record was made by `python "
        "benchmarks/suite_cost.py RUN_DIR --json reports/performance/suite_cost_NAME.json`, "
        "which reads the finished run directory and trains nothing.",
        "",
    ]
    if not suites:
        return [*lines, "Not measured.", ""]
    for name, record in suites:
        env = record["environment"]
        lines += [
            f"### `{name}`: `{record['run_dir']}`",
            "",
            f"Suite: `{record['command']}` ({env.get('cpu_model', '?')}, "
            f"{env.get('torch_threads', '?')} torch threads, commit "
            f"`{str(env.get('git_commit'))[:12]}`)."
            + (f" Note recorded with it: {record['note']}." if record.get("note") else ""),
            "",
            *_sibling("suite_cost").render_cost(record),
            "",
        ]
    return lines


def suite_cost_records(records: Path) -> list[tuple[str, dict[str, Any]]]:
    """``suite_cost_*.json`` by name; the demonstration (``demo``) last."""
    found = []
    for path in sorted(records.glob("suite_cost_*.json")):
        name = path.stem.removeprefix("suite_cost_")
        found.append((name, json.loads(path.read_text())))
    return sorted(found, key=lambda item: (item[0] == "demo", item[0]))


def render(records: Path = RECORDS) -> str:
    """performance.md's text from the records in ``records``."""
    perf = load("perf_unet_thesis_w0.25.json", records)
    perf_bf16 = load("perf_unet_thesis_w0.25_bf16.json", records)
    keras = load("keras_vs_bench.json", records)
    keras_bf16 = load("keras_vs_bench_bf16.json", records)
    accuracy = load("speed_options_accuracy.json", records)
    host_memory = load("host_memory.json", records)
    environment = (perf or perf_bf16 or {}).get("environment", {})
    lines = [
        "# Performance",
        "",
        "Rendered by `python benchmarks/render_performance.py` from the JSON records in",
        "`reports/performance/` (each holds its machine, versions, git commit and every",
        "repeat). Training images/s counts the training phase only (device synchronised, the",
        "first epoch included), as `bench run` records it.",
        "",
        f"- **Machine**: {environment.get('cpu_model', '?')}, {environment.get('cpu_count', '?')} "
        f"cores, {environment.get('torch_threads', '?')} torch threads, no GPU; "
        f"{environment.get('platform', '')}.",
        f"- **Versions**: {versions(environment)}; bench at commit "
        f"`{environment.get('git_commit')}`.",
        f"- **GPU**: {NO_GPU}; the H100 rows below are empty rather than estimated.",
        "",
        "## Goals",
        "",
        "| goal | measured | result | command |",
        "|---|---|---|---|",
    ]
    if perf:
        lines.append(
            f"| harness ≥ {BARE_LOOP_GOAL:g} × bare PyTorch loop (`unet_thesis`, width "
            f"{perf['width']}, batch {perf['batch_size']}, {perf['train_images']} images/epoch) | "
            f"{perf['ratio']:.3f} ({perf['harness_images_per_second']:.1f} vs "
            f"{perf['bare_images_per_second']:.1f} img/s) | "
            f"{yes_no(perf['ratio'], BARE_LOOP_GOAL)} | "
            f"`{perf_command(perf)}` |"
        )
    history = perf_history(records)
    spread = [r["augmented_ratio"] for _, r in history if "augmented_ratio" in r]
    for record, label in ((perf, "default options"), (perf_bf16, "`--amp bf16`")):
        if record and "augmented_ratio" in record:
            verdict = yes_no(record["augmented_ratio"], DATALOADER_GOAL)
            if record is perf:
                verdict += margin_note(DATALOADER_GOAL, spread)
            lines.append(
                f"| harness ≥ {DATALOADER_GOAL:g} × per-sample DataLoader + albumentations, "
                "augmentation on "
                f"(harness with {label}; DataLoader at PyTorch's and glibc's defaults, in its "
                f"own process) | "
                f"{record['augmented_ratio']:.2f} "
                f"({record['augmented_harness_images_per_second']:.1f} vs "
                f"{record['dataloader_images_per_second']:.1f} img/s) | "
                f"{verdict} | `{perf_command(record)}` |"
            )
    for record, label in ((keras, "default options"), (keras_bf16, "`--amp bf16`")):
        for width in (1.0, 0.25):
            row = keras_row(record, width)
            if row is None:
                continue
            # Judged on the lower of the all-epochs and steady-state ratios: neither choice
            # of accounting may turn a miss into a hit.
            value = min(row["ratio_all"], row["ratio_steady"])
            bench_args = " ".join(record.get("bench_args") or [])
            lines.append(
                f"| `bench run` ≥ {KERAS_GOAL:g} × the thesis's Keras U-Net, width {width:g} "
                f"(bench with {label}) | {fmt(row['ratio_all'])} all epochs / "
                f"{fmt(row['ratio_steady'])} steady (bench "
                f"{fmt(row['bench']['images_per_second']['all'], 1)} / "
                f"{fmt(row['bench']['images_per_second']['steady'], 1)}, Keras "
                f"{fmt(row['keras']['images_per_second']['all'], 1)} / "
                f"{fmt(row['keras']['images_per_second']['steady'], 1)} img/s) | "
                f"{yes_no(value, KERAS_GOAL)} | `python benchmarks/peers/compare_keras.py --widths "
                f"{width:g} --epochs {record['epochs']}"
                + (f' --bench-args "{bench_args}"' if bench_args else "")
                + "` |"
            )
    lines += [
        "| thesis protocol, three thesis models, full width, 30 epochs, evaluation and "
        f"report, one H100 ≤ 60 s wall | {NO_GPU} | — | `bench run "
        "unet_thesis segnet_basic deconvnet --protocol thesis --dataset wbc1 --device cuda` |",
        f"| achieved TFLOP/s against the card's measured matrix peak | {NO_GPU} | — | — |",
        "",
    ]
    lines += reading(perf, keras, accuracy, spread)
    lines += fraction_of_peak_section(fraction_records(records))
    lines += profile_section(records)
    lines += suite_cost_section(suite_cost_records(records))
    if perf or perf_bf16:
        lines += [
            "## `bench perf`: harness, bare loop, DataLoader",
            "",
            "Each loop trains a fresh model for the given epochs; loops alternate per repeat; "
            "the table gives the median and every repeat (img/s).",
            "",
            "| record | loop | median | repeats |",
            "|---|---|---|---|",
        ]
        for name, record in (("default", perf), ("--amp bf16", perf_bf16)):
            if not record:
                continue
            medians = {
                "bare": record["bare_images_per_second"],
                "harness": record["harness_images_per_second"],
                "dataloader": record.get("dataloader_images_per_second"),
                "augmented_harness": record.get("augmented_harness_images_per_second"),
            }
            for loop, samples in record["samples"].items():
                values = ", ".join(f"{v:.1f}" for v in samples)
                lines.append(f"| {name} | {loop} | {fmt(medians.get(loop), 1)} | {values} |")
        lines.append("")
    for record, label in ((keras, "default options"), (keras_bf16, "`--amp bf16`")):
        if not record:
            continue
        lines += [
            f"## Keras peer vs `bench run` ({label})",
            "",
            f"TensorFlow {record['versions'].get('tensorflow')}, Keras "
            f"{record['versions'].get('keras')} (threads left at TF's defaults), torch "
            f"{record['versions'].get('torch')}; {record['train_images']} thesis-protocol "
            f"training images, batch {record['batch_size']}, {record['epochs']} epochs per "
            f"side, Keras then bench per width; commit "
            f"`{record['git'].get('commit')}`"
            + (" (uncommitted changes present)" if record["git"].get("dirty") else "")
            + ".",
            "",
            "| width | Keras s/epoch | bench s/epoch | Keras img/s (all / steady) | "
            "bench img/s (all / steady) | bench / Keras (steady) |",
            "|---|---|---|---|---|---|",
        ]
        for row in record["results"]:
            k, b = row["keras"], row["bench"]
            lines.append(
                f"| {row['width']:g} | {', '.join(f'{s:.1f}' for s in k['epoch_seconds'])} | "
                f"{', '.join(f'{s:.1f}' for s in b['epoch_seconds'])} | "
                f"{fmt(k['images_per_second']['all'], 1)} / "
                f"{fmt(k['images_per_second']['steady'], 1)} | "
                f"{fmt(b['images_per_second']['all'], 1)} / "
                f"{fmt(b['images_per_second']['steady'], 1)} | {fmt(row['ratio_steady'])} |"
            )
        lines += ["", "bench commands: " + "; ".join(f"`{c}`" for c in record["bench_commands"])]
        lines.append("")
    if accuracy:
        noise = accuracy.get("seed_noise")
        changes = variant_changes(accuracy)
        verdicts = {v: seed_noise_verdict(c, noise) for v, c in changes.items()}
        within = [v for v, verdict in verdicts.items() if verdict.startswith("within")]
        if changes and len(within) == len(changes):
            heading, summary = "Accuracy does not move", "Every speed option is within seed noise."
        else:
            beyond = [f"`{v}`" for v in changes if v not in within]
            heading = "Accuracy with the speed options"
            summary = f"Beyond seed noise: {', '.join(beyond)}." if beyond else ""
        lines += [
            f"## {heading}",
            "",
            "The same seeds trained with and without each speed option (`unet_thesis`, "
            "thesis protocol on wbc1); per-image foreground Dice (mean of cytoplasm and "
            "nucleus) compared with fp32 contiguous (PyTorch's defaults) for the same seed. "
            "Noise reference: fp32 seed against fp32 seed, mean absolute per-image change "
            f"{fmt(noise, 4)}; a variant is within seed noise when its change is below that "
            f"for every seed. {summary} The images/s column is informational (one run each; "
            "the compile variant's first epoch includes compilation).",
            "",
            "| variant | seed | foreground Dice | train img/s | mean abs per-image Dice change "
            "vs fp32 | variant against seed noise |",
            "|---|---|---|---|---|---|",
        ]
        for row in accuracy["rows"]:
            lines.append(
                f"| {row['variant']} | {row['seed']} | {row['foreground_dice']:.4f} | "
                f"{row['images_per_second']:.1f} | "
                f"{fmt(row.get('mean_abs_dice_change_vs_fp32'), 4)} | "
                f"{verdicts.get(row['variant'], '— (the reference)')} |"
            )
        commits = {
            str(environment.get("git_commit"))[:12]
            for environments in accuracy.get("trained_by", {}).values()
            for environment in environments
        }
        if commits:
            lines += [
                "",
                f"Run directories written by commit{'s' if len(commits) > 1 else ''} "
                + ", ".join(f"`{c}`" for c in sorted(commits))
                + " (from their config.json).",
            ]
        lines += ["", "Commands:", ""]
        lines += [f"- {variant}: `{command}`" for variant, command in accuracy["commands"].items()]
        lines.append("")
    lines += history_section(history)
    lines += host_memory_section(host_memory)
    lines += pytest_benchmark_section(records)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=Path, default=RECORDS, help="the JSON records")
    parser.add_argument("--out", type=Path, default=OUT, help="the Markdown file to write")
    args = parser.parse_args(argv)
    args.out.write_text(render(args.records))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
