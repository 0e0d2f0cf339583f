"""Multiclass and regression end to end: tiny data made here through ingest -> transform -> train
-> evaluate, the exported signatures called, the numbers checked against numpy, and the gate
failing a bad regression model with the failing check named.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

CLASSES = ["high", "low", "mid"]


def _write_csv(path: Path, rows: int, seed: int) -> None:
    """x (float), n (int), color, group (sensitive, sometimes missing), kind (3 classes), y (float)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, rows)
    color = rng.choice(["red", "blue"], rows)
    group = rng.choice(["a", "b", ""], rows, p=[0.48, 0.48, 0.04])
    kind = np.where(x + 0.2 * rng.normal(size=rows) < -0.5, "low",
                    np.where(x + 0.2 * rng.normal(size=rows) > 0.5, "high", "mid"))
    y = 100 + 30 * x + 20 * (color == "red") + rng.normal(0, 5, rows)
    pd.DataFrame({"x": x.round(4), "n": rng.integers(0, 5, rows), "color": color, "group": group,
                  "kind": kind, "y": y.round(2)}).to_csv(path, index=False)


def _pipeline(tmp: Path, label: str, drop: str, **sections) -> dict:
    """Run ingest..evaluate on the tiny CSV with `label` (and without the other label column)."""
    from kfx.pipeline.config import load_config
    from kfx.pipeline.runner import run_pipeline

    _write_csv(tmp / "data.csv", 600, seed=3)
    cfg = {"name": f"tiny_{label}", "root": str(tmp / "runs"), "beam_args": ["--direct_running_mode=in_memory"],
           "max_parallel": 1,
           "ingest": {"format": "csv", "label": label, "num_shards": 1,
                      "inputs": [{"pattern": str(tmp / "data.csv"), "splits": {"train": 6, "eval": 2, "test": 2}}]},
           "schema": {"label": label, "sensitive": ["group"]},
           "transform": {"exclude": [drop]},
           "tune": {"max_trials": 0},
           "train": {"epochs": 25, "batch_size": 32, "early_stopping_patience": 0, "warmup_requests": 2,
                     "verbose": 0},
           **sections}
    path = tmp / "pipeline.yaml"
    path.write_text(yaml.safe_dump(cfg))
    summary = run_pipeline(load_config(path), to_stage="evaluate")
    assert summary["status"] == "succeeded", summary["error"]
    return {k: v["outputs"] for k, v in summary["components"].items()}


def _read(uri: str, name: str) -> dict:
    return json.loads(Path(uri, name).read_text())


def _serialized(examples: str, split: str) -> list[bytes]:
    import tensorflow as tf

    files = sorted(tf.io.gfile.glob(f"{examples}/Split-{split}/*.gz"))
    return [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]


@pytest.fixture(scope="module")
def multiclass(tmp_path_factory):
    return _pipeline(tmp_path_factory.mktemp("multiclass"), "kind", "y", evaluate={
        "slices": [["group"]], "min_slice_size": 5,
        "gate": {"value": [{"metric": "accuracy", "min": 0.7}],
                 "fairness": [{"feature": "group", "metric": "accuracy_difference", "max": 0.3}]}})


@pytest.fixture(scope="module")
def regression(tmp_path_factory):
    return _pipeline(tmp_path_factory.mktemp("regression"), "y", "kind", evaluate={
        "slices": [["color"]], "min_slice_size": 5,
        "gate": {"value": [{"metric": "rmse_reduction", "min": 0.4}],
                 "fairness": [{"feature": "group", "metric": "mae_difference", "max": 10.0}]}})


