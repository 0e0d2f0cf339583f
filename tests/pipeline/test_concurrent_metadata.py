"""Several writers on one metadata store: two `kfx run` processes started together on one root,
on the default SQLite store and on a real PostgreSQL server (tests/pipeline/postgres.py).

Both runs share the toy graph of tests/pipeline/toy_writer.py and meet at its first stage, so they
really overlap: the first uses the cache (and so may reuse what the second has just committed),
the second runs everything and fails on purpose at depth 3. Afterwards the store must hold exactly
the executions both runs report, each committed one with all its events, every event pointing at
an existing artifact, and every artifact's files complete and written by its producer.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from kfx.pipeline.metadata import MetadataError, MetadataStore, artifacts, events, executions, runs
from tests.pipeline.postgres import postgres_server
from tests.pipeline.toy_writer import FILES

REPO = Path(__file__).resolve().parents[2]
BRANCHES = 6  # a -> b0..b5 -> c0..c5: 13 stages a run, four at a time
FAIL_DEPTH = 3  # the second run's c stages fail


def _config(tmp: Path, metadata_url: str | None) -> Path:
    stages = [{"name": "a", "component": "tests.pipeline.toy_writer"}]
    for i in range(BRANCHES):
        stages.append({"name": f"b{i}", "component": "tests.pipeline.toy_writer", "inputs": {"src": "a.out"}})
        stages.append({"name": f"c{i}", "component": "tests.pipeline.toy_writer", "inputs": {"src": f"b{i}.out"}})
    cfg = {"name": "toy", "root": str(tmp / "root"), "max_parallel": 4, "stages": stages}
    if metadata_url:
        cfg["metadata_url"] = metadata_url
    path = tmp / "toy.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _start(tmp: Path, config: Path, i: int, no_cache: bool, **env: str) -> subprocess.Popen:
    """Start `kfx run` number i (summary in summary{i}.json); all runs meet at the first stage."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "KFX_TOY_BARRIER": f"{tmp / 'barrier'}:2", **env}
    return subprocess.Popen(
        [sys.executable, "-m", "kfx.pipeline.cli", "run", "-c", str(config),
         "--summary-json", str(tmp / f"summary{i}.json"), *(["--no-cache"] if no_cache else [])],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@contextlib.contextmanager
def _reaped(procs: list[subprocess.Popen]) -> Iterator[None]:
    """Whatever happens in the block, no run is left running after it."""
    try:
        yield
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=60)


def _run_together(tmp: Path, metadata_url: str | None = None) -> list[dict]:
    """Start both `kfx run` processes at once; their summaries (cached run first)."""
    config = _config(tmp, metadata_url)
    (tmp / "barrier").mkdir()
    procs = [_start(tmp, config, 0, False), _start(tmp, config, 1, True, KFX_TOY_FAIL_DEPTH=str(FAIL_DEPTH))]
    with _reaped(procs):
        outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 1], outputs
    return [json.loads((tmp / f"summary{i}.json").read_text()) for i in range(2)]


def _rows(store: MetadataStore, table: sa.Table) -> list[dict]:
    with store.engine.connect() as c:
        return [dict(r._mapping) for r in c.execute(sa.select(table))]


def _lines(uri: str) -> list[str]:
    texts = [Path(uri, f).read_text() for f in FILES]
    assert len(set(texts)) == 1, f"{uri}: its files differ (half-written): {texts}"
    return texts[0].splitlines()


