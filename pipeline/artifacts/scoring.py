"""Reading a split's examples and scoring them with an exported SavedModel's signatures.

Scores come from the model's `serving_default` signature on raw features (what a client of
the model server gets), batched; which output is scored, and what it means, is the task's
(models/tasks/), read from the task description saved inside the model, so a baseline trained
with another transform (other classes, another label mean) is read correctly too.
Shared by evaluate (all rows) and infra_validate (canary rows and in-process reference results).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kfx.pipeline.component import ComponentError

SERVING_DEFAULT = "serving_default"
_TF_TYPES = {"int": "int64", "float": "float32", "string": "string"}


@dataclass
class Split:
    """Columns of a split as numpy arrays (strings decoded, or bytes when not UTF-8; missing: "" / NaN)
    plus raw records."""

    frame: dict[str, np.ndarray]
    missing: dict[str, np.ndarray]  # column -> bool per row
    serialized: list[bytes]

    @property
    def rows(self) -> int:
        return len(self.serialized)


def read_split(examples_uri: str, split: str, columns: dict[str, str], batch_size: int = 4096,
               rows: int | None = None) -> Split:
    """All (or the first `rows`) examples of `split`, parsed column by column.

    Raises:
        ComponentError: the split has no files.
    """
    import tensorflow as tf

    from kfx.pipeline.artifacts.examples import tfrecord_files

    files = tfrecord_files(examples_uri, split)
    if not files:
        raise ComponentError(f"no TFRecord files for split {split!r} under {examples_uri}")
    spec = {name: tf.io.VarLenFeature(tf.as_dtype(_TF_TYPES[kind])) for name, kind in columns.items()}

    def parse(batch):
        parsed = tf.io.parse_example(batch, spec)
        n = tf.shape(batch, out_type=tf.int64)[0]
        out = {}
        for name, sp in parsed.items():
            default = "" if sp.dtype == tf.string else tf.constant(0, sp.dtype)
            # Pad a column so an all-missing batch still has one; rows hold `counts` values.
            dense = tf.pad(tf.sparse.to_dense(sp, default_value=default), [[0, 0], [0, 1]],
                           constant_values=default)
            counts = tf.math.bincount(tf.cast(sp.indices[:, 0], tf.int32), minlength=tf.cast(n, tf.int32),
                                      maxlength=tf.cast(n, tf.int32))
            out[name] = (dense, counts)
        return batch, out

    ds = tf.data.TFRecordDataset(files, compression_type="GZIP")
    if rows:
        ds = ds.take(rows)
    ds = ds.batch(batch_size).map(parse, num_parallel_calls=tf.data.AUTOTUNE).prefetch(2)
    chunks: dict[str, list] = {name: [] for name in columns}
    counts: dict[str, list] = {name: [] for name in columns}
    serialized: list[bytes] = []
    for batch, parsed in ds:
        serialized.extend(batch.numpy().tolist())
        for name, (dense, count) in parsed.items():
            chunks[name].append(dense.numpy())
            counts[name].append(count.numpy())
    frame, missing = {}, {}
    for name, kind in columns.items():
        count = np.concatenate(counts[name]) if counts[name] else np.zeros(0, np.int64)
        width = max(1, int(count.max())) if len(count) and kind != "string" else 1
        # One value per row: a vector; several (a time-series window): [rows, width], NaN-padded.
        values = (np.concatenate([_cells(c, width) for c in chunks[name]]) if chunks[name]
                  else np.zeros((0, width))).reshape(len(count), -1)
        miss = count == 0
        if kind == "string":
            values = np.array([_text_or_bytes(v) for v in values[:, 0].tolist()], dtype=object)
        else:
            values = values.astype(np.float64)
            values[np.arange(values.shape[1])[None, :] >= count[:, None]] = np.nan
            values = values[:, 0] if width <= 1 else values
        frame[name], missing[name] = values, miss
    return Split(frame, missing, serialized)


def _cells(dense: np.ndarray, width: int) -> np.ndarray:
    """The first `width` columns of a batch's dense values (fewer columns are padded with the last,
    a default value)."""
    if dense.shape[1] >= width:
        return dense[:, :width]
    return np.concatenate([dense, np.repeat(dense[:, -1:], width - dense.shape[1], axis=1)], axis=1)


def _text_or_bytes(value: bytes):
    """A string value as text, or as the bytes themselves when they are not UTF-8 (encoded
    images): the model must get them unchanged."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value


