"""gnn: graph convolution network (Kipf & Welling, 2017) for node classification on a graph.

The model holds the graph as constants (the transform's `graph` feature, models/kinds/graph.py:
node features X [n, f] and the normalised adjacency Â = D^-1/2 (A + I) D^-1/2) and takes node
positions: model(ids) = gather(GCN(X, Â), ids). Every step computes all nodes' representations
(full-graph propagation, cheap for graphs of thousands of nodes) and keeps the requested ones, so
plain Keras fit on the train split's node ids trains it. The layers are
    H_{k+1} = ReLU(Â dropout(H_k) W_k)      for `num_layers` graph convolutions, H_0 = X,
    Z = softmax(Â dropout(H) W + b)           the last convolution: propagation, then the task's head,
so num_layers 1 is the paper's two-layer GCN. L2 `l2` applies to the first layer's weights (as
in the paper).
"""
from __future__ import annotations

from kfx.models.space import COMMON, Choice, Float, Int

SPACE = COMMON + (
    Int("num_layers", 1, 3, default=1),
    Choice("units", (8, 16, 32, 64), default=16),
    Float("dropout", 0.0, 0.7, default=0.5),
    Float("l2", 0.0, 1e-2, default=5e-4),
)


def graph_feature(features: dict[str, dict]) -> tuple[str, dict]:
    """(name, description) of the one graph feature.

    Raises:
        ValueError: not exactly one graph feature; the message lists the kinds received.
    """
    from kfx.models.kinds.graph import GRAPH

    names = [k for k, v in features.items() if v["kind"] == GRAPH]
    if len(names) != 1 or len(features) != 1:
        got = {k: v["kind"] for k, v in sorted(features.items())}
        raise ValueError(f"model 'gnn' needs exactly one feature of kind {GRAPH!r} (graph examples, ingest.graph) "
                         f"and no other; got {got}")
    return names[0], features[names[0]]


def build(features: dict[str, dict], task: dict, hp: dict):
    """The GCN for the graph feature (transform output) and `task`, sized by `hp` (SPACE's names).

    Returns:
        An uncompiled keras.Model taking {id feature: node positions int64 [N]}.
    """
    import keras

    from kfx.models import tasks
    from kfx.models.graph_layers import GatherNodes, GraphConvolution, NodeFeatures

    name, spec = graph_feature(features)
    ids = keras.Input(shape=(), dtype="int64", name=name)
    h = NodeFeatures(spec["x"], name="node_features")(ids)
    for i in range(hp["num_layers"]):
        h = keras.layers.Dropout(hp["dropout"], name=f"gcn{i}_dropout")(h)
        h = GraphConvolution(hp["units"], spec["adjacency"], activation="relu", l2=hp["l2"] if i == 0 else 0.0,
                             name=f"gcn{i}")(h)
    h = keras.layers.Dropout(hp["dropout"], name="propagate_dropout")(h)
    h = GraphConvolution(None, spec["adjacency"], name="propagate")(h)
    x = GatherNodes(name="nodes")([h, ids])
    return keras.Model({name: ids}, tasks.of(task).output(x), name="gnn")
