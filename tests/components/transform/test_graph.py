"""The normalised adjacency D^-1/2 (A + I) D^-1/2 of graph examples against hand-computed ones."""
from __future__ import annotations

import numpy as np
import pytest

from kfx.components.transform.graph import normalized_adjacency, plan
from kfx.pipeline.component import ComponentError


def _dense(n: int, sparse: dict) -> np.ndarray:
    out = np.zeros((n, n))
    for (i, j), v in zip(sparse["indices"], sparse["values"]):
        out[i, j] = v
    return out


def test_path_of_three_nodes_matches_the_hand_computed_renormalisation():
    # 0 - 1 - 2, the edge 0-1 given twice (once reversed): degrees of A + I are 2, 3, 2.
    got = normalized_adjacency(3, [[0, 1], [1, 2], [1, 0]])
    s6 = 1 / np.sqrt(6)
    want = np.array([[1 / 2, s6, 0],
                     [s6, 1 / 3, s6],
                     [0, s6, 1 / 2]])
    np.testing.assert_allclose(_dense(3, got), want, atol=1e-12)
    assert got["indices"] == sorted(got["indices"])


def test_directed_edge_feeds_only_its_target():
    # 0 -> 1: node 1 aggregates from 0 (A[1, 0] = 1); row sums of A + I are 1, 2, 1.
    got = _dense(3, normalized_adjacency(3, [[0, 1]], directed=True))
    np.testing.assert_allclose(got, [[1, 0, 0], [1 / np.sqrt(2), 1 / 2, 0], [0, 0, 1]], atol=1e-12)


def test_plan_serves_the_id_alone_and_needs_it():
    graph = {"id": "node_id", "nodes": [7, 8], "features": ["f"], "x": [[1.0], [2.0]], "edges": [[0, 1]],
             "directed": False}
    raw = {"node_id": {"dtype": "int64", "shape": [], "default": 0}, "f": {"dtype": "float32", "shape": [], "default": 0}}
    new_raw, transforms = plan(graph, raw)
    assert new_raw == {"node_id": {"dtype": "int64", "shape": [], "default": None}}  # a required feature
    assert [t["kind"] for t in transforms] == ["graph_node"]
    np.testing.assert_allclose(_dense(2, transforms[0]["options"]["adjacency"]), [[0.5, 0.5], [0.5, 0.5]])
    with pytest.raises(ComponentError, match="node id 'node_id', which is not a raw feature"):
        plan(graph, {"f": raw["f"]})
