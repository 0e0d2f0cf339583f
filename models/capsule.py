"""capsule: a capsule network with dynamic routing (Sabour, Frosst and Hinton 2017) on image features.

Conv2D (ReLU) -> primary capsules (a strided Conv2D whose channels are `primary_channels`
capsules of `primary_dim` values at every position, squashed) -> one output capsule of
`capsule_dim` values per class, reached by `routings` iterations of routing-by-agreement
(`CapsuleRouting`). A capsule's length (in [0, 1) after the squash) says how present its entity
is; the output capsules' lengths (times LENGTH_SCALE) go through the task's head (a softmax
over the classes for multiclass), so the export answers with the same outputs as the cnn
(probabilities, classes, class_ids) and trains with the task's loss. A task without classes gets OUTPUT_CAPSULES capsules.
The paper's reconstruction decoder (a regulariser) is left out: the lengths alone classify.

Images smaller than twice the kernel (8x8 digits) are convolved with "same" padding, larger ones
with "valid" as in the paper. The defaults (64 5x5 filters, 8 capsule channels of 8 values on
a 10x10 grid for 28x28 MNIST, 16-value output capsules, 3 routings) train an epoch of 4,000
images in about a minute on 2 shared, busy cores; 6 epochs reach 0.973-0.977 test accuracy.
"""
from __future__ import annotations

from kfx.models.space import COMMON, Choice, Float, Int

OUTPUT_CAPSULES = 16  # output capsules of a task without classes (regression)
EPSILON = 1e-7
# The output capsules' lengths (in [0, 1)) enter the head times this: at the scale of logits, so the
# softmax can be confident early (measured on MNIST: at 1, 2 epochs reach 0.94 train accuracy; at 10, 0.98).
LENGTH_SCALE = 10.0

SPACE = COMMON + (
    Choice("conv_filters", (32, 64, 128, 256), default=64),
    Choice("kernel_size", (5, 9), default=5),
    Choice("primary_channels", (4, 8, 16, 32), default=8),
    Choice("primary_dim", (4, 8), default=8),
    Choice("capsule_dim", (8, 16), default=16),
    Int("routings", 1, 5, default=3),
    Float("dropout", 0.0, 0.5, default=0.0),
)


def squash(s, axis: int = -1):
    """v = |s|^2 / (1 + |s|^2) * s / |s| along `axis`: the direction kept, the length in [0, 1)."""
    from keras import ops

    norm2 = ops.sum(ops.square(s), axis=axis, keepdims=True)
    return norm2 / (1.0 + norm2) * s / ops.sqrt(norm2 + EPSILON)


def _layers():
    import keras

    class CapsuleRouting(keras.layers.Layer):
        """Input capsules [N, n_in, d_in] -> `capsules` output capsules [N, capsules, dim] by
        routing-by-agreement.

        Every input capsule i predicts every output capsule j as u_ij = W_ij u_i. The logits
        b_ij start at 0; each of `routings` iterations takes the coupling coefficients
        c_ij = softmax_j(b_ij) (summing to 1 over the output capsules), the output capsules
        v_j = squash(sum_i c_ij u_ij), and (but the last) raises b_ij by the agreement u_ij . v_j.
        """

        def __init__(self, capsules: int, dim: int, routings: int = 3, **kwargs):
            super().__init__(**kwargs)
            for name, value, low in (("capsules", capsules, 1), ("dim", dim, 1), ("routings", routings, 1)):
                if isinstance(value, bool) or not isinstance(value, int) or value < low:
                    raise ValueError(f"CapsuleRouting: {name} must be an integer >= {low}, got {value!r}")
            self.capsules, self.dim, self.routings = capsules, dim, routings

        def build(self, input_shape):
            if len(input_shape) != 3 or input_shape[1] is None or input_shape[2] is None:
                raise ValueError(f"CapsuleRouting: needs input capsules [batch, n_in, d_in] of known n_in and "
                                 f"d_in, got shape {tuple(input_shape)}")
            self.kernel = self.add_weight(name="kernel", shape=(input_shape[1], self.capsules, self.dim,
                                                                input_shape[2]),
                                          initializer=keras.initializers.RandomNormal(stddev=0.05))

        def route(self, inputs):
            """(output capsules [N, capsules, dim], coupling coefficients [N, n_in, capsules])."""
            from keras import ops

            u_hat = ops.einsum("nid,ijed->nije", inputs, ops.cast(self.kernel, inputs.dtype))
            logits = ops.zeros(ops.shape(u_hat)[:3], dtype=u_hat.dtype)
            # The weighted sums and agreements as broadcast products: einsum is several times slower here.
            for r in range(self.routings):
                coupling = ops.softmax(logits, axis=2)
                v = squash(ops.sum(coupling[..., None] * u_hat, axis=1))
                if r < self.routings - 1:
                    logits = logits + ops.sum(u_hat * v[:, None], axis=-1)
            return v, coupling

        def call(self, inputs):
            return self.route(inputs)[0]

        def compute_output_shape(self, input_shape):
            return (input_shape[0], self.capsules, self.dim)

        def get_config(self):
            return {**super().get_config(), "capsules": self.capsules, "dim": self.dim, "routings": self.routings}

    return CapsuleRouting


def routing_layer(capsules: int, dim: int, routings: int = 3, **kwargs):
    """A `CapsuleRouting` layer (a keras.layers.Layer; see its docstring)."""
    return _layers()(capsules, dim, routings, **kwargs)


def build(features: dict[str, dict], task: dict, hp: dict):
    """The capsule network for the image `features` (and any others) and `task`, sized by `hp`.

    Returns:
        An uncompiled keras.Model taking a dict of transformed features.

    Raises:
        ValueError: no image feature.
    """
    import keras
    from keras import ops

    from kfx.models import modality, tasks

    main = modality.main_features(features, modality.IMAGE_KINDS, "capsule")
    classes = tasks.of(task).classes
    n_out = len(classes) if classes else OUTPUT_CAPSULES
    inp = modality.inputs(features)
    k = hp["kernel_size"]
    towers = []
    for name in main:
        height, width = features[name]["shape"][:2]
        padding = "valid" if min(height, width) >= 2 * k else "same"
        x = keras.layers.Conv2D(hp["conv_filters"], k, padding=padding, activation="relu", name=f"{name}_conv")(inp[name])
        x = keras.layers.Conv2D(hp["primary_channels"] * hp["primary_dim"], k, strides=2, padding=padding,
                                name=f"{name}_primary_conv")(x)
        x = keras.layers.Reshape((-1, hp["primary_dim"]), name=f"{name}_primary")(x)
        x = keras.layers.Lambda(squash, name=f"{name}_primary_squash")(x)
        x = routing_layer(n_out, hp["capsule_dim"], hp["routings"], name=f"{name}_routing")(x)
        towers.append(keras.layers.Lambda(lambda v: LENGTH_SCALE * ops.sqrt(ops.sum(ops.square(v), -1) + EPSILON),
                                          name=f"{name}_lengths")(x))
    x = modality.head_input(towers, inp, features, main, "capsule")
    if hp["dropout"] > 0:
        x = keras.layers.Dropout(hp["dropout"], name="capsule_dropout")(x)
    return keras.Model(inp, tasks.of(task).output(x), name="capsule")
