"""transform: Beam analyzers give the numbers numpy gives, the Keras preprocessing built from them
behaves (OOV, missing values, buckets), materialisation matches it, and bad configs fail clearly."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.models import tiny_pipeline as tiny



@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("transform")
    return tiny.build(tmp, to_stage="transform")


def _train_rows(examples: str) -> dict[str, list]:
    """Every train value per feature (None when absent), read independently of the transform."""
    import tensorflow as tf

    from kfx.components.training.data import split_files

    rows: dict[str, list] = {c: [] for c in tiny.COLUMNS}
    for rec in tf.data.TFRecordDataset(split_files(examples, "train"), compression_type="GZIP"):
        ex = tf.train.Example.FromString(rec.numpy())
        for c in tiny.COLUMNS:
            f = ex.features.feature.get(c)
            kind = f.WhichOneof("kind") if f is not None else None
            rows[c].append(getattr(f, kind).value[0] if kind and getattr(f, kind).value else None)
    return rows


def test_analyzers_match_numpy_on_the_train_split(built):
    from kfx.models.preprocess import ANALYZERS_FILE, load_transform

    graph = built["outputs"]["transform"]["transform_graph"]
    spec = load_transform(graph)
    report = json.loads(Path(graph, ANALYZERS_FILE).read_text())
    rows = _train_rows(built["outputs"]["ingest"]["examples"])
    assert spec["train_rows"] == report["rows"] == len(rows["age"]) == built["components"]["ingest"]["metrics"]["splits"]["train"]

    by_output = {t["output"]: t for t in spec["transforms"]}
    age = np.array(rows["age"], dtype=np.float64)
    assert by_output["age__normalize"]["state"]["mean"] == pytest.approx(age.mean(), rel=1e-9)
    assert by_output["age__normalize"]["state"]["variance"] == pytest.approx(age.var(), rel=1e-9)
    income = np.log1p(np.array(rows["income_k"], dtype=np.float64))
    assert by_output["income_k"]["state"] == pytest.approx({"mean": income.mean(), "variance": income.var(), "log": True})
    # Quantile boundaries: 4 buckets at the quartiles of age (exact: few distinct values).
    bounds = by_output["age__bucketize"]["state"]["boundaries"]
    assert bounds == sorted(bounds) and 1 <= len(bounds) <= 3
    shares = np.bincount(np.searchsorted(bounds, age, side="right"), minlength=len(bounds) + 1) / len(age)
    assert shares.max() < 0.4, shares
    # Vocabulary: most frequent first; missing city values are counted, not in the vocabulary.
    colors = [c.decode() for c in rows["color"]]
    expected = sorted(set(colors), key=lambda c: (-colors.count(c), c))
    assert by_output["color"]["state"]["vocabulary"] == expected
    assert "" not in by_output["city"]["state"]["vocabulary"]
    assert report["features"]["city"]["missing"] == sum(v is None for v in rows["city"]) > 0
    # Label: classes from the schema domain, sorted; the positive class is the last one.
    task = spec["task"]
    assert task["vocabulary"] == ["neg", "pos"] and task["positive"] == "pos" and task["type"] == "binary"
    assert task["class_counts"] == {c: [v.decode() for v in rows["target"]].count(c) for c in ("neg", "pos")}
    # Defaults by type: hours (int, no override) normalized; strings one-hot with an OOV bucket.
    assert by_output["hours"]["kind"] == "normalize"
    assert spec["outputs"]["color"] == {"kind": "ids", "cardinality": 3 + 1, "encoding": "one_hot"}


def test_preprocessor_maps_unknown_and_missing_values_predictably(built):
    import tensorflow as tf

    from kfx.models.preprocess import load_transform, make_preprocessor, raw_feature_spec

    spec = load_transform(built["outputs"]["transform"]["transform_graph"])
    pre = make_preprocessor(spec)
    vocab = next(t for t in spec["transforms"] if t["output"] == "color")["state"]["vocabulary"]
    ex_full = tf.train.Example()
    for k, v in {"age": 30, "hours": 40}.items():
        ex_full.features.feature[k].int64_list.value.append(v)
    ex_full.features.feature["income_k"].float_list.value.append(10.0)
    ex_full.features.feature["color"].bytes_list.value.append(vocab[0].encode())
    ex_full.features.feature["city"].bytes_list.value.append(b"atlantis")  # never seen
    ex_empty = tf.train.Example()  # every feature missing: transform defaults apply
    parsed = tf.io.parse_example(tf.constant([ex_full.SerializeToString(), ex_empty.SerializeToString()]),
                                 raw_feature_spec(spec))
    out = {k: v.numpy() for k, v in pre(parsed).items()}
    assert out["color"].tolist() == [1, 0]          # index 0 is the OOV bucket
    assert out["city"].tolist() == [0, 0]           # unseen and missing strings -> OOV
    age = next(t for t in spec["transforms"] if t["output"] == "age__normalize")["state"]
    assert out["age__normalize"][0, 0] == pytest.approx((30 - age["mean"]) / np.sqrt(age["variance"]), rel=1e-5)
    # A missing number is parsed as the (rounded) train mean, so it normalizes to ~0.
    assert abs(out["age__normalize"][1, 0]) < 0.1
    assert out["age__normalize"].dtype == np.float32 and out["color"].dtype == np.int64


def test_accumulator_merge_is_order_independent():
    from kfx.components.transform.transform import analyzers, merge_accumulators

    rng = np.random.default_rng(0)
    x = rng.normal(3, 2, 5000)
    c = np.array([b"a", b"b"] * 2500, dtype=object)
    raw = {"x": {"dtype": "float32"}, "c": {"dtype": "string"}}
    transforms = [{"feature": "x", "kind": "bucketize", "output": "x", "options": {"num_buckets": 4, "accuracy": 300}},
                  {"feature": "c", "kind": "one_hot", "output": "c", "options": {}}]
    plan = analyzers(raw, transforms, {"label": "x", "type": "regression"})
    accs = [{"rows": len(i), **{k: a.accumulate(x[i] if a.column == "x" else c[i], i, len(i)) for k, a in plan.items()}}
            for i in np.array_split(np.arange(5000), 7)]
    a = merge_accumulators(accs, plan)
    b = merge_accumulators([merge_accumulators(accs[4:], plan), merge_accumulators(accs[:4], plan)], plan)
    n, mean, m2, lo, hi = a["moments:x"]
    assert a["rows"] == b["rows"] == 5000 and n == 5000 and a["missing:x"] == 0
    assert mean == pytest.approx(x.mean()) and m2 / n == pytest.approx(x.var()) and (lo, hi) == (x.min(), x.max())
    assert b["moments:x"] == pytest.approx(a["moments:x"]) and b["label:x"] == pytest.approx(a["moments:x"])
    assert a["kind:c"] == b["kind:c"] == {b"a": 2500, b"b": 2500}
    # Compacted quantile summary: the median within 2% of rank of the exact one.
    values, weights = a["kind:x"]
    median = values[np.searchsorted(np.cumsum(weights), weights.sum() / 2)]
    assert abs((x < median).mean() - 0.5) < 0.02


def test_materialize_writes_transformed_examples_equal_to_the_preprocessor(built, tmp_path):
    import tensorflow as tf

    from kfx.components.training.data import dataset
    from kfx.models.preprocess import TRANSFORMED_DIR, load_transform, make_preprocessor
    from kfx.pipeline.config import load_config
    from kfx.pipeline.runner import run_pipeline

    cfg_path = tiny.write_config(Path(built["config"]).parent, "materialize.yaml", transform={
        **tiny.config(Path(built["config"]).parent)["transform"], "materialize": True})
    summary = run_pipeline(load_config(cfg_path), only=["transform"])
    assert summary["status"] == "succeeded", summary["error"]
    assert summary["components"]["transform"]["metrics"]["materialized_splits"] == 3
    graph = summary["components"]["transform"]["outputs"]["transform_graph"]
    spec = load_transform(graph)
    files = sorted(tf.io.gfile.glob(f"{graph}/{TRANSFORMED_DIR}/Split-eval/*.gz"))
    assert files
    feature_spec = {k: tf.io.FixedLenFeature([1] if d["kind"] == "dense" else [], tf.float32 if d["kind"] == "dense"
                                             else tf.int64) for k, d in spec["outputs"].items()}
    got = [tf.io.parse_single_example(r, feature_spec) for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]
    ref = [x for x, _ in dataset(built["outputs"]["ingest"]["examples"], "eval", spec, make_preprocessor(spec), 10**6,
                                 cache=False)][0]
    assert len(got) == int(ref["color"].shape[0])
    # Beam may reorder rows: compare as sorted multisets of rows.
    def table(rows):
        return sorted(tuple(float(np.ravel(r[k])[0]) for k in sorted(spec["outputs"])) for r in rows)
    ref_rows = [{k: v[i].numpy() for k, v in ref.items()} for i in range(len(got))]
    assert np.allclose(table(got), table(ref_rows), atol=1e-6)


@pytest.mark.parametrize("transform, message", [
    ({"features": {"weight": {"kinds": ["normalize"]}}}, "feature 'weight' in transform config is not in the schema"),
    ({"features": {"color": {"kinds": ["bucketize"]}}}, "feature 'color' is string; kind 'bucketize' needs a number"),
    ({"exclude": ["target"]}, "'target' is the label"),
    ({"label_vocabulary": ["no", "yes"]}, "label 'target' has values ['neg', 'pos'] outside the label vocabulary"),
    ({"task": "regression"}, "task regression needs a numeric label"),
])
def test_bad_transform_config_fails_naming_the_feature(built, transform, message):
    from kfx.pipeline.config import load_config
    from kfx.pipeline.runner import run_pipeline

    tmp = Path(built["config"]).parent
    summary = run_pipeline(load_config(tiny.write_config(tmp, "bad.yaml", transform=transform)), only=["transform"])
    assert summary["status"] == "failed"
    assert message in summary["components"]["transform"]["error"]


def test_code_version_covers_the_task_modules():
    # transform runs the tasks' plan, label analysis and `complete`: editing them must not reuse a cache.
    from kfx.components.transform.transform import SPEC

    for module in ("kfx.models.tasks", "kfx.models.tasks.base", "kfx.models.tasks.forecast",
                   "kfx.models.tasks.regression", "kfx.models.kinds.window", "kfx.models.kinds.base"):
        assert module in SPEC.code


def test_a_window_shape_that_does_not_match_the_rows_fails_naming_the_feature():
    from kfx.components.transform.transform import KIND, analyzers
    from kfx.pipeline.component import ComponentError

    options = {"length": 4, "channels": 1, "difference": False, "season": None}
    plan = analyzers({"co2": {"dtype": "float32"}}, [{"feature": "co2", "kind": "window", "output": "co2",
                                                     "options": options}], {"label": "y", "type": "regression"})
    window = plan[f"{KIND}:co2"]
    values, row_ids = np.arange(24.0), np.repeat(np.arange(3), 8)  # 3 rows of 8 values: 2 windows of 4 each
    with pytest.raises(ComponentError, match=r"feature 'co2', kind 'window': window_shape \[4, 1\] .* got 8 values a row"):
        window.accumulate(values, row_ids, 3)
    assert window.accumulate(values, np.repeat(np.arange(6), 4), 6)[0][0] == 24


def test_a_schema_image_feature_defaults_to_encoded_image_with_the_schema_shape():
    from tensorflow_metadata.proto.v0 import schema_pb2

    from kfx.components.transform.transform import plan
    from kfx.pipeline.component import ComponentError
    from kfx.pipeline.config_modeling import TransformConfig

    def schema(shape_tag: str | None):
        s = schema_pb2.Schema()
        img = s.feature.add(name="img", type=schema_pb2.BYTES)
        img.image_domain.minimum_supported_image_fraction = 1.0
        if shape_tag:
            img.annotation.tag.append(shape_tag)
        s.feature.add(name="y", type=schema_pb2.INT).annotation.tag.append("label")
        return s

    columns = {"img": "string", "y": "int"}
    raw, transforms, _ = plan(schema("image_shape:8x8x1"), columns, TransformConfig())
    assert [(t["kind"], t["options"]["shape"]) for t in transforms] == [("encoded_image", [8, 8, 1])]
    assert raw["img"]["dtype"] == "string"
    configured = TransformConfig(features={"img": {"kinds": ["encoded_image"], "image_shape": [4, 4, 1]}})
    assert plan(schema("image_shape:*x*x3"), columns, configured)[1][0]["options"]["shape"] == [4, 4, 1]
    for tag, found in ((None, "no image_shape tag"), ("image_shape:*x*x3", r"image_shape \*x\*x3")):
        with pytest.raises(ComponentError, match=rf"feature 'img' is an image .*\({found}\); set "
                                                 r"transform.features.img.image_shape"):
            plan(schema(tag), columns, TransformConfig())
