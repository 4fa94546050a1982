"""Training recipes: how every architecture of a run is trained, apart from the data split.

A protocol (:mod:`bench.protocols`) says which images train and which test; a recipe says
how a model learns from them. One recipe applies to every architecture of a run alike
(``bench run --recipe NAME``, recorded in ``config.json`` and the report's methods):

``thesis`` (the default) — the thesis's training as each protocol prescribes it: Adam at a
constant rate (1e-4), the protocol's loss, the protocol's online augmentation (none under the
thesis protocols), 30 epochs, the weights of the last epoch, no test-time augmentation.

``modern`` — what the field trains segmentation models with today, the same for every
architecture:

- AdamW (decoupled weight decay 0.01, PyTorch's default) at a peak rate of 1e-3, Adam's own
  default rate, reached by a linear warm-up over the first 5 % of the steps and then decayed
  to 0 along a half cosine (per step);
- ``dice_ce``: cross-entropy plus the soft Dice loss of the foreground classes, as nnU-Net
  trains (:func:`soft_dice_loss`);
- stronger online augmentation on the device, on every protocol: the protocol's flips and
  quarter turns, then a random rotation and scale, and colour jitter wide enough to cover
  stain variation between smears (:class:`bench.augment.StrongAugmenter`);
- up to 60 epochs with early stopping: 20 % of the training images (by source image, the
  split seed's draw, :func:`bench.protocols.carve_validation`) are held out, the foreground
  Dice on them is measured after every epoch, training stops after ``patience`` epochs
  without improvement (but not before half of the epochs: while the rate is high the
  validation Dice is too noisy to stop on), and the weights of the best epoch are kept.
  The test images are never used for any choice;
- test-time augmentation: the class probabilities averaged over the image and its
  horizontal, vertical and both flips.

Deep supervision, the last usual ingredient, is left out: none of the thesis models has
auxiliary outputs, and smp's decoders do not expose them.

Why each part was chosen, with the validation measurements behind it:
``benchmarks/recipe_ablation.py`` and its record in ``reports/recipe/``.

This module is pure settings and functions of tensors; torch is imported where it is used,
so importing it stays cheap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("constant", "cosine")
AUGMENTATIONS = ("protocol", "strong")


@dataclass(frozen=True)
class Recipe:
    """How to train; ``None`` leaves a setting to the protocol (or an explicit flag)."""

    name: str
    optimizer: str | None = None  # adam | adamw; None: the protocol's
    lr: float | None = None  # peak learning rate; None: the protocol's
    weight_decay: float = 0.0  # AdamW's decoupled decay
    warmup_fraction: float = 0.0  # share of all steps with a linear warm-up
    schedule: str = "constant"  # after the warm-up: constant | cosine (to 0)
    loss: str | None = None  # None: the protocol's
    epochs: int | None = None  # None: the protocol's; with patience, the most epochs
    augmentation: str = "protocol"  # protocol: the protocol's own; strong: StrongAugmenter
    tta: bool = False  # predictions averaged over flips
    patience: int | None = None  # early stopping on a validation split; None: no stopping
    # Early stopping may end training only once this share of the epochs has been trained:
    # while the rate is still high (warm-up, the cosine's first half) the validation Dice
    # jumps about, and one lucky early epoch followed by ``patience`` noisy ones would
    # otherwise end a cell long before it has learned (reports/recipe/budget.md).
    min_epochs_fraction: float = 0.0

    def __post_init__(self) -> None:
        if self.optimizer is not None and self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.augmentation not in AUGMENTATIONS:
            raise ValueError(f"augmentation must be one of {AUGMENTATIONS}")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be at least 1, got {self.patience}")
        if not 0 <= self.min_epochs_fraction <= 1:
            raise ValueError(
                f"min_epochs_fraction must be in [0, 1], got {self.min_epochs_fraction}"
            )

    def min_epochs(self, epochs: int) -> int:
        """The fewest epochs a cell of ``epochs`` trains before early stopping may end it."""
        return math.ceil(self.min_epochs_fraction * epochs)

    def describe(self) -> str:
        """One sentence for the report's methods, made from the fields."""
        if self == THESIS:
            return (
                "the protocol's optimiser at a constant rate, its loss and its augmentation; "
                "the last epoch's weights"
            )
        parts = []
        if self.optimizer == "adamw":
            parts.append(f"AdamW (weight decay {self.weight_decay:g})")
        elif self.optimizer:
            parts.append(self.optimizer.capitalize())
        if self.warmup_fraction:
            parts.append(f"{self.warmup_fraction:.0%} linear warm-up")
        if self.schedule == "cosine":
            parts.append("cosine decay to 0 per step")
        if self.loss == "dice_ce":
            parts.append("cross-entropy + soft Dice loss")
        if self.augmentation == "strong":
            parts.append(
                "strong on-device augmentation (flips, quarter turns, rotation, scale, colour "
                "jitter)"
            )
        if self.patience is not None:
            not_before = (
                f", not before {self.min_epochs_fraction:.0%} of the epochs"
                if self.min_epochs_fraction
                else ""
            )
            parts.append(
                f"early stopping (patience {self.patience}{not_before}) on the foreground "
                "Dice of a validation split of 20 % of the training images, keeping the best "
                "epoch's weights"
            )
        if self.tta:
            parts.append("test-time flips")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, for ``config.json`` (the recipe as it was when the run trained)."""
        return dict(self.__dict__)


THESIS = Recipe(name="thesis")

MODERN = Recipe(
    name="modern",
    optimizer="adamw",
    lr=1e-3,
    weight_decay=0.01,
    warmup_fraction=0.05,
    schedule="cosine",
    loss="dice_ce",
    epochs=60,
    augmentation="strong",
    tta=True,
    patience=15,
    min_epochs_fraction=0.5,
)

RECIPES: dict[str, Recipe] = {r.name: r for r in (THESIS, MODERN)}


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``; an unknown name is an error listing the known ones."""
    from bench.errors import ConfigError

    try:
        return RECIPES[name]
    except KeyError:
        raise ConfigError(f"unknown recipe {name!r}; known recipes: {', '.join(RECIPES)}") from None


