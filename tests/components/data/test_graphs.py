"""Graph ingest on tiny nodes and edges tables made here: node examples split by mask columns,
graph.json, and the quarantine of a node without a feature value, a duplicate node id and edges
to unknown nodes (file, line, reason), with reconciled counts and the rejected-fraction limit."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import tensorflow as tf
import yaml

NODES = """node_id,f1,f2,color,train_mask,eval_mask,test_mask
1,0.5,1.0,red,1,1,0
2,0.1,0.2,blue,1,1,0
3,,0.3,red,0,0,1
4,0.7,0.1,blue,0,0,1
2,0.0,0.0,red,0,0,1
5,0.2,0.2,,0,0,0
6,0.3,0.9,red,0,0,true
7,nan,0.9,red,0,0,1
"""
EDGES = """source,target
1,2
2,4
4,99
1,3
5,1
6,4
"""


def _ingest(tmp: Path, **ingest) -> dict:
    from kfx.pipeline.config import load_config
    from kfx.pipeline.runner import run_pipeline

    (tmp / "nodes.csv").write_text(NODES)
    (tmp / "edges.csv").write_text(EDGES)
    cfg = {"name": "graph", "root": str(tmp / "runs"), "max_parallel": 1,
           "stages": [{"name": "ingest", "component": "ingest"}],
           "ingest": {"format": "csv", "label": "color",
                      "graph": {"nodes": str(tmp / "nodes.csv"), "edges": str(tmp / "edges.csv")}, **ingest}}
    (tmp / "graph.yaml").write_text(yaml.safe_dump(cfg))
    return run_pipeline(load_config(tmp / "graph.yaml"))


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("graph_ingest")
    summary = _ingest(tmp, max_rejected_fraction=0.5)
    assert summary["status"] == "succeeded", summary["error"]
    return tmp, summary["components"]["ingest"]


def test_bad_node_and_edge_rows_are_quarantined_naming_file_line_and_reason(ingested):
    tmp, ingest = ingested
    rejected = [json.loads(line) for line in open(f"{ingest['outputs']['rejected']}/rejected.jsonl")]
    got = {(Path(r["input"]).name, r["line"]): r["reason"] for r in rejected}
    assert got == {
        ("nodes.csv", 4): "node 3 has no value for feature 'f1'",
        ("nodes.csv", 6): f"duplicate node id 2 (first at {tmp / 'nodes.csv'} line 3)",
        ("nodes.csv", 9): "node 7: feature 'f1' is 'nan', not a finite number",
        ("edges.csv", 4): "edge to unknown node id 99 (column 'target')",
        ("edges.csv", 5): "edge to unknown node id 3 (column 'target')",  # node 3 was rejected
    }
    assert next(r["row"] for r in rejected if r["line"] == 4 and r["input"].endswith("edges.csv")) == "4,99"


def test_counts_reconcile_and_nodes_are_examples_of_their_masks_splits(ingested):
    _, ingest = ingested
    m = ingest["metrics"]
    assert (m["read"], m["rejected"], m["nodes"], m["edges"], m["unlabelled_nodes"]) == (14, 5, 5, 4, 1)
    assert m["read"] == m["nodes"] + m["edges"] + m["rejected"]
    assert m["splits"] == {"train": 2, "eval": 2, "test": 2}
    examples = ingest["outputs"]["examples"]
    for split, ids in (("train", [1, 2]), ("eval", [1, 2]), ("test", [4, 6])):
        files = tf.io.gfile.glob(f"{examples}/Split-{split}/*.gz")
        rows = [tf.train.Example.FromString(r.numpy()).features.feature
                for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]
        assert [r["node_id"].int64_list.value[0] for r in rows] == ids
        assert sorted(rows[0]) == ["color", "f1", "f2", "node_id"]  # no mask column
    graph = json.loads(Path(examples, "graph.json").read_text())
    assert graph["nodes"] == [1, 2, 4, 5, 6] and graph["features"] == ["f1", "f2"]
    assert graph["x"][2] == [0.7, 0.1] and "color" not in json.dumps(graph)  # never the labels
    assert graph["edges"] == [[0, 1], [1, 2], [3, 0], [4, 2]]
    columns = json.loads(Path(examples, "columns.json").read_text())
    assert columns["columns"] == {"node_id": "int", "f1": "float", "f2": "float", "color": "string"}


def test_rejections_above_the_limit_fail_ingest_naming_the_first_row(tmp_path):
    summary = _ingest(tmp_path)
    assert summary["status"] == "failed"
    assert "5 of 14 rows" in summary["error"]
    assert f"{tmp_path / 'nodes.csv'} line 4: node 3 has no value for feature 'f1'" in summary["error"]


def test_graph_config_mistakes_fail_at_load_naming_the_key():
    from kfx.pipeline.config import IngestConfig

    graph = {"nodes": "n.csv", "edges": "e.csv"}
    with pytest.raises(ValueError, match="ingest.graph reads CSV tables; format is 'parquet'"):
        IngestConfig(format="parquet", label="y", graph=graph)
    with pytest.raises(ValueError, match="built-in 'karate' brings its own: remove ingest.graph"):
        IngestConfig(format="builtin", name="karate", graph=graph)
    with pytest.raises(ValueError, match="ingest.graph needs ingest.label"):
        IngestConfig(graph=graph)
    with pytest.raises(ValueError, match="features .* include the id or a mask column 'train_mask'"):
        IngestConfig(label="y", graph={**graph, "features": ["a", "train_mask"]})


def test_karate_builtin_tables_label_the_two_best_connected_members_of_each_faction(tmp_path):
    import csv

    from kfx.components.data.datasets import write_karate

    write_karate(tmp_path)
    nodes = list(csv.DictReader(open(tmp_path / "nodes.csv")))
    edges = list(csv.DictReader(open(tmp_path / "edges.csv")))
    assert len(nodes) == 34 and len(edges) == 78
    train = [int(n["node_id"]) for n in nodes if n["train_mask"] == "1"]
    assert train == [0, 2, 32, 33] and [n["club"] for n in nodes if n["train_mask"] == "1"] == \
        ["Mr. Hi", "Mr. Hi", "Officer", "Officer"]
    assert all(n["eval_mask"] == n["train_mask"] != n["test_mask"] for n in nodes)
    assert all(n[f"x{i}"] == ("1" if i == int(n["node_id"]) else "0") for n in nodes for i in range(34))
