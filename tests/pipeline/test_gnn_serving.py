"""The gnn family through the real pipeline and the real server, on a tiny graph made here.

Two communities of 6 nodes (rings with chords) joined by one edge, one-hot identity features, 2
labelled nodes per community. ONE run: graph ingest -> statistics -> schema -> transform -> train
(gnn from its space's defaults, a few full-batch steps). The export, reloaded, gives the outputs of
the Keras model rebuilt with its weights; ONE `python -m kfx.serving` answers Predict for node ids
with the same numbers, shows the `node_id` int64 input in GetModelMetadata, and answers
INVALID_ARGUMENT for an id that is not a node (then keeps serving).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.pipeline.raw_data import DATA_STAGES, train_stage

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

N, LABELLED = 12, (0, 1, 10, 11)
IDS = np.array([0, 5, 6, 11, 3], dtype=np.int64)  # asked of the model: both sides and the bridge
EPOCHS = 15


def write_graph(tmp: Path) -> tuple[str, str]:
    """nodes.csv (node_id, x0..x11, side, masks) and edges.csv of the two communities."""
    features = [f"x{i}" for i in range(N)]
    lines = [",".join(["node_id", *features, "side", "train_mask", "eval_mask", "test_mask"])]
    for n in range(N):
        lab = int(n in LABELLED)
        lines.append(",".join([str(n), *("1" if m == n else "0" for m in range(N)), "a" if n < 6 else "b",
                               str(lab), str(lab), str(1 - lab)]))
    edges = [(5, 6)]
    for base in (0, 6):
        edges += [(base + i, base + (i + 1) % 6) for i in range(6)] + [(base + i, base + i + 3) for i in range(3)]
    (tmp / "nodes.csv").write_text("\n".join(lines) + "\n")
    (tmp / "edges.csv").write_text("source,target\n" + "".join(f"{a},{b}\n" for a, b in edges))
    return str(tmp / "nodes.csv"), str(tmp / "edges.csv")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    from kfx.pipeline.config import load_config
    from kfx.pipeline.runner import run_pipeline

    tmp = tmp_path_factory.mktemp("gnn")
    nodes, edges = write_graph(tmp)
    cfg = {"name": "gnn", "root": str(tmp / "runs"), "max_parallel": 1,
           "beam_args": ["--direct_running_mode=in_memory"],
           "stages": [*DATA_STAGES, train_stage("train")],
           "ingest": {"format": "csv", "label": "side", "graph": {"nodes": nodes, "edges": edges}},
           "schema": {"label": "side"},
           "transform": {"task": "node_classification"},
           "train": {"model": "gnn", "hyperparameters": {"learning_rate": 0.03}, "epochs": EPOCHS, "batch_size": 4,
                     "early_stopping_patience": 0, "warmup_requests": 1, "verbose": 0}}
    (tmp / "gnn.yaml").write_text(yaml.safe_dump(cfg))
    summary = run_pipeline(load_config(tmp / "gnn.yaml"))
    assert summary["status"] == "succeeded", summary["error"]
    c = summary["components"]
    return {**c["train"]["outputs"], "metrics": c["train"]["metrics"],
            "transform_graph": c["transform"]["outputs"]["transform_graph"]}


@pytest.fixture(scope="module")
def exported(trained) -> tuple:
    """(the export loaded here, serving_default's outputs for IDS)."""
    import tensorflow as tf

    loaded = tf.saved_model.load(trained["model"])
    out = loaded.signatures["serving_default"](node_id=tf.constant(IDS))
    return loaded, {k: v.numpy() for k, v in out.items()}


def test_gnn_trains_from_its_space_defaults_on_node_ids(trained):
    from kfx import models
    from kfx.models import space
    from kfx.models.preprocess import load_transform

    hp = json.loads(Path(trained["model_run"], "hyperparameters.json").read_text())
    assert hp["values"] == {**space.defaults(models.get("gnn").SPACE), "learning_rate": 0.03}
    assert (trained["metrics"]["model"], trained["metrics"]["epochs_run"]) == ("gnn", EPOCHS)
    assert trained["metrics"]["test_rows"] == N - len(LABELLED)
    spec = load_transform(trained["transform_graph"])
    assert list(spec["raw_features"]) == ["node_id"] and spec["task"]["type"] == "node_classification"
    assert spec["outputs"]["node_id"]["kind"] == "graph" and spec["outputs"]["node_id"]["nodes"] == N


def test_reloaded_export_gives_the_keras_model_outputs_for_node_ids(trained, exported):
    import tensorflow as tf

    from kfx import models
    from kfx.models import tasks
    from kfx.models.preprocess import load_transform, make_preprocessor

    spec = load_transform(trained["transform_graph"])
    loaded, outputs = exported
    serve = loaded.signatures["serving_default"]
    assert {k: (v.dtype, v.shape.as_list()) for k, v in serve.structured_input_signature[1].items()} == \
        {"node_id": (tf.int64, [None])}
    p = outputs["probabilities"]
    assert p.shape == (len(IDS), 2) and np.allclose(p.sum(axis=1), 1.0, atol=1e-5)
    assert [c.decode() for c in outputs["classes"]] == [["a", "b"][i] for i in p.argmax(axis=1)]

    hp = json.loads(Path(trained["model_run"], "hyperparameters.json").read_text())["values"]
    model = models.get("gnn").build(spec["outputs"], spec["task"], hp)
    weights = loaded.variables[len(loaded.variables) - len(model.variables):]
    assert [tuple(w.shape) for w in weights] == [tuple(v.shape) for v in model.variables]
    for variable, value in zip(model.variables, weights):
        variable.assign(value)
    keras_out = tasks.of(spec["task"]).serving_outputs(
        model(make_preprocessor(spec)({"node_id": tf.constant(IDS)}), training=False))
    np.testing.assert_allclose(p, keras_out["probabilities"].numpy(), atol=1e-5)


def test_integrated_gradients_are_skipped_for_node_ids_with_a_note_saying_why(trained, tmp_path):
    from kfx.components.evaluation.explain import explain
    from kfx.models import tasks
    from kfx.pipeline.artifacts.scoring import Split
    from kfx.pipeline.config_evaluation import ExplainConfig

    task = tasks.of(tasks.load(trained["model"]))
    data = Split({"node_id": IDS, "side": np.array(["a", "a", "b", "b", "a"])},
                 {"node_id": np.zeros(len(IDS), bool), "side": np.zeros(len(IDS), bool)}, [b""] * len(IDS))
    out = explain(ExplainConfig(permutation_repeats=0), task, None, data, trained["model"], [], set(), ".", 0.5,
                  64, 4, str(tmp_path))
    assert out["integrated_gradients"] is None
    assert out["notes"] == ["integrated gradients skipped: the model's input 'node_id' is a graph node id (kind "
                            "graph_node): the prediction comes from the graph the model holds, so attributions "
                            "over node ids are not meaningful"]


def test_gnn_refuses_features_that_are_not_a_graph():
    from kfx import models

    with pytest.raises(ValueError, match="model 'gnn' needs exactly one feature of kind 'graph'"):
        models.get("gnn").build({"x": {"kind": "dense", "width": 3}}, {"type": "multiclass"}, {})


@pytest.fixture(scope="module")
def server(trained, tmp_path_factory):
    from kfx.serving.client import ServingClient
    from tests.serving.conftest import ServerProcess, write_config

    tmp = tmp_path_factory.mktemp("gnn_server")
    shutil.copytree(trained["model"], tmp / "models" / "gnn" / "1")
    config = write_config(str(tmp / "models.config"), [("gnn", str(tmp / "models" / "gnn"), "")])
    process = ServerProcess(tmp, f"--model_config_file={config}")
    try:
        process.wait_serving()
        with ServingClient(process.target, timeout=30, retries=0) as client:
            client.wait_until_available("gnn", timeout=120)
            yield client
    finally:
        process.stop()


def test_served_gnn_answers_for_node_ids_and_refuses_unknown_ones(exported, server):
    import grpc
    from tensorflow.core.framework import types_pb2

    client = server
    want = exported[1]
    signature = client.metadata("gnn")["serving_default"]
    assert {k: (v.dtype, [d.size for d in v.tensor_shape.dim]) for k, v in signature.inputs.items()} == \
        {"node_id": (types_pb2.DT_INT64, [-1])}
    assert set(signature.outputs) == {"probabilities", "classes", "class_ids"}
    got = client.predict("gnn", {"node_id": IDS})
    np.testing.assert_allclose(got["probabilities"], want["probabilities"], atol=1e-5)
    assert list(got["classes"]) == list(want["classes"])

    with pytest.raises(grpc.RpcError) as err:
        client.predict("gnn", {"node_id": np.array([3, 999], dtype=np.int64)})
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown node id" in err.value.details() and "999" in err.value.details()
    np.testing.assert_allclose(client.predict("gnn", {"node_id": IDS})["probabilities"], want["probabilities"],
                               atol=1e-5)
