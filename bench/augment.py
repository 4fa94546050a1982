"""Batched online training augmentation of the clean protocol, on the training device.

:class:`BatchAugmenter` applies, to whole batches of float images (B, 3, H, W) in [0, 1] and
their label maps (B, H, W), the augmentation that the runner's former ``make_augmenter``
applied per sample with albumentations:

* geometry (images and labels alike, so padded pixels, label ``IGNORE_INDEX``, move with the
  image): horizontal flip with p = 0.5, vertical flip with p = 0.5, then a rotation by k·90°
  (counter-clockwise, as ``np.rot90``) with k uniform in {0, 1, 2, 3};
* colour jitter (images only) with p = 0.5: brightness, contrast and saturation factors
  uniform in [0.9, 1.1] and a hue shift uniform in [-0.02, 0.02] of the full turn, with
  torchvision's definitions (``adjust_brightness``, ``adjust_contrast``, ``adjust_saturation``,
  ``adjust_hue``; grey = 0.2989 R + 0.587 G + 0.114 B; contrast blends with the mean grey
  level of the whole image, padding included), clamped to [0, 1] after each step.

It replaces the per-sample albumentations pipeline for speed: there is no per-sample Python,
the images stay on the device (CPU or CUDA) and the work is a handful of batched tensor ops
(one ``gather`` for the geometry, elementwise ops for the jitter) with no host synchronisation.
The gain is on accelerators and in host memory traffic; on a small CPU the float32 jitter
costs about as much as albumentations' uint8 OpenCV kernels.

Departures from the albumentations pipeline:

* the jitter steps run in a fixed order (brightness, contrast, saturation, hue) where
  albumentations and torchvision shuffle the order per image;
* the hue shift goes through RGB → HSV → RGB computed in torch (torchvision's formulas), not
  through OpenCV;
* with ``square=False`` (images with H != W) k is drawn from {0, 2} only, because a 90°
  rotation would change the image's shape; the four transforms of a rectangle stay equally
  likely;
* the random numbers differ (torch's generator, not albumentations' Python/NumPy ones).

Reproducibility: :meth:`BatchAugmenter.draw` takes every random number from the CPU
``torch.Generator`` it is given, in one ``torch.rand((count, 8))`` call, so the parameters
depend only on the generator's state and ``count`` — never on the device, the global RNG or
the images. The runner seeds a generator with ``epoch_seed(seed, epoch)`` and draws the whole
epoch's parameters up front, so a resumed training sees exactly the same augmentations.
Because each image consumes one row of eight numbers, drawing ``a`` then ``b`` images from a
generator gives the same parameters as drawing ``a + b`` at once (tested on this torch).
:meth:`BatchAugmenter.apply` is deterministic: the same images and parameters give the same
output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from architectures import memory_format_of

# torchvision's rgb_to_grayscale weights (note 0.2989, not 0.299), so that the jitter matches
# torchvision.transforms.v2.functional exactly.
GREY_WEIGHTS = (0.2989, 0.587, 0.114)

JITTER_RANGE = 0.1  # brightness, contrast and saturation factors in [1 - 0.1, 1 + 0.1]
HUE_RANGE = 0.02  # hue shift in [-0.02, 0.02] of the full turn

# Columns of the (count, 8) uniform draw: one fixed row of numbers per image.
_HFLIP, _VFLIP, _ROTATION, _JITTER, _BRIGHTNESS, _CONTRAST, _SATURATION, _HUE = range(8)
_DRAWS_PER_IMAGE = 8


@dataclass(frozen=True)
class AugmentParams:
    """The random choices for a run of images, one entry per image (CPU unless moved).

    ``hflip``/``vflip`` (bool) flip the columns/rows first; ``rotations`` (int64, 0..3) then
    rotates by that many quarter turns counter-clockwise; ``jitter_on`` (bool) says whether
    the colour jitter with factors ``brightness``, ``contrast``, ``saturation`` and shift
    ``hue`` (float32) applies.
    """

    hflip: torch.Tensor
    vflip: torch.Tensor
    rotations: torch.Tensor
    jitter_on: torch.Tensor
    brightness: torch.Tensor
    contrast: torch.Tensor
    saturation: torch.Tensor
    hue: torch.Tensor

    def __post_init__(self) -> None:
        lengths = {name: len(getattr(self, name)) for name in self._names()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"AugmentParams fields differ in length: {lengths}")

    @classmethod
    def _names(cls) -> tuple[str, ...]:
        return tuple(field.name for field in fields(cls))

    def __len__(self) -> int:
        return len(self.hflip)

    def __getitem__(self, index: slice) -> AugmentParams:
        if not isinstance(index, slice):
            raise TypeError("AugmentParams only supports slicing, e.g. params[start:stop]")
        return AugmentParams(**{name: getattr(self, name)[index] for name in self._names()})

    def slice(self, start: int, stop: int) -> AugmentParams:
        """The parameters of images ``start`` to ``stop - 1`` (one batch of the epoch)."""
        return self[start:stop]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> AugmentParams:
        """A copy with every tensor on ``device`` (a no-op per tensor already there)."""
        return AugmentParams(
            **{
                name: getattr(self, name).to(device, non_blocking=non_blocking)
                for name in self._names()
            }
        )

    def equal(self, other: AugmentParams) -> bool:
        """True when every field holds the same values (handy for reproducibility checks)."""
        return all(torch.equal(getattr(self, name), getattr(other, name)) for name in self._names())


class BatchAugmenter:
    """Flips, 90° rotations and mild colour jitter on whole batches on the device."""

    def __init__(
        self,
        square: bool,
        jitter: bool = True,
        jitter_range: float = JITTER_RANGE,
        hue_range: float = HUE_RANGE,
    ) -> None:
        """``square``: whether the images are square (H == W); if not, no 90° rotations.

        ``jitter``: whether to apply the colour jitter at all (``draw`` consumes the same
        random numbers either way, so switching it off leaves the geometry unchanged).
        ``jitter_range``/``hue_range``: the factors' spread (1 ± range) and the hue shift's
        (± range of the full turn).
        """
        self.square = square
        self.jitter = jitter
        self.jitter_range = jitter_range
        self.hue_range = hue_range

    def draw(self, generator: torch.Generator, count: int) -> AugmentParams:
        """Draw the parameters of ``count`` images from ``generator`` (CPU) only."""
        if generator.device.type != "cpu":
            raise ValueError("draw needs a CPU torch.Generator, so that draws match any device")
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        # One call in a fixed layout: the sequence of generator calls never depends on the
        # device or on the flags, so a (seed, epoch) always maps to the same parameters.
        uniform = torch.rand((count, _DRAWS_PER_IMAGE), generator=generator)
        if self.square:
            rotations = (uniform[:, _ROTATION] * 4).long()
        else:
            rotations = (uniform[:, _ROTATION] * 2).long() * 2  # 0 or 180° keeps H×W
        jitter_on = uniform[:, _JITTER] < 0.5
        if not self.jitter:
            jitter_on = torch.zeros_like(jitter_on)

        def factor(column: int) -> torch.Tensor:
            return 1.0 - self.jitter_range + 2 * self.jitter_range * uniform[:, column]

        return AugmentParams(
            hflip=uniform[:, _HFLIP] < 0.5,
            vflip=uniform[:, _VFLIP] < 0.5,
            rotations=rotations,
            jitter_on=jitter_on,
            brightness=factor(_BRIGHTNESS),
            contrast=factor(_CONTRAST),
            saturation=factor(_SATURATION),
            hue=(2 * uniform[:, _HUE] - 1) * self.hue_range,
        )

    def apply(
        self, images: torch.Tensor, labels: torch.Tensor, params: AugmentParams
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment float ``images`` (B, 3, H, W) in [0, 1] and int ``labels`` (B, H, W).

        ``params`` holds one entry per image (e.g. ``params.slice(start, stop)`` of an
        epoch's draw) and is moved to the images' device if needed. The outputs keep the
        inputs' device and dtype; the images keep their memory format (contiguous or
        channels_last; any other layout comes back contiguous).
        """
        if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise ValueError(
                f"images must be float (B, 3, H, W), got {images.dtype} {images.shape}"
            )
        batch, _, height, width = images.shape
        if labels.shape != (batch, height, width):
            raise ValueError(
                f"labels must be (B, H, W) = {(batch, height, width)}, got {labels.shape}"
            )
        if len(params) != batch:
            raise ValueError(f"params hold {len(params)} images, the batch has {batch}")
        if height != width:
            if self.square:
                raise ValueError(f"square=True but the images are {height}×{width}")
            # Cheap only while the parameters are still on the CPU; on the device it would sync.
            if params.rotations.device.type == "cpu" and bool((params.rotations % 2).any()):
                raise ValueError("90° rotations of non-square images would change their shape")
        # Which images get the jitter, found on the host while the flags are still there, so
        # the device never has to report back (a host sync) and only those images are jittered.
        jitter_rows = None
        if self.jitter and params.jitter_on.device.type == "cpu":
            jitter_rows = params.jitter_on.nonzero().squeeze(1).to(images.device)
        params = params.to(images.device)
        images, labels = _apply_geometry(images, labels, params)
        if self.jitter:
            if jitter_rows is None:
                images = _jitter_masked(images, params)
            else:
                images = _jitter_selected(images, params, jitter_rows)
        return images, labels


