"""``smp_*``: segmentation-models-pytorch baselines behind the registry's contract.

Not from the thesis (which has only U-Net, SegNet and DeconvNet, §2.3): these are modern
reference points, each registered as ``smp_<architecture lower-case>`` with ``source="smp"``.

Options: ``encoder`` (default ``"resnet34"``, any smp encoder name or ``"tu-<timm model>"``),
``encoder_weights`` (default ``None``: random initialisation, as the thesis's models; pass
``"imagenet"`` to download pretrained weights, and a failed download is an
:class:`ArchitectureError` naming the cache to fill and suggesting ``encoder_weights=None``);
any other keyword is passed to the smp class unchanged (e.g. ``encoder_depth``,
``decoder_attention_type``).

Pretrained weights: smp fetches its own encoders' weights from the Hugging Face Hub
(``smp-hub/<encoder>.<weights>`` at a pinned revision) into the Hugging Face cache
(``~/.cache/huggingface/hub``; ``HF_HUB_CACHE`` or ``HF_HOME`` move it), and a ``tu-`` encoder's
through timm (the Hugging Face cache, or torch hub's for older timm models); the weights of a
``tu-`` encoder are timm's default pretrained tag of the model named, whatever
``encoder_weights`` says. Once cached they load without network. Offline, a download fails only
after huggingface_hub's retries (25 s on a machine without DNS, longer where connections time
out), so ``bench run`` fetches them once before training with :func:`check_encoder_weights`
instead of letting every cell fail.

``width`` scales the decoder's channel counts (round(c * width)) with the built-ins' channel
floor, ``architectures.MIN_CHANNELS`` = 16 (``architectures.layers.scaled``, the same as the
thesis models'): at width 0.25 U-Net's decoder is 64, 32, 16, 16, 16, not 64, 32, 16, 8, 4. It never
scales the encoder (smp has no width for it), and only where smp exposes the decoder's
widths; an explicit smp keyword wins over ``width``. Each architecture's
``ArchitectureSpec.width_note`` says so in a few words (shown by ``bench list``):

* unet, unetplusplus: ``decoder_channels`` (256, 128, 64, 32, 16);
* manet: ``decoder_channels`` (256, 128, 64, 32, 16) and ``decoder_pab_channels`` (64);
* linknet: nothing (smp's Linknet has no decoder width: its widths follow the encoder's,
  in / 4): ``width`` is ignored;
* fpn: ``decoder_pyramid_channels`` (256) and ``decoder_segmentation_channels`` (128, kept a
  multiple of 32, at least 32, because smp normalises it with GroupNorm(32));
* pspnet: ``psp_out_channels`` (512);
* pan: ``decoder_channels`` (32);
* deeplabv3, deeplabv3plus, upernet: ``decoder_channels`` (256);
* segformer: ``decoder_segmentation_channels`` (256).

So at a given width an smp model is mostly its encoder (resnet34: 21.3 M parameters of smp
U-Net's 21.9 M at width 0.25, against 1.6 M for the thesis U-Net). For a capacity-matched
comparison choose a small encoder (``--encoder``): the README's "Model size" section lists
small encoders that build offline with their parameter counts. Some of smp's narrow
internal layers are part of the published design and are not widths: MAnet's
squeeze-and-excitation bottlenecks (channels / 16) and PAN's 1-channel attention maps are the
same at every width.

Input sizes: smp needs sides divisible by the encoder's output stride (asked from smp:
``model.encoder.output_stride``, e.g. 32 for a 5-stage ResNet, 8 for PSPNet's 3-stage one, 8/16
for the dilated DeepLab encoders); PAN's feature pyramid attention also pools its deepest
feature map three more times, so its input must be at least 8 x output stride (128 with the
default stride 16). The wrapper zero-pads at the bottom/right up to that and crops the logits
back, so any input size works. Zero padding (not reflection) matches how the data sets pad
images to 120x120 and works for any pad width.

Known limitation: several decoders (PSPNet, PAN, DeepLabV3/V3+, UPerNet) apply batch norm
after a global pooling, so training needs batches of at least 2 images.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from architectures.layers import _crop_or_pad_to, _pad_to_multiple, scaled
from architectures.registry import get_spec, register_architecture
from bench.config import encoder_problem
from bench.errors import ArchitectureError

_UNET_CHANNELS = (256, 128, 64, 32, 16)


def _decoder_channels(width: float) -> dict[str, Any]:
    return {"decoder_channels": tuple(scaled(c, width) for c in _UNET_CHANNELS)}


def _fpn_channels(width: float) -> dict[str, Any]:
    return {
        "decoder_pyramid_channels": scaled(256, width),
        "decoder_segmentation_channels": max(32, round(128 * width / 32) * 32),
    }


DECODER_ONLY = "decoder only, min 16 ch; encoder at full size"
LINKNET_NOTE = "ignored: Linknet has no decoder width; encoder at full size"

# smp class name -> (one-line description, function of width -> decoder keyword arguments);
# every one's width note is DECODER_ONLY except Linknet's (WIDTH_NOTES).
ARCHITECTURES: dict[str, tuple[str, Any]] = {
    "Unet": ("U-Net decoder with skip concatenations (Ronneberger et al. 2015)", _decoder_channels),
    "UnetPlusPlus": ("nested dense skip pathways (Zhou et al. 2018)", _decoder_channels),
    "MAnet": (
        "multi-scale attention U-Net (Fan et al. 2020)",
        lambda w: {**_decoder_channels(w), "decoder_pab_channels": scaled(64, w)},
    ),
    "Linknet": ("light decoder, skips added (Chaurasia & Culurciello 2017)", lambda w: {}),
    "FPN": ("feature pyramid network decoder (Kirillov et al. 2019)", _fpn_channels),
    "PSPNet": (
        "pyramid pooling on a 3-stage encoder (Zhao et al. 2017)",
        lambda w: {"psp_out_channels": scaled(512, w)},
    ),
    "PAN": (
        "pyramid attention network (Li et al. 2018)",
        lambda w: {"decoder_channels": scaled(32, w)},
    ),
    "DeepLabV3": (
        "atrous spatial pyramid pooling, output stride 8 (Chen et al. 2017)",
        lambda w: {"decoder_channels": scaled(256, w)},
    ),
    "DeepLabV3Plus": (
        "ASPP + low-level skip decoder, output stride 16 (Chen et al. 2018)",
        lambda w: {"decoder_channels": scaled(256, w)},
    ),
    "UPerNet": (
        "unified perceptual parsing decoder (Xiao et al. 2018)",
        lambda w: {"decoder_channels": scaled(256, w)},
    ),
    "Segformer": (
        "SegFormer all-MLP decoder (Xie et al. 2021)",
        lambda w: {"decoder_segmentation_channels": scaled(256, w)},
    ),
}
WIDTH_NOTES: dict[str, str] = {arch: DECODER_ONLY for arch in ARCHITECTURES} | {
    "Linknet": LINKNET_NOTE
}


class SmpSegmenter(nn.Module):
    """An smp model that accepts any input size: zero-pad bottom/right, run, crop the logits."""

    def __init__(self, model: nn.Module, multiple: int, min_size: int = 0) -> None:
        super().__init__()
        self.model = model
        self.multiple = multiple
        self.min_size = min_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, size = _pad_to_multiple(x, self.multiple, self.min_size)
        return _crop_or_pad_to(self.model(x), size)


def _is_download_error(error: BaseException) -> bool:
    """Did building fail while fetching weights (network, hub, cache), not for another reason?"""
    modules = (
        "huggingface_hub",
        "requests",
        "urllib3",
        "httpx",
        "httpx2",
        "httpcore",
        "httpcore2",
        "urllib",
        "timm",
        "socket",
    )
    for current in (error, error.__cause__, error.__context__):
        if current is None:
            continue
        if isinstance(current, (OSError, ConnectionError, TimeoutError)):
            return True
        if type(current).__module__.split(".")[0] in modules:
            return True
    return False


def weights_caches(encoder: str) -> list[str]:
    """Where ``encoder``'s pretrained weights are cached once downloaded (as configured now):
    the Hugging Face cache, and for a ``tu-`` (timm) encoder also torch hub's."""
    from huggingface_hub import constants

    caches = [str(constants.HF_HUB_CACHE)]
    if encoder.startswith("tu-"):
        caches.append(f"{torch.hub.get_dir()}/checkpoints")
    return caches


