"""The registry's contract, every registered architecture, and the thesis models' fidelity."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import architectures
from architectures.layers import scaled
from architectures.unet_thesis import KerasSameConvTranspose2d, keras_same_conv
from bench.errors import ArchitectureError, ConfigError

WIDTH = 0.125  # narrow models keep the whole file within seconds on 2 CPU cores
KERAS_UNET_TRAINABLE_PARAMS = 26_230_851  # model.summary() of the thesis annex's Keras U-Net


# --------------------------------------------------------------------------- every architecture


@pytest.mark.parametrize("name", architectures.available())
def test_logits_shape_finite_and_one_training_step(name: str) -> None:
    torch.manual_seed(0)
    model = architectures.build(name, num_classes=3, width=WIDTH)
    model.train()
    for size in [(104, 112), (120, 120)]:
        x = torch.rand(2, 3, *size)
        logits = model(x)
        assert logits.shape == (2, 3, *size), f"{name} at {size}"
        assert torch.isfinite(logits).all(), f"{name} at {size}"

    trainable = [p for p in model.parameters() if p.requires_grad]
    first, last = trainable[0].detach().clone(), trainable[-1].detach().clone()
    optimizer = torch.optim.Adam(trainable, lr=1e-3)
    target = torch.randint(0, 3, (2, 120, 120))
    loss = F.cross_entropy(logits, target)  # logits of the 120x120 batch above
    loss.backward()
    optimizer.step()
    # The step must reach both ends of the network: the input layer and the output layer.
    assert not torch.equal(first, trainable[0].detach()), f"{name}: first layer did not change"
    assert not torch.equal(last, trainable[-1].detach()), f"{name}: last layer did not change"


@pytest.mark.parametrize("name", architectures.available())
def test_check_output_shape_accepts_every_architecture(name: str) -> None:
    model = architectures.build(name, width=WIDTH)
    architectures.check_output_shape(name, model, size=(64, 64))


# --------------------------------------------------------------------------- registry


def test_available_filters_and_sorts() -> None:
    names = architectures.available()
    assert names == sorted(names)
    assert {"unet_thesis", "segnet_basic", "deconvnet"} <= set(names)
    smp_names = architectures.available("smp_*")
    assert len(smp_names) >= 10
    assert all(architectures.get_spec(n).source == "smp" for n in smp_names)
    assert architectures.get_spec("unet_thesis").source == "builtin"
    assert architectures.get_spec("unet_thesis").description


def test_duplicate_registration_raises() -> None:
    with pytest.raises(ArchitectureError, match="unet_thesis.*registered twice.*builtin"):

        @architectures.register_architecture("unet_thesis")
        def again(num_classes: int = 3, in_channels: int = 3, width: float = 1.0) -> nn.Module:
            return nn.Identity()

    assert architectures.get_spec("unet_thesis").factory.__module__ == "architectures.unet_thesis"


def test_unknown_name_lists_known_ones() -> None:
    with pytest.raises(ArchitectureError, match="unknown architecture 'unet_thesys'") as info:
        architectures.build("unet_thesys")
    message = str(info.value)
    assert "did you mean unet_thesis" in message
    assert all(name in message for name in architectures.available())


def test_no_module_of_the_package_imports_its_face() -> None:
    """Model files, layers, registry and measure import ``architectures.<module>``, never the
    package face, whose only job is to re-export them (and to import the built-ins)."""
    package = Path(architectures.__file__).parent
    offenders = []
    for path in sorted(package.glob("*.py")):
        if path.name == "__init__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [node.module]
                if isinstance(node, ast.ImportFrom)
                else [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            offenders += [f"{path.name}:{node.lineno}" for n in names if n == "architectures"]
    assert offenders == []
    builtins = [spec.factory.__module__ for spec in architectures.registry.default.specs()]
    assert {m.__name__ for m in architectures.BUILTIN_MODULES} <= set(builtins)


def test_face_exports_the_public_api() -> None:
    for name in architectures.__all__:
        assert hasattr(architectures, name), name
    assert architectures.build is architectures.registry.build
    assert architectures.count_parameters is architectures.measure.count_parameters
    assert architectures.memory_format_of is architectures.layers.memory_format_of
    assert not hasattr(architectures, "_unregister")
    assert not hasattr(architectures, "_reset_plugins_for_tests")


def test_bad_width_and_unknown_option_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="width"):
        architectures.build("unet_thesis", width=0)
    with pytest.raises(ConfigError, match="unet_thesis.*encoder"):
        architectures.build("unet_thesis", width=WIDTH, encoder="resnet18")


def test_width_scales_channels() -> None:
    model = architectures.build("unet_thesis", width=0.5)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs[0].out_channels == 32 and max(c.out_channels for c in convs) == 512
    tiny = architectures.build("segnet_basic", width=0.001)
    assert [c.out_channels for c in _convs(tiny)] == [16] * 8 + [3]  # the floor; the head


def test_scaled_floors_at_min_channels_but_never_widens_a_published_stage() -> None:
    assert architectures.MIN_CHANNELS == 16
    assert scaled(64, 0.25) == 16
    assert scaled(64, 0.0625) == 16  # 4 without the floor
    assert scaled(16, 0.25) == 16  # smp U-Net's last decoder stage: 4 without
    assert scaled(1024, 0.0625) == 64
    assert scaled(512, 1.0) == 512 and scaled(64, 2.0) == 128
    assert scaled(8, 0.5) == 8  # an 8-channel stage stays 8, not 16
    assert scaled(1, 0.001) == 1


def _convs(model: nn.Module) -> list[nn.modules.conv._ConvNd]:
    """Every convolution and transposed convolution, in module order."""
    return [m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)]


def _conv_channels(model: nn.Module) -> dict[str, int]:
    """Output channels of every convolution, by module name."""
    return {
        name: m.out_channels
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.conv._ConvNd)
    }


def _build_on_meta(name: str, width: float) -> nn.Module:
    """Shapes only (no memory, no initialisation): cheap even at width 1.0."""
    with torch.device("meta"):
        return architectures.build(name, width=width)


BUILTINS = [n for n in architectures.available() if architectures.get_spec(n).source == "builtin"]
SMP = architectures.available("smp_*")


@pytest.mark.parametrize("width", [0.0625, 0.25])
@pytest.mark.parametrize("name", BUILTINS + SMP)
def test_no_conv_stage_below_the_channel_floor(name: str, width: float) -> None:
    """Every conv has at least min(MIN_CHANNELS, its width-1.0 channels) outputs.

    The min spares what the published design makes narrow at every width: the classifier
    (num_classes outputs), MAnet's squeeze-and-excitation bottlenecks (channels / 16) and PAN's
    1-channel attention maps. smp models are built with their default encoder (resnet34).
    """
    full = _conv_channels(_build_on_meta(name, 1.0))
    narrow = _conv_channels(_build_on_meta(name, width))
    assert narrow.keys() == full.keys()
    too_narrow = {
        n: (c, full[n]) for n, c in narrow.items() if c < min(architectures.MIN_CHANNELS, full[n])
    }
    assert not too_narrow, f"{name} at width {width}: (channels, at width 1.0) {too_narrow}"


@pytest.mark.parametrize("width", [0.0625, 0.25])
@pytest.mark.parametrize("name", BUILTINS)
def test_thesis_models_have_no_conv_below_the_floor_but_the_classifier(
    name: str, width: float
) -> None:
    model = _build_on_meta(name, width)
    *stages, classifier = _convs(model)
    assert classifier is model.head[0] and classifier.out_channels == 3  # num_classes filters
    assert min(c.out_channels for c in stages) >= architectures.MIN_CHANNELS


def test_check_output_shape_names_the_architecture() -> None:
    with pytest.raises(ArchitectureError, match=r"'half'.*\(1, 3, 60, 60\)"):
        architectures.check_output_shape("half", nn.Conv2d(3, 3, 1, stride=2))


def test_count_parameters_and_gflops() -> None:
    model = nn.Conv2d(3, 4, kernel_size=1)
    assert architectures.count_parameters(model) == 16
    model.bias.requires_grad_(False)
    assert architectures.count_parameters(model) == 12
    # one multiply-add = 2 flops: 2 * 3 * 4 per pixel (torch does not count the bias)
    expected = 2 * 12 * 120 * 120 / 1e9
    assert architectures.forward_gflops(model, (120, 120)) == pytest.approx(expected)


# --------------------------------------------------------------------------- thesis U-Net


def test_unet_thesis_parameter_count_equals_keras() -> None:
    model = architectures.build("unet_thesis", width=1.0)
    assert architectures.count_parameters(model) == KERAS_UNET_TRAINABLE_PARAMS


def test_unet_thesis_layers_follow_the_annex() -> None:
    model = architectures.build("unet_thesis", width=WIDTH)
    ups = [m.conv for m in model.modules() if isinstance(m, KerasSameConvTranspose2d)]
    assert [(u.kernel_size[0], u.stride[0]) for u in ups] == [(2, 3), (2, 2), (3, 2), (2, 2)]
    assert [p.kernel_size for p in model.pools] == [2, 2, 2, 3]
    decoder_kernels = [
        m.kernel_size[0]
        for block in model.decoder
        for m in block.conv.modules()
        if isinstance(m, nn.Conv2d)
    ]
    assert decoder_kernels == [2, 2, 2, 2, 3, 3, 2, 2]
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(bn.eps == 1e-3 and bn.momentum == 0.01 for bn in bns)
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert all(c.bias is not None and not c.bias.any() for c in convs)  # Keras: zero biases
    head_conv, dropout = model.head
    assert head_conv.kernel_size == (1, 1) and dropout.p == 0.5


def test_unet_thesis_concatenates_upsampled_then_skip() -> None:
    model = architectures.build("unet_thesis", width=WIDTH).eval()
    block = model.decoder[0]
    seen: dict[str, torch.Tensor] = {}

    def record(key: str, use_input: bool):  # a forward hook must return None
        def hook(_module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            seen[key] = inputs[0] if use_input else output

        return hook

    # deconv6 has a 2x2 kernel: the concatenation is written straight into the conv's
    # padded input, so the first conv sees [upsampled, skip] plus a zero bottom row/column.
    first_conv = block.conv[0][1]
    first_conv.register_forward_hook(record("cat", use_input=True))
    block.up.register_forward_hook(record("up", use_input=False))
    with torch.no_grad():
        model(torch.rand(1, 3, 120, 120))
    channels, (height, width) = seen["up"].shape[1], seen["up"].shape[-2:]
    assert seen["cat"].shape[1] == 2 * channels
    assert seen["cat"].shape[-2:] == (height + 1, width + 1)
    assert torch.equal(seen["cat"][:, :channels, :height, :width], seen["up"])
    assert not seen["cat"][:, :, height].any() and not seen["cat"][:, :, :, width].any()


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("kernel", [2, 4])
def test_concatenating_same_conv_equals_cat_pad_conv(kernel, memory_format) -> None:
    """The one-write concatenate-and-pad gives cat + F.pad's values and gradients."""
    torch.manual_seed(0)
    layer = keras_same_conv(5, 3, kernel).double().to(memory_format=memory_format)
    conv = layer[1]
    a = torch.randn(2, 2, 7, 9, dtype=torch.double).to(memory_format=memory_format)
    b = torch.randn(2, 3, 7, 9, dtype=torch.double).to(memory_format=memory_format)
    a.requires_grad_()
    b.requires_grad_()
    before, after = (kernel - 1) // 2, kernel - 1 - (kernel - 1) // 2
    expected = F.conv2d(
        F.pad(torch.cat([a, b], dim=1), (before, after, before, after)), conv.weight, conv.bias
    )
    got = layer(a, b)
    assert got.shape == expected.shape == (2, 3, 7, 9)
    assert torch.allclose(got, expected)
    grad = torch.randn_like(expected)
    expected_grads = torch.autograd.grad(expected, (a, b, conv.weight), grad)
    got_grads = torch.autograd.grad(got, (a, b, conv.weight), grad)
    for e, g in zip(expected_grads, got_grads, strict=True):
        assert torch.allclose(e, g)
    assert torch.autograd.gradcheck(lambda x, y: layer(x, y), (a, b))


