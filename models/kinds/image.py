"""The image kind: fixed-shape pixel arrays scaled by the train split's pixel mean and std."""
from __future__ import annotations

import math

import numpy as np

from kfx.models.kinds.base import IMAGE, NUMBERS, Kind, merge_moments, moments


class Image(Kind):
    """Float32 [N, height, width, channels] = (pixels - mean) / std (state: shape, mean, std).

    The raw feature is the flattened pixels (height * width * channels numbers per row); its
    shape comes from `transform.features.<feature>.image_shape`.
    """

    NAME = "image"
    DTYPES = NUMBERS
    FILL_MEAN = True

    @classmethod
    def configure(cls, dtype, override, cfg):
        shape = getattr(override, "image_shape", None)
        if shape is None:
            raise ValueError("an image feature needs transform.features.<feature>.image_shape")
        return {"shape": list(shape)}

    def raw_shape(self):
        return [math.prod(self.options["shape"])]

    def accumulate(self, values):
        return moments(values.astype(np.float64))

    def merge(self, a, b):
        return merge_moments(a, b)

    def finalize(self, acc):
        n, mean, m2, _, _ = acc
        if n == 0:
            raise ValueError("no pixel in the train split to scale with")
        # A constant image keeps std 1 instead of dividing by zero.
        return {"shape": self.options["shape"], "mean": mean, "std": math.sqrt(m2 / n) or 1.0}, {}

    @classmethod
    def apply(cls, layer, x, state):
        import tensorflow as tf

        x = tf.reshape(tf.cast(x, tf.float32), [-1, *state["shape"]])
        return (x - state["mean"]) / state["std"]

    @classmethod
    def describe(cls, state):
        return {"kind": IMAGE, "shape": list(state["shape"])}