def download_failure(encoder: str, encoder_weights: str, error: BaseException) -> str:
    """What to do when ``encoder_weights`` of ``encoder`` cannot be downloaded (no network, a
    proxy, a hub that is down): fill the cache where there is network, or train without."""
    caches = " or ".join(weights_caches(encoder))
    causes = [error] + [e for e in (error.__cause__,) if e is not None]
    detail = "; ".join(f"{type(e).__name__}: {' '.join(str(e).split())[:300]}" for e in causes)
    return (
        f"cannot download {encoder_weights} weights for {encoder} (no network?): run once with "
        f"network access to fill the cache at {caches} (or copy it from a machine that has "
        "it), or train from random initialisation: leave out --encoder-weights (in Python: "
        f"encoder_weights=None). The download failed with {detail}"
    )


def check_encoder_weights(names: Iterable[str], encoder: str, encoder_weights: str | None) -> None:
    """Fetch the pretrained encoder weights the smp baselines among ``names`` will load, once,
    before any training: a download that fails (offline) is then one clear
    :class:`ArchitectureError` at the start instead of one failed cell per smp baseline, and
    the cells read the weights from the cache.

    Nothing to do without weights (``None``) or without an smp baseline in ``names``. Weights
    ``encoder`` does not have are an error naming the ones it has. The encoder is built with
    smp's defaults (depth 5, stride 32), which fetches exactly the files the models fetch;
    another failure of that build is left to the cells, which report it per architecture
    with their own settings. Ray workers on other machines use their own caches.
    """
    if encoder_weights is None:
        return
    smp_names = [name for name in names if get_spec(name).source == "smp"]
    if not smp_names:
        return
    _check_encoder(smp_names[0], encoder, encoder_weights)
    from segmentation_models_pytorch.encoders import get_encoder

    try:
        with warnings.catch_warnings():
            # tu- encoders: smp warns that timm's name, not the weights name, picks the tag
            # (the module docstring says so; each model's build still warns)
            warnings.filterwarnings("ignore", message="For 'tu-'", category=UserWarning)
            get_encoder(encoder, in_channels=3, depth=5, weights=encoder_weights)
    except Exception as error:
        if _is_download_error(error):
            raise ArchitectureError(download_failure(encoder, encoder_weights, error)) from error


