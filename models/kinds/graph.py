"""graph_node: a node id of a graph -> its position among the graph's nodes (graph examples only).

transform gives this kind to the id feature of graph examples (ingest.graph; components/transform/
graph.py); it is not configured by users. Its state is the whole graph the model holds as
constants: the node ids in order, their features `x` [n, f] and the normalised adjacency
D^-1/2 (A + I) D^-1/2 as sparse (indices, values). Its layer maps ids to positions inside the
exported model; an id that is not a node of the graph fails the request with INVALID_ARGUMENT
(a tf assertion naming the ids), not a silent wrong answer.
Output description: {"kind": "graph", "nodes": n, "x": ..., "adjacency": {"indices", "values"}}.
"""
from __future__ import annotations

from kfx.models.kinds.base import INT, STRING, Kind, built

GRAPH = "graph"  # the output description's kind
UNKNOWN_NODE = "unknown node id"


class GraphNode(Kind):
    NAME = "graph_node"
    DTYPES = (INT, STRING)

    @classmethod
    def configure(cls, dtype, override, cfg):
        raise ValueError("kind 'graph_node' is given by transform to the id of graph examples (ingest.graph); "
                         "it cannot be configured")

    def finalize(self, acc):
        o = self.options
        return dict(o), {"nodes": len(o["nodes"]), "adjacency_entries": len(o["adjacency"]["values"])}

    @classmethod
    def layer(cls, state, dtype):
        import keras
        import numpy as np

        if dtype == STRING:
            lookup = keras.layers.StringLookup(vocabulary=[str(v) for v in state["nodes"]], num_oov_indices=1,
                                               mask_token=None)
        else:
            lookup = keras.layers.IntegerLookup(vocabulary=np.asarray(state["nodes"], dtype=np.int64),
                                                num_oov_indices=1, mask_token=None)
        return built(lookup, (None,))

    @classmethod
    def apply(cls, layer, x, state):
        import tensorflow as tf

        index = tf.cast(layer(x), tf.int64) - 1  # the lookup's index 0 is out-of-vocabulary
        check = tf.debugging.Assert(tf.reduce_all(index >= 0),
                                    [f"{UNKNOWN_NODE}(s), not nodes of the graph:", tf.boolean_mask(x, index < 0)],
                                    summarize=10)
        with tf.control_dependencies([check]):
            return tf.identity(index)

    @classmethod
    def describe(cls, state):
        return {"kind": GRAPH, "nodes": len(state["nodes"]), "x": state["x"], "adjacency": state["adjacency"]}