def test_multiclass_transform_export_and_evaluate(multiclass):
    import tensorflow as tf

    task = _read(multiclass["transform"]["transform_graph"], "transform.json")["task"]
    assert task["type"] == "multiclass" and task["vocabulary"] == CLASSES
    examples = multiclass["ingest"]["examples"]
    model_uri = multiclass["train"]["model"]
    model = tf.saved_model.load(model_uri)
    assert set(model.signatures) == {"serving_default", "classify", "transform_features"}  # no regress
    rows = _serialized(examples, "test")
    out = model.signatures["classify"](inputs=tf.constant(rows))
    assert out["scores"].shape == (len(rows), 3) and np.allclose(out["scores"].numpy().sum(axis=1), 1.0, atol=1e-5)
    assert [c.decode() for c in out["classes"].numpy()[0]] == CLASSES

    ev = _read(multiclass["evaluate"]["evaluation"], "evaluation.json")
    blessing = _read(multiclass["evaluate"]["blessing"], "blessing.json")
    pred = pd.read_csv(Path(multiclass["evaluate"]["predictions"], "predictions.csv.gz"), keep_default_na=False)
    assert len(pred) == ev["rows"] == len(rows)
    # The decisions are the classify signature's top class, row for row.
    top = np.array(CLASSES)[out["scores"].numpy().argmax(axis=1)]
    assert (pred["prediction"].to_numpy() == top).all()
    correct = (pred["prediction"] == pred["kind"]).to_numpy()
    assert ev["overall"]["accuracy"] == pytest.approx(correct.mean()) and correct.mean() > 0.7
    fr = ev["fairness"]["group"]
    known = (pred["group"] != "").to_numpy()
    assert fr["missing"] == int((~known).sum())  # rows without a group are left out, and counted
    acc = {g: correct[(pred["group"] == g).to_numpy()].mean() for g in ("a", "b")}
    assert fr["groups"]["a"]["accuracy"] == pytest.approx(acc["a"])
    assert fr["gaps"]["accuracy_difference"]["value"] == pytest.approx(abs(acc["a"] - acc["b"]))
    for cls in CLASSES:
        recall = {g: correct[((pred["group"] == g) & (pred["kind"] == cls)).to_numpy()].mean() for g in ("a", "b")}
        assert fr["gaps"][f"recall_difference[{cls}]"]["value"] == pytest.approx(abs(recall["a"] - recall["b"]))
    for gap in fr["gaps"].values():
        assert gap["lower"] <= gap["value"] <= gap["upper"]
    assert {c["name"] for c in blessing["checks"]} == {
        "accuracy >= 0.7", "group: accuracy_difference (point estimate) <= 0.3"}
    report = Path(multiclass["evaluate"]["evaluation"], "report.html").read_text()
    assert 'data-plot="per-class"' in report and "Confusion matrix" in report and 'data-plot="fairness-group"' in report


def test_regression_transform_export_and_evaluate(regression):
    import tensorflow as tf

    spec = _read(regression["transform"]["transform_graph"], "transform.json")
    task = spec["task"]
    assert task["type"] == "regression" and 90 < task["mean"] < 115 and task["std"] > 20
    model = tf.saved_model.load(regression["train"]["model"])
    assert set(model.signatures) == {"serving_default", "regress", "transform_features"}  # no classify
    rows = _serialized(regression["ingest"]["examples"], "test")
    outputs = model.signatures["regress"](inputs=tf.constant(rows))["outputs"].numpy()
    assert outputs.shape == (len(rows),)

    ev = _read(regression["evaluate"]["evaluation"], "evaluation.json")
    pred = pd.read_csv(Path(regression["evaluate"]["predictions"], "predictions.csv.gz"), keep_default_na=False)
    assert np.allclose(pred["prediction"], outputs, rtol=1e-5)  # serving_default agrees with Regress
    err = (pred["prediction"] - pred["y"]).to_numpy()
    o = ev["overall"]
    assert o["rmse"] == pytest.approx(np.sqrt(np.mean(err ** 2)), rel=1e-5)
    base = np.sqrt(np.mean((pred["y"].to_numpy() - task["mean"]) ** 2))  # the train mean as a constant
    assert o["mean_predictor_rmse"] == pytest.approx(base, rel=1e-6)
    assert o["rmse_reduction"] == pytest.approx(1 - o["rmse"] / base, rel=1e-6) and o["rmse_reduction"] > 0.4
    fr = ev["fairness"]["group"]
    for g in ("a", "b"):
        e = err[(pred["group"] == g).to_numpy()]
        assert fr["groups"][g]["mae"] == pytest.approx(np.abs(e).mean(), rel=1e-5)
        assert fr["groups"][g]["mean_residual"] == pytest.approx(e.mean(), rel=1e-4, abs=1e-6)
    mae = [fr["groups"][g]["mae"] for g in ("a", "b")]
    gap = fr["gaps"]["mae_difference"]
    assert gap["value"] == pytest.approx(abs(mae[0] - mae[1])) and gap["lower"] <= gap["value"] <= gap["upper"]
    assert _read(regression["evaluate"]["blessing"], "blessing.json")["blessed"] is True


