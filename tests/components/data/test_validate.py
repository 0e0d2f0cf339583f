"""validate: schema anomalies and drift stop the run with a message naming the feature."""
from __future__ import annotations

import numpy as np
import pytest
from tensorflow_metadata.proto.v0 import statistics_pb2

from kfx.components.data.validate import js_divergence, linf_distance
from tests.conftest import kfx, read_json, tiny_config, write_tiny_csv


def _run(cfg, out, *extra):
    proc = kfx("run", "-c", str(cfg), "--to", "validate", "--summary-json", str(out), *extra)
    return proc, read_json(out)


def test_drift_and_new_category(tmp_path):
    data = tmp_path / "data" / "part.csv"
    write_tiny_csv(data, rows=1000)
    cfg = tiny_config(tmp_path, str(data))
    proc, first = _run(cfg, tmp_path / "1.json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert first["components"]["validate"]["metrics"]["baseline"] is None

    # Same shape, new sample: no drift against the last validated statistics.
    write_tiny_csv(data, rows=1000, seed=1)
    proc, second = _run(cfg, tmp_path / "2.json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    drift = second["components"]["validate"]["metrics"]["drift"]["train"]
    assert drift["x"] < 0.1 and drift["color"] < 0.1

    # x shifted by three standard deviations.
    write_tiny_csv(data, rows=1000, seed=2, shift=30)
    proc, third = _run(cfg, tmp_path / "3.json")
    assert proc.returncode == 1
    assert third["components"]["validate"]["status"] == "failed"
    assert "Stage 'validate' failed" in third["error"]
    assert "feature 'x' (split train): High drift: Jensen-Shannon divergence" in third["error"]
    assert "'color'" not in third["error"]  # only the shifted feature is named

    # A value outside the frozen schema's domain (the schema of the first run, as users curate it).
    schema_uri = first["components"]["schema"]["outputs"]["schema"]
    write_tiny_csv(data, rows=1000, seed=1, colors=("red", "green", "blue", "purple"))
    proc, fourth = _run(cfg, tmp_path / "4.json", "--set", f"schema.path={schema_uri}/schema.pbtxt",
                        "--set", "validate.categorical_drift_threshold=1")
    assert proc.returncode == 1
    assert "feature 'color' (split train): Unexpected string values: Values outside the domain: 'purple'" in fourth["error"]
    assert "feature 'color'" in proc.stderr


def test_missing_column_and_wrong_type_against_a_curated_schema(tmp_path):
    data = tmp_path / "data" / "part.csv"
    write_tiny_csv(data, rows=300)
    cfg = tiny_config(tmp_path, str(data))
    proc, first = _run(cfg, tmp_path / "1.json")
    assert proc.returncode == 0
    schema = f"{first['components']['schema']['outputs']['schema']}/schema.pbtxt"
    lines = data.read_text().splitlines()
    rows = [l.split(",") for l in lines[1:]]
    # n becomes a string column ("3x"), and a column the schema does not know appears
    data.write_text("\n".join([lines[0] + ",extra"] + [f"{x},{n}x,{c},{y},1" for x, n, c, y in rows]) + "\n")
    proc, s = _run(cfg, tmp_path / "2.json", "--set", f"schema.path={schema}", "--no-cache")
    assert proc.returncode == 1
    assert "feature 'n' (split train): Unexpected data type: Expected INT, observed BYTES" in s["error"]
    assert "feature 'extra' (split train): New column" in s["error"]


def _numeric(values) -> statistics_pb2.FeatureNameStatistics:
    f = statistics_pb2.FeatureNameStatistics(type=statistics_pb2.FeatureNameStatistics.FLOAT)
    h = f.num_stats.histograms.add(type=statistics_pb2.Histogram.QUANTILES)
    qs = np.quantile(values, np.linspace(0, 1, 11))
    for lo, hi in zip(qs[:-1], qs[1:]):
        h.buckets.add(low_value=lo, high_value=hi, sample_count=len(values) / 10)
    return f


def _categorical(counts: dict) -> statistics_pb2.FeatureNameStatistics:
    f = statistics_pb2.FeatureNameStatistics(type=statistics_pb2.FeatureNameStatistics.STRING)
    for i, (k, v) in enumerate(counts.items()):
        f.string_stats.rank_histogram.buckets.add(low_rank=i, high_rank=i, label=k, sample_count=v)
    return f


def test_distances():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, 5000), rng.normal(0, 1, 5000)
    assert js_divergence(_numeric(a), _numeric(a)) < 1e-9
    assert js_divergence(_numeric(a), _numeric(b)) < 0.02
    assert js_divergence(_numeric(a), _numeric(b + 10)) > 0.99  # disjoint supports
    zeros = np.concatenate([np.zeros(900), rng.exponential(1000, 100)])  # point mass, like capital-gain
    assert js_divergence(_numeric(zeros), _numeric(zeros)) < 1e-9
    assert linf_distance(_categorical({"a": 50, "b": 50}), _categorical({"a": 80, "b": 20})) == pytest.approx(0.3)
    assert linf_distance(_categorical({"a": 10}), _categorical({"b": 10})) == 1.0


def _run_in_process(cfg_path, *overrides):
    """ingest..validate in this process (the runner of `kfx run`); returns the run summary."""
    import io

    from kfx.pipeline.config import load_config
    from kfx.pipeline.runner import Reporter, run_pipeline

    return run_pipeline(load_config(cfg_path, list(overrides)), to_stage="validate",
                        reporter=Reporter(stream=io.StringIO()))


def test_new_category_in_eval_against_the_schema_inferred_from_train(tmp_path):
    """No curated schema: the schema stage infers color's domain from train, and a category
    that only the eval data has stops validate, naming the feature, the split and the value."""
    from kfx.pipeline.artifacts import load_schema, string_domain

    write_tiny_csv(tmp_path / "train.csv", rows=300)
    write_tiny_csv(tmp_path / "eval.csv", rows=100, seed=1, colors=("red", "green", "blue", "purple"))
    cfg = tiny_config(tmp_path, "unused", ingest={"inputs": [
        {"pattern": str(tmp_path / "train.csv"), "splits": {"train": 1}},
        {"pattern": str(tmp_path / "eval.csv"), "splits": {"eval": 1}}]})
    summary = _run_in_process(cfg)
    assert summary["status"] == "failed"
    schema = summary["components"]["schema"]
    assert schema["status"] == "succeeded" and schema["metrics"]["source"] == "inferred from train statistics"
    inferred = load_schema(schema["outputs"]["schema"])
    color = next(f for f in inferred.feature if f.name == "color")
    assert list(string_domain(inferred, color)) == ["blue", "green", "red"]
    assert summary["components"]["validate"]["status"] == "failed"
    error = summary["components"]["validate"]["error"]
    assert "validate: 1 blocking anomaly: feature 'color' (split eval): Unexpected string values: " \
           "Values outside the domain: 'purple' (25); the domain has 3 values." in error
    assert "split train" not in error


def test_categorical_drift_end_to_end_with_a_per_feature_comparator(tmp_path):
    """Run 1 validates balanced colors; run 2 sees red at 60 % (L-infinity 0.6 - 1/3), with the schema
    inferred again (same domain: no schema anomaly). The default categorical threshold is off (1),
    so only color's own comparator (validate.feature_thresholds) can stop it, and it does."""
    data = tmp_path / "data" / "part.csv"
    write_tiny_csv(data, rows=600)
    cfg = tiny_config(tmp_path, str(data), ingest={"inputs": [{"pattern": str(data), "splits": {"train": 1}}]},
                      validate={"categorical_drift_threshold": 1.0, "feature_thresholds": {"color": 0.2}})
    first = _run_in_process(cfg)
    assert first["status"] == "succeeded", first["error"]
    assert first["components"]["validate"]["metrics"]["baseline"] is None

    write_tiny_csv(data, rows=600, seed=1, colors=("red", "red", "red", "green", "blue"))
    second = _run_in_process(cfg)
    assert second["status"] == "failed"
    assert second["components"]["schema"]["status"] == "succeeded"  # inferred again from the drifted data
    assert second["components"]["validate"]["metrics"] == {}  # failed: nothing committed
    error = second["components"]["validate"]["error"]
    assert "validate: 1 blocking anomaly: feature 'color' (split train): High drift: L-infinity distance " \
           "0.2667 from the last validated data is above the threshold 0.2." in error
    assert "Unexpected string values" not in error and "'x'" not in error

