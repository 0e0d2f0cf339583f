"""Tiny artifacts for the evaluate / infra_validate / push tests, made here in seconds.

* `write_examples`: an examples artifact as ingest writes it (Split-<name>/*.gz gzip TFRecord of
  tf.Example, columns.json) with census-like columns: age (int), hours (float), sex, race and the
  string label income ("<=50K" / ">50K"). With `leak`, the label depends strongly on sex.
* `write_both_formats`: rows as a tf.Example shard and a Parquet shard in the same order (the
  two formats of the examples artifact; pipeline/artifacts/examples.py).
* `write_schema`: a schema artifact tagging income as the label and sex, race as sensitive.
* `fit_weights`: a logistic regression (scikit-learn) fitted on a split: what a model trained on
  that data learns. `export_model`: a SavedModel with kfx's export contract
  (components/training/export.py): serving_default on raw features -> probabilities / classes /
  class_ids, classify and regress on serialized tf.Example, written with keras.export.ExportArchive,
  and the task description (assets.extra/kfx_task.json).
"""
from __future__ import annotations

import json
import os

import numpy as np

COLUMNS = {"age": "int", "hours": "float", "sex": "string", "race": "string", "income": "string"}
LABEL, SENSITIVE = "income", ("sex", "race")
CLASSES = ["<=50K", ">50K"]
FEATURES = ("age", "hours", "male", "white")


def make_rows(n: int, seed: int, leak: bool = False) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 75, n)
    hours = np.round(rng.normal(40, 10, n), 1).astype(np.float32)
    sex = rng.choice(["Male", "Female"], n, p=[0.67, 0.33])
    race = rng.choice(["White", "Black", "Asian", "Other"], n, p=[0.8, 0.1, 0.06, 0.04])
    logit = 0.06 * (age - 40) + 0.05 * (hours - 40) - 1.0 + (3.5 * (sex == "Male") - 2.5 if leak else 0.0)
    y = rng.random(n) < 1 / (1 + np.exp(-logit))
    return {"age": age, "hours": hours, "sex": sex, "race": race,
            "income": np.where(y, CLASSES[1], CLASSES[0])}


def _example(rows: dict, i: int) -> bytes:
    import tensorflow as tf

    feats = {}
    for name, kind in COLUMNS.items():
        v = rows[name][i]
        if kind == "int":
            feats[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v)]))
        elif kind == "float":
            feats[name] = tf.train.Feature(float_list=tf.train.FloatList(value=[float(v)]))
        else:
            feats[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[str(v).encode()]))
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


def write_examples(uri: str, splits: dict[str, int], seed: int = 0, leak: bool = False) -> dict[str, dict]:
    """Write the artifact; returns the rows of every split."""
    import tensorflow as tf

    out = {}
    for k, (split, n) in enumerate(splits.items()):
        rows = make_rows(n, seed * 100 + k, leak)
        os.makedirs(f"{uri}/Split-{split}", exist_ok=True)
        for shard in range(2):  # two shards, as ingest writes several
            with tf.io.TFRecordWriter(f"{uri}/Split-{split}/data_tfrecord-{shard:05d}-of-00002.gz",
                                      options="GZIP") as w:
                for i in range(shard, n, 2):
                    w.write(_example(rows, i))
        out[split] = rows
    with open(f"{uri}/columns.json", "w") as f:
        json.dump({"columns": COLUMNS, "label": LABEL, "splits": list(splits)}, f)
    return out


def write_schema(uri: str) -> str:
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2

    schema = schema_pb2.Schema()
    for name, kind in COLUMNS.items():
        f = schema.feature.add(name=name, type={"int": schema_pb2.INT, "float": schema_pb2.FLOAT,
                                                "string": schema_pb2.BYTES}[kind])
        if name == LABEL:
            f.annotation.tag.append("label")
            f.string_domain.value.extend(CLASSES)
        if name in SENSITIVE:
            f.annotation.tag.append("sensitive")
    os.makedirs(uri, exist_ok=True)
    with open(f"{uri}/schema.pbtxt", "w") as fh:
        fh.write(text_format.MessageToString(schema))
    return uri


def design(rows: dict) -> np.ndarray:
    return np.stack([(rows["age"] - 40) / 10.0, (rows["hours"] - 40) / 10.0,
                     (rows["sex"] == "Male").astype(float), (rows["race"] == "White").astype(float)], axis=1)


def fit_weights(rows: dict) -> dict[str, float]:
    """Logistic regression on the rows: {feature weight..., "bias"}."""
    from sklearn.linear_model import LogisticRegression

    lr = LogisticRegression(C=10.0, max_iter=1000).fit(design(rows), rows[LABEL] == CLASSES[1])
    return {**dict(zip(FEATURES, lr.coef_[0].tolist())), "bias": float(lr.intercept_[0])}


