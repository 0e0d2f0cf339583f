"""Free text end to end on tiny data: pipeline/configs/reviews_lstm.yaml's stages and settings over
a few hundred synthetic reviews (in the layout of the `reviews` built-in) run ingest -> transform
-> train (lstm, 2 epochs) -> export; the exported model takes raw strings and returns class
probabilities, in-process and through a real `python -m kfx.serving` (Predict and Classify).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.pipeline.raw_data import BAD, GOOD, write_reviews
from tests.pipeline.raw_data import TEXT_CLASSES as CLASSES

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(summary, exported model directory) of reviews_lstm.yaml's graph up to train on tiny data."""
    from kfx.pipeline.config import load_config
    from kfx.pipeline.runner import run_pipeline

    tmp = tmp_path_factory.mktemp("text")
    data = tmp / "reviews.csv"
    write_reviews(data)
    cfg = yaml.safe_load((REPO / "pipeline" / "configs" / "reviews_lstm.yaml").read_text())
    cfg["root"] = str(tmp / "runs")
    cfg["max_parallel"] = 1
    cfg["ingest"] = {"format": "csv", "inputs": [{"pattern": str(data), "splits": {"train": 8, "eval": 2}}],
                     "label": "category", "label_values": CLASSES, "text_columns": ["text"]}
    cfg["transform"]["features"]["text"]["sequence_length"] = 12
    cfg["train"].update(epochs=2, batch_size=16, verbose=0,
                        hyperparameters={**cfg["train"]["hyperparameters"], "learning_rate": 0.01})
    path = tmp / "reviews_tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    summary = run_pipeline(load_config(path), to_stage="train")
    assert summary["status"] == "succeeded", summary["error"]
    return summary, Path(summary["components"]["train"]["outputs"]["model"])


def test_text_feature_gets_the_text_kind_and_its_sequence_length(trained):
    import json

    summary, _ = trained
    c = summary["components"]
    assert c["ingest"]["metrics"]["dropped_labels"] == {"plot": 1} and c["ingest"]["metrics"]["rows"] == 400
    graph = json.loads(Path(c["transform"]["outputs"]["transform_graph"], "transform.json").read_text())
    (text,) = graph["transforms"]  # movie_name and has_plot_and_reviews are excluded by the config
    assert (text["feature"], text["kind"], text["state"]["sequence_length"]) == ("text", "text", 12)
    assert set(GOOD + BAD) <= set(text["state"]["vocabulary"])  # tokens, lower-cased, punctuation gone
    assert graph["outputs"]["text"] == {"kind": "sequence", "length": 12,
                                        "cardinality": len(text["state"]["vocabulary"]) + 2}
    assert graph["raw_features"]["text"]["dtype"] == "string" and c["train"]["metrics"]["model"] == "lstm"


def test_exported_model_takes_raw_strings_and_returns_probabilities(trained):
    import tensorflow as tf

    _, model_dir = trained
    serve = tf.saved_model.load(str(model_dir)).signatures["serving_default"]
    assert {k: (v.dtype, v.shape.as_list()) for k, v in serve.structured_input_signature[1].items()} == \
        {"text": (tf.string, [None])}
    texts = ["The story is wonderful and moving.", "Dull, tedious and awful.", ""]
    out = serve(text=tf.constant(texts))
    p = out["probabilities"].numpy()
    assert p.shape == (3, 2) and np.allclose(p.sum(axis=1), 1.0, atol=1e-5) and (p >= 0).all()
    assert [c.decode() for c in out["classes"].numpy()[:2]] == ["fresh", "rotten"]  # the signal was learned
    assert p[0, 0] > 0.8 and p[1, 1] > 0.8


def test_served_model_answers_predict_and_classify_with_raw_text(trained, tmp_path):
    import tensorflow as tf
    from tensorflow.core.example import example_pb2

    from kfx.serving.client import ServingClient
    from tests.serving.conftest import ServerProcess

    _, model_dir = trained
    base = tmp_path / "reviews"
    shutil.copytree(model_dir, base / "1")
    texts = ["A brilliant, delightful film.", "Clumsy and boring."]
    want = tf.saved_model.load(str(model_dir)).signatures["serving_default"](text=tf.constant(texts))
    server = ServerProcess(tmp_path, "--model_name=reviews", f"--model_base_path={base}")
    try:
        server.wait_serving()
        with ServingClient(server.target, timeout=30) as client:
            out = client.predict("reviews", {"text": np.array(texts, dtype=object)})
            assert np.allclose(out["probabilities"], want["probabilities"].numpy(), atol=1e-5)
            assert [c.decode() for c in out["classes"]] == ["fresh", "rotten"]
            examples = [example_pb2.Example(features=tf.train.Features(feature={
                "text": tf.train.Feature(bytes_list=tf.train.BytesList(value=[t.encode()]))})) for t in texts]
            result = client.classify("reviews", examples, signature="classify")
            assert [[label for label, _ in row] for row in result] == [CLASSES, CLASSES]
            scores = np.array([[s for _, s in row] for row in result])
            assert np.allclose(scores, want["probabilities"].numpy(), atol=1e-5)
    finally:
        server.stop()


def test_tune_searches_the_lstm_space_on_text(trained):
    """KerasTuner over the text pipeline's token ids: two lstm trials, best values in the family's space."""
    import json

    from kfx import models
    from kfx.components.training.tune import TRIALS_FILE, load_hyperparameters
    from kfx.models.space import check
    from kfx.pipeline.config import load_config
    from kfx.pipeline.runner import run_pipeline

    tmp = Path(trained[0]["root"]).parent
    cfg = yaml.safe_load((tmp / "reviews_tiny.yaml").read_text())
    cfg["stages"].append({"name": "tune", "component": "tune", "inputs": {
        "examples": "ingest.examples", "schema": "schema.schema", "transform_graph": "transform.transform_graph"}})
    cfg["tune"] = {"max_trials": 2, "epochs": 1, "batch_size": 32, "max_seconds": 300}
    (tmp / "reviews_tune.yaml").write_text(yaml.safe_dump(cfg))
    res = run_pipeline(load_config(tmp / "reviews_tune.yaml"), only=["tune"])["components"]["tune"]
    assert res["status"] == "succeeded", res.get("error")
    best = load_hyperparameters(res["outputs"]["hyperparameters"])
    trials = json.loads(Path(res["outputs"]["hyperparameters"], TRIALS_FILE).read_text())
    space = models.get("lstm").SPACE
    assert (best["family"], best["source"], best["objective"]["name"]) == ("lstm", "tuned", "val_loss")
    assert set(best["values"]) == {p.name for p in space} and check(space, best["values"]) == []
    scores = [t["score"] for t in trials]
    assert len(trials) == 2 and all(np.isfinite(scores)) and best["score"] == min(scores)
