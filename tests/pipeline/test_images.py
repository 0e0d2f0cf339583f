"""Images end to end on tiny data made here: encoded PNG/JPEG bytes in a TFRecord -> ingest
(an undecodable blob quarantined with its reason) -> transform (encoded_image kind) -> train
(cnn, 1 epoch) -> export, then the exported model through a real `python -m kfx.serving`:
Predict with raw image bytes over gRPC and REST ({"b64": ...}), INVALID_ARGUMENT for bytes that
are not an image while the server keeps serving.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.pipeline.raw_data import (CLASSES, DATA_STAGES, GARBAGE, IMAGE, LABEL, SIZE, pngs, rest_predict,
                                     train_stage, write_images)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

STAGES = [*DATA_STAGES, train_stage("train")]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from kfx.pipeline.config import load_config
    from kfx.pipeline.runner import run_pipeline

    tmp = tmp_path_factory.mktemp("images")
    images = write_images(tmp / "images.tfrecord")
    cfg = {
        "name": "images", "root": str(tmp / "runs"), "max_parallel": 1,
        "beam_args": ["--direct_running_mode=in_memory"],
        "stages": STAGES,
        "ingest": {"format": "tfrecord", "label": LABEL, "image_columns": [IMAGE], "max_rejected_fraction": 0.05,
                   "inputs": [{"pattern": str(tmp / "images.tfrecord"),
                               "splits": {"train": 8, "eval": 1, "test": 1}}]},
        "schema": {"label": LABEL},
        "transform": {"task": "multiclass",
                      "features": {IMAGE: {"kinds": ["encoded_image"], "image_shape": [SIZE, SIZE, 1]}}},
        "train": {"model": "cnn", "epochs": 1, "batch_size": 16, "early_stopping_patience": 0,
                  "warmup_requests": 2, "verbose": 0, "hyperparameters": {"blocks": 1, "dense_units": 0}},
    }
    path = tmp / "images.yaml"
    path.write_text(yaml.safe_dump(cfg))
    summary = run_pipeline(load_config(path))
    assert summary["status"] == "succeeded", summary["error"]
    outputs = {name: c["outputs"] for name, c in summary["components"].items()}
    return {"summary": summary, "outputs": outputs, "images": images, "tmp": tmp}


def test_undecodable_image_is_quarantined_with_its_record_and_reason(trained):
    metrics = trained["summary"]["components"]["ingest"]["metrics"]
    assert (metrics["read"], metrics["rows"], metrics["rejected"]) == (61, 60, 1)
    rejected = [json.loads(line) for line in
                Path(trained["outputs"]["ingest"]["rejected"], "rejected.jsonl").read_text().splitlines()]
    assert len(rejected) == 1
    assert rejected[0]["line"] == 61 and rejected[0]["input"].endswith("images.tfrecord")
    assert "column 'image': undecodable image" in rejected[0]["reason"]


def test_transform_scales_decoded_pixels_by_train_mean_and_std(trained):
    import tensorflow as tf

    from kfx.models.preprocess import load_transform, make_preprocessor

    spec = load_transform(trained["outputs"]["transform"]["transform_graph"])
    assert spec["raw_features"][IMAGE] == {"dtype": "string", "shape": [], "default": ""}
    assert spec["outputs"][IMAGE] == {"kind": "image", "shape": [SIZE, SIZE, 1]}
    state = spec["transforms"][0]["state"]
    assert 40 < state["mean"] < 160 and 40 < state["std"] < 160  # stripes of 200 on 0: mean ~100
    images = trained["images"][:4]
    got = make_preprocessor(spec)({IMAGE: tf.constant(pngs(images))})[IMAGE].numpy()
    want = (np.stack(images).astype(np.float32) - state["mean"]) / state["std"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_export_takes_encoded_images_and_matches_the_in_process_model(trained):
    import tensorflow as tf

    from kfx.models.preprocess import load_transform, make_preprocessor

    model_dir = trained["outputs"]["train"]["model"]
    loaded = tf.saved_model.load(model_dir)
    serve = loaded.signatures["serving_default"]
    assert serve.structured_input_signature[1][IMAGE].dtype == tf.string
    images = trained["images"][:6]
    encoded = tf.constant(pngs(images[:4]) + [tf.io.encode_jpeg(i, quality=100).numpy() for i in images[4:]])
    exported = serve(image=encoded)["probabilities"].numpy()
    assert exported.shape == (6, 2) and np.allclose(exported.sum(axis=1), 1.0, atol=1e-5)
    # In process: the transform's preprocessing layer rebuilt from transform.json gives the
    # model inputs the export computes, and the Classify path (tf.Example) the same probabilities.
    spec = load_transform(trained["outputs"]["transform"]["transform_graph"])
    features = make_preprocessor(spec)({IMAGE: encoded})[IMAGE].numpy()
    examples = tf.constant([tf.train.Example(features=tf.train.Features(feature={IMAGE: tf.train.Feature(
        bytes_list=tf.train.BytesList(value=[p]))})).SerializeToString() for p in encoded.numpy()])
    exported_features = loaded.signatures["transform_features"](examples=examples)[IMAGE].numpy()
    np.testing.assert_allclose(exported_features, features, rtol=1e-5, atol=1e-5)
    scores = loaded.signatures["classify"](inputs=examples)["scores"].numpy()
    np.testing.assert_allclose(scores, exported, atol=1e-6)
    with pytest.raises(tf.errors.InvalidArgumentError):
        serve(image=tf.constant([GARBAGE]))


def test_served_model_predicts_from_png_bytes_over_grpc_and_rest(trained, tmp_path):
    import grpc
    import tensorflow as tf

    from kfx.serving.client import ServingClient
    from tests.serving.conftest import ServerProcess

    base = tmp_path / "models" / "images"
    shutil.copytree(trained["outputs"]["train"]["model"], base / "1")
    encoded = pngs(trained["images"][:3])
    want = tf.saved_model.load(str(base / "1")).signatures["serving_default"](
        image=tf.constant(encoded))["probabilities"].numpy()

    server = ServerProcess(tmp_path, "--model_name=images", f"--model_base_path={base}", rest=True)
    try:
        server.wait_serving()
        with ServingClient(server.target, timeout=30, retries=0) as client:
            out = client.predict("images", {IMAGE: np.array(encoded, dtype=object)})
            np.testing.assert_allclose(out["probabilities"], want, atol=1e-5)
            assert [c.decode() for c in out["classes"]] == [CLASSES[i] for i in want.argmax(axis=1)]
            with pytest.raises(grpc.RpcError) as err:
                client.predict("images", {IMAGE: np.array([GARBAGE], dtype=object)})
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            again = client.predict("images", {IMAGE: np.array(encoded[:1], dtype=object)})
            np.testing.assert_allclose(again["probabilities"], want[:1], atol=1e-5)

        def post(body: dict):
            return rest_predict(server.rest_port, "images", body)

        status, body = post({"instances": [{IMAGE: {"b64": base64.b64encode(p).decode()}} for p in encoded]})
        assert status == 200
        got = np.array([row["probabilities"] for row in body["predictions"]])
        np.testing.assert_allclose(got, want, atol=1e-5)
        with pytest.raises(urllib.error.HTTPError) as http_err:
            post({"instances": [{IMAGE: {"b64": base64.b64encode(GARBAGE).decode()}}]})
        assert http_err.value.code == 400
        assert "error" in json.loads(http_err.value.read())
        status, body = post({"instances": [{IMAGE: {"b64": base64.b64encode(encoded[0]).decode()}}]})
        assert status == 200 and np.allclose(body["predictions"][0]["probabilities"], want[0], atol=1e-5)
    finally:
        server.stop()
