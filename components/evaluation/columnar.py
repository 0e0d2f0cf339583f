"""The evaluated split read from the examples' Parquet shards as Arrow record batches.

What evaluate scores and slices is a `pipeline.artifacts.scoring.Split`: columns as numpy arrays
(one value per row, or [rows, width] NaN-padded for several; strings as text, or bytes when not
UTF-8; missing: "" / NaN) plus the rows as serialized tf.Examples. Here the columns come from the
Parquet shards (numpy over Arrow's buffers: no TFRecord decompression, no parse_example), equal to
what `scoring.read_split` makes of the tf.Example shards; the serialized rows are encoded only if a
task asks for them (regression's and clustering's model inputs). An artifact of the previous
format (no Parquet shards) is read from its tf.Example shards.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_EMPTY = {"int": np.int64, "float": np.float32, "string": object}


def read_split(examples_uri: str, split: str, meta: dict, batch_size: int = 4096):
    """Every row of `split` as a scoring.Split (columnar when the artifact has Parquet shards).

    Args:
        examples_uri: the examples artifact.
        split: the split's name.
        meta: the artifact's columns.json (`read_columns`).
        batch_size: rows per batch read.

    Raises:
        ComponentError: an artifact of the previous format whose split has no files.
    """
    from kfx.pipeline.artifacts import examples, split_dir
    from kfx.pipeline.artifacts.scoring import Split
    from kfx.pipeline.artifacts.scoring import read_split as read_tf_examples

    columns = meta["columns"]
    if not examples.has_columnar(meta):
        return read_tf_examples(examples_uri, split, columns, batch_size)
    parts: dict[str, list] = {name: [] for name in columns}
    for shard in examples.shards(split_dir(examples_uri, split)):
        for _, cols in examples.read_lists(shard, list(columns), batch_size):
            for name, values_lengths in cols.items():
                parts[name].append(values_lengths)
    flat = {name: (np.concatenate([v for v, _ in p]) if p else np.zeros(0, _EMPTY[columns[name]]),
                   np.concatenate([n for _, n in p]) if p else np.zeros(0, np.int64)) for name, p in parts.items()}
    frame, missing = {}, {}
    for name, kind in columns.items():
        frame[name], missing[name] = _column(*flat[name], kind)
    return Split(frame, missing, SerializedRows(columns, flat))


def _column(values: np.ndarray, lengths: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(column as scoring.read_split gives it, missing per row) from flat values and values per row."""
    from kfx.pipeline.artifacts.scoring import _text_or_bytes

    missing = lengths == 0
    if kind == "string":  # the first value of a row
        first = np.full(len(lengths), b"", dtype=object)
        first[~missing] = values[(np.cumsum(lengths) - lengths)[~missing]]
        return np.array([_text_or_bytes(v) for v in first.tolist()], dtype=object), missing
    width = max(1, int(lengths.max())) if len(lengths) else 1
    out = np.full((len(lengths), width), np.nan)
    out[np.arange(width)[None, :] < lengths[:, None]] = values.astype(np.float64)  # row-major: flat order
    return (out[:, 0] if width <= 1 else out), missing


class SerializedRows(Sequence):
    """The rows as serialized tf.Examples, encoded from the columns on first use."""

    def __init__(self, columns: dict[str, str], flat: dict[str, tuple[np.ndarray, np.ndarray]]):
        self._columns, self._flat = columns, flat
        self._rows = len(next(iter(flat.values()))[1]) if flat else 0
        self._encoded: list[bytes] | None = None

    def __len__(self) -> int:
        return self._rows

    def __getitem__(self, index):
        if self._encoded is None:
            self._encoded = self._encode()
        return self._encoded[index]

    def _encode(self) -> list[bytes]:
        import tensorflow as tf

        lists = {"int": lambda v: tf.train.Feature(int64_list=tf.train.Int64List(value=v)),
                 "float": lambda v: tf.train.Feature(float_list=tf.train.FloatList(value=v)),
                 "string": lambda v: tf.train.Feature(bytes_list=tf.train.BytesList(value=v))}
        split = {name: np.split(values, np.cumsum(lengths)[:-1]) if len(lengths) else []
                 for name, (values, lengths) in self._flat.items()}
        return [tf.train.Example(features=tf.train.Features(feature={
            name: lists[self._columns[name]](split[name][i].tolist()) for name in self._columns
            if len(split[name][i])})).SerializeToString() for i in range(self._rows)]
