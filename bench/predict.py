"""Segment new images with a trained cell of a run directory (``bench predict``).

A final checkpoint ``RUN_DIR/checkpoints/<arch>_seed<S>_fold<F>.pt`` holds weights only; what
the model *is* lives in the run's ``config.json``: the width, the architecture's options (the
smp encoder), the classes and their palette, the protocol's input size, the plugins that
registered the architecture, and the speed options the cell was evaluated with. This module
rebuilds the model from those, loads the weights, and predicts each image exactly the way
the run's evaluation did (:func:`bench.runner.evaluate_scores`): the image is padded at the
bottom/right with zeros to the run's input size (as :mod:`bench.protocols` pads test
images), batched with the run's batch size, fed as float/255 in the run's memory format
and autocast mode, and the argmax over the classes is cropped back to the image's size. On
the machine and device that trained the run, a test image's prediction is the run's saved
``predictions/<arch>/<id>.png`` pixel for pixel (``tests/test_predict.py``).

An image larger than the input size (in either dimension) is refused rather than tiled:
the model was trained and scored on inputs of that size only, so a tiled prediction would
be a different method from the one the run's numbers describe. Crop or downscale it first.

Outputs, per image ``<stem>.<ext>``: ``OUT/<stem>.png``, the label map in the dataset's grey
palette (as the run's own predictions, readable by ``bench.images.read_mask``), and
``OUT/<stem>_overlay.png``, the image with the class colours of the report's figures
(:data:`bench.report.CLASS_COLOURS`) blended in. ``OUT/bench-predict.json`` (the manifest)
records which files bench predict wrote, from which image and checkpoint: ``OUT`` may hold
earlier predictions (an image predicted again is overwritten), and anything else in it is
refused before anything is read or written. The manifest is written before the images, so
a killed run never leaves files the next one would refuse.

Every refusal is a :class:`~bench.errors.BenchError` (``bench`` exits 2) naming the file.
The checks that need no model (the checkpoint's place in a run directory, ``--out``, the
images) run before torch is even imported.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.atomic import TEMPORARY_NAME, atomic_write_png, atomic_write_text
from bench.errors import ArchitectureError, ConfigError, DataError
from bench.images import read_image, write_mask
from bench.run_dir import RunDir, cell_stem

if TYPE_CHECKING:
    import torch

MANIFEST_NAME = "bench-predict.json"
MANIFEST_VERSION = 1
OVERLAY_SUFFIX = "_overlay"
#: Weight of the class colour in an overlay pixel (the image keeps the rest).
OVERLAY_ALPHA = 0.45
#: Colours of classes beyond the report's three (background, cytoplasm, nucleus), so that an
#: overlay of a dataset with more classes still tells them apart.
EXTRA_CLASS_COLOURS = (
    (230, 160, 20),
    (150, 60, 200),
    (20, 190, 200),
    (220, 80, 170),
    (120, 120, 120),
    (170, 200, 40),
    (110, 70, 30),
)

_CHECKPOINT_STEM = re.compile(r"^(?P<architecture>.+)_seed(?P<seed>\d+)_fold(?P<fold>\d+|all)$")


@dataclass(frozen=True)
class TrainedCell:
    """A final checkpoint and the run directory it belongs to (checked without torch)."""

    run: RunDir
    meta: dict[str, Any]
    checkpoint: Path
    architecture: str
    seed: int
    fold: int | None

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) every image of the run was padded to, for training and testing."""
        height, width = self.meta["protocol"]["input_size"]
        return int(height), int(width)

    @property
    def palette(self) -> list[int]:
        return [int(v) for v in self.meta["dataset"]["palette"]]

    @property
    def class_names(self) -> list[str]:
        return list(self.meta["dataset"]["class_names"])


@dataclass(frozen=True)
class Prediction:
    """What ``bench predict`` wrote for one image."""

    image: Path
    mask: Path
    overlay: Path
    classes: np.ndarray  # (H, W) class indices, the image's size


