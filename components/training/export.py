"""The serving export: a SavedModel taking raw features, ready for TensorFlow Serving.

Signatures (the preprocessing layer is inside, so serving cannot skew from training):
  * serving_default (method tensorflow/serving/predict): the raw features by their column names
    and dtypes, shape [None]; outputs `probabilities` [N, C], `classes` [N] (string),
    `class_ids` [N] for classification, `predictions` [N] for regression.
  * classify (tensorflow/serving/classify): `inputs` = serialized tf.Example [None];
    outputs `classes` [N, C] string and `scores` [N, C] float (what TF Serving's Classify needs).
  * regress (tensorflow/serving/regress): `inputs` -> `outputs` [N] float (binary: P(positive);
    regression: the prediction). Not exported for multiclass models.
TF2's saver writes every signature with method name tensorflow/serving/predict; TF Serving's
classifier.cc / regressor.cc reject that, so the method names are rewritten in saved_model.pb
after saving (the same fix TFX applies). Warmup requests (PredictionLog of PredictRequests from
real rows) go to assets.extra/tf_serving_warmup_requests.
"""
from __future__ import annotations

from typing import Any

PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
SERVING_DEFAULT, CLASSIFY, REGRESS = "serving_default", "classify", "regress"
TRANSFORM_FEATURES = "transform_features"
WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"


def _input_signature(spec: dict) -> dict:
    import tensorflow as tf

    return {name: tf.TensorSpec([None, *raw["shape"]], tf.as_dtype(raw["dtype"]), name=name)
            for name, raw in spec["raw_features"].items()}


def make_functions(preprocessor, model, spec: dict) -> dict[str, Any]:
    """name -> (python function, input signature) of every endpoint.

    The functions are plain TF code over the preprocessing layer and the trained model; they
    are also what train uses to score the eval/test splits.
    """
    import tensorflow as tf

    from kfx.models.preprocess import raw_feature_spec

    task = spec["task"]
    parse_spec = raw_feature_spec(spec)
    examples_signature = [tf.TensorSpec([None], tf.string, name="examples")]

    def infer(features):
        return model(preprocessor(features), training=False)

    def transform_features(examples):
        # The model's inputs for serialized examples (TFX's transform_features signature):
        # lets anyone check that serving preprocesses exactly as training did.
        return preprocessor(tf.io.parse_example(examples, parse_spec))

    if task["type"] == "regression":
        def serve(features):
            return {"predictions": tf.reshape(infer(features), [-1])}

        def regress(inputs):
            return {"outputs": tf.reshape(infer(tf.io.parse_example(inputs, parse_spec)), [-1])}

        return {SERVING_DEFAULT: (serve, [_input_signature(spec)]),
                REGRESS: (regress, [tf.TensorSpec([None], tf.string, name="inputs")]),
                TRANSFORM_FEATURES: (transform_features, examples_signature)}

    vocab = tf.constant(task["vocabulary"], tf.string)
    binary = task["type"] == "binary"

    def probabilities(features):
        p = tf.cast(infer(features), tf.float32)
        return tf.concat([1.0 - p, p], axis=1) if binary else p

    def serve(features):
        p = probabilities(features)
        ids = tf.argmax(p, axis=1)
        return {"probabilities": p, "classes": tf.gather(vocab, ids), "class_ids": ids}

    def classify(inputs):
        p = probabilities(tf.io.parse_example(inputs, parse_spec))
        classes = tf.tile(tf.expand_dims(vocab, 0), [tf.shape(p)[0], 1])
        return {"classes": classes, "scores": p}

    out = {SERVING_DEFAULT: (serve, [_input_signature(spec)]),
           CLASSIFY: (classify, [tf.TensorSpec([None], tf.string, name="inputs")]),
           TRANSFORM_FEATURES: (transform_features, examples_signature)}
    if binary:
        def regress(inputs):
            return {"outputs": probabilities(tf.io.parse_example(inputs, parse_spec))[:, 1]}

        out[REGRESS] = (regress, [tf.TensorSpec([None], tf.string, name="inputs")])
    return out


def export(path: str, preprocessor, model, spec: dict, warmup_rows: dict | None = None,
           model_name: str = "model") -> list[str]:
    """Write the SavedModel at `path` (a directory TF Serving serves as one version).

    Args:
        path: output directory (created; may be any tf.io.gfile URI).
        preprocessor: the transform's preprocessing layer.
        model: the trained keras model on transformed features.
        spec: transform.json contents.
        warmup_rows: raw feature name -> array of a few real rows for warmup requests.
        model_name: model_spec.name in the warmup requests.

    Returns:
        The signature names written.
    """
    import keras

    archive = keras.export.ExportArchive()
    archive.track(preprocessor)
    archive.track(model)
    functions = make_functions(preprocessor, model, spec)
    for name, (fn, signature) in functions.items():
        archive.add_endpoint(name, fn, input_signature=signature)
    archive.write_out(path, verbose=False)
    set_method_names(path, {CLASSIFY: CLASSIFY_METHOD, REGRESS: REGRESS_METHOD})
    if warmup_rows:
        write_warmup(path, warmup_rows, model_name)
    return sorted(functions)


def set_method_names(path: str, methods: dict[str, str]) -> None:
    """Rewrite signature method names in saved_model.pb (TF2 saves all as predict)."""
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    pb = f"{path}/saved_model.pb"
    sm = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(pb, "rb") as f:
        sm.ParseFromString(f.read())
    for meta_graph in sm.meta_graphs:
        for name, method in methods.items():
            if name in meta_graph.signature_def:
                meta_graph.signature_def[name].method_name = method
    with tf.io.gfile.GFile(pb, "wb") as f:
        f.write(sm.SerializeToString())


def method_names(path: str) -> dict[str, str]:
    """signature name -> method name, read from saved_model.pb."""
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(f"{path}/saved_model.pb", "rb") as f:
        sm.ParseFromString(f.read())
    return {k: v.method_name for k, v in sm.meta_graphs[0].signature_def.items()}


def write_warmup(path: str, rows: dict, model_name: str) -> int:
    """TF Serving warmup file: one PredictRequest per row on serving_default; returns the count."""
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    n = len(next(iter(rows.values())))
    tf.io.gfile.makedirs(f"{path}/assets.extra")
    with tf.io.TFRecordWriter(f"{path}/{WARMUP_FILE}") as writer:
        for i in range(n):
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=model_name, signature_name=SERVING_DEFAULT))
            for name, values in rows.items():
                value = np.asarray(values[i:i + 1])
                request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return n
