"""The one training loop every architecture goes through.

A *suite* is a list of architectures × seeds × folds; each (architecture, seed, fold) is a
*cell*. A cell trains a fresh model with the protocol's loss and optimiser, records per
epoch the train and test loss/accuracy and wall time, then measures every test image and
saves predictions and a checkpoint. A cell that raises or whose loss becomes NaN/inf is
recorded as failed and the suite goes on.

A cell, step by step (:func:`_train`): :func:`_prepare_cell` (seed, host memory, model,
optimiser, the split on the device), :func:`_restore` (from its resume checkpoint, if
any), then per epoch :func:`_train_epoch` (per batch: data, forward, loss, backward,
step) and :func:`_record_epoch` (test evaluation, history, checkpoint), and
:func:`_finish` (predictions, per-image metrics, final weights). ``--lr-search``
candidates train with the same :func:`_train_epoch`.

Accounting, so numbers mean the same for every architecture:

- train loss/accuracy of an epoch are averages over its batches in training mode (dropout
  on), as Keras reports them; test loss/accuracy are computed in eval mode after the epoch,
  with the test foreground Dice (the primary endpoint, :func:`foreground_dice`: per image,
  then the mean over images) from per-image confusion counts kept on the device.
- ``train_seconds`` is the wall time of the training phases only (device synchronised
  before the clock is read); ``total_seconds`` adds the per-epoch evaluation and the final
  measurement. ``images_per_second`` = training images processed / ``train_seconds``.
- peak memory: CUDA's max allocated bytes for the cell; on CPU the peak resident set size
  of the process during the cell (Linux resets it per cell; elsewhere it is the process's
  lifetime peak).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import random
import resource
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import architectures
from bench import host_memory, metrics, recipes
from bench.augment import BatchAugmenter, StrongAugmenter
from bench.config import RunConfig
from bench.errors import ConfigError
from bench.protocols import (
    IGNORE_INDEX,
    ProtocolSplit,
    SplitArrays,
    TrainingDefaults,
    carve_validation,
)

BCE_EPSILON = 1e-7  # Keras's clipping of probabilities in binary_crossentropy


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite."""


class CellInterrupted(BaseException):
    """A stop was requested (Ctrl-C, SIGTERM): the cell stops after its current batch.

    A BaseException, like KeyboardInterrupt, so that train_cell's failure isolation does
    not record it as a failed cell: the cell resumes from its epoch checkpoint instead.
    """


def select_device(name: str) -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; an unavailable explicit choice is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available")
    if name == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise ConfigError("--device mps: MPS is not available")
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


@contextlib.contextmanager
def intra_op_threads(threads: int | None) -> Iterator[None]:
    """Run the body with ``threads`` torch intra-op threads, then restore the previous count.

    The count decides how CPU kernels split their sums, so under ``--deterministic`` it is
    part of what a cell computes (``CellSettings.threads``); ``None`` leaves the count as
    it is (where the cell runs decides). Restored afterwards so that a cell trained in the
    caller's process (the local executor, tests) leaves that process as it found it.
    """
    if threads is None:
        yield
        return
    previous = torch.get_num_threads()
    if threads != previous:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def reset_peak_memory(device: torch.device) -> None:
    """Start a fresh peak-memory window for one cell (CUDA stats; Linux VmHWM)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    # Linux >= 4.0: writing 5 to clear_refs resets the peak resident set size.
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_memory_mb(device: torch.device) -> float:
    """CUDA max allocated; on CPU the peak resident set since :func:`reset_peak_memory`."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**10  # kB
    except OSError:
        pass
    # Fallback: the process's lifetime peak; ru_maxrss is KiB on Linux, bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def compute_loss(name: str, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean loss over the valid (non-padded) pixels.

    ``bce``: the thesis's binary cross-entropy between softmax probabilities and one-hot
    masks, averaged over classes and pixels, probabilities clipped as Keras does.
    ``cross_entropy``: multi-class cross-entropy on the logits.
    ``dice_ce``: that cross-entropy plus the soft Dice loss of the foreground classes
    (:func:`bench.recipes.soft_dice_loss`), with equal weights, as nnU-Net trains.
    """
    if name == "cross_entropy":
        return F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX)
    if name == "dice_ce":
        cross_entropy = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX)
        return cross_entropy + recipes.soft_dice_loss(logits, labels, IGNORE_INDEX)
    if name == "bce":
        valid = labels != IGNORE_INDEX
        probabilities = logits.float().softmax(dim=1).clamp(BCE_EPSILON, 1 - BCE_EPSILON)
        one_hot = F.one_hot(labels.clamp(min=0), logits.shape[1]).permute(0, 3, 1, 2).float()
        elementwise = -(one_hot * probabilities.log() + (1 - one_hot) * (1 - probabilities).log())
        weight = valid.unsqueeze(1).float()
        return (elementwise * weight).sum() / (weight.sum() * logits.shape[1]).clamp(min=1)
    raise ConfigError(f"unknown loss {name!r}")


def pixel_correct(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(correct valid pixels, valid pixels), as device tensors (no host sync)."""
    valid = labels != IGNORE_INDEX
    correct = (logits.argmax(dim=1) == labels) & valid
    return correct.sum(), valid.sum()


def to_tensor_images(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) → float32 (N, 3, H, W) scaled by 1/255, as the thesis does."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)