def test_thesis_head_dropout_keeps_half_and_scales_by_two() -> None:
    model = architectures.build("unet_thesis", width=WIDTH)
    dropout = model.head[1]
    x = torch.ones(4, 3, 64, 64, requires_grad=True)
    torch.manual_seed(0)
    y = dropout.train()(x)
    assert set(y.unique().tolist()) == {0.0, 2.0}
    assert abs((y == 0).float().mean().item() - 0.5) < 0.01
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert torch.equal(grad, y.detach())  # the gradient is the same mask, scaled
    torch.manual_seed(0)
    assert torch.equal(dropout(x), y)  # drawn from torch's seeded generator
    assert torch.equal(dropout.eval()(x), x)


@pytest.mark.parametrize(("kernel", "stride"), [(2, 3), (2, 2), (3, 2)])
def test_conv_transpose_fills_the_pixels_tensorflow_fills(kernel: int, stride: int) -> None:
    """TF's Conv2DTranspose('same') is the gradient of a 'same' strided conv on n*stride pixels."""
    torch.manual_seed(0)
    layer = KerasSameConvTranspose2d(2, 3, kernel, stride)
    nn.init.zeros_(layer.conv.bias)
    n = 5
    x = torch.randn(1, 2, n, n)
    big = torch.zeros(1, 3, n * stride, n * stride, requires_grad=True)
    total = max(kernel - stride, 0)  # TF 'same' padding for input n*stride, output n
    padded = F.pad(big, (total // 2, total - total // 2, total // 2, total - total // 2))
    forward = F.conv2d(padded, layer.conv.weight, stride=stride)
    assert forward.shape[-2:] == (n, n)
    (expected,) = torch.autograd.grad(forward, big, grad_outputs=x)
    assert torch.allclose(layer(x), expected, atol=1e-6)


def test_even_kernel_same_conv_pads_bottom_right_like_tensorflow() -> None:
    torch.manual_seed(0)
    layer = keras_same_conv(2, 3, 2)
    conv = layer[1]
    x = torch.randn(1, 2, 6, 6)
    expected = F.conv2d(F.pad(x, (0, 1, 0, 1)), conv.weight, conv.bias)
    assert torch.allclose(layer(x), expected)


# --------------------------------------------------------------------------- SegNet, DeconvNet


def test_segnet_basic_structure() -> None:
    model = architectures.build("segnet_basic", width=WIDTH)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)][:-1]  # minus the head
    assert len(convs) == 8
    assert all(c.kernel_size == (7, 7) and c.bias is None for c in convs)
    assert [c.out_channels for c in convs] == [16, 16, 32, 64, 32, 16, 16, 16]  # floor: 16
    assert sum(isinstance(m, nn.ReLU) for m in model.encoder.modules()) == 4
    assert not any(isinstance(m, nn.ReLU) for m in model.decoder.modules())
    assert [p.kernel_size for p in model.pools] == [2, 2, 2, 3]
    assert all(p.return_indices for p in model.pools)
    assert sum(isinstance(m, nn.MaxUnpool2d) for m in model.modules()) == 4


