"""The gan family and the generation task through the real pipeline and the real server, on tiny data.

ONE pipeline run on 48 noisy 8x8 stripe images (class h or v, tests/pipeline/raw_data.py):
ingest -> statistics -> schema -> transform (task generation) -> train (gan, its space's defaults,
2 epochs of 3 steps) -> evaluate (samples scored by a hand-written classifier SavedModel: P(h)
from how much the rows' means vary more than the columns'). Then the export reloaded in process
and ONE `python -m kfx.serving` answer serving_default and generate_by_name alike, the same
noise always giving the same image, and an unknown class gets INVALID_ARGUMENT.
"""
from __future__ import annotations

import gzip
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.pipeline.raw_data import CLASSES, DATA_STAGES, IMAGE, LABEL, SIZE, train_stage, write_images

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROWS = 48
LATENT = 64  # the space's default latent_dim
SERVED = "canary"  # the served model's name: infra_validate's canary checks query it by this name


def write_classifier(base: Path) -> Path:
    """A pushed-classifier layout <base>/1: serving_default takes PNG bytes `image` [N] and gives
    `probabilities` [N, 2] over classes h, v; kfx's task description names the classes."""
    import tensorflow as tf

    from kfx.models import tasks

    class Stripes(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image")])
        def serve(self, image):
            px = tf.map_fn(lambda b: tf.cast(tf.io.decode_png(b, channels=1), tf.float32)[:, :, 0], image,
                           fn_output_signature=tf.TensorSpec([None, None], tf.float32))
            rows = tf.math.reduce_std(tf.reduce_mean(px, axis=2), axis=1)
            cols = tf.math.reduce_std(tf.reduce_mean(px, axis=1), axis=1)
            p = tf.sigmoid((rows - cols) / 10.0)
            return {"probabilities": tf.stack([p, 1.0 - p], axis=1)}

    module = Stripes()
    path = base / "1"
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    tasks.save(str(path), {"type": "multiclass", "label": LABEL, "label_dtype": "string", "vocabulary": CLASSES})
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    """{stage: result} of the successful run, plus the tmp dir."""
    from kfx.pipeline.config import load_config
    from kfx.pipeline.runner import run_pipeline

    tmp = tmp_path_factory.mktemp("gan")
    write_images(tmp / "images.tfrecord", ROWS)
    write_classifier(tmp / "classifier")
    cfg = {"name": "gan_tiny", "root": str(tmp / "runs"), "max_parallel": 1,
           "beam_args": ["--direct_running_mode=in_memory"],
           "stages": [*DATA_STAGES, train_stage("train"),
                      {"name": "evaluate", "component": "evaluate",
                       "inputs": {"examples": "ingest.examples", "schema": "schema.schema", "model": "train.model"}}],
           "ingest": {"format": "tfrecord", "label": LABEL, "image_columns": [IMAGE], "max_rejected_fraction": 0.05,
                      "inputs": [{"pattern": str(tmp / "images.tfrecord"), "splits": {"train": 3, "eval": 1}}]},
           "schema": {"label": LABEL},
           "transform": {"task": "generation", "features": {
               IMAGE: {"kinds": ["encoded_image"], "image_shape": [SIZE, SIZE, 1], "image_scale": [127.5, 127.5]}}},
           "train": {"model": "gan", "epochs": 2, "batch_size": 16, "early_stopping_patience": 0,
                     "early_stopping_monitor": "val_g_loss", "warmup_requests": 2, "verbose": 0},
           "evaluate": {"split": "eval", "generation": {"classifier": "classifier", "samples": 40, "shown_per_class": 3},
                        "gate": {"value": [{"metric": "classes_covered", "min": 0}]}}}
    path = tmp / "gan_tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))  # the classifier path is relative: resolved beside the config
    summary = run_pipeline(load_config(path))
    assert summary["status"] == "succeeded", summary["error"]
    return {**summary["components"], "tmp": tmp}


@pytest.fixture(scope="module")
def served(run):
    """(loaded export, ServingClient) with the export served as model SERVED, version 1."""
    import tensorflow as tf

    from kfx.serving.client import ServingClient
    from tests.serving.conftest import ServerProcess, write_config

    tmp = run["tmp"]
    shutil.copytree(run["train"]["outputs"]["model"], tmp / "models" / SERVED / "1")
    config = write_config(str(tmp / "models.config"), [(SERVED, str(tmp / "models" / SERVED), "")])
    process = ServerProcess(tmp, f"--model_config_file={config}")
    try:
        process.wait_serving()
        with ServingClient(process.target, timeout=30, retries=0) as client:
            client.wait_until_available(SERVED, timeout=120)
            yield tf.saved_model.load(run["train"]["outputs"]["model"]), client
    finally:
        process.stop()


def _noise(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, LATENT)).astype(np.float32)


