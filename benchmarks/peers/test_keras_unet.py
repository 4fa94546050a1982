"""The Keras peer is the annex model and the same network as ``unet_thesis``.

Run with ``python -m pytest benchmarks/peers`` (skipped when TensorFlow is not installed; the
CI suite collects ``tests/`` only).
"""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from keras_unet import EXPECTED_PARAMS, build_keras_unet, trainable_parameters  # noqa: E402

import architectures  # noqa: E402


def test_annex_parameter_count() -> None:
    assert EXPECTED_PARAMS == 26_230_851
    assert trainable_parameters(build_keras_unet(1.0, compile=False)) == EXPECTED_PARAMS


@pytest.mark.parametrize("width", [1.0, 0.25])
def test_same_parameter_count_as_unet_thesis(width: float) -> None:
    torch_model = architectures.build("unet_thesis", num_classes=3, in_channels=3, width=width)
    keras_model = build_keras_unet(width, compile=False)
    assert trainable_parameters(keras_model) == architectures.count_parameters(torch_model)


def test_output_shape_and_softmax() -> None:
    model = build_keras_unet(0.25)
    x = np.random.default_rng(0).random((2, 120, 120, 3), dtype=np.float32)
    y = model(x, training=False).numpy()
    assert y.shape == (2, 120, 120, 3)
    np.testing.assert_allclose(y.sum(axis=-1), 1.0, atol=1e-5)


def test_same_function_as_unet_thesis() -> None:
    """Keras weights copied into ``unet_thesis`` give the same output (inference mode).

    Catches what a parameter count cannot: TF's bottom/right padding of the even 2x2 'same'
    convs, the bias-only rows of the kernel-2/stride-3 transposed conv and the crop of the
    kernel-3/stride-2 one.
    """
    import torch
    from torch import nn

    rng = np.random.default_rng(0)
    keras_model = build_keras_unet(0.25, compile=False)
    # Perturb every weight (biases, BN statistics included) so that no term is trivially zero.
    for layer in keras_model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        new = [(w + rng.normal(0, 0.05, w.shape)).astype(np.float32) for w in weights]
        if isinstance(layer, keras.layers.BatchNormalization):
            new[3] = rng.uniform(0.5, 1.5, weights[3].shape).astype(np.float32)  # variance > 0
        layer.set_weights(new)
    torch_model = architectures.build("unet_thesis", width=0.25).eval()
    keras_layers = [layer for layer in keras_model.layers if layer.get_weights()]
    torch_layers = [
        m
        for m in torch_model.modules()
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d))
    ]
    with torch.no_grad():
        for keras_layer, torch_layer in zip(keras_layers, torch_layers, strict=True):
            weights = keras_layer.get_weights()
            if isinstance(torch_layer, nn.BatchNorm2d):
                assert isinstance(keras_layer, keras.layers.BatchNormalization)
                targets = (
                    torch_layer.weight,
                    torch_layer.bias,
                    torch_layer.running_mean,
                    torch_layer.running_var,
                )
                for target, value in zip(targets, weights, strict=True):
                    target.copy_(torch.from_numpy(value))
                continue
            kernel, bias = weights
            # Conv2D (kh, kw, in, out) -> (out, in, kh, kw); Conv2DTranspose (kh, kw, out, in)
            # -> (in, out, kh, kw): the same transpose, and no spatial flip in either framework.
            torch_layer.weight.copy_(torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy()))
            torch_layer.bias.copy_(torch.from_numpy(bias))
        x = rng.random((2, 120, 120, 3), dtype=np.float32)
        expected = keras_model(x, training=False).numpy()
        logits = torch_model(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
        got = torch.softmax(logits, dim=1).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(got, expected, atol=1e-5)
