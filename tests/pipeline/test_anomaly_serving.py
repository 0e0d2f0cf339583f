"""The anomaly task's families through the real pipeline and the real server, on tiny raw images.

ONE pipeline run: ingest -> statistics -> schema -> transform (task anomaly, horizontal stripes
normal, vertical ones anomalies), one train stage per family (autoencoder conv,
denoising_autoencoder dense with masking noise, vae), 2 epochs from the space's defaults, and
evaluate of the vae. Then: training sees the normal rows only; the threshold each export carries
leaves the configured share of eval normal rows above it; each export reloaded gives the Keras model's score and flags
score > threshold; ONE `python -m kfx.serving` serves all three and answers gRPC and REST Predict
with the in-process outputs (GetModelMetadata: `score`, `anomaly`, and the vae's `decode`);
evaluate draws 64 decoded images and reports the anomaly metrics.
"""
from __future__ import annotations

import base64
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.pipeline.raw_data import (DATA_STAGES, IMAGE, LABEL, SIZE, pngs, rest_predict, serving, train_stage,
                                     write_images)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROWS, NORMAL, FPR = 60, "h", 0.2
# stage (= family) -> hyperparameters over its space's defaults: conv (auto for one image) and dense
MODELS = {"autoencoder": {}, "denoising_autoencoder": {"architecture": "dense", "noise": "masking"}, "vae": {}}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    """{stage: outputs and metrics} of the one pipeline run, plus the raw images sent to the models."""
    from kfx.pipeline.config import load_config
    from kfx.pipeline.runner import run_pipeline

    tmp = tmp_path_factory.mktemp("anomaly")
    images = write_images(tmp / "images.tfrecord", ROWS)
    evaluate = {"name": "evaluate", "component": "evaluate", "inputs": {
        "examples": "ingest.examples", "schema": "schema.schema", "model": "vae.model"}}
    cfg = {"name": "anomaly", "root": str(tmp / "runs"), "max_parallel": 2,
           "beam_args": ["--direct_running_mode=in_memory"],
           "stages": [*DATA_STAGES, *(train_stage(s) for s in MODELS), evaluate],
           "ingest": {"format": "tfrecord", "label": LABEL, "image_columns": [IMAGE], "max_rejected_fraction": 0.05,
                      "inputs": [{"pattern": str(tmp / "images.tfrecord"), "splits": {"train": 3, "eval": 1}}]},
           "schema": {"label": LABEL},
           "transform": {"task": "anomaly", "anomaly": {"normal_values": [NORMAL], "false_positive_rate": FPR},
                         "features": {IMAGE: {"kinds": ["encoded_image"], "image_shape": [SIZE, SIZE, 1],
                                              "image_scale": [0, 255]}}},
           "evaluate": {"split": "eval", "gate": {"value": [{"metric": "anomaly_auc", "min": 0.0}]}},
           **{s: {"model": s, "hyperparameters": hp, "epochs": 2, "batch_size": 8,
                  "early_stopping_patience": 0, "warmup_requests": 1, "verbose": 0} for s, hp in MODELS.items()}}
    path = tmp / "anomaly.yaml"
    path.write_text(yaml.safe_dump(cfg))
    summary = run_pipeline(load_config(path))
    assert summary["status"] == "succeeded", summary["error"]
    out = {name: {**c["outputs"], "metrics": c["metrics"]} for name, c in summary["components"].items()}
    out["images"] = images[:4]
    return out


@pytest.fixture(scope="module")
def exported(run) -> dict[str, tuple]:
    """stage -> (its export loaded here, serving_default's outputs on 4 PNG images)."""
    import tensorflow as tf

    inputs = tf.constant(np.array(pngs(run["images"]), dtype=object))
    out = {}
    for stage in MODELS:
        loaded = tf.saved_model.load(run[stage]["model"])
        out[stage] = loaded, {k: v.numpy() for k, v in loaded.signatures["serving_default"](image=inputs).items()}
    return out


@pytest.fixture(scope="module")
def server(run, tmp_path_factory):
    """One `python -m kfx.serving` (gRPC + REST) serving every export as model <stage>, version 1."""
    with serving(tmp_path_factory.mktemp("anomaly_server"), {s: run[s]["model"] for s in MODELS}) as server_:
        yield server_


def _spec(run) -> dict:
    from kfx.models.preprocess import load_transform

    return load_transform(run["transform"]["transform_graph"])


def test_training_reads_the_normal_rows_only(run):
    from kfx.components.training.data import dataset, raw_dataset
    from kfx.models.preprocess import make_preprocessor

    spec = _spec(run)
    examples = run["ingest"]["examples"]
    labels = np.concatenate([y.numpy() for _, y in raw_dataset(examples, "train", spec, 64)])
    normal = int(np.sum(labels == NORMAL.encode()))
    assert 0 < normal < len(labels) and spec["task"]["normal_rows"] == normal
    rows = sum(int(y.shape[0]) for _, y in dataset(examples, "train", spec, make_preprocessor(spec), 16))
    assert rows == normal