def test_gan_trains_from_its_space_defaults_and_train_skips_split_scoring(run):
    from kfx import models
    from kfx.models import space

    train = run["train"]
    hp = json.loads(Path(train["outputs"]["model_run"], "hyperparameters.json").read_text())
    assert hp == {"family": "gan", "values": space.defaults(models.get("gan").SPACE), "source": "defaults"}
    metrics = train["metrics"]
    assert (metrics["model"], metrics["epochs_run"]) == ("gan", 2)
    assert not any(k.startswith("eval_") for k in metrics)  # no row scoring for a generation task
    history = json.loads(Path(train["outputs"]["model_run"], "history.json").read_text())
    assert len(history["d_loss"]) == 2 and all(np.isfinite(history["val_g_loss"]))
    transform = json.loads(Path(run["transform"]["outputs"]["transform_graph"], "transform.json").read_text())
    assert transform["task"]["vocabulary"] == CLASSES
    assert transform["task"]["image"] == {"feature": IMAGE, "output": IMAGE, "shape": [SIZE, SIZE, 1],
                                          "mean": 127.5, "std": 127.5}


def test_export_maps_noise_and_class_to_deterministic_pixels_and_png(run):
    import tensorflow as tf

    model = run["train"]["outputs"]["model"]
    fn = tf.saved_model.load(model).signatures["serving_default"]
    assert {k: (v.dtype, v.shape.as_list()) for k, v in fn.structured_input_signature[1].items()} == \
        {"noise": (tf.float32, [None, LATENT]), "class_id": (tf.int64, [None])}
    noise, ids = _noise(4), np.array([0, 1, 0, 1], np.int64)
    out = {k: v.numpy() for k, v in fn(noise=tf.constant(noise), class_id=tf.constant(ids)).items()}
    again = fn(noise=tf.constant(noise), class_id=tf.constant(ids))["images"].numpy()
    assert out["images"].shape == (4, SIZE, SIZE, 1) and out["images"].min() >= 0 and out["images"].max() <= 255
    np.testing.assert_array_equal(out["images"], again)
    assert [c.decode() for c in out["classes"]] == ["h", "v", "h", "v"]
    decoded = np.stack([tf.io.decode_png(b).numpy() for b in out["png"]])
    np.testing.assert_array_equal(decoded, np.round(out["images"]).astype(np.uint8))
    # Same noise, other class: another image (the class conditions the generator).
    assert not np.array_equal(out["images"][0], out["images"][1])
    # Warmup requests for TF Serving carry the generator's inputs, not the raw features.
    from tensorflow_serving.apis import prediction_log_pb2

    logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in
            tf.data.TFRecordDataset(f"{model}/assets.extra/tf_serving_warmup_requests")]
    assert len(logs) == 2 and sorted(logs[0].predict_log.request.inputs) == ["class_id", "noise"]


def test_served_gan_answers_like_the_reloaded_export_by_id_and_by_name(served):
    import grpc
    import tensorflow as tf
    from tensorflow.core.framework import types_pb2

    loaded, client = served
    signatures = client.metadata(SERVED)
    assert {k: (v.dtype, [d.size for d in v.tensor_shape.dim]) for k, v in signatures["serving_default"].inputs.items()} \
        == {"noise": (types_pb2.DT_FLOAT, [-1, LATENT]), "class_id": (types_pb2.DT_INT64, [-1])}
    assert sorted(signatures["serving_default"].outputs) == ["classes", "images", "png"]
    assert sorted(signatures["generate_by_name"].inputs) == ["class_name", "noise"]

    noise, ids = _noise(3, seed=7), np.array([1, 0, 1], np.int64)
    want = loaded.signatures["serving_default"](noise=tf.constant(noise), class_id=tf.constant(ids))
    got = client.predict(SERVED, {"noise": noise, "class_id": ids})
    np.testing.assert_allclose(got["images"], want["images"].numpy(), atol=1e-4)
    assert list(got["png"]) == list(want["png"].numpy())
    by_name = client.predict(SERVED, {"noise": noise, "class_name": np.array([b"v", b"h", b"v"], dtype=object)},
                             signature="generate_by_name")
    np.testing.assert_allclose(by_name["images"], want["images"].numpy(), atol=1e-4)

    for inputs, signature in (({"noise": noise[:1], "class_id": np.array([2], np.int64)}, ""),
                              ({"noise": noise[:1], "class_name": np.array([b"x"], dtype=object)}, "generate_by_name")):
        with pytest.raises(grpc.RpcError) as err:
            client.predict(SERVED, inputs, signature=signature)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    np.testing.assert_allclose(client.predict(SERVED, {"noise": noise, "class_id": ids})["images"],
                               want["images"].numpy(), atol=1e-4)


