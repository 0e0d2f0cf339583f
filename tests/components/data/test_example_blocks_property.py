"""Property test: the vectorised tf.Example encoder (components/data/example_blocks.py) gives, for
random record batches of edge values (negative ints, int64 extremes, NaN / infinities / float32
extremes, empty and non-UTF-8 strings, missing values), the bytes of the per-row encoder
(`encode_example`), which tf.train.Example parses back to the values; its TFRecord framing
(length, masked CRC-32Cs) is read back by TensorFlow's reader. 120 batches (~1,250 rows), 30 framed."""
from __future__ import annotations

import math
import random

import numpy as np
import pyarrow as pa

from kfx.components.data import example_blocks as eb

INTS = [0, 1, -1, 127, 128, -128, 2**31, -2**31, 2**63 - 1, -2**63, 16383, 16384]
FLOATS = [0.0, -0.0, 1.5, -2.5, math.nan, math.inf, -math.inf, 3.4028234663852886e38, 1e-45]
STRINGS = [b"", b"a", b"\xff\xfe", "é".encode(), b"x" * 200, b"\x00"]
COLUMNS = {"i": "int", "f": "float", "s": "string"}
ARROW = {"int": pa.int64(), "float": pa.float32(), "string": pa.binary()}
KEYS = {name: eb._field(1, name.encode()) for name in COLUMNS}


def _batch(rng: random.Random) -> tuple[dict, dict]:
    """Random column values and null masks; each column has at least one value."""
    n = rng.randint(1, 20)
    pools = {"int": lambda: rng.choice(INTS + [rng.randint(-2**63, 2**63 - 1)]),
             "float": lambda: rng.choice(FLOATS + [rng.uniform(-1e30, 1e30)]), "string": lambda: rng.choice(STRINGS)}
    nulls = {k: [rng.random() < 0.2 for _ in range(n)] for k in COLUMNS}
    for k in COLUMNS:
        nulls[k][rng.randrange(n)] = False
    return {k: [None if nulls[k][r] else pools[kind]() for r in range(n)] for k, kind in COLUMNS.items()}, nulls


def _encode(values: dict, nulls: dict):
    return eb.examples([eb.feature_entries(KEYS[k], kind, pa.array(values[k], ARROW[kind]), np.array(nulls[k]))
                        for k, kind in COLUMNS.items()])


def test_vectorised_records_equal_the_per_row_encoder_and_parse_back(tmp_path):
    import tensorflow as tf

    rng, rows = random.Random(0), 0
    for trial in range(120):
        values, nulls = _batch(rng)
        records = _encode(values, nulls)
        for r, got in enumerate(records.to_pylist()):
            row = [(KEYS[k], kind, [float(np.float32(values[k][r])) if kind == "float" else values[k][r]])
                   for k, kind in COLUMNS.items() if not nulls[k][r]]
            assert got == eb.encode_example(row), (trial, r, row)
            feats = tf.train.Example.FromString(got).features.feature
            assert sorted(feats) == sorted(k for k in COLUMNS if not nulls[k][r])
            if not nulls["i"][r]:
                assert feats["i"].int64_list.value == [values["i"][r]]
            if not nulls["s"][r]:
                assert feats["s"].bytes_list.value == [values["s"][r]]
            if not nulls["f"][r]:
                np.testing.assert_array_equal(feats["f"].float_list.value, [np.float32(values["f"][r])])
            rows += 1
        if trial % 4 == 0:
            path = tmp_path / f"{trial}.tfrecord"
            path.write_bytes(eb.tfrecord_block(records).to_pybytes())
            assert [x.numpy() for x in tf.data.TFRecordDataset(str(path))] == records.to_pylist()
    assert rows > 900


def test_a_string_column_without_any_value_gives_empty_entries():
    entries = eb.feature_entries(KEYS["s"], "string", pa.array([None, None], pa.binary()), np.array([True, True]))
    assert entries.to_pylist() == [b"", b""]
