"""cnn: LeNet/VGG-style convolution blocks on image features (e.g. MNIST digits).

Each block is `conv_layers` x (Conv2D 3x3 or 5x5 -> [BatchNorm] -> ReLU) then 2x2 max pooling;
the first block has `filters` filters and each next one twice as many (VGG). The last block's
maps are flattened into `dense_units` (none when 0) before the task's head. Other features, if
any, are encoded as the tabular families do and join the image vectors before the dense layer
(models/modality.py). The defaults (2 blocks of 32 and 64 filters, 128 units) train an epoch of
5,000 28x28 images in seconds on 2 cores.
"""
from __future__ import annotations

from kfx.models.space import COMMON, Boolean, Choice, Float, Int

SPACE = COMMON + (
    Int("blocks", 1, 3, default=2),
    Int("conv_layers", 1, 2, default=1),
    Choice("filters", (8, 16, 32, 64), default=32),
    Choice("kernel_size", (3, 5), default=3),
    Boolean("batch_norm", default=False),
    Float("dropout", 0.0, 0.5, default=0.25),
    Choice("dense_units", (0, 64, 128, 256), default=128),
)


def build(features: dict[str, dict], task: dict, hp: dict):
    """The CNN for the image `features` (and any others) and `task`, sized by `hp` (SPACE's names).

    Returns:
        An uncompiled keras.Model taking a dict of transformed features.

    Raises:
        ValueError: no image feature.
    """
    import keras

    from kfx.models import modality, tasks

    main = modality.main_features(features, modality.IMAGE_KINDS, "cnn")
    inp = modality.inputs(features)
    towers = []
    for name in main:
        x = inp[name]
        for b in range(hp["blocks"]):
            filters = hp["filters"] * 2 ** b
            for i in range(hp["conv_layers"]):
                x = keras.layers.Conv2D(filters, hp["kernel_size"], padding="same", use_bias=not hp["batch_norm"],
                                        name=f"{name}_conv{b}_{i}")(x)
                if hp["batch_norm"]:
                    x = keras.layers.BatchNormalization(synchronized=True, name=f"{name}_bn{b}_{i}")(x)
                x = keras.layers.Activation("relu", name=f"{name}_relu{b}_{i}")(x)
            # "same" padding: an odd or 1-pixel map still pools (8x8 digits through 3 blocks).
            x = keras.layers.MaxPooling2D(2, padding="same", name=f"{name}_pool{b}")(x)
        towers.append(keras.layers.Flatten(name=f"{name}_flat")(x))
    x = modality.head_input(towers, inp, features, main, "cnn")
    if hp["dropout"] > 0:
        x = keras.layers.Dropout(hp["dropout"], name="cnn_dropout")(x)
    if hp["dense_units"]:
        x = keras.layers.Dense(hp["dense_units"], activation="relu", name="cnn_dense")(x)
        if hp["dropout"] > 0:
            x = keras.layers.Dropout(hp["dropout"], name="cnn_dense_dropout")(x)
    return keras.Model(inp, tasks.of(task).output(x), name="cnn")