def _scorer(weights: dict, broken: bool):
    import keras
    import tensorflow as tf

    class Scorer(keras.layers.Layer):
        """P(>50K) = sigmoid(w . [age, hours, male, white] + b) on raw features."""

        def build(self, _=None):
            init = [weights.get(k, 0.0) for k in FEATURES] + [weights.get("bias", 0.0)]
            self.w = self.add_weight(shape=(5,), initializer=keras.initializers.Constant(init), trainable=False)

        def call(self, f):
            x = tf.stack([(tf.cast(f["age"], tf.float32) - 40) / 10, (tf.cast(f["hours"], tf.float32) - 40) / 10,
                          tf.cast(tf.equal(f["sex"], "Male"), tf.float32),
                          tf.cast(tf.equal(f["race"], "White"), tf.float32)], axis=1)
            p = tf.sigmoid(tf.linalg.matvec(x, self.w[:4]) + self.w[4])
            return p * float("nan") if broken else p

    layer = Scorer()
    layer.build()
    return layer


def export_model(path: str, weights: dict, broken: bool = False) -> str:
    """A SavedModel with kfx's signatures; `broken` answers NaN (loads fine, fails canaries)."""
    import keras
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    scorer = _scorer(weights, broken)
    vocab = tf.constant(CLASSES)
    parse_spec = {"age": tf.io.FixedLenFeature([], tf.int64, 0), "hours": tf.io.FixedLenFeature([], tf.float32, 0.0),
                  "sex": tf.io.FixedLenFeature([], tf.string, ""), "race": tf.io.FixedLenFeature([], tf.string, "")}

    def probs(features):
        p = scorer(features)[:, None]
        return tf.concat([1.0 - p, p], axis=1)

    def serve(age, hours, sex, race):
        p = probs({"age": age, "hours": hours, "sex": sex, "race": race})
        ids = tf.argmax(p, axis=1)
        return {"probabilities": p, "classes": tf.gather(vocab, ids), "class_ids": ids}

    def classify(inputs):
        p = probs(tf.io.parse_example(inputs, parse_spec))
        return {"classes": tf.tile(vocab[None, :], [tf.shape(p)[0], 1]), "scores": p}

    def regress(inputs):
        return {"outputs": probs(tf.io.parse_example(inputs, parse_spec))[:, 1]}

    archive = keras.export.ExportArchive()
    archive.track(scorer)
    archive.add_endpoint("serving_default", serve, input_signature=[
        tf.TensorSpec([None], tf.int64, name="age"), tf.TensorSpec([None], tf.float32, name="hours"),
        tf.TensorSpec([None], tf.string, name="sex"), tf.TensorSpec([None], tf.string, name="race")])
    archive.add_endpoint("classify", classify, input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    archive.add_endpoint("regress", regress, input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    archive.write_out(path, verbose=False)
    # TF2 saves every signature as predict; TF Serving's Classify/Regress need their method names.
    sm = saved_model_pb2.SavedModel()
    with open(f"{path}/saved_model.pb", "rb") as f:
        sm.ParseFromString(f.read())
    for name, method in (("classify", "tensorflow/serving/classify"), ("regress", "tensorflow/serving/regress")):
        sm.meta_graphs[0].signature_def[name].method_name = method
    with open(f"{path}/saved_model.pb", "wb") as f:
        f.write(sm.SerializeToString())
    # The task description kfx's export saves beside the model: what evaluate scores it by.
    from kfx.models import tasks

    tasks.save(path, {"type": tasks.BINARY, "label": LABEL, "label_dtype": "string", "vocabulary": CLASSES,
                      "positive": CLASSES[1]})
    return path


def write_both_formats(uri, columns: dict[str, str], rows: list[dict], split: str = "test") -> dict:
    """One split of `rows` ({name: [values] or None}) as a tf.Example shard and as a Parquet shard, in the
    same order, under `uri` (a pathlib.Path); returns the columns.json of the columnar artifact."""
    import tensorflow as tf

    from kfx.pipeline.artifacts import examples

    kinds = {"int": ("int64_list", tf.train.Int64List), "float": ("float_list", tf.train.FloatList),
             "string": ("bytes_list", tf.train.BytesList)}
    (uri / f"Split-{split}").mkdir(parents=True)
    with tf.io.TFRecordWriter(str(uri / f"Split-{split}" / "data_tfrecord-00000-of-00001.gz"), options="GZIP") as w:
        for r in rows:
            feats = {n: tf.train.Feature(**{kinds[k][0]: kinds[k][1](value=r[n])})
                     for n, k in columns.items() if r.get(n) is not None}
            w.write(tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString())
    examples.write_shard(str(uri / f"Split-{split}"), "part-00000.parquet", examples.record_batch(columns, rows))
    return {"columns": columns, "splits": [split], "columnar": True}
