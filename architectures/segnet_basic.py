"""``segnet_basic``: SegNet-Basic as the thesis describes it (§2.3.3, §3.3).

What the thesis specifies, and what is built here:

* 4 encoder and 4 decoder convolution layers, 7x7 kernels, 'same' padding;
* batch normalisation after every convolution, no convolution biases;
* ReLU in the encoder only: no non-linearity in the decoder;
* filters "from 64 to 512": 64, 128, 256, 512 in the encoder, mirrored in the decoder;
* max-pooling 2, 2, 2, 3 (§3.3: the last pooling/upsampling is 3x3 so that 120 -> 15 -> 5
  instead of 15 -> 7), upsampling by the saved max-pooling indices (SegNet's defining idea:
  ``MaxPool2d(return_indices=True)`` + ``MaxUnpool2d``);
* the thesis's output head (§3.3): 1x1 conv (with bias) to the classes + dropout 0.5
  (+ softmax, left to the loss);
* Keras defaults as in the thesis's code: Glorot-uniform kernels, zero biases, BatchNorm
  momentum 0.99 / eps 1e-3 (PyTorch momentum 0.01).

Departures (from the thesis and from Badrinarayanan et al.'s SegNet-Basic):

* the original SegNet-Basic uses 64 filters in every layer and local contrast normalisation of
  the input (LRN); the thesis's 64 -> 512 widths are used and there is no LRN;
* the thesis's SegNet code is not in the text (only the U-Net is in the annex); Keras has no
  index unpooling, so the thesis may have used ``UpSampling2D``; index unpooling is used here as
  SegNet defines it;
* the decoder mirrors the encoder as unpool -> conv: 512 -> 256, 256 -> 128, 128 -> 64,
  64 -> 64 (each unpooling needs the channel count of its pooling's indices, so the decoder's
  filters are 256, 128, 64, 64 rather than a literal 512, 256, 128, 64);
* no softmax in the model (logits; dropout acts on the logits as in the thesis's head);
* inputs whose sides are not multiples of 24 (2*2*2*3) are zero-padded bottom/right and the
  logits cropped back; ``in_channels`` and ``num_classes`` are free.

``width`` scales every convolution's filter count (64 ... 512 -> round(c * width)) with the
built-ins' channel floor: no stage below ``architectures.MIN_CHANNELS`` = 16 channels
(``architectures.layers.scaled``). The thesis trained width 1.0 only, so the floor departs
from it nowhere; it only stops the scaling from being uniform below width 0.25 (at 0.0625 the
encoder is 16, 16, 16, 32 instead of 4, 8, 16, 32). The 1x1 output conv keeps
``num_classes`` filters.
"""

from __future__ import annotations

import torch
from torch import nn

from architectures.layers import (
    _crop_or_pad_to,
    _keras_batch_norm,
    _keras_init,
    _pad_to_multiple,
    _ThesisHead,
    scaled,
)
from architectures.registry import register_architecture

ENCODER_FILTERS = (64, 128, 256, 512)
DECODER_FILTERS = (256, 128, 64, 64)
POOLS = (2, 2, 2, 3)
KERNEL = 7


def _conv_bn(in_channels: int, out_channels: int, relu: bool) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, KERNEL, padding=KERNEL // 2, bias=False),
        _keras_batch_norm(out_channels),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class SegNetBasic(nn.Module):
    """SegNet-Basic (thesis variant): 4 + 4 convs 7x7, index unpooling, pools 2-2-2-3."""

    multiple = 24  # product of the poolings

    def __init__(self, num_classes: int = 3, in_channels: int = 3, width: float = 1.0) -> None:
        super().__init__()
        encoder_filters = [scaled(c, width) for c in ENCODER_FILTERS]
        decoder_filters = [scaled(c, width) for c in DECODER_FILTERS]
        self.encoder = nn.ModuleList()
        previous = in_channels
        for channels in encoder_filters:
            self.encoder.append(_conv_bn(previous, channels, relu=True))
            previous = channels
        self.pools = nn.ModuleList(nn.MaxPool2d(p, stride=p, return_indices=True) for p in POOLS)
        self.unpools = nn.ModuleList(nn.MaxUnpool2d(p, stride=p) for p in reversed(POOLS))
        self.decoder = nn.ModuleList()
        for channels in decoder_filters:
            self.decoder.append(_conv_bn(previous, channels, relu=False))
            previous = channels
        self.head = _ThesisHead(previous, num_classes)
        _keras_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, size = _pad_to_multiple(x, self.multiple)
        saved = []
        for conv, pool in zip(self.encoder, self.pools, strict=True):
            x = conv(x)
            shape = x.shape[-2:]
            x, indices = pool(x)
            saved.append((indices, shape))
        for unpool, conv, (indices, shape) in zip(
            self.unpools, self.decoder, reversed(saved), strict=True
        ):
            x = conv(unpool(x, indices, output_size=shape))
        return _crop_or_pad_to(self.head(x), size)


@register_architecture(
    "segnet_basic",
    description="SegNet-Basic as in the thesis (4+4 convs 7x7, 64-512 filters, index unpooling)",
    width_note="every conv stage, min 16 ch",
)
def segnet_basic(num_classes: int = 3, in_channels: int = 3, width: float = 1.0) -> nn.Module:
    """The thesis's SegNet-Basic; ``width`` scales every filter count (at least 16 channels)."""
    return SegNetBasic(num_classes=num_classes, in_channels=in_channels, width=width)