def test_infra_validate_canaries_use_the_tasks_inputs_and_binary_outputs_compare(run, served):
    from kfx.components.deploy.infra_validate import check_signature, signature_methods
    from kfx.models import tasks
    from kfx.pipeline.artifacts import read_columns
    from kfx.pipeline.artifacts.scoring import read_split
    from kfx.pipeline.config_evaluation import InfraValidateConfig

    loaded, client = served
    model, examples = run["train"]["outputs"]["model"], run["ingest"]["outputs"]["examples"]
    data = read_split(examples, "eval", read_columns(examples)["columns"])
    task, cfg = tasks.of(tasks.load(model)), InfraValidateConfig()
    methods = signature_methods(model)
    assert sorted(methods) == ["generate_by_name", "serving_default"]
    for sig, method in methods.items():
        check = check_signature(client, loaded, sig, method, data, cfg, task)
        assert check["passed"], check["problems"]  # PNG bytes from the server equal the in-process ones
    # Without the task, the canaries would be the examples' columns, which the generator does not take.
    check = check_signature(client, loaded, "serving_default", methods["serving_default"], data, cfg)
    assert not check["passed"] and "the model's inputs ['class_id', 'noise'] are not columns" in check["problems"][0]


def test_evaluate_scores_generated_samples_with_the_classifier(run):
    import pandas as pd

    ev_dir = Path(run["evaluate"]["outputs"]["evaluation"])
    ev = json.loads((ev_dir / "evaluation.json").read_text())
    overall = ev["overall"]
    with gzip.open(Path(run["evaluate"]["outputs"]["predictions"], "predictions.csv.gz")) as f:
        rows = pd.read_csv(io.BytesIO(f.read()), dtype={"requested": str, "prediction": str})
    # 40 samples, classes requested in turn; the metrics are those of the predictions written.
    assert len(rows) == 40 and list(rows["requested"][:4]) == ["h", "v", "h", "v"]
    shares = [float(np.mean(rows["prediction"] == c)) for c in CLASSES]
    assert overall["sample_confidence"] == pytest.approx(rows["score"].mean(), abs=1e-6)
    assert overall["min_class_share"] == pytest.approx(min(shares)) and overall["max_class_share"] == \
        pytest.approx(max(shares))
    assert overall["classes_covered"] == sum(s > 0 for s in shares)
    assert overall["class_agreement"] == pytest.approx(np.mean(rows["prediction"] == rows["requested"]))
    metrics = run["evaluate"]["metrics"]
    assert metrics["blessed"] and metrics["sample_confidence"] == round(overall["sample_confidence"], 4)
    assert ev["generation"]["classifier"].endswith("classifier/1")
    report = (ev_dir / "report.html").read_text()
    assert "Generated samples" in report and report.count("data:image/png;base64,") == 6  # 3 per class


def test_evaluate_without_a_classifier_fails_naming_the_setting(run):
    from kfx.components.evaluation import generation
    from kfx.models import tasks
    from kfx.pipeline.component import ComponentError, Context
    from kfx.pipeline.config_evaluation import EvaluateConfig

    model = run["train"]["outputs"]["model"]
    ctx = Context(pipeline=None, config=EvaluateConfig(), inputs={"model": model}, outputs={}, run_id="t",
                  execution_id=0)
    with pytest.raises(ComponentError, match="set evaluate.generation.classifier"):
        generation.run(ctx, model, tasks.of(tasks.load(model)))
