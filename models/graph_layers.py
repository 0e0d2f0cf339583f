"""Keras layers of graph convolution networks (models/gnn.py; imports Keras: import it inside
`build` only). The graph (node features, normalised adjacency) is held as constants."""
from __future__ import annotations

import keras


class NodeFeatures(keras.layers.Layer):
    """The graph's node feature matrix X [n, f], a constant (its input only places it in the model)."""

    def __init__(self, x, **kwargs):
        super().__init__(**kwargs)
        import numpy as np

        self.x = np.asarray(x, dtype="float32")
        if self.x.ndim != 2 or not self.x.size:
            raise ValueError(f"node features must be a non-empty [nodes, features] matrix, got shape {self.x.shape}")

    def call(self, ids):
        import tensorflow as tf

        return tf.constant(self.x)

    def compute_output_shape(self, input_shape):
        return self.x.shape

    def get_config(self):
        return {**super().get_config(), "x": self.x.tolist()}


class GraphConvolution(keras.layers.Layer):
    """activation(Â H W + b) over all n nodes, Â a constant sparse [n, n]; `units` None: Â H only.

    Args:
        units: output width, or None for propagation without weights (a Dense after it completes
            the convolution).
        adjacency: {"indices": [[row, col], ...], "values": [...]} of Â (n nodes: the rows of H).
        activation: Keras activation name.
        l2: L2 penalty on the kernel.
    """

    def __init__(self, units: int | None, adjacency: dict, activation: str | None = None, l2: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        if units is not None and units <= 0:
            raise ValueError(f"units must be a positive integer or None, got {units!r}")
        if len(adjacency.get("indices", ())) != len(adjacency.get("values", ())) or not adjacency.get("values"):
            raise ValueError(f"adjacency needs as many indices as values (> 0), got {len(adjacency.get('indices', ()))} "
                             f"and {len(adjacency.get('values', ()))}")
        self.units, self.adjacency, self.l2 = units, adjacency, l2
        self.activation = keras.activations.get(activation)

    def build(self, input_shape):
        if self.units is not None:
            reg = keras.regularizers.L2(self.l2) if self.l2 > 0 else None
            self.kernel = self.add_weight(name="kernel", shape=(input_shape[-1], self.units),
                                          initializer="glorot_uniform", regularizer=reg)
            self.bias = self.add_weight(name="bias", shape=(self.units,), initializer="zeros")

    def call(self, h):
        import tensorflow as tf

        n = tf.shape(h, out_type=tf.int64)[0]
        a = tf.SparseTensor(tf.constant(self.adjacency["indices"], tf.int64),
                            tf.constant(self.adjacency["values"], h.dtype), tf.stack([n, n]))
        if self.units is not None:
            h = tf.matmul(h, self.kernel)
        out = tf.sparse.sparse_dense_matmul(a, h)
        if self.units is not None:
            out = self.activation(out + self.bias)
        return out

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units or input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "units": self.units, "adjacency": self.adjacency,
                "activation": keras.activations.serialize(self.activation), "l2": self.l2}


class GatherNodes(keras.layers.Layer):
    """[node representations [n, d], node positions [N]] -> the positions' rows [N, d]."""

    def call(self, inputs):
        import tensorflow as tf

        h, ids = inputs
        return tf.gather(h, ids)

    def compute_output_shape(self, input_shapes):
        return (*input_shapes[1], input_shapes[0][-1])
