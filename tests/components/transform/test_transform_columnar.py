"""transform's analyzers over the columnar examples (Parquet shards read as Arrow record batches)
give the transform.json and analyzers.json that the tf.Example path gives on an artifact of the
previous format (no Parquet shards), for a tabular, a text (reviews_lstm.yaml) and an image
(digits_cnn.yaml) pipeline on tiny data; the tabular analyzer pass imports no TensorFlow; a
columnar artifact that lost its shards fails naming the split.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.models import tiny_pipeline as tiny
from tests.pipeline.raw_data import DATA_STAGES, IMAGE, LABEL, TEXT_CLASSES, write_images, write_reviews

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[3]
CONFIGS = REPO / "pipeline" / "configs"


def _text(tmp: Path) -> Path:
    """reviews_lstm.yaml's transform over a few hundred synthetic reviews (CSV)."""
    write_reviews(tmp / "reviews.csv", rows=200)
    cfg = yaml.safe_load((CONFIGS / "reviews_lstm.yaml").read_text())
    cfg["transform"]["features"]["text"]["min_frequency"] = 1
    return _config(tmp, cfg, {"format": "csv", "inputs": [{"pattern": str(tmp / "reviews.csv"),
                                                           "splits": {"train": 8, "eval": 2}}],
                              "label": "category", "label_values": TEXT_CLASSES, "text_columns": ["text"]})


def _image(tmp: Path) -> Path:
    """digits_cnn.yaml's transform over 8x8 PNG/JPEG stripes; pixel scaling analyzed (no image_scale)."""
    write_images(tmp / "images.tfrecord", n=40)
    cfg = yaml.safe_load((CONFIGS / "digits_cnn.yaml").read_text())
    cfg["transform"]["features"][IMAGE].pop("image_scale")
    return _config(tmp, cfg, {"format": "tfrecord", "label": LABEL, "image_columns": [IMAGE],
                              "max_rejected_fraction": 0.05,
                              "inputs": [{"pattern": str(tmp / "images.tfrecord"), "splits": {"train": 1}}]})


def _config(tmp: Path, cfg: dict, ingest: dict) -> Path:
    """`cfg` cut to the data stages and transform, over `ingest`, written under tmp."""
    stages = {s["name"] for s in DATA_STAGES}
    cfg = {k: v for k, v in cfg.items() if k in ("name", "schema", "transform") or k not in stages | {
        "stages", "tune", "train", "evaluate", "infra_validate", "push", "validate"}}
    cfg.update(root=str(tmp / "runs"), max_parallel=1, stages=DATA_STAGES, ingest=ingest,
               beam_args=["--direct_running_mode=in_memory"])
    path = tmp / "pipeline.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _tabular(tmp: Path) -> Path:
    """The tiny tabular pipeline (ints, floats, strings with missing values, bucketize, log)."""
    tiny.write_csv(tmp / "train.csv", 400, seed=1)
    tiny.write_csv(tmp / "test.csv", 100, seed=2)
    cfg = tiny.config(tmp)
    return _config(tmp, cfg, cfg["ingest"])


def _old_format(examples: str, dest: Path, keep_flag: bool = False) -> str:
    """A copy of the examples artifact as the previous format wrote it: no Parquet shards (and,
    unless `keep_flag`, no columnar flag in columns.json)."""
    shutil.copytree(examples, dest)
    for shard in dest.glob("Split-*/part-*.parquet"):
        shard.unlink()
    meta = json.loads((dest / "columns.json").read_text())
    if not keep_flag:
        meta.pop("columnar")
    (dest / "columns.json").write_text(json.dumps(meta))
    return str(dest)