def _assert_consistent(store: MetadataStore, summaries: list[dict], killed: int = 0) -> None:
    """The store holds exactly what the finished runs report (plus `killed` runs that never
    finished), and its lineage matches the files."""
    exs = {e["id"]: e for e in _rows(store, executions)}
    arts = {a["id"]: a for a in _rows(store, artifacts)}
    evs = _rows(store, events)
    # No lost or duplicated executions: the store's ids and statuses per run are the reported ones.
    reported = {}
    for s in summaries:
        for name, c in s["components"].items():
            if c["execution_id"] is not None:
                reported[c["execution_id"]] = (s["run_id"], name, c["status"])
    finished = {s["run_id"] for s in summaries}
    assert {i: (e["run_id"], e["component"], e["status"])
            for i, e in exs.items() if e["run_id"] in finished} == reported
    run_rows = {r["run_id"]: r["status"] for r in _rows(store, runs)}
    assert {r: st for r, st in run_rows.items() if r in finished} == {s["run_id"]: s["status"] for s in summaries}
    assert sorted(run_rows.values()).count("running") == killed == len(run_rows) - len(finished)
    # Every event links an existing execution to an existing artifact, once per (kind, name).
    assert all(e["execution_id"] in exs and e["artifact_id"] in arts for e in evs)
    keys = [(e["execution_id"], e["kind"], e["name"]) for e in evs]
    assert len(keys) == len(set(keys))
    outs = {e["execution_id"]: arts[e["artifact_id"]] for e in evs if e["kind"] == "output"}
    ins = {e["execution_id"]: arts[e["artifact_id"]] for e in evs if e["kind"] == "input"}
    # Committed executions have their output; failed ones have none and left no artifact.
    assert set(outs) == {i for i, e in exs.items() if e["status"] in ("succeeded", "cached")}
    assert {a["producer"] for a in arts.values()} == {i for i, e in exs.items() if e["status"] == "succeeded"}
    for ex_id, art in outs.items():
        ex, producer = exs[ex_id], exs[art["producer"]]
        if ex["status"] == "cached":
            assert ex["cached_from"] == producer["id"] and ex["fingerprint"] == producer["fingerprint"]
        lines = _lines(art["uri"])  # committed: complete, written by its producer
        assert lines[-1] == f"{producer['run_id']}:{producer['id']}"
        assert lines[:-1] == (_lines(ins[producer["id"]]["uri"]) if producer["id"] in ins else [])
    # Lineage per run: each stage's input is the output its upstream stage reported in that run.
    for s in summaries:
        comps = s["components"]
        for name, c in comps.items():
            up = {"a": None, "b": "a", "c": f"b{name[1:]}"}[name[0]]
            if c["status"] in ("succeeded", "cached") and up:
                assert ins[c["execution_id"]]["uri"] == comps[up]["outputs"]["out"]
            if c["status"] in ("succeeded", "cached"):
                assert outs[c["execution_id"]]["uri"] == c["outputs"]["out"]


def _assert_runs(summaries: list[dict]) -> None:
    cached_run, failing_run = summaries
    assert cached_run["status"] == "succeeded", cached_run["error"]
    assert {c["status"] for c in cached_run["components"].values()} <= {"succeeded", "cached"}
    assert len(cached_run["components"]) == 1 + 2 * BRANCHES
    assert failing_run["status"] == "failed"
    assert f"toy failure at depth {FAIL_DEPTH}" in failing_run["error"]
    # Both runs executed the first stage: the barrier held each until the other had arrived.
    assert failing_run["components"]["a"]["status"] == "succeeded"
    assert cached_run["components"]["a"]["status"] == "succeeded"
    statuses = [c["status"] for c in failing_run["components"].values()]
    print(f"cached run: {[c['status'] for c in cached_run['components'].values()]}; failing run: {statuses}")


def test_two_runs_at_once_on_one_sqlite_store(tmp_path):
    summaries = _run_together(tmp_path)
    _assert_runs(summaries)
    _assert_consistent(MetadataStore(f"sqlite:///{tmp_path}/root/metadata.sqlite"), summaries)


def test_a_run_killed_mid_stage_commits_nothing_and_spoils_nothing(tmp_path):
    """SIGKILL one run while its stages write (and its other threads write metadata): what it
    was running stays uncommitted and invisible; the other run, running alongside, succeeds."""
    config = _config(tmp_path, None)
    (tmp_path / "barrier").mkdir()
    hang = tmp_path / "hang"
    hang.mkdir()
    survivor = _start(tmp_path, config, 0, False)
    victim = _start(tmp_path, config, 1, True, KFX_TOY_HANG=f"{hang}:2")
    kills = 0
    with _reaped([survivor, victim]):
        deadline = time.monotonic() + 600
        while not os.listdir(hang):  # a b stage of the victim has written part of its output
            if victim.poll() is not None or time.monotonic() > deadline:
                victim.kill()  # so its output can be read in bounded time
                pytest.fail(f"the victim run never reached its hang:\n{victim.communicate(timeout=60)[0][-3000:]}")
            time.sleep(0.05)
        victim.send_signal(signal.SIGKILL)
        kills += 1
        victim.wait(timeout=60)
        out = survivor.communicate(timeout=600)[0]
    print(f"SIGKILLs of a run mid-stage: {kills}")
    assert survivor.returncode == 0, out
    summary = json.loads((tmp_path / "summary0.json").read_text())
    assert {c["status"] for c in summary["components"].values()} == {"succeeded"}  # none of the victim's
    store = MetadataStore(f"sqlite:///{tmp_path}/root/metadata.sqlite")
    _assert_consistent(store, [summary], killed=1)
    victim_run = next(r["run_id"] for r in store.list_runs() if r["status"] == "running")
    left = {e["id"]: e for e in store.run_executions("toy", victim_run)}
    hung = {int(name) for name in os.listdir(hang)}
    assert hung <= {i for i, e in left.items() if e["status"] == "running"}
    for i, e in left.items():
        if e["status"] == "running":  # never committed: no outputs in the store or in place
            assert store.outputs_of(i) == {} and not (tmp_path / "root" / "toy" / e["component"] / str(i)).exists()
    for i in hung:  # what it was writing is only in its temporary folder
        assert (tmp_path / "root" / "toy" / left[i]["component"] / f".tmp-{i}" / "out" / FILES[0]).exists()