def _jitter_selected(
    images: torch.Tensor, params: AugmentParams, rows: torch.Tensor
) -> torch.Tensor:
    """Jitter the images ``rows`` (in place: ``images`` is the geometry's fresh output)."""
    if len(rows) == 0:
        return images
    selected = AugmentParams(
        **{name: getattr(params, name).index_select(0, rows) for name in AugmentParams._names()}
    )
    jittered = _jitter(images.index_select(0, rows), selected)
    # index_copy_ leaves the other images untouched: they stay bit-identical.
    return images.index_copy_(0, rows, jittered)


def _jitter_masked(images: torch.Tensor, params: AugmentParams) -> torch.Tensor:
    """Jitter the whole batch and keep it where ``jitter_on`` (flags already on the device)."""
    keep = params.jitter_on.view(-1, 1, 1, 1)
    # where, not a blend with neutral factors, so un-jittered images stay bit-identical.
    return torch.where(keep, _jitter(images, params), images).contiguous(
        memory_format=memory_format_of(images)
    )


def _source_index(params: AugmentParams, height: int, width: int) -> torch.Tensor:
    """(B, H·W) flat source pixel of each output pixel, for each image's transform.

    Every element of the dihedral group is "optionally transpose, then optionally flip rows
    and columns": flips first then k quarter turns (np.rot90) reduce to
    k=0: (no swap, flip rows=v, flip cols=h); k=1: (swap, not h, v); k=2: (no swap, not v,
    not h); k=3: (swap, h, not v). The source index is then affine in the output row and
    column, so one broadcast builds the whole batch's index with no per-image Python.
    """
    device = params.rotations.device
    rotations = params.rotations
    swap = rotations % 2 == 1
    rows_flipped_by_rotation = (rotations == 1) | (rotations == 2)
    cols_flipped_by_rotation = (rotations == 2) | (rotations == 3)
    flip_rows = torch.where(swap, params.hflip, params.vflip) ^ rows_flipped_by_rotation
    flip_cols = torch.where(swap, params.vflip, params.hflip) ^ cols_flipped_by_rotation
    # Output rows index source rows (stride W) unless the transform swaps the axes.
    row_stride = torch.where(swap, 1, width)
    col_stride = torch.where(swap, width, 1)
    flip_rows, flip_cols = flip_rows.long(), flip_cols.long()
    base = flip_rows * (height - 1) * row_stride + flip_cols * (width - 1) * col_stride
    step_row = (1 - 2 * flip_rows) * row_stride
    step_col = (1 - 2 * flip_cols) * col_stride
    rows = torch.arange(height, device=device).view(1, height, 1)
    cols = torch.arange(width, device=device).view(1, 1, width)
    index = base.view(-1, 1, 1) + step_row.view(-1, 1, 1) * rows + step_col.view(-1, 1, 1) * cols
    return index.view(-1, height * width)