def _transform(config: Path, examples: str, schema: str, out: Path) -> Path:
    """Run the transform component alone on `examples`; returns its transform_graph directory."""
    from kfx.components.transform import transform
    from kfx.pipeline.component import Context
    from kfx.pipeline.config import load_config

    cfg = load_config(config)
    graph = out / transform.TRANSFORM_GRAPH
    graph.mkdir(parents=True)
    ctx = Context(pipeline=cfg, config=cfg.stage("transform"), inputs={"examples": examples, "schema": schema},
                  outputs={transform.TRANSFORM_GRAPH: str(graph)}, run_id="r", execution_id=1)
    transform.run(ctx)
    return graph


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """kind -> (columnar run's outputs, old-format transform_graph, config path), built on first use."""
    built: dict[str, tuple] = {}

    def get(kind: str) -> tuple:
        if kind not in built:
            built[kind] = _build(tmp_path_factory.mktemp(kind), {"tabular": _tabular, "text": _text, "image": _image}[kind])
        return built[kind]

    return get


def _build(tmp: Path, write) -> tuple:
    from kfx.pipeline.config import load_config
    from kfx.pipeline.runner import run_pipeline

    config = write(tmp)
    summary = run_pipeline(load_config(config), to_stage="transform")
    assert summary["status"] == "succeeded", summary["error"]
    outs = {k: v["outputs"] for k, v in summary["components"].items()}
    examples = outs["ingest"]["examples"]
    assert json.loads(Path(examples, "columns.json").read_text())["columnar"]
    assert list(Path(examples).glob("Split-train/part-*.parquet"))
    old = _old_format(examples, tmp / "old_examples")
    return outs, _transform(config, old, outs["schema"]["schema"], tmp / "old"), config


def _assert_same(a, b, where: str = "") -> None:
    """Equal JSON; floats within 1e-9 (a mean merged over other batch boundaries differs in the last bits)."""
    if isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12), where
    elif isinstance(a, dict):
        assert sorted(a) == sorted(b), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.mark.parametrize("kind", ["tabular", "text", "image"])
def test_columnar_analyzers_equal_the_tf_example_path(runs, kind):
    from kfx.models.preprocess import ANALYZERS_FILE, TRANSFORM_FILE

    outs, old_graph, _ = runs(kind)
    new_graph = Path(outs["transform"]["transform_graph"])
    for name in (TRANSFORM_FILE, ANALYZERS_FILE):
        new, old = (json.loads(Path(g, name).read_text()) for g in (new_graph, old_graph))
        _assert_same(new, old, name)
    spec = json.loads((new_graph / TRANSFORM_FILE).read_text())
    assert spec["train_rows"] > 0 and spec["transforms"]
    state = spec["transforms"][0]["state"]
    assert state.get("vocabulary") or state.get("std") or state.get("mean") is not None


def test_tabular_analyzer_pass_on_parquet_imports_no_tensorflow(runs):
    """(Text's tokenizer and encoded_image's decoder are TensorFlow ops: those kinds import it.)"""
    outs, _, config = runs("tabular")
    # The driver's plan (schema parsed from its text), then what a Beam worker runs on each shard.
    code = f"""
import json, sys
from pathlib import Path
from kfx.components.transform import transform
from kfx.pipeline.artifacts import SCHEMA_FILE, parse_schema_text, split_dir
from kfx.pipeline.artifacts.examples import shards
from kfx.pipeline.config import load_config
examples, schema = {outs["ingest"]["examples"]!r}, {outs["schema"]["schema"]!r}
columns = json.loads(Path(examples, "columns.json").read_text())["columns"]
plan = transform.plan(parse_schema_text(Path(schema, SCHEMA_FILE).read_text(), schema), columns,
                      load_config({str(config)!r}).stage("transform"))
accs = [a for s in shards(split_dir(examples, "train")) for a in transform.analyze_file(s, *plan, 64)]
print(sum(a["rows"] for a in accs), "tensorflow" in sys.modules)
"""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    rows = json.loads(Path(outs["transform"]["transform_graph"], "transform.json").read_text())["train_rows"]
    assert out.stdout.split() == [str(rows), "False"]


def test_a_columnar_artifact_without_train_shards_fails_naming_the_split(runs, tmp_path):
    from kfx.pipeline.component import ComponentError

    outs, _, config = runs("tabular")
    broken = _old_format(outs["ingest"]["examples"], tmp_path / "broken", keep_flag=True)
    with pytest.raises(ComponentError, match="no files in split 'train'"):
        _transform(config, broken, outs["schema"]["schema"], tmp_path / "out")


