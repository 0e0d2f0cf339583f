"""Warm start for train: initial weights from an earlier model, frozen layers, the fine-tune phase.

The source (`train.warm_start`, or the train stage's `base_model` input) is
  * `previous_push`: the model the last push of this pipeline published. The config binds the
    input `base_model: history:last_pushed_model` (ComponentSpec.implied_inputs), so the model
    is chosen from lineage like evaluate's baseline and its fingerprint is part of train's cache
    key; before the first push the input is empty and train runs cold and says so;
  * a path or URI: a SavedModel directory (a train stage's `model` artifact, a pushed version),
    a TF Serving model directory (its highest version is used) or a .keras file. Its files'
    listing (sizes, times) is part of the cache key (`source_fingerprint`).
A Keras export keeps every variable under its path (`<layer>/<variable>`), so the SavedModel
alone gives the weights by layer name: nothing else needs to be stored beside it.

A layer of the new model takes the source's weights when the source has every one of its
variables under the same path with the same shape; other layers (a new head, a resized
vocabulary, a layer the source lacks) keep their fresh initialisation and are reported by name
with the reason (logged, and in train's metrics under `warm_start`). Layers are the model's
top-level layers (`model.layers`), as for `train.freeze`.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import re
from typing import Any

from kfx.pipeline.component import ComponentError
from kfx.pipeline.config_warm_start import PREVIOUS_PUSH, REGEX_PREFIX

BASE_MODEL = "base_model"  # train's optional input: the model to start from
PREVIOUS_PUSH_RESOLVER = "last_pushed_model"
KERAS_SUFFIX = ".keras"
SAVED_MODEL_FILE = "saved_model.pb"


def implied_inputs(cfg) -> dict[str, str]:
    """`base_model: history:last_pushed_model` when train.warm_start is previous_push."""
    return {BASE_MODEL: PREVIOUS_PUSH_RESOLVER} if cfg.warm_start == PREVIOUS_PUSH else {}


def check_inputs(cfg, bound: tuple[str, ...]) -> None:
    """Config-load checks against the inputs the graph binds (`ComponentSpec.check_inputs`).

    Raises:
        ValueError: train.freeze without any warm-start source, or a train.warm_start path
            together with a base_model input bound in the graph.
    """
    if cfg.freeze and cfg.warm_start is None and BASE_MODEL not in bound:
        raise ValueError(f"train.freeze {list(cfg.freeze)} needs a warm-start source: set train.warm_start or "
                         f"bind inputs.{BASE_MODEL} (frozen fresh layers would never learn)")
    if cfg.warm_start not in (None, PREVIOUS_PUSH) and BASE_MODEL in bound:
        raise ValueError(f"warm start from two sources: train.warm_start={cfg.warm_start!r} and inputs.{BASE_MODEL} "
                         f"in the graph; keep one")


def source_fingerprint(cfg) -> str:
    """The listing (relative path, size, modification time) of a warm-start path, for the cache key.

    previous_push is fingerprinted as the `base_model` input artifact instead.
    """
    uri = cfg.warm_start
    if uri in (None, PREVIOUS_PUSH):  # the usual case: no TensorFlow import before the cache check
        return ""
    import tensorflow as tf

    if not tf.io.gfile.exists(uri):
        return ""
    paths = [f"{d.rstrip('/')}/{n}" for d, _, files in tf.io.gfile.walk(uri) for n in files] \
        if tf.io.gfile.isdir(uri) else [uri]
    entries = [[p[len(uri):], st.length, st.mtime_nsec] for p in paths for st in [tf.io.gfile.stat(p)]]
    return hashlib.sha256(json.dumps([uri, sorted(entries)]).encode()).hexdigest()


def source_of(cfg, base_model: str | None) -> str | None:
    """The model to start from: the `base_model` input (previous_push, or wired in the graph), or the
    path in train.warm_start.

    Raises:
        ComponentError: train.warm_start is a path and the base_model input is given too.
    """
    if cfg.warm_start in (None, PREVIOUS_PUSH):
        return base_model
    if base_model:  # config load rejects this in a graph; `kfx component train --input` can still give both
        raise ComponentError(f"train: warm start from two sources: train.warm_start={cfg.warm_start!r} and the "
                             f"{BASE_MODEL} input {base_model!r}; keep one")
    return cfg.warm_start


# ------------------------------------------------------------------ reading a source
def _latest_version(uri: str) -> str | None:
    """The highest all-digit version directory holding a SavedModel (TF Serving's layout), or None."""
    import tensorflow as tf

    versions = sorted((n.rstrip("/") for n in tf.io.gfile.listdir(uri) if n.rstrip("/").isdigit()), key=int)
    for v in reversed(versions):
        if tf.io.gfile.exists(f"{uri}/{v}/{SAVED_MODEL_FILE}"):
            return f"{uri}/{v}"
    return None


def read_weights(uri: str) -> dict[str, Any]:
    """Variable path (`layer/variable`) -> numpy value of the model at `uri`.

    Raises:
        ComponentError: `uri` does not exist or is not a SavedModel directory, a TF Serving model
            directory or a .keras file, or cannot be loaded as one; the message names it.
    """
    import tensorflow as tf

    where = f"train.warm_start: {uri}"
    if not tf.io.gfile.exists(uri):
        raise ComponentError(f"{where} does not exist")
    if uri.endswith(KERAS_SUFFIX) and not tf.io.gfile.isdir(uri):
        import keras

        try:
            model = keras.saving.load_model(uri, compile=False)
        except Exception as err:  # noqa: BLE001 - any load failure means: not a usable model
            raise ComponentError(f"{where} is not a loadable .keras model: {type(err).__name__}: {err}") from None
        return {v.path: v.numpy() for v in model.weights}
    path = uri if tf.io.gfile.exists(f"{uri}/{SAVED_MODEL_FILE}") else (
        _latest_version(uri) if tf.io.gfile.isdir(uri) else None)
    if path is None:
        raise ComponentError(f"{where} is not a model: expected a SavedModel directory ({SAVED_MODEL_FILE}), "
                             f"a TF Serving model directory (numbered versions) or a {KERAS_SUFFIX} file")
    try:
        weights = _saved_model_variables(path)
    except Exception as err:  # noqa: BLE001 - any read failure means: not a usable SavedModel
        raise ComponentError(f"{where}: the SavedModel {path} cannot be read: {type(err).__name__}: {err}") from None
    if not weights:
        raise ComponentError(f"{where}: the SavedModel {path} has no variables")
    return weights


def _saved_model_variables(path: str) -> dict[str, Any]:
    """Variable name -> value of a SavedModel, read from its checkpoint without loading its graphs.

    The SavedObjectGraph in saved_model.pb names each variable node; the checkpoint's object graph
    has the same node ids and gives the key its value is stored under (as tf.saved_model.load
    pairs them).
    """
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2, trackable_object_graph_pb2

    sm = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(f"{path}/{SAVED_MODEL_FILE}", "rb") as f:
        sm.ParseFromString(f.read())
    reader = tf.train.load_checkpoint(f"{path}/variables/variables")
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
    out = {}
    for node, saved in zip(sm.meta_graphs[0].object_graph_def.nodes, graph.nodes):
        keys = [a.checkpoint_key for a in saved.attributes if a.name == "VARIABLE_VALUE"]
        if node.WhichOneof("kind") == "variable" and keys:
            out[node.variable.name] = reader.get_tensor(keys[0])
    return out


# ------------------------------------------------------------------ loading, freezing
def load(model, weights: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
    """Assign `weights` to every top-level layer of `model` that matches them by path and shape.

    Returns:
        (names of the layers loaded, {name of a layer left at its initialisation: why}).
    """
    loaded, skipped = [], {}
    for layer in model.layers:
        if not layer.weights:
            continue
        reason = _mismatch(layer, weights)
        if reason:
            skipped[layer.name] = reason
            continue
        for v in layer.weights:
            v.assign(weights[v.path].astype(v.dtype))
        loaded.append(layer.name)
    return loaded, skipped


def _mismatch(layer, weights: dict[str, Any]) -> str | None:
    """Why `layer` cannot take `weights` (a variable missing or of another shape), or None."""
    for v in layer.weights:
        if v.path not in weights:
            return f"no variable {v.path} in the source"
        if tuple(weights[v.path].shape) != tuple(v.shape):
            return f"{v.path} has shape {list(weights[v.path].shape)} in the source, {list(v.shape)} here"
    return None


def matching_layers(model, patterns: tuple[str, ...]) -> list[str]:
    """Names of the model's top-level layers matched by any pattern (fnmatch, or regex after 're:').

    Raises:
        ComponentError: a pattern that matches no layer; the message lists the layer names.
    """
    names = [layer.name for layer in model.layers]
    out: set[str] = set()
    for pattern in patterns:
        if pattern.startswith(REGEX_PREFIX):
            regex = re.compile(pattern[len(REGEX_PREFIX):])
            hits = {n for n in names if regex.fullmatch(n)}
        else:
            hits = {n for n in names if fnmatch.fnmatchcase(n, pattern)}
        if not hits:
            raise ComponentError(f"train.freeze: pattern {pattern!r} matches no layer of model {model.name!r}; "
                                 f"its layers are: {', '.join(names)}")
        out |= hits
    return [n for n in names if n in out]


def start(model, cfg, base_model: str | None, log) -> dict[str, Any] | None:
    """Load the warm-start weights into the freshly built `model` and freeze `train.freeze`.

    Args:
        model: the built (uncompiled) keras model.
        cfg: the train section.
        base_model: train's `base_model` input (None when absent or before the first push).
        log: where to say what was loaded, skipped or frozen.

    Returns:
        The report for train's metrics ({source, loaded, loaded_layers, skipped: {layer: reason},
        frozen}, with `cold` instead when previous_push found no push), or None without any
        warm-start setting. Layers matched by train.freeze but skipped are not frozen.

    Raises:
        ComponentError: a source that is missing or not a model, a freeze pattern matching no
            layer, freeze without a warm-start source, or two sources.
    """
    source = source_of(cfg, base_model)
    matched = matching_layers(model, cfg.freeze) if cfg.freeze else []
    if source is None:
        if cfg.warm_start == PREVIOUS_PUSH:
            log.warning("train.warm_start: previous_push: no model pushed yet: training cold%s",
                        " (train.freeze not applied)" if matched else "")
            return {"source": PREVIOUS_PUSH, "cold": "no model pushed yet", "loaded": 0, "skipped": {}, "frozen": []}
        if matched:
            raise ComponentError(f"train.freeze {list(cfg.freeze)} needs a warm-start source (train.warm_start or "
                                 f"the {BASE_MODEL} input): frozen fresh layers would never learn")
        return None
    loaded, skipped = load(model, read_weights(source))
    # Only loaded layers are frozen: a skipped one has its fresh initialisation and must learn.
    frozen = [name for name in matched if name in loaded]
    for layer in model.layers:
        if layer.name in frozen:
            layer.trainable = False
    log.info("train: warm start from %s: %d layers loaded, %d skipped%s; frozen: %s", source, len(loaded),
             len(skipped), "".join(f"\n  skipped {k}: {v}" for k, v in skipped.items()), frozen or "none")
    return {"source": source, "loaded": len(loaded), "loaded_layers": loaded, "skipped": skipped, "frozen": frozen}


def unfreeze(model, report: dict[str, Any] | None) -> list[str]:
    """Make the layers `start` froze trainable again; returns their names."""
    names = (report or {}).get("frozen", [])
    for layer in model.layers:
        if layer.name in names:
            layer.trainable = True
    return list(names)
