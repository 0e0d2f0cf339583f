"""evaluate reads the split from the Parquet shards (Arrow record batches) and gives the evaluation,
blessing and predictions that the tf.Example path gives on an artifact of the previous format;
the columnar reader equals scoring.read_split on missing, multi-valued and non-UTF-8 values."""
from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.components.evaluation import evaluation_fixtures as fx
from tests.components.evaluation.test_evaluate import evaluate

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _add_parquet(uri: str, rows_by_split: dict[str, list[dict]], columns: dict[str, str]) -> None:
    """Parquet shards beside the tf.Example shards, two per split in the TFRecord shards' row order
    (rows 0, 2, 4... then 1, 3, 5...), and columns.json's columnar flag."""
    from kfx.pipeline.artifacts import examples, split_dir

    for split, rows in rows_by_split.items():
        for shard in range(2):
            examples.write_shard(split_dir(uri, split), f"part-{shard:05d}.parquet",
                                 examples.record_batch(columns, rows[shard::2]))
    meta = json.loads(Path(uri, "columns.json").read_text())
    Path(uri, "columns.json").write_text(json.dumps({**meta, "columnar": True}))


def _typed_rows(rows: dict[str, np.ndarray]) -> list[dict]:
    n = len(rows[fx.LABEL])
    cast = {"int": int, "float": float, "string": lambda v: str(v).encode()}
    return [{name: [cast[kind](rows[name][i])] for name, kind in fx.COLUMNS.items()} for i in range(n)]


@pytest.fixture(scope="module")
def arts(tmp_path_factory):
    """The same rows as an old-format artifact (tf.Example only) and as a columnar one."""
    d = tmp_path_factory.mktemp("evaluate_columnar")
    rows = fx.write_examples(str(d / "old"), {"train": 600, "test": 900}, seed=3)
    shutil.copytree(d / "old", d / "columnar")
    _add_parquet(str(d / "columnar"), {s: _typed_rows(r) for s, r in rows.items()}, fx.COLUMNS)
    base = {"dir": d, "schema": fx.write_schema(str(d / "schema")),
            "fair": fx.export_model(str(d / "fair"), fx.fit_weights(rows["train"]))}
    return {"old": {**base, "examples": str(d / "old")}, "columnar": {**base, "examples": str(d / "columnar")}}


def test_columnar_evaluation_equals_the_tf_example_path(arts):
    cfg = {"split": "test", "mitigation": {"method": "group_thresholds", "feature": "sex", "split": "train"},
           "fairness": {"bootstrap_resamples": 50}}
    results = {k: evaluate(art, f"out_{k}", "fair", **cfg) for k, art in arts.items()}
    (m_old, ev_old, bl_old, out_old), (m_new, ev_new, bl_new, out_new) = results["old"], results["columnar"]
    for d in (m_old, m_new, ev_old, ev_new, ev_old["explanations"], ev_new["explanations"]):
        d.pop("seconds")  # wall clock
    assert ev_new == ev_old and bl_new == bl_old and m_new == m_old
    assert ev_new["rows"] == 900 and ev_new["mitigation"]["thresholds"]
    preds = [gzip.decompress((o / "predictions" / "predictions.csv.gz").read_bytes()) for o in (out_old, out_new)]
    assert preds[0] == preds[1] and preds[0].count(b"\n") == 901


def test_reader_equals_the_tf_example_reader_on_missing_multi_valued_and_binary_values(tmp_path):
    import tensorflow as tf

    from kfx.components.evaluation.columnar import read_split
    from kfx.pipeline.artifacts.scoring import read_split as read_tf_examples

    columns = {"n": "int", "window": "float", "name": "string", "png": "string"}
    rows = [{"n": [3], "window": [1.5, 2.0, 2.5], "name": ["é".encode()], "png": [b"\x89PNG\xff"]},
            {"n": None, "window": [0.25], "name": None, "png": [b"ok"]},
            {"n": [-7], "window": None, "name": [b"b"], "png": None},
            {"n": [2**40], "window": [], "name": [b""], "png": [b"\x00\xfe"]}]
    meta = fx.write_both_formats(tmp_path, columns, rows)
    new, old = read_split(str(tmp_path), "test", meta, batch_size=3), read_tf_examples(str(tmp_path), "test", columns, 3)
    assert new.rows == old.rows == 4
    for name in columns:
        assert np.array_equal(new.missing[name], old.missing[name]), name
        a, b = new.frame[name], old.frame[name]
        assert a.shape == b.shape and a.dtype == b.dtype, name
        assert (np.array_equal(a, b, equal_nan=True) if a.dtype != object else a.tolist() == b.tolist()), name
    assert new.frame["window"][0].tolist() == [1.5, 2.0, 2.5] and new.frame["name"][0] == "é"
    assert new.frame["png"][0] == b"\x89PNG\xff" and new.missing["n"].tolist() == [False, True, False, False]
    # The serialized rows, encoded on demand, parse back to the same values.
    spec = {"n": tf.io.VarLenFeature(tf.int64), "window": tf.io.VarLenFeature(tf.float32),
            "name": tf.io.VarLenFeature(tf.string), "png": tf.io.VarLenFeature(tf.string)}
    again, before = (tf.io.parse_example(tf.constant(list(s[0:4])), spec) for s in (new.serialized, old.serialized))
    for name in columns:
        assert again[name].values.numpy().tolist() == before[name].values.numpy().tolist(), name
        assert again[name].indices.numpy().tolist() == before[name].indices.numpy().tolist(), name


def test_old_format_artifact_without_files_fails_naming_the_split(tmp_path):
    from kfx.components.evaluation.columnar import read_split
    from kfx.pipeline.component import ComponentError

    (tmp_path / "Split-test").mkdir()
    with pytest.raises(ComponentError, match="split 'test'"):
        read_split(str(tmp_path), "test", {"columns": {"a": "int"}, "splits": ["test"]})
    empty = read_split(str(tmp_path), "test", {"columns": {"a": "int"}, "splits": ["test"], "columnar": True})
    assert empty.rows == 0 and empty.frame["a"].shape == (0,)
