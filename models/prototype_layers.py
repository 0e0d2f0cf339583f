"""Keras layers of the prototype families: the self-organising map (models/som.py) and the
Gaussian radial basis layer (models/rbf.py). Imports Keras: import it inside `build` only."""
from __future__ import annotations

import keras
from keras import ops

from kfx.models.som import ENCODER, SOM


def squared_distances(x, centres):
    """||x_n - c_k||^2 [N, K] of rows x [N, D] and centres [K, D] (clipped at 0 against rounding)."""
    x = ops.cast(x, centres.dtype)
    d2 = ops.sum(x * x, axis=1, keepdims=True) - 2.0 * ops.matmul(x, ops.transpose(centres)) \
        + ops.sum(centres * centres, axis=1)
    return ops.maximum(d2, 0.0)


class SelfOrganizingMap(keras.layers.Layer):
    """A rows x cols grid of prototypes; `call` returns squared distances [N, rows * cols] to them
    (unit id = row * cols + col), `update` applies one step of the SOM rule.

    Args:
        rows, cols: the grid's size (each >= 1).
    """

    def __init__(self, rows: int, cols: int, **kwargs):
        super().__init__(**kwargs)
        for name, value in (("rows", rows), ("cols", cols)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SelfOrganizingMap: {name} must be an integer >= 1, got {value!r}")
        self.rows, self.cols = rows, cols

    def build(self, input_shape):
        dim = input_shape[-1]
        if dim is None:
            raise ValueError(f"SelfOrganizingMap: the input's last dimension must be known, got {input_shape}")
        # Not trainable: the SOM rule sets them, no optimizer. sigma and rate: the current
        # neighbourhood radius and learning rate, set by the training schedule.
        self.prototypes = self.add_weight(shape=(self.rows, self.cols, dim), name="prototypes", trainable=False,
                                          initializer=keras.initializers.RandomUniform(0.0, 1.0, seed=1))
        self.sigma = self.add_weight(shape=(), name="sigma", trainable=False, initializer="ones")
        self.rate = self.add_weight(shape=(), name="learning_rate", trainable=False, initializer="ones")

    @property
    def units(self) -> int:
        return self.rows * self.cols

    def flat_prototypes(self):
        return ops.reshape(ops.convert_to_tensor(self.prototypes), (self.units, -1))

    def call(self, x):
        return squared_distances(x, self.flat_prototypes())

    def grid(self):
        """The units' (row, col) positions [units, 2] as floats, in unit id order."""
        ids = ops.arange(self.units)
        return ops.cast(ops.stack([ids // self.cols, ids % self.cols], axis=1), "float32")

    def update(self, x):
        """One step of the SOM rule on the batch `x` [B, D] at the current sigma and rate:
        w_k += rate * sum_b h_bk (x_b - w_k) / max(1, sum_b h_bk), h_bk = exp(-|bmu_b - k|^2 / (2 sigma^2))
        on the grid.

        Returns:
            The batch's mean quantization error (distance to the best matching unit) before the step.
        """
        d2 = self(x)
        pos = self.grid()
        bmu = ops.take(pos, ops.argmin(d2, axis=1), axis=0)
        h = ops.exp(-ops.sum((bmu[:, None, :] - pos[None, :, :]) ** 2, axis=-1) / (2.0 * ops.square(self.sigma)))
        w = self.flat_prototypes()
        mass = ops.sum(h, axis=0)
        pull = ops.matmul(ops.transpose(h), ops.cast(x, w.dtype)) - mass[:, None] * w
        self.prototypes.assign(ops.reshape(w + self.rate * pull / ops.maximum(mass, 1.0)[:, None],
                                           self.prototypes.shape))
        return ops.mean(ops.sqrt(ops.min(d2, axis=1)))

    def get_config(self):
        return {**super().get_config(), "rows": self.rows, "cols": self.cols}


class SomModel(keras.Model):
    """A functional model holding a SelfOrganizingMap layer `SOM` fed by a sub-model `ENCODER`
    (transformed features -> flat rows): fit applies the SOM rule (no loss, no optimizer) and
    reports the mean quantization error as `loss`."""

    def train_step(self, data):
        return {"loss": self.get_layer(SOM).update(self.get_layer(ENCODER)(data[0], training=False))}

    def test_step(self, data):
        d2 = self.get_layer(SOM)(self.get_layer(ENCODER)(data[0], training=False))
        return {"loss": ops.mean(ops.sqrt(ops.min(d2, axis=1)))}


class RadialBasis(keras.layers.Layer):
    """Gaussian radial basis functions exp(-||x - c_k||^2 / (2 s_k^2)) [N, units] with learnable
    centres c_k and widths s_k (kept positive as exp of a learned log).

    Args:
        units: how many basis functions (>= 1).
        width: the initial width of every function (> 0).
    """

    def __init__(self, units: int, width: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        if isinstance(units, bool) or not isinstance(units, int) or units < 1:
            raise ValueError(f"RadialBasis: units must be an integer >= 1, got {units!r}")
        if not width > 0:
            raise ValueError(f"RadialBasis: width must be > 0, got {width!r}")
        self.units, self.width = units, float(width)

    def build(self, input_shape):
        dim = input_shape[-1]
        if dim is None:
            raise ValueError(f"RadialBasis: the input's last dimension must be known, got {input_shape}")
        self.centres = self.add_weight(shape=(self.units, dim), name="centres",
                                       initializer=keras.initializers.RandomNormal(stddev=1.0, seed=1))
        self.log_width = self.add_weight(shape=(self.units,), name="log_width",
                                         initializer=keras.initializers.Constant(float(ops.log(self.width))))

    def call(self, x):
        return ops.exp(-squared_distances(x, self.centres) / (2.0 * ops.exp(2.0 * self.log_width)))

    def get_config(self):
        return {**super().get_config(), "units": self.units, "width": self.width}