def _check_encoder(arch_name: str, encoder: str, encoder_weights: str | None) -> None:
    """Name the problem before smp raises a bare KeyError (the same words as ``--encoder``'s)."""
    problem = encoder_problem(encoder)
    if problem is not None:
        raise ArchitectureError(f"{arch_name}: {problem}")
    from segmentation_models_pytorch.encoders import encoders

    if encoder not in encoders:  # "tu-" (timm) encoders: the weights are in the name
        return
    settings = encoders[encoder]["pretrained_settings"]
    if encoder_weights is not None and encoder_weights not in settings:
        raise ArchitectureError(
            f"{arch_name}: encoder {encoder!r} has no {encoder_weights!r} weights; "
            f"available: {', '.join(settings) or 'none'} (or encoder_weights=None)"
        )


def _build_smp(
    arch: str,
    num_classes: int,
    in_channels: int,
    width: float,
    encoder: str,
    encoder_weights: str | None,
    smp_options: dict[str, Any],
) -> nn.Module:
    import segmentation_models_pytorch as smp

    name = f"smp_{arch.lower()}"
    _check_encoder(name, encoder, encoder_weights)
    kwargs = {**ARCHITECTURES[arch][1](width), **smp_options}
    try:
        model = getattr(smp, arch)(
            encoder_name=encoder,
            encoder_weights=encoder_weights,
            in_channels=in_channels,
            classes=num_classes,
            **kwargs,
        )
    except Exception as error:
        if encoder_weights is not None and _is_download_error(error):
            raise ArchitectureError(
                f"{name}: {download_failure(encoder, encoder_weights, error)}"
            ) from error
        raise
    stride = int(model.encoder.output_stride)
    min_size = 8 * stride if arch == "PAN" else 0
    return SmpSegmenter(model, multiple=stride, min_size=min_size)


def _register(arch: str) -> None:
    description = ARCHITECTURES[arch][0]

    def factory(
        num_classes: int = 3,
        in_channels: int = 3,
        width: float = 1.0,
        encoder: str = "resnet34",
        encoder_weights: str | None = None,
        **smp_options: Any,
    ) -> nn.Module:
        return _build_smp(
            arch, num_classes, in_channels, width, encoder, encoder_weights, smp_options
        )

    factory.__name__ = factory.__qualname__ = f"smp_{arch.lower()}"
    factory.__doc__ = f"segmentation-models-pytorch {arch}: {description}."
    register_architecture(
        f"smp_{arch.lower()}",
        description=f"smp {arch}: {description}",
        source="smp",
        width_note=WIDTH_NOTES[arch],
    )(factory)


for _arch in ARCHITECTURES:
    _register(_arch)