def test_gate_fails_a_mean_predictor_regression_model_naming_the_check(regression, tmp_path):
    """A model that always answers the train mean removes none of the mean predictor's error."""
    import keras

    from kfx.components.evaluation import evaluate as ev
    from kfx.components.training import export
    from kfx.models import get, space
    from kfx.models.preprocess import load_transform, make_preprocessor
    from kfx.pipeline.component import Context
    from kfx.pipeline.config import config_from_dict
    from kfx.pipeline.config_evaluation import EvaluateConfig

    spec = load_transform(regression["transform"]["transform_graph"])
    family = get("mlp")
    model = family.build(spec["outputs"], spec["task"], space.defaults(family.SPACE))
    unit = model.get_layer("output_standardized")
    unit.set_weights([np.zeros_like(w) for w in unit.get_weights()])
    bad = str(tmp_path / "bad_model")
    export.export(bad, make_preprocessor(spec), model, spec)
    keras.backend.clear_session()

    outputs = {k: str(tmp_path / k) for k in ev.SPEC.outputs}
    for uri in outputs.values():
        os.makedirs(uri)
    config = EvaluateConfig.model_validate({"gate": {"value": [{"metric": "rmse_reduction", "min": 0.4}]}})
    pipeline = config_from_dict({"name": "t", "ingest": {"format": "builtin", "name": "adult"}})
    ctx = Context(pipeline=pipeline, config=config, outputs=outputs, run_id="r", execution_id=1,
                  inputs={"examples": regression["ingest"]["examples"], "schema": regression["schema"]["schema"],
                          "model": bad, "baseline_model": regression["train"]["model"]})
    metrics = ev.run(ctx)
    assert metrics["blessed"] is False
    assert metrics["rmse_reduction"] == pytest.approx(0.0, abs=1e-4)
    blessing = _read(outputs["blessing"], "blessing.json")
    assert [c["name"] for c in blessing["checks"] if not c["passed"]] == ["rmse_reduction >= 0.4"]
    assert blessing["reasons"][0].startswith("check failed: rmse_reduction >= 0.4: got ")
    assert Path(outputs["blessing"], "NOT_BLESSED").exists()
    # The baseline (the trained model) is scored on the same rows and compared.
    assert _read(outputs["evaluation"], "evaluation.json")["baseline"]["comparison"]["rmse"]["change"] > 0

    shutil.rmtree(outputs["evaluation"])
    os.makedirs(outputs["evaluation"])
    wrong = EvaluateConfig.model_validate({"gate": {"value": [{"metric": "auc", "min": 0.8}]}})
    from kfx.pipeline.component import ComponentError

    with pytest.raises(ComponentError, match="evaluate.gate.value: metric 'auc' does not apply to a regression"):
        ev.run(Context(pipeline=pipeline, config=wrong, outputs=outputs, run_id="r", execution_id=2,
                       inputs={**ctx.inputs, "baseline_model": None}))
