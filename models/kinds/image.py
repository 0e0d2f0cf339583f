"""The image kinds: `image` for fixed-shape pixel arrays, `encoded_image` for encoded image bytes
(PNG, JPEG, ...) decoded and resized inside the model; both scaled by the train split's pixel
mean and std, or by fixed constants (`image_scale`)."""
from __future__ import annotations

import math

import numpy as np

from kfx.models.kinds.base import IMAGE, NUMBERS, STRING, Kind, merge_moments, moments


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

    def accumulate(self, values, rows=None):
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


def decode_images(x, shape):
    """Encoded images [N] (string tensor: PNG, JPEG, GIF or BMP bytes) -> float32 [N, h, w, c] pixels
    in [0, 255], converted to `shape`'s channels and resized (bilinear) to its height and width.

    Raises (when run):
        tf.errors.InvalidArgumentError: bytes that are not an image (serving: INVALID_ARGUMENT).
    """
    import tensorflow as tf

    height, width, channels = shape

    def one(data):
        image = tf.io.decode_image(data, channels=channels, expand_animations=False)
        image.set_shape([None, None, channels])
        return tf.image.resize(tf.cast(image, tf.float32), [height, width])

    x = tf.reshape(x, [-1])
    return tf.map_fn(one, x, fn_output_signature=tf.TensorSpec([height, width, channels], tf.float32))


class EncodedImage(Kind):
    """Float32 [N, height, width, channels] = (decoded, resized pixels - mean) / std.

    The raw feature is one encoded image string per example (what TF Serving clients send,
    REST as {"b64": ...}). `transform.features.<feature>.image_shape` is the size and channel
    count the model sees; `image_scale: [mean, std]` fixes the scaling (e.g. [0, 255]),
    otherwise the train split's decoded pixels give mean and std (state: shape, mean, std).
    """

    NAME = "encoded_image"
    DTYPES = (STRING,)

    @classmethod
    def configure(cls, dtype, override, cfg):
        shape = getattr(override, "image_shape", None)
        if shape is None:
            raise ValueError("an encoded_image feature needs transform.features.<feature>.image_shape")
        scale = getattr(override, "image_scale", None)
        return {"shape": list(shape), "scale": list(scale) if scale is not None else None}

    def accumulate(self, values, rows=None):
        if self.options["scale"] is not None or len(values) == 0:
            return moments(np.zeros(0))
        import tensorflow as tf

        return moments(decode_images(tf.constant(values, dtype=tf.string), self.options["shape"]).numpy())

    def merge(self, a, b):
        return merge_moments(a, b)

    def finalize(self, acc):
        shape, scale = self.options["shape"], self.options["scale"]
        if scale is not None:
            return {"shape": shape, "mean": float(scale[0]), "std": float(scale[1])}, {}
        n, mean, m2, _, _ = acc
        if n == 0:
            raise ValueError("no decodable image in the train split to scale with")
        std = math.sqrt(m2 / n) or 1.0
        return {"shape": shape, "mean": mean, "std": std}, {"pixel_mean": mean, "pixel_std": std,
                                                           "images": n // math.prod(shape)}

    @classmethod
    def apply(cls, layer, x, state):
        return (decode_images(x, state["shape"]) - state["mean"]) / state["std"]

    @classmethod
    def describe(cls, state):
        return {"kind": IMAGE, "shape": list(state["shape"])}
