"""pipeline/configs/penguins.yaml end to end (multiclass, 344 rows, few epochs): blessed and
pushed, then the pushed model answers Classify and Predict through a real `python -m kfx.serving`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[2]
SPECIES = ["Adelie", "Chinstrap", "Gentoo"]


@pytest.fixture(scope="module")
def pushed(tmp_path_factory):
    from kfx.pipeline.config import load_config
    from kfx.pipeline.runner import run_pipeline

    tmp = tmp_path_factory.mktemp("penguins")
    cfg = load_config(REPO / "pipeline" / "configs" / "penguins.yaml",
                      [f"root={tmp / 'runs'}", "train.epochs=40", "max_parallel=1"])
    summary = run_pipeline(cfg)
    assert summary["status"] == "succeeded", summary["error"]
    return summary


def test_penguins_is_blessed_pushed_and_fair_by_sex_is_measured(pushed):
    assert pushed["blessed"] is True and pushed["pushed"]["model_name"] == "penguins"
    components = pushed["components"]
    assert components["ingest"]["metrics"]["rows"] == 344
    analyzers = json.loads(Path(components["transform"]["outputs"]["transform_graph"], "analyzers.json").read_text())
    # Missing values are defaulted by transform and counted (2 rows lack every measurement, 11 lack sex).
    assert analyzers["features"]["bill_length_mm"]["missing"] >= 1 and analyzers["features"]["sex"]["missing"] >= 1
    assert sorted(analyzers["label"]["class_counts"]) == SPECIES
    ev = json.loads(Path(components["evaluate"]["outputs"]["evaluation"], "evaluation.json").read_text())
    assert ev["task"] == "multiclass" and ev["overall"]["accuracy"] >= 0.95
    sex = ev["fairness"]["sex"]
    assert set(sex["groups"]) == {"female", "male"} and sum(g["count"] for g in sex["groups"].values()) + \
        sex["missing"] == ev["rows"]
    assert sex["gaps"]["accuracy_difference"]["lower"] <= sex["gaps"]["accuracy_difference"]["value"]


def test_pushed_penguins_model_answers_classify_and_predict(pushed, tmp_path):
    import tensorflow as tf
    from tensorflow.core.example import example_pb2

    from kfx.serving.client import ServingClient
    from tests.serving.conftest import ServerProcess

    version_dir = Path(pushed["pushed"]["path"])
    examples = pushed["components"]["ingest"]["outputs"]["examples"]
    files = sorted(tf.io.gfile.glob(f"{examples}/Split-test/*.gz"))
    rows = [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP").take(8)]
    want = tf.saved_model.load(str(version_dir)).signatures["classify"](inputs=tf.constant(rows))

    server = ServerProcess(tmp_path, "--model_name=penguins", f"--model_base_path={version_dir.parent}")
    try:
        server.wait_serving()
        with ServingClient(server.target, timeout=30) as client:
            # Classify names its signature: the default one (serving_default) takes raw features.
            result = client.classify("penguins", [example_pb2.Example.FromString(r) for r in rows],
                                     signature="classify")
            assert len(result) == len(rows)
            assert [[label for label, _ in row] for row in result] == [SPECIES] * len(rows)
            scores = np.array([[s for _, s in row] for row in result])
            assert np.allclose(scores, want["scores"].numpy(), atol=1e-5)
            assert np.allclose(scores.sum(axis=1), 1.0, atol=1e-5)
            parsed = [example_pb2.Example.FromString(r).features.feature for r in rows[:2]]
            inputs = {"island": np.array([f["island"].bytes_list.value[0] for f in parsed], dtype=object),
                      "sex": np.array([(f["sex"].bytes_list.value or [b""])[0] for f in parsed], dtype=object)}
            for name in ("bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"):
                inputs[name] = np.array([(f[name].float_list.value or [40.0])[0] for f in parsed], np.float32)
            out = client.predict("penguins", inputs)
            assert out["probabilities"].shape == (2, 3)
            assert [c.decode() for c in out["classes"]] == [SPECIES[i] for i in out["probabilities"].argmax(axis=1)]
    finally:
        server.stop()
