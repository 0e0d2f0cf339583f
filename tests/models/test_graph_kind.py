"""graph_node: node ids (int or string) -> positions in the graph; an unknown id is an error naming it."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from kfx.models.kinds.graph import GraphNode


@pytest.mark.parametrize("dtype, nodes, asked, unknown", [
    ("int64", [10, 3, 7], [7, 10, 3, 7], 99),
    ("string", ["b", "a", "c"], ["c", "b", "a", "c"], "zz"),
])
def test_ids_map_to_positions_and_unknown_ids_are_invalid_argument(dtype, nodes, asked, unknown):
    state = {"nodes": nodes}
    layer = GraphNode.layer(state, dtype)
    got = GraphNode.apply(layer, tf.constant(asked), state)
    np.testing.assert_array_equal(got.numpy(), [2, 0, 1, 2])
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"(?s)unknown node id.*{unknown}"):
        GraphNode.apply(layer, tf.constant([asked[0], unknown]), state)


def test_graph_node_is_not_configured_by_users():
    with pytest.raises(ValueError, match="given by transform to the id of graph examples"):
        GraphNode.configure("int64", None, None)
