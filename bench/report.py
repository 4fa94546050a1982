"""Render a run directory's report from its data files. Never trains, never re-measures.

``render_run(RUN_DIR)`` reads ``config.json``, the cell records (through
:class:`bench.run_dir.RunDir`) and the saved label maps, and writes the derived tables
(``cells.csv``, ``history.csv``, ``per_image.csv``, ``summary.csv`` from
:mod:`bench.aggregate`, ``statistics.csv`` from :mod:`bench.stats`), then ``report.md``,
``curves_accuracy.png``, ``curves_loss.png`` and ``predictions.png``. Rendering is
deterministic: the same data files give the same ``report.md``, byte for byte.
"""

from __future__ import annotations

import csv
import importlib.resources
import io
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench import stats
from bench.aggregate import summarize
from bench.atomic import atomic_write_bytes
from bench.flags import architecture_flags
from bench.run_dir import RunDir, RunTables, metric_classes_of, summary_columns, write_csv

#: The thesis's models (thesis_reference.csv names), in the order of its published rows.
THESIS_REFERENCE_MODELS = ("SegNet", "DeconvNet", "U-Net")
THESIS_SOURCE = (
    "P. Baykalov, *Semantic segmentation of peripheral white blood cells using neural "
    "networks*, master's thesis, 2019 (Keras, free Colab GPU)"
)
FLAG_MARK = "⚠"
# Colours of the thesis's Figure 7: background red, cytoplasm green, nucleus blue.
CLASS_COLOURS = np.array([[220, 40, 40], [40, 170, 60], [40, 70, 220]], dtype=np.uint8)


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


class Table:
    """A Markdown table whose numeric columns get their best value in bold."""

    def __init__(self, headers: Sequence[str], better: Sequence[str | None]):
        self.headers = list(headers)
        self.better = list(better)  # per column: "max", "min" or None (not ranked)
        self.rows: list[list[tuple[str, float | None]]] = []

    def add(self, cells: Sequence[tuple[str, float | None]]) -> None:
        self.rows.append(list(cells))

    def render(self) -> str:
        best: dict[int, float] = {}
        for column, direction in enumerate(self.better):
            values = [row[column][1] for row in self.rows if row[column][1] is not None]
            if direction and values:
                best[column] = max(values) if direction == "max" else min(values)
        lines = [
            "| " + " | ".join(self.headers) + " |",
            "|" + "|".join("---" if i == 0 else "---:" for i in range(len(self.headers))) + "|",
        ]
        for row in self.rows:
            texts = []
            for column, (text, value) in enumerate(row):
                if column in best and value is not None and value == best[column]:
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
    seeds = ", ".join(str(s) for s in config["seeds"])
    versions = (
        f"Python {env['python']}, PyTorch {env['torch']}, segmentation-models-pytorch "
        f"{env.get('segmentation_models_pytorch')}"
        + (f", CUDA {env['cuda']}, cuDNN {env['cudnn']}" if env.get("cuda") else "")
    )
    return (
        f"Data: `{dataset['name']}`, {dataset['images']} images, classes "
        f"{', '.join(dataset['class_names'])}. Protocol `{protocol['name']}`: "
        f"{protocol['summary']} Split: {split}; inputs {protocol['input_size'][0]}×"
        f"{protocol['input_size'][1]}. Training: {config['epochs']} epochs, batch "
        f"{config['batch_size']}, {config['optimizer']} {learning_rate(config)}, loss "
        f"`{config['loss']}`, width {config['width']}, smp encoder `{config['encoder']}` "
        f"(no pretrained weights), seeds {seeds}"
        f"{', deterministic algorithms' if config.get('deterministic') else ''}. "
        f"{speed_options(config)}"
        f"Device: {env['device_name']}. Software: {versions}; bench {env['bench']}, git "
        f"commit `{env.get('git_commit')}`. Run from {meta['started_utc']} to "
        f"{meta.get('finished_utc') or '(unfinished)'} (UTC). Jaccard (IoU) and Dice are "
        f"computed per test image and class over the image's original pixels (padding "
        f"excluded) and given as mean ± SEM (ddof=1) over images."
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
) -> str:
    """report.md's text from the run's data: its ``tables``, the ``summary``
    (:func:`bench.aggregate.summarize`, with its ``flags``) and ``statistics``
    (:func:`bench.stats.statistics_rows`). One function per section, in report order."""
    protocol = meta["protocol"]
    # Protocols built to compare with the thesis's published rows (thesis, thesis-noleak).
    thesis = protocol.get("thesis_reference", protocol["name"] in ("thesis", "thesis-noleak"))
    reference = load_thesis_reference() if thesis else []
    out = [
        *header_section(meta, summary, tables.cells, thesis),
        *flags_section(summary),
        *accuracy_section(summary, thesis),
        *loss_section(meta, summary, reference),
        *quality_section(meta, summary, tables.per_image, reference),
        *statistics_section(statistics, stats.primary_classes(meta["dataset"]["class_names"])),
        *cost_section(summary, reference),
        *failures_section(summary),
        *figures_section(),
    ]
    return "\n".join(out)


