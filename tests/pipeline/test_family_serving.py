"""Every image and text family through the real pipeline and the real server, on tiny raw data.

Per modality, ONE pipeline run: ingest -> statistics -> schema -> transform, then one train
stage per family (cnn, resnet on encoded PNG/JPEG images; rnn, lstm, gru, bilstm, cnn1d,
transformer on raw review strings), each 1 epoch from its space's defaults, each writing the
raw-modality SavedModel. Then: each export reloaded in-process gives the outputs of the Keras
model (the family rebuilt with the exported weights, behind the transform's preprocessing
layer) and the eval metrics train computed with the model it had just trained; ONE
`python -m kfx.serving` serves all eight from a models.config and answers Predict over gRPC and
REST (images as {"b64": ...}, text as strings) with the in-process outputs; GetModelMetadata
shows one string input; undecodable image bytes get INVALID_ARGUMENT (HTTP 400 with an `error`
body) and the server keeps serving.
"""
from __future__ import annotations

import base64
import json
import os
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.pipeline.raw_data import (CLASSES, DATA_STAGES, GARBAGE, IMAGE, LABEL, SIZE, TEXT, TEXT_CLASSES, TEXT_LABEL,
                                     pngs, rest_predict, serving, train_stage, write_images, write_reviews)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[2]
IMAGE_FAMILIES = ["cnn", "resnet"]
TEXT_FAMILIES = ["rnn", "lstm", "gru", "bilstm", "cnn1d", "transformer"]
FAMILIES = IMAGE_FAMILIES + TEXT_FAMILIES
ROWS = 48
# Texts sent to the text models: in-vocabulary, out-of-vocabulary only, and empty (all padding).
TEXTS = ["A brilliant, delightful film.", "Clumsy and boring.", "Zyzzyva qwerty!", ""]


def _train(family: str) -> dict:
    """The train section of `family`'s stage: its space's defaults, one epoch, a small batch."""
    return {"model": family, "epochs": 1, "batch_size": 16, "early_stopping_patience": 0, "warmup_requests": 1,
            "verbose": 0}


def _run(tmp: Path, name: str, sections: dict, families: list[str]) -> dict:
    """Run the data stages plus one train stage per family; {stage: outputs} of the successful run."""
    from kfx.pipeline.config import load_config
    from kfx.pipeline.runner import run_pipeline

    cfg = {"name": name, "root": str(tmp / "runs"), "max_parallel": 1,
           "beam_args": ["--direct_running_mode=in_memory"],
           "stages": [*DATA_STAGES, *(train_stage(f) for f in families)],
           **sections, **{f: _train(f) for f in families}}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    summary = run_pipeline(load_config(path))
    assert summary["status"] == "succeeded", summary["error"]
    return summary["components"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, dict]:
    """family -> {model, model_run, transform_graph, examples, metrics, inputs, rest}: one run per modality.

    `inputs` are the raw Predict inputs sent to the family; `rest` the same rows as REST instances.
    """
    tmp = tmp_path_factory.mktemp("family_images")
    images = write_images(tmp / "images.tfrecord", ROWS)
    image_stages = _run(tmp, "family_images", {
        "ingest": {"format": "tfrecord", "label": LABEL, "image_columns": [IMAGE], "max_rejected_fraction": 0.05,
                   "inputs": [{"pattern": str(tmp / "images.tfrecord"), "splits": {"train": 3, "eval": 1}}]},
        "schema": {"label": LABEL},
        "transform": {"task": "multiclass",
                      "features": {IMAGE: {"kinds": ["encoded_image"], "image_shape": [SIZE, SIZE, 1]}}},
    }, IMAGE_FAMILIES)
    encoded = pngs(images[:3]) + [_jpeg(images[3])]

    tmp = tmp_path_factory.mktemp("family_text")
    write_reviews(tmp / "reviews.csv", ROWS)
    reviews = yaml.safe_load((REPO / "pipeline" / "configs" / "reviews_lstm.yaml").read_text())
    reviews["transform"]["features"][TEXT]["sequence_length"] = 8
    text_stages = _run(tmp, "family_text", {
        "ingest": {"format": "csv", "label": TEXT_LABEL, "label_values": TEXT_CLASSES, "text_columns": [TEXT],
                   "inputs": [{"pattern": str(tmp / "reviews.csv"), "splits": {"train": 3, "eval": 1}}]},
        "schema": reviews["schema"], "transform": reviews["transform"],
    }, TEXT_FAMILIES)

    out = {}
    for families, stages, inputs, rest in (
            (IMAGE_FAMILIES, image_stages, {IMAGE: encoded}, [{IMAGE: {"b64": base64.b64encode(b).decode()}}
                                                              for b in encoded]),
            (TEXT_FAMILIES, text_stages, {TEXT: TEXTS}, [{TEXT: t} for t in TEXTS])):
        for family in families:
            out[family] = {**stages[family]["outputs"], "metrics": stages[family]["metrics"],
                           "transform_graph": stages["transform"]["outputs"]["transform_graph"],
                           "examples": stages["ingest"]["outputs"]["examples"],
                           "inputs": {k: np.array(v, dtype=object) for k, v in inputs.items()}, "rest": rest}
    return out


def _jpeg(image) -> bytes:
    import tensorflow as tf

    return tf.io.encode_jpeg(image, quality=100).numpy()


@pytest.fixture(scope="module")
def exported(trained) -> dict[str, tuple]:
    """family -> (its export loaded in this process, serving_default's outputs on the family's raw inputs)."""
    import tensorflow as tf

    out = {}
    for name, family in trained.items():
        loaded = tf.saved_model.load(family["model"])
        outputs = loaded.signatures["serving_default"](**{k: tf.constant(v) for k, v in family["inputs"].items()})
        out[name] = loaded, {k: v.numpy() for k, v in outputs.items()}
    return out


