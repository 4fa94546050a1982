"""Measurements of a built model: trainable parameters, forward GFLOPs, the output-shape check.

This module owns what is measured on an ``nn.Module`` already built; it knows nothing of the
registry (looking a name up and building it is :mod:`architectures.registry`'s, whose
``check_output_shape`` builds a model by name and then calls :func:`check_logits_shape`).
"""

from __future__ import annotations

import torch
from torch import nn

from bench.errors import ArchitectureError

__all__ = ["check_logits_shape", "count_parameters", "forward_gflops"]


def _device_of(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def check_logits_shape(
    name: str, model: nn.Module, *, size: tuple[int, int] = (120, 120), num_classes: int = 3
) -> None:
    """Run one forward of ``model`` (architecture ``name``) on zeros and insist on logits
    ``(1, num_classes, H, W)``; any failure is an :class:`ArchitectureError` naming ``name``.

    Catches a broken model before hours of training do.
    """
    height, width_px = size
    device = _device_of(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model(torch.zeros(1, 3, height, width_px, device=device))
    except Exception as error:
        raise ArchitectureError(
            f"architecture {name!r}: forward on a (1, 3, {height}, {width_px}) input failed: "
            f"{type(error).__name__}: {error}"
        ) from error
    finally:
        model.train(was_training)
    expected = (1, num_classes, height, width_px)
    shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
    if shape != expected:
        raise ArchitectureError(
            f"architecture {name!r} returns output of shape {shape} for a "
            f"(1, 3, {height}, {width_px}) input; expected logits of shape {expected}"
        )


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (what the optimiser updates, as Keras' 'trainable params')."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def forward_gflops(
    model: nn.Module, size: tuple[int, int] = (120, 120), *, in_channels: int = 3
) -> float:
    """Forward GFLOPs for one image, as torch's FlopCounterMode counts (multiply-add = 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    device = _device_of(model)
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(torch.zeros(1, in_channels, *size, device=device))
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 1e9