def _published_label(model: str) -> str:
    return f"{model} — thesis 2019 (published)"


def _published_models(reference: list[dict[str, str]]) -> tuple[str, ...]:
    """The thesis models whose published rows a table adds (none without the reference)."""
    return THESIS_REFERENCE_MODELS if reference else ()


def header_section(
    meta: dict[str, Any], summary: list[dict[str, Any]], cells: list[dict[str, Any]], thesis: bool
) -> list[str]:
    """Title, command, machine, methods, the models as trained, and the thesis caveat."""
    protocol = meta["protocol"]
    out = [
        f"# Benchmark report: `{meta['dataset']['name']}`, protocol `{protocol['name']}`",
        "",
        "Command:",
        "",
        "```",
        meta["command"],
        "```",
        "",
        f"Machine: {meta['environment']['device_name']}.",
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
            f"{protocol['leaked_test_images']} of the {protocol['test_images']} "
            "test images have their flipped-and-rotated twin in the training set. Its test "
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
        "## Final accuracy (thesis Table 1)",
        "",
        table.render(),
        "",
        "Pixel accuracy (argmax) after the last epoch; train is the running mean over the "
        "last epoch's batches in training mode, test is measured in eval mode."
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
        table.add([(_published_label(model), None), (_fmt(train), train), (_fmt(test), test)])
    return [
        "## Final loss (thesis Table 2)",
        "",
        table.render(),
        "",
        f"Loss: `{meta['config']['loss']}`.",
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
    for model in _published_models(reference) if wbc else ():
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
        table.add(cells)
    n_images = len({(r["fold"], r["image_id"]) for r in per_image})
    seeds = len(meta["config"]["seeds"])
    return [
        "## Segmentation quality on the test images (thesis Table 3)",
        "",
        table.render(),
        "",
        f"Mean ± SEM over the {n_images} test image{'s' if n_images != 1 else ''}"
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
        ),
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
                (_published_label(model) + ", Colab GPU 2018", None),
                (_fmt(seconds, 1), None),
                *[("—", None)] * 5,
            ]
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


def figures_section() -> list[str]:
    """The figures :func:`render_curves` and :func:`render_predictions` draw."""
    return [
        "## Figures",
        "",
        "Accuracy per epoch (thesis Figure 5):",
        "",
        "![accuracy](curves_accuracy.png)",
        "",
        "Loss per epoch (thesis Figure 6):",
        "",
        "![loss](curves_loss.png)",
        "",
        "Predictions (thesis Figure 7): input, each architecture, ground truth; nucleus "
        "blue, cytoplasm green, background red.",
        "",
        "![predictions](predictions.png)",
        "",
    ]


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


def render_curves(run: RunDir, history: list[dict[str, Any]], metric: str) -> None:
    """Thesis Figures 5/6: one panel per architecture, train and test per epoch."""
    plt, save = _figure_saver()
    names = list(dict.fromkeys(r["architecture"] for r in history)) or ["(no runs)"]
    columns = min(3, len(names))
    rows = math.ceil(len(names) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        for split, style in (("train", "-"), ("test", "--")):
            points: dict[int, list[float]] = {}
            for r in history:
                if r["architecture"] == name and r["split"] == split:
                    points.setdefault(int(r["epoch"]), []).append(float(r[metric]))
            if points:
                epochs = sorted(points)
                ax.plot(epochs, [np.mean(points[e]) for e in epochs], style, label=split)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    figure.tight_layout()
    save(figure, run.figure_path(f"curves_{metric}"))


def _colourise(label_png: Path, palette: Sequence[int]) -> np.ndarray:
    from PIL import Image

    grey = np.asarray(Image.open(label_png))
    lookup = np.zeros(256, dtype=np.int64)
    for index, value in enumerate(palette):
        lookup[value] = index
    return CLASS_COLOURS[np.clip(lookup[grey], 0, len(CLASS_COLOURS) - 1)]


def render_predictions(run: RunDir, meta: dict[str, Any], cells: list[dict[str, Any]]) -> None:
    """Thesis Figure 7: rows = test images, columns = input, each architecture, truth."""
    from PIL import Image

    plt, save = _figure_saver()
    palette = meta["dataset"]["palette"]
    primary_seed = meta["config"]["seeds"][0]
    image_ids = run.figure_input_ids()
    names = list(dict.fromkeys(r["architecture"] for r in cells))
    columns = ["input", *names, "ground truth"]
    if not image_ids:
        figure = plt.figure(figsize=(4, 1))
        figure.text(0.5, 0.5, "no test images", ha="center")
        save(figure, run.figure_path("predictions"))
        return
    figure, axes = plt.subplots(
        len(image_ids),
        len(columns),
        figsize=(1.9 * len(columns), 1.9 * len(image_ids)),
        squeeze=False,
    )
    for r, image_id in enumerate(image_ids):
        for c, column in enumerate(columns):
            ax = axes[r, c]
            if column == "input":
                ax.imshow(np.asarray(Image.open(run.input_path(image_id))))
            elif column == "ground truth":
                ax.imshow(_colourise(run.truth_path(image_id), palette))
            else:
                path = run.prediction_path(column, primary_seed, image_id, primary_seed)
                if path.exists():
                    ax.imshow(_colourise(path, palette))
                else:
                    ax.text(0.5, 0.5, "failed", ha="center", va="center")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(column, fontsize=8)
            if c == 0:
                ax.set_ylabel(image_id, fontsize=8)
    figure.tight_layout()
    save(figure, run.figure_path("predictions"))


def render_run(run_dir: str | Path) -> Path:
    """(Re-)write the derived tables, report.md and the figures of a run directory.

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
    classes = metric_classes_of(meta)
    primary = stats.primary_classes(meta["dataset"]["class_names"])
    flagged = architecture_flags(tables.cells, tables.history, tables.per_image, primary)
    summary = summarize(tables.cells, tables.per_image, classes)
    for row in summary:
        row["flags"] = "; ".join(flagged.get(row["architecture"], []))
    write_csv(run.table_path("summary"), summary_columns(classes), summary)
    # the costly bootstrap: once
    statistics = stats.statistics_rows(tables.per_image, primary, flagged)
    write_csv(run.table_path("statistics"), stats.STATISTICS_COLUMNS, statistics)
    run.write_report(render_markdown(meta, tables, summary, statistics))
    render_curves(run, tables.history, "accuracy")
    render_curves(run, tables.history, "loss")
    render_predictions(run, meta, tables.cells)
    return run.report_path