def load(model_uri: str):
    import tensorflow as tf

    if not tf.io.gfile.exists(f"{model_uri}/saved_model.pb"):
        raise ComponentError(f"{model_uri} is not a SavedModel directory (no saved_model.pb)")
    return tf.saved_model.load(model_uri)


def input_specs(fn) -> dict:
    """Python argument name -> TensorSpec of a concrete signature function.

    The argument name is sanitised ("hours-per-week" -> "hours_per_week"); the TensorSpec's
    name is the SignatureDef input key clients send (see `wire_name`).
    """
    return dict(fn.structured_input_signature[1])


def wire_name(arg: str, spec) -> str:
    """The SignatureDef input key (= the feature's column name) of a signature argument."""
    return spec.name or arg


def feature_inputs(fn, data: Split, start: int = 0, stop: int | None = None, where: str = "") -> dict:
    """The signature's raw-feature inputs for rows [start, stop) of `data`, by argument name.

    Raises:
        ComponentError: an input the data lacks, or a numeric input missing in some rows
            (serving_default takes every feature; only classify/regress fill defaults).
    """
    import tensorflow as tf

    specs = input_specs(fn)
    absent = sorted(wire_name(arg, spec) for arg, spec in specs.items() if wire_name(arg, spec) not in data.frame)
    if absent:  # every absent input, in a stable order (a restored signature's argument order is not fixed)
        raise ComponentError(f"{where}the model's inputs {absent} are not columns of the "
                             f"examples (columns: {sorted(data.frame)})")
    out = {}
    for arg, spec in specs.items():
        name = wire_name(arg, spec)
        values = data.frame[name][start:stop]
        if spec.dtype == tf.string:
            out[arg] = tf.constant(np.array([v if isinstance(v, bytes) else str(v) for v in values], dtype=object),
                                   tf.string)
            continue
        if data.missing[name][start:stop].any():
            raise ComponentError(
                f"{where}numeric feature {name!r} is missing in {int(data.missing[name][start:stop].sum())} rows; "
                f"serving_default needs a value for every row")
        out[arg] = tf.constant(values.astype(spec.dtype.as_numpy_dtype))
    return out


def score(model_uri: str, data: Split, batch_size: int, where: str = "") -> tuple:
    """The model's task and its scored output (the task's `SCORE_OUTPUT`) for every row.

    Returns:
        (Task, numpy array with one row per example).

    Raises:
        ComponentError: no task description, no serving_default, or no output the task scores.
    """
    from kfx.models import tasks

    try:
        task = tasks.of(tasks.load(model_uri))
    except (FileNotFoundError, KeyError) as err:
        raise ComponentError(f"{where}{err}") from None
    model = load(model_uri)
    fn = model.signatures.get(SERVING_DEFAULT)
    if fn is None:
        raise ComponentError(f"{where}model {model_uri} has no {SERVING_DEFAULT!r} signature; it has "
                             f"{sorted(model.signatures)}")
    key = task.SCORE_OUTPUT
    if key not in fn.structured_outputs:
        raise ComponentError(f"{where}model {model_uri}: serving_default outputs {sorted(fn.structured_outputs)} "
                             f"lack {key!r}, what a {task.NAME} model returns")
    parts = [fn(**feature_inputs(fn, data, start, start + batch_size, where))[key].numpy()
             for start in range(0, data.rows, batch_size)]
    return task, (np.concatenate(parts) if parts else np.zeros((0,))).astype(np.float64)
