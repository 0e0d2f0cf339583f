"""The data stages run unchanged on Beam's portable runner, as on Dataflow, Flink or Spark.

Those runners execute Python in SDK worker processes that share nothing with the launching
process. Here `kfx run` gets `--runner=PortableRunner --job_endpoint=embed
--environment_type=EXTERNAL --environment_config=localhost:PORT` through `--set beam_args=[...]`,
against a worker pool this test starts (`apache_beam.runners.worker.worker_pool_main`, the
virtualenv's bin first on PATH: it starts workers with the `python` found there). ingest,
statistics, schema and transform must then write what the DirectRunner writes: the same rows in
the same Parquet shards and tf.Example records, the same rejected rows and counts, the same
statistics protos, schema, transform state and materialized examples. Unpicklable functions,
state captured from the launching process and files only the launcher sees would fail or change
the outputs: the pool runs in a private mount namespace where the folder of the config and of the
user's preprocessing module (which transform.materialize runs on the workers) is an empty tmpfs,
while data and artifacts stay on the "shared storage" both see.

The DirectRunner reference runs in this process under the artifact audit hook
(tests/pipeline/artifact_audit.py): no kfx code may open or list an artifact path itself.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import FAST_BEAM, kfx, read_json, write_tiny_csv
from tests.pipeline.artifact_audit import artifact_audit
from tests.pipeline.raw_data import DATA_STAGES

NAME = "portable"
POOL_START_SECONDS = 60
RUN_TIMEOUT = 300
BAD_LINES = ["12.5,3,red", "not-a-number,2,blue,yes"]  # too few columns; a float column that is not one
# The user's preprocessing (materialized by transform on the workers) and a module it imports from its folder.
FEATURES = """import tensorflow as tf

import scale


def preprocess(features):
    out = dict(features)
    out["x_scaled"] = tf.cast(features["x"], tf.float32) * scale.FACTOR
    return out
"""
SCALE = "FACTOR = 3.0\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _can_hide() -> bool:
    """Whether this process may start one in a private mount namespace (root, or CAP_SYS_ADMIN)."""
    try:
        return subprocess.run(["unshare", "--mount", "--propagation", "private", "true"],
                              capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@contextlib.contextmanager
def worker_pool(hidden: Path, log: Path):
    """A Beam SDK worker pool on a free loopback port, in its own process group, that cannot see
    `hidden` (an empty tmpfs over it in a private mount namespace, when allowed): files only the
    launching machine has. Yields (port, pid, hidden?); the pool and every SDK worker it started
    are SIGKILLed at the end, whatever happened."""
    port = _free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    argv = [sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main", f"--service_port={port}"]
    hide = _can_hide()
    if hide:
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                'mount -t tmpfs kfx-hidden "$0" && exec "$@"', str(hidden), *argv]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + POOL_START_SECONDS
        while True:
            assert proc.poll() is None, f"the worker pool exited with {proc.returncode}: {log.read_text()[-2000:]}"
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline, f"the worker pool did not listen within {POOL_START_SECONDS} s"
            time.sleep(0.2)
        yield port, proc.pid, hide
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the pool and its SDK workers (same process group)
        proc.wait(10)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The data stages under the DirectRunner (in this process, audited) and the portable runner:
    (direct summary, portable summary, Audit, pool log, launcher folder hidden from the workers?)."""
    from kfx.pipeline.config import load_config
    from kfx.pipeline.runner import run_pipeline

    tmp = tmp_path_factory.mktemp("portable")
    launcher, shared = tmp / "launcher", tmp / "shared"  # the config and the user's code; data and artifacts
    (shared / "data").mkdir(parents=True)
    launcher.mkdir()
    write_tiny_csv(shared / "data" / "a.csv", rows=300, seed=1)
    write_tiny_csv(shared / "data" / "b.csv", rows=300, seed=2)
    with open(shared / "data" / "a.csv", "a") as f:  # quarantined rows, on the columnar path
        f.write("\n".join(BAD_LINES) + "\n")
    with open(shared / "data" / "b.csv", "a") as f:  # a quoted field: this file takes the per-row path
        f.write('51.5,1,"dark, blue",yes\n')
    (launcher / "features.py").write_text(FEATURES)
    (launcher / "scale.py").write_text(SCALE)
    cfg = {"name": NAME, "root": str(shared / "direct"), "beam_args": FAST_BEAM, "stages": DATA_STAGES,
           "ingest": {"format": "csv", "inputs": [{"pattern": str(shared / "data" / "*.csv"),
                                                   "splits": {"train": 3, "eval": 1}}],
                      "label": "label", "chunk_rows": 100},
           "schema": {"label": "label"},
           "transform": {"preprocessing": "features.py:preprocess", "materialize": True}}
    path = launcher / "portable.yaml"
    path.write_text(yaml.safe_dump(cfg))

    log = tmp / "worker_pool.log"
    with worker_pool(launcher, log) as (port, pid, hidden):
        if hidden:  # the pool's view of the launcher's folder is empty
            assert not Path(f"/proc/{pid}/root{launcher}/features.py").exists()
        with artifact_audit(f"{shared}/direct/{NAME}") as audit:
            direct = run_pipeline(load_config(path), to_stage="transform")
        assert direct["status"] == "succeeded", direct["error"]
        beam_args = ["--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=EXTERNAL",
                     f"--environment_config=localhost:{port}", "--default_sdk_harness_log_level=ERROR"]
        out = tmp / "portable.json"
        proc = kfx("run", "-c", str(path), "--root", str(shared / "portable"), "--to", "transform",
                   "--set", f"beam_args=[{', '.join(beam_args)}]", "--summary-json", str(out), timeout=RUN_TIMEOUT)
        assert proc.returncode == 0, proc.stderr[-3000:] + log.read_text()[-2000:]
    return direct, read_json(out), audit, log.read_text(), hidden


