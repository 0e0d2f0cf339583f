"""The serving export: a SavedModel taking raw features, ready for TensorFlow Serving.

Signatures (the preprocessing layer is inside, so serving cannot skew from training):
  * serving_default (method tensorflow/serving/predict): the raw features by their column names
    and dtypes, shape [None]; outputs named by the task (models/tasks/): `probabilities` [N, C],
    `classes` [N] (string) and `class_ids` [N] for classification, `predictions` [N] for
    regression.
  * the task's signatures on serialized tf.Example (`inputs` [None]): `classify` (classes and
    scores [N, C], what TF Serving's Classify needs) for classification, `regress` (`outputs`
    [N]: the prediction, or P(positive) of a binary classifier) where a single number applies.
  * transform_features: the model's inputs for serialized examples (TFX's signature of that name).
TF2's saver writes every signature with method name tensorflow/serving/predict; TF Serving's
classifier.cc / regressor.cc reject that, so the method names are rewritten in saved_model.pb
after saving (the same fix TFX applies). Warmup requests (PredictionLog of PredictRequests from
real rows) go to assets.extra/tf_serving_warmup_requests, and the task description to
assets.extra/kfx_task.json (what evaluate scores the model by).

The Keras side of the same model goes to assets.extra/kfx_trainer/ (transform.json, trainer.json
naming the family and its hyperparameters, model.weights.h5): `load_trainer` rebuilds the
preprocessing layer and the trained Keras model from it, so evaluate can differentiate through
them (integrated gradients, adversarial examples), which the SavedModel's graph functions,
whose inputs are raw strings and encoded images, do not allow. TF Serving ignores the folder.
"""
from __future__ import annotations

from typing import Any

SERVING_DEFAULT = "serving_default"
TRANSFORM_FEATURES = "transform_features"
WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
TRAINER_DIR = "assets.extra/kfx_trainer"
TRAINER_SPEC, TRAINER_INFO, TRAINER_WEIGHTS = "transform.json", "trainer.json", "model.weights.h5"


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

    from kfx.models import tasks
    from kfx.models.preprocess import raw_feature_spec

    task = tasks.of(spec["task"])
    own = task.serving_functions(preprocessor, model, spec)
    if own is not None:
        return own
    parse_spec = raw_feature_spec(spec)
    examples_signature = [tf.TensorSpec([None], tf.string, name="examples")]

    def infer(features):
        return task.decode_output(model(preprocessor(features), training=False), features)

    def serve(features):
        return task.serving_outputs(infer(features))

    def transform_features(examples):
        # The model's inputs for serialized examples (TFX's transform_features signature):
        # lets anyone check that serving preprocesses exactly as training did.
        return preprocessor(tf.io.parse_example(examples, parse_spec))

    def on_examples(outputs):
        return lambda inputs: outputs(infer(tf.io.parse_example(inputs, parse_spec)))

    out = {SERVING_DEFAULT: (serve, [_input_signature(spec)]),
           TRANSFORM_FEATURES: (transform_features, examples_signature)}
    for name, (_method, outputs) in task.example_signatures().items():
        out[name] = (on_examples(outputs), [tf.TensorSpec([None], tf.string, name="inputs")])
    return out


def export(path: str, preprocessor, model, spec: dict, warmup_rows: dict | None = None,
           model_name: str = "model", trainer: dict | None = None) -> list[str]:
    """Write the SavedModel at `path` (a directory TF Serving serves as one version).

    Args:
        path: output directory (created; may be any tf.io.gfile URI).
        preprocessor: the transform's preprocessing layer.
        model: the trained keras model on transformed features.
        spec: transform.json contents.
        warmup_rows: raw feature name -> array of a few real rows for warmup requests.
        model_name: model_spec.name in the warmup requests.
        trainer: {"model": the family reference, "hyperparameters": its values}: writes the Keras
            side of the model (`load_trainer`) when given.

    Returns:
        The signature names written.
    """
    import keras

    from kfx.models import tasks

    archive = keras.export.ExportArchive()
    archive.track(preprocessor)
    archive.track(model)
    functions = make_functions(preprocessor, model, spec)
    for name, (fn, signature) in functions.items():
        archive.add_endpoint(name, fn, input_signature=signature)
    archive.write_out(path, verbose=False)
    task = tasks.of(spec["task"])
    set_method_names(path, {name: method for name, (method, _) in task.example_signatures().items()})
    tasks.save(path, task.info)
    if warmup_rows:
        n = len(next(iter(warmup_rows.values())))
        # A task whose serving_default does not take the raw features gives its own requests.
        own = task.request_inputs(functions[SERVING_DEFAULT][1][0], n)
        write_warmup(path, own if own is not None else warmup_rows, model_name)
    if trainer is not None:
        save_trainer(path, model, spec, trainer)
    return sorted(functions)


def save_trainer(path: str, model, spec: dict, trainer: dict) -> None:
    """Write the Keras side of an export (read back by `load_trainer`) under `path`/TRAINER_DIR."""
    import json
    import os
    import tempfile

    import tensorflow as tf

    out = f"{path}/{TRAINER_DIR}"
    tf.io.gfile.makedirs(out)
    for name, obj in ((TRAINER_SPEC, spec), (TRAINER_INFO, trainer)):
        with tf.io.gfile.GFile(f"{out}/{name}", "w") as f:
            json.dump(obj, f, indent=1, sort_keys=True)
    # Keras writes weights to local files only; the artifact root may be an object store.
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, TRAINER_WEIGHTS)
        model.save_weights(local)
        tf.io.gfile.copy(local, f"{out}/{TRAINER_WEIGHTS}", overwrite=True)


def load_trainer(path: str, config_dir: str = "") -> tuple[Any, Any, dict]:
    """(preprocessing layer, trained Keras model, transform spec) of an export written with `trainer`.

    Args:
        path: the SavedModel directory (a train output or a pushed version).
        config_dir: the folder a user's family reference is relative to.

    Raises:
        FileNotFoundError: the export has no Keras side (written by an older kfx, or not by kfx).
    """
    import json
    import os
    import tempfile

    import tensorflow as tf

    from kfx import models
    from kfx.models.preprocess import make_preprocessor

    src = f"{path}/{TRAINER_DIR}"
    if not tf.io.gfile.exists(f"{src}/{TRAINER_WEIGHTS}"):
        raise FileNotFoundError(f"model {path} has no Keras weights ({TRAINER_DIR}/{TRAINER_WEIGHTS}); "
                                f"it was exported by an older kfx: re-run train")
    with tf.io.gfile.GFile(f"{src}/{TRAINER_SPEC}") as f:
        spec = json.load(f)
    with tf.io.gfile.GFile(f"{src}/{TRAINER_INFO}") as f:
        trainer = json.load(f)
    model = models.get(trainer["model"], config_dir).build(spec["outputs"], spec["task"], trainer["hyperparameters"])
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, TRAINER_WEIGHTS)
        tf.io.gfile.copy(f"{src}/{TRAINER_WEIGHTS}", local)
        model.load_weights(local)
    return make_preprocessor(spec), model, spec


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
