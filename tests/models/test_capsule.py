"""The capsule family (models/capsule.py) and evaluate's robustness, through the real pipeline.

Unit: the routing layer's coupling coefficients sum to 1 over the output capsules, its outputs
are squashed (lengths < 1), and bad settings are refused naming the value.
Pipeline (ONE run on 48 tiny 8x8 stripe images, tests/pipeline/raw_data.py): ingest -> ... ->
train the capsule network from its space's defaults (2 epochs) -> evaluate with robustness on
and a robustness gate no model can pass (FGSM at epsilon 1). Then: the export reloaded
in-process, the Keras side rebuilt by load_trainer and a real `python -m kfx.serving` all
answer the same probabilities; evaluate reports the robustness numbers, refuses the blessing
with the robustness reason and draws the robustness section in the report.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.pipeline.raw_data import CLASSES, DATA_STAGES, IMAGE, LABEL, SIZE, pngs, stripes, train_stage, write_images

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def test_coupling_coefficients_sum_to_one_over_output_capsules():
    import tensorflow as tf

    from kfx.models.capsule import routing_layer

    layer = routing_layer(3, 4, routings=3)
    inputs = tf.random.stateless_normal([2, 5, 6], seed=[1, 2])
    layer.build(inputs.shape)
    v, coupling = layer.route(inputs)
    assert v.shape == (2, 3, 4) and coupling.shape == (2, 5, 3)
    np.testing.assert_allclose(coupling.numpy().sum(axis=2), 1.0, atol=1e-6)
    # Routing moved the coefficients away from uniform, and the outputs are squashed below length 1.
    assert np.abs(coupling.numpy() - 1 / 3).max() > 1e-4
    assert np.all(np.linalg.norm(v.numpy(), axis=-1) < 1.0)
    assert layer.get_config()["routings"] == 3 and layer(inputs).shape == (2, 3, 4)


@pytest.mark.parametrize("kwargs, message", [({"capsules": 0}, "capsules must be an integer >= 1, got 0"),
                                             ({"routings": 1.5}, "routings must be an integer >= 1, got 1.5")])
def test_routing_layer_refuses_bad_settings(kwargs, message):
    from kfx.models.capsule import routing_layer

    with pytest.raises(ValueError, match=message):
        routing_layer(**{"capsules": 2, "dim": 4, "routings": 2, **kwargs})


def test_capsule_needs_an_image_feature():
    from kfx.models import capsule, space

    task = {"type": "multiclass", "label": "y", "label_dtype": "string", "vocabulary": ["a", "b"], "positive": None}
    with pytest.raises(ValueError, match="model 'capsule' needs at least one feature of kind 'image'"):
        capsule.build({"x": {"kind": "dense", "size": 1}}, task, space.defaults(capsule.SPACE))


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    """One pipeline run: data stages, the capsule network trained 2 epochs, evaluate with robustness."""
    from kfx.pipeline.config import load_config
    from kfx.pipeline.runner import run_pipeline

    tmp = tmp_path_factory.mktemp("capsule")
    write_images(tmp / "images.tfrecord", 48)
    evaluate = {"name": "evaluate", "component": "evaluate",
                "inputs": {"examples": "ingest.examples", "schema": "schema.schema", "model": "capsule.model"}}
    cfg = {"name": "capsule", "root": str(tmp / "runs"), "max_parallel": 1,
           "beam_args": ["--direct_running_mode=in_memory"], "stages": [*DATA_STAGES, train_stage("capsule"), evaluate],
           "ingest": {"format": "tfrecord", "label": LABEL, "image_columns": [IMAGE], "max_rejected_fraction": 0.05,
                      "inputs": [{"pattern": str(tmp / "images.tfrecord"), "splits": {"train": 3, "eval": 1}}]},
           "schema": {"label": LABEL},
           "transform": {"task": "multiclass", "features": {IMAGE: {"kinds": ["encoded_image"],
                                                                    "image_shape": [SIZE, SIZE, 1]}}},
           "capsule": {"model": "capsule", "epochs": 2, "batch_size": 16, "early_stopping_patience": 0,
                       "warmup_requests": 1, "verbose": 0},
           "evaluate": {"split": "eval", "fairness": {"bootstrap_resamples": 0},
                        "robustness": {"enabled": True, "epsilons": [0.05], "pgd_steps": 3, "examples": 2},
                        "gate": {"robustness": {"attack": "fgsm", "epsilon": 1.0, "min_accuracy": 0.99}}}}
    path = tmp / "capsule.yaml"
    path.write_text(yaml.safe_dump(cfg))
    summary = run_pipeline(load_config(path))
    assert summary["status"] == "succeeded", summary["error"]
    return summary["components"]


def test_capsule_export_reloaded_keras_side_and_server_answer_the_same(run, tmp_path):
    import shutil

    import tensorflow as tf

    from kfx import models
    from kfx.components.training.export import load_trainer
    from kfx.models import space, tasks
    from kfx.serving.client import ServingClient
    from tests.serving.conftest import ServerProcess

    model_dir = run["capsule"]["outputs"]["model"]
    hp = json.loads(Path(run["capsule"]["outputs"]["model_run"], "hyperparameters.json").read_text())
    assert hp["values"] == space.defaults(models.get("capsule").SPACE)
    rng = np.random.default_rng(5)
    images = np.array(pngs([stripes(kind, rng) for kind in ("h", "v", "h")]), dtype=object)

    served = tf.saved_model.load(model_dir).signatures["serving_default"](image=tf.constant(images))
    probs = served["probabilities"].numpy()
    assert probs.shape == (3, 2) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert [c.decode() for c in served["classes"].numpy()] == [CLASSES[i] for i in probs.argmax(axis=1)]

    preprocessor, model, spec = load_trainer(model_dir)
    keras_out = tasks.of(spec["task"]).serving_outputs(model(preprocessor({IMAGE: tf.constant(images)}),
                                                             training=False))
    np.testing.assert_allclose(keras_out["probabilities"].numpy(), probs, atol=1e-5)

    shutil.copytree(model_dir, tmp_path / "capsule" / "1")
    process = ServerProcess(tmp_path, "--model_name=capsule", f"--model_base_path={tmp_path / 'capsule'}")
    try:
        process.wait_serving()
        with ServingClient(process.target, timeout=30, retries=0) as client:
            client.wait_until_available("capsule", timeout=120)
            assert list(client.metadata("capsule")["serving_default"].inputs) == [IMAGE]
            got = client.predict("capsule", {IMAGE: images})
    finally:
        process.stop()
    np.testing.assert_allclose(got["probabilities"], probs, atol=1e-5)
    assert list(got["classes"]) == list(served["classes"].numpy())


def test_evaluate_measures_robustness_and_the_gate_refuses_the_blessing(run):
    outputs = run["evaluate"]["outputs"]
    ev = json.loads(Path(outputs["evaluation"], "evaluation.json").read_text())
    rob = ev["robustness"]
    assert rob["kind"] == "image" and rob["features"] == [IMAGE] and rob["pixel_range"] == {IMAGE: [0.0, 255.0]}
    assert rob["epsilons"] == [0.05, 1.0] and rob["rows"] == ev["rows"]
    fgsm, pgd = rob["accuracy"]["fgsm"], rob["accuracy"]["pgd"]
    assert pgd["0.05"] <= fgsm["0.05"] and fgsm["1"] < 0.99

    blessing = json.loads(Path(outputs["blessing"], "blessing.json").read_text())
    assert blessing["blessed"] is False
    assert blessing["reasons"] == [f"check failed: fgsm_accuracy@1 >= 0.99: got {fgsm['1']:.4f}"]
    metrics = run["evaluate"]["metrics"]
    assert metrics["fgsm_accuracy@1"] == round(fgsm["1"], 4) and metrics["pgd_accuracy@0.05"] == round(pgd["0.05"], 4)

    report = Path(outputs["evaluation"], "report.html").read_text()
    assert "<h2>Robustness</h2>" in report and 'data-plot="robustness"' in report
