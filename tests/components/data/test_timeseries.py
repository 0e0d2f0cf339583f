"""Time-series ingest and validate on a tiny CSV made here: two daily series (a noisy sine with a
trend, 300 points, one with a row out of order and two missing days), a too-short series, a row
with a bad timestamp and one with a bad value. Checks the split order in time with its gap, the
quarantine (file, line, reason), reconciled counts, the windows' contents, and that validate
reports the gap and the out-of-order timestamp.
"""
from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pytest
import yaml

from kfx.components.data.timeseries import assign_splits, fill, windows

LENGTH, HORIZON = 12, 3
START = date(2020, 1, 1)


def series_values(n: int, phase: float, rng) -> np.ndarray:
    t = np.arange(n)
    return 10 + 0.02 * t + 2 * np.sin(2 * np.pi * t / 20 + phase) + rng.normal(0, 0.1, n)


def write_csv(path: Path) -> dict:
    """The CSV and what is in it: line numbers of the planted problems."""
    rng = np.random.default_rng(0)
    lines = ["day,key,value,other"]
    planted = {}
    for key, phase in (("a", 0.0), ("b", 1.0)):
        values = series_values(300, phase, rng)
        rows = [(START + timedelta(days=i), f"{v:.4f}") for i, v in enumerate(values)]
        if key == "a":
            del rows[150:152]  # two missing days: a gap in the daily grid (filled by interpolation)
            rows[40], rows[41] = rows[41], rows[40]  # one row out of time order
        for i, (day, value) in enumerate(rows):
            lines.append(f"{day:%Y-%m-%d},{key},{value},{i % 7}")
            if key == "a" and i == 41:
                planted["out_of_order_line"] = len(lines)
    planted["short_lines"] = []
    for i in range(5):  # too short: 5 points < input_length + horizon
        lines.append(f"{START + timedelta(days=i):%Y-%m-%d},c,{i}.0,1")
        planted["short_lines"].append(len(lines))
    lines.append("2020-13-45,b,1.0,1")
    planted["bad_timestamp_line"] = len(lines)
    lines.append(f"{START + timedelta(days=400):%Y-%m-%d},b,abc,1")
    planted["bad_value_line"] = len(lines)
    path.write_text("\n".join(lines) + "\n")
    planted["rows"] = len(lines) - 1
    return planted


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    from kfx.pipeline.config import load_config
    from kfx.pipeline.runner import run_pipeline

    tmp = tmp_path_factory.mktemp("timeseries")
    planted = write_csv(tmp / "series.csv")
    cfg = {
        "name": "series", "root": str(tmp / "runs"), "max_parallel": 1,
        "beam_args": ["--direct_running_mode=in_memory"],
        "stages": [
            {"name": "ingest", "component": "ingest"},
            {"name": "statistics", "component": "statistics", "inputs": {"examples": "ingest.examples"}},
            {"name": "schema", "component": "schema", "inputs": {"statistics": "statistics.statistics"}},
            {"name": "validate", "component": "validate",
             "inputs": {"statistics": "statistics.statistics", "schema": "schema.schema",
                        "examples": "ingest.examples"}},
        ],
        "ingest": {"inputs": [{"pattern": str(tmp / "series.csv"), "splits": {"train": 1}}],
                   "max_rejected_fraction": 0.05,
                   "timeseries": {"timestamp": "day", "timestamp_format": "%Y-%m-%d", "key": "key",
                                  "values": ["value", "other"], "target": "value", "input_length": LENGTH,
                                  "horizon": HORIZON, "splits": {"train": 6, "eval": 2, "test": 2}}},
        "schema": {"label": "target"},
        "validate": {"block": False},
    }
    path = tmp / "series.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))  # splits are in time order
    summary = run_pipeline(load_config(path))
    assert summary["status"] == "succeeded", summary["error"]
    return {"summary": summary, "planted": planted,
            "outputs": {name: c["outputs"] for name, c in summary["components"].items()}}


def _split(examples: str, split: str) -> dict:
    from kfx.pipeline.artifacts import read_columns
    from kfx.pipeline.artifacts.scoring import read_split

    return read_split(examples, split, read_columns(examples)["columns"]).frame