def _apply_geometry(
    images: torch.Tensor, labels: torch.Tensor, params: AugmentParams
) -> tuple[torch.Tensor, torch.Tensor]:
    batch, channels, height, width = images.shape
    index = _source_index(params, height, width)
    if not images.is_contiguous() and images.is_contiguous(memory_format=torch.channels_last):
        # (B·H·W, C) is a free view of channels_last memory; copying whole pixels with
        # index_select keeps that layout and is ~2× faster on the CPU than a gather there.
        pixels = images.permute(0, 2, 3, 1).reshape(batch * height * width, channels)
        image_start = torch.arange(batch, device=index.device).view(batch, 1) * (height * width)
        moved = pixels.index_select(0, (index + image_start).view(-1))
        out_images = moved.view(batch, height, width, channels).permute(0, 3, 1, 2)
    else:
        flat = images.reshape(batch, channels, height * width)
        moved = flat.gather(2, index.unsqueeze(1).expand(-1, channels, -1))
        out_images = moved.view(batch, channels, height, width)
    out_labels = labels.reshape(batch, height * width).gather(1, index).view(batch, height, width)
    return out_images, out_labels


def _grey(images: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) grey level, computed as torchvision's rgb_to_grayscale does."""
    red, green, blue = images.unbind(dim=1)
    red_weight, green_weight, blue_weight = GREY_WEIGHTS
    grey = red.mul(red_weight).add_(green, alpha=green_weight).add_(blue, alpha=blue_weight)
    return grey.unsqueeze(1)