# ---------------------------------------------------------------------------- schedule


def warmup_steps(total_steps: int, warmup_fraction: float) -> int:
    """Steps of the linear warm-up: the fraction of all steps, at least 1 when asked for."""
    if warmup_fraction <= 0 or total_steps <= 0:
        return 0
    return max(1, round(warmup_fraction * total_steps))


def lr_factor(step: int, total_steps: int, warmup: int, schedule: str) -> float:
    """The multiple of the peak rate used for optimiser step ``step`` (0-based).

    Warm-up: ``(step + 1) / warmup`` for the first ``warmup`` steps (so the first step
    already moves, and step ``warmup - 1`` runs at the peak). Then ``constant``: 1;
    ``cosine``: ``0.5 * (1 + cos(pi * t))`` with ``t`` going from 0 at the first step after
    the warm-up to 1 at the last step ``total_steps - 1`` (which therefore runs at rate 0:
    the half cosine ends there, as timm's and nnU-Net's decays do).
    """
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    decay_steps = total_steps - warmup
    if decay_steps <= 1:
        return 1.0
    t = min(1.0, (step - warmup) / (decay_steps - 1))
    return 0.5 * (1.0 + math.cos(math.pi * t))


def make_optimizer(
    recipe: Recipe, parameters: Any, lr: float, default: str = "adam"
) -> torch.optim.Optimizer:
    """The recipe's optimiser (``default``, the protocol's, when it names none) at ``lr``."""
    import torch

    name = recipe.optimizer or default
    if name == "adamw":
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=recipe.weight_decay)
    if name == "adam":
        return torch.optim.Adam(parameters, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}")


def make_scheduler(
    recipe: Recipe, optimizer: torch.optim.Optimizer, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR | None:
    """A per-step scheduler following :func:`lr_factor`; None for a constant rate without
    warm-up (the thesis recipe: nothing to schedule, and nothing extra in checkpoints)."""
    import torch

    if recipe.schedule == "constant" and recipe.warmup_fraction == 0:
        return None
    warmup = warmup_steps(total_steps, recipe.warmup_fraction)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, warmup, recipe.schedule)
    )


# ---------------------------------------------------------------------------- loss


def soft_dice_loss(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int, smooth: float = 1e-5
) -> torch.Tensor:
    """1 − the mean soft Dice of the foreground classes 1..K−1 over the batch's valid pixels.

    Per class c: ``(2 Σ p_c y_c + smooth) / (Σ p_c + Σ y_c + smooth)`` with ``p`` the softmax
    probabilities and ``y`` the one-hot labels, the sums over every valid pixel of the
    batch (nnU-Net's "batch Dice"; pixels labelled ``ignore_index``, the padding, count
    nowhere). The background is left out, as nnU-Net's ``do_bg=False``: it is most of
    every image and would dominate the mean.
    """
    import torch.nn.functional as F

    num_classes = logits.shape[1]
    valid = (labels != ignore_index).unsqueeze(1).float()
    probabilities = logits.float().softmax(dim=1) * valid
    one_hot = F.one_hot(labels.clamp(min=0), num_classes).permute(0, 3, 1, 2).float() * valid
    dims = (0, 2, 3)
    intersection = (probabilities * one_hot).sum(dims)
    denominator = probabilities.sum(dims) + one_hot.sum(dims)
    dice = (2 * intersection + smooth) / (denominator + smooth)
    return 1.0 - dice[1:].mean()