def test_splits_follow_each_other_in_time_with_a_gap_of_the_horizon(ingested):
    examples = ingested["outputs"]["ingest"]["examples"]
    frames = {s: _split(examples, s) for s in ("train", "eval", "test")}
    assert all(len(f["day"]) > 20 for f in frames.values())
    meta = json.loads(Path(examples, "columns.json").read_text())  # the same keys as a tabular ingest's
    assert meta == {"columns": {"window": "float", "target": "float", "day": "int", "key": "string"},
                    "label": "target", "splits": ["train", "eval", "test"], "text_columns": [], "images": {}}
    day = 86400
    for key in ("a", "b"):
        spans = [(f["day"][f["key"] == key].min(), f["day"][f["key"] == key].max()) for f in frames.values()]
        for (_, last), (first, _) in zip(spans, spans[1:]):
            assert last < first
            assert first - last > HORIZON * day  # the next split's origins start after these targets end
    for earlier, later in (("train", "eval"), ("eval", "test")):
        assert frames[earlier]["day"].max() < frames[later]["day"].min()


def test_windows_hold_raw_history_of_every_channel_and_the_next_values(ingested):
    examples = ingested["outputs"]["ingest"]["examples"]
    frame = _split(examples, "train")
    rows = frame["key"] == "b"
    window, target, origin = frame["window"][rows], frame["target"][rows], frame["day"][rows]
    assert window.shape[1] == LENGTH * 2 and target.shape[1] == HORIZON
    order = np.argsort(origin)
    window, target = window[order].reshape(-1, LENGTH, 2), target[order]
    # consecutive windows (stride 1): the next window's last value is this one's first target
    np.testing.assert_allclose(window[1:, -1, 0], target[:-1, 0], atol=1e-6)
    assert set(np.unique(window[:, :, 1])) <= set(range(7))  # the second channel is `other`


def test_too_short_series_and_unreadable_rows_are_quarantined_with_their_reason(ingested):
    planted = ingested["planted"]
    metrics = ingested["summary"]["components"]["ingest"]["metrics"]
    rejected = [json.loads(line) for line in
                Path(ingested["outputs"]["ingest"]["rejected"], "rejected.jsonl").read_text().splitlines()]
    by_line = {r["line"]: r for r in rejected}
    assert sorted(by_line) == sorted(planted["short_lines"] + [planted["bad_timestamp_line"],
                                                                planted["bad_value_line"]])
    for line in planted["short_lines"]:
        assert "series 'c' has 5 points, fewer than input_length + horizon = 15" in by_line[line]["reason"]
    assert "column 'day': cannot read '2020-13-45' as a timestamp" in by_line[planted["bad_timestamp_line"]]["reason"]
    assert "column 'value': cannot read 'abc' as float" in by_line[planted["bad_value_line"]]["reason"]
    assert all(r["input"].endswith("series.csv") for r in rejected)
    assert metrics["read"] == planted["rows"] == metrics["series_rows"] + metrics["rejected"]
    assert metrics["rejected"] == 7 and metrics["series"] == 2
    assert metrics["rows"] == sum(metrics["splits"].values())


def test_validate_reports_the_gap_and_the_out_of_order_timestamp(ingested):
    anomalies = Path(ingested["outputs"]["validate"]["anomalies"], "anomalies.txt").read_text()
    assert ingested["summary"]["components"]["validate"]["metrics"]["anomalies"] == 2
    assert "Irregular time steps: series 'a': 1 gaps in the 1 days 00:00:00 grid, 2 steps without a row" in anomalies
    assert (f"Non-monotonic timestamps: series 'a': 1 rows earlier than the row before them (first: line "
            f"{ingested['planted']['out_of_order_line']}") in anomalies
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    reasons = []
    for path in Path(ingested["outputs"]["validate"]["anomalies"]).glob("Split-*/SchemaDiff.pb"):
        an = anomalies_pb2.Anomalies.FromString(path.read_bytes())
        reasons += [(r.type, r.short_description) for info in an.anomaly_info.values() for r in info.reason]
    assert sorted(reasons) == [(anomalies_pb2.AnomalyInfo.CUSTOM_VALIDATION, "Irregular time steps"),
                               (anomalies_pb2.AnomalyInfo.CUSTOM_VALIDATION, "Non-monotonic timestamps")]


def test_fill_interpolates_short_gaps_only():
    values = np.array([1.0, np.nan, 3.0, np.nan, np.nan, np.nan, 7.0, np.nan])[:, None]
    filled, count = fill(values, max_gap=2)
    np.testing.assert_allclose(filled[:3, 0], [1, 2, 3])
    assert np.isnan(filled[3:6, 0]).all() and np.isnan(filled[7, 0]) and count == 1


def test_windows_skip_missing_values_and_follow_the_stride():
    values = np.arange(12, dtype=float)[:, None]
    values[6] = np.nan
    assert windows(values, 3, 2, 1).tolist() == [2, 3, 9]  # spans 0-4, 1-5, 7-11 are whole; 6 is missing
    assert windows(np.arange(20, dtype=float)[:, None], 3, 1, 4).tolist() == [2, 6, 10, 14, 18]