def _jitter(images: torch.Tensor, params: AugmentParams) -> torch.Tensor:
    """Brightness, contrast, saturation, hue in that order, every image with its factors.

    Works in place on one fresh buffer: on the CPU, allocating a new full-size tensor per
    step costs more than the arithmetic.
    """
    batch = images.shape[0]

    def per_image(values: torch.Tensor) -> torch.Tensor:
        return values.to(images.dtype).view(batch, 1, 1, 1)

    contrast = per_image(params.contrast)
    saturation = per_image(params.saturation)
    out = images.mul(per_image(params.brightness)).clamp_(0.0, 1.0)
    # torchvision's _blend: x·c + m·(1 − c), m the mean grey level of the whole image.
    mean_grey = _grey(out).mean(dim=(1, 2, 3), keepdim=True)
    out.mul_(contrast).add_(mean_grey.mul_(1.0 - contrast)).clamp_(0.0, 1.0)
    grey = _grey(out).mul_(1.0 - saturation)  # before out changes in place
    out.mul_(saturation).add_(grey).clamp_(0.0, 1.0)
    _shift_hue_(out, per_image(params.hue))
    return out.clamp_(0.0, 1.0)


def _shift_hue_(images: torch.Tensor, hue: torch.Tensor) -> None:
    """Rotate, in place, the HSV hue of every pixel by ``hue`` (B, 1, 1, 1) turns, batched.

    RGB → HSV as torchvision's _rgb_to_hsv (Pillow's algorithm: red wins ties, then green);
    HSV → RGB with the closed form channel = V − C·clamp(min(k, 4 − k), 0, 1), C = V·S the
    chroma, k = (n + 6·H) mod 6 with n = 5, 3, 1 for R, G, B — the values of torchvision's
    sector table without its index gather.

    Written for CPU speed: single-channel (B, H, W) ops (a reduction over the channel
    dimension is several times slower), and the "which channel is the maximum" choice as
    0/1 float masks (comparisons into float tensors) multiplied in, because ``torch.where``
    and boolean tensors are an order of magnitude slower than plain arithmetic on the CPU.
    Multiplying by exact 0/1 masks and adding zeros selects the values exactly.
    """
    red, green, blue = images.unbind(dim=1)
    value = torch.maximum(red, green)
    torch.maximum(value, blue, out=value)
    chroma = torch.minimum(red, green)
    torch.minimum(chroma, blue, out=chroma)
    torch.sub(value, chroma, out=chroma)
    red_is_max = torch.eq(value, red, out=torch.empty_like(value))
    green_is_max = torch.eq(value, green, out=torch.empty_like(value))
    green_is_max.mul_(1.0 - red_is_max)  # red wins ties
    blue_is_max = 1.0 - red_is_max - green_is_max
    # Hue in sixths of a turn: (g − b)/C, (b − r)/C + 2 or (r − g)/C + 4 by the maximum.
    sixths = (green - blue).mul_(red_is_max)
    sixths.addcmul_(blue - red, green_is_max).addcmul_(red - green, blue_is_max)
    # Grey pixels (chroma 0) get 0/tiny = 0 and keep their colour anyway: C scales every change.
    sixths.div_(chroma.clamp_min(torch.finfo(images.dtype).tiny))
    sixths.add_(green_is_max, alpha=2.0).add_(blue_is_max, alpha=4.0)
    sixths.add_(hue.view(-1, 1, 1) * 6.0)
    wrapped = red_is_max  # reuse the buffer
    for channel, phase in zip(images.unbind(dim=1), (5.0, 3.0, 1.0), strict=True):
        # sixths ∈ [−1.12, 5.12), so sector ∈ [−0.12, 10.12): one subtraction of 6 is the
        # "mod 6" (negative sectors land on a zero ramp either way), cheaper than remainder.
        sector = sixths.add(phase)
        sector.add_(torch.ge(sector, 6.0, out=wrapped), alpha=-6.0)
        ramp = torch.sub(4.0, sector)
        torch.minimum(sector, ramp, out=ramp)
        ramp.clamp_(0.0, 1.0).mul_(chroma)
        torch.sub(value, ramp, out=channel)


