"""Metadata store: runs, executions, artifacts and the events linking them (lineage).

SQLite under the artifact root by default; any SQLAlchemy URL (e.g. Postgres) when several
machines write. Only committed executions (status succeeded or cached) are ever resolved as
inputs or reused by the cache, so a crashed execution is invisible to later runs.

Several processes may write at once (two runs, parallel Airflow tasks): every write is one
transaction, so an execution is committed together with all its events or not at all, and a
write that loses a race (SQLite's lock, a Postgres deadlock or a unique key inserted first by
another writer) is retried whole.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import sqlalchemy as sa

from kfx.pipeline.config import ConfigError

_meta = sa.MetaData()

runs = sa.Table(
    "runs", _meta,
    sa.Column("pipeline", sa.String(200), primary_key=True),
    sa.Column("run_id", sa.String(200), primary_key=True),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("finished_at", sa.Float),
    sa.Column("summary", sa.Text),
)

executions = sa.Table(
    "executions", _meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("pipeline", sa.String(200), nullable=False, index=True),
    sa.Column("run_id", sa.String(200), nullable=False, index=True),
    sa.Column("component", sa.String(100), nullable=False),
    sa.Column("fingerprint", sa.String(64), nullable=False, index=True),
    sa.Column("status", sa.String(20), nullable=False),  # running | succeeded | cached | failed
    sa.Column("config", sa.Text),
    sa.Column("code_version", sa.String(64)),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("finished_at", sa.Float),
    sa.Column("metrics", sa.Text),
    sa.Column("error", sa.Text),
    sa.Column("cached_from", sa.Integer),
)

artifacts = sa.Table(
    "artifacts", _meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("uri", sa.String(2000), nullable=False, unique=True),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("producer", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

events = sa.Table(
    "events", _meta,
    sa.Column("execution_id", sa.Integer, nullable=False, index=True),
    sa.Column("artifact_id", sa.Integer, nullable=False, index=True),
    sa.Column("kind", sa.String(10), nullable=False),  # input | output
    sa.Column("name", sa.String(100), nullable=False),
    # An execution has one artifact per input or output name: a repeated write cannot add a second.
    sa.UniqueConstraint("execution_id", "kind", "name", name="uq_events_execution_kind_name"),
)

COMMITTED = ("succeeded", "cached")
WRITE_ATTEMPTS = 8  # a write that loses a race is retried this many times in all, with backoff

log = logging.getLogger("kfx")
T = TypeVar("T")


# Errors another writer causes, which the same transaction run again does not meet: Postgres
# SQLSTATEs (serialization failure, deadlock, unique key taken, table or type created meanwhile)
# and SQLite's messages for the same cases.
_RACE_SQLSTATES = {"40001", "40P01", "23505", "42P07", "42710"}
_RACE_MESSAGES = ("database is locked", "database table is locked", "already exists",
                  "UNIQUE constraint failed")


class MetadataError(ConfigError):
    """The configured store (`metadata_url`, or SQLite under root) cannot be opened or written as
    asked; the message names the URL (password hidden) and the cause. A ConfigError, so the CLI
    reports it in one line and exits 2."""


def _is_race(err: sa.exc.DBAPIError) -> bool:
    code = getattr(err.orig, "sqlstate", None) or getattr(err.orig, "pgcode", None)
    return code in _RACE_SQLSTATES or any(m in str(err.orig) for m in _RACE_MESSAGES)


@dataclass(frozen=True)
class Artifact:
    id: int
    uri: str
    name: str
    fingerprint: str
    producer: int


class MetadataStore:
    """Thin typed access to the lineage tables.

    Args:
        url: SQLAlchemy database URL (sqlite:///path/metadata.sqlite by default).
    """

    def __init__(self, url: str):
        sqlite = url.startswith("sqlite")
        args = {"timeout": 60, "check_same_thread": False} if sqlite else {}
        try:
            shown = sa.make_url(url).render_as_string(hide_password=True)
            # pool_pre_ping: a server-side database may drop idle connections between stages.
            self.engine = sa.create_engine(url, connect_args=args, pool_pre_ping=not sqlite)
        except sa.exc.ArgumentError as err:  # not a URL, or an unknown dialect
            raise MetadataError(f"metadata_url {url!r} cannot be used: {err}") from None
        except ImportError as err:  # a known dialect whose driver is not installed
            raise MetadataError(f"metadata_url {shown}: its database driver is not installed ({err}); "
                                f"postgresql:// URLs use psycopg, installed with kfx") from None
        if sqlite:
            # WAL lets Airflow tasks in separate processes read while one writes.
            @sa.event.listens_for(self.engine, "connect")
            def _pragmas(conn, _record):
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA busy_timeout=60000")
        self._lock = threading.Lock()
        # Writers starting together on an empty database race to create the tables: the loser's
        # CREATE fails (SQLite: locked; Postgres: duplicate table or type), and its retry finds them.
        try:
            self._retry("creating the metadata tables", lambda: _meta.create_all(self.engine))
        except sa.exc.DBAPIError as err:
            raise MetadataError(f"metadata store {shown} cannot be opened: "
                                f"{str(err.orig).strip()}") from None

    def _retry(self, what: str, fn: Callable[[], T]) -> T:
        """Run `fn` (one whole transaction), again if it lost a race with another writer."""
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            try:
                return fn()
            except (sa.exc.OperationalError, sa.exc.IntegrityError, sa.exc.ProgrammingError) as err:
                if attempt == WRITE_ATTEMPTS or not _is_race(err):
                    raise
                log.debug("metadata store: %s lost a race (attempt %d: %s); retrying", what, attempt, err.orig)
                time.sleep(min(0.05 * 2 ** attempt, 2.0))
        raise AssertionError("unreachable")

    def _write(self, what: str, fn: Callable[[sa.Connection], T]) -> T:
        """Run `fn(connection)` in one transaction, serialized within this process, retried whole."""
        def once() -> T:
            with self._lock, self.engine.begin() as c:
                return fn(c)
        return self._retry(what, once)

    # ------------------------------------------------------------- runs
    def start_run(self, pipeline: str, run_id: str) -> None:
        """Mark the run running; a run id seen before (an Airflow task of the same run) restarts it.

        Parallel tasks of one run call this at the same time: the row is updated if it exists and
        inserted otherwise; the writer whose insert loses retries and updates.
        """
        def write(c: sa.Connection) -> None:
            values = {"status": "running", "started_at": time.time(), "finished_at": None, "summary": None}
            key = (runs.c.pipeline == pipeline) & (runs.c.run_id == run_id)
            if c.execute(runs.update().where(key).values(**values)).rowcount == 0:
                c.execute(runs.insert().values(pipeline=pipeline, run_id=run_id, **values))
        self._write(f"starting run {run_id!r}", write)

    def finish_run(self, pipeline: str, run_id: str, status: str, summary: dict) -> None:
        self._write(f"finishing run {run_id!r}", lambda c: c.execute(
            runs.update().where(runs.c.pipeline == pipeline, runs.c.run_id == run_id)
            .values(status=status, finished_at=time.time(), summary=json.dumps(summary))))

    def list_runs(self, pipeline: str | None = None, limit: int = 50) -> list[dict]:
        q = sa.select(runs).order_by(runs.c.started_at.desc()).limit(limit)
        if pipeline:
            q = q.where(runs.c.pipeline == pipeline)
        with self.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(q)]

    def get_run(self, run_id: str) -> dict | None:
        with self.engine.connect() as c:
            row = c.execute(sa.select(runs).where(runs.c.run_id == run_id)
                            .order_by(runs.c.started_at.desc())).first()
        return dict(row._mapping) if row else None

    # ------------------------------------------------------------- executions
    def start_execution(self, pipeline: str, run_id: str, component: str, fingerprint: str,
                        config: dict, code_version: str) -> int:
        values = {"pipeline": pipeline, "run_id": run_id, "component": component,
                  "fingerprint": fingerprint, "status": "running",
                  "config": json.dumps(config, sort_keys=True), "code_version": code_version}
        return self._write(f"starting {component!r}", lambda c: int(c.execute(
            executions.insert().values(**values, started_at=time.time())).inserted_primary_key[0]))

    def record_inputs(self, execution_id: int, inputs: dict[str, str | None]) -> None:
        def write(c: sa.Connection) -> None:
            for name, uri in inputs.items():
                if uri is None:
                    continue
                art = c.execute(sa.select(artifacts.c.id).where(artifacts.c.uri == uri)).first()
                if art is not None:
                    c.execute(events.insert().values(execution_id=execution_id, artifact_id=art.id,
                                                     kind="input", name=name))
        self._write(f"recording the inputs of execution {execution_id}", write)

    def commit_execution(self, execution_id: int, outputs: dict[str, tuple[str, str]],
                         metrics: dict, status: str = "succeeded",
                         cached_from: int | None = None) -> None:
        """Mark an execution committed and register its outputs {name: (uri, fingerprint)}.

        Raises:
            MetadataError: the execution is not running (missing, or committed or failed already).
        """
        now = time.time()

        def write(c: sa.Connection) -> None:
            row = c.execute(sa.select(executions.c.status).where(executions.c.id == execution_id)).first()
            if row is None or row.status != "running":
                raise MetadataError(f"execution {execution_id} cannot be committed: its status is "
                                    f"{row.status if row else 'missing'!r}, not 'running'")
            for name, (uri, fp) in outputs.items():
                art = c.execute(sa.select(artifacts.c.id).where(artifacts.c.uri == uri)).first()
                if art is None:
                    art_id = c.execute(artifacts.insert().values(
                        uri=uri, name=name, fingerprint=fp, producer=execution_id,
                        created_at=now)).inserted_primary_key[0]
                else:
                    art_id = art.id
                c.execute(events.insert().values(execution_id=execution_id, artifact_id=art_id,
                                                 kind="output", name=name))
            c.execute(executions.update().where(executions.c.id == execution_id).values(
                status=status, finished_at=now,
                metrics=json.dumps(metrics, sort_keys=True, default=str), cached_from=cached_from))
        self._write(f"committing execution {execution_id}", write)

    def fail_execution(self, execution_id: int, error: str) -> None:
        self._write(f"failing execution {execution_id}", lambda c: c.execute(
            executions.update().where(executions.c.id == execution_id).values(
                status="failed", finished_at=time.time(), error=error)))

    def find_cached(self, pipeline: str, component: str, fingerprint: str) -> dict | None:
        """The latest committed execution with this fingerprint whose outputs still exist."""
        q = (sa.select(executions).where(
            executions.c.pipeline == pipeline, executions.c.component == component,
            executions.c.fingerprint == fingerprint, executions.c.status == "succeeded")
            .order_by(executions.c.id.desc()).limit(1))
        with self.engine.connect() as c:
            row = c.execute(q).first()
        return dict(row._mapping) if row else None

    def outputs_of(self, execution_id: int) -> dict[str, Artifact]:
        q = (sa.select(artifacts, events.c.name.label("event_name"))
             .join(events, events.c.artifact_id == artifacts.c.id)
             .where(events.c.execution_id == execution_id, events.c.kind == "output"))
        with self.engine.connect() as c:
            return {r.event_name: Artifact(r.id, r.uri, r.name, r.fingerprint, r.producer)
                    for r in c.execute(q)}

    def inputs_of(self, execution_id: int) -> dict[str, Artifact]:
        q = (sa.select(artifacts, events.c.name.label("event_name"))
             .join(events, events.c.artifact_id == artifacts.c.id)
             .where(events.c.execution_id == execution_id, events.c.kind == "input"))
        with self.engine.connect() as c:
            return {r.event_name: Artifact(r.id, r.uri, r.name, r.fingerprint, r.producer)
                    for r in c.execute(q)}

    def latest_execution(self, pipeline: str, component: str, exclude_run: str | None = None,
                         run_id: str | None = None) -> dict | None:
        """The newest committed execution of `component` (optionally in or outside one run)."""
        q = (sa.select(executions).where(
            executions.c.pipeline == pipeline, executions.c.component == component,
            executions.c.status.in_(COMMITTED)).order_by(executions.c.id.desc()))
        if exclude_run is not None:
            q = q.where(executions.c.run_id != exclude_run)
        if run_id is not None:
            q = q.where(executions.c.run_id == run_id)
        with self.engine.connect() as c:
            row = c.execute(q.limit(1)).first()
        return dict(row._mapping) if row else None

    def committed_executions(self, pipeline: str, component: str) -> list[dict]:
        q = (sa.select(executions).where(
            executions.c.pipeline == pipeline, executions.c.component == component,
            executions.c.status.in_(COMMITTED)).order_by(executions.c.id.desc()))
        with self.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(q)]

    def run_executions(self, pipeline: str, run_id: str) -> list[dict]:
        q = (sa.select(executions).where(executions.c.pipeline == pipeline,
                                         executions.c.run_id == run_id)
             .order_by(executions.c.id))
        with self.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(q)]

    def artifact_by_uri(self, uri: str) -> Artifact | None:
        uri = uri.rstrip("/")
        with self.engine.connect() as c:
            r = c.execute(sa.select(artifacts).where(artifacts.c.uri == uri)).first()
        return Artifact(r.id, r.uri, r.name, r.fingerprint, r.producer) if r else None

    def execution(self, execution_id: int) -> dict | None:
        with self.engine.connect() as c:
            r = c.execute(sa.select(executions).where(executions.c.id == execution_id)).first()
        return dict(r._mapping) if r else None

    def lineage(self, uri: str, depth: int = 20) -> list[dict[str, Any]]:
        """Walk upstream from an artifact: each step is what produced it and from which inputs."""
        out, frontier, seen = [], [uri.rstrip("/")], set()
        while frontier and depth > 0:
            depth -= 1
            nxt = []
            for u in frontier:
                art = self.artifact_by_uri(u)
                if art is None or art.id in seen:
                    continue
                seen.add(art.id)
                ex = self.execution(art.producer) or {}
                ins = self.inputs_of(art.producer)
                out.append({"artifact": art.uri, "name": art.name, "execution_id": art.producer,
                            "component": ex.get("component"), "run_id": ex.get("run_id"),
                            "status": ex.get("status"), "inputs": {k: a.uri for k, a in ins.items()}})
                nxt.extend(a.uri for a in ins.values())
            frontier = nxt
        return out
