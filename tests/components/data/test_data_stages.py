"""The data stages end to end on the real Adult data, through the `kfx` CLI as users run it."""
from __future__ import annotations

import glob
import json
import signal
import subprocess
import sys
import time

import pytest
from tensorflow_metadata.proto.v0 import anomalies_pb2, statistics_pb2

from kfx.pipeline.metadata import MetadataStore
from tests.conftest import REPO, kfx, read_json


@pytest.fixture(scope="module")
def adult(tmp_path_factory):
    """One default (multi-processing Beam) run of the Adult pipeline up to validate."""
    root = tmp_path_factory.mktemp("adult") / "runs"
    summary = root.parent / "s1.json"
    proc = kfx("run", "--root", str(root), "--to", "validate", "--run-id", "first",
               "--summary-json", str(summary))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, read_json(summary)


def test_adult_counts_splits_statistics_and_no_anomalies(adult):
    root, s = adult
    assert s["status"] == "succeeded" and s["error"] is None
    assert list(s["components"]) == ["ingest", "statistics", "schema", "validate"]
    ing = s["components"]["ingest"]["metrics"]
    assert ing["read"] == 48_842
    assert ing["rows"] == 48_842 - ing["rejected"]
    assert ing["splits"]["test"] == 16_281
    train, eval_ = ing["splits"]["train"], ing["splits"]["eval"]
    assert train + eval_ == 32_561 - ing["rejected"]
    assert abs(train / (train + eval_) - 0.9) < 0.01

    stats_uri = s["components"]["statistics"]["outputs"]["statistics"]
    for split, n in ing["splits"].items():
        lst = statistics_pb2.DatasetFeatureStatisticsList()
        lst.ParseFromString(open(f"{stats_uri}/Split-{split}/FeatureStats.pb", "rb").read())
        ds = lst.datasets[0]
        assert ds.num_examples == n
        feats = {f.path.step[0]: f for f in ds.features}
        assert len(feats) == 15
        assert 38.0 < feats["age"].num_stats.mean < 39.5
        assert feats["age"].num_stats.min == 17 and feats["age"].num_stats.max == 90
        assert feats["sex"].string_stats.unique == 2
        assert feats["workclass"].string_stats.common_stats.num_missing > 0  # "?" is missing
        assert {v.value for v in feats["income"].string_stats.top_values} == {"<=50K", ">50K"}
    assert "age" in open(f"{stats_uri}/stats.txt").read()

    assert s["components"]["validate"]["metrics"]["anomalies"] == 0
    anomalies_uri = s["components"]["validate"]["outputs"]["anomalies"]
    for split in ing["splits"]:
        an = anomalies_pb2.Anomalies()
        an.ParseFromString(open(f"{anomalies_uri}/Split-{split}/SchemaDiff.pb", "rb").read())
        assert len(an.anomaly_info) == 0


def test_adult_schema_marks_label_and_sensitive_features(adult):
    _, s = adult
    m = s["components"]["schema"]["metrics"]
    assert m["label"] == "income" and sorted(m["sensitive"]) == ["race", "sex"]


def test_second_run_is_fully_cached_then_one_change_reruns_downstream_only(adult, tmp_path):
    root, first = adult
    out = tmp_path / "s2.json"
    assert kfx("run", "--root", str(root), "--to", "validate", "--summary-json", str(out)).returncode == 0
    second = read_json(out)
    assert {c["status"] for c in second["components"].values()} == {"cached"}
    assert second["components"]["statistics"]["outputs"] == first["components"]["statistics"]["outputs"]

    out3 = tmp_path / "s3.json"
    proc = kfx("run", "--root", str(root), "--to", "validate", "--set", "statistics.top_k=5",
               "--summary-json", str(out3))
    assert proc.returncode == 0, proc.stderr[-2000:]
    third = read_json(out3)
    status = {k: c["status"] for k, c in third["components"].items()}
    assert status == {"ingest": "cached", "statistics": "succeeded", "schema": "succeeded",
                      "validate": "succeeded"}
    # The new data is compared with the last validated statistics: identical data, no drift.
    v = third["components"]["validate"]["metrics"]
    assert v["baseline"] == first["components"]["statistics"]["outputs"]["statistics"]
    assert v["anomalies"] == 0 and max(v["drift"]["train"].values()) < 1e-6


def test_runs_list_show_and_lineage(adult):
    root, s = adult
    listed = kfx("runs", "--root", str(root), "list")
    assert listed.returncode == 0 and "first" in listed.stdout
    shown = kfx("runs", "--root", str(root), "show", "first")
    assert json.loads(shown.stdout)["components"]["ingest"]["metrics"]["read"] == 48_842
    assert kfx("runs", "--root", str(root), "show", "nope").returncode == 1
    lineage = kfx("lineage", "--root", str(root), s["components"]["validate"]["outputs"]["anomalies"])
    chain = json.loads(lineage.stdout)
    names = [c["component"] for c in chain]
    assert names[0] == "validate" and names[-1] == "ingest" and set(names[1:3]) == {"statistics", "schema"}
    assert chain[0]["inputs"]["statistics"] == s["components"]["statistics"]["outputs"]["statistics"]


def test_killed_component_leaves_nothing_committed_and_is_redone(tmp_path):
    root = tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, "-m", "kfx.pipeline.cli", "run", "--root", str(root), "--to", "ingest"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 120
    while not glob.glob(f"{root}/adult/ingest/.tmp-*/examples") and time.time() < deadline:
        time.sleep(0.2)
    assert glob.glob(f"{root}/adult/ingest/.tmp-*"), "ingest never started"
    time.sleep(1.0)
    import os

    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    store = MetadataStore(f"sqlite:///{root}/metadata.sqlite")
    assert store.latest_execution("adult", "ingest") is None
    assert not [p for p in glob.glob(f"{root}/adult/ingest/*") if p.rsplit("/", 1)[1].isdigit()]

    out = tmp_path / "s.json"
    assert kfx("run", "--root", str(root), "--to", "ingest", "--summary-json", str(out)).returncode == 0
    again = read_json(out)["components"]["ingest"]
    assert again["status"] == "succeeded" and again["metrics"]["read"] == 48_842