def locate_cell(checkpoint: str | Path) -> TrainedCell:
    """The run directory of a final checkpoint ``RUN/checkpoints/<arch>_seed<S>_fold<F>.pt``.

    Refused (ConfigError naming the path): a missing file, a file elsewhere than a run
    directory's ``checkpoints/`` (an epoch checkpoint under ``resume/`` included: that cell
    never finished), a name that is not a cell's, and a cell that is not in the run's
    config.json.
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise ConfigError(f"checkpoint {path}: no such file")
    if path.parent.name == "resume":
        raise ConfigError(
            f"checkpoint {path}: an epoch checkpoint of a cell that had not finished "
            "(resume/); predict with a final one, RUN_DIR/checkpoints/<arch>_seed<S>_fold<F>.pt"
        )
    match = _CHECKPOINT_STEM.match(path.stem)
    if path.suffix != ".pt" or path.parent.name != "checkpoints" or match is None:
        raise ConfigError(
            f"checkpoint {path}: not a final checkpoint of a bench run directory (expected "
            "RUN_DIR/checkpoints/<arch>_seed<S>_fold<F>.pt)"
        )
    run = RunDir(path.parent.parent)
    if not run.is_run():
        raise ConfigError(
            f"checkpoint {path}: {run.path} is not a bench run directory (no config.json "
            "beside checkpoints/); the checkpoint's model is described there"
        )
    meta = run.read_meta()
    architecture = match["architecture"]
    fold = None if match["fold"] == "all" else int(match["fold"])
    known = meta["config"].get("architectures") or []
    if architecture not in known:
        raise ConfigError(
            f"checkpoint {path}: architecture {architecture!r} is not one of the run's "
            f"({', '.join(known) or 'none recorded'}) in {run.config_path}"
        )
    for key, where in (("input_size", "protocol"), ("palette", "dataset")):
        if not isinstance(meta[where].get(key), list):
            raise ConfigError(f"{run.config_path}: {where}.{key} is missing")
    return TrainedCell(run, meta, path, architecture, int(match["seed"]), fold)


# --------------------------------------------------------------------------- outputs


def output_names(stem: str) -> tuple[str, str]:
    """(label map, overlay) file names of an image with this stem."""
    return f"{stem}.png", f"{stem}{OVERLAY_SUFFIX}.png"


def read_manifest(out: Path) -> dict[str, Any]:
    """The manifest of ``out``'s earlier predictions; an empty one when there is none."""
    path = out / MANIFEST_NAME
    if not path.exists():
        return {"format_version": MANIFEST_VERSION, "predictions": {}}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"--out {out}: {MANIFEST_NAME} is not readable ({error})") from None
    entries = data.get("predictions") if isinstance(data, dict) else None
    if (
        not isinstance(data, dict)
        or data.get("format_version") != MANIFEST_VERSION
        or not isinstance(entries, dict)
        or not all(
            isinstance(e, dict)
            and isinstance(e.get("mask"), str)
            and isinstance(e.get("overlay"), str)
            for e in entries.values()
        )
    ):
        raise ConfigError(
            f"--out {out}: {MANIFEST_NAME} is not a bench predict manifest of version "
            f"{MANIFEST_VERSION}; choose another --out"
        )
    return data


def check_out(out: Path, stems: Sequence[str]) -> dict[str, Any]:
    """Refuse an ``--out`` holding anything but earlier predictions; return its manifest.

    Allowed: a missing or empty folder, or one whose every entry is the manifest, a file it
    lists, or an atomic-write temporary (``bench.atomic.TEMPORARY_NAME``) of a killed run.
    Also refused: two images, of this call or an earlier one, whose outputs share a name.
    Nothing is written here.
    """
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a directory")
    manifest = read_manifest(out)  # an empty one for a new folder
    entries: dict[str, Any] = manifest["predictions"]
    if out.is_dir():
        ours = {MANIFEST_NAME} | {e[k] for e in entries.values() for k in ("mask", "overlay")}
        foreign = sorted(
            p.name
            for p in out.iterdir()
            if not (p.name in ours and p.is_file()) and not TEMPORARY_NAME.fullmatch(p.name)
        )
        if foreign:
            shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            raise ConfigError(
                f"--out {out}: holds files that are not earlier bench predict outputs "
                f"({shown}); bench predict writes only into a new or empty folder or one of "
                "its own earlier --out folders: choose another --out"
            )
    owner: dict[str, str] = {}
    kept = {stem: e for stem, e in entries.items() if stem not in stems}
    claims = [(stem, (e["mask"], e["overlay"])) for stem, e in kept.items()]
    claims += [(stem, output_names(stem)) for stem in stems]
    for stem, names in claims:
        for name in names:
            if name in owner and owner[name] != stem:
                raise ConfigError(
                    f"--out {out}: the outputs of images {owner[name]!r} and {stem!r} would both "
                    f"be named {name}; rename one of the images or use another --out"
                )
            owner[name] = stem
    return manifest


def image_stems(images: Sequence[str | Path]) -> list[tuple[Path, str]]:
    """(path, stem) of each image, the same file given twice once; two different images of
    one stem are refused (their outputs would overwrite each other)."""
    seen: dict[str, Path] = {}
    result = []
    for image in images:
        path = Path(image)
        stem = path.stem
        if stem in seen:
            if seen[stem].resolve() == path.resolve():
                continue
            raise ConfigError(
                f"images {seen[stem]} and {path} have the same name {stem!r}: their "
                "predictions would overwrite each other; predict them into different --out"
            )
        seen[stem] = path
        result.append((path, stem))
    return result


