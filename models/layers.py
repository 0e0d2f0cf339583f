"""Keras layers the sequence families share (imports Keras: import it inside `build` only)."""
from __future__ import annotations

import keras


class PositionEmbedding(keras.layers.Layer):
    """Adds a learned vector per position to steps [N, L, d] (L <= `max_length`); keeps the mask.

    Args:
        max_length: the longest sequence the layer accepts (the feature's length).
    """

    def __init__(self, max_length: int, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"max_length must be a positive integer, got {max_length!r}")
        self.max_length = max_length
        self.supports_masking = True

    def build(self, input_shape):
        length, dim = input_shape[-2], input_shape[-1]
        if length is not None and length > self.max_length:
            raise ValueError(f"sequences of length {length} exceed max_length {self.max_length}")
        self.positions = self.add_weight(shape=(self.max_length, dim), initializer="glorot_uniform",
                                         name="positions")

    def call(self, inputs):
        length = keras.ops.shape(inputs)[-2]
        return inputs + keras.ops.cast(self.positions[:length], inputs.dtype)

    def compute_mask(self, inputs, mask=None):
        return mask

    def get_config(self):
        return {**super().get_config(), "max_length": self.max_length}


class MaskedMean(keras.layers.Layer):
    """Mean over the steps of [N, L, d] that the mask keeps; a row with no kept step gives zeros
    (GlobalAveragePooling1D divides by zero there and returns NaN, e.g. for an empty text)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def call(self, inputs, mask=None):
        if mask is None:
            return keras.ops.mean(inputs, axis=1)
        weights = keras.ops.expand_dims(keras.ops.cast(mask, inputs.dtype), -1)
        total = keras.ops.sum(inputs * weights, axis=1)
        return total / keras.ops.maximum(keras.ops.sum(weights, axis=1), 1.0)

    def compute_mask(self, inputs, mask=None):
        return None  # the pooled vector has no time axis left to mask
