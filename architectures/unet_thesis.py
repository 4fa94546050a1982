"""``unet_thesis``: the Keras U-Net of the thesis annex (§8), rebuilt layer for layer.

Follows P. Baykalov (2019), §2.3.1 (U-Net), §3.3 (models: 1x1 output conv with 3 filters,
dropout 0.5, softmax; Glorot-uniform kernels; last pooling 3x3 because 120 -> 15 -> 7 would not
come back up to 120) and the annex code:

* encoder: ``conv_block`` = two (Conv2D 3x3 'same' + bias, BatchNormalization, ReLU), filters
  64, 128, 256, 512, 1024, MaxPooling2D 2, 2, 2, 3 between them (120 -> 60 -> 30 -> 15 -> 5);
* decoder: ``deconv_block`` = Conv2DTranspose(nfilters, size, strides, 'same') then
  ``concatenate([upsampled, skip])`` then ``conv_block(size)``: deconv6 (512, kernel 2,
  stride 3), deconv7 (256, kernel 2, stride 2), deconv8 (128, kernel 3, stride 2), deconv9
  (64, kernel 2, stride 2); so the decoder convolutions are 2x2, 2x2, 3x3, 2x2 as in the annex;
* output: Conv2D(3, 1x1) + Dropout(0.5) (+ softmax, left to the loss).

Faithfulness details reproduced (they matter for the parameter count and for which pixels see
what): Keras ``padding='same'`` for the even 2x2 kernels pads one row/column at the bottom/right
only (done explicitly, in one write with the decoder's concatenation; PyTorch's
``padding='same'`` pads the same way but warns);
Keras ``Conv2DTranspose(padding='same')`` outputs ``input * stride`` pixels: with kernel 2 /
stride 3 every third row/column (indices 2, 5, 8, ...) receives no kernel tap, only the bias
(PyTorch gives the same; ``output_padding=1`` supplies the last one),
with kernel 3 / stride 2 the full transposed output is cropped at the bottom/right (TF drops
``(k - s) // 2`` leading and the rest trailing pixels). Every conv has a bias; kernels are
Glorot-uniform, biases zero; BatchNorm uses Keras' momentum 0.99 / eps 1e-3 (PyTorch
momentum 0.01). At width 1.0 the trainable parameter count equals the Keras model's,
26,230,851 (tested).

Departures:

* no softmax in the model: it returns logits; the runner applies softmax / the loss. Dropout
  therefore acts on the logits exactly where the annex puts it (before the softmax);
* ``in_channels`` may differ from 3 and ``num_classes`` from 3 (the annex hard-codes both);
* inputs whose sides are not multiples of 24 (2*2*2*3) are zero-padded at the bottom/right
  and the logits cropped back (the Keras model only accepts 120x120); the upsampled map is also
  cropped/padded to its skip's size, which is a no-op after that padding;
* PyTorch layout is channels-first, so the concatenation is along dim 1 (Keras axis 3).

``width`` scales every conv / transposed-conv filter count (64 ... 1024 -> round(c * width))
with the built-ins' channel floor: no stage below ``architectures.MIN_CHANNELS`` = 16 channels
(``architectures.layers.scaled``). The thesis trained width 1.0 only, so the floor departs
from it nowhere; it only stops the scaling from being uniform below width 0.25 (at 0.0625 the
stages are 16, 16, 16, 32, 64 instead of 4, 8, 16, 32, 64). The 1x1 output conv keeps
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
    memory_format_of,
    scaled,
)
from architectures.registry import register_architecture

FILTERS = (64, 128, 256, 512, 1024)
POOLS = (2, 2, 2, 3)
# (kernel size, stride) of deconv6..deconv9, as in the annex's calls to deconv_block.
DECONVS = ((2, 3), (2, 2), (3, 2), (2, 2))


class _ConcatPad(torch.autograd.Function):
    """Concatenate along channels and zero-pad ``before``/``after`` on both spatial axes, in
    one write: ``torch.cat`` then ``F.pad`` would write the whole map three times (cat, the
    pad's zero fill, its copy), which showed in the profile of a CPU training step."""

    @staticmethod
    def forward(ctx, before: int, after: int, *tensors: torch.Tensor) -> torch.Tensor:
        n, _, height, width = tensors[0].shape
        channels = [t.shape[1] for t in tensors]
        dtype = tensors[0].dtype
        for t in tensors[1:]:
            dtype = torch.promote_types(dtype, t.dtype)
        out = torch.empty(
            (n, sum(channels), height + before + after, width + before + after),
            dtype=dtype,
            device=tensors[0].device,
            memory_format=memory_format_of(tensors[0]),
        )
        # Zero only the border strips; the interior is written by the copies.
        out[:, :, :before].zero_()
        out[:, :, before + height :].zero_()
        out[:, :, before : before + height, :before].zero_()
        out[:, :, before : before + height, before + width :].zero_()
        start = 0
        for t, c in zip(tensors, channels, strict=True):
            out[:, start : start + c, before : before + height, before : before + width].copy_(t)
            start += c
        ctx.layout = (before, height, width, channels, [t.dtype for t in tensors])
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        before, height, width, channels, dtypes = ctx.layout
        inner = grad[:, :, before : before + height, before : before + width]
        grads, start = [], 0
        for c, dtype in zip(channels, dtypes, strict=True):
            grads.append(inner[:, start : start + c].to(dtype))
            start += c
        return (None, None, *grads)


class KerasSameConv2d(nn.Sequential):
    """Conv2D(padding='same', use_bias=True) for an even kernel, padding like TensorFlow
    (the extra pixel at the bottom/right); called with several tensors it concatenates them
    along channels into the padded buffer. Children ``0`` (the padding, no parameters) and
    ``1`` (the conv) keep the state_dict keys of ``Sequential(ZeroPad2d, Conv2d)``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        total = kernel_size - 1
        self.before, self.after = total // 2, total - total // 2
        super().__init__(
            nn.ZeroPad2d((self.before, self.after, self.before, self.after)),
            nn.Conv2d(in_channels, out_channels, kernel_size),
        )

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():  # the compiler fuses cat and pad by itself
            x = torch.cat(tensors, dim=1) if len(tensors) > 1 else tensors[0]
            return self[1](self[0](x))
        return self[1](_ConcatPad.apply(self.before, self.after, *tensors))


def keras_same_conv(in_channels: int, out_channels: int, kernel_size: int) -> nn.Module:
    """Conv2D(padding='same', use_bias=True) padding like TensorFlow: extra pixel bottom/right."""
    if kernel_size % 2:
        return nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
    return KerasSameConv2d(in_channels, out_channels, kernel_size)


class KerasSameConvTranspose2d(nn.Module):
    """Conv2DTranspose(padding='same'): output ``input * stride``, the pixels TF fills.

    TF's transposed conv is the gradient of a 'same' strided conv, so its output pixel ``y`` is
    the full transposed output's pixel ``y + (k - s) // 2`` (when ``k > s``); when ``k < s`` the
    last ``s - k`` pixels of every stride period get no kernel tap, only the bias (the very
    last ones come from PyTorch's ``output_padding``).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int):
        super().__init__()
        self.stride = stride
        self.offset = max(kernel_size - stride, 0) // 2
        self.conv = nn.ConvTranspose2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            output_padding=max(stride - kernel_size, 0),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2] * self.stride, x.shape[-1] * self.stride
        y = self.conv(x)
        return y[..., self.offset : self.offset + height, self.offset : self.offset + width]


class ConvBlock(nn.Sequential):
    """The annex's ``conv_block``: two (conv 'same', batch norm, ReLU)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__(
            keras_same_conv(in_channels, out_channels, kernel_size),
            _keras_batch_norm(out_channels),
            nn.ReLU(inplace=True),
            keras_same_conv(out_channels, out_channels, kernel_size),
            _keras_batch_norm(out_channels),
            nn.ReLU(inplace=True),
        )


class DeconvBlock(nn.Module):
    """The annex's ``deconv_block``: transposed conv, ``concatenate([y, skip])``, conv_block."""

    def __init__(
        self, in_channels: int, skip_channels: int, out_channels: int, size: int, stride: int
    ) -> None:
        super().__init__()
        self.up = KerasSameConvTranspose2d(in_channels, out_channels, size, stride)
        self.conv = ConvBlock(out_channels + skip_channels, out_channels, size)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        y = _crop_or_pad_to(self.up(x), (skip.shape[-2], skip.shape[-1]))
        first, *rest = self.conv
        if isinstance(first, KerasSameConv2d):
            x = first(y, skip)  # concatenated straight into the padded buffer
        else:
            x = first(torch.cat([y, skip], dim=1))
        for layer in rest:
            x = layer(x)
        return x


class UNetThesis(nn.Module):
    """The thesis annex's Keras U-Net (64-1024 filters, pools 2-2-2-3), returning logits."""

    multiple = 24  # product of the poolings

    def __init__(self, num_classes: int = 3, in_channels: int = 3, width: float = 1.0) -> None:
        super().__init__()
        filters = [scaled(c, width) for c in FILTERS]
        encoder, previous = [], in_channels
        for channels in filters:
            encoder.append(ConvBlock(previous, channels, 3))
            previous = channels
        self.encoder = nn.ModuleList(encoder)
        self.pools = nn.ModuleList(nn.MaxPool2d(p) for p in POOLS)
        decoder = []
        for skip, (size, stride) in zip(reversed(filters[:-1]), DECONVS, strict=True):
            decoder.append(DeconvBlock(previous, skip, skip, size, stride))
            previous = skip
        self.decoder = nn.ModuleList(decoder)
        self.head = _ThesisHead(previous, num_classes)
        _keras_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, size = _pad_to_multiple(x, self.multiple)
        skips = []
        for index, block in enumerate(self.encoder):
            if index:
                x = self.pools[index - 1](x)
            x = block(x)
            skips.append(x)
        for block, skip in zip(self.decoder, reversed(skips[:-1]), strict=True):
            x = block(x, skip)
        return _crop_or_pad_to(self.head(x), size)


@register_architecture(
    "unet_thesis",
    description="U-Net of the thesis annex (Keras, layer for layer; pools 2-2-2-3, 64-1024 ch)",
    width_note="every conv stage, min 16 ch",
)
def unet_thesis(num_classes: int = 3, in_channels: int = 3, width: float = 1.0) -> nn.Module:
    """The thesis's U-Net; ``width`` scales every filter count (at least 16 channels)."""
    return UNetThesis(num_classes=num_classes, in_channels=in_channels, width=width)