def read_images(paths: Sequence[Path], input_size: tuple[int, int]) -> list[np.ndarray]:
    """Each image as uint8 RGB; an unreadable one, or one larger than the run's input size,
    is refused (all offenders named) before any model is built."""
    arrays = [read_image(path) for path in paths]  # DataError naming the file
    height, width = input_size
    too_large = [
        f"{path} ({a.shape[1]}x{a.shape[0]})"
        for path, a in zip(paths, arrays, strict=True)
        if a.shape[0] > height or a.shape[1] > width
    ]
    if too_large:
        raise DataError(
            f"larger than the run's input size of {width}x{height} pixels (width x height), "
            f"the only size its model was trained and tested at: {', '.join(too_large)}; "
            "crop or downscale them first (bench predict does not tile: see bench.predict)"
        )
    return arrays


def class_colours(num_classes: int) -> np.ndarray:
    """(num_classes, 3) uint8: the report's colours, then :data:`EXTRA_CLASS_COLOURS`."""
    from bench.report import CLASS_COLOURS

    colours = np.concatenate([CLASS_COLOURS, np.array(EXTRA_CLASS_COLOURS, dtype=np.uint8)])
    return colours[np.minimum(np.arange(num_classes), len(colours) - 1)]


def overlay(image: np.ndarray, classes: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """The image with each pixel's class colour blended in (weight :data:`OVERLAY_ALPHA`)."""
    blended = (1 - OVERLAY_ALPHA) * image.astype(np.float32) + OVERLAY_ALPHA * colours[
        classes
    ].astype(np.float32)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- the model


def load_checkpoint(cell: TrainedCell) -> dict[str, torch.Tensor]:
    """The checkpoint's state dict (``torch.load(weights_only=True)``: no pickled code runs),
    after checking it is the cell its name says."""
    import torch

    path = cell.checkpoint
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file is the user's input
        reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ConfigError(
            f"checkpoint {path}: not a readable bench checkpoint ({type(error).__name__}"
            f"{': ' + reason[:300] if reason else ''})"
        ) from None
    weights = state.get("state_dict") if isinstance(state, dict) else None
    if not isinstance(weights, dict) or not all(
        isinstance(v, torch.Tensor) for v in weights.values()
    ):
        raise ConfigError(
            f"checkpoint {path}: not a bench checkpoint (a dict with architecture, seed, fold "
            "and state_dict)"
        )
    recorded = (state.get("architecture"), state.get("seed"), state.get("fold"))
    if recorded != (cell.architecture, cell.seed, cell.fold):
        raise ConfigError(
            f"checkpoint {path}: holds the weights of {cell_stem(*recorded)}, not of the cell "
            "its file name says"
        )
    return weights


def architecture_options(cell: TrainedCell) -> dict[str, Any]:
    """The options the run built the architecture with (config.json ``architectures``;
    directories from before that record: the smp encoder of the configuration)."""
    recorded = cell.meta.get("architectures", {}).get(cell.architecture)
    if isinstance(recorded, dict) and isinstance(recorded.get("options"), dict):
        return dict(recorded["options"])
    from architectures import get_spec

    if get_spec(cell.architecture).source == "smp":
        return {"encoder": cell.meta["config"].get("encoder", "resnet34")}
    return {}


def rebuild_model(cell: TrainedCell, weights: Mapping[str, torch.Tensor]) -> torch.nn.Module:
    """The cell's model as trained: the run's plugins loaded, built at the run's width,
    options and classes, with the checkpoint's weights (which must fit it exactly)."""
    import architectures

    config = cell.meta["config"]
    for plugin in config.get("plugins") or []:
        try:
            architectures.load_plugin_file(plugin)
        except ArchitectureError as error:
            raise ArchitectureError(
                f"checkpoint {cell.checkpoint}: the run loaded plugin {plugin!r} "
                f"({cell.run.config_path}), which cannot be loaded here: {error}"
            ) from None
    try:
        architectures.get_spec(cell.architecture)
    except ArchitectureError as error:
        raise ArchitectureError(f"checkpoint {cell.checkpoint}: {error}") from None
    width = float(config.get("width", 1.0))
    options = architecture_options(cell)
    if options.get("encoder_weights") is not None:
        # The checkpoint holds every weight: pretrained ones would be overwritten, so they
        # are not downloaded (which would also fail offline).
        options["encoder_weights"] = None
    model = architectures.build(
        cell.architecture,
        num_classes=len(cell.class_names),
        in_channels=3,
        width=width,
        **options,
    )
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as error:
        detail = " ".join(str(error).split())
        if len(detail) > 600:
            detail = detail[:600] + " ..."
        raise ArchitectureError(
            f"checkpoint {cell.checkpoint}: its weights do not fit {cell.architecture!r} as "
            f"rebuilt from {cell.run.config_path} (width {width:g}, "
            f"{len(cell.class_names)} classes, options {options}): {detail}"
        ) from None
    return model


@contextmanager
def _as_evaluated(config: Mapping[str, Any]) -> Iterator[None]:
    """The run's numerics while predicting: under ``--deterministic`` its recorded torch
    thread count (on a CPU the count decides how sums split) and deterministic algorithms;
    both restored afterwards."""
    import torch

    from bench.runner import intra_op_threads

    if not config.get("deterministic"):
        yield
        return
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with intra_op_threads(config.get("threads")):
            yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=True)