# The modern recipe's stronger augmentation (bench.recipes.MODERN): stain and illumination
# vary between smears and microscopes far more than the clean protocol's mild jitter covers,
# and a cell may lie at any angle and, within a dataset, vary in size.
STRONG_JITTER_RANGE = 0.25
STRONG_HUE_RANGE = 0.05
STRONG_ROTATION_DEGREES = 45.0  # with the quarter turns: any angle
STRONG_SCALE_RANGE = (0.8, 1.25)  # log-uniform: zooming in and out equally likely
STRONG_AFFINE_P = 0.5


@dataclass(frozen=True)
class StrongParams:
    """:class:`AugmentParams` plus, per image, a rotation (radians; 0 when off) and a
    scale factor (1 when off)."""

    base: AugmentParams
    angle: torch.Tensor
    scale: torch.Tensor

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: slice) -> StrongParams:
        return StrongParams(self.base[index], self.angle[index], self.scale[index])

    def slice(self, start: int, stop: int) -> StrongParams:
        return self[start:stop]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> StrongParams:
        return StrongParams(
            self.base.to(device, non_blocking),
            self.angle.to(device, non_blocking=non_blocking),
            self.scale.to(device, non_blocking=non_blocking),
        )


class StrongAugmenter:
    """:class:`BatchAugmenter` with wider colour jitter (±25 % brightness, contrast and
    saturation, ±0.05 turn of hue), then with p = 0.5 a rotation uniform in ±45° and a
    log-uniform scale in [0.8, 1.25] about the image centre (bilinear for images, nearest
    for labels, reflected at the borders so no class is invented there; padded pixels keep
    their ``IGNORE_INDEX`` label wherever they land).

    The draw takes the base augmenter's numbers first, then three more per image, all in
    one call each: the parameters depend only on the generator's state and the count.
    """

    def __init__(self, square: bool) -> None:
        self.base = BatchAugmenter(
            square, jitter=True, jitter_range=STRONG_JITTER_RANGE, hue_range=STRONG_HUE_RANGE
        )

    def draw(self, generator: torch.Generator, count: int) -> StrongParams:
        base = self.base.draw(generator, count)
        uniform = torch.rand((count, 3), generator=generator)
        on = uniform[:, 2] < STRONG_AFFINE_P
        angle = (2 * uniform[:, 0] - 1) * math.radians(STRONG_ROTATION_DEGREES)
        low, high = (math.log(v) for v in STRONG_SCALE_RANGE)
        scale = torch.exp(low + (high - low) * uniform[:, 1])
        return StrongParams(
            base,
            torch.where(on, angle, torch.zeros_like(angle)),
            torch.where(on, scale, torch.ones_like(scale)),
        )

    def apply(
        self, images: torch.Tensor, labels: torch.Tensor, params: StrongParams
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """As :meth:`BatchAugmenter.apply`, then the rotation and scale."""
        images, labels = self.base.apply(images, labels, params.base)
        params = params.to(images.device)
        return rotate_and_scale(images, labels, params.angle, params.scale)


def rotate_and_scale(
    images: torch.Tensor, labels: torch.Tensor, angle: torch.Tensor, scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate each image by ``angle`` (radians, counter-clockwise as seen) and scale it by
    ``scale`` about its centre, in pixel units (no shear on non-square images); labels by
    nearest neighbour. Images whose angle is 0 and scale 1 come back bit-identical."""
    batch, _, height, width = images.shape
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    # Output (x, y) in [-1, 1] samples the input at R(angle)·(x, y)/scale in pixel units,
    # rewritten in each axis's normalised units (hence the aspect ratios).
    theta = torch.stack(
        [
            torch.stack([cos, -sin * height / width, torch.zeros_like(cos)], dim=1),
            torch.stack([sin * width / height, cos, torch.zeros_like(cos)], dim=1),
        ],
        dim=1,
    ).to(images.dtype)
    grid = F.affine_grid(theta, [batch, 3, height, width], align_corners=False)
    moved = F.grid_sample(
        images, grid, mode="bilinear", padding_mode="reflection", align_corners=False
    )
    moved_labels = F.grid_sample(
        labels.unsqueeze(1).to(images.dtype),
        grid,
        mode="nearest",
        padding_mode="reflection",
        align_corners=False,
    )
    moved_labels = moved_labels.squeeze(1).round().to(labels.dtype)
    identity = ((angle == 0) & (scale == 1)).view(batch, 1, 1)
    out_images = torch.where(identity.unsqueeze(1), images, moved).contiguous(
        memory_format=memory_format_of(images)
    )
    return out_images, torch.where(identity, labels, moved_labels)
