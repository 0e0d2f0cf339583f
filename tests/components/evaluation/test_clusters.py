"""components/evaluation/clusters.py and the clustering task's evaluation: purity, silhouette,
the fairness gap and the map, against hand-computed values on tiny arrays."""
from __future__ import annotations

import numpy as np
import pytest

from kfx.components.evaluation import clusters
from kfx.models import tasks

Y = np.array(["a", "a", "b", "b", "b", "c"], dtype=object)
CLUSTER = np.array([0, 0, 0, 1, 1, 2])
TASK = {"type": "clustering", "label": "label", "label_dtype": "string", "vocabulary": None, "positive": None}


def test_purity_sums_each_clusters_majority_over_all_rows():
    # cluster 0: a, a, b -> 2; cluster 1: b, b -> 2; cluster 2: c -> 1
    assert clusters.purity(Y, CLUSTER) == pytest.approx(5 / 6)
    assert clusters.in_majority(Y, CLUSTER).tolist() == [True, True, False, True, True, True]
    assert clusters.purity(Y[:0], CLUSTER[:0]) is None


def test_silhouette_matches_the_hand_computed_value():
    x = np.array([[0.0], [1.0], [10.0], [11.0]])
    # each point: a = 1 (its neighbour), b = mean distance to the other pair
    want = (9.5 / 10.5 + 8.5 / 9.5) / 2
    assert clusters.silhouette(x, np.array([0, 0, 1, 1])) == pytest.approx(want)
    assert clusters.silhouette(x, np.zeros(4, int)) is None  # one cluster: undefined


def test_clustering_task_metrics_fairness_and_map():
    task = tasks.of(TASK)
    o = task.outcomes(np.array([b"a", b"a", b"b", b"b", b"b", b"c"], dtype=object), CLUSTER.astype(float))
    x = np.array([[0.0], [0.1], [0.2], [5.0], [5.1], [9.0]])
    protos = np.arange(8, dtype=np.float64).reshape(1, 2, 4)  # a 1 x 2 map of 2 x 2 images
    o.model_data = {"features": x, "prototypes": protos, "image_shape": [2, 2, 1]}
    m = task.metrics(o)
    assert m["purity"] == pytest.approx(5 / 6) and m["clusters_used"] == 3.0 and m["count"] == 6
    from sklearn.metrics import silhouette_score
    assert m["silhouette"] == pytest.approx(silhouette_score(x, CLUSTER))
    assert [(u["id"], u["row"], u["col"], u["count"], u["majority"], u["majority_count"]) for u in m["map"]["units"]] \
        == [(0, 0, 0, 3, "a", 2), (1, 0, 1, 2, "b", 2)]
    assert (m["map"]["rows"], m["map"]["cols"]) == (1, 2)
    assert task.metrics(o, np.array([True, True, True, False, False, False]))["purity"] == pytest.approx(2 / 3)

    groups = np.array([0, 0, 0, 1, 1, 1])  # group x: 2 of 3 in their majority, group y: 3 of 3
    fair = task.fairness(o, o.pred, groups, ["x", "y"], None, 0.95)
    assert fair["gaps"]["purity_difference"]["value"] == pytest.approx(1 / 3)

    tables, plots = task.report_sections({"overall": m})
    assert tables[0].count("<img src='data:image/png;base64,") == 2 and "1 x 2 units" in tables[0]
    assert "a (2/3)" in tables[0] and 'data-plot="clusters"' in plots[0]


def test_map_without_prototypes_or_images_is_an_assignment_table():
    m = clusters.map_units(Y, CLUSTER, {})
    assert [u["count"] for u in m["units"]] == [3, 2, 1] and m["rows"] is None
    tables, _ = clusters.render_map(m)
    assert "<img" not in tables[0] and "<td>c</td>" in tables[0]
    grid = clusters.map_units(Y, CLUSTER, {"prototypes": np.zeros((2, 2, 3)), "image_shape": None})
    tables, _ = clusters.render_map(grid)
    assert "b (2/2)" in tables[0] and tables[0].count("<td>-</td>") == 1  # unit 3 holds no row


def test_clustering_task_refuses_what_it_cannot_serve():
    task = tasks.of(TASK)
    with pytest.raises(ValueError, match="task clustering has no head: use a family that clusters"):
        task.output(None)
    with pytest.raises(ValueError, match="must return a dict with 'cluster' and 'distance'; got \\['cluster'\\]"):
        task.serving_outputs({"cluster": None})
    with pytest.raises(ValueError, match="returns 2 clusters for 3 rows"):
        task.outcomes(np.array(["a", "b", "c"]), np.array([0.0, 1.0]))