@pytest.mark.parametrize("stage", MODELS)
def test_each_model_trained_from_its_space_with_the_threshold_at_the_eval_fpr(run, exported, stage):
    from kfx import models
    from kfx.components.training.train import split_scores
    from kfx.models import space, tasks

    hp = json.loads(Path(run[stage]["model_run"], "hyperparameters.json").read_text())
    assert hp["values"] == {**space.defaults(models.get(stage).SPACE), **MODELS[stage]}
    metrics = run[stage]["metrics"]
    assert metrics["model"] == stage and metrics["epochs_run"] == 2 and 0 <= metrics["eval_anomaly_auc"] <= 1

    task = tasks.of(tasks.load(run[stage]["model"]))
    serve = exported[stage][0].signatures["serving_default"]
    labels, scores = split_scores({"serving_default": (lambda features: serve(**features), None)},
                                  run["ingest"]["examples"], "eval", _spec(run))
    normal = scores[labels == NORMAL.encode()]
    assert np.sum(normal > task.threshold) == math.floor(FPR * len(normal))
    assert task.info["eval_false_positive_rate"] == pytest.approx(np.mean(normal > task.threshold))


@pytest.mark.parametrize("stage", MODELS)
def test_reloaded_export_gives_the_keras_model_score_and_flags_above_the_threshold(run, exported, stage):
    import tensorflow as tf

    from kfx import models
    from kfx.models import tasks
    from kfx.models.preprocess import make_preprocessor

    spec = _spec(run)
    loaded, outputs = exported[stage]
    assert sorted(outputs) == ["anomaly", "score"] and outputs["score"].shape == (4,)
    threshold = tasks.of(tasks.load(run[stage]["model"])).threshold
    assert outputs["anomaly"].tolist() == (outputs["score"] > threshold).astype(int).tolist()

    hp = json.loads(Path(run[stage]["model_run"], "hyperparameters.json").read_text())["values"]
    model = models.get(stage).build(spec["outputs"], spec["task"], hp)
    weights = loaded.variables[len(loaded.variables) - len(model.variables):]
    assert [tuple(w.shape) for w in weights] == [tuple(v.shape) for v in model.variables]
    for variable, value in zip(model.variables, weights):
        variable.assign(value)
    raw = {IMAGE: tf.constant(np.array(pngs(run["images"]), dtype=object))}
    np.testing.assert_allclose(outputs["score"], np.asarray(model(make_preprocessor(spec)(raw), training=False)),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("stage", MODELS)
def test_served_model_answers_grpc_and_rest_with_the_in_process_outputs(run, exported, server, stage):
    process, client = server
    want = exported[stage][1]
    signatures = client.metadata(stage)
    assert sorted(signatures["serving_default"].outputs) == ["anomaly", "score"]
    assert ("decode" in signatures) == (stage == "vae")

    encoded = pngs(run["images"])
    got = client.predict(stage, {IMAGE: np.array(encoded, dtype=object)})
    np.testing.assert_allclose(got["score"], want["score"], rtol=1e-5)
    assert list(got["anomaly"]) == list(want["anomaly"])
    status, body = rest_predict(process.rest_port, stage,
                                {"instances": [{IMAGE: {"b64": base64.b64encode(b).decode()}} for b in encoded]})
    assert status == 200
    np.testing.assert_allclose([r["score"] for r in body["predictions"]], want["score"], rtol=1e-5)
    assert [r["anomaly"] for r in body["predictions"]] == want["anomaly"].tolist()


def test_vae_decodes_noise_to_images_served_and_drawn_in_the_report(run, exported, server):
    import tensorflow as tf

    process, client = server
    decode = exported["vae"][0].signatures["decode"]
    noise = np.random.default_rng(1).standard_normal((3, decode.structured_input_signature[1]["noise"].shape[-1]))
    want = decode(noise=tf.constant(noise, tf.float32))["images"].numpy()
    assert want.shape == (3, SIZE, SIZE, 1)
    got = client.predict("vae", {"noise": noise.astype(np.float32)}, signature="decode")
    np.testing.assert_allclose(got["images"], want, rtol=1e-4, atol=1e-3)

    evaluation = Path(run["evaluate"]["evaluation"])
    ev = json.loads((evaluation / "evaluation.json").read_text())
    rows = ev["decoded_samples"]["rows"]
    assert len(rows) == 64 and {r["mime"] for r in rows} == {"image/png"}
    assert tf.io.decode_png(base64.b64decode(rows[0]["data"])).shape == (SIZE, SIZE, 1)
    assert ev["task"] == "anomaly" and 0 <= ev["overall"]["anomaly_auc"] <= 1
    assert run["evaluate"]["metrics"]["blessed"] is True
    report = (evaluation / "report.html").read_text()
    assert "Decoded samples" in report and report.count("alt='decoded sample") == 64
