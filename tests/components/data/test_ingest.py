"""ingest: CSV/Parquet/TFRecord/TFDS sources, quarantine of malformed rows, the rejected limit."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from kfx.components.data.ingest import encode_example
from tests.conftest import kfx, read_json, tiny_config, write_tiny_csv


def _records(examples_uri: str, split: str) -> list[tf.train.Example]:
    files = tf.io.gfile.glob(f"{examples_uri}/Split-{split}/*.gz")
    return [tf.train.Example.FromString(r.numpy())
            for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]


def test_malformed_rows_are_quarantined_with_line_and_reason(tmp_path):
    data = tmp_path / "data" / "part.csv"
    write_tiny_csv(data, rows=200)
    lines = data.read_text().splitlines()
    lines[10] = "1.0,2,red"                    # wrong column count (file line 11)
    lines[20] = "abc,1,red,yes"                # x not a number (line 21)
    lines[30] = "2.0,1.5,blue,no"              # n not an int (line 31)
    lines[40] = "3.0,1,green,"                 # missing label (line 41)
    data.write_text("\n".join(lines) + "\n")
    cfg = tiny_config(tmp_path, str(data))
    out = tmp_path / "s.json"
    proc = kfx("component", "ingest", "-c", str(cfg), "--summary-json", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    c = read_json(out)["components"]["ingest"]
    m = c["metrics"]
    assert m["read"] == 200 and m["rejected"] == 4 and m["rows"] == 196
    assert sum(m["splits"].values()) == m["rows"]
    assert sum(len(_records(c["outputs"]["examples"], s)) for s in m["splits"]) == 196
    rejected = [json.loads(l) for l in open(f"{c['outputs']['rejected']}/rejected.jsonl")]
    by_line = {r["line"]: r["reason"] for r in rejected}
    assert by_line == {
        11: "expected 4 columns, found 3",
        21: "column 'x': cannot read 'abc' as float",
        31: "column 'n': cannot read '1.5' as int",
        41: "missing label 'label'",
    }
    assert all(r["input"] == str(data) for r in rejected)


def test_too_many_rejected_rows_fail_the_stage_and_commit_nothing(tmp_path):
    data = tmp_path / "data" / "part.csv"
    write_tiny_csv(data, rows=50)
    lines = data.read_text().splitlines()
    for i in range(1, 21):
        lines[i] = "not,a,valid"
    data.write_text("\n".join(lines) + "\n")
    cfg = tiny_config(tmp_path, str(data))
    out = tmp_path / "s.json"
    proc = kfx("run", "-c", str(cfg), "--to", "ingest", "--summary-json", str(out))
    assert proc.returncode == 1
    s = read_json(out)
    assert s["status"] == "failed" and s["components"]["ingest"]["status"] == "failed"
    assert "Stage 'ingest' failed" in s["error"] and "20 of 50 rows (40.00%) were rejected" in s["error"]
    assert "max_rejected_fraction 20.00%" in s["error"] and "line 2: expected 4 columns" in s["error"]
    assert "Stage 'ingest' failed" in proc.stderr


def test_hash_split_is_deterministic_and_close_to_ratio(tmp_path):
    data = tmp_path / "data" / "part.csv"
    write_tiny_csv(data, rows=5000)
    cfg = tiny_config(tmp_path, str(data))
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert kfx("component", "ingest", "-c", str(cfg), "--summary-json", str(a)).returncode == 0
    assert kfx("component", "ingest", "-c", str(cfg), "--no-cache", "--summary-json", str(b)).returncode == 0
    ma, mb = (read_json(p)["components"]["ingest"]["metrics"] for p in (a, b))
    assert ma["splits"] == mb["splits"]
    assert abs(ma["splits"]["train"] / 5000 - 0.8) < 0.02


def test_parquet_and_tfrecord_sources(tmp_path):
    df = pd.DataFrame({"x": np.linspace(0, 1, 300), "n": np.arange(300), "color": ["a", "b", "c"] * 100,
                       "label": ["yes", "no", None] * 100})
    (tmp_path / "pq").mkdir()
    df.to_parquet(tmp_path / "pq" / "part.parquet")
    cfg = tiny_config(tmp_path, str(tmp_path / "pq" / "*.parquet"), ingest={"format": "parquet", "max_rejected_fraction": 0.5})
    out = tmp_path / "pq.json"
    proc = kfx("component", "ingest", "-c", str(cfg), "--summary-json", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    c = read_json(out)["components"]["ingest"]
    assert c["metrics"]["read"] == 300 and c["metrics"]["rejected"] == 100  # label None
    assert json.load(open(f"{c['outputs']['examples']}/columns.json"))["columns"] == {
        "x": "float", "n": "int", "color": "string", "label": "string"}

    # The examples just written, read back as a TFRecord source: same rows.
    tf_cfg = tiny_config(tmp_path, f"{c['outputs']['examples']}/Split-*/*.gz", ingest={"format": "tfrecord"})
    out2 = tmp_path / "tfr.json"
    proc = kfx("component", "ingest", "-c", str(tf_cfg), "--summary-json", str(out2))
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = read_json(out2)["components"]["ingest"]["metrics"]
    assert m["read"] == 200 and m["rejected"] == 0


def test_tfds_source(tmp_path):
    import tensorflow_datasets as tfds

    class TinyTfds(tfds.core.GeneratorBasedBuilder):
        """A TFDS builder made here: ingest reads any prepared TFDS dataset by name."""

        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "x": tfds.features.Scalar(np.float32), "label": tfds.features.ClassLabel(names=["a", "b"])}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(80), "test": self._generate_examples(20)}

        def _generate_examples(self, n):
            for i in range(n):
                yield i, {"x": float(i), "label": i % 2}

    TinyTfds(data_dir=str(tmp_path / "tfds")).download_and_prepare()
    # The registered builder lives in this process: run the stage in-process.
    from kfx.pipeline.config import load_config
    from kfx.pipeline.runner import Reporter, run_pipeline

    cfg = load_config(tiny_config(tmp_path, "unused", ingest={"format": "tfds"}),
                      ["ingest.name=tiny_tfds", f"ingest.data_dir={tmp_path / 'tfds'}", "ingest.inputs=[]"])
    import io

    s = run_pipeline(cfg, to_stage="ingest", reporter=Reporter(stream=io.StringIO()))
    assert s["status"] == "succeeded", s["error"]
    m = s["components"]["ingest"]["metrics"]
    assert m["read"] == 100 and m["splits"]["test"] == 20 and m["splits"]["train"] + m["splits"]["eval"] == 80


def test_hand_encoded_examples_equal_protobuf():
    feats = [(b"\x0a\x01a", "int", [1, -5, 300, 2**40]), (b"\x0a\x01b", "float", [1.5, -2.25]),
             (b"\x0a\x01c", "string", [b"x", b"", "é".encode() * 100])]
    ref = tf.train.Example(features=tf.train.Features(feature={
        "a": tf.train.Feature(int64_list=tf.train.Int64List(value=[1, -5, 300, 2**40])),
        "b": tf.train.Feature(float_list=tf.train.FloatList(value=[1.5, -2.25])),
        "c": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"x", b"", "é".encode() * 100]))}))
    assert tf.train.Example.FromString(encode_example(feats)) == ref


@pytest.mark.parametrize("yaml_text, needle", [
    ("name: t\ningest: {format: csv}\n", "needs at least one entry in ingest.inputs"),
    ("name: t\ningest: {format: builtin}\n", "needs ingest.name"),
    ("name: t\ningest: {format: xml, inputs: [{pattern: a}]}\n", "key 'ingest.format'"),
    ("name: t\ningest: {format: csv, inputs: [{pattern: a, splits: {train: -1}}]}\n", "weight -1"),
    ("name: t\ningest: {format: csv, inputs: [{pattern: a}]}\nvalidate: {blok: true}\n", "unknown key 'validate.blok'"),
])
def test_broken_config_is_rejected_naming_the_key(tmp_path, yaml_text, needle):
    p = tmp_path / "c.yaml"
    p.write_text(yaml_text)
    out = tmp_path / "s.json"
    proc = kfx("run", "-c", str(p), "--summary-json", str(out))
    assert proc.returncode == 2
    assert needle in proc.stderr
    assert read_json(out)["status"] == "failed" and needle in read_json(out)["error"]


def test_missing_source_is_a_clear_error(tmp_path):
    cfg = tiny_config(tmp_path, str(tmp_path / "nothing" / "*.csv"))
    proc = kfx("run", "-c", str(cfg), "--to", "ingest")
    assert proc.returncode == 1
    assert "matches no file" in proc.stderr and "nothing/*.csv" in proc.stderr
