"""node_classification: the class of each node of a graph (e.g. the karate club's factions).

Multiclass classification (softmax head, cross-entropy, the same outputs, metrics, fairness and
report) whose examples are the nodes of graph examples (ingest.graph): the model's input is a node
id, and a graph family (models/gnn.py) computes every node's representation from the graph held by
the transform before it picks the requested nodes'. Usually few nodes are labelled (train) and
the others are the test split: transductive learning, the unlabelled nodes' features and edges are
seen in training, never their labels.
"""
from __future__ import annotations

from kfx.models.tasks.multiclass import Multiclass


class NodeClassification(Multiclass):
    NAME = "node_classification"

    def complete(self, spec: dict) -> dict:
        """As multiclass, once the transforms are known to be a graph's.

        Raises:
            ValueError: the examples are not a graph (no graph_node transform).
        """
        from kfx.models.kinds.graph import GraphNode

        if not any(t["kind"] == GraphNode.NAME for t in spec["transforms"]):
            raise ValueError(f"task {self.NAME!r} needs graph examples (ingest.graph: nodes and edges tables); "
                             f"these examples' transforms are {sorted({t['kind'] for t in spec['transforms']})}")
        return super().complete(spec)