@pytest.fixture(scope="module")
def server(trained, tmp_path_factory):
    """One `python -m kfx.serving` (gRPC + REST) serving every family's export as model <family>, version 1."""
    with serving(tmp_path_factory.mktemp("family_server"), {n: f["model"] for n, f in trained.items()}) as server_:
        yield server_


@pytest.mark.parametrize("name", FAMILIES)
def test_each_family_trained_one_epoch_from_its_space_defaults(trained, name):
    from kfx import models
    from kfx.models import space

    family = trained[name]
    hp = json.loads(Path(family["model_run"], "hyperparameters.json").read_text())
    assert hp == {"family": name, "values": space.defaults(models.get(name).SPACE), "source": "defaults"}
    metrics = family["metrics"]
    assert (metrics["model"], metrics["epochs_run"]) == (name, 1)
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0 and metrics["eval_rows"] > 0


@pytest.mark.parametrize("name", FAMILIES)
def test_reloaded_export_gives_the_keras_model_outputs_from_raw_inputs(trained, exported, name):
    import tensorflow as tf

    from kfx import models
    from kfx.components.training.train import score_split
    from kfx.models import tasks
    from kfx.models.preprocess import load_transform, make_preprocessor

    family = trained[name]
    spec = load_transform(family["transform_graph"])
    loaded, outputs = exported[name]
    serve = loaded.signatures["serving_default"]
    assert {k: (v.dtype, v.shape.as_list()) for k, v in serve.structured_input_signature[1].items()} == \
        {k: (tf.string, [None]) for k in family["inputs"]}
    classes = CLASSES if name in IMAGE_FAMILIES else TEXT_CLASSES
    p = outputs["probabilities"]
    assert p.shape == (4, 2) and np.all(np.isfinite(p)) and np.allclose(p.sum(axis=1), 1.0, atol=1e-5)
    assert [c.decode() for c in outputs["classes"]] == [classes[i] for i in p.argmax(axis=1)]

    # The Keras model: the family built from the trained hyperparameters, holding the exported
    # weights (the archive tracks the preprocessing layer's variables, then the model's).
    hp = json.loads(Path(family["model_run"], "hyperparameters.json").read_text())["values"]
    model = models.get(name).build(spec["outputs"], spec["task"], hp)
    weights = loaded.variables[len(loaded.variables) - len(model.variables):]
    assert [tuple(w.shape) for w in weights] == [tuple(v.shape) for v in model.variables]
    for variable, value in zip(model.variables, weights):
        variable.assign(value)
    raw = {k: tf.constant(v) for k, v in family["inputs"].items()}
    keras_out = tasks.of(spec["task"]).serving_outputs(model(make_preprocessor(spec)(raw), training=False))
    np.testing.assert_allclose(p, keras_out["probabilities"].numpy(), atol=1e-5)

    # train scored eval with the model it had just trained: the reloaded export scores the same.
    again = score_split({"serving_default": (lambda features: serve(**features), None)},
                        family["examples"], "eval", spec)
    assert again == pytest.approx({k[len("eval_"):]: v for k, v in family["metrics"].items()
                                   if k.startswith("eval_")}, abs=1e-6)


@pytest.mark.parametrize("name", FAMILIES)
def test_served_family_answers_grpc_and_rest_with_the_in_process_outputs(trained, exported, server, name):
    from tensorflow.core.framework import types_pb2

    process, client = server
    family = trained[name]
    want = exported[name][1]

    signature = client.metadata(name)["serving_default"]
    assert {k: (v.dtype, [d.size for d in v.tensor_shape.dim]) for k, v in signature.inputs.items()} == \
        {k: (types_pb2.DT_STRING, [-1]) for k in family["inputs"]}

    got = client.predict(name, family["inputs"])
    np.testing.assert_allclose(got["probabilities"], want["probabilities"], atol=1e-5)
    assert list(got["classes"]) == list(want["classes"])

    status, body = rest_predict(process.rest_port, name, {"instances": family["rest"]})
    assert status == 200
    np.testing.assert_allclose([row["probabilities"] for row in body["predictions"]], want["probabilities"], atol=1e-5)
    assert [row["classes"] for row in body["predictions"]] == [c.decode() for c in want["classes"]]


@pytest.mark.parametrize("name", IMAGE_FAMILIES)
def test_undecodable_image_bytes_get_invalid_argument_and_the_server_keeps_serving(trained, exported, server,
                                                                                    name):
    import grpc

    process, client = server
    family = trained[name]
    want = exported[name][1]["probabilities"]
    with pytest.raises(grpc.RpcError) as err:
        client.predict(name, {IMAGE: np.array([family["inputs"][IMAGE][0], GARBAGE], dtype=object)})
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(urllib.error.HTTPError) as http_err:
        rest_predict(process.rest_port, name, {"instances": [{IMAGE: {"b64": base64.b64encode(GARBAGE).decode()}}]})
    assert http_err.value.code == 400
    body = json.loads(http_err.value.read())
    assert list(body) == ["error"] and body["error"] == err.value.details()

    np.testing.assert_allclose(client.predict(name, family["inputs"])["probabilities"], want, atol=1e-5)
    status, body = rest_predict(process.rest_port, name, {"instances": family["rest"][:1]})
    assert status == 200
    np.testing.assert_allclose(body["predictions"][0]["probabilities"], want[0], atol=1e-5)
