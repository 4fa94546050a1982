"""The thesis annex's U-Net (§8) in Keras, as the thesis wrote it: the speed peer of unet_thesis.

Layer for layer the annex's ``conv_block`` / ``deconv_block`` / ``Unet`` (Keras 3 API of
TensorFlow 2.16+): Conv2D 3x3 'same' + BatchNormalization + ReLU twice per block, filters
64 ... 1024, max pooling 2, 2, 2, 3; Conv2DTranspose 'same' with (kernel, stride) (2, 3), (2, 2),
(3, 2), (2, 2), each followed by ``concatenate([y, skip], axis=3)`` and a conv_block whose
kernel is the transposed conv's size (so 2x2, 2x2, 3x3, 2x2 convs in the decoder); output
Conv2D(3, 1x1), Dropout(0.5), softmax; compiled with Adam(1e-4), ``binary_crossentropy``,
``metrics=["accuracy"]``.

Departures from the annex (none change the layers or the parameter count):

* ``Adam(learning_rate=1e-4)``: Keras 3 no longer accepts the annex's ``lr=`` alias;
* ``width`` scales every filter count with ``max(1, round(c * width))``, exactly as
  ``architectures.layers.scaled`` does for ``unet_thesis`` (the annex's ``filters=64``
  argument would give ``filters * 2`` etc., which rounds differently at some widths);
  ``num_classes`` replaces the annex's ``nclasses``. Width 1.0 is the annex model.

This module imports TensorFlow only; it never imports torch, so a Keras run is not slowed by a
second thread pool. Run it to print the trainable parameter count (26,230,851 at width 1.0).
"""

from __future__ import annotations

import argparse

import keras
from keras import layers

FILTERS = (64, 128, 256, 512, 1024)
POOLS = (2, 2, 2, 3)
# (kernel size, stride) of deconv6..deconv9, as the annex calls deconv_block.
DECONVS = ((2, 3), (2, 2), (3, 2), (2, 2))
SIZE = 120  # the annex's Input(shape=(img_height, img_width, 3)) with the thesis's 120x120
EXPECTED_PARAMS = 26_230_851


MIN_CHANNELS = 16  # architectures.MIN_CHANNELS


def scaled(channels: int, width: float) -> int:
    """Filters at ``width``; the same rounding and floor as ``architectures.layers.scaled``."""
    return max(min(channels, MIN_CHANNELS), round(channels * width))


def conv_block(
    tensor: keras.KerasTensor,
    nfilters: int,
    size: int = 3,
    padding: str = "same",
    initializer: str = "glorot_uniform",
) -> keras.KerasTensor:
    """The annex's ``conv_block``."""
    x = layers.Conv2D(
        filters=nfilters, kernel_size=(size, size), padding=padding, kernel_initializer=initializer
    )(tensor)
    x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    x = layers.Conv2D(
        filters=nfilters, kernel_size=(size, size), padding=padding, kernel_initializer=initializer
    )(x)
    x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    return x


def deconv_block(
    tensor: keras.KerasTensor,
    residual: keras.KerasTensor,
    nfilters: int,
    size: int = 2,
    padding: str = "same",
    strides: tuple[int, int] = (2, 2),
) -> keras.KerasTensor:
    """The annex's ``deconv_block``: transposed conv, concatenate with the skip, conv_block."""
    y = layers.Conv2DTranspose(
        nfilters, kernel_size=(size, size), strides=strides, padding=padding
    )(tensor)
    y = layers.concatenate([y, residual], axis=3)
    return conv_block(y, nfilters, size=size)


def build_keras_unet(
    width: float = 1.0, num_classes: int = 3, *, size: int = SIZE, compile: bool = True
) -> keras.Model:
    """The annex's ``Unet(120, 120)``, filters scaled by ``width``, compiled as the annex does."""
    f1, f2, f3, f4, f5 = (scaled(c, width) for c in FILTERS)
    input_layer = keras.Input(shape=(size, size, 3), name="image_input")

    # down
    conv1 = conv_block(input_layer, nfilters=f1)
    conv1_out = layers.MaxPooling2D(pool_size=(2, 2))(conv1)
    conv2 = conv_block(conv1_out, nfilters=f2)
    conv2_out = layers.MaxPooling2D(pool_size=(2, 2))(conv2)
    conv3 = conv_block(conv2_out, nfilters=f3)
    conv3_out = layers.MaxPooling2D(pool_size=(2, 2))(conv3)
    conv4 = conv_block(conv3_out, nfilters=f4)
    conv4_out = layers.MaxPooling2D(pool_size=(3, 3))(conv4)
    conv5 = conv_block(conv4_out, nfilters=f5)

    # up
    deconv6 = deconv_block(conv5, residual=conv4, nfilters=f4, strides=(3, 3))
    deconv7 = deconv_block(deconv6, residual=conv3, nfilters=f3)
    deconv8 = deconv_block(deconv7, residual=conv2, nfilters=f2, size=3)
    deconv9 = deconv_block(deconv8, residual=conv1, nfilters=f1)

    # output
    output_layer = layers.Conv2D(filters=num_classes, kernel_size=(1, 1))(deconv9)
    output_layer = layers.Dropout(0.5)(output_layer)
    output_layer = layers.Activation("softmax")(output_layer)

    model = keras.Model(inputs=input_layer, outputs=output_layer, name="Unet")
    if compile:
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate=1e-4),
            loss="binary_crossentropy",
            metrics=["accuracy"],
        )
    return model


def trainable_parameters(model: keras.Model) -> int:
    """Keras' 'Trainable params' (BatchNorm moving statistics are not trainable)."""
    return sum(int(keras.ops.size(w)) for w in model.trainable_weights)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--num-classes", type=int, default=3)
    parser.add_argument("--summary", action="store_true", help="print model.summary()")
    args = parser.parse_args(argv)
    model = build_keras_unet(args.width, args.num_classes, compile=False)
    if args.summary:
        model.summary()
    count = trainable_parameters(model)
    note = f" (annex: {EXPECTED_PARAMS:,})" if args.width == 1.0 and args.num_classes == 3 else ""
    print(f"trainable parameters at width {args.width}: {count:,}{note}")


if __name__ == "__main__":
    main()
