"""A tiny fully convolutional network, registered through the ``bench.architectures`` entry point.

Installing this distribution (``pip install ./examples/bench-example-plugin``) makes
``example_tiny_fcn`` appear in ``bench list`` with source ``plugin:bench-example-plugin``.
"""

from __future__ import annotations

import torch
from torch import nn

from architectures import register_architecture


@register_architecture("example_tiny_fcn")
class TinyFCN(nn.Module):
    """Example plugin: three 3x3 conv layers at full resolution, no pooling."""

    def __init__(self, num_classes: int = 3, in_channels: int = 3, width: float = 1.0) -> None:
        super().__init__()
        channels = max(1, round(32 * width))
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, num_classes, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)  # logits, same size as the input
