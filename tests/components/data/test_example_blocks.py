"""example_blocks: vectorised tf.Example encoding equals the per-row encoder and TensorFlow's parser,
and its TFRecord framing equals TensorFlow's TFRecordWriter byte for byte."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import tensorflow as tf

from kfx.components.data import example_blocks

KEYS = {n: example_blocks._field(1, n.encode()) for n in ("i", "f", "s")}


def _columns():
    rng = np.random.default_rng(0)
    n = 300
    i = rng.integers(-(1 << 40), 1 << 40, n)
    i[:50] = rng.integers(0, 5, 50)  # repeated small values, one-byte varints
    f = rng.normal(size=n).astype(np.float32)
    s = [("x" * int(k)).encode() for k in rng.integers(0, 300, n)]  # lengths across the 128-byte varint step
    null = {c: rng.random(n) < 0.2 for c in KEYS}
    return {"i": ("int", pa.array(i), null["i"]), "f": ("float", pa.array(f), null["f"]),
            "s": ("string", pa.array(s, pa.binary()), null["s"])}


def test_examples_equal_the_per_row_encoder_and_parse_in_tensorflow():
    cols = _columns()
    got = example_blocks.examples([example_blocks.feature_entries(KEYS[c], kind, vals, null)
                                   for c, (kind, vals, null) in cols.items()]).to_pylist()
    for r, rec in enumerate(got):
        row = [(KEYS[c], kind, [vals[r].as_py()]) for c, (kind, vals, null) in cols.items() if not null[r]]
        assert rec == example_blocks.encode_example(row)
        feats = tf.train.Example.FromString(rec).features.feature
        assert set(feats) == {c for c, (_, _, null) in cols.items() if not null[r]}
        if "i" in feats:
            assert feats["i"].int64_list.value == [cols["i"][1][r].as_py()]
        if "f" in feats:
            assert feats["f"].float_list.value == [cols["f"][1][r].as_py()]
        if "s" in feats:
            assert feats["s"].bytes_list.value == [cols["s"][1][r].as_py()]


def test_tfrecord_framing_equals_tensorflow_and_reads_back_gzip(tmp_path):
    records = [b"", b"a", b"x" * 200, bytes(range(256)) * 300]
    arr = pa.array(records, pa.binary())
    plain = tmp_path / "plain.tfrecord"
    with tf.io.TFRecordWriter(str(plain)) as w:
        for r in records:
            w.write(r)
    assert example_blocks.tfrecord_block(arr).to_pybytes() == plain.read_bytes()
    sliced = pa.array([b"skip"] + records, pa.binary()).slice(1)  # offsets not starting at 0
    assert example_blocks.tfrecord_block(sliced).to_pybytes() == plain.read_bytes()
    example_blocks.write_shard(str(tmp_path / "Split-train"), example_blocks.shard_name("k"), arr)
    (path,) = tf.io.gfile.glob(str(tmp_path / "Split-train" / "data_tfrecord-*.gz"))
    assert [r.numpy() for r in tf.data.TFRecordDataset(path, compression_type="GZIP")] == records
    assert example_blocks.tfrecord_block(pa.array([], pa.binary())).size == 0
