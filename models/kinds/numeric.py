"""Numeric kinds: passthrough, normalize (z-score, optionally of log1p) and bucketize (quantiles)."""
from __future__ import annotations

import numpy as np

from kfx.models.kinds.base import (DENSE, IDS, NUMBERS, Kind, built, merge_moments, merge_summaries, moments,
                                   quantile_summary, setting)

ONE_HOT_ENCODING = "one_hot"
MIN_VARIANCE = 1e-12  # a constant feature normalizes to 0 instead of dividing by zero


class Passthrough(Kind):
    """The number as a float32 [N, 1], unchanged."""

    NAME = "passthrough"
    DTYPES = NUMBERS
    FILL_MEAN = True

    @classmethod
    def apply(cls, layer, x, state):
        import tensorflow as tf

        x = tf.cast(x, tf.float32)
        if state.get("log"):
            # Skewed non-negative counts: log1p first; clip so a bad value cannot give NaN.
            x = tf.math.log1p(tf.maximum(x, 0.0))
        x = tf.reshape(x, [-1, 1])
        return layer(x) if layer is not None else x

    @classmethod
    def describe(cls, state):
        return {"kind": DENSE, "width": 1}


class Normalize(Passthrough):
    """(x - mean) / std at train-split moments; with `log`, of log1p(x) (state: mean, variance, log)."""

    NAME = "normalize"

    @classmethod
    def configure(cls, dtype, override, cfg):
        return {"log": bool(setting(override, "log", False))}

    def accumulate(self, values, rows=None):
        x = values.astype(np.float64)
        return moments(np.log1p(np.maximum(x, 0.0)) if self.options["log"] else x)

    def merge(self, a, b):
        return merge_moments(a, b)

    def finalize(self, acc):
        n, mean, m2, _, _ = acc
        if n == 0:
            raise ValueError("no value in the train split to normalize with")
        log = self.options["log"]
        return {"mean": mean, "variance": m2 / n, "log": log}, ({"log_mean": mean, "log_variance": m2 / n} if log else {})

    @classmethod
    def layer(cls, state, dtype):
        import keras

        return built(keras.layers.Normalization(mean=[state["mean"]],
                                                variance=[max(state["variance"], MIN_VARIANCE)]), (None, 1))


class Bucketize(Kind):
    """Bucket ids [N] at train-split quantile boundaries (state: boundaries)."""

    NAME = "bucketize"
    DTYPES = NUMBERS
    FILL_MEAN = True

    @classmethod
    def configure(cls, dtype, override, cfg):
        return {"num_buckets": setting(override, "num_buckets", cfg.num_buckets), "accuracy": cfg.quantile_accuracy}

    def accumulate(self, values, rows=None):
        v = values.astype(np.float64)
        return quantile_summary(v, np.ones_like(v), self.options["accuracy"])

    def merge(self, a, b):
        return merge_summaries(a, b, self.options["accuracy"])

    def finalize(self, acc):
        bounds = boundaries(acc, self.options["num_buckets"])
        return {"boundaries": bounds}, {"boundaries": bounds}

    @classmethod
    def layer(cls, state, dtype):
        import keras

        return built(keras.layers.Discretization(bin_boundaries=list(state["boundaries"])), (None,))

    @classmethod
    def apply(cls, layer, x, state):
        import tensorflow as tf

        return tf.cast(layer(tf.cast(x, tf.float32)), tf.int64)

    @classmethod
    def describe(cls, state):
        return {"kind": IDS, "cardinality": len(state["boundaries"]) + 1, "encoding": ONE_HOT_ENCODING}


def boundaries(summary, num_buckets: int) -> list[float]:
    """Boundaries of `num_buckets` equal-weight buckets of a quantile summary (duplicates merged)."""
    values, weights = summary
    if len(values) == 0:
        return [0.0]
    cum = np.cumsum(weights)
    qs = np.arange(1, num_buckets) / num_buckets * cum[-1]
    idx = np.minimum(np.searchsorted(cum, qs, side="right"), len(values) - 1)
    bounds = sorted(set(float(values[i]) for i in idx))
    # A boundary at the minimum would leave bucket 0 empty.
    return [b for b in bounds if b > float(values[0])] or [float(values[-1])]
