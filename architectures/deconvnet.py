"""``deconvnet``: DeconvNet (Noh et al., 2015) as the thesis describes it (§2.3.2, §3.3).

Built here:

* convolution network = VGG-16's 13 convolutions, 3x3 'same', each followed by batch norm and
  ReLU (as Noh et al.): 64-64 | 128-128 | 256-256-256 | 512-512-512 | 512-512-512, each block
  closed by a max-pooling whose indices are kept;
* poolings 1x1, 2x2, 2x2, 2x2, 3x3, the sizes the thesis settled on (§3.3: 120 -> 120 -> 60 ->
  30 -> 15 -> 5); a 1x1 "pooling" is the identity and so is its unpooling;
* the thesis's one "fully connected layer with size 1x1" (§2.3.2): a 1x1 conv 512 -> 4096 with
  batch norm + ReLU at the bottleneck, mirrored by a 1x1 transposed conv 4096 -> 512 + BN + ReLU;
* deconvolution network = the mirror image: unpooling with the saved indices, then 3x3
  transposed convolutions (stride 1) + BN + ReLU: 512-512-512 | 512-512-256 | 256-256-128 |
  128-64 | 64-64, as in Noh et al.;
* the thesis's output head (§3.3): 1x1 conv to the classes + dropout 0.5 (+ softmax, left to
  the loss); Keras defaults as in the thesis's code: Glorot-uniform kernels, zero biases,
  biases on every conv, BatchNorm momentum 0.99 / eps 1e-3 (PyTorch momentum 0.01).

Departures:

* Noh et al.'s fc6 is a 7x7 conv (7x7 -> 1x1) followed by fc7 (1x1, 4096) and a 7x7 deconv
  back; the thesis keeps one 1x1 fully connected layer, so here fc6 is a 1x1 conv on the 5x5
  bottleneck (no 7x7 collapse, no fc7) and its mirror a 1x1 transposed conv;
* Noh et al. pool 2x2 five times (224 -> 7) and predict 21 classes; the pools follow the thesis
  and ``num_classes`` is free;
* no softmax in the model (logits; dropout acts on the logits as in the thesis's head);
  no VGG ImageNet initialisation (the thesis trained from Glorot-uniform);
* inputs whose sides are not multiples of 24 (1*2*2*2*3) are zero-padded bottom/right and the
  logits cropped back; ``in_channels`` is free.

``width`` scales every conv / transposed-conv filter count, the 4096-channel fully connected
layer included (c -> round(c * width)), with the built-ins' channel floor: no stage below
``architectures.MIN_CHANNELS`` = 16 channels (``architectures.layers.scaled``). The thesis
trained width 1.0 only, so the floor departs from it nowhere; it only stops the scaling from
being uniform below width 0.25 (at 0.0625 the first blocks are 16 instead of 4 and 8). The
output conv keeps ``num_classes``.
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

VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
DECONV_BLOCKS = ((512, 512, 512), (512, 512, 256), (256, 256, 128), (128, 64), (64, 64))
POOLS = (1, 2, 2, 2, 3)
FC_CHANNELS = 4096


def _conv_bn_relu(in_channels: int, out_channels: int, transposed: bool = False) -> nn.Sequential:
    conv_type = nn.ConvTranspose2d if transposed else nn.Conv2d
    return nn.Sequential(
        conv_type(in_channels, out_channels, 3, padding=1),
        _keras_batch_norm(out_channels),
        nn.ReLU(inplace=True),
    )


class DeconvNet(nn.Module):
    """DeconvNet (thesis variant): VGG-16 convs, 1x1 fc, mirrored deconvs, pools 1-2-2-2-3."""

    multiple = 24  # product of the poolings

    def __init__(self, num_classes: int = 3, in_channels: int = 3, width: float = 1.0) -> None:
        super().__init__()
        previous = in_channels
        self.encoder = nn.ModuleList()
        for block in VGG16_BLOCKS:
            layers = []
            for channels in block:
                layers.append(_conv_bn_relu(previous, scaled(channels, width)))
                previous = scaled(channels, width)
            self.encoder.append(nn.Sequential(*layers))
        self.pools = nn.ModuleList(
            nn.MaxPool2d(p, stride=p, return_indices=True) if p > 1 else nn.Identity()
            for p in POOLS
        )
        fc = scaled(FC_CHANNELS, width)
        self.fc = nn.Sequential(
            nn.Conv2d(previous, fc, 1), _keras_batch_norm(fc), nn.ReLU(inplace=True)
        )
        self.fc_mirror = nn.Sequential(
            nn.ConvTranspose2d(fc, previous, 1), _keras_batch_norm(previous), nn.ReLU(inplace=True)
        )
        self.unpools = nn.ModuleList(
            nn.MaxUnpool2d(p, stride=p) if p > 1 else nn.Identity() for p in reversed(POOLS)
        )
        self.decoder = nn.ModuleList()
        for block in DECONV_BLOCKS:
            layers = []
            for channels in block:
                layers.append(_conv_bn_relu(previous, scaled(channels, width), transposed=True))
                previous = scaled(channels, width)
            self.decoder.append(nn.Sequential(*layers))
        self.head = _ThesisHead(previous, num_classes)
        _keras_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, size = _pad_to_multiple(x, self.multiple)
        saved: list[tuple[torch.Tensor | None, torch.Size]] = []
        for block, pool in zip(self.encoder, self.pools, strict=True):
            x = block(x)
            shape = x.shape[-2:]
            if isinstance(pool, nn.MaxPool2d):
                x, indices = pool(x)
                saved.append((indices, shape))
            else:
                saved.append((None, shape))
        x = self.fc_mirror(self.fc(x))
        for unpool, block, (indices, shape) in zip(
            self.unpools, self.decoder, reversed(saved), strict=True
        ):
            if indices is not None:
                x = unpool(x, indices, output_size=shape)
            x = block(x)
        return _crop_or_pad_to(self.head(x), size)


@register_architecture(
    "deconvnet",
    description="DeconvNet as in the thesis (VGG-16 convs + mirrored deconvs, pools 1-2-2-2-3)",
    width_note="every conv stage and the 4096 fc, min 16 ch",
)
def deconvnet(num_classes: int = 3, in_channels: int = 3, width: float = 1.0) -> nn.Module:
    """The thesis's DeconvNet; ``width`` scales every filter count (fc 4096 included, at least
    16 channels)."""
    return DeconvNet(num_classes=num_classes, in_channels=in_channels, width=width)
