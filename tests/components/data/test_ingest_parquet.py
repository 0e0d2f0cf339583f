"""ingest's columnar Parquet path (record batches, no conversion to rows) gives exactly the outputs of
the per-row path; a file with a wrong-typed or missing column is quarantined row by row, naming it."""
from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import tensorflow as tf

from kfx.components.data import ingest
from kfx.pipeline.config import IngestConfig
from tests.conftest import kfx, read_json, tiny_config

N = 240


def _table() -> pa.Table:
    rng = np.random.default_rng(0)
    i = np.arange(N)
    x = rng.normal(size=N)
    x[5], x[6], x[7] = np.nan, np.inf, -np.inf  # NaN is absent; an infinity is rejected
    return pa.table({
        "n": pa.array(rng.integers(0, 7, N), mask=i % 17 == 3),           # int64 read as int, some null
        "x": pa.array(x, mask=i % 19 == 4),                                 # float64 read as float
        "k": pa.array(i.astype(np.int32)),                                  # int32 read as float (per distinct)
        "s": pa.array([["1", " 2", "x", "?", "3.0"][j % 5] for j in i]),   # strings read as int: x, 3.0 bad
        "b": pa.array(i % 3 == 0),                                          # bool read as string
        "color": pa.array([["red", "grün", "?", None][j % 4] for j in i]),  # NA value and null
        "label": pa.array([["yes", "no", "maybe", None][j % 7 % 4] for j in i]),
    })


def _cfg(pattern: str) -> IngestConfig:
    return IngestConfig(format="parquet", inputs=[{"pattern": pattern, "splits": {"train": 3, "eval": 1}}],
                        label="label", column_types={"k": "float", "s": "int", "b": "string"},
                        csv={"na_values": ["?"], "replace": {"label": {"maybe": "no"}}}, chunk_rows=100)


def _outputs(outs) -> dict:
    got = defaultdict(list)
    for o in outs:
        got[o.tag].append((o.value[0], o.value[1], o.value[2].to_pylist())
                          if o.tag in (ingest.COLUMNAR, ingest.TFRECORD) else o.value)
    return {k: sorted(v, key=repr) for k, v in got.items()}


def test_columnar_parquet_equals_the_per_row_path(tmp_path):
    path = str(tmp_path / "d.parquet")
    pq.write_table(_table(), path)
    cfg = _cfg(path)
    parser = ingest.RowParser(ingest._parquet_columns(cfg, [path]), cfg, ingest._split_tables(cfg))
    assert parser.columns == {"n": "int", "x": "float", "k": "float", "s": "int", "b": "string",
                              "color": "string", "label": "string"}
    fast = _outputs(ingest._parse_parquet_file((0, path), parser, cfg.chunk_rows))
    cols = [c.to_pylist() for c in _table().columns]
    slow = _outputs(o for start in range(0, N, cfg.chunk_rows) for o in ingest._route(
        0, path, ((r + 1, [c[r] for c in cols], None, None) for r in range(start, min(N, start + cfg.chunk_rows))),
        parser))
    assert fast == slow
    counts = [c for c in fast["counts"]]
    read = sum(c["read"] for c in counts)
    rejected = sum(c["rejected"] for c in counts)
    accepted = sum(sum(c["splits"].values()) for c in counts)
    assert read == N == rejected + accepted and accepted > 50
    reasons = {r["line"]: r["reason"] for r in map(json.loads, fast[ingest.REJECTED])}
    assert reasons[3] == "column 's': cannot read 'x' as int"
    assert reasons[7] == "column 'x': cannot read inf as float"
    assert reasons[4] == "missing label 'label'"  # and s is '?', an NA value: absent, not bad
    assert reasons[5] == "column 's': cannot read '3.0' as int"
    records = [tf.train.Example.FromString(r) for _, _, recs in fast[ingest.TFRECORD] for r in recs]
    assert len(records) == accepted
    by_n = [e for e in records if "n" in e.features.feature]
    assert by_n and all(e.features.feature["k"].float_list.value for e in records)
    assert {e.features.feature["b"].bytes_list.value[0] for e in records} <= {b"True", b"False"}
    assert all(e.features.feature["label"].bytes_list.value[0] in (b"yes", b"no") for e in records)


def test_parquet_file_with_a_wrong_type_or_missing_column_is_quarantined(tmp_path):
    (tmp_path / "pq").mkdir()
    good = _table().select(["n", "x", "color", "label"])
    pq.write_table(good, tmp_path / "pq" / "a.parquet")
    wrong = good.set_column(0, "n", pa.array([["1", "two"][j % 2] for j in range(N)]))  # strings in an int column
    pq.write_table(wrong, tmp_path / "pq" / "b.parquet")
    pq.write_table(good.drop(["color"]).slice(0, 30), tmp_path / "pq" / "c.parquet")  # lacks a column
    cfg = tiny_config(tmp_path, str(tmp_path / "pq" / "*.parquet"),
                      ingest={"format": "parquet", "max_rejected_fraction": 0.8, "csv": {"na_values": ["?"]}})
    out = tmp_path / "s.json"
    proc = kfx("component", "ingest", "-c", str(cfg), "--summary-json", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    c = read_json(out)["components"]["ingest"]
    m = c["metrics"]
    rejected = [json.loads(line) for line in open(f"{c['outputs']['rejected']}/rejected.jsonl")]
    by_file = defaultdict(dict)
    for r in rejected:
        by_file[r["input"].rsplit("/", 1)[1]][r["line"]] = r["reason"]
    assert len(by_file["c.parquet"]) == 30 and set(by_file["c.parquet"]) == set(range(1, 31))
    assert set(by_file["c.parquet"].values()) == {"column 'color' is missing from this file"}
    assert by_file["b.parquet"][2] == "column 'n': cannot read 'two' as int"
    assert m["read"] == 2 * N + 30 == m["rows"] + m["rejected"] and m["rows"] == sum(m["splits"].values())
    examples = c["outputs"]["examples"]
    for split, rows in m["splits"].items():
        files = tf.io.gfile.glob(f"{examples}/Split-{split}/data_tfrecord-*.gz")
        assert sum(1 for _ in tf.data.TFRecordDataset(files, compression_type="GZIP")) == rows
        shards = tf.io.gfile.glob(f"{examples}/Split-{split}/part-*.parquet")
        assert sum(pq.read_metadata(f).num_rows for f in shards) == rows
