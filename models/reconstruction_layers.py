"""Keras layers of the reconstruction families (imports Keras: import it inside `build` only)."""
from __future__ import annotations

import keras

GAUSSIAN, MASKING = "gaussian", "masking"


class InputNoise(keras.layers.Layer):
    """Corrupts its input while training only: Gaussian noise of standard deviation `level`, or
    a random share `level` of the values set to 0 (`kind` masking). Identity at inference.

    Args:
        kind: gaussian or masking.
        level: the noise's standard deviation or the masked share, in [0, 1).
        seed: the random draws' seed.
    """

    def __init__(self, kind: str, level: float, seed: int = 1337, **kwargs):
        super().__init__(**kwargs)
        if kind not in (GAUSSIAN, MASKING):
            raise ValueError(f"kind must be {GAUSSIAN} or {MASKING}, got {kind!r}")
        if not 0 <= level < 1:
            raise ValueError(f"level must be in [0, 1), got {level!r}")
        self.kind, self.level, self.seed = kind, float(level), seed
        self.generator = keras.random.SeedGenerator(seed)

    def call(self, x, training=None):
        if not training or self.level == 0:
            return x
        if self.kind == GAUSSIAN:
            return x + keras.random.normal(keras.ops.shape(x), stddev=self.level, seed=self.generator)
        keep = keras.random.uniform(keras.ops.shape(x), seed=self.generator) >= self.level
        return x * keras.ops.cast(keep, x.dtype)

    def get_config(self):
        return {**super().get_config(), "kind": self.kind, "level": self.level, "seed": self.seed}


class Sampling(keras.layers.Layer):
    """The reparameterisation trick: z = mean + exp(log_var / 2) * eps, eps ~ N(0, 1), while
    training; the mean itself at inference (a deterministic score).

    Args:
        seed: the draws' seed.
    """

    def __init__(self, seed: int = 1337, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=None):
        mean, log_var = inputs
        if not training:
            return mean
        eps = keras.random.normal(keras.ops.shape(mean), seed=self.generator)
        return mean + keras.ops.exp(0.5 * log_var) * eps

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


def negative_elbo(x, x_hat, mean, log_var, observation_std: float):
    """Per row: -ELBO up to a constant, the Gaussian reconstruction term
    sum((x - x_hat)^2) / (2 * observation_std^2) plus KL(N(mean, exp(log_var)) || N(0, 1))."""
    axes = tuple(range(1, len(x.shape)))
    reconstruction = keras.ops.sum(keras.ops.square(x - x_hat), axis=axes) / (2.0 * observation_std ** 2)
    kl = 0.5 * keras.ops.sum(keras.ops.exp(log_var) + keras.ops.square(mean) - 1.0 - log_var, axis=-1)
    return reconstruction + kl