def predict_classes(
    cell: TrainedCell, model: torch.nn.Module, images: Sequence[np.ndarray], device: str = "auto"
) -> list[np.ndarray]:
    """Label maps (each the size of its image) as the run's evaluation computed them."""
    import torch

    from bench.runner import (
        flip_averaged_probabilities,
        model_input,
        place_model,
        resolve_speed,
        select_device,
    )

    config = cell.meta["config"]
    torch_device = select_device(device)
    # A run that predates a speed option trained with PyTorch's default for it ("off").
    speed = resolve_speed(
        config.get("amp", "off"), config.get("channels_last", "off"), False, torch_device
    )
    forward = place_model(model, torch_device, speed)
    # A run whose recipe predicted with test-time flips (runs before recipes did not).
    tta = bool((config.get("recipe_settings") or {}).get("tta"))
    model.eval()
    height, width = cell.input_size
    batch_size = max(1, int(config.get("batch_size") or 1))
    results: list[np.ndarray] = []
    with _as_evaluated(config), torch.no_grad():
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            padded = np.zeros((len(chunk), height, width, 3), dtype=np.uint8)
            for i, image in enumerate(chunk):
                padded[i, : image.shape[0], : image.shape[1]] = image
            x = torch.from_numpy(padded).permute(0, 3, 1, 2).contiguous().to(torch_device)
            inputs = model_input(x, speed.channels_last)
            with speed.autocast(torch_device):
                logits = forward(inputs)
                scores = flip_averaged_probabilities(forward, inputs, logits) if tta else logits
            labels = scores.argmax(dim=1).cpu().numpy()
            results += [labels[i, : im.shape[0], : im.shape[1]] for i, im in enumerate(chunk)]
    return results


# --------------------------------------------------------------------------- the command


def predict(
    checkpoint: str | Path,
    images: Sequence[str | Path],
    out: str | Path,
    device: str = "auto",
) -> list[Prediction]:
    """Segment ``images`` with the cell of ``checkpoint``; write label maps and overlays
    into ``out`` (see the module docstring). Every check runs before anything is written."""
    if not images:
        raise ConfigError("no images to predict")
    cell = locate_cell(checkpoint)
    out = Path(out)
    named = image_stems(images)
    stems = [stem for _, stem in named]
    manifest = check_out(out, stems)
    arrays = read_images([path for path, _ in named], cell.input_size)

    weights = load_checkpoint(cell)  # torch from here on
    model = rebuild_model(cell, weights)
    labels = predict_classes(cell, model, arrays, device)

    entries = {s: e for s, e in manifest["predictions"].items() if s not in stems}
    written = []
    for (path, stem), classes in zip(named, labels, strict=True):
        mask_name, overlay_name = output_names(stem)
        entries[stem] = {
            "image": str(path.resolve()),
            "mask": mask_name,
            "overlay": overlay_name,
            "checkpoint": str(cell.checkpoint.resolve()),
            "architecture": cell.architecture,
            "seed": cell.seed,
            "fold": cell.fold,
            "size": [int(classes.shape[0]), int(classes.shape[1])],
        }
        written.append(Prediction(path, out / mask_name, out / overlay_name, classes))
    out.mkdir(parents=True, exist_ok=True)
    # The manifest first: a kill while the images are written leaves only listed files.
    manifest = {"format_version": MANIFEST_VERSION, "predictions": dict(sorted(entries.items()))}
    atomic_write_text(out / MANIFEST_NAME, json.dumps(manifest, indent=2) + "\n")
    colours = class_colours(len(cell.class_names))
    for prediction, image in zip(written, arrays, strict=True):
        write_mask(prediction.mask, prediction.classes, cell.palette)
        atomic_write_png(prediction.overlay, overlay(image, prediction.classes, colours))
    return written
