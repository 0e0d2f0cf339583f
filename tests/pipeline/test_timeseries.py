"""Time series end to end on a tiny series made here (a noisy sine with a trend, 400 daily
points): ingest (windows, time splits) -> transform (window kind: differenced, scaled by the
train split) -> train (lstm, a few epochs) -> evaluate (rmse vs the naive and seasonal-naive
forecasts), then the exported model through a real `python -m kfx.serving`: Predict with a raw
window over gRPC and REST, INVALID_ARGUMENT for a window of the wrong length while the server
keeps serving.
"""
from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.request
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pytest
import yaml

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

LENGTH, HORIZON, SEASON = 24, 3, 20
WINDOW, TARGET = "window", "target"


def write_series(path: Path, n: int = 400) -> None:
    rng = np.random.default_rng(1)
    t = np.arange(n)
    values = 10 + 0.05 * t + 2 * np.sin(2 * np.pi * t / SEASON) + rng.normal(0, 0.1, n)
    days = [date(2021, 1, 1) + timedelta(days=int(i)) for i in t]
    path.write_text("day,value\n" + "".join(f"{d:%Y-%m-%d},{v:.4f}\n" for d, v in zip(days, values)))


STAGES = [
    {"name": "ingest", "component": "ingest"},
    {"name": "statistics", "component": "statistics", "inputs": {"examples": "ingest.examples"}},
    {"name": "schema", "component": "schema", "inputs": {"statistics": "statistics.statistics"}},
    {"name": "transform", "component": "transform", "inputs": {"examples": "ingest.examples", "schema": "schema.schema"}},
    {"name": "train", "component": "train", "inputs": {"examples": "ingest.examples", "schema": "schema.schema",
                                                       "transform_graph": "transform.transform_graph"}},
    {"name": "evaluate", "component": "evaluate", "inputs": {"examples": "ingest.examples", "schema": "schema.schema",
                                                             "model": "train.model"}},
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from kfx.pipeline.config import load_config
    from kfx.pipeline.runner import run_pipeline

    tmp = tmp_path_factory.mktemp("series")
    write_series(tmp / "series.csv")
    cfg = {
        "name": "series", "root": str(tmp / "runs"), "max_parallel": 1,
        "beam_args": ["--direct_running_mode=in_memory"],
        "stages": STAGES,
        "ingest": {"inputs": [{"pattern": str(tmp / "series.csv"), "splits": {"train": 1}}],
                   "timeseries": {"timestamp": "day", "input_length": LENGTH, "horizon": HORIZON,
                                  "splits": {"train": 7, "eval": 1.5, "test": 1.5}}},
        "schema": {"label": TARGET},
        "transform": {"task": "forecast", "exclude": ["day"],
                      "features": {WINDOW: {"kinds": ["window"], "window_shape": [LENGTH, 1], "difference": True,
                                            "season": SEASON}}},
        "train": {"model": "lstm", "epochs": 10, "batch_size": 16, "early_stopping_patience": 0,
                  "warmup_requests": 2, "verbose": 0,
                  "hyperparameters": {"units": 16, "dropout": 0.0, "learning_rate": 0.01}},
        "evaluate": {"gate": {"value": [{"metric": "rmse_vs_naive", "max": 1.0}]}},
    }
    path = tmp / "series.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    summary = run_pipeline(load_config(path))
    assert summary["status"] == "succeeded", summary["error"]
    outputs = {name: c["outputs"] for name, c in summary["components"].items()}
    return {"summary": summary, "outputs": outputs, "tmp": tmp}


def _frame(trained, split: str) -> dict:
    from kfx.pipeline.artifacts import read_columns
    from kfx.pipeline.artifacts.scoring import read_split

    examples = trained["outputs"]["ingest"]["examples"]
    return read_split(examples, split, read_columns(examples)["columns"]).frame


def test_window_constants_come_from_the_train_split_only(trained):
    from kfx.models.preprocess import load_transform

    spec = load_transform(trained["outputs"]["transform"]["transform_graph"])
    assert spec["outputs"][WINDOW] == {"kind": "window", "length": LENGTH, "channels": 1}
    assert spec["raw_features"][WINDOW]["shape"] == [LENGTH]
    state = spec["transforms"][0]["state"]

    def moments(splits):
        d = np.concatenate([np.diff(_frame(trained, s)[WINDOW], axis=1).ravel() for s in splits])
        return d.mean(), d.std()

    np.testing.assert_allclose([state["mean"][0], state["std"][0]], moments(["train"]), rtol=1e-6)
    assert abs(state["std"][0] - moments(["train", "eval", "test"])[1]) > 1e-6
    assert spec["task"]["label_shape"] == [HORIZON] and spec["task"]["window"]["season"] == SEASON


def test_export_takes_raw_windows_and_matches_the_in_process_model(trained):
    import tensorflow as tf

    model_dir = trained["outputs"]["train"]["model"]
    serve = tf.saved_model.load(model_dir).signatures["serving_default"]
    assert serve.structured_input_signature[1][WINDOW].shape.as_list() == [None, LENGTH]
    test = _frame(trained, "test")
    pred = serve(window=tf.constant(test[WINDOW], tf.float32))["predictions"].numpy()
    assert pred.shape == (len(test[TARGET]), HORIZON)
    # train scored the test split in process (preprocessing layer + Keras model) before export
    rmse = float(np.sqrt(np.mean((pred - test[TARGET]) ** 2)))
    assert rmse == pytest.approx(trained["summary"]["components"]["train"]["metrics"]["test_rmse"], rel=1e-4)
    # raw units: a differenced window is level-free, so a shifted window shifts the forecast
    shifted = serve(window=tf.constant(test[WINDOW] + 100.0, tf.float32))["predictions"].numpy()
    np.testing.assert_allclose(shifted, pred + 100.0, atol=2e-3)


def test_evaluate_reports_rmse_against_both_baselines(trained):
    metrics = trained["summary"]["components"]["evaluate"]["metrics"]
    test = _frame(trained, "test")
    last = test[WINDOW][:, -1:]
    naive = float(np.sqrt(np.mean((test[TARGET] - last) ** 2)))
    k = np.arange(1, HORIZON + 1)
    seasonal = test[WINDOW][:, LENGTH - 1 + k - SEASON]
    assert metrics["naive_rmse"] == pytest.approx(naive, abs=1e-4)
    assert metrics["seasonal_naive_rmse"] == pytest.approx(float(np.sqrt(np.mean((test[TARGET] - seasonal) ** 2))),
                                                           abs=1e-4)
    assert metrics["rmse"] < metrics["naive_rmse"] and metrics["blessed"] is True
    assert metrics["rmse_vs_naive"] == pytest.approx(metrics["rmse"] / metrics["naive_rmse"], abs=1e-3)
    report = Path(trained["outputs"]["evaluate"]["evaluation"], "report.html").read_text()
    assert "seasonal_naive_rmse" in report and 'data-plot="errors"' in report


def test_served_model_forecasts_from_a_raw_window_over_grpc_and_rest(trained, tmp_path):
    import grpc
    import tensorflow as tf

    from kfx.serving.client import ServingClient
    from tests.serving.conftest import ServerProcess

    base = tmp_path / "models" / "series"
    shutil.copytree(trained["outputs"]["train"]["model"], base / "1")
    windows = _frame(trained, "test")[WINDOW][:3].astype(np.float32)
    want = tf.saved_model.load(str(base / "1")).signatures["serving_default"](
        window=tf.constant(windows))["predictions"].numpy()

    server = ServerProcess(tmp_path, "--model_name=series", f"--model_base_path={base}", rest=True)
    try:
        server.wait_serving()
        with ServingClient(server.target, timeout=30, retries=0) as client:
            out = client.predict("series", {WINDOW: windows})
            np.testing.assert_allclose(out["predictions"], want, atol=1e-4)
            with pytest.raises(grpc.RpcError) as err:
                client.predict("series", {WINDOW: windows[:, :10]})
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            again = client.predict("series", {WINDOW: windows[:1]})
            np.testing.assert_allclose(again["predictions"], want[:1], atol=1e-4)

        url = f"http://127.0.0.1:{server.rest_port}/v1/models/series:predict"

        def post(body: dict):
            request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())

        status, body = post({"instances": [{WINDOW: w.tolist()} for w in windows]})
        assert status == 200
        np.testing.assert_allclose(np.array(body["predictions"]), want, atol=1e-4)
        with pytest.raises(urllib.error.HTTPError) as http_err:
            post({"instances": [{WINDOW: windows[0, :10].tolist()}]})
        assert http_err.value.code == 400 and "error" in json.loads(http_err.value.read())
        status, body = post({"instances": [{WINDOW: windows[0].tolist()}]})
        assert status == 200 and np.allclose(body["predictions"][0], want[0], atol=1e-4)
    finally:
        server.stop()