def test_parquet_batches_made_dense_equal_parse_example_and_bad_rows_fail(tmp_path):
    """What materialization and the user's preprocessing get: defaults for missing values, shaped
    features, the label required; a wrong value count names the feature."""
    import numpy as np
    import tensorflow as tf

    from kfx.components.transform.transform import parsed_batches
    from kfx.pipeline.artifacts import split_dir
    from kfx.pipeline.artifacts.examples import shards, tfrecord_files
    from kfx.pipeline.component import ComponentError
    from tests.components.evaluation.evaluation_fixtures import write_both_formats

    columns = {"n": "int", "x": "float", "s": "string", "y": "string"}
    rows = [{"n": [3], "x": [1.0, 2.0], "s": [b"a"], "y": [b"pos"]}, {"n": None, "x": None, "s": None, "y": [b"neg"]},
            {"n": [-1], "x": [0.5, 0.25], "s": [b"\xff"], "y": [b"pos"]}]
    write_both_formats(tmp_path, columns, rows, "train")
    spec = {"n": tf.io.FixedLenFeature([], tf.int64, 7), "x": tf.io.FixedLenFeature([2], tf.float32, [9.0, 9.0]),
            "s": tf.io.FixedLenFeature([], tf.string, ""), "y": tf.io.FixedLenFeature([], tf.string)}
    (parquet,), (tfrecord,) = shards(split_dir(str(tmp_path), "train")), tfrecord_files(str(tmp_path), "train")
    got = [b for path in (parquet, tfrecord) for b in parsed_batches(path, spec, 2)]
    assert [n for n, _ in got] == [2, 1, 2, 1]
    for (_, a), (_, b) in ((got[0], got[2]), (got[1], got[3])):
        for name in spec:
            assert a[name].dtype == b[name].dtype and np.array_equal(a[name].numpy(), b[name].numpy()), name
    assert got[0][1]["n"].numpy().tolist() == [3, 7] and got[0][1]["x"].numpy().tolist() == [[1, 2], [9, 9]]
    with pytest.raises(ComponentError, match="feature 'x' has 2 values in a row .* it needs 1"):
        list(parsed_batches(parquet, {**spec, "x": tf.io.FixedLenFeature([], tf.float32, 0.0)}, 2))
    with pytest.raises(ComponentError, match="feature 'n' has 0 values"):
        list(parsed_batches(parquet, {**spec, "n": tf.io.FixedLenFeature([], tf.int64)}, 2))


def test_materialize_keeps_every_row_and_writes_a_split_without_rows_empty(runs, tmp_path):
    """ingest writes no shard for a split without rows: materialization writes that split empty
    (it used to fail with "no files in split"), and each other split keeps all its Parquet rows."""
    import pyarrow.parquet as pq
    import tensorflow as tf

    from kfx.models.preprocess import TRANSFORMED_DIR

    outs, _, config = runs("tabular")
    examples = tmp_path / "examples"
    shutil.copytree(outs["ingest"]["examples"], examples)
    meta = json.loads((examples / "columns.json").read_text())
    empty = [s for s in meta["splits"] if s != "train"][0]
    for shard in (examples / f"Split-{empty}").iterdir():
        shard.unlink()
    cfg = yaml.safe_load(config.read_text())
    cfg["transform"]["materialize"] = True
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(cfg))
    graph = _transform(tmp_path / "pipeline.yaml", str(examples), outs["schema"]["schema"], tmp_path / "out")
    for split in meta["splits"]:
        files = tf.io.gfile.glob(f"{graph}/{TRANSFORMED_DIR}/Split-{split}/*.gz")
        written = sum(1 for _ in tf.data.TFRecordDataset(files, compression_type="GZIP"))
        parquet_rows = sum(pq.read_metadata(f).num_rows for f in (examples / f"Split-{split}").glob("part-*.parquet"))
        assert written == parquet_rows, split
        assert written > 0 or split == empty, split