def test_deconvnet_structure() -> None:
    model = architectures.build("deconvnet", width=WIDTH)
    convs = [m for m in model.encoder.modules() if isinstance(m, nn.Conv2d)]
    deconvs = [m for m in model.decoder.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert len(convs) == 13 and len(deconvs) == 13
    assert all(c.kernel_size == (3, 3) for c in convs + deconvs)
    assert [c.out_channels for c in convs] == [16] * 4 + [32] * 3 + [64] * 6  # floor: 16
    assert [c.out_channels for c in deconvs] == [64] * 5 + [32] * 3 + [16] * 5
    assert [getattr(p, "kernel_size", 1) for p in model.pools] == [1, 2, 2, 2, 3]
    assert model.fc[0].out_channels == 512  # 4096 * width


# --------------------------------------------------------------------------- smp baselines


def _smp_unet_decoder_channels(model: nn.Module) -> list[int]:
    return [block.conv2[0].out_channels for block in model.model.decoder.blocks]


def test_smp_width_scales_the_decoder_only() -> None:
    narrow = architectures.build("smp_unet", width=0.5, encoder="resnet18")
    full = architectures.build("smp_unet", width=1.0, encoder="resnet18")
    assert _smp_unet_decoder_channels(full) == [256, 128, 64, 32, 16]
    assert _smp_unet_decoder_channels(narrow) == [128, 64, 32, 16, 16]  # 8 -> the floor
    assert architectures.count_parameters(narrow.model.encoder) == architectures.count_parameters(
        full.model.encoder
    )


def test_smp_unet_at_quarter_width_keeps_16_channel_decoder_stages() -> None:
    with torch.device("meta"):
        model = architectures.build("smp_unet", width=0.25, encoder="resnet18")
    # 64, 32, 16, 8, 4 without the floor: the 4-channel last stage never learnt the nucleus.
    assert _smp_unet_decoder_channels(model) == [64, 32, 16, 16, 16]
    assert model.model.segmentation_head[0].in_channels == 16


def test_width_notes_say_what_width_scales() -> None:
    for name in BUILTINS + SMP:
        assert architectures.get_spec(name).width_note, name
    for name in BUILTINS:
        assert "every conv stage" in architectures.get_spec(name).width_note
    for name in SMP:
        assert "encoder at full size" in architectures.get_spec(name).width_note
    linknet = architectures.get_spec("smp_linknet").width_note
    assert linknet.startswith("ignored") and "Linknet" in linknet
    assert architectures.get_spec("smp_unet").width_note.startswith("decoder only")


def test_linknet_ignores_width_as_its_note_says() -> None:
    counts = {
        architectures.count_parameters(_build_on_meta("smp_linknet", width)) for width in (0.25, 1)
    }
    assert len(counts) == 1


@pytest.mark.usefixtures("fresh_registry")
def test_register_architecture_takes_a_width_note() -> None:
    @architectures.register_architecture("test_width_note_net", width_note="  ignored:  fixed  ")
    def net(num_classes: int = 3, in_channels: int = 3, width: float = 1.0) -> nn.Module:
        """A fixed-size net."""
        return nn.Conv2d(in_channels, num_classes, 1)

    assert architectures.get_spec("test_width_note_net").width_note == "ignored: fixed"

    @architectures.register_architecture("test_no_width_note_net")
    def other(num_classes: int = 3, in_channels: int = 3, width: float = 1.0) -> nn.Module:
        """Says nothing about width."""
        return nn.Conv2d(in_channels, num_classes, 1)

    assert architectures.get_spec("test_no_width_note_net").width_note == ""


def test_smp_failed_weight_download_suggests_random_init(monkeypatch: pytest.MonkeyPatch) -> None:
    import segmentation_models_pytorch.encoders as smp_encoders

    def offline(*args: object, **kwargs: object) -> str:
        raise OSError("network is unreachable")

    monkeypatch.setattr(smp_encoders, "hf_hub_download", offline)
    with pytest.raises(ArchitectureError) as info:
        architectures.build("smp_unet", width=WIDTH, encoder="resnet18", encoder_weights="imagenet")
    message = str(info.value)
    assert "cannot download imagenet weights for resnet18" in message
    assert "network is unreachable" in message and "encoder_weights=None" in message


def test_smp_unknown_encoder_is_named() -> None:
    with pytest.raises(ArchitectureError, match="unknown encoder 'resnet35'.*resnet34"):
        architectures.build("smp_fpn", encoder="resnet35")
