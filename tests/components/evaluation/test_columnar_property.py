"""Property test: on random rows of edge values (int64 extremes, NaN / infinities, empty and
non-UTF-8 strings, missing values, empty and multi-valued lists) written as a tf.Example shard and
a Parquet shard in the same order, the columnar readers give what the tf.Example readers give:
evaluate's split (columns, missing, the serialized rows parsed back), transform's analyzer
batches (values, row ids) and its dense batches (or both fail; an empty list is the one difference). 15 artifacts, random batch sizes."""
from __future__ import annotations

import math
import os
import random

import numpy as np

from tests.components.evaluation import evaluation_fixtures as fx

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

POOLS = {"int": [0, 1, -1, 2**63 - 1, -2**63, 2**53 + 1, -300],
         "float": [0.0, -0.0, 1.5, math.nan, math.inf, -math.inf, 3.4e38, 1e-45],
         "string": [b"", b"a", b"\xff\xfe", "é".encode(), b"\x00"]}
COLUMNS = {"i": "int", "f": "float", "s": "string", "m": "float", "t": "string"}  # m, t: several values


def _rows(rng: random.Random) -> list[dict]:
    def value(name, kind):
        x = rng.random()
        if x < 0.15:
            return None
        if x < 0.2:
            return []
        return [rng.choice(POOLS[kind]) for _ in range(rng.randint(1, 3) if name in "mt" else 1)]

    return [{n: value(n, k) for n, k in COLUMNS.items()} for _ in range(rng.randint(1, 9))]


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and (
        a.tolist() == b.tolist() if a.dtype == object else np.array_equal(a, b, equal_nan=True))


def _values(feature) -> list:
    kind = feature.WhichOneof("kind") if feature is not None else None
    return list(getattr(feature, kind).value) if kind else []


def test_columnar_readers_equal_the_tf_example_readers_on_random_edge_values(tmp_path):
    import tensorflow as tf

    from kfx.components.evaluation.columnar import read_split
    from kfx.components.transform.transform import _batches, parsed_batches
    from kfx.pipeline.artifacts import split_dir
    from kfx.pipeline.artifacts.examples import shards, tfrecord_files
    from kfx.pipeline.component import ComponentError
    from kfx.pipeline.artifacts.scoring import read_split as read_tf_examples

    raw = {"i": {"dtype": "int64"}, "f": {"dtype": "float32"}, "s": {"dtype": "string"}, "m": {"dtype": "float32"}}
    dense = {"i": tf.io.FixedLenFeature([], tf.int64, -5), "f": tf.io.FixedLenFeature([], tf.float32, 0.5),
             "s": tf.io.FixedLenFeature([], tf.string, "")}
    rng, dense_equal = random.Random(1), 0
    for trial in range(15):
        rows, size = _rows(rng), rng.randint(1, 4)
        for split in ("test", "train"):
            meta = fx.write_both_formats(tmp_path / str(trial), COLUMNS, rows, split)
        uri = str(tmp_path / str(trial))
        new, old = read_split(uri, "test", meta, size), read_tf_examples(uri, "test", COLUMNS, size)
        assert new.rows == old.rows == len(rows)
        for name in COLUMNS:
            assert np.array_equal(new.missing[name], old.missing[name]), (trial, name)
            assert _same(new.frame[name], old.frame[name]), (trial, name, rows)
        for a, b in zip(new.serialized, old.serialized):
            a, b = tf.train.Example.FromString(a).features.feature, tf.train.Example.FromString(b).features.feature
            for name in COLUMNS:
                assert _same(np.array(_values(a.get(name)), dtype=object),
                             np.array(_values(b.get(name)), dtype=object)) or np.array_equal(
                    _values(a.get(name)), _values(b.get(name)), equal_nan=True), (trial, name)
        (parquet,), (tfrecord,) = shards(split_dir(uri, "train")), tfrecord_files(uri, "train")
        pairs = list(zip(_batches(parquet, raw, "t", "string", size), _batches(tfrecord, raw, "t", "string", size),
                         strict=True))
        for (n_a, a), (n_b, b) in pairs:
            assert n_a == n_b and sorted(a) == sorted(b)
            for name in a:
                assert _same(a[name][0], b[name][0]) and np.array_equal(a[name][1], b[name][1]), (trial, name)
        got = []
        for path in (parquet, tfrecord):
            try:
                got.append([(n, {k: v.numpy() for k, v in batch.items()}) for n, batch in parsed_batches(path, dense, 3)])
            except (ComponentError, tf.errors.InvalidArgumentError):
                got.append(None)
        # One known difference: a feature present with no values (an empty list) fails parse_example
        # with a FixedLenFeature; the Parquet rows get the default, as for a missing value.
        empty_list = any(r[k] == [] for r in rows for k in dense)
        assert (got[0] is None) == (got[1] is None) or (got[1] is None and empty_list), (trial, rows)
        if got[1] is not None:
            dense_equal += 1
            for (n_a, a), (n_b, b) in zip(*got, strict=True):
                assert n_a == n_b and all(_same(a[k], b[k]) for k in dense), trial
    assert dense_equal >= 2  # some artifacts have only valid rows, so the dense comparison ran