def to_device_uint8(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (N, H, W, 3) → uint8 (N, 3, H, W) on the device: a quarter of float's memory."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device)


def model_input(images: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """A uint8 (B, 3, H, W) batch → float32 scaled by 1/255 (the same values as the thesis)."""
    x = images.float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def images_trained(n_images: int, batch_size: int) -> int:
    """Images one epoch trains on. A final batch of one image breaks batch norm after
    global pooling (PSPNet, PAN, DeepLab, UPerNet): that single image is dropped for the
    epoch; shuffling varies which."""
    return n_images - 1 if n_images % batch_size == 1 and n_images > 1 else n_images


def epoch_seed(seed: int, epoch: int) -> int:
    """The augmenter's seed for one epoch, so a resumed cell sees the same augmentations."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


@dataclass(frozen=True)
class SpeedOptions:
    """The speed options of a cell, resolved for its device."""

    amp_dtype: torch.dtype | None  # autocast dtype of the forward pass; None: fp32
    channels_last: bool
    compile: bool

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.amp_dtype)


# fp32, contiguous, eager: what PyTorch does unless told otherwise.
PYTORCH_DEFAULTS = SpeedOptions(amp_dtype=None, channels_last=False, compile=False)


def place_model(
    model: torch.nn.Module, device: torch.device, speed: SpeedOptions
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Move ``model`` to the device in the speed options' memory format; return what to call
    (the compiled module when asked: it shares the parameters, so state_dicts are taken from
    ``model`` itself, without the wrapper's names)."""
    model.to(device)
    if speed.channels_last:
        model.to(memory_format=torch.channels_last)
    return torch.compile(model) if speed.compile else model


def resolve_speed(
    amp: str, channels_last: str, compile_model: bool, device: torch.device
) -> SpeedOptions:
    """``auto``: bf16 autocast on CUDA only (on CPU it is opt-in: it is slower on most
    CPUs without bf16 matrix units); channels-last on CUDA and CPU (cuDNN's and oneDNN's
    fast convolution layout), not on MPS."""
    dtypes = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if amp == "auto":
        amp_dtype = torch.bfloat16 if device.type == "cuda" else None
    else:
        amp_dtype = dtypes[amp]
    if amp_dtype is torch.float16 and device.type != "cuda":
        raise ConfigError(f"--amp fp16 needs a CUDA device (this cell runs on {device.type})")
    use_channels_last = (
        device.type in ("cuda", "cpu") if channels_last == "auto" else channels_last == "on"
    )
    return SpeedOptions(amp_dtype, use_channels_last, compile_model)


@dataclass
class CellResult:
    architecture: str
    seed: int
    fold: int | None
    status: str = "ok"
    error: str = ""
    params: int | None = None
    gflops: float | None = None
    epochs: int = 0  # epochs trained (fewer than asked when early stopping ended the cell)
    best_epoch: int | None = None  # early stopping: the epoch whose weights were kept
    batch_size: int = 0
    lr: float | None = None  # the learning rate trained with
    train_seconds: float | None = None
    total_seconds: float | None = None
    images_per_second: float | None = None
    peak_memory_mb: float | None = None
    train_loss: float | None = None
    train_accuracy: float | None = None
    test_loss: float | None = None
    test_accuracy: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    per_image: list[dict[str, Any]] = field(default_factory=list)
    predictions: np.ndarray | None = None  # int (N, H, W) label maps of the test images
    model_state: dict[str, torch.Tensor] | None = None  # final weights, on the CPU
    # --lr-search: one entry per candidate rate ({lr, validation_dice, validation_loss,
    # seconds, error, chosen}, JSON-able); None without the search.
    lr_search: list[dict[str, Any]] | None = None

    def row(self) -> dict[str, Any]:
        return {
            k: v
            for k, v in self.__dict__.items()
            if k not in ("history", "per_image", "predictions", "model_state")
        }


@dataclass(frozen=True)
class CellSettings:
    epochs: int
    batch_size: int
    lr: float
    loss: str
    width: float
    options: dict[str, Any]
    deterministic: bool
    progress: bool
    num_classes: int = 3
    amp: str = "auto"
    channels_last: str = "auto"
    compile: bool = False
    host_memory: str = "retain"
    threads: int | None = None  # torch intra-op threads of the cell; None: leave as it is
    # --lr-search: the rates to choose from (None: train with ``lr``), and the seed of the
    # validation split carved from the training images (the run's split seed).
    lr_grid: tuple[float, ...] | None = None
    validation_seed: int = 0
    recipe: recipes.Recipe = recipes.THESIS

    @classmethod
    def from_config(
        cls,
        config: RunConfig,
        defaults: TrainingDefaults,
        num_classes: int,
        threads: int | None = None,
    ) -> CellSettings:
        """The settings every cell of a run trains with: the options given in ``config``,
        the protocol's ``defaults`` for those left out. One place, so that ``bench run`` and
        ``bench perf``'s harness loop train alike.

        ``threads``: the run's resolved count (``bench.executors.resolve_threads``);
        ``None``: ``config.threads``.
        """
        from bench.config import DEFAULT_LR_GRID

        recipe = recipes.get_recipe(config.recipe)
        return cls(
            # A flag wins over the recipe, the recipe over the protocol.
            epochs=config.epochs or recipe.epochs or defaults.epochs,
            batch_size=config.batch_size or defaults.batch_size,
            # under --lr-search each cell replaces it with its pick
            lr=config.lr or recipe.lr or defaults.lr,
            loss=config.loss or recipe.loss or defaults.loss,
            width=config.width,
            options={},
            deterministic=config.deterministic,
            progress=config.progress == "on" or (config.progress == "auto" and sys.stderr.isatty()),
            num_classes=num_classes,
            amp=config.amp,
            channels_last=config.channels_last,
            compile=config.compile,
            host_memory=config.host_memory,
            threads=config.threads if threads is None else threads,
            lr_grid=tuple(config.lr_grid or DEFAULT_LR_GRID) if config.lr_search else None,
            # the same validation images for every cell of a fold
            validation_seed=config.split_seed,
            recipe=recipe,
        )


def confusion_per_image(
    predictions: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """Per-image confusion matrices, int64 (B, K, K) indexed [true class, predicted class],
    over the valid pixels only (a label outside 0..K-1, such as ``IGNORE_INDEX`` padding,
    is not counted).

    One ``bincount`` on the device, without boolean indexing: nothing waits for the host.
    Integer counts, so the result is the same on every device and in any order of summing.
    """
    batch = predictions.shape[0]
    cells = num_classes * num_classes
    valid = (labels >= 0) & (labels < num_classes)
    offset = torch.arange(batch, device=labels.device).view(batch, 1, 1) * cells
    index = offset + labels.clamp(0, num_classes - 1) * num_classes + predictions
    # Invalid pixels go to one extra bin past the last image's matrix, then dropped.
    index = torch.where(valid, index, batch * cells)
    counts = torch.bincount(index.flatten(), minlength=batch * cells + 1)[: batch * cells]
    return counts.view(batch, num_classes, num_classes)


def foreground_dice(confusion: np.ndarray) -> float:
    """The primary endpoint from per-image confusion matrices (N, K, K) [true, predicted]:
    per image the mean over classes 1..K-1 of the Dice 2 tp / (2 tp + fp + fn) (1.0 for a
    class absent from both maps, as :func:`bench.metrics.dice`), then the mean over images
    (each image counts once, as in the per-image rows; not pooled over pixels)."""
    num_classes = confusion.shape[1]
    per_image = []
    for matrix in confusion:
        scores = []
        for c in range(1, num_classes):
            tp = int(matrix[c, c])
            fp = int(matrix[:, c].sum()) - tp
            fn = int(matrix[c, :].sum()) - tp
            scores.append(metrics.dice(metrics.ConfusionCounts(tp, fp, fn, 0)))
        per_image.append(np.mean(scores))
    return float(np.mean(per_image)) if per_image else float("nan")


@dataclass(frozen=True)
class Evaluation:
    """What :func:`evaluate_scores` measured on a set of images (eval mode)."""

    loss: float
    accuracy: float  # pixel accuracy over the valid pixels
    #: the primary endpoint (:func:`foreground_dice`); None when not asked for
    dice: float | None
    predictions: np.ndarray | None  # int (N, H, W) label maps, when asked for


def evaluate_scores(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    loss_name: str,
    batch_size: int,
    device: torch.device,
    speed: SpeedOptions | None = None,
    keep_predictions: bool = True,
    num_classes: int | None = None,
    tta: bool = False,
) -> Evaluation:
    """Loss, pixel accuracy and, with ``num_classes``, the foreground Dice of ``images``
    (eval mode), and if asked the predicted label maps.

    ``tta``: the classes (accuracy, Dice, label maps) come from the probabilities averaged
    over flips (:func:`flip_averaged_probabilities`); the loss stays that of the plain
    forward pass.

    ``images``: uint8 (N, 3, H, W) and ``labels`` (N, H, W), best already on the device.
    The sums, and the per-image confusion matrices behind the Dice, stay on the device; the
    host reads them once at the end. Computing the Dice changes nothing else: it only reads
    each batch's argmax.
    """
    speed = speed or PYTORCH_DEFAULTS
    model.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    valid = torch.zeros((), device=device, dtype=torch.long)
    predictions = []
    confusions = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size].to(device, non_blocking=True)
            y = labels[start : start + batch_size].to(device, non_blocking=True)
            inputs = model_input(x, speed.channels_last)
            with speed.autocast(device):
                logits = model(inputs)
                scores = flip_averaged_probabilities(model, inputs, logits) if tta else logits
            loss_sum += compute_loss(loss_name, logits, y) * len(x)
            c, v = pixel_correct(scores, y)
            correct += c
            valid += v
            if keep_predictions or num_classes:
                predicted = scores.argmax(dim=1)
                if keep_predictions:
                    predictions.append(predicted)
                if num_classes:
                    confusions.append(confusion_per_image(predicted, y, num_classes))
    loss = loss_sum.item() / max(len(images), 1)
    accuracy = correct.item() / max(valid.item(), 1)
    dice = foreground_dice(torch.cat(confusions).cpu().numpy()) if confusions else None
    kept = torch.cat(predictions).cpu().numpy() if keep_predictions else None
    return Evaluation(loss, accuracy, dice, kept)


# Test-time augmentation: the flips whose predictions are averaged with the plain one's.
TTA_FLIPS: tuple[tuple[int, ...], ...] = ((3,), (2,), (2, 3))


def flip_averaged_probabilities(
    forward: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor, logits: torch.Tensor
) -> torch.Tensor:
    """The class probabilities of ``inputs`` (B, 3, H, W) averaged over the image as it is
    (its ``logits``, already computed) and flipped left-right, upside down and both, each
    prediction flipped back. Flips map the pixel grid onto itself exactly, so no pixel is
    interpolated; padded pixels move with the image and stay unscored."""
    total = logits.float().softmax(dim=1)
    for dims in TTA_FLIPS:
        total += forward(inputs.flip(dims)).float().softmax(dim=1).flip(dims)
    return total / (1 + len(TTA_FLIPS))


# Called after each epoch of a cell, once its checkpoint is written: (result, epoch).
EpochCallback = Callable[[CellResult, int], None]


class HeapTrimmer:
    """When the free heap goes back to the system, for cells trained one after another in
    one process (``--host-memory``, :mod:`bench.host_memory`).

    Before a cell whose configuration (:func:`cell_configuration`) differs from the
    previous cell's, what the previous cells freed goes back, so this cell's peak memory
    is its own. After a cell of the same configuration (another seed or fold) the retained
    heap is what this cell will need: keeping it saves regrowing it. Whoever trains the
    sequence owns one (the local executor; a Ray worker process); a cell trained without
    one releases first.
    """

    def __init__(self) -> None:
        self._previous: tuple[Any, ...] | None = None

    def before_cell(self, configuration: tuple[Any, ...]) -> bool:
        """Release the free heap unless ``configuration`` is the previous cell's; whether
        it asked the allocator to."""
        release = configuration != self._previous
        self._previous = configuration
        if release:
            host_memory.release_freed_memory()
        return release


def cell_configuration(
    architecture: str, split: ProtocolSplit, settings: CellSettings, device: torch.device
) -> tuple[Any, ...]:
    """What a cell's memory depends on: everything but its seed, fold and progress bars."""
    return (
        architecture,
        dataclasses.replace(settings, progress=False, deterministic=False),
        split.train.images.shape,
        split.test.images.shape,
        str(device),
    )


def train_cell(
    architecture: str,
    seed: int,
    fold: int | None,
    split: ProtocolSplit,
    settings: CellSettings,
    device: torch.device,
    class_metrics: dict[str, tuple[int, ...]] = metrics.WBC_METRIC_CLASSES,
    checkpoint: Path | None = None,
    stop: threading.Event | None = None,
    on_epoch_end: EpochCallback | None = None,
    heap: HeapTrimmer | None = None,
) -> CellResult:
    """Train and measure one (architecture, seed, fold); never raises for model failures.

    ``checkpoint``: the cell's resume file, written after every epoch (the caller deletes it
    once the cell's outputs are saved); when it exists the cell continues from it, and
    ``total_seconds`` includes the earlier invocations' time up to that checkpoint.
    ``stop``: when set, the cell stops after its current batch by raising
    :class:`CellInterrupted`. ``on_epoch_end``: called with (result so far, epoch) after
    each epoch's checkpoint is written; raising :class:`CellInterrupted` there cuts the
    cell at that epoch, as a stop would. ``heap``: the :class:`HeapTrimmer` of the cells
    this process trains one after another (None: the free heap goes back first). Out of
    memory is retried once with half the batch size (``result.batch_size`` says which was
    used). The cell trains with ``settings.threads`` torch threads, if set (restored
    afterwards).
    """
    with intra_op_threads(settings.threads):
        return _train_cell(
            architecture,
            seed,
            fold,
            split,
            settings,
            device,
            class_metrics,
            checkpoint,
            stop,
            on_epoch_end,
            heap,
        )


def _train_cell(
    architecture: str,
    seed: int,
    fold: int | None,
    split: ProtocolSplit,
    settings: CellSettings,
    device: torch.device,
    class_metrics: dict[str, tuple[int, ...]],
    checkpoint: Path | None,
    stop: threading.Event | None,
    on_epoch_end: EpochCallback | None,
    heap: HeapTrimmer | None,
) -> CellResult:
    """The body of :func:`train_cell`: :func:`_train`, with failures recorded and one
    out-of-memory retry."""
    started = time.perf_counter()
    batch_size = settings.batch_size
    if checkpoint is not None and checkpoint.is_file():
        # A checkpoint of the out-of-memory retry continues with the retry's batch size.
        batch_size = int(load_resume_state(checkpoint)["batch_size"])
    while True:
        result = CellResult(
            architecture, seed, fold, epochs=settings.epochs, batch_size=batch_size, lr=settings.lr
        )
        try:
            _train(
                result,
                split,
                dataclasses.replace(settings, batch_size=batch_size),
                device,
                class_metrics,
                checkpoint,
                stop,
                on_epoch_end,
                heap,
            )
        except torch.cuda.OutOfMemoryError as error:
            result.status = "failed"
            result.error = f"{type(error).__name__}: {error}"
            result.predictions = None
            result.model_state = None
            if device.type == "cuda":
                torch.cuda.empty_cache()
            if batch_size == settings.batch_size and batch_size > 1:
                batch_size = max(1, batch_size // 2)
                print(
                    f"{architecture} (seed {seed}): out of memory; retrying with batch size "
                    f"{batch_size}",
                    file=sys.stderr,
                )
                if checkpoint is not None:
                    checkpoint.unlink(missing_ok=True)  # its epochs used the other batch size
                continue
        except Exception as error:  # noqa: BLE001 - one architecture failing must not stop the suite
            result.status = "failed"
            result.error = f"{type(error).__name__}: {error}"
            result.predictions = None
            if not isinstance(error, NonFiniteLoss):
                traceback.print_exc(file=sys.stderr)
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
        break
    # The epoch checkpoint stays until the caller has saved the cell's outputs: a kill
    # before that resumes from it instead of training the cell again.
    # Time spent before the last checkpoint of earlier invocations counts too.
    result.total_seconds = time.perf_counter() - started + (result.total_seconds or 0.0)
    return result


def _rng_state(generator: torch.Generator) -> dict[str, Any]:
    """Every RNG the loop draws from, as tensors/ints/lists (torch.load weights_only)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc]
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
        "generator": generator.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_resume_state(path: Path) -> dict[str, Any]:
    """Read a cell's resume checkpoint (weights_only: no pickled code is ever run)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def _save_resume_state(path: Path, state: dict[str, Any]) -> None:
    from bench.atomic import atomic_torch_save

    atomic_torch_save(path, state)


@dataclass(frozen=True)
class _DeviceSplit:
    """Images (uint8 (N, 3, H, W): a quarter of float's memory) and labels (N, H, W) on
    the device, where batches are indexed (no loader, no per-batch host copies)."""

    images: torch.Tensor
    labels: torch.Tensor

    @classmethod
    def of(cls, arrays: SplitArrays, device: torch.device) -> _DeviceSplit:
        return cls(
            to_device_uint8(arrays.images, device), torch.from_numpy(arrays.labels).to(device)
        )


@dataclass
class _Trainer:
    """A model ready to train and all its epochs use: a cell's, or an lr candidate's."""

    model: torch.nn.Module  # its state_dict is what checkpoints hold
    forward: Callable[[torch.Tensor], torch.Tensor]  # what to call (compiled when asked)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    generator: torch.Generator  # draws each epoch's batch order
    augmenter: BatchAugmenter | StrongAugmenter | None  # None: none (thesis protocols)
    speed: SpeedOptions
    device: torch.device
    loss: str
    batch_size: int
    seed: int  # with the epoch, seeds the epoch's augmentations (epoch_seed)
    # the recipe's per-step learning-rate schedule; None: a constant rate
    scheduler: torch.optim.lr_scheduler.LambdaLR | None = None


@dataclass(frozen=True)
class _EpochScores:
    """An epoch's training loss and pixel accuracy (means over its batches, training mode)
    and its wall time."""

    loss: float
    accuracy: float
    seconds: float


@dataclass
class _Cell:
    """One cell between its steps: its trainer, its split on the device, and its clocks."""

    trainer: _Trainer
    train: _DeviceSplit
    test: _DeviceSplit
    n_train: int  # images each epoch trains on (images_trained)
    started: float  # perf_counter() when this invocation began
    first_epoch: int = 1  # after the resume checkpoint's epoch, if any
    train_seconds: float = 0.0  # training wall time, earlier invocations' included
    earlier_seconds: float = 0.0  # earlier invocations' wall time up to the checkpoint
    # Early stopping (a recipe with patience): the held-out part of the training images,
    # and the best epoch on it so far with its weights (on the CPU).
    validation: _DeviceSplit | None = None
    best_dice: float = -math.inf
    best_epoch: int | None = None
    best_state: dict[str, torch.Tensor] | None = None
    last_epoch: int = 0  # the last epoch trained

    def patience_ran_out(self, patience: int | None, min_epochs: int = 0) -> bool:
        """Whether early stopping ends the cell: ``patience`` epochs without a better
        validation Dice than the best epoch's, once at least ``min_epochs`` have trained."""
        return (
            patience is not None
            and self.best_epoch is not None
            and self.last_epoch >= min_epochs
            and self.last_epoch - self.best_epoch >= patience
        )


def _build_model(architecture: str, settings: CellSettings) -> torch.nn.Module:
    return architectures.build(
        architecture,
        num_classes=settings.num_classes,
        in_channels=3,
        width=settings.width,
        **settings.options,
    )


def make_augmenter(
    recipe: recipes.Recipe, protocol_augments: bool, square: bool
) -> BatchAugmenter | StrongAugmenter | None:
    """The online augmentation a cell trains with: the recipe's strong one on every
    protocol, or the protocol's own (the clean protocol's flips, turns and mild jitter;
    none under the thesis protocols, which augmented before the split)."""
    if recipe.augmentation == "strong":
        return StrongAugmenter(square)
    return BatchAugmenter(square) if protocol_augments else None


def _new_trainer(
    model: torch.nn.Module,
    *,
    lr: float,
    loss: str,
    batch_size: int,
    seed: int,
    device: torch.device,
    speed: SpeedOptions,
    augmenter: BatchAugmenter | StrongAugmenter | None,
    recipe: recipes.Recipe = recipes.THESIS,
    total_steps: int = 0,
) -> _Trainer:
    """Place ``model`` on the device and give it the recipe's optimiser at peak rate ``lr``
    and its schedule over ``total_steps`` optimiser steps."""
    forward = place_model(model, device, speed)
    optimizer = recipes.make_optimizer(recipe, model.parameters(), lr)
    # fp16 needs loss scaling; bf16 and fp32 do not (the scaler is then a no-op).
    scaler = torch.amp.GradScaler(device.type, enabled=speed.amp_dtype is torch.float16)
    generator = torch.Generator().manual_seed(seed)
    return _Trainer(
        model,
        forward,
        optimizer,
        scaler,
        generator,
        augmenter,
        speed,
        device,
        loss,
        batch_size,
        seed,
        recipes.make_scheduler(recipe, optimizer, total_steps),
    )


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """Optimiser steps of one epoch over ``n_train`` images (the last batch may be short)."""
    return -(-n_train // batch_size)


def _train(
    result: CellResult,
    split: ProtocolSplit,
    settings: CellSettings,
    device: torch.device,
    class_metrics: dict[str, tuple[int, ...]],
    checkpoint: Path | None = None,
    stop: threading.Event | None = None,
    on_epoch_end: EpochCallback | None = None,
    heap: HeapTrimmer | None = None,
) -> None:
    """Train one cell into ``result``: prepare it, continue from its checkpoint if there is
    one, then per epoch train and record; finally measure every test image."""
    from tqdm.auto import tqdm

    cell, settings = _prepare_cell(result, split, settings, device, checkpoint, stop, heap)
    if checkpoint is not None and checkpoint.is_file():
        _restore(cell, result, load_resume_state(checkpoint))
    label = f"{result.architecture} s{result.seed}" + (
        f" f{result.fold}" if result.fold is not None else ""
    )
    epochs = tqdm(
        range(cell.first_epoch, settings.epochs + 1),
        desc=label,
        unit="epoch",
        disable=not settings.progress,
        leave=False,
    )
    predictions = None
    min_epochs = settings.recipe.min_epochs(settings.epochs)
    for epoch in epochs:
        # Checked first, so a cell resumed after early stopping ended it trains no more.
        if cell.patience_ran_out(settings.recipe.patience, min_epochs):
            break
        trained = _train_epoch(
            cell.trainer, cell.train, cell.n_train, epoch, stop, progress=settings.progress
        )
        cell.train_seconds += trained.seconds
        predictions = _record_epoch(cell, result, settings, epoch, trained, checkpoint)
        epochs.set_postfix(loss=f"{trained.loss:.4f}", test_acc=f"{result.test_accuracy:.4f}")
        if on_epoch_end is not None:
            on_epoch_end(result, epoch)
    _finish(cell, result, split, settings, class_metrics, predictions)


def _prepare_cell(
    result: CellResult,
    split: ProtocolSplit,
    settings: CellSettings,
    device: torch.device,
    checkpoint: Path | None,
    stop: threading.Event | None,
    heap: HeapTrimmer | None,
) -> tuple[_Cell, CellSettings]:
    """Everything before the first epoch: seed, host memory, speed options, the rate
    (``--lr-search``), the model (its size recorded in ``result``), its optimiser, and the
    split on the device. Returns the cell and the settings with the rate it trains with."""
    started = time.perf_counter()
    seed_everything(result.seed, settings.deterministic)
    host_memory.apply(settings.host_memory)
    (heap or HeapTrimmer()).before_cell(
        cell_configuration(result.architecture, split, settings, device)
    )
    reset_peak_memory(device)
    speed = resolve_speed(settings.amp, settings.channels_last, settings.compile, device)
    if device.type == "cuda" and not settings.deterministic:
        torch.backends.cudnn.benchmark = True  # input shapes are fixed within a cell
    if settings.lr_grid:  # before the cell's optimiser is made: it takes the chosen rate
        settings = _settle_lr(result, split, settings, device, speed, checkpoint, stop)
    model = _build_model(result.architecture, settings)
    height, width = split.train.labels.shape[1:]
    result.params = architectures.count_parameters(model)
    result.gflops = architectures.forward_gflops(model, size=(height, width))
    recipe = settings.recipe
    # Early stopping holds out the validation images --lr-search uses (same seed and draw).
    train, validation = (
        carve_validation(split.train, settings.validation_seed)
        if recipe.patience is not None
        else (split.train, None)
    )
    n_train = images_trained(len(train), settings.batch_size)
    trainer = _new_trainer(
        model,
        lr=settings.lr,
        loss=settings.loss,
        batch_size=settings.batch_size,
        seed=result.seed,
        device=device,
        speed=speed,
        # Whole batches are augmented on the device.
        augmenter=make_augmenter(recipe, split.augment, square=height == width),
        recipe=recipe,
        total_steps=settings.epochs * steps_per_epoch(n_train, settings.batch_size),
    )
    cell = _Cell(
        trainer,
        train=_DeviceSplit.of(train, device),
        test=_DeviceSplit.of(split.test, device),
        n_train=n_train,
        started=started,
        validation=_DeviceSplit.of(validation, device) if validation is not None else None,
    )
    return cell, settings


def _restore(cell: _Cell, result: CellResult, state: dict[str, Any]) -> None:
    """Continue from a resume checkpoint: weights, optimiser, every RNG, history, clocks."""
    trainer = cell.trainer
    trainer.model.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    if "scaler" in state:
        trainer.scaler.load_state_dict(state["scaler"])
    if trainer.scheduler is not None:
        trainer.scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(state["rng"], trainer.generator)
    result.history = list(state["history"])
    cell.train_seconds = float(state["train_seconds"])
    # Wall time of earlier invocations up to this checkpoint; train_cell adds its own.
    result.total_seconds = cell.earlier_seconds = float(state.get("elapsed_seconds", 0.0))
    cell.first_epoch = int(state["epoch"]) + 1
    cell.last_epoch = int(state["epoch"])
    if "best_epoch" in state:
        cell.best_epoch, cell.best_dice = int(state["best_epoch"]), float(state["best_dice"])
        cell.best_state = state["best_state"]
    last = {row["split"]: row for row in result.history if row["epoch"] == cell.last_epoch}
    result.train_loss, result.train_accuracy = last["train"]["loss"], last["train"]["accuracy"]
    result.test_loss, result.test_accuracy = last["test"]["loss"], last["test"]["accuracy"]


def _train_epoch(
    trainer: _Trainer,
    data: _DeviceSplit,
    n_train: int,
    epoch: int,
    stop: threading.Event | None,
    progress: bool = False,
) -> _EpochScores:
    """One epoch over ``n_train`` of ``data``'s images in a shuffled order: per batch the
    data, forward, loss, backward and step; the sums stay on the device until its end."""
    from tqdm.auto import tqdm

    device, speed, augmenter = trainer.device, trainer.speed, trainer.augmenter
    started = time.perf_counter()
    synchronize(device)
    trainer.model.train()
    order = torch.randperm(len(data.images), generator=trainer.generator)[:n_train].to(device)
    if augmenter is not None:
        # Drawn from a generator seeded by (seed, epoch): a resumed cell redraws them.
        augment_params = augmenter.draw(
            torch.Generator().manual_seed(epoch_seed(trainer.seed, epoch)), n_train
        ).to(device)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    valid = torch.zeros((), device=device, dtype=torch.long)
    batches = range(0, n_train, trainer.batch_size)
    for start in tqdm(
        batches, desc=f"epoch {epoch}", unit="batch", disable=not progress, leave=False
    ):
        # data
        index = order[start : start + trainer.batch_size]
        x = model_input(data.images[index], speed.channels_last)
        y = data.labels[index]
        if augmenter is not None:  # keeps the memory format of x
            x, y = augmenter.apply(x, y, augment_params[start : start + len(index)])
        # forward
        with speed.autocast(device):
            logits = trainer.forward(x)
        # loss, in fp32 (compute_loss casts)
        loss = compute_loss(trainer.loss, logits, y)
        # backward
        trainer.optimizer.zero_grad(set_to_none=True)
        trainer.scaler.scale(loss).backward()
        # step
        trainer.scaler.step(trainer.optimizer)
        trainer.scaler.update()
        if trainer.scheduler is not None:
            trainer.scheduler.step()
        # log: sums on the device, read once after the epoch
        loss_sum += loss.detach() * len(index)
        c, v = pixel_correct(logits.detach(), y)
        correct += c
        valid += v
        if stop is not None and stop.is_set():
            # The epoch in progress is dropped; the last epoch checkpoint is the record.
            raise CellInterrupted()
    synchronize(device)
    seconds = time.perf_counter() - started
    train_loss = loss_sum.item() / n_train
    train_accuracy = correct.item() / max(valid.item(), 1)
    if not math.isfinite(train_loss):
        raise NonFiniteLoss(f"training loss became {train_loss} in epoch {epoch}")
    return _EpochScores(train_loss, train_accuracy, seconds)


def _record_epoch(
    cell: _Cell,
    result: CellResult,
    settings: CellSettings,
    epoch: int,
    trained: _EpochScores,
    checkpoint: Path | None,
) -> np.ndarray | None:
    """After an epoch: evaluate on the test images, append the epoch's history rows, keep
    its numbers as the result's latest, and write the resume checkpoint. Returns the test
    predictions after the last epoch (None before)."""
    started = time.perf_counter()
    trainer = cell.trainer
    recipe = settings.recipe
    test = evaluate_scores(
        trainer.forward,
        cell.test.images,
        cell.test.labels,
        settings.loss,
        settings.batch_size,
        trainer.device,
        trainer.speed,
        # With test-time flips or a kept best epoch, _finish predicts once at the end.
        keep_predictions=epoch == settings.epochs and not recipe.tta and recipe.patience is None,
        num_classes=settings.num_classes,
    )
    test_loss, test_accuracy, predictions = test.loss, test.accuracy, test.predictions
    base = {
        "architecture": result.architecture,
        "seed": result.seed,
        "fold": result.fold,
        "epoch": epoch,
    }
    result.history.append(
        {
            **base,
            "split": "train",
            "loss": trained.loss,
            "accuracy": trained.accuracy,
            "seconds": trained.seconds,
            # Not measured on training batches: the timed loop stays as it was, and a
            # running mean over augmented batches in training mode is not comparable.
            "dice": None,
        }
    )
    result.history.append(
        {
            **base,
            "split": "test",
            "loss": test_loss,
            "accuracy": test_accuracy,
            "seconds": time.perf_counter() - started,
            "dice": test.dice,
        }
    )
    cell.last_epoch = epoch
    if cell.validation is not None:
        _record_validation(cell, result, base, settings)
    result.train_loss, result.train_accuracy = trained.loss, trained.accuracy
    result.test_loss, result.test_accuracy = test_loss, test_accuracy
    if checkpoint is not None:
        _save_resume_state(checkpoint, _resume_state(cell, result, settings, epoch))
    return predictions


def _record_validation(
    cell: _Cell, result: CellResult, base: dict[str, Any], settings: CellSettings
) -> None:
    """Early stopping's measurement after an epoch: the foreground Dice of the held-out
    training images (a ``validation`` history row); one better than every earlier epoch's
    (a tie keeps the earlier) makes this epoch the best and keeps its weights."""
    assert cell.validation is not None
    started = time.perf_counter()
    trainer = cell.trainer
    scores = evaluate_scores(
        trainer.forward,
        cell.validation.images,
        cell.validation.labels,
        settings.loss,
        settings.batch_size,
        trainer.device,
        trainer.speed,
        keep_predictions=False,
        num_classes=settings.num_classes,
    )
    assert scores.dice is not None
    result.history.append(
        {
            **base,
            "split": "validation",
            "loss": scores.loss,
            "accuracy": scores.accuracy,
            "seconds": time.perf_counter() - started,
            "dice": scores.dice,
        }
    )
    if scores.dice > cell.best_dice:
        cell.best_dice, cell.best_epoch = scores.dice, base["epoch"]
        cell.best_state = {
            k: v.detach().cpu().clone() for k, v in trainer.model.state_dict().items()
        }


def _resume_state(
    cell: _Cell, result: CellResult, settings: CellSettings, epoch: int
) -> dict[str, Any]:
    """What :func:`_restore` continues from after ``epoch`` (tensors, numbers, lists)."""
    trainer = cell.trainer
    return {
        "architecture": result.architecture,
        "seed": result.seed,
        "fold": result.fold,
        "epoch": epoch,
        "batch_size": settings.batch_size,
        "model": trainer.model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "scaler": trainer.scaler.state_dict(),
        "history": result.history,
        "train_seconds": cell.train_seconds,
        "elapsed_seconds": cell.earlier_seconds + time.perf_counter() - cell.started,
        "rng": _rng_state(trainer.generator),
        # A resumed cell reuses the search's outcome instead of searching again.
        **({"lr": result.lr, "lr_search": result.lr_search} if settings.lr_grid else {}),
        **({"scheduler": trainer.scheduler.state_dict()} if trainer.scheduler else {}),
        **(
            {
                "best_epoch": cell.best_epoch,
                "best_dice": cell.best_dice,
                "best_state": cell.best_state,
            }
            if cell.best_epoch is not None
            else {}
        ),
    }


def _finish(
    cell: _Cell,
    result: CellResult,
    split: ProtocolSplit,
    settings: CellSettings,
    class_metrics: dict[str, tuple[int, ...]],
    predictions: np.ndarray | None,
) -> None:
    """The cell's final record: timing, peak memory, every test image's metrics, weights.

    Under early stopping the best epoch's weights are put back first; with test-time flips
    (or a kept best epoch) the test images are predicted here, once, and the result's test
    loss and accuracy are those of this final prediction.
    """
    trainer = cell.trainer
    recipe = settings.recipe
    result.epochs = cell.last_epoch
    if cell.best_state is not None:
        trainer.model.load_state_dict(cell.best_state)
        result.best_epoch = cell.best_epoch
    if predictions is None:  # cut after the last epoch's checkpoint, or predicted only now
        final = evaluate_scores(
            trainer.forward,
            cell.test.images,
            cell.test.labels,
            settings.loss,
            settings.batch_size,
            trainer.device,
            trainer.speed,
            tta=recipe.tta,
        )
        predictions = final.predictions
        if recipe.tta or recipe.patience is not None:
            result.test_loss, result.test_accuracy = final.loss, final.accuracy
    assert predictions is not None
    train_seconds = cell.train_seconds
    result.train_seconds = train_seconds
    result.images_per_second = (
        cell.n_train * cell.last_epoch / train_seconds if train_seconds else None
    )
    result.peak_memory_mb = peak_memory_mb(trainer.device)
    result.predictions = predictions
    result.per_image = per_image_rows(result, split.test, predictions, class_metrics)
    result.model_state = {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()}


def _settle_lr(
    result: CellResult,
    split: ProtocolSplit,
    settings: CellSettings,
    device: torch.device,
    speed: SpeedOptions,
    checkpoint: Path | None,
    stop: threading.Event | None,
) -> CellSettings:
    """``settings`` with the rate ``--lr-search`` chose, recorded in ``result``: read back
    from the resume checkpoint when there is one (a resumed cell never searches again),
    else searched now."""
    state = (
        load_resume_state(checkpoint) if checkpoint is not None and checkpoint.is_file() else None
    )
    if state is not None and "lr" in state:
        result.lr, result.lr_search = float(state["lr"]), list(state["lr_search"])
    else:
        result.lr = None  # no rate until one is chosen (a failed search trained with none)
        result.lr, result.lr_search = search_lr(
            result.architecture, result.seed, result.fold, split, settings, device, speed, stop
        )
        # The cell then starts from the random state it has without a search, so it trains
        # exactly as `--lr <chosen>` would, and its peak memory is its own.
        seed_everything(result.seed, settings.deterministic)
        reset_peak_memory(device)
    return dataclasses.replace(settings, lr=result.lr)


def search_lr(
    architecture: str,
    seed: int,
    fold: int | None,
    split: ProtocolSplit,
    settings: CellSettings,
    device: torch.device,
    speed: SpeedOptions = PYTORCH_DEFAULTS,
    stop: threading.Event | None = None,
) -> tuple[float, list[dict[str, Any]]]:
    """Pick a learning rate from ``settings.lr_grid`` on a validation split of the training
    images; return it and every candidate's scores.

    Only ``split.train`` is used: :func:`~bench.protocols.carve_validation` holds out a
    seeded 20 % of its source images (the same for every architecture). Each candidate
    trains from the cell's seed, as the cell does (same initial weights, batch order and
    augmentations for every rate), for the cell's full epochs (a shorter budget favours
    large rates that only learn fast early), then is scored by the primary endpoint: the
    mean over validation images of the mean Dice of classes 1..K-1. The best wins; a tie
    goes to the smaller rate; a rate whose loss becomes NaN/inf is never chosen.
    """
    assert settings.lr_grid, "search_lr needs settings.lr_grid"
    from tqdm.auto import tqdm

    fit, validation = carve_validation(split.train, settings.validation_seed)
    batch_size = min(settings.batch_size, len(fit))  # the fit part is 80 % of the training set
    fit_data = _DeviceSplit.of(fit, device)
    validation_data = _DeviceSplit.of(validation, device)
    height, width = fit.labels.shape[1:]
    augmenter = make_augmenter(settings.recipe, split.augment, square=height == width)
    label = f"{architecture} seed {seed}" + (f" fold {fold}" if fold is not None else "")
    n_fit = images_trained(len(fit), batch_size)
    scores: list[dict[str, Any]] = []
    for lr in sorted(settings.lr_grid):
        started = time.perf_counter()
        seed_everything(seed, settings.deterministic)
        trainer = _new_trainer(
            _build_model(architecture, settings),
            lr=lr,
            loss=settings.loss,
            batch_size=batch_size,
            seed=seed,
            device=device,
            speed=speed,
            augmenter=augmenter,
            recipe=settings.recipe,
            total_steps=settings.epochs * steps_per_epoch(n_fit, batch_size),
        )
        entry: dict[str, Any] = {
            "lr": lr,
            "validation_dice": None,  # None: the rate diverged (its error says how)
            "validation_loss": None,
            "error": "",
        }
        try:
            # The cell's epochs (_train_epoch), without its per-epoch test evaluation and
            # checkpoints: candidates train exactly as the cell will.
            for epoch in tqdm(
                range(1, settings.epochs + 1),
                desc=f"{label} lr {lr:g}",
                unit="epoch",
                disable=not settings.progress,
                leave=False,
            ):
                _train_epoch(trainer, fit_data, n_fit, epoch, stop)
            evaluation = evaluate_scores(
                trainer.forward,
                validation_data.images,
                validation_data.labels,
                settings.loss,
                batch_size,
                device,
                speed,
            )
            loss, predictions = evaluation.loss, evaluation.predictions
            if not math.isfinite(loss):
                raise NonFiniteLoss(f"validation loss is {loss}")
            assert predictions is not None
            entry["validation_loss"] = loss
            entry["validation_dice"] = validation_dice(
                predictions, validation, settings.num_classes
            )
            outcome = f"validation Dice {entry['validation_dice']:.4f}"
        except NonFiniteLoss as error:
            entry["error"] = str(error)
            outcome = f"not chosen ({error})"
        entry["seconds"] = time.perf_counter() - started
        scores.append(entry)
        print(f"{label}: lr {lr:g} → {outcome}", file=sys.stderr, flush=True)
        del trainer
    best: dict[str, Any] | None = None
    for entry in scores:  # ascending rates: a tie keeps the smaller one
        dice = entry["validation_dice"]
        if dice is not None and (best is None or dice > best["validation_dice"]):
            best = entry
    if best is None:
        raise NonFiniteLoss(
            f"--lr-search: the loss diverged at every rate of {list(settings.lr_grid)}"
        )
    for entry in scores:
        entry["chosen"] = entry is best
    print(
        f"{label}: chose lr {best['lr']:g} (validation: {len(validation)} of "
        f"{len(split.train)} training images)",
        file=sys.stderr,
        flush=True,
    )
    return float(best["lr"]), scores


def validation_dice(predictions: np.ndarray, arrays: SplitArrays, num_classes: int) -> float:
    """The primary endpoint on ``arrays``: per image, the mean Dice of classes 1..K-1 over
    its valid pixels; then the mean over images."""
    per_image = []
    for i, (h, w) in enumerate(arrays.sizes):
        truth = arrays.labels[i, :h, :w]
        prediction, valid = predictions[i, :h, :w], truth != IGNORE_INDEX
        per_image.append(
            np.mean(
                [
                    metrics.dice(metrics.confusion_counts(prediction, truth, (c,), valid))
                    for c in range(1, num_classes)
                ]
            )
        )
    return float(np.mean(per_image))


def per_image_rows(
    result: CellResult,
    test: SplitArrays,
    predictions: np.ndarray,
    class_metrics: dict[str, tuple[int, ...]],
) -> list[dict[str, Any]]:
    """Per-image, per-class metrics over each image's original (unpadded) pixels."""
    rows = []
    for i, image_id in enumerate(test.image_ids):
        h, w = test.sizes[i]
        scores = metrics.image_metrics(
            predictions[i, :h, :w], test.labels[i, :h, :w], classes=class_metrics
        )
        for class_name, values in scores.items():
            rows.append(
                {
                    "architecture": result.architecture,
                    "seed": result.seed,
                    "fold": result.fold,
                    "image_id": image_id,
                    "class": class_name,
                    **values,
                }
            )
    return rows


def resolve_architectures(config: RunConfig) -> list[str]:
    """Expand names and fnmatch patterns (or --all) against the registry, in the order given."""
    if config.all:
        return architectures.available()
    names: list[str] = []
    for pattern in config.architectures:
        matches = architectures.available(pattern)
        if not matches:
            known = architectures.available()
            close = difflib.get_close_matches(pattern, known, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(
                f"no architecture matches {pattern!r}{hint}; known: {', '.join(known)}"
            )
        names.extend(m for m in matches if m not in names)
    return names
