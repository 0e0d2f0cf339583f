"""The window kind: a time series' last steps (raw values, step-major) -> float32 [N, length,
channels], optionally differenced, scaled per channel by train-split constants.

With `difference`, each step becomes its change from the step before (the first step's change is
0 after scaling): the model then sees the series' movements rather than its level, so a level
never seen in training (a trending series' future) looks like the past. Mean and std are those of
the train split's (differenced) values, per channel. The forecast task (models/tasks/forecast.py)
reads this state to train on and answer in the same units.
"""
from __future__ import annotations

import math

import numpy as np

from kfx.models.kinds.base import NUMBERS, Kind, merge_moments, moments
from kfx.models.modality import WINDOW


def steps(values: np.ndarray, length: int, channels: int, difference: bool, rows: int | None = None) -> np.ndarray:
    """Flat window values of whole rows -> [rows, length (- 1 when differenced), channels] float64.

    Args:
        rows: how many rows the values come from, when known: each must hold one whole window.

    Raises:
        ValueError: a value count that is not rows (or a multiple) of length * channels (a
            wrong-length window, or a window_shape that does not match the data).
    """
    size = length * channels
    if values.size % size or (rows is not None and values.size != rows * size):
        per_row = f"{values.size / rows:g} values a row" if rows else f"{values.size} values"
        raise ValueError(f"window_shape [{length}, {channels}] needs rows of length * channels = {size} values; "
                         f"got {per_row} (set window_shape to [ingest.timeseries.input_length, value columns])")
    x = values.astype(np.float64).reshape(-1, length, channels)
    return np.diff(x, axis=1) if difference else x


class Window(Kind):
    """Float32 [N, length, channels] = (x or its first differences - mean) / std per channel
    (state: length, channels, difference, season, mean, std).

    The raw feature is length * channels numbers per row (step-major: all channels of the oldest
    step first), as ingest's `timeseries` writes it; `transform.features.<feature>.window_shape`
    is [length, channels].
    """

    NAME = WINDOW
    DTYPES = NUMBERS

    @classmethod
    def configure(cls, dtype, override, cfg):
        shape = getattr(override, "window_shape", None)
        if shape is None:
            raise ValueError("a window feature needs transform.features.<feature>.window_shape: [length, channels]")
        length, season = int(shape[0]), override.season
        if season is not None and season >= length:
            # The seasonal-naive baseline reads the value one season back inside the window.
            raise ValueError(f"season {season} must be shorter than the window length {length} (window_shape "
                             f"{list(shape)}): raise ingest.timeseries.input_length or lower season")
        return {"length": length, "channels": int(shape[1]), "difference": bool(override.difference),
                "season": season}

    def raw_shape(self):
        return [self.options["length"] * self.options["channels"]]

    def accumulate(self, values, rows=None):
        o = self.options
        x = steps(values, o["length"], o["channels"], o["difference"], rows)
        return [moments(x[:, :, c]) for c in range(o["channels"])]

    def merge(self, a, b):
        return [merge_moments(x, y) for x, y in zip(a, b)]

    def finalize(self, acc):
        if not acc or acc[0][0] == 0:
            raise ValueError("no window in the train split to scale with")
        mean = [m[1] for m in acc]
        std = [math.sqrt(m[2] / m[0]) or 1.0 for m in acc]  # a constant channel keeps std 1
        state = {**self.options, "mean": mean, "std": std}
        return state, {"window_mean": mean, "window_std": std, "differenced": self.options["difference"]}

    @classmethod
    def apply(cls, layer, x, state):
        import tensorflow as tf

        x = tf.reshape(tf.cast(x, tf.float32), [-1, state["length"], state["channels"]])
        if state["difference"]:
            x = x[:, 1:] - x[:, :-1]
        x = (x - tf.constant(state["mean"], tf.float32)) / tf.constant(state["std"], tf.float32)
        return tf.pad(x, [[0, 0], [1, 0], [0, 0]]) if state["difference"] else x

    @classmethod
    def describe(cls, state):
        return {"kind": WINDOW, "length": state["length"], "channels": state["channels"]}
