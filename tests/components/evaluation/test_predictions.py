"""evaluate's predictions artifact, recomputed independently: the exported SavedModel's
serving_default called on the raw test rows read from the raw CSV (not through kfx's readers)
gives the same rows and the same scores and predictions.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.models import tiny_pipeline

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
FEATURES = [c for c in tiny_pipeline.COLUMNS if c != "target"]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """The tiny pipeline run through evaluate, every feature a slice (so predictions carry them all)."""
    from kfx.pipeline.config import load_config
    from kfx.pipeline.runner import run_pipeline

    tmp = tmp_path_factory.mktemp("predictions")
    tiny_pipeline.write_csv(tmp / "train.csv", 400, seed=1)
    tiny_pipeline.write_csv(tmp / "test.csv", 150, seed=2)
    path = tiny_pipeline.write_config(tmp, tune={"max_trials": 0},
                                      evaluate={"slices": [[f] for f in FEATURES if f != "color"]})
    summary = run_pipeline(load_config(path), to_stage="evaluate")
    assert summary["status"] == "succeeded", summary["error"]
    return tmp, {k: v["outputs"] for k, v in summary["components"].items()}


def _key(row: dict) -> tuple:
    """A row's identity: raw values as the examples hold them (floats as float32)."""
    return (int(row["age"]), int(row["hours"]), float(np.float32(row["income_k"])), str(row["color"]),
            str(row["city"]), str(row["target"]))


def test_predictions_artifact_equals_the_exported_model_on_the_raw_test_rows(evaluated):
    import tensorflow as tf

    tmp, outputs = evaluated
    with open(tmp / "test.csv", newline="") as f:
        raw = list(csv.DictReader(f))
    fn = tf.saved_model.load(outputs["train"]["model"]).signatures["serving_default"]
    args = fn.structured_input_signature[1]
    assert sorted(spec.name for spec in args.values()) == sorted(FEATURES)
    feed = {arg: tf.constant(np.array([r[spec.name] for r in raw], dtype=object if spec.dtype == tf.string
                                      else spec.dtype.as_numpy_dtype), spec.dtype)
            for arg, spec in args.items()}
    probabilities = fn(**feed)["probabilities"].numpy()
    assert probabilities.shape == (len(raw), 2)  # classes sorted: neg, pos (the positive one)
    expected = {_key(r): p for r, p in zip(raw, probabilities[:, 1])}
    assert len(expected) == len(raw)  # the key tells the rows apart

    pred = pd.read_csv(Path(outputs["evaluate"]["predictions"], "predictions.csv.gz"), keep_default_na=False)
    assert len(pred) == len(raw)
    got = {_key(r): r for r in pred.to_dict("records")}
    assert set(got) == set(expected)  # the same rows, each once
    scores = np.array([got[k]["score"] for k in expected])
    wanted = np.array(list(expected.values()))
    np.testing.assert_allclose(scores, wanted, atol=1e-5, rtol=0)
    clear = np.abs(wanted - 0.5) > 1e-5  # the 0.5 decision is only checked where rounding cannot flip it
    labels = np.array([got[k]["prediction"] for k in expected])
    assert clear.sum() > 0.9 * len(raw)
    assert (labels[clear] == np.where(wanted[clear] >= 0.5, "pos", "neg")).all()
    assert np.ptp(wanted) > 0.05  # scores depend on the row: matching them row by row means something
