"""The transform graph: raw-feature parsing and the Keras preprocessing built from analyzer state.

transform writes `transform.json` (this module's contract); tune, train and the exported model
rebuild the same `Preprocessor` from it, so training and serving run identical code and state:
  * `raw_features`: serving inputs, name -> {"dtype": "int64"|"float32"|"string", "shape": [...],
    "default": value used when an Example lacks the feature}
  * `transforms`: [{"feature", "kind", "output", "state": {...analyzer results...}}]
  * `outputs`: output name -> description for models/tabular.py
  * `task`: the task description, {"type", "label", "label_dtype", ...} plus what the task's
    label analysis adds (models/tasks/: vocabulary, positive, class_counts; mean, std)
  * `preprocessing` (optional): {"function": "module:function", "config_dir": ...}, the user's
    function applied to the transformed features after the analyzers' layers (TFX's
    preprocessing_fn for what analyzers don't cover: crosses, ratios, clipping); it runs inside
    the exported model, so serving gets it too.
No layer is `adapt`ed: every vocabulary, mean and boundary comes from the Beam analyzers. Each
transform's kind (models/kinds/) owns its analyzer, its Keras layer and its output description;
this module only assembles them.
"""
from __future__ import annotations

import json

TRANSFORM_FILE = "transform.json"
ANALYZERS_FILE = "analyzers.json"
TRANSFORMED_DIR = "transformed_examples"
TF_DTYPES = {"int64": "int64", "float32": "float32", "string": "string"}


def load_transform(uri: str) -> dict:
    """transform.json of a transform_graph artifact."""
    import tensorflow as tf

    with tf.io.gfile.GFile(f"{uri}/{TRANSFORM_FILE}") as f:
        return json.load(f)


def raw_feature_spec(spec: dict, with_label: bool = False) -> dict:
    """tf.io.parse_example spec of the raw features (plus the label when asked).

    Missing features get the transform's default (train mean for numbers, "" -> OOV for strings),
    the same in training, in the classify signature and for serving_default clients.
    """
    import tensorflow as tf

    out = {}
    for name, raw in spec["raw_features"].items():
        dtype = tf.as_dtype(raw["dtype"])
        default = raw["default"]
        if raw["shape"]:
            default = [default] * _size(raw["shape"])
        out[name] = tf.io.FixedLenFeature(raw["shape"], dtype, default_value=default)
    if with_label:
        task = spec["task"]  # a label of several values (forecast: the next steps) has a label_shape
        out[task["label"]] = tf.io.FixedLenFeature(task.get("label_shape", []), tf.as_dtype(task["label_dtype"]))
    return out


def _size(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _keras():
    import keras

    return keras


def make_preprocessor(spec: dict):
    """A `Preprocessor` layer (a keras.layers.Layer) for transform.json contents `spec`."""
    keras = _keras()

    from kfx.models import kinds

    class Preprocessor(keras.layers.Layer):
        """Raw feature dict -> transformed feature dict, with fixed analyzer state."""

        def __init__(self, spec: dict, **kwargs):
            super().__init__(**kwargs)
            if not spec.get("transforms"):
                raise ValueError("transform spec has no transforms: no feature would reach the model")
            self.spec = spec
            self.user_fn = user_function(spec)
            self.steps = []  # (feature, Kind class, output, layer-or-None, state)
            for t in spec["transforms"]:
                kind = kinds.get(t["kind"])
                layer = kind.layer(t["state"], spec["raw_features"][t["feature"]]["dtype"])
                self.steps.append((t["feature"], kind, t["output"], layer, t["state"]))
            self.built = True

        def call(self, features: dict) -> dict:
            out = {output: kind.apply(layer, features[feature], state)
                   for feature, kind, output, layer, state in self.steps}
            return apply_user_function(self.user_fn, out) if self.user_fn is not None else out

        def get_config(self):
            return {**super().get_config(), "spec": self.spec}

    return Preprocessor(spec, name="preprocessor")


def user_function(spec: dict):
    """The user's preprocessing function named in `spec`, or None."""
    pre = spec.get("preprocessing")
    if not pre:
        return None
    from kfx.pipeline.user_code import load_function

    return load_function(pre["function"], pre.get("config_dir", ""), what="transform.preprocessing")


def apply_user_function(fn, features: dict) -> dict:
    """`fn(features) -> features`; new float features of shape [N] become [N, 1].

    Raises:
        ValueError: the function did not return a dict of tensors, naming what it returned.
    """
    import tensorflow as tf

    out = fn(dict(features))
    if not isinstance(out, dict) or not out:
        raise ValueError(f"transform.preprocessing must return a non-empty dict of features, got {type(out).__name__}")
    return {k: (tf.reshape(v, [-1, 1]) if v.shape.rank == 1 and v.dtype.is_floating else v) for k, v in out.items()}


def describe_outputs(spec: dict, sample: dict) -> dict[str, dict]:
    """Output descriptions after the user's preprocessing, from one run on `sample` (raw features).

    Outputs the analyzers made keep their description; a new (or reshaped) output must be a
    float tensor [N, width] and is described as dense.

    Raises:
        ValueError: a new output that is not float, naming it and its dtype.
    """
    from kfx.models.kinds import DENSE

    out = make_preprocessor(spec)(sample)
    described = {}
    for name, value in out.items():
        known = spec["outputs"].get(name)
        width = int(value.shape[-1]) if value.shape.rank == 2 else None
        if known is not None and (known["kind"] != DENSE or known["width"] == width):
            described[name] = known
        elif value.dtype.is_floating and value.shape.rank == 2:
            described[name] = {"kind": DENSE, "width": width}
        else:
            raise ValueError(f"transform.preprocessing: output {name!r} is {value.dtype.name} of shape "
                             f"{value.shape}; new features must be float [N] or [N, width]")
    return described
