"""Render a run directory's report from its data files. Never trains, never re-measures.

``render_run(RUN_DIR)`` reads ``config.json``, the cell records (through
:class:`bench.run_dir.RunDir`) and the saved label maps, and writes the derived tables
(``cells.csv``, ``history.csv``, ``per_image.csv``, ``summary.csv`` from
:mod:`bench.aggregate`, ``statistics.csv`` from :mod:`bench.stats`), then ``report.md``,
and the figures (:func:`render_figures`: ``curves.png``,
``curves_loss.png``, ``curves_accuracy.png`` and ``predictions.png``), then
``report.html`` (:func:`render_html`: the same Markdown as one page with the figures
embedded). Rendering is deterministic: the same data files give the same ``report.md`` and
``report.html``, byte for byte.
"""

from __future__ import annotations

import base64
import csv
import html
import importlib.resources
import io
import itertools
import math
import re
import shlex
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench import stats
from bench.aggregate import flagged_summary
from bench.atomic import atomic_write_bytes
from bench.recipes import Recipe
from bench.run_dir import RunDir, RunTables, metric_classes_of, summary_columns, write_csv

#: The thesis's models (thesis_reference.csv names), in the order of its published rows.
THESIS_REFERENCE_MODELS = ("SegNet", "DeconvNet", "U-Net")
THESIS_SOURCE = (
    "P. Baykalov, *Semantic segmentation of peripheral white blood cells using neural "
    "networks*, master's thesis, 2019 (Keras, free Colab GPU)"
)
FLAG_MARK = "⚠"


def load_thesis_reference() -> list[dict[str, str]]:
    """The thesis's published numbers, carried as package data (see resources/README.md)."""
    text = (
        importlib.resources.files("bench.resources")
        .joinpath("thesis_reference.csv")
        .read_text(encoding="utf-8")
    )
    return list(csv.DictReader(text.splitlines()))


