"""An image model through tune, train with augmentation and evaluate, on tiny stripe images made
here (tests/pipeline/test_images.py's): tune searches the resnet's space on encoded images and
train takes its values; the training-only augmentation is absent from the export (deterministic
outputs, equal to the Keras model without augmentation with the same weights); the HTML report
shows the test images with true and predicted labels, misclassified first, beside the per-class
precision/recall and the confusion matrix.
"""
from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.pipeline.test_images import CLASSES, IMAGE, LABEL, SIZE, STAGES, write_images

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

AUGMENTATION = {"translation": 0.1, "rotation": 0.05, "zoom": 0.1, "flip": "horizontal", "contrast": 0.1}
TRAIN_INPUTS = {"examples": "ingest.examples", "schema": "schema.schema", "transform_graph": "transform.transform_graph"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from kfx.pipeline.config import load_config
    from kfx.pipeline.runner import run_pipeline

    tmp = tmp_path_factory.mktemp("image_models")
    images = write_images(tmp / "images.tfrecord", n=120)
    train = dict(STAGES[-1], inputs={**TRAIN_INPUTS, "hyperparameters": "tune.hyperparameters"})
    cfg = {
        "name": "image_models", "root": str(tmp / "runs"), "max_parallel": 1,
        "beam_args": ["--direct_running_mode=in_memory"],
        "stages": [*STAGES[:-1], {"name": "tune", "component": "tune", "inputs": TRAIN_INPUTS}, train,
                   {"name": "evaluate", "component": "evaluate",
                    "inputs": {"examples": "ingest.examples", "schema": "schema.schema", "model": "train.model"}}],
        "ingest": {"format": "tfrecord", "label": LABEL, "image_columns": [IMAGE], "max_rejected_fraction": 0.05,
                   "inputs": [{"pattern": str(tmp / "images.tfrecord"), "splits": {"train": 6, "eval": 2, "test": 2}}]},
        "schema": {"label": LABEL},
        "transform": {"task": "multiclass",
                      "features": {IMAGE: {"kinds": ["encoded_image"], "image_shape": [SIZE, SIZE, 1]}}},
        "tune": {"max_trials": 2, "epochs": 1, "batch_size": 16, "max_seconds": 300, "objective": "val_accuracy"},
        "train": {"model": "resnet", "epochs": 1, "batch_size": 16, "early_stopping_patience": 0,
                  "warmup_requests": 0, "verbose": 0, "augmentation": AUGMENTATION},
        "evaluate": {"split": "test"},
    }
    path = tmp / "image_models.yaml"
    path.write_text(yaml.safe_dump(cfg))
    summary = run_pipeline(load_config(path))
    assert summary["status"] == "succeeded", summary["error"]
    outputs = {name: c["outputs"] for name, c in summary["components"].items()}
    return {"summary": summary, "outputs": outputs, "images": images}


def test_tune_searches_the_image_family_s_space_and_train_uses_the_best_values(run):
    from kfx import models
    from kfx.components.training.tune import BEST_FILE, TRIALS_FILE
    from kfx.models.space import check

    uri = run["outputs"]["tune"]["hyperparameters"]
    best = json.loads(Path(uri, BEST_FILE).read_text())
    trials = json.loads(Path(uri, TRIALS_FILE).read_text())
    space = models.get("resnet").SPACE
    assert best["family"] == "resnet" and best["source"] == "tuned"
    assert set(best["values"]) == {p.name for p in space} and check(space, best["values"]) == []
    assert len(trials) == 2 and best["score"] == max(t["score"] for t in trials if t["score"] is not None)
    assert 0.0 <= best["score"] <= 1.0
    run_dir = run["outputs"]["train"]["model_run"]
    used = json.loads(Path(run_dir, "hyperparameters.json").read_text())
    assert used["source"] == "tuned" and used["values"] == best["values"]


def test_training_batches_are_augmented_on_the_fly(run):
    from kfx.components.training.data import dataset
    from kfx.models.augment import augmenter
    from kfx.models.preprocess import load_transform, make_preprocessor
    from kfx.pipeline.config_modeling import Augmentation

    spec = load_transform(run["outputs"]["transform"]["transform_graph"])
    examples, pre = run["outputs"]["ingest"]["examples"], make_preprocessor(spec)
    augment = augmenter(Augmentation(**AUGMENTATION), spec["outputs"])
    plain = next(iter(dataset(examples, "train", spec, pre, 8)))
    augmented = dataset(examples, "train", spec, pre, 8, augment=augment)
    first, second = (next(iter(augmented)) for _ in range(2))  # two epochs over the cached blocks
    np.testing.assert_array_equal(first[1], plain[1])  # same rows, same labels
    for batch in (first, second):
        assert batch[0][IMAGE].shape == plain[0][IMAGE].shape
        assert np.abs(batch[0][IMAGE].numpy() - plain[0][IMAGE].numpy()).mean() > 0.01
    assert not np.allclose(first[0][IMAGE], second[0][IMAGE])


def test_export_has_no_augmentation_and_equals_the_keras_model_with_its_weights(run):
    import tensorflow as tf

    from kfx import models
    from kfx.models.preprocess import load_transform, make_preprocessor

    model_dir = run["outputs"]["train"]["model"]
    loaded = tf.saved_model.load(model_dir)
    serve = loaded.signatures["serving_default"]
    pngs = tf.constant([tf.io.encode_png(i).numpy() for i in run["images"][:12]])
    first, second = (serve(image=pngs)["probabilities"].numpy() for _ in range(2))
    np.testing.assert_array_equal(first, second)
    # No augmentation op anywhere in the SavedModel (RandomTranslation/Rotation/Zoom are image
    # projective transforms; every augmentation draws random numbers).
    text = Path(model_dir, "saved_model.pb").read_bytes()
    for op in ("ImageProjectiveTransform", "RandomUniform", "augment_"):
        assert op.encode() not in text, op
    # The same weights in the family's Keras model, built without any augmentation.
    spec = load_transform(run["outputs"]["transform"]["transform_graph"])
    hp = json.loads(Path(run["outputs"]["train"]["model_run"], "hyperparameters.json").read_text())["values"]
    model = models.get("resnet").build(spec["outputs"], spec["task"], hp)
    saved = {v.name.split(":")[0]: v.numpy() for v in loaded.variables}
    assert [v.path for v in model.weights if v.path not in saved] == []
    for v in model.weights:
        v.assign(saved[v.path])
    want = model(make_preprocessor(spec)({IMAGE: pngs}), training=False).numpy()
    np.testing.assert_allclose(first, want, atol=1e-5)


def test_report_shows_sample_images_with_labels_misclassified_first(run):
    out = Path(run["outputs"]["evaluate"]["evaluation"])
    ev = json.loads((out / "evaluation.json").read_text())
    full = (out / "report.html").read_text()
    # The sample images section (the explanations section draws some of the same images again).
    start = full.index("<h2>Sample images</h2>")
    report = full[start:full.find("<h2>", start + 1)]
    rows = ev["rows"]
    samples = ev["samples"]
    assert samples["feature"] == IMAGE and len(samples["rows"]) == min(16, rows) > 0
    images = re.findall(r"<img src='data:image/(png|jpeg);base64,([A-Za-z0-9+/=]+)' alt='row (\d+): "
                        r"true (\w+), predicted (\w+)'>", report)
    assert len(images) == len(samples["rows"]) == report.count("<img ")
    for (_, data, row, label, predicted), sample in zip(images, samples["rows"]):
        raw = base64.b64decode(data)
        assert raw.startswith((b"\x89PNG", b"\xff\xd8\xff"))
        assert label in CLASSES and predicted in CLASSES
        assert (int(row), label, predicted) == (sample["row"], sample["label"], sample["prediction"])
        assert sample["correct"] == (label == predicted)
    correct = [s["correct"] for s in samples["rows"]]
    assert correct == sorted(correct), "misclassified images must come first"
    assert min(samples["misclassified"], len(correct)) == correct.count(False)
    assert report.count("class='sample wrong'") == correct.count(False)
    # Classification sections for a multiclass image model.
    assert "accuracy" in ev["overall"] and set(ev["overall"]["per_class"]) == set(CLASSES)
    assert "<h3>Per class</h3>" in full and "Confusion matrix" in full and 'data-plot="per-class"' in full
