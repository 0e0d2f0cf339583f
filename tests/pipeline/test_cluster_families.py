"""The som (task clustering) and rbf (task regression) families through the real pipeline and the
real server, on tiny data.

ONE pipeline run on one tiny TFRecord of noisy stripe images (label h or v) that also carries a
number `size`, a category `shade` and a numeric `weight`: ingest -> statistics, then per family its
own schema, transform, train (its space's defaults, 2 epochs) and evaluate. The SOM clusters the
images ignoring the label; the RBF network regresses `weight` on size and shade. Then: each
export reloaded in-process answers what its weights say (the SOM's unit is the nearest
prototype of the transformed input, with its grid coordinates and distance), evaluate reports
purity (equal to the purity of its own predictions file) and the linear reference's RMSE, the
report draws the map, and ONE `python -m kfx.serving` serves both models with the same answers
over gRPC and REST; GetModelMetadata shows the SOM's outputs.
"""
from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.pipeline.raw_data import CLASSES, IMAGE, LABEL, SIZE, pngs, rest_predict, stripes

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROWS = 48
NUMBER, CATEGORY, TARGET = "size", "shade", "weight"
FAMILIES = {"som": "clustering", "rbf": "regression"}


def _write(path: Path) -> list[bytes]:
    """ROWS examples (image PNG, label, size, shade, weight = size^2 + 2 for dark shades); the PNGs."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    images = pngs([stripes(CLASSES[i % 2], rng) for i in range(ROWS)])
    with tf.io.TFRecordWriter(str(path)) as writer:
        for i, png in enumerate(images):
            size, shade = float(rng.uniform(-2, 2)), ["dark", "light"][i % 3 == 0]
            weight = size ** 2 + (2.0 if shade == "dark" else 0.0) + float(rng.normal(0, 0.1))
            feature = {IMAGE: tf.train.Feature(bytes_list=tf.train.BytesList(value=[png])),
                       LABEL: tf.train.Feature(bytes_list=tf.train.BytesList(value=[CLASSES[i % 2].encode()])),
                       NUMBER: tf.train.Feature(float_list=tf.train.FloatList(value=[size])),
                       CATEGORY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[shade.encode()])),
                       TARGET: tf.train.Feature(float_list=tf.train.FloatList(value=[weight]))}
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    return images


def _stages(family: str) -> list[dict]:
    schema, transform = f"{family}_schema", f"{family}_transform"
    return [{"name": schema, "component": "schema", "inputs": {"statistics": "statistics.statistics"}},
            {"name": transform, "component": "transform",
             "inputs": {"examples": "ingest.examples", "schema": f"{schema}.schema"}},
            {"name": family, "component": "train", "inputs": {"examples": "ingest.examples", "schema": f"{schema}.schema",
                                                              "transform_graph": f"{transform}.transform_graph"}},
            {"name": f"{family}_evaluate", "component": "evaluate",
             "inputs": {"examples": "ingest.examples", "schema": f"{schema}.schema", "model": f"{family}.model"}}]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """family -> {model, model_run, evaluation, metrics, evaluate_metrics, transform_graph}; plus "images"."""
    from kfx.pipeline.config import load_config
    from kfx.pipeline.runner import run_pipeline

    tmp = tmp_path_factory.mktemp("cluster_families")
    images = _write(tmp / "rows.tfrecord")
    train = {"epochs": 2, "batch_size": 16, "early_stopping_patience": 0, "warmup_requests": 1, "verbose": 0}
    cfg = {"name": "cluster_families", "root": str(tmp / "runs"), "max_parallel": 1,
           "beam_args": ["--direct_running_mode=in_memory"],
           "stages": [{"name": "ingest", "component": "ingest"},
                      {"name": "statistics", "component": "statistics", "inputs": {"examples": "ingest.examples"}},
                      *_stages("som"), *_stages("rbf")],
           "ingest": {"format": "tfrecord", "label": LABEL, "image_columns": [IMAGE],
                      "inputs": [{"pattern": str(tmp / "rows.tfrecord"), "splits": {"train": 3, "eval": 1}}]},
           "som_schema": {"label": LABEL}, "rbf_schema": {"label": TARGET},
           "som_transform": {"task": "clustering", "exclude": [NUMBER, CATEGORY, TARGET],
                             "features": {IMAGE: {"kinds": ["encoded_image"], "image_shape": [SIZE, SIZE, 1]}}},
           "rbf_transform": {"task": "regression", "exclude": [IMAGE, LABEL]},
           "som": {**train, "model": "som", "hyperparameters": {"epochs": 2}},
           "rbf": {**train, "model": "rbf", "hyperparameters": {"epochs": 2}},
           "som_evaluate": {"split": "eval", "gate": {"value": [{"metric": "purity", "min": 0.0}]}},
           "rbf_evaluate": {"split": "eval"}}
    path = tmp / "cluster_families.yaml"
    path.write_text(yaml.safe_dump(cfg))
    summary = run_pipeline(load_config(path))
    assert summary["status"] == "succeeded", summary["error"]
    stages = summary["components"]
    out = {"images": images}
    for family in FAMILIES:
        out[family] = {**stages[family]["outputs"], "metrics": stages[family]["metrics"],
                       "evaluate_metrics": stages[f"{family}_evaluate"]["metrics"],
                       "evaluation": stages[f"{family}_evaluate"]["outputs"]["evaluation"],
                       "predictions": stages[f"{family}_evaluate"]["outputs"]["predictions"],
                       "transform_graph": stages[f"{family}_transform"]["outputs"]["transform_graph"]}
    return out


def _inputs(trained, family: str) -> dict:
    if family == "som":
        return {IMAGE: np.array(trained["images"][:4], dtype=object)}
    return {NUMBER: np.array([-1.5, 0.0, 0.5, 1.9], np.float32),
            CATEGORY: np.array(["dark", "light", "dark", "purple"], dtype=object)}


@pytest.fixture(scope="module")
def exported(trained) -> dict:
    """family -> (its export loaded in this process, serving_default's outputs on `_inputs`)."""
    import tensorflow as tf

    out = {}
    for family in FAMILIES:
        loaded = tf.saved_model.load(trained[family]["model"])
        outputs = loaded.signatures["serving_default"](**{k: tf.constant(v) for k, v in _inputs(trained, family).items()})
        out[family] = loaded, {k: v.numpy() for k, v in outputs.items()}
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_trained_from_its_space_defaults(trained, family):
    from kfx import models
    from kfx.models import space

    run = trained[family]
    hp = json.loads(Path(run["model_run"], "hyperparameters.json").read_text())
    assert hp == {"family": family, "values": {**space.defaults(models.get(family).SPACE), "epochs": 2},
                  "source": "defaults+overrides"}
    assert run["metrics"]["epochs_run"] == 2
    history = json.loads(Path(run["model_run"], "history.json").read_text())
    assert len(history["loss"]) == 2 and np.all(np.isfinite(history["val_loss"]))


def test_reloaded_som_answers_the_nearest_prototype_of_its_transformed_input(trained, exported):
    import tensorflow as tf

    loaded, out = exported["som"]
    protos = next(v.numpy() for v in loaded.variables if v.name.split(":")[0].endswith("prototypes"))
    rows, cols = protos.shape[:2]
    assert (rows, cols) == (8, 8)  # the space's defaults
    examples = [tf.train.Example(features=tf.train.Features(feature={
        IMAGE: tf.train.Feature(bytes_list=tf.train.BytesList(value=[png]))})).SerializeToString()
        for png in trained["images"][:4]]
    x = loaded.signatures["transform_features"](examples=tf.constant(examples))[IMAGE].numpy().reshape(4, -1)
    d = np.sqrt(((x[:, None, :] - protos.reshape(rows * cols, -1)[None]) ** 2).sum(-1))
    np.testing.assert_array_equal(out["cluster"], d.argmin(axis=1))
    np.testing.assert_array_equal(out["row"] * cols + out["col"], out["cluster"])
    np.testing.assert_allclose(out["distance"], d.min(axis=1), rtol=1e-4, atol=1e-4)
    assert out["cluster"].dtype == np.int64 and out["distance"].dtype == np.float32


def test_evaluate_reports_purity_silhouette_and_the_map(trained):
    import pandas as pd

    from kfx.components.evaluation.clusters import purity

    run = trained["som"]
    ev = json.loads(Path(run["evaluation"], "evaluation.json").read_text())
    predictions = pd.read_csv(Path(run["predictions"], "predictions.csv.gz"), dtype={LABEL: str})
    o = ev["overall"]
    assert o["purity"] == pytest.approx(purity(predictions[LABEL].to_numpy(object), predictions["prediction"].to_numpy()))
    assert run["evaluate_metrics"]["purity"] == pytest.approx(o["purity"], abs=1e-4)
    assert -1 <= o["silhouette"] <= 1 and o["clusters_used"] == len(set(predictions["prediction"]))
    assert len(o["map"]["units"]) == 64 and sum(u["count"] for u in o["map"]["units"]) == ev["rows"]
    report = Path(run["evaluation"], "report.html").read_text()
    assert report.count("<img src='data:image/png;base64,") >= 64 and "8 x 8 units" in report


def test_evaluate_reports_the_linear_reference_beside_the_rbf_network(trained, exported):
    m = trained["rbf"]["evaluate_metrics"]
    assert m["linear_rmse"] > 0 and m["rmse_vs_linear"] == pytest.approx(m["rmse"] / m["linear_rmse"], rel=1e-3)
    assert np.all(np.isfinite(exported["rbf"][1]["predictions"]))


@pytest.fixture(scope="module")
def server(trained, tmp_path_factory):
    """ONE `python -m kfx.serving` (gRPC + REST) serving both exports as model <family>, version 1."""
    from tests.pipeline.raw_data import serving

    with serving(tmp_path_factory.mktemp("cluster_server"), {f: trained[f]["model"] for f in FAMILIES}) as server_:
        yield server_


@pytest.mark.parametrize("family", FAMILIES)
def test_served_family_answers_grpc_and_rest_with_the_in_process_outputs(trained, exported, server, family):
    process, client = server
    want = exported[family][1]
    inputs = _inputs(trained, family)
    signature = client.metadata(family)["serving_default"]
    assert set(signature.inputs) == set(inputs)
    assert set(signature.outputs) == ({"cluster", "row", "col", "distance"} if family == "som" else {"predictions"})

    got = client.predict(family, inputs)
    for key, value in want.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-5, atol=1e-5)

    rest = [{k: ({"b64": base64.b64encode(v[i]).decode()} if isinstance(v[i], bytes) else
                 v[i].item() if isinstance(v[i], np.generic) else v[i]) for k, v in inputs.items()} for i in range(4)]
    status, body = rest_predict(process.rest_port, family, {"instances": rest})
    assert status == 200
    # TF Serving's row format: a dict per row, or the value itself when there is one output.
    rows = body["predictions"] if len(want) > 1 else [{k: v for k in want} for v in body["predictions"]]
    for key, value in want.items():
        np.testing.assert_allclose([row[key] for row in rows], value, rtol=1e-5, atol=1e-5)
