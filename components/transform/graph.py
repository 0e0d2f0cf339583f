"""Transform of graph examples (ingest.graph): the node id is the model's only raw input, and the
graph (node features and the normalised adjacency built here from the stored edges) becomes the
state of its `graph_node` transform (models/kinds/graph.py), so the exported model holds it and
serving cannot skew from training.

The adjacency is Kipf & Welling's renormalisation D^-1/2 (A + I) D^-1/2, with A[i, j] = 1 when an
edge j -> i exists (an undirected edge both ways; repeated edges count once) and D the row sums of
A + I: a node's new value is the degree-weighted mean of its own and its neighbours' values.
Node features enter as ingest stored them (no scaling).
"""
from __future__ import annotations

import numpy as np

from kfx.pipeline.component import ComponentError

GRAPH_NODE = "graph_node"


def normalized_adjacency(n: int, edges, directed: bool = False) -> dict:
    """D^-1/2 (A + I) D^-1/2 of `n` nodes as sparse {"indices": [[row, col], ...], "values": [...]}.

    Args:
        n: number of nodes.
        edges: [source, target] node positions.
        directed: False: each edge links both ways.

    Returns:
        Entries sorted by (row, col), values as floats.
    """
    pairs = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    rows, cols = pairs[:, 1], pairs[:, 0]  # j -> i: node i aggregates from j
    if not directed:
        rows, cols = np.concatenate([rows, cols]), np.concatenate([cols, rows])
    loops = np.arange(n, dtype=np.int64)
    keys = np.unique(np.concatenate([rows, loops]) * n + np.concatenate([cols, loops]))
    rows, cols = keys // n, keys % n
    degree = np.bincount(rows, minlength=n).astype(np.float64)
    values = 1.0 / np.sqrt(degree[rows] * degree[cols])
    return {"indices": np.stack([rows, cols], axis=1).tolist(), "values": values.tolist()}


def plan(graph: dict, raw: dict) -> tuple[dict, list[dict]]:
    """(raw features, transforms) of graph examples: the id feature alone, with the graph as state.

    Args:
        graph: graph.json of the examples (pipeline/artifacts/graph.py).
        raw: the raw features transform planned from the schema.

    Raises:
        ComponentError: the id column is not a raw feature (excluded in transform config).
    """
    node_id = graph["id"]
    if node_id not in raw:
        raise ComponentError(f"transform: graph examples are served by node id {node_id!r}, which is not a "
                             f"raw feature (is it in transform.exclude?); raw features: {sorted(raw)}")
    options = {"nodes": graph["nodes"], "features": graph["features"], "x": graph["x"],
               "adjacency": normalized_adjacency(len(graph["nodes"]), graph["edges"], graph["directed"])}
    # No default: a tf.Example without the id is an error, not a question about some node.
    return ({node_id: {**raw[node_id], "default": None}},
            [{"feature": node_id, "kind": GRAPH_NODE, "output": node_id, "options": options}])