def _outputs(summary: dict, stage: str, name: str) -> Path:
    return Path(summary["components"][stage]["outputs"][name])


def test_the_portable_run_really_ran_in_the_worker_pool(runs):
    _, portable, _, log, _ = runs
    assert portable["status"] == "succeeded"
    # One SDK worker per Beam pipeline (ingest, statistics, transform's analysis and its
    # materialization), started by the pool with the `python` on its PATH: the virtualenv's.
    assert log.count("Starting worker with command") >= 4, log[-2000:]


def test_examples_rows_shards_and_rejections_equal_the_direct_runner(runs):
    import pyarrow.parquet as pq
    import tensorflow as tf

    from kfx.pipeline.artifacts import examples as columnar

    direct, portable, _, _, _ = runs
    assert portable["components"]["ingest"]["metrics"] == direct["components"]["ingest"]["metrics"]
    metrics = direct["components"]["ingest"]["metrics"]
    assert metrics["read"] == 603 and metrics["rejected"] == len(BAD_LINES) and metrics["rows"] == 601
    d, p = (_outputs(s, "ingest", "examples") for s in (direct, portable))
    for name in ("columns.json", "counts.json"):
        assert read_json(p / name) == read_json(d / name), name
    rejected = [sorted((_outputs(s, "ingest", "rejected") / "rejected.jsonl").read_text().splitlines())
                for s in (direct, portable)]
    assert rejected[1] == rejected[0] and [json.loads(r)["line"] for r in rejected[0]] == [302, 303]
    for split in ("train", "eval"):
        shards = [sorted(x.name for x in (root / f"Split-{split}").glob("part-*.parquet")) for root in (d, p)]
        assert shards[1] == shards[0] and len(shards[0]) >= 3, shards  # a.csv: one range; b.csv: chunks of 100 rows
        for name in shards[0]:
            assert pq.read_table(p / f"Split-{split}" / name).equals(pq.read_table(d / f"Split-{split}" / name)), name
        records = [sorted(r for f in columnar.tfrecord_files(str(root), split)
                          for r in tf.data.TFRecordDataset(f, compression_type="GZIP").as_numpy_iterator())
                   for root in (d, p)]
        assert records[1] == records[0] and len(records[0]) == metrics["splits"][split]


def test_statistics_schema_and_transform_equal_the_direct_runner(runs):
    from tensorflow_metadata.proto.v0 import statistics_pb2 as st

    direct, portable, _, _, _ = runs
    d, p = (_outputs(s, "statistics", "statistics") for s in (direct, portable))
    for split in ("train", "eval"):
        stats = [st.DatasetFeatureStatisticsList.FromString((root / f"Split-{split}" / "FeatureStats.pb").read_bytes())
                 for root in (d, p)]
        assert stats[1] == stats[0], split
        assert stats[0].datasets[0].num_examples == direct["components"]["ingest"]["metrics"]["splits"][split]
    assert (p / "stats.txt").read_text() == (d / "stats.txt").read_text()
    schema = [(_outputs(s, "schema", "schema") / "schema.pbtxt").read_text() for s in (direct, portable)]
    assert schema[1] == schema[0]
    for name in ("transform.json", "analyzers.json"):
        got, want = (read_json(_outputs(s, "transform", "transform_graph") / name) for s in (portable, direct))
        assert got == want, name
    assert portable["components"]["transform"]["metrics"] == direct["components"]["transform"]["metrics"]


def test_the_users_preprocessing_ran_on_workers_that_cannot_see_its_files(runs):
    """transform.materialize runs the user's function on the SDK workers: it travels pickled by
    value (user_code.pickle_by_value), as on a cluster where the config's folder is not there."""
    import tensorflow as tf

    from kfx.pipeline.artifacts.examples import TFRECORD_GLOB

    def rows(summary: dict, split: str) -> list[dict]:
        """The materialized rows as {feature: values}, sorted (a tf.Example's map order is not fixed)."""
        root = _outputs(summary, "transform", "transform_graph") / "transformed_examples" / f"Split-{split}"
        out = []
        for f in sorted(root.glob(TFRECORD_GLOB)):
            for r in tf.data.TFRecordDataset(str(f), compression_type="GZIP").as_numpy_iterator():
                feats = tf.train.Example.FromString(r).features.feature
                out.append({k: list(getattr(v, v.WhichOneof("kind")).value) for k, v in sorted(feats.items())})
        return sorted(out, key=repr)

    direct, portable, _, _, hidden = runs
    for split in ("train", "eval"):
        got, want = rows(portable, split), rows(direct, split)
        assert got == want, split
        assert len(want) == direct["components"]["ingest"]["metrics"]["splits"][split]
    assert all(r["x_scaled"][0] == pytest.approx(3.0 * r["x"][0]) for r in want)
    if not hidden:
        pytest.skip("no private mount namespace here (needs root): the workers could see the user's files")


def test_no_kfx_code_touched_an_artifact_path_outside_the_uri_layers(runs):
    _, _, audit, _, _ = runs
    assert audit.violations == []
    # The hook was live: it saw Beam write the artifacts' files (and attributed them to Beam).
    assert audit.seen.get("/apache_beam/", 0) > 0 and "kfx" not in audit.seen, audit.seen
    print(f"audited file operations under the artifact root, by caller: {audit.seen}")
