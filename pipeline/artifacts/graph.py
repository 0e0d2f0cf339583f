"""The graph of a graph examples artifact (ingest.graph): graph.json beside the node examples.

graph.json holds every accepted node (ids in table order), their numeric features in that order
and the accepted edges as pairs of node positions; never the labels (transform builds the model's
constants from it, so no label can reach them):
    {"id": column, "id_dtype": "int"|"string", "features": [column, ...], "directed": bool,
     "nodes": [id, ...], "x": [[float, ...] per node], "edges": [[source, target], ...]}
"""
from __future__ import annotations

import json

GRAPH_FILE = "graph.json"


def write_graph(examples_uri: str, graph: dict) -> None:
    import tensorflow as tf

    with tf.io.gfile.GFile(f"{examples_uri}/{GRAPH_FILE}", "w") as f:
        json.dump(graph, f, separators=(",", ":"))


def read_graph(examples_uri: str) -> dict | None:
    """graph.json of an examples artifact, or None when the examples are not a graph."""
    import tensorflow as tf

    path = f"{examples_uri}/{GRAPH_FILE}"
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)
