"""Layers and helpers shared by the built-in models (the thesis models and the smp wrappers).

This module owns what more than one model file needs: the channel floor (:data:`MIN_CHANNELS`,
:func:`scaled`), padding an input to a multiple of the pooling factor and cropping the logits
back (:func:`_pad_to_multiple`, :func:`_crop_or_pad_to`), Keras' defaults
(:func:`_keras_batch_norm`, :func:`_keras_init`), the thesis's output layer
(:class:`_ThesisHead`, §3.3, with its :class:`_UniformDropout`) and :func:`memory_format_of`.
It knows nothing of the registry: the model files import it and :mod:`architectures.registry`
side by side. The underscore names are for the model files of this package, not for plugins.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MIN_CHANNELS", "memory_format_of", "scaled"]

MIN_CHANNELS = 16
"""The channel floor: ``width`` never makes a built-in's stage narrower than this (see
:func:`scaled`). Narrower, a stage is a bottleneck that decides the result more than the
architecture does (without the floor smp U-Net at width 0.25 had last stages of 8 and 4
channels and never learnt the nucleus). The thesis models' narrowest stage is 64 channels at
width 1.0, so the floor changes nothing for them at width >= 0.25."""


def scaled(channels: int, width: float) -> int:
    """Channel count at ``width``: ``round(channels * width)``, floored at ``MIN_CHANNELS``.

    The floor is ``min(channels, MIN_CHANNELS)``: a stage is never narrower than
    ``MIN_CHANNELS`` channels, nor widened beyond its published (width 1.0) size. Used by
    every built-in (thesis models and the smp decoders), so one floor applies to all.
    """
    return max(min(channels, MIN_CHANNELS), round(channels * width))


def _pad_to_multiple(
    x: torch.Tensor, multiple: int, min_size: int = 0
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Zero-pad bottom/right so H and W are multiples of ``multiple`` (and >= ``min_size``).

    Bottom/right padding keeps every original pixel at the same position on the pooling grid,
    so cropping ``[:H, :W]`` afterwards gives back exactly the input's pixels.
    """
    height, width = x.shape[-2:]
    targets = [
        max(math.ceil(n / multiple), math.ceil(min_size / multiple)) * multiple
        for n in (height, width)
    ]
    if targets == [height, width]:
        return x, (height, width)
    return F.pad(x, (0, targets[1] - width, 0, targets[0] - height)), (height, width)


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """The memory format to give a tensor made from ``x``: contiguous or channels-last as
    ``x`` is; a view that is neither (a crop, a channel slice) counts as channels-last when
    its channels are its innermost dimension."""
    if x.is_contiguous():
        return torch.contiguous_format
    if x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if x.dim() == 4 and x.shape[1] > 1 and x.stride(1) == 1:
        return torch.channels_last
    return torch.contiguous_format


def _crop_or_pad_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Crop (or zero-pad) bottom/right to ``size``."""
    height, width = size
    x = x[..., :height, :width]
    if x.shape[-2:] != (height, width):
        x = F.pad(x, (0, width - x.shape[-1], 0, height - x.shape[-2]))
    return x


def _keras_batch_norm(channels: int) -> nn.BatchNorm2d:
    """BatchNorm with Keras defaults (momentum 0.99 -> PyTorch 0.01, eps 1e-3)."""
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


def _keras_init(module: nn.Module) -> None:
    """Keras defaults: Glorot-uniform kernels, zero biases, BN gamma 1 / beta 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class _UniformDropout(nn.Dropout):
    """``nn.Dropout`` with its mask drawn by ``torch.rand`` (keep where u >= p): the same
    distribution and scaling, but on CPU ``bernoulli_`` is several times slower than
    ``rand`` and showed in the profile of a thesis-model training step."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if self.p == 1:
            return x * 0.0
        keep = torch.rand_like(x, dtype=torch.float32) >= self.p
        return x * keep.to(x.dtype).mul_(1.0 / (1.0 - self.p))


class _ThesisHead(nn.Sequential):
    """The thesis's output layer, §3.3: 1x1 conv to the classes, then dropout 0.5.

    The softmax that follows in the thesis is left to the loss (the model returns logits).
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__(nn.Conv2d(in_channels, num_classes, kernel_size=1), _UniformDropout(0.5))