def _num(value: Any) -> float | None:
    if value in (None, ""):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _fmt(value: float | None, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _pm(mean: float | None, sem: float | None) -> str:
    if mean is None:
        return "—"
    return f"{mean:.4f} ± {sem:.4f}" if sem is not None else f"{mean:.4f}"


def plural(count: int, word: str, many: str | None = None) -> str:
    """``1 epoch``, ``2 epochs``, ``1,069,379 parameters``; ``many`` for an irregular plural."""
    return f"{count:,} {word if count == 1 else (many or word + 's')}"


def _join(items: Sequence[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _code(names: Sequence[str]) -> str:
    return _join([f"`{name}`" for name in names])


def device_name(env: dict[str, Any]) -> str:
    """The recorded device; runs written before the plural was fixed say "(1 threads)"."""
    return re.sub(r"\(1 threads\)", "(1 thread)", str(env["device_name"]))


def invocation_environments(meta: dict[str, Any]) -> list[dict[str, Any]]:
    """The environment of every invocation of the run, the first one first (one unless
    the run was resumed)."""
    return [*(meta.get("earlier_environments") or []), meta["environment"]]


def machines_line(meta: dict[str, Any]) -> str:
    """The device of the run, and of its earlier invocations where they differ."""
    *earlier, current = [device_name(env) for env in invocation_environments(meta)]
    others = sorted({name for name in earlier if name != current})
    return current + (f" (earlier invocations of this run: {'; '.join(others)})" if others else "")


def is_thesis_reference(meta: dict[str, Any]) -> bool:
    """Whether the run's protocol is built to compare with the thesis's published rows
    (``thesis``, ``thesis-noleak``; recorded in config.json from format 2 on)."""
    protocol = meta["protocol"]
    return bool(protocol.get("thesis_reference", protocol["name"] in ("thesis", "thesis-noleak")))


class Table:
    """A Markdown table whose numeric columns get their best value in bold.

    Reference rows (``add(..., reference=True)``: the thesis's published numbers) are shown
    but never ranked: they take no part in finding the best value and are never bold.
    """

    def __init__(self, headers: Sequence[str], better: Sequence[str | None]):
        self.headers = list(headers)
        self.better = list(better)  # per column: "max", "min" or None (not ranked)
        self.rows: list[list[tuple[str, float | None]]] = []
        self.reference: list[bool] = []

    def add(self, cells: Sequence[tuple[str, float | None]], reference: bool = False) -> None:
        self.rows.append(list(cells))
        self.reference.append(reference)

    def render(self) -> str:
        ranked = [row for row, ref in zip(self.rows, self.reference, strict=True) if not ref]
        best: dict[int, float] = {}
        for column, direction in enumerate(self.better):
            values = [row[column][1] for row in ranked if row[column][1] is not None]
            if direction and values:
                best[column] = max(values) if direction == "max" else min(values)
        lines = [
            "| " + " | ".join(self.headers) + " |",
            "|" + "|".join("---" if i == 0 else "---:" for i in range(len(self.headers))) + "|",
        ]
        for row, ref in zip(self.rows, self.reference, strict=True):
            texts = []
            for column, (text, value) in enumerate(row):
                if not ref and column in best and value is not None and value == best[column]:
                    text = f"**{text}**"
                texts.append(text)
            lines.append("| " + " | ".join(texts) + " |")
        return "\n".join(lines)


def _reference(
    rows: list[dict[str, str]], model: str, metric: str, split: str = "", cls: str = ""
) -> tuple[float | None, float | None]:
    for row in rows:
        if (
            row["protocol"] == "thesis"
            and row["model"] == model
            and row["metric"] == metric
            and (not split or row["split"] == split)
            and row["class"] == cls
        ):
            return _num(row["value"]), _num(row["sem"])
    return None, None


def speed_options(config: dict[str, Any]) -> str:
    """The speed flags of a run (absent from runs made before they existed)."""
    if "amp" not in config:
        return ""
    amp = {"auto": "auto (bf16 on CUDA, off elsewhere)"}.get(config["amp"], config["amp"])
    layout = {"auto": "auto (on for CUDA and CPU)"}.get(
        config["channels_last"], config["channels_last"]
    )
    compiled = ", torch.compile" if config.get("compile") else ""
    return f"Speed options: mixed precision {amp}, channels-last {layout}{compiled}. "


def recipe_sentence(config: dict[str, Any]) -> str:
    """The training recipe of a run, from what config.json recorded of it (runs made before
    recipes existed trained as ``thesis`` does and say nothing)."""
    settings = config.get("recipe_settings")
    if not settings:
        return ""
    recipe = Recipe(**settings)
    epochs = (
        f" Training stopped early where the validation Dice had not improved for "
        f"{plural(recipe.patience, 'epoch')}; `cells.csv` gives each run's epochs and "
        f"`best_epoch`."
        if recipe.patience is not None
        else ""
    )
    return f"Recipe `{recipe.name}`: {recipe.describe()}.{epochs} "


def learning_rate(config: dict[str, Any]) -> str:
    if config.get("lr_search"):
        grid = ", ".join(f"{lr:g}" for lr in config.get("lr_grid") or [])
        return (
            f"learning rate chosen per run from {grid} by the validation Dice on 20 % of "
            "the run's training images (by source image; never a test image)"
        )
    return f"lr {config['lr']}"


def models_section(
    meta: dict[str, Any], summary: list[dict[str, Any]], cells: list[dict[str, Any]]
) -> list[str]:
    """What was trained: each architecture's real size, what --width scaled, its rate."""
    notes = meta.get("architectures") or {}
    config = meta["config"]
    lines = []
    for row in summary:
        name = row["architecture"]
        note = notes.get(name, {})
        params = _num(row.get("params"))
        size = "size unknown (no run finished)" if params is None else f"{int(params):,} parameters"
        parts = [size]
        if note.get("width_note"):
            parts.append(f"width {config['width']}: {note['width_note']}")
        if note.get("options", {}).get("encoder"):
            parts.append(f"encoder `{note['options']['encoder']}`")
        if config.get("lr_search"):
            rates = sorted({c["lr"] for c in cells if c["architecture"] == name and c.get("lr")})
            if rates:
                parts.append("chosen lr " + ", ".join(f"{lr:g}" for lr in rates))
        lines.append(f"- `{name}`: {'; '.join(parts)}.")
    if not lines:
        return []
    return ["Models as trained:", "", *lines, ""]


def encoder_clause(meta: dict[str, Any]) -> str:
    """``, smp encoder `resnet18` (no pretrained weights)`` when the run has smp models."""
    config = meta["config"]
    notes = meta.get("architectures")
    if notes is not None:
        smp = any((note.get("options") or {}).get("encoder") for note in notes.values())
    else:  # format 1 records no options: the smp baselines are the smp_ names
        smp = any(name.startswith("smp_") for name in config.get("architectures") or [])
    if not smp or not config.get("encoder"):
        return ""
    weights = config.get("encoder_weights")
    origin = "no pretrained weights" if weights is None else f"pretrained weights: {weights}"
    return f", smp encoder `{config['encoder']}` ({origin})"


def methods_paragraph(meta: dict[str, Any]) -> str:
    config, env, protocol = meta["config"], meta["environment"], meta["protocol"]
    dataset = meta["dataset"]
    folds = config.get("folds_run") or [None]
    split = (
        f"the thesis's single split ({protocol['train_images']} train / "
        f"{protocol['test_images']} test images, seed 2)"
        if protocol.get("fixed_split", protocol["name"] == "thesis")
        else f"fold{'s' if len(folds) > 1 else ''} {', '.join(str(f) for f in folds)} of a "
        f"{config['num_folds']}-fold split by source image (split seed {config['split_seed']}; "
        f"{protocol['train_images']} train / {protocol['test_images']} test images in the "
        f"first fold)"
    )
    seeds = ("seed " if len(config["seeds"]) == 1 else "seeds ") + ", ".join(
        str(s) for s in config["seeds"]
    )
    versions = (
        f"Python {env['python']}, PyTorch {env['torch']}, segmentation-models-pytorch "
        f"{env.get('segmentation_models_pytorch')}"
        + (f", CUDA {env['cuda']}, cuDNN {env['cudnn']}" if env.get("cuda") else "")
    )
    return (
        f"Data: `{dataset['name']}`, {dataset['images']} images, classes "
        f"{', '.join(dataset['class_names'])}. Protocol `{protocol['name']}`: "
        f"{protocol['summary']} Split: {split}; inputs {protocol['input_size'][0]}×"
        f"{protocol['input_size'][1]}. Training: {plural(config['epochs'], 'epoch')}, batch "
        f"{config['batch_size']}, {config['optimizer']} {learning_rate(config)}, loss "
        f"`{config['loss']}`, width {config['width']}{encoder_clause(meta)}, {seeds}"
        f"{', deterministic algorithms' if config.get('deterministic') else ''}. "
        f"{recipe_sentence(config)}"
        f"{speed_options(config)}"
        f"Device: {device_name(env)}. Software: {versions}; bench {env['bench']}, git "
        f"commit `{env.get('git_commit')}`. Run from {meta['started_utc']} to "
        f"{meta.get('finished_utc') or '(unfinished)'} (UTC).{invocations_sentence(meta)} "
        f"Jaccard (IoU) and Dice are "
        f"computed per test image and class over the image's original pixels (padding "
        f"excluded) and given as mean ± SEM (ddof=1) over images."
    )


def invocations_sentence(meta: dict[str, Any]) -> str:
    """For a resumed run, which machine and commit each invocation ran on: its cells'
    times come from different machines, so they compare only within one invocation."""
    environments = invocation_environments(meta)
    if len(environments) == 1:
        return ""
    starts = [meta["started_utc"], *meta.get("resumed_utc", [])]
    parts = [
        f"{start} on {device_name(env)} (commit `{str(env.get('git_commit'))[:12]}`)"
        for start, env in zip(starts, environments, strict=False)
    ]
    machines = {device_name(env) for env in environments}
    return (
        f" It was resumed: invocations started {'; '.join(parts)}. Each cell's times are "
        "those of the invocation that trained it"
        + (
            ", so times compare only between cells trained on the same machine."
            if len(machines) > 1
            else "."
        )
    )


def _label(row: dict[str, Any]) -> str:
    """An architecture's name in a table; flagged ones (bench.flags) carry a mark."""
    return (
        f"{row['architecture']} {FLAG_MARK}"
        if row.get("flags") or row.get("flagged")
        else row["architecture"]
    )


def flags_section(summary: list[dict[str, Any]]) -> list[str]:
    flagged = [row for row in summary if row.get("flags")]
    if not flagged:
        return []
    out = [
        "## Flags",
        "",
        f"Marked {FLAG_MARK} in every table. A flagged architecture's numbers describe this "
        "training budget, not what the architecture can do: it is neither ranked nor tested "
        "for significance, and no verdict is drawn from it.",
        "",
    ]
    out += [f"- `{row['architecture']}`: {row['flags']}." for row in flagged]
    return [*out, ""]


def render_markdown(
    meta: dict[str, Any],
    tables: RunTables,
    summary: list[dict[str, Any]],
    statistics: list[dict[str, Any]],
    run_dir: str | Path | None = None,
) -> str:
    """report.md's text from the run's data: its ``tables``, the ``summary``
    (:func:`bench.aggregate.summarize`, with its ``flags``) and ``statistics``
    (:func:`bench.stats.statistics_rows`). One function per section, in report order.

    ``run_dir`` names the directory in the resume command of a partial run made without
    ``--out`` (only its name is used, so the text does not depend on where it is rendered).
    """
    thesis = is_thesis_reference(meta)
    reference = load_thesis_reference() if thesis else []
    out = [
        *title_section(meta),
        *partial_section(meta, tables.cells, run_dir),
        *verdict_section(summary, statistics, meta),
        *header_section(meta, summary, tables.cells, thesis),
        *flags_section(summary),
        *accuracy_section(summary, thesis),
        *loss_section(meta, summary, reference),
        *quality_section(meta, summary, tables.per_image, reference),
        *thesis_goal_section(meta, summary, load_thesis_reference()),
        *statistics_section(statistics, stats.primary_classes(meta["dataset"]["class_names"])),
        *cost_section(summary, reference),
        *failures_section(summary),
        *figures_section(
            thesis,
            compared=sum(1 for r in statistics if r.get("image_mean") is not None) >= 2,
            predicted=any(r["status"] == "ok" for r in tables.cells),
        ),
    ]
    return "\n".join(out)


# ---------------------------------------------------------------------- top of the report


def title_section(meta: dict[str, Any]) -> list[str]:
    return [
        f"# Benchmark report: `{meta['dataset']['name']}`, protocol `{meta['protocol']['name']}`",
        "",
    ]


def planned_cells(meta: dict[str, Any]) -> list[tuple[str, int, int | None]]:
    """The (architecture, seed, fold) cells the run's configuration asks for."""
    config = meta["config"]
    return [
        (name, seed, fold)
        for name in config.get("architectures") or []
        for seed in config.get("seeds") or []
        for fold in config.get("folds_run") or [None]
    ]


def resume_command(meta: dict[str, Any], run_dir: str | Path | None = None) -> str:
    """The command that resumes the run: its own, with ``--out`` when it had none (a default
    out dir, ``runs/<name>``, is new for every invocation)."""
    command = str(meta["command"])
    try:
        tokens = shlex.split(command)
    except ValueError:
        tokens = command.split()
    if any(token == "--out" or token.startswith("--out=") for token in tokens):
        return command
    out = meta["config"].get("out")
    if not out:
        out = f"runs/{Path(run_dir).name}" if run_dir is not None else "RUN_DIR"
    return f"{command} --out {shlex.quote(str(out))}"


def coverage_sentence(
    planned: Sequence[tuple[str, int, int | None]], done: set[tuple[str, int, int | None]]
) -> str:
    """Per architecture, how many of its planned cells finished, when that differs between
    architectures: their means then cover different test images and seeds, and only the
    paired comparisons (on the images both have) put them on the same footing."""
    wanted = Counter(name for name, _, _ in planned)
    finished = Counter(name for name, _, _ in done)
    names = list(wanted)  # suite order
    if len({finished[name] for name in names}) <= 1:
        return ""
    counts = ", ".join(f"`{name}` {finished[name]} of {wanted[name]}" for name in names)
    return (
        f"Cells finished per architecture: {counts}. Each mean below covers only its own "
        "architecture's cells, so means of architectures with different cells are over "
        "different test images and seeds; the statistical comparison pairs each with the "
        "best on the test images both have. "
    )


def partial_section(
    meta: dict[str, Any], cells: Sequence[dict[str, Any]], run_dir: str | Path | None = None
) -> list[str]:
    """A banner when the run did not finish or some planned cells have no result."""
    planned = planned_cells(meta)
    done = {(c["architecture"], c["seed"], c["fold"]) for c in cells} & set(planned)
    unfinished = meta.get("finished_utc") is None
    if not unfinished and len(done) >= len(planned):
        return []
    if meta.get("combined_from"):
        how = "it combines other runs: finish them, then run its `bench combine` again"
    elif meta.get("format_version") == 1:
        how = "this directory's format cannot be resumed; rerun its command with a new `--out`"
    else:
        how = f"resume with `{resume_command(meta, run_dir)}`"
    if len(done) < len(planned):
        return [
            f"> **Partial run: {len(done)} of {plural(len(planned), 'cell')} finished** "
            "(architectures × seeds × folds); every table and test below covers only those. "
            f"{coverage_sentence(planned, done)}To finish it, {how}.",
            "",
        ]
    return [
        f"> **Unfinished run:** all {plural(len(planned), 'cell')} finished, but the run "
        f"stopped before it recorded its end; {how}.",
        "",
    ]


def _flag_kinds(flags: str) -> list[str]:
    """The kinds of a summary row's ``flags`` text (bench.flags' reasons, joined by "; ")."""
    kinds: list[str] = []
    for reason in (part.strip() for part in flags.split("; ")):
        if not reason:
            continue
        head = re.sub(r" in \d+ of \d+ runs$", "", reason.split(" (")[0])
        if head.startswith("does not learn "):
            kind = "did not learn " + head.removeprefix("does not learn ")
        elif head.endswith("too few to show convergence"):
            kind = "too few epochs to show convergence"
        elif head.startswith("loss still falling"):
            kind = "not converged"
        else:
            kind = head
        if kind not in kinds:
            kinds.append(kind)
    return kinds


def _flag_list(flagged: Sequence[dict[str, Any]], everyone: int) -> str:
    """Few flagged architectures by name with their kinds (```a` (not converged)``); many
    grouped by kind (``not converged: all 6; did not learn nucleus: `smp_unet```)."""
    if len(flagged) <= 3:
        return _join(
            [f"`{r['architecture']}` ({', '.join(_flag_kinds(r['flags']))})" for r in flagged]
        )
    by_kind: dict[str, list[str]] = {}
    for row in flagged:
        for kind in _flag_kinds(row["flags"]):
            by_kind.setdefault(kind, []).append(row["architecture"])
    parts = []
    for kind, names in by_kind.items():
        if len(names) == everyone:
            who = f"all {everyone}"
        elif len(names) > 3:
            who = f"{len(names)} of {everyone}"
        else:
            who = _code(names)
        parts.append(f"{kind}: {who}")
    return "; ".join(parts)


def _cost_extremes(
    summary: Sequence[dict[str, Any]],
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The fastest (train seconds per run) and the smallest (parameters) architecture."""
    timed = [r for r in summary if _num(r.get("train_seconds")) is not None]
    sized = [r for r in summary if _num(r.get("params")) is not None]
    fastest = min(timed, key=lambda r: _num(r["train_seconds"]) or 0.0) if timed else None
    smallest = min(sized, key=lambda r: _num(r["params"]) or 0.0) if sized else None
    return fastest, smallest


def _seconds(row: dict[str, Any]) -> str:
    return f"{_num(row['train_seconds']):.1f} s"


def _params(row: dict[str, Any]) -> str:
    return plural(int(_num(row["params"]) or 0), "parameter")


def _cost_sentence(summary: Sequence[dict[str, Any]], best: dict[str, Any] | None) -> str:
    """What the best costs beside the fastest and the smallest (or those two alone)."""
    fastest, smallest = _cost_extremes(summary)
    if best is not None and len(summary) == 1:
        parts = []
        if _num(best.get("train_seconds")) is not None:
            parts.append(f"trains in {_seconds(best)} per run")
        if _num(best.get("params")) is not None:
            parts.append(f"has {_params(best)}")
        return f"Cost: it {_join(parts)}." if parts else ""
    if best is None:
        parts = []
        if fastest is not None:
            parts.append(
                f"fastest to train `{fastest['architecture']}` ({_seconds(fastest)} per run)"
            )
        if smallest is not None:
            parts.append(f"smallest `{smallest['architecture']}` ({_params(smallest)})")
        return f"Cost, which the flags do not affect: {_join(parts)}." if parts else ""
    parts = []
    if fastest is not None and _num(best.get("train_seconds")) is not None:
        if fastest["architecture"] == best["architecture"]:
            parts.append(f"is the fastest to train ({_seconds(best)} per run)")
        else:
            parts.append(
                f"trains in {_seconds(best)} per run (fastest: `{fastest['architecture']}`, "
                f"{_seconds(fastest)})"
            )
    if smallest is not None and _num(best.get("params")) is not None:
        if smallest["architecture"] == best["architecture"]:
            parts.append(f"is the smallest ({_params(best)})")
        else:
            parts.append(
                f"has {_params(best)} (smallest: `{smallest['architecture']}`, {_params(smallest)})"
            )
    return f"Cost: it {_join(parts)}." if parts else ""


def _failed_sentence(summary: Sequence[dict[str, Any]], scored: set[str]) -> str:
    failed = [r["architecture"] for r in summary if r["status"] != "ok"]
    if not failed:
        return ""
    without = [name for name in failed if name not in scored]
    partly = [name for name in failed if name in scored]
    parts = []
    if without:
        parts.append(
            f"{_code(without)} failed and {'has' if len(without) == 1 else 'have'} no results"
        )
    if partly:
        parts.append(
            f"{_code(partly)} failed in some runs and {'is' if len(partly) == 1 else 'are'} "
            "scored on the runs that finished"
        )
    return "; ".join(parts) + " (see *Failures*)."


def verdict_section(
    summary: Sequence[dict[str, Any]],
    statistics: Sequence[dict[str, Any]],
    meta: dict[str, Any],
) -> list[str]:
    """The report's first paragraph, computed from the data: the best architecture on the
    primary endpoint among the unflagged ones, its margin over the runner-up (median paired
    difference, bootstrap CI, Holm-corrected Wilcoxon), what it costs beside the fastest and
    the smallest, and the flagged and failed architectures. No verdict when all are flagged.
    """
    primary = _join(list(stats.primary_classes(meta["dataset"]["class_names"])))
    endpoint = f"mean foreground Dice (over {primary}, per test image)"
    by_name = {row["architecture"]: row for row in summary}
    scored = [r for r in statistics if _nan_none(_num(r.get("image_mean"))) is not None]
    scored_names = {r["architecture"] for r in scored}
    flagged_names = {r["architecture"] for r in summary if r.get("flags")} | {
        r["architecture"] for r in statistics if r.get("flagged") in (True, "True")
    }
    flagged = [
        {"architecture": name, "flags": by_name.get(name, {}).get("flags") or "flagged"}
        for name in dict.fromkeys([*by_name, *(r["architecture"] for r in statistics)])
        if name in flagged_names
    ]
    candidates = [r for r in scored if r["architecture"] not in flagged_names]
    planned = list(meta["config"].get("architectures") or []) or list(by_name)

    def score(row: dict[str, Any]) -> str:
        mean, sem = _num(row["image_mean"]), _nan_none(_num(row.get("image_sem")))
        return f"{_pm(mean, sem)} over {plural(int(row['images']), 'test image')}"

    protocol = meta["protocol"]
    leak = (
        f" (on the leaking `{protocol['name']}` split: {protocol['leaked_test_images']} of "
        f"the {protocol['test_images']} test images have a twin in training)"
        if protocol.get("leaked_test_images")
        else ""
    )
    sentences: list[str] = []
    if not scored:
        sentences.append("No verdict: no architecture has test results.")
    elif len(scored) == 1:
        only = scored[0]
        name = only["architecture"]
        if len(planned) <= 1 and len(by_name) <= 1:
            sentences.append(
                f"Only one architecture was run, `{name}`: nothing to compare it with."
            )
        else:
            sentences.append(f"Only `{name}` has test results: nothing to compare it with.")
        sentences.append(f"Its {endpoint} is {score(only)}{leak}.")
        sentences.append(_cost_sentence(summary, by_name.get(name)))
        if name in flagged_names:
            kinds = ", ".join(_flag_kinds(by_name.get(name, {}).get("flags") or "")) or "flagged"
            sentences.append(
                f"It is flagged {FLAG_MARK} ({kinds}; see *Flags*): these numbers describe "
                "this training budget, not what the architecture can do."
            )
    elif not candidates:
        mine = [r for r in flagged if r["architecture"] in scored_names]
        who = "both" if len(scored) == 2 else f"all {len(scored)}"
        with_results = "" if len(scored) == len(by_name) else " with results"
        listed = _flag_list(mine, len(scored))
        sentences.append(
            f"No verdict can be drawn: {who} architectures{with_results} are flagged "
            + (f"{FLAG_MARK} — {listed} —" if len(mine) <= 3 else f"{FLAG_MARK} ({listed}),")
            + " so none is ranked or tested for significance (see *Flags*)."
        )
        kinds = {kind for row in mine for kind in _flag_kinds(row["flags"])}
        if kinds & {"not converged", "too few epochs to show convergence"}:
            sentences.append(
                "Training stopped before the losses settled: a longer run (`--epochs`) is "
                "needed before they can be compared."
            )
        sentences.append(_cost_sentence(summary, None))
    else:
        best = max(candidates, key=lambda r: (_num(r["image_mean"]) or 0.0, r["architecture"]))
        name = best["architecture"]
        rank = _num(best.get("mean_rank"))
        if len(candidates) == 1:
            sentences.append(
                f"`{name}` is the only unflagged architecture with results, so it is not "
                f"ranked: its {endpoint} is {score(best)}{leak}."
            )
        else:
            sentences.append(
                f"`{name}` is best on the primary endpoint, {endpoint}: {score(best)}"
                + (
                    f", mean rank {rank:.2f} among {len(candidates)} unflagged architectures"
                    if rank is not None
                    else ""
                )
                + f"{leak}."
            )
            sentences.append(_margin_sentence(best, candidates))
        sentences.append(_cost_sentence(summary, by_name.get(name)))
        if flagged:
            listed = _flag_list(flagged, len(by_name))
            are = "is" if len(flagged) == 1 else "are"
            sentences.append(
                f"{listed} {are} flagged {FLAG_MARK} and left out of the ranking (see *Flags*)."
                if len(flagged) <= 3
                else f"{len(flagged)} architectures are flagged {FLAG_MARK} and left out of "
                f"the ranking ({listed}; see *Flags*)."
            )
    sentences.append(_failed_sentence(summary, scored_names))
    return ["**Verdict.** " + " ".join(s for s in sentences if s), ""]


def _margin_sentence(best: dict[str, Any], candidates: Sequence[dict[str, Any]]) -> str:
    """The runner-up against the best: median paired difference, its CI, Holm's p."""
    name = best["architecture"]
    others = [r for r in candidates if r is not best]
    runner = max(others, key=lambda r: (_num(r["image_mean"]) or 0.0, r["architecture"]))
    other = runner["architecture"]
    head = f"Next is `{other}` ({_num(runner['image_mean']):.4f})"
    difference = _num(runner.get("median_difference"))
    if runner.get("reference") != name or difference is None:
        return f"{head}, not paired with `{name}` on the same test images, so not tested."
    low, high = _num(runner.get("ci_low")), _num(runner.get("ci_high"))
    ci = f", 95 % CI [{-high:+.4f}, {-low:+.4f}]" if low is not None and high is not None else ""
    p_holm = _p(_num(runner.get("p_holm")))
    p_holm = p_holm if p_holm.startswith("<") else f"= {p_holm}"  # "p < 0.0001", "p = 0.03"
    verdict = (
        f"significant after Holm's correction (p {p_holm})"
        if runner.get("significant") in (True, "True")
        else f"not significant after Holm's correction (p {p_holm}): on these images "
        "the two are not told apart"
    )
    return (
        f"{head}: median paired difference (`{name}` − `{other}`) {-difference:+.4f} per "
        f"image{ci}, {verdict}."
    )


# ---------------------------------------------------------------------- published rows

#: What the thesis's published rows were: not this harness, not this budget.
PUBLISHED_SETTING = "Keras, full width, 30 epochs, leaky split"


def _published_label(model: str, setting: str = PUBLISHED_SETTING) -> str:
    return f"{model} — thesis 2019 (published; {setting})"


def _published_models(reference: list[dict[str, str]]) -> tuple[str, ...]:
    """The thesis models whose published rows a table adds (none without the reference)."""
    return THESIS_REFERENCE_MODELS if reference else ()


def published_caption(meta: dict[str, Any]) -> str:
    """Under a table with published rows: what they were, and that they are not ranked."""
    config = meta["config"]
    return (
        "The *published* rows are the thesis's own numbers (Keras models at full width, 30 "
        "epochs, on its leaky split), shown for reference only: they are never bold and are "
        f"not comparable as a ranking with this run ({plural(config['epochs'], 'epoch')}, "
        f"width {config['width']}, protocol `{meta['protocol']['name']}`)."
    )


# ---------------------------------------------------------------------- sections


def header_section(
    meta: dict[str, Any], summary: list[dict[str, Any]], cells: list[dict[str, Any]], thesis: bool
) -> list[str]:
    """Command, machine, methods, the models as trained, and the thesis caveat."""
    protocol = meta["protocol"]
    out = [
        "Command:",
        "",
        "```",
        meta["command"],
        "```",
        "",
        f"Machine: {machines_line(meta)}.",
        "",
        "## Methods",
        "",
        methods_paragraph(meta),
        "",
        *models_section(meta, summary, cells),
    ]
    if thesis and protocol["leaked_test_images"]:
        out += [
            "**Caution — the thesis protocol leaks.** Augmented copies were added before the "
            "split, so "
            f"{protocol['leaked_test_images']} of the {protocol['test_images']} test images "
            "have their flipped-and-rotated twin in the training set. Its test "
            "scores are optimistic; use the `clean` protocol to compare architectures. "
            f"Published rows are from {THESIS_SOURCE}.",
            "",
        ]
    elif thesis:
        out += [
            "The thesis's split with the leak removed: the same test images, and no test "
            "image has an augmented twin in the training set. The published rows were "
            f"measured with the leak. Published rows are from {THESIS_SOURCE}.",
            "",
        ]
    return out


def _heading(title: str, thesis: bool, number: int) -> str:
    return f"## {title} (thesis Table {number})" if thesis else f"## {title}"


def accuracy_section(summary: list[dict[str, Any]], thesis: bool) -> list[str]:
    """Final train and test pixel accuracy (thesis Table 1; no published rows)."""
    table = Table(["Architecture", "Train accuracy", "Test accuracy"], [None, "max", "max"])
    for row in summary:
        table.add(
            [
                (_label(row), None),
                (_fmt(_num(row["train_accuracy"])), _num(row["train_accuracy"])),
                (_fmt(_num(row["test_accuracy"])), _num(row["test_accuracy"])),
            ]
        )
    return [
        _heading("Final accuracy", thesis, 1),
        "",
        table.render(),
        "",
        "Pixel accuracy (argmax) after the last epoch; train is the running mean over the "
        "last epoch's batches in training mode (augmented images, dropout active: the "
        "thesis models' output head drops half its logits), so it can sit well below test, "
        "which is measured in eval mode."
        + (
            " The thesis's Table 1 was published only as a figure, and its Keras "
            "`accuracy` with binary cross-entropy was element-wise binary accuracy over "
            "the one-hot channels, so no published row is shown."
            if thesis
            else ""
        ),
        "",
    ]


def loss_section(
    meta: dict[str, Any], summary: list[dict[str, Any]], reference: list[dict[str, str]]
) -> list[str]:
    """Final train and test loss (thesis Table 2), with the published rows."""
    table = Table(["Architecture", "Train loss", "Test loss"], [None, "min", "min"])
    for row in summary:
        table.add(
            [
                (_label(row), None),
                (_fmt(_num(row["train_loss"])), _num(row["train_loss"])),
                (_fmt(_num(row["test_loss"])), _num(row["test_loss"])),
            ]
        )
    for model in _published_models(reference):
        train, _ = _reference(reference, model, "loss", "train")
        test, _ = _reference(reference, model, "loss", "test")
        table.add(
            [(_published_label(model), None), (_fmt(train), train), (_fmt(test), test)],
            reference=True,
        )
    caption = (
        f"Loss: `{meta['config']['loss']}`; train is the running mean in training mode, "
        "as train accuracy above, so it is not comparable with test."
    )
    if reference:
        caption += " " + published_caption(meta)
    return [
        _heading("Final loss", is_thesis_reference(meta), 2),
        "",
        table.render(),
        "",
        caption,
        "",
    ]


def quality_section(
    meta: dict[str, Any],
    summary: list[dict[str, Any]],
    per_image: list[dict[str, Any]],
    reference: list[dict[str, str]],
) -> list[str]:
    """Jaccard and Dice per class over the test images (thesis Table 3), with the published
    rows and, on the WBC classes, the thesis's "Jaccard" (per-class pixel accuracy)."""
    classes = [c for c in metric_classes_of(meta) if c != meta["dataset"]["class_names"][0]]
    wbc = "cytoplasm" in classes and "nucleus" in classes
    headers = ["Architecture"]
    headers += [f"Jaccard {cls}" for cls in classes if cls != "cell"]
    headers += [f"Dice {'whole cell' if cls == 'cell' else cls}" for cls in classes]
    legacy_classes = ("cytoplasm", "nucleus") if wbc else ()
    headers += [f'Pixel acc. {cls} (thesis "Jaccard")' for cls in legacy_classes]
    table = Table(headers, [None] + ["max"] * (len(headers) - 1))
    for row in summary:
        cells: list[tuple[str, float | None]] = [(_label(row), None)]
        pairs = [(cls, "jaccard") for cls in classes if cls != "cell"]
        pairs += [(cls, "dice") for cls in classes]
        for cls, metric in pairs:
            mean = _num(row.get(f"{cls}_{metric}_mean"))
            cells.append((_pm(mean, _num(row.get(f"{cls}_{metric}_sem"))), mean))
        for cls in legacy_classes:
            legacy = _num(row.get(f"{cls}_jaccard_legacy_mean"))
            cells.append((_fmt(legacy), legacy))
        table.add(cells)
    published = _published_models(reference) if wbc else ()
    for model in published:
        cells = [(_published_label(model), None)] + [("—", None)] * (len(classes) - 1)
        for cls in classes:
            if cls == "cell":
                cells.append(("—", None))
                continue
            mean, sem = _reference(reference, model, "dice", "test", cls)
            cells.append((_pm(mean, sem), mean))
        for cls in legacy_classes:
            mean, sem = _reference(reference, model, "jaccard_legacy", "test", cls)
            cells.append((_pm(mean, sem), mean))
        table.add(cells, reference=True)
    n_images = len({(r["fold"], r["image_id"]) for r in per_image})
    seeds = len(meta["config"]["seeds"])
    return [
        _heading("Segmentation quality on the test images", is_thesis_reference(meta), 3),
        "",
        table.render(),
        "",
        f"Mean ± SEM over the {plural(n_images, 'test image')}"
        + (
            f"; each image's score is first averaged over the {seeds} training seeds, so n "
            "counts images, not seed × image rows"
            if seeds > 1
            else ""
        )
        + (
            " (every fold's test images, each once)"
            if len(meta["config"].get("folds_run") or [None]) > 1
            else ""
        )
        + ". Jaccard is intersection over union."
        + (
            " The last two columns are per-class binary pixel accuracy, which is what the "
            "thesis's \"Jaccard\" column measured (scikit-learn's removed "
            "`jaccard_similarity_score`); they are shown only to compare like with like and "
            "are not an overlap measure."
            if legacy_classes
            else ""
        )
        + (" " + published_caption(meta) if published else ""),
        "",
    ]


#: The thesis's test images (its 30-image test set), the n of its published means.
THESIS_TEST_IMAGES = 30
#: The thesis's best published row, the goal of a clean run on its data.
THESIS_GOAL_MODEL = "U-Net"
#: The classes of that goal (the thesis's two foreground classes).
GOAL_CLASSES = ("cytoplasm", "nucleus")


@dataclass(frozen=True)
class GoalRow:
    """One architecture held against the thesis's best published row."""

    architecture: str
    label: str  # the name as tables print it (flagged ones carry a mark)
    flagged: bool
    foreground: float  # mean Dice of the goal's classes
    images: int
    means: dict[str, tuple[float | None, float | None]]  # class: (mean, SEM)
    differences: dict[str, tuple[float, float, float]]  # class: (ours − thesis, CI low, high)
    verdict: str

    def dice_text(self, cls: str) -> str:
        """``0.9477 ± 0.0023``: the class's mean Dice ± SEM, as tables print it."""
        return _pm(*self.means[cls])


def thesis_goal(
    meta: dict[str, Any], summary: list[dict[str, Any]], reference: list[dict[str, str]]
) -> tuple[dict[str, tuple[float, float]], list[GoalRow]] | None:
    """The published goal ``{class: (mean, SEM)}`` and every architecture of ``summary``
    held against it (best foreground Dice first), or None where it does not apply: data
    other than ``wbc1``, a thesis protocol (its tables carry the published rows), no
    reference or no row with both classes."""
    if meta["dataset"].get("name") != "wbc1" or is_thesis_reference(meta) or not reference:
        return None
    goal = {
        cls: _reference(reference, THESIS_GOAL_MODEL, "dice", "test", cls) for cls in GOAL_CLASSES
    }
    if any(mean is None or sem is None for mean, sem in goal.values()):
        return None
    rows = [
        r
        for r in summary
        if all(_num(r.get(f"{c}_dice_mean")) is not None for c in GOAL_CLASSES)
        and _num(r.get("images"))
    ]
    if not rows:
        return None

    def foreground(row: dict[str, Any]) -> float:
        return float(np.mean([_num(row[f"{c}_dice_mean"]) for c in GOAL_CLASSES]))

    rows.sort(key=lambda r: (-foreground(r), r["architecture"]))
    held = []
    for row in rows:
        images = int(_num(row["images"]) or 0)
        means, differences = {}, {}
        for cls in GOAL_CLASSES:
            mean, sem = _num(row[f"{cls}_dice_mean"]), _num(row.get(f"{cls}_dice_sem"))
            means[cls] = (mean, sem)
            if sem is not None:
                goal_mean, goal_sem = goal[cls]
                differences[cls] = stats.welch_difference(
                    mean, sem, images, goal_mean, goal_sem, THESIS_TEST_IMAGES
                )
        below = [c for c, (_, _, high) in differences.items() if high < 0]
        above = [c for c, (_, low, _) in differences.items() if low > 0]
        if len(differences) < len(GOAL_CLASSES):
            verdict = "no CI (one image or one value)"
        elif below:
            verdict = f"falls short on {_join(below)}"
        elif len(above) == len(GOAL_CLASSES):
            verdict = "beats it on both classes"
        else:
            also = f", above on {_join(above)}" if above else ""
            verdict = f"reaches it (not told apart{also})"
        held.append(
            GoalRow(
                architecture=row["architecture"],
                label=_label(row),
                flagged=bool(row.get("flags") or row.get("flagged")),
                foreground=foreground(row),
                images=images,
                means=means,
                differences=differences,
                verdict=verdict,
            )
        )
    return {cls: (float(m), float(s)) for cls, (m, s) in goal.items()}, held


def goal_difference_text(difference: tuple[float, float, float] | None) -> str:
    """``−0.0223 [−0.0298, −0.0147]``: ours − thesis with its 95 % CI, as tables print it."""
    if difference is None:
        return "—"
    change, low, high = difference
    return f"{change:+.4f} [{low:+.4f}, {high:+.4f}]"


def goal_headline(rows: Sequence[GoalRow], where: str = "here") -> str:
    """The best unflagged architecture's verdict against the goal, in one sentence."""
    unflagged = [r for r in rows if not r.flagged]
    if not unflagged:
        return f"Every architecture {where} is flagged, so none is held against the goal."
    best = unflagged[0]
    parts = [
        f"{cls} {d[0]:+.4f} (95 % CI [{d[1]:+.4f}, {d[2]:+.4f}])"
        for cls, d in best.differences.items()
    ]
    return (
        f"The best unflagged architecture {where}, `{best.architecture}` (mean Dice of the "
        f"two classes {best.foreground:.4f} over {plural(best.images, 'test image')}), "
        f"{best.verdict}: {', '.join(parts)}."
    )


def goal_introduction(goal: dict[str, tuple[float, float]]) -> str:
    """What the published goal was and why it leaks."""
    return (
        f"The thesis's best row is its {THESIS_GOAL_MODEL} (Dice cytoplasm "
        f"{_pm(*goal['cytoplasm'])}, nucleus {_pm(*goal['nucleus'])} over its "
        f"{THESIS_TEST_IMAGES} test images), scored on a split that leaks: 24 of those 30 "
        "images had a flipped twin in its training set."
    )


#: How a difference from the published row is computed and read, under every goal table.
GOAL_METHOD = (
    "Each difference is this run's mean minus the published one, with a Welch 95 % CI "
    "from the two means' SEMs (ours over this run's test images, seed-averaged; the "
    "thesis's over its 30): the two sets of images are different, so nothing is paired. "
    '"Falls short" means the whole CI is below 0; "not told apart", that it contains '
    "0."
)


def thesis_goal_section(
    meta: dict[str, Any], summary: list[dict[str, Any]], reference: list[dict[str, str]]
) -> list[str]:
    """On the thesis's data (``wbc1``) under a protocol that does not leak: every
    architecture's Dice against the thesis's best published row, with Welch CIs.

    The published U-Net (Dice 0.970 cytoplasm, 0.988 nucleus) was scored on a split in which
    24 of its 30 test images had a flipped twin in training. Reaching it without the leak is
    the goal of an honest reproduction; the difference says by how much a run does or not.
    """
    held = thesis_goal(meta, summary, reference)
    if held is None:
        return []
    goal, rows = held
    headers = ["Architecture"]
    for cls in GOAL_CLASSES:
        headers += [f"Dice {cls}", f"− thesis {goal[cls][0]:.4f} (95 % CI)"]
    headers.append("Against the thesis")
    table = Table(headers, [None] + ["max", None] * len(GOAL_CLASSES) + [None])
    for row in rows:
        cells: list[tuple[str, float | None]] = [(row.label, None)]
        for cls in GOAL_CLASSES:
            cells.append((row.dice_text(cls), row.means[cls][0]))
            cells.append((goal_difference_text(row.differences.get(cls)), None))
        cells.append((row.verdict, None))
        table.add(cells)
    return [
        "## Against the thesis's published numbers",
        "",
        goal_introduction(goal) + " The goal of a run on the same data under protocol "
        f"`{meta['protocol']['name']}`, which does not leak, is to reach those numbers "
        "without the leak. " + goal_headline(rows),
        "",
        table.render(),
        "",
        GOAL_METHOD + " The published model was the full-width Keras U-Net trained on the "
        "leaky split; this run's settings are in Methods.",
        "",
    ]


def cost_section(summary: list[dict[str, Any]], reference: list[dict[str, str]]) -> list[str]:
    """Training time, throughput, peak memory and size, with the published times."""
    table = Table(
        [
            "Architecture",
            "Train s",
            "Train + eval s",
            "Images/s",
            "Peak memory MB",
            "Parameters",
            "GFLOPs / image",
        ],
        [None, "min", "min", "max", "min", None, None],
    )
    for row in summary:
        params = _num(row["params"])
        table.add(
            [
                (_label(row), None),
                (_fmt(_num(row["train_seconds"]), 1), _num(row["train_seconds"])),
                (_fmt(_num(row["total_seconds"]), 1), _num(row["total_seconds"])),
                (_fmt(_num(row["images_per_second"]), 1), _num(row["images_per_second"])),
                (_fmt(_num(row["peak_memory_mb"]), 0), _num(row["peak_memory_mb"])),
                ("—" if params is None else f"{int(params):,}", None),
                (_fmt(_num(row["gflops"]), 3), None),
            ]
        )
    for model in _published_models(reference):
        seconds, _ = _reference(reference, model, "train_seconds", "train")
        table.add(
            [
                (_published_label(model, "Keras, full width, 30 epochs, Colab GPU 2018"), None),
                (_fmt(seconds, 1), seconds),
                *[("—", None)] * 5,
            ],
            reference=True,
        )
    return [
        "## Training time and cost",
        "",
        table.render(),
        "",
        "Seconds are per run (mean over seeds and folds), wall time with the device "
        "synchronised; peak memory is CUDA max allocated, or on CPU the process's peak "
        "resident set."
        + (" Published times were on different hardware and are not ranked." if reference else ""),
        "",
    ]


def failures_section(summary: list[dict[str, Any]]) -> list[str]:
    failed = [row for row in summary if row["status"] != "ok"]
    if not failed:
        return []
    return [
        "## Failures",
        "",
        *[f"- `{row['architecture']}`: {row['error']}" for row in failed],
        "",
    ]


def figures_section(
    thesis: bool = False, compared: bool = False, predicted: bool = False
) -> list[str]:
    """The figures :func:`render_figures` draws: ``accuracy_cost.png`` when two or more
    architectures have results (``compared``), ``confusion.png`` when a cell predicted."""

    def also(figure: int) -> str:
        return f" (thesis Figure {figure})" if thesis else ""

    return (
        [
            "## Figures",
            "",
            "Per epoch, every architecture on shared axes (line: mean over runs; band: lowest to "
            "highest run): test foreground Dice, test loss and train loss.",
            "",
            "![curves](curves.png)",
            "",
            f"Loss per epoch{also(6)}:",
            "",
            "![loss](curves_loss.png)",
            "",
            f"Accuracy per epoch{also(5)} (pixel accuracy counts the background too: compare "
            "architectures by Dice):",
            "",
            "![accuracy](curves_accuracy.png)",
            "",
            f"Predictions{also(7)}: the best, median and worst test image by the architectures' "
            "mean foreground Dice and the one they disagree on most; input, each architecture "
            "(with its Dice on the image), ground truth; class colours in the legend.",
            "",
            "![predictions](predictions.png)",
            "",
        ]
        + (
            [
                "Accuracy against cost: the primary endpoint (95 % CI over test images) against "
                "training time and parameters; filled points are on the Pareto front.",
                "",
                "![accuracy and cost](accuracy_cost.png)",
                "",
            ]
            if compared
            else []
        )
        + (
            [
                "Confusion matrices normalised by the truth (numbers in `confusion.csv`): where "
                "each true class's pixels went.",
                "",
                "![confusion](confusion.png)",
                "",
            ]
            if predicted
            else []
        )
    )


def _p(value: float | None) -> str:
    if value is None:
        return "—"
    return "< 0.0001" if value < 1e-4 else f"{value:.4f}"


def statistics_section(rows: list[dict[str, Any]], primary_classes: Sequence[str]) -> list[str]:
    """The paired comparison and ranking, when more than one architecture has results."""
    if len(rows) < 2:
        return []
    primary = " and ".join(", ".join(primary_classes).rsplit(", ", 1))
    table = Table(
        [
            "Architecture",
            "Mean rank",
            "Mean ± SEM over runs (n runs)",
            "Mean ± SEM over images (n images)",
            "Median Δ vs best [95 % CI]",
            "p (Wilcoxon)",
            "p (Holm)",
            "Significant at 0.05",
        ],
        [None, "min", None, None, None, None, None, None],
    )
    compared = any(row.get("reference") for row in rows)

    def order(row: dict[str, Any]) -> tuple[float, float, str]:
        # Ranked ones by rank; flagged ones after them, by their mean over images.
        return (
            row.get("mean_rank") or math.inf,
            -(row.get("image_mean") or 0.0),
            row["architecture"],
        )

    for row in sorted(rows, key=order):
        if row.get("reference"):
            delta = f"{row['median_difference']:+.4f} [{row['ci_low']:+.4f}, {row['ci_high']:+.4f}]"
            significant = "yes" if row["significant"] else "no"
        elif row.get("flagged"):
            delta, significant = f"not compared ({FLAG_MARK} flagged)", "—"
        elif compared:
            delta, significant = "best (reference)", "—"
        else:
            delta, significant = "no other unflagged architecture to compare with", "—"
        table.add(
            [
                (_label(row), None),
                (_fmt(row.get("mean_rank"), 2), row.get("mean_rank")),
                (f"{_pm(row['run_mean'], _nan_none(row['run_sem']))} ({row['runs']})", None),
                (f"{_pm(row['image_mean'], _nan_none(row['image_sem']))} ({row['images']})", None),
                (delta, None),
                (_p(row.get("p_value")), None),
                (_p(row.get("p_holm")), None),
                (significant, None),
            ]
        )
    return [
        "## Statistical comparison",
        "",
        f"Primary endpoint: per-image foreground Dice, the mean Dice over {primary} of a "
        "test image, averaged over the seeds that ran. Each architecture is compared "
        "with the best one (highest mean) on the same test images: Wilcoxon signed-rank test "
        "(two-sided) with Holm's correction across the comparisons, and the median paired "
        f"difference with a percentile bootstrap 95 % CI ({stats.BOOTSTRAP_RESAMPLES:,} "
        f"resamples of images, seed {stats.BOOTSTRAP_SEED}). Mean rank: per image, "
        "architectures ranked by the endpoint (1 = best, ties averaged), then averaged over "
        "images. Per-run: mean ± SEM of the per-run means, n = runs (seeds × folds), the "
        "variation between training runs; per-image: mean ± SEM over test images of the "
        "seed-averaged scores, n = images, the variation between images. The numbers are in "
        "`statistics.csv`.",
        "",
        table.render(),
        "",
    ]


def _nan_none(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else value


def _figure_saver() -> tuple[Any, Callable[[Any, Path], None]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def save(figure: Any, path: Path) -> None:
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
        plt.close(figure)
        atomic_write_bytes(path, buffer.getvalue())

    return plt, save


def _rgb(colour: Sequence[int]) -> tuple[float, ...]:
    return tuple(channel / 255 for channel in colour)


#: Figure names :func:`render_figures` writes (``RUN_DIR/<name>.png``).
FIGURE_NAMES = ("curves", "curves_loss", "curves_accuracy", "predictions")


@dataclass(frozen=True)
class Curve:
    """One architecture's values of one metric per epoch: the mean over its runs (seeds ×
    folds) and the lowest and highest run."""

    architecture: str
    epochs: tuple[int, ...]
    mean: tuple[float, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]
    runs: int


def curves_of(
    history: Sequence[dict[str, Any]],
    split: str,
    metric: str,
    runs: Collection[tuple[str, int, int | None]] | None = None,
) -> list[Curve]:
    """Per architecture (in order of appearance), ``metric`` of ``split`` per epoch over its
    runs; empty values (a train row's Dice, an older directory's) are left out, and so is
    an architecture without any. ``runs``: only these (architecture, seed, fold) runs."""
    values: dict[str, dict[int, list[float]]] = {}
    counted: dict[str, set[tuple[int, int | None]]] = {}
    for row in history:
        key = (row["architecture"], row["seed"], row["fold"])
        if row["split"] != split or (runs is not None and key not in runs):
            continue
        value = _num(row.get(metric))
        if value is None:
            continue
        values.setdefault(row["architecture"], {}).setdefault(int(row["epoch"]), []).append(value)
        counted.setdefault(row["architecture"], set()).add((row["seed"], row["fold"]))
    curves = []
    for name, epochs in values.items():
        order = sorted(epochs)
        curves.append(
            Curve(
                name,
                tuple(order),
                tuple(float(np.mean(epochs[e])) for e in order),
                tuple(min(epochs[e]) for e in order),
                tuple(max(epochs[e]) for e in order),
                len(counted[name]),
            )
        )
    return curves


def epoch_limits(epochs: Collection[int]) -> tuple[float, float]:
    """x limits that show every epoch with a margin: half an epoch, or 3 % of the span when
    that is more (a 1-epoch run: 0.5 to 1.5, its point in the middle)."""
    if not epochs:
        return 0.5, 1.5
    low, high = min(epochs), max(epochs)
    margin = max(0.5, 0.03 * (high - low))
    return low - margin, high + margin


# Okabe & Ito's colour-blind-safe palette (yellow last: faint on white), then tab10's.
ARCHITECTURE_COLOURS = (
    "#0072B2",
    "#E69F00",
    "#009E73",
    "#CC79A7",
    "#56B4E9",
    "#D55E00",
    "#000000",
    "#F0E442",
    "#8c564b",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
ARCHITECTURE_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")


def _architecture_styles(names: Sequence[str]) -> dict[str, tuple[str, str]]:
    """A colour and a marker per architecture, the same in every panel of every figure."""
    return {
        name: (
            ARCHITECTURE_COLOURS[i % len(ARCHITECTURE_COLOURS)],
            ARCHITECTURE_MARKERS[i % len(ARCHITECTURE_MARKERS)],
        )
        for i, name in enumerate(names)
    }


def _draw_curves(
    ax: Any, curves: Sequence[Curve], styles: dict[str, tuple[str, str]], title: str
) -> None:
    """Each curve as its mean line with markers, and a band from its lowest to its highest
    run (a bar at a single epoch); integer epochs on the x axis. In a run of one epoch the
    architectures' points are set a little apart, so that equal values (every model at
    chance after one epoch) do not hide one another."""
    from matplotlib.ticker import MaxNLocator

    epochs = {e for curve in curves for e in curve.epochs}
    size = 5 if len(epochs) <= 10 else 3
    dodge = 0.08 if len(epochs) == 1 else 0.0
    for i, curve in enumerate(curves):
        colour, marker = styles[curve.architecture]
        shift = dodge * (i - (len(curves) - 1) / 2)
        x = [e + shift for e in curve.epochs]
        ax.plot(
            x,
            curve.mean,
            color=colour,
            marker=marker,
            markersize=size,
            linewidth=1.6,
            label=curve.architecture,
        )
        if curve.runs > 1 and len(curve.epochs) > 1:
            ax.fill_between(x, curve.low, curve.high, color=colour, alpha=0.15, lw=0)
        elif curve.runs > 1:
            ax.vlines(x, curve.low, curve.high, color=colour, alpha=0.5, lw=3)
    ax.set_xlim(*epoch_limits(epochs))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.set_xlabel("epoch")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if not curves:
        ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes)


def _curves_figure(
    panels: Sequence[tuple[str, list[Curve]]],
    styles: dict[str, tuple[str, str]],
    runs: dict[str, int],
    share_y: bool,
    note: str = "",
) -> Any:
    """One row of panels on shared x (and, if asked, y) axes, with one legend below."""
    plt, _ = _figure_saver()
    width = max(6.0, 4.4 * len(panels))
    figure, axes = plt.subplots(
        1,
        len(panels),
        figsize=(width, 3.9),
        sharex=True,
        sharey=share_y,
        squeeze=False,
        layout="constrained",
    )
    for ax, (title, curves) in zip(axes.flat, panels, strict=True):
        _draw_curves(ax, curves, styles, title)
    if share_y:  # a shared axis labels its values on the first panel only
        for ax in axes.flat[1:]:
            ax.tick_params(labelleft=True)
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], color=colour, marker=marker, label=f"{name} ({plural(runs[name], 'run')})")
        for name, (colour, marker) in styles.items()
        if name in runs
    ]
    if handles:
        figure.legend(
            handles=handles,
            loc="outside lower center",
            # as many entries a row as fit (about 2 inches each), rows as even as can be
            ncols=math.ceil(len(handles) / math.ceil(len(handles) / max(1, int(width / 2.1)))),
            frameon=False,
            fontsize=9,
        )
    if note:
        figure.suptitle(note, fontsize=8, color="0.3")
    return figure


def _background_share(per_image: Sequence[dict[str, Any]], background: str) -> float | None:
    """The share of the test pixels that are background (from the per-image counts of one
    architecture and seed; None in directories without counts)."""
    first = next((r for r in per_image if r["class"] == background), None)
    if first is None:
        return None
    rows = [
        r
        for r in per_image
        if r["class"] == background
        and (r["architecture"], r["seed"]) == (first["architecture"], first["seed"])
    ]
    if any(r.get("tp") is None for r in rows):
        return None
    total = sum(r["tp"] + r["fp"] + r["fn"] + r["tn"] for r in rows)
    return sum(r["tp"] + r["fn"] for r in rows) / total if total else None


def render_curves(run: RunDir, meta: dict[str, Any], tables: RunTables) -> None:
    """The learning curves, every architecture on the same axes (one colour and marker
    each; the line is the mean over its runs, the band the lowest to the highest run):

    - ``curves.png``: test foreground Dice (when the history has it), test loss, train loss;
    - ``curves_loss.png`` and ``curves_accuracy.png``: train and test on a shared y axis
      (thesis Figures 6 and 5). Pixel accuracy is not in ``curves.png``: background is
      most of the pixels, so it says little about the cell.

    Only runs that finished (status ok) are drawn: a failed run's partial curve would bend
    the mean at the epoch where it stops.
    """
    plt, save = _figure_saver()
    ok = {(c["architecture"], c["seed"], c["fold"]) for c in tables.cells if c["status"] == "ok"}
    history = tables.history
    names = list(dict.fromkeys(r["architecture"] for r in history if r["architecture"]))
    styles = _architecture_styles(names)
    runs: dict[str, int] = {}
    for name, _, _ in ok:
        runs[name] = runs.get(name, 0) + 1
    config = meta["config"]
    foreground = _join(list(stats.primary_classes(meta["dataset"]["class_names"])))
    loss = config.get("loss") or "loss"
    several = any(count > 1 for count in runs.values())
    note = "line: mean over runs (seeds × folds); band: lowest to highest run" if several else ""
    dice = curves_of(history, "test", "dice", ok)
    test_loss = curves_of(history, "test", "loss", ok)
    train_loss = curves_of(history, "train", "loss", ok)
    dice_title = f"test foreground Dice ({foreground})"

    panels = [(f"test loss ({loss})", test_loss), (f"train loss ({loss})", train_loss)]
    if dice:
        panels.insert(0, (dice_title, dice))
    figure = _curves_figure(panels, styles, runs, share_y=False, note=note)
    # the two loss panels on one scale, every point and band inside
    values = [v for curve in test_loss + train_loss for v in (*curve.low, *curve.high)]
    if values:
        margin = 0.06 * (max(values) - min(values)) or 0.05 * abs(max(values)) or 0.05
        for ax in figure.axes[-2:]:
            ax.set_ylim(min(values) - margin, max(values) + margin)
    save(figure, run.figure_path("curves"))

    figure = _curves_figure(
        [(f"train loss ({loss})", train_loss), (f"test loss ({loss})", test_loss)],
        styles,
        runs,
        share_y=True,
        note=note,
    )
    save(figure, run.figure_path("curves_loss"))

    background = _background_share(tables.per_image, meta["dataset"]["class_names"][0])
    share = (
        f"; {background:.0%} of the test pixels are background" if background is not None else ""
    )
    figure = _curves_figure(
        [
            ("train pixel accuracy", curves_of(history, "train", "accuracy", ok)),
            ("test pixel accuracy", curves_of(history, "test", "accuracy", ok)),
        ],
        styles,
        runs,
        share_y=True,
        note=(f"{note}\n" if note else "")
        + f"Pixel accuracy counts background pixels too{share}: compare models by Dice.",
    )
    save(figure, run.figure_path("curves_accuracy"))


# Class colours of the label maps in predictions.png (and of `bench predict`'s overlays):
# background dark grey, so that it recedes; cytoplasm sky blue and nucleus orange, apart
# for every kind of colour vision (Okabe & Ito's palette).
CLASS_COLOURS = np.array([[45, 45, 45], [86, 180, 233], [230, 159, 0]], dtype=np.uint8)
#: Colours of classes beyond the third (a folder dataset's), Okabe & Ito's others.
MORE_CLASS_COLOURS = np.array(
    [[0, 158, 115], [204, 121, 167], [240, 228, 66], [0, 114, 178], [213, 94, 0]],
    dtype=np.uint8,
)


def class_colours(num_classes: int) -> np.ndarray:
    """(num_classes, 3) uint8 colours of the figures' label maps (the last one repeats)."""
    colours = np.concatenate([CLASS_COLOURS, MORE_CLASS_COLOURS])
    return colours[np.minimum(np.arange(num_classes), len(colours) - 1)]


def _colourise(label_png: Path, palette: Sequence[int]) -> np.ndarray:
    """A saved label map (the dataset's grey palette) in the figures' class colours."""
    from PIL import Image

    grey = np.asarray(Image.open(label_png))
    lookup = np.zeros(256, dtype=np.int64)
    for index, value in enumerate(palette):
        lookup[value] = index
    return class_colours(len(palette))[lookup[grey]]


def image_dice(
    per_image: Sequence[dict[str, Any]], seed: int, classes: Sequence[str]
) -> dict[str, dict[str, float]]:
    """``{architecture: {image_id: foreground Dice}}`` of one seed's per-image rows: the
    mean Dice over ``classes`` of each test image."""
    rows = [r for r in per_image if r["seed"] == seed]
    return {
        name: {image_id: score for (_, image_id), score in images.items()}
        for name, images in stats.image_scores(rows, "dice", classes).items()
    }


def choose_figure_images(
    scores: dict[str, dict[str, float]], candidates: Sequence[str]
) -> list[tuple[str, str]]:
    """The test images predictions.png shows, each with why: ``(image_id, reason)``.

    Among ``candidates`` (the images whose input was kept), ranked by the mean over
    architectures of their foreground Dice: the best, the median (the lower one of an even
    count) and the worst; then the image on which the architectures disagree most (the
    largest difference between the highest and the lowest Dice), which adds a row only when
    it is not one of those three. Ties go to the smaller image id. Without any score, the
    first four candidates.
    """
    mean: dict[str, float] = {}
    spread: dict[str, float] = {}
    for image_id in candidates:
        values = [images[image_id] for images in scores.values() if image_id in images]
        if values:
            mean[image_id] = float(np.mean(values))
            spread[image_id] = max(values) - min(values)
    if not mean:
        return [(image_id, "") for image_id in sorted(candidates)[:4]]
    ranked = sorted(mean, key=lambda i: (-mean[i], i))
    chosen: dict[str, list[str]] = {}
    for reason, image_id in (
        ("best", ranked[0]),
        ("median", ranked[(len(ranked) - 1) // 2]),
        ("worst", ranked[-1]),
    ):
        chosen.setdefault(image_id, []).append(reason)
    if len(scores) > 1:
        disputed = min(spread, key=lambda i: (-spread[i], i))
        chosen.setdefault(disputed, []).append("most disagreement")
    return [(image_id, ", ".join(reasons)) for image_id, reasons in chosen.items()]


def render_predictions(run: RunDir, meta: dict[str, Any], tables: RunTables) -> None:
    """Thesis Figure 7, with the informative test images: rows = the best, median and worst
    test image by the mean foreground Dice over architectures, and the one they disagree on
    most (:func:`choose_figure_images`, among the images whose input was kept); columns =
    input, each architecture's prediction (first seed) with its Dice, ground truth; a
    colour key of the classes below."""
    from matplotlib.patches import Patch
    from PIL import Image

    plt, save = _figure_saver()
    palette = meta["dataset"]["palette"]
    class_names = list(meta["dataset"]["class_names"])
    primary_seed = meta["config"]["seeds"][0]
    foreground = stats.primary_classes(class_names)
    candidates = [i for i in run.figure_input_ids() if run.truth_path(i).is_file()]
    names = list(dict.fromkeys(r["architecture"] for r in tables.cells))
    scores = image_dice(tables.per_image, primary_seed, foreground)
    chosen = choose_figure_images(scores, candidates)
    if not chosen:
        figure = plt.figure(figsize=(4, 1))
        figure.text(0.5, 0.5, "no test images", ha="center")
        save(figure, run.figure_path("predictions"))
        return
    columns = ["input", *names, "ground truth"]
    figure, axes = plt.subplots(
        len(chosen),
        len(columns),
        figsize=(1.85 * len(columns) + 0.5, 1.95 * len(chosen) + 0.9),
        squeeze=False,
        layout="constrained",
    )
    for r, (image_id, reason) in enumerate(chosen):
        row_scores = {n: scores[n][image_id] for n in names if image_id in scores.get(n, {})}
        # bold: the row's best as printed (two that print the same are both best)
        top = max(round(v, 3) for v in row_scores.values()) if row_scores else None
        for c, column in enumerate(columns):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if column == "input":
                ax.imshow(np.asarray(Image.open(run.input_path(image_id))))
                mean = (
                    f"\n{'mean ' if len(row_scores) > 1 else ''}Dice "
                    f"{np.mean(list(row_scores.values())):.3f}"
                    if row_scores
                    else ""
                )
                ax.set_ylabel(
                    f"{reason}\n{image_id}{mean}" if reason else image_id,
                    fontsize=8,
                    fontweight="bold" if reason else "normal",
                )
            elif column == "ground truth":
                ax.imshow(_colourise(run.truth_path(image_id), palette))
            else:
                path = run.prediction_path(column, primary_seed, image_id, primary_seed)
                if path.exists():
                    ax.imshow(_colourise(path, palette))
                else:
                    ax.text(0.5, 0.5, "failed", ha="center", va="center", fontsize=8)
                if column in row_scores:
                    ax.set_xlabel(
                        f"Dice {row_scores[column]:.3f}",
                        fontsize=8,
                        fontweight="bold"
                        if len(row_scores) > 1 and round(row_scores[column], 3) == top
                        else "normal",
                    )
            if r == 0:
                ax.set_title(column, fontsize=8)
    colours = class_colours(len(class_names))
    figure.legend(
        handles=[
            Patch(facecolor=_rgb(colours[i]), edgecolor="0.6", label=name)
            for i, name in enumerate(class_names)
        ],
        loc="outside lower center",
        ncols=len(class_names),
        frameon=False,
        fontsize=8,
    )
    import textwrap

    caption = (
        f"Seed {primary_seed}. Under each prediction: the image's foreground Dice (mean over "
        f"{_join(list(foreground))}" + ("; bold: the row's best)." if len(names) > 1 else ").")
    )
    # about 18 characters of 8-point text an inch
    figure.suptitle(
        textwrap.fill(caption, int(figure.get_figwidth() * 18)), fontsize=8, color="0.3"
    )
    save(figure, run.figure_path("predictions"))


def pareto_front(points: list[tuple[str, float, float]]) -> list[str]:
    """The names of ``points`` (``(name, cost, score)``) on the Pareto front: no other point
    has a cost as low and a score as high, and one of them strictly better. Lower cost and
    higher score are better; a point with a missing (NaN) value is on no front. The names
    come in the order of ``points``."""
    valid = [(n, c, s) for n, c, s in points if not (math.isnan(c) or math.isnan(s))]
    return [
        name
        for name, cost, score in valid
        if not any(c <= cost and s >= score and (c < cost or s > score) for _, c, s in valid)
    ]


def _read_table(run: RunDir, name: str) -> list[dict[str, str]]:
    from bench.run_dir import read_csv

    return read_csv(run.table_path(name))


Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in display pixels


def _overlap(a: Box, b: Box) -> float:
    """The area two boxes share (0 when they are apart)."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    return width * height if width > 0 and height > 0 else 0.0


def _label_candidates(
    anchor: tuple[float, float], size: tuple[float, float]
) -> list[tuple[float, Box]]:
    """Where a label of ``size`` (w, h) may go around ``anchor``, as (distance, box), nearest
    first: beside the point on either side (also slid up or down by whole label heights, so
    that crowded labels stack), above and below it, at growing distances."""
    x, y = anchor
    w, h = size
    boxes = []  # (preference among equally near places, box): right, left, above, below
    for gap in (10.0, 18.0, 30.0, 46.0, 66.0, 90.0):
        for step in range(-4, 5):
            dy = step * (h + 2)
            boxes.append((0, (x + gap, y - h / 2 + dy, x + gap + w, y + h / 2 + dy)))
            boxes.append((1, (x - gap - w, y - h / 2 + dy, x - gap, y + h / 2 + dy)))
        boxes.append((2, (x - w / 2, y + gap, x + w / 2, y + gap + h)))
        boxes.append((3, (x - w / 2, y - gap - h, x + w / 2, y - gap)))
    ranked = []
    for preference, box in boxes:
        nearest_x = min(max(x, box[0]), box[2])
        nearest_y = min(max(y, box[1]), box[3])
        distance = math.hypot(nearest_x - x, nearest_y - y)
        ranked.append((round(distance, 6), preference, box))
    ranked.sort()
    return [(distance, box) for distance, _, box in ranked]


def place_labels(
    anchors: Sequence[tuple[float, float]],
    sizes: Sequence[tuple[float, float]],
    bounds: Box,
    obstacles: Sequence[Box] = (),
    pad: float = 2.0,
) -> list[Box]:
    """A box for each label (display pixels), one after another in the given order: the
    nearest candidate (:func:`_label_candidates`) inside ``bounds`` that overlaps neither a
    label placed before it nor an ``obstacle`` (markers, error bars, the legend), each kept
    ``pad`` pixels apart. When none is free, the candidate with the least overlap. Pure and
    deterministic: the same input gives the same boxes."""
    placed: list[Box] = []
    for anchor, size in zip(anchors, sizes, strict=True):
        best: tuple[float, float, Box] | None = None
        for distance, box in _label_candidates(anchor, size):
            padded = (box[0] - pad, box[1] - pad, box[2] + pad, box[3] + pad)
            outside = (
                max(0.0, bounds[0] - box[0])
                + max(0.0, box[2] - bounds[2])
                + max(0.0, bounds[1] - box[1])
                + max(0.0, box[3] - bounds[3])
            )
            clash = sum(_overlap(padded, other) for other in [*placed, *obstacles])
            penalty = clash + 1000.0 * outside
            if penalty == 0:
                best = (0.0, distance, box)
                break
            if best is None or (penalty, distance) < best[:2]:
                best = (penalty, distance, box)
        assert best is not None
        placed.append(best[2])
    return placed


def _label_points(
    figure: Any,
    ax: Any,
    labels: Sequence[tuple[str, float, float, float]],
    path: Sequence[tuple[float, float]] = (),
) -> None:
    """Annotate each ``(text, x, y, error half-width)`` point of ``ax`` so that no label
    overlaps another, a marker, an error bar, the legend or the line through ``path``
    (data coordinates; :func:`place_labels`); a label set away from its point gets a thin
    leader line. The figure's layout must be final."""
    renderer = figure.canvas.get_renderer()
    to_pixels = ax.transData.transform
    anchors = [tuple(to_pixels((x, y))) for _, x, y, _ in labels]
    obstacles: list[Box] = []
    for start, end in itertools.pairwise(path):
        (x0, y0), (x1, y1) = to_pixels(start), to_pixels(end)
        obstacles.append((min(x0, x1) - 1, min(y0, y1) - 1, max(x0, x1) + 1, max(y0, y1) + 1))
    for (_, x, y, half), (px, py) in zip(labels, anchors, strict=True):
        low, high = to_pixels((x, y - half))[1], to_pixels((x, y + half))[1]
        obstacles.append((px - 6, min(py - 6, low - 1), px + 6, max(py + 6, high + 1)))
    legend = ax.get_legend()
    if legend is not None:
        obstacles.append(tuple(legend.get_window_extent(renderer).extents))
    probes = [ax.text(0, 0, text, fontsize=8) for text, *_ in labels]
    sizes = []
    for probe in probes:
        extent = probe.get_window_extent(renderer)
        sizes.append((extent.width, extent.height))
        probe.remove()
    frame = ax.get_window_extent(renderer).extents
    bounds = (frame[0] + 2, frame[1] + 2, frame[2] - 2, frame[3] - 2)
    boxes = place_labels(anchors, sizes, bounds, obstacles)
    points_per_pixel = 72.0 / figure.dpi
    for (text, x, y, _), (px, py), box in zip(labels, anchors, boxes, strict=True):
        nearest_x, nearest_y = min(max(px, box[0]), box[2]), min(max(py, box[1]), box[3])
        leader = None
        if math.hypot(nearest_x - px, nearest_y - py) > 12:  # away from its point: a line
            side = 0.0 if box[0] >= px else 1.0 if box[2] <= px else 0.5
            leader = {
                "arrowstyle": "-",
                "color": "0.55",
                "lw": 0.6,
                "shrinkA": 1,
                "shrinkB": 5,
                "relpos": (side, 0.5),
            }
        ax.annotate(
            text,
            (x, y),
            xytext=((box[0] - px) * points_per_pixel, (box[1] - py) * points_per_pixel),
            textcoords="offset points",
            fontsize=8,
            ha="left",
            va="bottom",
            arrowprops=leader,
        )


def render_accuracy_cost(run: RunDir, meta: dict[str, Any], tables: RunTables) -> None:
    """``accuracy_cost.png``: the primary endpoint (mean foreground Dice over the test
    images, 95 % CI ≈ ±1.96 SEM) against the training time per run and against the
    parameters, one point per architecture, from ``summary.csv`` and ``statistics.csv``.
    The Pareto front (higher Dice, lower cost) is a step line through filled points;
    dominated points are hollow; flagged architectures are triangles marked "⚠". Each label
    is placed apart from the others and off the markers (:func:`place_labels`), so crowded
    points stay readable. Drawn only when two or more architectures have a score."""
    points = accuracy_cost_points(run)
    if len(points) < 2:
        return
    plt, save = _figure_saver()
    save(accuracy_cost_figure(plt, points), run.figure_path("accuracy_cost"))


CostPoint = tuple[str, float, float, int, dict[str, str]]


def accuracy_cost_points(run: RunDir) -> list[CostPoint]:
    """``(name, mean, CI half-width, images, summary row)`` of every architecture with a
    score, from the run's ``statistics.csv`` and ``summary.csv``."""
    summary = {r["architecture"]: r for r in _read_table(run, "summary")}
    points = []
    for row in _read_table(run, "statistics"):
        name = row["architecture"]
        mean, sem = _num(row.get("image_mean")), _num(row.get("image_sem"))
        if name in summary and mean is not None and not math.isnan(mean):
            half = 1.96 * sem if sem is not None and not math.isnan(sem) else 0.0
            points.append((name, mean, half, int(_num(row.get("images")) or 0), summary[name]))
    return points


def accuracy_cost_figure(plt: Any, points: Sequence[CostPoint]) -> Any:
    """The figure of :func:`render_accuracy_cost` for its points
    (:func:`accuracy_cost_points`)."""
    figure, axes = plt.subplots(1, 2, figsize=(10, 4.2), layout="constrained")
    panels = (
        ("train_seconds", "training time per run (s)", False),
        ("params", "parameters (log scale)", True),
    )
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    labels: list[list[tuple[str, float, float, float]]] = []
    paths: list[list[tuple[float, float]]] = []  # the Pareto front's steps, per panel
    for ax, (column, xlabel, log) in zip(axes, panels, strict=True):
        costs = {name: _num(extra.get(column)) for name, *_, extra in points}
        usable = [
            (name, cost, mean)
            for name, mean, *_ in points
            if (cost := costs[name]) is not None and not math.isnan(cost) and (cost > 0 or not log)
        ]
        front = set(pareto_front(usable))
        panel_labels = []
        for i, (name, mean, half, _images, extra) in enumerate(points):
            cost = costs[name]
            if not any(name == u[0] for u in usable):
                continue
            flagged = bool(str(extra.get("flags") or "").strip())
            colour = colours[i % len(colours)]
            ax.errorbar(
                cost,
                mean,
                yerr=half,
                fmt="^" if flagged else "o",
                markersize=8,
                color=colour,
                markerfacecolor=colour if name in front else "white",
                capsize=3,
                zorder=3,
            )
            panel_labels.append((f"⚠ {name}" if flagged else name, cost, mean, half))
        # best score first: where points crowd, the best ones keep the nearest places
        panel_labels.sort(key=lambda label: (-label[2], label[0]))
        labels.append(panel_labels)
        steps = sorted((c, s) for n, c, s in usable if n in front)
        paths.append(
            [
                corner
                for (c0, s0), (c1, _) in itertools.pairwise(steps)
                for corner in ((c0, s0), (c1, s0))
            ]
            + steps[-1:]
        )
        if len(steps) > 1:
            xs, ys = zip(*steps, strict=True)
            ax.step(
                xs, ys, where="post", color="0.5", linestyle="--", zorder=1, label="Pareto front"
            )
            ax.legend(loc="lower right", fontsize=8, frameon=False)
        if log and usable:
            ax.set_xscale("log")
            # a narrow range: widen it to hold a power of ten, and no crowded minor labels
            from matplotlib.ticker import NullFormatter

            ax.xaxis.set_minor_formatter(NullFormatter())
            low, high = min(u[1] for u in usable), max(u[1] for u in usable)
            if high / low < 10:
                ax.set_xlim(low / 3.5, high * 3.5)
        else:
            ax.margins(x=0.12)  # room for the labels of the first and last points
        ax.margins(y=0.08)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("foreground Dice (mean over test images)")
        ax.grid(alpha=0.3)
    n = sorted({images for *_, images, _ in points})
    figure.suptitle(
        "Accuracy against cost. Bars: 95 % CI (±1.96 SEM over "
        f"n = {'/'.join(str(i) for i in n)} test images). Filled: on the Pareto front "
        "(higher Dice, lower cost); hollow: dominated; ▲ ⚠: flagged.",
        fontsize=8,
        color="0.3",
    )
    # The labels are placed in pixels, so the layout is settled first and then kept.
    figure.draw_without_rendering()
    figure.set_layout_engine("none")
    for ax, panel_labels, path in zip(axes, labels, paths, strict=True):
        _label_points(figure, ax, panel_labels, path)
    return figure


#: Columns of ``confusion.csv`` (:func:`render_confusion`).
CONFUSION_COLUMNS = ("architecture", "true_class", "predicted_class", "pixels", "fraction")


def label_palette(meta: dict[str, Any]) -> dict[int, int]:
    """The run's grey value -> class index mapping of its saved label maps."""
    return {int(grey): index for index, grey in enumerate(meta["dataset"]["palette"])}


def read_label_map(path: Path, palette: dict[int, int]) -> np.ndarray:
    """Class indices of a label map the run saved (truth or prediction), read with its
    grey palette (:func:`label_palette`)."""
    from bench.images import mask_to_classes, read_mask

    return mask_to_classes(read_mask(path), palette)[0]


def confusion_counts(run: RunDir, meta: dict[str, Any], architecture: str) -> np.ndarray | None:
    """``(K, K)`` pixel counts (rows: true class, columns: predicted class) over every test
    image of ``architecture``'s saved primary-seed predictions; None without any."""
    palette = label_palette(meta)
    k = len(meta["dataset"]["class_names"])
    seed = meta["config"]["seeds"][0]
    folder = run.prediction_path(architecture, seed, "_", seed).parent
    counts = np.zeros((k, k), dtype=np.int64)
    seen = False
    for path in sorted(folder.glob("*.png")):
        truth_path = run.truth_path(path.stem)
        if not truth_path.is_file():
            continue
        truth, predicted = read_label_map(truth_path, palette), read_label_map(path, palette)
        if truth.shape != predicted.shape:
            continue
        pairs = truth.astype(np.int64).ravel() * k + predicted.astype(np.int64).ravel()
        counts += np.bincount(pairs, minlength=k * k)[: k * k].reshape(k, k)
        seen = True
    return counts if seen else None


def render_confusion(run: RunDir, meta: dict[str, Any], tables: RunTables) -> None:
    """``confusion.csv`` and ``confusion.png``: each architecture's confusion matrix over
    its primary-seed test predictions, normalised by the truth (each row sums to 1).
    Architectures without saved predictions are left out."""
    class_names = list(meta["dataset"]["class_names"])
    names = list(dict.fromkeys(r["architecture"] for r in tables.cells))
    matrices = {}
    for name in names:
        counts = confusion_counts(run, meta, name)
        if counts is not None:
            matrices[name] = counts
    rows = []
    fractions = {}
    for name, counts in matrices.items():
        totals = counts.sum(axis=1, keepdims=True)
        fraction = np.divide(counts, totals, out=np.full(counts.shape, np.nan), where=totals > 0)
        fractions[name] = fraction
        for t, true_class in enumerate(class_names):
            for p, predicted_class in enumerate(class_names):
                rows.append(
                    {
                        "architecture": name,
                        "true_class": true_class,
                        "predicted_class": predicted_class,
                        "pixels": int(counts[t, p]),
                        "fraction": _nan_none(float(fraction[t, p])),
                    }
                )
    write_csv(run.table_path("confusion"), CONFUSION_COLUMNS, rows)
    if not matrices:
        return
    plt, save = _figure_saver()
    k = len(class_names)
    side = 0.75 * k + 1.2
    figure, axes = plt.subplots(
        1,
        len(matrices),
        figsize=(side * len(matrices) + 0.8, side + 0.6),
        squeeze=False,
        layout="constrained",
    )
    image = None
    for ax, (name, fraction) in zip(axes[0], fractions.items(), strict=True):
        image = ax.imshow(np.nan_to_num(fraction), cmap="Blues", vmin=0.0, vmax=1.0)
        for t in range(k):
            for p in range(k):
                value = fraction[t, p]
                ax.text(
                    p,
                    t,
                    "–" if math.isnan(value) else f"{value:.2f}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if not math.isnan(value) and value > 0.6 else "black",
                )
        ax.set_title(name, fontsize=9)
        ax.set_xticks(range(k), class_names, fontsize=7, rotation=30)
        ax.set_yticks(range(k), class_names, fontsize=7)
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_ylabel("true", fontsize=8)
    figure.colorbar(image, ax=list(axes[0]), shrink=0.8, label="share of the true class")
    seed = meta["config"]["seeds"][0]
    figure.suptitle(
        f"Confusion normalised by the truth (rows sum to 1), seed {seed}, all test pixels",
        fontsize=8,
        color="0.3",
    )
    save(figure, run.figure_path("confusion"))


#: report.html's look: readable tables, figures that fit the page. Nothing is fetched from
#: elsewhere (no fonts, scripts or files), so the one file works offline and when mailed.
HTML_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  max-width: 72rem; margin: 2rem auto; padding: 0 1rem; line-height: 1.45; color: #222; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.3rem; margin-top: 2rem;
  border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; }
table { border-collapse: collapse; margin: 0.8rem 0; display: block; overflow-x: auto;
  font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.55rem; white-space: nowrap; }
td:first-child { white-space: normal; min-width: 9rem; }
th { background: #f0f0f0; white-space: normal; } tbody tr:nth-child(even) { background: #fafafa; }
code { background: #f3f3f3; padding: 0 0.2rem; border-radius: 3px; font-size: 0.9em; }
pre { background: #f3f3f3; padding: 0.6rem; overflow-x: auto; }
pre code { padding: 0; }
blockquote { margin: 1rem 0; padding: 0.4rem 0.8rem; border-left: 4px solid #e0a800;
  background: #fff8e1; }
img { max-width: 100%; height: auto; display: block; margin: 0.5rem 0; }
.missing-figure { color: #a00; }
"""


def _embed_figures_extension(folder: Path) -> Any:
    """A Python-Markdown extension that turns each ``<img src="NAME.png">`` of a figure
    in ``folder`` into a base64 data URI, so the page carries its figures. A linked figure
    that was not drawn becomes a visible note instead of a broken image. Raw HTML in the
    text is escaped, not passed through."""
    from markdown.extensions import Extension
    from markdown.treeprocessors import Treeprocessor

    class EmbedFigures(Treeprocessor):
        def run(self, root: Any) -> None:
            for image in root.iter("img"):
                name = image.get("src", "")
                path = folder / name
                if name and Path(name).name == name and path.is_file():
                    data = base64.b64encode(path.read_bytes()).decode("ascii")
                    image.set("src", f"data:image/png;base64,{data}")
                else:
                    alt = image.get("alt", "")
                    image.attrib.clear()
                    image.tag = "em"
                    image.set("class", "missing-figure")
                    image.text = f"(figure {alt or name} not drawn: {name} is missing)"

    class EmbedFiguresExtension(Extension):
        def extendMarkdown(self, md: Any) -> None:  # Python-Markdown's name
            # after "inline" (priority 20), which makes the <img> elements
            md.treeprocessors.register(EmbedFigures(md), "embed_figures", 5)
            # the data's text (an error message's "<module>") is shown, never parsed as HTML
            md.preprocessors.deregister("html_block")
            md.inlinePatterns.deregister("html")

    return EmbedFiguresExtension()


def render_html(markdown_text: str, folder: str | Path) -> str:
    """report.html's text: ``markdown_text`` (report.md's text, rendered once from the
    data) as one HTML page, each figure it links read from ``folder`` and embedded as a
    data URI. The same Markdown and figures give the same bytes."""
    import markdown

    body = markdown.markdown(
        markdown_text,
        extensions=["tables", "fenced_code", _embed_figures_extension(Path(folder))],
        output_format="html",
    )
    first = markdown_text.splitlines()[0] if markdown_text else ""
    title = first.lstrip("#").strip().replace("`", "") or "Benchmark report"
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{HTML_STYLE}</style>\n</head>\n"
        f"<body>\n{body}\n</body>\n</html>\n"
    )


def render_figures(run: RunDir, meta: dict[str, Any], tables: RunTables) -> None:
    """Every figure of the run (:data:`FIGURE_NAMES`), from its tables and saved maps."""
    render_curves(run, meta, tables)
    render_predictions(run, meta, tables)
    render_accuracy_cost(run, meta, tables)
    render_confusion(run, meta, tables)


def render_run(run_dir: str | Path) -> Path:
    """(Re-)write the derived tables, report.md, the figures and report.html of a run
    directory.

    Takes the directory's lock: a run still being written by another process is refused.
    """
    run = RunDir(run_dir)
    meta = run.read_meta()  # a clear error for anything that is not a run directory
    with run.lock():
        return render_locked(run, meta)


def render_locked(run: RunDir, meta: dict[str, Any] | None = None) -> Path:
    """:func:`render_run` for the process that already holds the lock."""
    meta = meta if meta is not None else run.read_meta()
    # Derived data first, so a run cut off at any moment still gets a complete report of
    # the cells that finished.
    if meta["format_version"] == 1:  # its CSVs are its only record
        tables = run.tables(meta)
    else:
        records = list(run.ordered_records(meta).values())
        run.write_tables(records)
        tables = RunTables.of(records)
    summary, flagged = flagged_summary(meta, tables)
    write_csv(run.table_path("summary"), summary_columns(metric_classes_of(meta)), summary)
    # the costly bootstrap: once
    primary = stats.primary_classes(meta["dataset"]["class_names"])
    statistics = stats.statistics_rows(tables.per_image, primary, flagged)
    write_csv(run.table_path("statistics"), stats.STATISTICS_COLUMNS, statistics)
    text = render_markdown(meta, tables, summary, statistics, run.path)
    run.write_report(text)
    render_figures(run, meta, tables)
    # last: it embeds the figures just drawn
    run.write_html_report(render_html(text, run.path))
    return run.report_path