@pytest.fixture(scope="module")
def postgres_url():
    with postgres_server() as url:
        yield url


def test_two_runs_at_once_on_one_postgres_store(tmp_path, postgres_url):
    summaries = _run_together(tmp_path, postgres_url)
    _assert_runs(summaries)
    _assert_consistent(MetadataStore(postgres_url), summaries)
    assert not (tmp_path / "root" / "metadata.sqlite").exists()  # the shared database was used


def _together(n: int, fn) -> list:
    """Call fn(i) in n threads released at the same moment; their results or exceptions."""
    gate, results = threading.Barrier(n, timeout=60), [None] * n

    def work(i):
        gate.wait()
        try:
            results[i] = fn(i)
        except Exception as err:  # noqa: BLE001 - returned for the test to assert on
            results[i] = err

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return results


def test_postgres_writers_racing_on_empty_database_and_one_run_id(postgres_url):
    """Parallel Airflow tasks of one run: each opens the store (creating the tables on a fresh
    database) and starts the same run id at the same moment; none fails and one row results."""
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text("CREATE DATABASE fresh"))
    admin.dispose()
    url = postgres_url.replace("/postgres?", "/fresh?")
    stores = _together(6, lambda i: MetadataStore(url))
    assert all(isinstance(s, MetadataStore) for s in stores), stores
    results = _together(6, lambda i: stores[i].start_run("toy", "scheduled__2026-11-29"))
    assert results == [None] * 6
    assert [(r["run_id"], r["status"]) for r in stores[0].list_runs()] == [("scheduled__2026-11-29", "running")]
    ex_id = stores[0].start_execution("toy", "scheduled__2026-11-29", "a", "f" * 64, {}, "v")
    stores[1].commit_execution(ex_id, {"out": ("/nowhere/a/out", "fp")}, {})
    with pytest.raises(MetadataError, match=f"execution {ex_id} cannot be committed: its status is 'succeeded'"):
        stores[2].commit_execution(ex_id, {"out": ("/nowhere/a/out2", "fp")}, {})
    with stores[3].engine.begin() as c:  # even a writer bypassing that check cannot add a second output
        with pytest.raises(sa.exc.IntegrityError):
            c.execute(events.insert().values(execution_id=ex_id, artifact_id=1, kind="output", name="out"))
    assert {k: a.uri for k, a in stores[3].outputs_of(ex_id).items()} == {"out": "/nowhere/a/out"}
    for s in stores:
        s.engine.dispose()


@pytest.mark.parametrize("url, needle", [
    ("postgresql://kfx:secret@/postgres?host={tmp}", "cannot be opened: connection is bad: connection to server on socket \"{tmp}/"),
    ("mysql://kfx:secret@localhost/db", "its database driver is not installed"),
    ("not-a-url", "'not-a-url' cannot be used: Could not parse"),
])
def test_a_store_that_cannot_be_opened_is_a_clear_error(tmp_path, url, needle):
    from kfx.pipeline.config import ConfigError, load_config
    from kfx.pipeline.runner import open_store

    cfg = load_config(None, [f"metadata_url={url.format(tmp=tmp_path)}"])  # no server listens in tmp_path
    with pytest.raises(ConfigError) as err:
        open_store(cfg, str(tmp_path))
    assert needle.format(tmp=tmp_path) in str(err.value)
    assert "secret" not in str(err.value)
