"""train: export signatures and method names, train/serve equivalence of preprocessing, tune ->
train hand-off, resume after a kill, and MultiWorkerMirroredStrategy with two workers on loopback
(one of them SIGKILLed mid-epoch, then both rerun)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.models import tiny_pipeline as tiny

INPUTS = dict(examples=("ingest", "examples"), schema=("schema", "schema"),
              transform_graph=("transform", "transform_graph"))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return tiny.build(tmp_path_factory.mktemp("train"), to_stage="train")


@pytest.fixture(scope="module")
def loaded(built):
    import tensorflow as tf

    return tf.saved_model.load(built["outputs"]["train"]["model"])


def _serialized(examples: str, split: str, n: int) -> list[bytes]:
    import tensorflow as tf

    from kfx.components.training.data import split_files

    return [r.numpy() for r in tf.data.TFRecordDataset(split_files(examples, split), compression_type="GZIP").take(n)]


def test_train_reports_quality_and_writes_run_files(built):
    res = built["components"]["train"]
    m = res["metrics"]
    assert m["hyperparameters_source"] == "tuned" and m["strategy"] == "default" and m["epochs_run"] == 2
    for split in ("eval", "test"):
        assert 0.5 <= m[f"{split}_accuracy"] <= 1 and 0.5 <= m[f"{split}_auc"] <= 1
    assert m["test_rows"] == built["components"]["ingest"]["metrics"]["splits"]["test"]
    run = Path(res["outputs"]["model_run"])
    history = json.loads((run / "history.json").read_text())
    assert history["epoch"] == [0, 1] and len(history["val_loss"]) == 2
    assert list((run / "logs").rglob("events.out.tfevents*")), "no TensorBoard events"
    model = Path(res["outputs"]["model"])
    assert (model / "saved_model.pb").exists() and (model / "variables").is_dir()
    assert not (model / "history.json").exists()  # run files live beside the SavedModel, not in it


def test_tune_to_train_hand_off_uses_the_tuned_values(built):
    tuned = json.loads(Path(built["outputs"]["tune"]["hyperparameters"], "best.json").read_text())
    used = json.loads(Path(built["outputs"]["train"]["model_run"], "hyperparameters.json").read_text())
    assert used["values"] == tuned["values"] and used["source"] == "tuned"
    assert tuned["source"] == "tuned" and tuned["values"]["learning_rate"] != 1e-3  # not just the default


def _run_train(built, filename, given=None, **train):
    from kfx.pipeline.config import load_config
    from kfx.pipeline.runner import run_pipeline

    tmp = Path(built["config"]).parent
    cfg = load_config(tiny.write_config(tmp, filename, train={**tiny.config(tmp)["train"], **train}))
    return run_pipeline(cfg, only=["train"], given_inputs=given or {}, use_cache=False)["components"]["train"]


def test_overrides_win_and_a_family_mismatch_fails_clearly(built):
    res = _run_train(built, "override.yaml", hyperparameters={"units": 32, "num_layers": 1}, epochs=1,
                     optimizer="sgd", lr_schedule="step", clipnorm=1.0, class_weights="balanced")
    assert res["status"] == "succeeded", res.get("error")
    used = json.loads(Path(res["outputs"]["model_run"], "hyperparameters.json").read_text())
    assert used["values"]["units"] == 32 and used["values"]["num_layers"] == 1 and used["source"] == "tuned+overrides"

    bad = _run_train(built, "mismatch.yaml", model="wide_deep")
    assert bad["status"] == "failed"
    assert "tuned for model 'mlp' but train.model is 'wide_deep'" in bad["error"]

    unknown = _run_train(built, "weights.yaml", class_weights={"maybe": 2.0})
    assert unknown["status"] == "failed" and "train.class_weights names ['maybe']" in unknown["error"]


def test_train_without_tune_uses_the_space_defaults(built, tmp_path):
    """The component run directly (no hyperparameters input), as `run_stage` does."""
    from kfx import models
    from kfx.components.training import train
    from kfx.models.space import defaults
    from kfx.pipeline.component import Context
    from kfx.pipeline.config import load_config

    cfg = load_config(built["config"], ["train.model=wide_deep", "train.epochs=1"])
    outputs = {name: str(tmp_path / "train" / "x" / name) for name in train.SPEC.outputs}
    for uri in outputs.values():
        os.makedirs(uri)
    inputs = {name: built["outputs"][stage][out] for name, (stage, out) in INPUTS.items()}
    ctx = Context(pipeline=cfg, config=cfg.stage("train"), inputs={**inputs, "hyperparameters": None}, outputs=outputs,
                  run_id="r", execution_id=1)
    metrics = train.run(ctx)
    used = json.loads(Path(outputs["model_run"], "hyperparameters.json").read_text())
    assert metrics["hyperparameters_source"] == "defaults" and metrics["model"] == "wide_deep"
    assert used["values"] == defaults(models.get("wide_deep").SPACE)


def test_signatures_method_names_and_outputs(built, loaded):
    import tensorflow as tf

    from kfx.components.training.export import method_names
    from kfx.models.preprocess import load_transform

    path = built["outputs"]["train"]["model"]
    assert method_names(path) == {"serving_default": "tensorflow/serving/predict",
                                  "classify": "tensorflow/serving/classify",
                                  "regress": "tensorflow/serving/regress",
                                  "transform_features": "tensorflow/serving/predict",
                                  "__saved_model_init_op": ""}
    spec = load_transform(built["outputs"]["transform"]["transform_graph"])
    serving = loaded.signatures["serving_default"]
    # Named raw features in, with their original names and dtypes, shape [None].
    _, kwargs = serving.structured_input_signature
    assert {s.name: (s.dtype.name, s.shape.as_list()) for s in kwargs.values()} == {
        "age": ("int64", [None]), "hours": ("int64", [None]), "income_k": ("float32", [None]),
        "color": ("string", [None]), "city": ("string", [None])}
    raw = {"age": tf.constant([70, 20], tf.int64), "hours": tf.constant([40, 40], tf.int64),
           "income_k": tf.constant([90.0, 5.0]), "color": tf.constant(["red", "blue"]),
           "city": tf.constant(["oslo", ""])}
    out = serving(**raw)
    assert set(out) == {"probabilities", "classes", "class_ids"}
    p = out["probabilities"].numpy()
    assert p.shape == (2, 2) and np.allclose(p.sum(axis=1), 1, atol=1e-6)
    assert [c.decode() for c in out["classes"].numpy()] == [spec["task"]["vocabulary"][i] for i in p.argmax(axis=1)]

    # classify / regress on serialized tf.Example (TF Serving's Classify / Regress inputs).
    ex = []
    for i in range(2):
        e = tf.train.Example()
        e.features.feature["age"].int64_list.value.append(int(raw["age"][i]))
        e.features.feature["hours"].int64_list.value.append(40)
        e.features.feature["income_k"].float_list.value.append(float(raw["income_k"][i]))
        e.features.feature["color"].bytes_list.value.append(raw["color"][i].numpy())
        e.features.feature["city"].bytes_list.value.append(raw["city"][i].numpy())
        ex.append(e.SerializeToString())
    cls = loaded.signatures["classify"](inputs=tf.constant(ex))
    assert cls["classes"].numpy().tolist() == [[b"neg", b"pos"]] * 2
    assert np.allclose(cls["scores"].numpy(), p, atol=1e-6)
    reg = loaded.signatures["regress"](inputs=tf.constant(ex))
    assert np.allclose(reg["outputs"].numpy(), p[:, 1], atol=1e-6)
    with pytest.raises(Exception):
        serving(**{k: v for k, v in raw.items() if k != "age"})  # a missing input is an error


def test_warmup_requests_are_real_predict_requests(built, loaded):
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    path = Path(built["outputs"]["train"]["model"], "assets.extra", "tf_serving_warmup_requests")
    logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in tf.data.TFRecordDataset(str(path))]
    assert len(logs) == 3
    for log in logs:
        req = log.predict_log.request
        assert req.model_spec.signature_name == "serving_default"
        assert set(req.inputs) == {"age", "hours", "income_k", "color", "city"}
        out = loaded.signatures["serving_default"](**{k: tf.make_ndarray(v) for k, v in req.inputs.items()})
        assert out["probabilities"].shape == (1, 2)


def test_train_and_serve_preprocessing_are_identical(built, loaded):
    """The same raw rows through the tf.data training path and through the exported model."""
    import tensorflow as tf

    from kfx.components.training.data import dataset
    from kfx.models.preprocess import load_transform, make_preprocessor

    examples = built["outputs"]["ingest"]["examples"]
    spec = load_transform(built["outputs"]["transform"]["transform_graph"])
    records = _serialized(examples, "test", 10**6)
    train_path = next(iter(dataset(examples, "test", spec, make_preprocessor(spec), 10**6, cache=True)))[0]
    serve_path = loaded.signatures["transform_features"](examples=tf.constant(records))
    assert set(serve_path) == set(train_path) == set(spec["outputs"])
    for name in spec["outputs"]:
        a, b = train_path[name].numpy(), serve_path[name].numpy()
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert np.array_equal(a, b), name
    # And predictions: the trained model on tf.data features == serving_default on raw features.
    import keras

    parsed = tf.io.parse_example(tf.constant(records[:50]), {
        k: tf.io.FixedLenFeature([], tf.as_dtype(v["dtype"]), default_value=v["default"])
        for k, v in spec["raw_features"].items()})
    served = loaded.signatures["serving_default"](**parsed)["probabilities"].numpy()[:, 1]
    assert served.shape == (50,) and isinstance(keras.__version__, str)
    classified = loaded.signatures["classify"](inputs=tf.constant(records[:50]))["scores"].numpy()[:, 1]
    assert np.allclose(served, classified, atol=1e-6)


def test_batches_and_tuning_subsets_mix_classes_of_data_stored_sorted_by_class(built, tmp_path):
    """Rows written sorted by label (as a folder of class subfolders is): every training batch
    still holds both classes, although rows are preprocessed and cached in 1,024-row blocks, and
    a tuning subset (`rows`) is drawn from the whole split."""
    import tensorflow as tf

    from kfx.components.training.data import PARSE_BATCH, dataset
    from kfx.models.preprocess import load_transform, make_preprocessor

    examples = built["outputs"]["ingest"]["examples"]
    spec = load_transform(built["outputs"]["transform"]["transform_graph"])
    label = spec["task"]["label"]
    records = _serialized(examples, "train", 10**6)

    def label_of(r: bytes):
        feature = tf.train.Example.FromString(r).features.feature[label]
        return (feature.bytes_list.value or feature.int64_list.value)[0]

    by_label: dict = {}
    for r in records:
        by_label.setdefault(label_of(r), []).append(r)
    assert len(by_label) == 2
    rows = [r for group in by_label.values() for r in (group * (2 * PARSE_BATCH // len(group) + 1))[:2 * PARSE_BATCH]]
    out = tmp_path / "Split-train"
    out.mkdir()
    with tf.io.TFRecordWriter(str(out / "data-00000-of-00001.gz"), options="GZIP") as w:
        for r in rows:  # 2,048 rows of one class, then 2,048 of the other
            w.write(r)
    shutil.copy(Path(examples) / "columns.json", tmp_path / "columns.json")
    ds = dataset(str(tmp_path), "train", spec, make_preprocessor(spec), 64, shuffle=True, cache=True)
    batches = [y.numpy() for _, y in ds]
    assert sum(len(y) for y in batches) == len(rows)
    mixed = [len(np.unique(y)) == 2 for y in batches]
    assert sum(mixed) == len(batches), f"{len(batches) - sum(mixed)} of {len(batches)} batches hold one class"
    # tune.train_rows: a subset of the sorted split is a sample of all of it, not its first rows.
    subset = dataset(str(tmp_path), "train", {**spec, "train_rows": len(rows)}, make_preprocessor(spec), 64,
                     rows=PARSE_BATCH)
    labels = np.concatenate([y.numpy() for _, y in subset])
    assert len(labels) == PARSE_BATCH
    assert 0.35 < labels.mean() < 0.65, labels.mean()


def _backup_metadata(root: Path) -> list[Path]:
    return list(root.glob("tiny/train/.backup/*/training_metadata.json"))


def test_killed_training_resumes_from_its_last_epoch(built, tmp_path):
    root = tmp_path / "root"
    summary = tmp_path / "summary.json"
    args = ["component", "train", "-c", str(built["config"]), "--root", str(root), "--summary-json", str(summary),
            "--set", "train.epochs=40", "--set", "train.early_stopping_patience=0", "--set", "train.warmup_requests=0",
            *tiny.inputs_args(built["outputs"], **INPUTS, hyperparameters=("tune", "hyperparameters"))]
    proc = tiny.kfx(args)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        meta = _backup_metadata(root)
        if meta and json.loads(meta[0].read_text() or "{}").get("epoch", 0) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed:\n" + proc.communicate()[0][-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    meta = _backup_metadata(root)
    assert len(meta) == 1
    saved_epoch = json.loads(meta[0].read_text())["epoch"]
    assert 2 <= saved_epoch < 40
    assert not list(root.glob("tiny/train/[0-9]*")), "a killed run must commit nothing"
    # As if the kill had landed while the latest weights were being written: the previous state
    # kept by double checkpointing (its own metadata says which epoch) is used instead.
    backup = meta[0].parent
    assert (backup / "latest.weights.h5.bkp").exists()
    (backup / "latest.weights.h5").write_bytes(b"half-written")
    try:
        saved_epoch = json.loads((backup / "training_metadata.json.bkp").read_text())["epoch"]
    except ValueError:  # the SIGKILL itself landed in that copy: any earlier epoch will do
        saved_epoch = None

    proc = tiny.kfx(args)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out[-3000:]
    res = json.loads(summary.read_text())["components"]["train"]
    assert res["metrics"]["resumed_from_epoch"] >= 1  # resumed, not restarted
    if saved_epoch is not None:
        assert res["metrics"]["resumed_from_epoch"] == saved_epoch
    history = json.loads(Path(res["outputs"]["model_run"], "history.json").read_text())
    assert history["epoch"] == list(range(40))  # epochs before the kill are kept
    assert res["metrics"]["epochs_run"] == 40
    assert not _backup_metadata(root), "the backup is removed once training finished"


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_multi_worker_mirrored_strategy_on_loopback_loses_a_worker_and_its_rerun_resumes(built, tmp_path):
    """SIGKILL worker 1 of two MultiWorkerMirroredStrategy workers once its first epoch is backed up: worker 0
    stops with a message naming the lost worker (train.worker_timeout bounds the wait), and a rerun
    of both resumes from the epoch the backup holds, not from 0, and trains synchronously."""
    import tensorflow as tf

    kills, epochs = 0, 5  # the kill lands in epochs 2-5: a window of >= 3 epochs, not the tail of one

    def start(ports: list[int]) -> list:
        cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
        return [tiny.kfx(["component", "train", "-c", str(built["config"]), "--root", str(tmp_path / f"w{i}"),
                          "--summary-json", str(tmp_path / f"w{i}.json"), "--set", f"train.epochs={epochs}",
                          "--set", "train.worker_timeout=5", "--set", "train.warmup_requests=0", "--no-cache",
                          "--set", "train.hyperparameters={batch_norm: true}",  # synchronized batch norm
                          *tiny.inputs_args(built["outputs"], **INPUTS, hyperparameters=("tune", "hyperparameters"))],
                         env={"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})})
                for i in range(2)]

    def saved_epoch(i: int) -> int:
        meta = list((tmp_path / f"w{i}").glob("tiny/train/.backup/*/training_metadata.json"))
        try:
            return json.loads(meta[0].read_text())["epoch"] if meta else 0
        except ValueError:  # caught mid-write
            return 0

    procs = start(_free_ports(2))
    try:
        deadline = time.time() + 180
        while time.time() < deadline and all(p.poll() is None for p in procs) and saved_epoch(1) < 1:
            time.sleep(0.05)
        assert all(p.poll() is None for p in procs), "a worker ended before the kill:\n" + \
            "\n".join(p.communicate()[0][-2000:] for p in procs if p.poll() is not None)
        assert saved_epoch(1) >= 1, "worker 1 finished no epoch in time"
        procs[1].send_signal(signal.SIGKILL)  # after the first epoch was backed up, before the last ends
        kills += 1
        out, _ = procs[0].communicate(timeout=120)  # fails within train.worker_timeout, does not hang
        procs[1].communicate(timeout=30)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    print(f"training kills: {kills} (worker 1 after epoch {saved_epoch(1)} was backed up)")
    assert procs[1].returncode == -signal.SIGKILL and procs[0].returncode == 1, out[-3000:]
    failed = json.loads((tmp_path / "w0.json").read_text())["components"]["train"]
    assert failed["status"] == "failed"
    assert "train: lost MultiWorkerMirroredStrategy worker 1 of the TF_CONFIG cluster" in failed["error"]
    assert "train.worker_timeout=5 s" in failed["error"] and "Restart every worker with the same TF_CONFIG" in failed["error"]
    resume_at = [saved_epoch(0), saved_epoch(1)]
    assert resume_at[0] == resume_at[1] and 1 <= resume_at[1] < epochs
    assert f"resumes after the {resume_at[1]} epoch(s) completed" in failed["error"]

    procs = start(_free_ports(2))
    try:
        outs = [p.communicate(timeout=240)[0] for p in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    for proc, out in zip(procs, outs):
        assert proc.returncode == 0, out[-3000:]
    results = [json.loads((tmp_path / f"w{i}.json").read_text())["components"]["train"] for i in range(2)]
    for i, res in enumerate(results):
        assert res["metrics"]["resumed_from_epoch"] == resume_at[i]  # not 0
        assert json.loads(Path(res["outputs"]["model_run"], "history.json").read_text())["epoch"] == list(range(epochs))
        assert saved_epoch(i) == 0, "the backup is deleted once training succeeded"
    assert [r["metrics"]["strategy"] for r in results] == ["multi_worker", "multi_worker"]
    assert [r["metrics"]["replicas"] for r in results] == [2, 2]
    assert [r["metrics"]["chief"] for r in results] == [True, False]
    # Synchronous training: both workers end with the same weights, so the same predictions.
    records = tf.constant(_serialized(built["outputs"]["ingest"]["examples"], "eval", 20))
    scores = [tf.saved_model.load(r["outputs"]["model"]).signatures["classify"](inputs=records)["scores"].numpy()
              for r in results]
    assert np.allclose(scores[0], scores[1], atol=1e-5)


def test_the_export_carries_its_keras_side_and_it_gives_the_served_outputs(built, loaded, tmp_path):
    """load_trainer rebuilds the preprocessing layer and the Keras model from the export alone
    (what evaluate differentiates through); on raw rows it answers what serving_default does."""
    import tensorflow as tf

    from kfx.components.training.export import TRAINER_DIR, TRAINER_WEIGHTS, load_trainer
    from kfx.models.preprocess import raw_feature_spec

    model_dir = built["outputs"]["train"]["model"]
    pre, model, spec = load_trainer(model_dir)
    records = _serialized(built["outputs"]["ingest"]["examples"], "test", 40)
    raw = tf.io.parse_example(tf.constant(records), raw_feature_spec(spec))
    keras_side = model(pre(raw), training=False).numpy()
    served = loaded.signatures["serving_default"](**raw)["probabilities"].numpy()
    assert keras_side.shape[0] == served.shape[0] == 40
    assert np.allclose(keras_side.reshape(40, -1)[:, -1], served[:, 1], atol=1e-5)

    broken = tmp_path / "model"
    shutil.copytree(model_dir, broken)
    os.remove(broken / TRAINER_DIR / TRAINER_WEIGHTS)
    with pytest.raises(FileNotFoundError, match="older kfx: re-run train"):
        load_trainer(str(broken))


def test_evaluate_explains_the_trained_model_through_its_preprocessing(built, tmp_path):
    """evaluate's explanations (components/evaluation/explain.py) of this trained export: the
    attributions file's layout, and integrated gradients' completeness through the real
    preprocessing (one-hot strings, bucketized and normalized numbers)."""
    from tests.components.evaluation.test_evaluate import evaluate

    art = {"dir": tmp_path, "examples": built["outputs"]["ingest"]["examples"],
           "schema": built["outputs"]["schema"]["schema"], "model": built["outputs"]["train"]["model"]}
    _, ev, _, out = evaluate(art, "explain", "model", slices=[], explain={"samples": 50, "steps": 512,
                                                                         "permutation_repeats": 1})
    ex, ig = ev["explanations"], ev["explanations"]["integrated_gradients"]
    features = sorted(tiny.COLUMNS[:-1])
    with np.load(out / "evaluation" / "attributions.npz") as z:
        n = len(z["rows"])
        assert n == ig["rows"] == 50 and len(set(z["rows"])) == n and z["rows"].max() < ev["rows"]
        assert list(z["features"]) == features and z["feature_attributions"].shape == (n, 5)
        assert all(z[k].shape == (n,) for k in ("target", "output", "baseline_output", "delta"))
        assert list(z["permutation_features"]) == features and z["permutation_drops"].shape == (5, 1)
        # Completeness within 1% (of at least 0.05: a ReLU network's kinks on the path make the
        # sum's error shrink as 1/steps, which matters only where the output barely moves).
        diff = np.abs(z["output"] - z["baseline_output"])
        assert np.all(np.abs(z["delta"]) <= 0.01 * np.maximum(diff, 0.05))
        # The explained output is the served P(pos) of those rows.
        served = pd.read_csv(out / "predictions" / "predictions.csv.gz")["score"].to_numpy()
        assert np.allclose(z["output"], served[z["rows"]], atol=1e-5)
    assert {g.split("=")[0] for g in ig["groups"]} == {"color"}  # the tiny schema's sensitive feature
    assert set(ex["associations"]["color"]) == set(features) and ex["associations"]["color"]["color"] is None


def test_a_task_that_calibrates_needs_an_eval_split():
    from kfx.components.training.train import check_splits
    from kfx.models import tasks
    from kfx.pipeline.component import ComponentError

    anomaly = tasks.of({"type": tasks.ANOMALY, "label": "y", "label_dtype": "int64", "normal_values": ["0"]})
    with pytest.raises(ComponentError, match=r"task 'anomaly' picks its decision threshold on an 'eval' split, "
                                             r"and the examples have none \(splits: \['train', 'test'\]\)"):
        check_splits(anomaly, ["train", "test"])
    check_splits(anomaly, ["train", "eval"])
    check_splits(tasks.of({"type": tasks.REGRESSION, "label": "y"}), ["train"])  # no calibration: no eval needed


def test_multi_worker_without_a_cluster_configures_no_heartbeat(monkeypatch):
    """train.strategy: multi_worker with no TF_CONFIG is a local single-worker strategy: the
    heartbeat setup has no cluster to configure (it indexed an empty job list before)."""
    from kfx.components.training.fit import heartbeat_timeout

    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert heartbeat_timeout(5.0) is None


def test_a_lost_peer_error_names_the_lost_worker_and_other_errors_pass_through(monkeypatch):
    import tensorflow as tf

    from kfx.components.training.fit import lost_worker_error

    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:2", "c:3"]},
                                                "task": {"type": "worker", "index": 2}}))
    heartbeat = tf.errors.UnavailableError(None, None, (
        "{{function_node __wrapped__CollectiveReduceV2_device_/job:worker/replica:0/task:2/device:CPU:0}} Collective "
        "ops is aborted by: The following tasks are unhealthy (stopped sending heartbeats):\n"
        "/job:worker/replica:0/task:0\nThe tasks have crashed."))
    message = lost_worker_error(heartbeat, 12, completed=3)
    assert message.startswith("train: lost MultiWorkerMirroredStrategy worker 0 of the TF_CONFIG cluster")
    assert "train.worker_timeout=12 s" in message and "this worker (worker2) stops" in message
    assert "training resumes after the 3 epoch(s) completed" in message
    assert "no epoch had completed, so training starts over" in lost_worker_error(heartbeat, 12, completed=0)
    assert lost_worker_error(tf.errors.InvalidArgumentError(None, None, "Incompatible shapes: [2] vs. [3]"), 12, 0) \
        is None
    assert lost_worker_error(tf.errors.UnavailableError(None, None, "file system unavailable"), 12, 0) is None