def test_assign_splits_cuts_by_time_and_leaves_out_windows_sharing_targets():
    grid = np.arange(100, dtype=np.int64)
    labels, left_out = assign_splits({"s": np.arange(9, 97)}, {"s": grid}, {"train": 8, "eval": 1, "test": 1},
                                     horizon=3)
    got = np.array(labels["s"], dtype=object)
    train, eval_ = np.flatnonzero(got == "train"), np.flatnonzero(got == "eval")
    assert left_out == 6 and eval_.min() - train.max() == 4 and (got[train.max() + 1:eval_.min()] == None).all()  # noqa: E711


@pytest.mark.parametrize("ingest, message", [
    ({"timeseries": {"timestamp": "day", "frequency": "fortnightly"}},
     "key 'ingest.timeseries.frequency': Value error, frequency 'fortnightly' is not a pandas offset alias"),
    ({"timeseries": {"values": ["v"]}}, "ingest.timeseries.timestamp is required"),
    ({"format": "parquet", "timeseries": {"timestamp": "day"}}, "ingest.timeseries reads CSV sources; format is 'parquet'"),
    ({"format": "builtin", "name": "mnist", "inputs": [], "timeseries": {"timestamp": "day"}},
     "built-in 'mnist' is not a CSV dataset"),
    ({"timeseries": {"timestamp": "day", "key": "target"}},
     "target_feature and key are both 'target': the examples' columns need distinct names"),
    ({"timeseries": {"timestamp": "day", "window_feature": "day"}}, "window_feature and timestamp are both 'day'"),
    ({"label": "value", "timeseries": {"timestamp": "day"}}, "ingest.label 'value' is not used with timeseries"),
    ({"hash_key": ["day"], "timeseries": {"timestamp": "day"}}, "ingest.hash_key ('day',) is not used with timeseries"),
])
def test_timeseries_config_mistakes_fail_at_load_naming_the_key(ingest, message):
    from kfx.pipeline.config import ConfigError, config_from_dict

    with pytest.raises(ConfigError) as err:
        config_from_dict({"name": "x", "stages": [{"name": "ingest", "component": "ingest"}],
                          "ingest": {"inputs": [{"pattern": "series.csv"}], **ingest}})
    assert message in str(err.value)


def test_the_co2_builtin_supplies_the_timestamp():
    from kfx.pipeline.config import PROJECT_ROOT, load_config

    assert load_config(PROJECT_ROOT / "pipeline" / "configs" / "co2_lstm.yaml").sections["ingest"].timeseries.input_length == 104


@pytest.mark.parametrize("max_rejected, error", [
    (0.01, "ingest: 40 of 40 rows (100.00%) were rejected, above max_rejected_fraction 1.00%"),
    (1.0, "ingest.timeseries: no window of input_length 12 + horizon 3 fits in the train span"),
])
def test_when_every_row_is_rejected_the_error_and_rejected_jsonl_say_why(tmp_path, max_rejected, error):
    from kfx.pipeline.config import config_from_dict
    from kfx.pipeline.runner import run_pipeline

    sunday = date(2020, 1, 5)
    lines = ["day,key,value"] + [f"2020-01-04,a,{i}" for i in range(20)]  # one timestamp: no step
    lines += [f"{sunday + timedelta(weeks=i):%Y-%m-%d},b,{i}" for i in range(20)]  # all off a W-SAT grid
    (tmp_path / "s.csv").write_text("\n".join(lines) + "\n")
    cfg = config_from_dict({
        "name": "allbad", "root": str(tmp_path / "runs"), "stages": [{"name": "ingest", "component": "ingest"}],
        "ingest": {"inputs": [{"pattern": str(tmp_path / "s.csv"), "splits": {"train": 1}}],
                   "max_rejected_fraction": max_rejected,
                   "timeseries": {"timestamp": "day", "key": "key", "frequency": "W-SAT", "input_length": LENGTH,
                                  "horizon": HORIZON}}})
    summary = run_pipeline(cfg)
    assert summary["status"] == "failed" and error in summary["error"]
    assert ("s.csv line 2: series 'a' has 20 rows but one distinct timestamp (2020-01-04T00:00:00); a series "
            "needs 2 or more") in summary["error"]
    (path,) = (tmp_path / "runs").glob("allbad/ingest/.failed-*/rejected/rejected.jsonl")
    reasons = [json.loads(line)["reason"] for line in path.read_text().splitlines()]
    assert len(reasons) == 40 and reasons[0].startswith("series 'a' has 20 rows but one distinct timestamp")
    assert reasons[20].startswith("timestamp 2020-01-05T00:00:00 is not on the series' grid (W-SAT steps")
