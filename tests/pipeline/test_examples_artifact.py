"""The columnar shards of the examples artifact: same rows as the tf.Example shards, and statistics
computed on them as Arrow batches equal those computed from the tf.Example shards."""
from __future__ import annotations

import glob

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from kfx.components.data import statistics
from kfx.pipeline.artifacts import examples as columnar
from kfx.pipeline.artifacts import read_columns, split_dir
from tests.conftest import kfx, read_json, tiny_config


@pytest.fixture(scope="module")
def examples_uri(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("col")
    rng = np.random.default_rng(5)
    n = 2500
    df = pd.DataFrame({"x": rng.normal(5, 2, n).round(3), "n": rng.integers(-3, 40, n),
                       "color": rng.choice(["red", "green", "blue", "teal", "ü"], n),
                       "label": rng.choice(["yes", "no"], n)})
    df.loc[::9, "x"] = np.nan
    df.loc[::11, "color"] = None
    (tmp / "data").mkdir()
    df.to_csv(tmp / "data" / "d.csv", index=False)
    cfg = tiny_config(tmp, str(tmp / "data" / "d.csv"), ingest={"chunk_rows": 700})
    out = tmp / "s.json"
    proc = kfx("run", "-c", str(cfg), "--to", "ingest", "--summary-json", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return read_json(out)["components"]["ingest"]["outputs"]["examples"]


def _tfrecord_rows(uri: str, split: str) -> list[dict]:
    rows = []
    for path in sorted(glob.glob(f"{split_dir(uri, split)}/*.gz")):
        for rec in tf.data.TFRecordDataset(path, compression_type="GZIP").as_numpy_iterator():
            ex = tf.train.Example.FromString(rec)
            rows.append({k: list(getattr(f, f.WhichOneof("kind")).value) for k, f in ex.features.feature.items()})
    return rows


def _columnar_rows(uri: str, split: str) -> list[dict]:
    rows = []
    for path in columnar.shards(split_dir(uri, split)):
        for batch in columnar.read_batches(path):
            rows.extend({k: v for k, v in r.items() if v is not None} for r in batch.to_pylist())
    return rows


def _key(row: dict) -> str:
    return repr(sorted((k, [round(x, 4) if isinstance(x, float) else x for x in v]) for k, v in row.items()))


def test_columnar_shards_hold_the_same_rows_as_the_tf_examples(examples_uri):
    meta = read_columns(examples_uri)
    assert columnar.has_columnar(meta)
    for split in meta["splits"]:
        tfr, col = _tfrecord_rows(examples_uri, split), _columnar_rows(examples_uri, split)
        assert len(tfr) == len(col) > 0
        assert sorted(map(_key, tfr)) == sorted(map(_key, col))
    assert not columnar.has_columnar({"columns": {}})  # an artifact of the previous format


def test_arrow_statistics_equal_the_tf_example_statistics(examples_uri):
    meta = read_columns(examples_uri)
    columns = meta["columns"]
    for split in meta["splits"]:
        arrow = statistics._merge([p for path in columnar.shards(split_dir(examples_uri, split))
                                   for _, p in statistics._shard_stats((split, path), columns, 300, 50)], 50)
        tfr = statistics._merge([p for path in sorted(glob.glob(f"{split_dir(examples_uri, split)}/*.gz"))
                                 for _, p in statistics._file_stats((split, path), columns, 300, 50)], 50)
        assert arrow[1] == tfr[1] > 0
        for name in columns:
            a, t = arrow[0][name], tfr[0][name]
            assert (a.present, a.missing, a.num_values, a.min_nv, a.max_nv, a.zeros) == \
                (t.present, t.missing, t.num_values, t.min_nv, t.max_nv, t.zeros), name
            assert np.isclose(a.total, t.total) and np.isclose(a.total_sq, t.total_sq), name
            assert a.counts == t.counts and a.unique() == t.unique() and a.bytes_len == t.bytes_len, name
            if a.sketch is not None:
                qs = np.linspace(0, 1, 11)
                assert np.allclose(a.sketch.quantiles(qs), t.sketch.quantiles(qs)), name
