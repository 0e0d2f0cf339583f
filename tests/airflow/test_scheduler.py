"""The daily retraining DAG under a running Airflow 3 stack, scheduled for real.

`airflow db migrate`, then `airflow api-server`, `airflow scheduler` (LocalExecutor) and
`airflow dag-processor`, from .venv-airflow (`make airflow`), on a free loopback port, with a
temporary AIRFLOW_HOME (SQLite); one stack for the module. Nobody triggers a run: the
scheduler creates every run below from the DAGs' schedules.

The DAGs folder holds the real DAG file (airflow/dags/kfx_daily_retrain.py, its `dag` pointed at
a tiny pipeline by KFX_DAG_CONFIG) and a second DAG file that imports its `build_dag`, as a user
schedules a second DAG. The tiny pipeline: 800 rows made here, a gate of auc >= 0.7 and no
regression, and no validate, tune nor infra_validate stage: each task costs a `kfx` process that
loads TensorFlow (20 s on a busy machine), and those stages have their own tests.

1. `kfx_daily_retrain` (@daily, start date in the past, catchup off, unpaused when first seen):
   the scheduler creates today's run, which ends with model version 1 pushed.
2. `kfx_two_days` (the same pipeline, catchup on from yesterday, transform never cached, short
   retry delay) is unpaused through the REST API: the scheduler creates yesterday's run, then
   today's. In yesterday's run the transform task's `kfx component` process is SIGKILLed while it
   writes; the scheduler retries it, the run succeeds and the retried transform commits the same
   bytes as run 1's undisturbed transform.
3. Today's data then has shuffled labels (same columns, same distributions, nothing to learn):
   the model fails the gate, push is skipped with the failed checks in its log, and version 1
   keeps serving (serving directory and models.config unchanged).
4. SIGTERM to the three servers: they exit, and no process of the stack remains.
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psutil
import pytest
import yaml

from kfx.pipeline.metadata import MetadataStore
from tests.conftest import REPO
from tests.models import tiny_pipeline

AIRFLOW = REPO / ".venv-airflow" / "bin" / "airflow"
DAG_FILE = REPO / "airflow" / "dags" / "kfx_daily_retrain.py"
DAILY, TWO_DAYS = "kfx_daily_retrain", "kfx_two_days"
PIPELINE, SERVING_NAME = "tiny", "tiny"
SENSOR = "wait_for_data"
KILLED_STAGE = "transform"
# Every wait is bounded; a run of the tiny pipeline takes 2-4 minutes on a busy 2-core machine.
RUN_TIMEOUT = 600
SERVER_START_TIMEOUT = 180

pytestmark = [pytest.mark.skipif(not AIRFLOW.exists(), reason="no .venv-airflow: run `make airflow`"),
              pytest.mark.timeout(1800)]

STAGES = [
    {"name": "ingest", "component": "ingest"},
    {"name": "statistics", "component": "statistics", "inputs": {"examples": "ingest.examples"}},
    {"name": "schema", "component": "schema", "inputs": {"statistics": "statistics.statistics"}},
    {"name": "transform", "component": "transform", "inputs": {"examples": "ingest.examples", "schema": "schema.schema"}},
    {"name": "train", "component": "train",
     "inputs": {"examples": "ingest.examples", "schema": "schema.schema",
                "transform_graph": "transform.transform_graph"}},
    {"name": "evaluate", "component": "evaluate",
     "inputs": {"examples": "ingest.examples", "schema": "schema.schema", "model": "train.model",
                "baseline_model": "history:last_pushed_model"}},
    {"name": "push", "component": "push", "inputs": {"model": "train.model", "blessing": "evaluate.blessing"}},
]
STAGE_NAMES = [s["name"] for s in STAGES]
GATE = {"value": [{"metric": "auc", "min": 0.7}], "change": [{"metric": "auc", "max_worsening": 0.05}]}

# The second DAG file: a user's own file scheduling one more DAG with the module's build_dag.
TWO_DAYS_DAG = '''"""Airflow DAG kfx_two_days: the tiny pipeline, daily with catchup from yesterday (made by the test)."""
from datetime import datetime, timedelta

from kfx_daily_retrain import build_dag

dag = build_dag({dag_id!r}, {config!r}, start_date=datetime.fromisoformat({start!r}), catchup=True,
                retry_delay=timedelta(seconds=2), paused=True)
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stack:
    """One Airflow home and its three servers, each in its own process group."""

    SERVERS = ("api-server", "scheduler", "dag-processor")

    def __init__(self, home: Path, dags: Path, daily_config: Path):
        self.home = home
        self.port = _free_port()
        self.procs: dict[str, subprocess.Popen] = {}
        self.env = {
            **os.environ,
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{self.port}/execution/",
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{self.port}",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(_free_port()),  # the scheduler's log server
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
            # A busy machine answers slowly: a task must not fail on its first call to the API.
            "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "60",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "60",
            "KFX_BIN": str(Path(sys.executable).parent / "kfx"),
            "KFX_DAG_CONFIG": str(daily_config),
            "TF_CPP_MIN_LOG_LEVEL": "2",
        }

    def migrate(self) -> None:
        proc = subprocess.run([str(AIRFLOW), "db", "migrate"], env=self.env, cwd=self.home,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]

    def start(self) -> None:
        """The api-server first: the tasks the scheduler starts report to it from their first second."""
        for name in self.SERVERS:
            log = open(self.home / f"{name}.out", "w")
            self.procs[name] = subprocess.Popen([str(AIRFLOW), name], env=self.env, cwd=self.home,
                                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            log.close()
            if name == "api-server":
                self._wait_for_api()

    def _wait_for_api(self) -> None:
        deadline = time.time() + SERVER_START_TIMEOUT
        while time.time() < deadline:
            self.check_alive()
            try:
                with urllib.request.urlopen(f"{self.env['AIRFLOW__API__BASE_URL']}/api/v2/monitor/health", timeout=5):
                    return
            except OSError:
                time.sleep(1)
        raise AssertionError(f"api-server not up on port {self.port} after {SERVER_START_TIMEOUT}s\n"
                             + self.server_logs())

    def check_alive(self) -> None:
        dead = {n: p.returncode for n, p in self.procs.items() if p.poll() is not None}
        assert not dead, f"Airflow servers exited: {dead}\n{self.server_logs()}"

    def server_logs(self, chars: int = 2000) -> str:
        return "\n".join(f"--- {n}.out\n" + (self.home / f"{n}.out").read_text(errors="replace")[-chars:]
                         for n in self.procs)

    def stack_processes(self) -> list[psutil.Process]:
        """Every live process started by this stack: the servers, their workers, the tasks and
        their `kfx` (all inherit this AIRFLOW_HOME; start_new_session hides some from the tree)."""
        found = []
        for p in psutil.process_iter(["pid"]):
            try:
                if p.pid != os.getpid() and p.environ().get("AIRFLOW_HOME") == str(self.home) \
                        and p.status() != psutil.STATUS_ZOMBIE:
                    found.append(p)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return found

    def stop(self, grace: float = 60) -> dict[str, int | None]:
        """SIGTERM each server's process group; their exit codes (None: still running after `grace`)."""
        for p in self.procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.time() + grace
        for p in self.procs.values():
            try:
                p.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                pass
        return {n: p.poll() for n, p in self.procs.items()}

    def kill_all(self) -> None:
        for p in self.stack_processes():
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass

    # ---------------------------------------------------------------- the metadata database
    def query(self, sql: str, *args) -> list[tuple]:
        with sqlite3.connect(self.home / "airflow.db", timeout=30) as db:
            return db.execute(sql, args).fetchall()

    def runs(self, dag_id: str) -> list[dict]:
        rows = self.query("SELECT run_id, run_type, state, logical_date FROM dag_run WHERE dag_id = ? "
                          "ORDER BY logical_date", dag_id)
        return [dict(zip(("run_id", "run_type", "state", "logical_date"), r)) for r in rows]

    def tasks(self, dag_id: str, run_id: str) -> dict[str, tuple[str, int]]:
        return {t: (s, n) for t, s, n in self.query(
            "SELECT task_id, state, try_number FROM task_instance WHERE dag_id = ? AND run_id = ?", dag_id, run_id)}

    def xcoms(self, dag_id: str, run_id: str) -> dict[str, dict]:
        return {t: json.loads(v) for t, v in self.query(
            "SELECT task_id, value FROM xcom WHERE dag_id = ? AND run_id = ? AND key = 'return_value'",
            dag_id, run_id)}

    def task_log(self, dag_id: str, run_id: str, task_id: str, attempt: int | None = None) -> str:
        folder = self.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
        files = sorted(folder.glob("attempt=*.log"))
        if attempt is not None:
            files = [f for f in files if f.name == f"attempt={attempt}.log"]
        return "\n".join(f"--- {f.name}\n{f.read_text(errors='replace')}" for f in files)

    def explain(self, dag_id: str) -> str:
        """Runs, task states and the failed tasks' logs: what a failed wait prints."""
        lines = []
        for run in self.runs(dag_id):
            tasks = self.tasks(dag_id, run["run_id"])
            lines.append(f"{run} {tasks}")
            for task, (state, _) in tasks.items():
                if state in ("failed", "up_for_retry", "upstream_failed"):
                    lines.append(self.task_log(dag_id, run["run_id"], task)[-3000:])
        return "\n".join(lines) + "\n" + self.server_logs()

    def wait_for(self, what: str, dag_id: str, predicate, timeout: float = RUN_TIMEOUT, poll: float = 1.0):
        """Poll `predicate()` until it returns something truthy; fail with the runs and logs."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            self.check_alive()
            value = predicate()
            if value:
                return value
            time.sleep(poll)
        raise AssertionError(f"{what}: not within {timeout}s\n{self.explain(dag_id)}")

    def wait_run_done(self, dag_id: str, logical_day: str) -> dict:
        def done():
            runs = [r for r in self.runs(dag_id) if r["logical_date"].startswith(logical_day)]
            return runs[0] if runs and runs[0]["state"] in ("success", "failed") else None
        return self.wait_for(f"{dag_id} run of {logical_day} finished", dag_id, done)

    def api(self, method: str, path: str, body: dict) -> dict:
        """A call to the REST API, as the admin of the simple auth manager (all admins)."""
        base = self.env["AIRFLOW__API__BASE_URL"]
        with urllib.request.urlopen(f"{base}/auth/token", timeout=60) as response:
            token = json.loads(response.read())["access_token"]
        request = urllib.request.Request(f"{base}{path}", method=method, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())


def _day(d: datetime) -> str:
    return d.strftime("%Y-%m-%d")


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("sched")
    tiny_pipeline.write_csv(tmp / "train.csv", 600, seed=1)
    tiny_pipeline.write_csv(tmp / "test.csv", 200, seed=2)
    base = tiny_pipeline.config(tmp, stages=STAGES, evaluate={"split": "test", "gate": GATE},
                                push={"require_infra_blessing": False})
    del base["tune"]
    daily, two_days = tmp / "tiny.yaml", tmp / "tiny_two_days.yaml"
    daily.write_text(yaml.safe_dump(base))
    # Same pipeline (name, root, data, stage configs) but transform is never cached, so the
    # two-day DAG re-runs it on the same inputs, and it can be killed there.
    base["transform"] = {**base["transform"], "cache": False}
    two_days.write_text(yaml.safe_dump(base))
    dags = tmp / "dags"
    dags.mkdir()
    (dags / DAG_FILE.name).symlink_to(DAG_FILE)
    today = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    yesterday = today - timedelta(days=1)
    (dags / f"{TWO_DAYS}.py").write_text(TWO_DAYS_DAG.format(
        dag_id=TWO_DAYS, config=str(two_days), start=yesterday.isoformat()))
    return {"tmp": tmp, "dags": dags, "daily": daily, "root": tmp / "runs",
            "today": _day(today), "yesterday": _day(yesterday)}


@pytest.fixture(scope="module")
def stack(setup):
    home = setup["tmp"] / "airflow_home"
    home.mkdir()
    af = Stack(home, setup["dags"], setup["daily"])
    try:
        af.migrate()
        af.start()
        yield af
    finally:
        af.stop(grace=30)
        af.kill_all()


@pytest.fixture(scope="module")
def daily_run(stack, setup) -> dict:
    """The run the scheduler creates for kfx_daily_retrain, once finished."""
    run = stack.wait_run_done(DAILY, setup["today"])
    return {**run, "tasks": stack.tasks(DAILY, run["run_id"]), "xcoms": stack.xcoms(DAILY, run["run_id"])}


def _kfx_process(stage: str, run_id: str) -> psutil.Process | None:
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if "component" in cmd and stage in cmd and run_id in cmd:
            return p
    return None


@pytest.fixture(scope="module")
def two_days(stack, setup, daily_run) -> dict:
    """kfx_two_days unpaused after the daily run: yesterday's run with its transform killed once,
    then today's run on label-shuffled data."""
    assert daily_run["state"] == "success", stack.explain(DAILY)
    serving = setup["root"] / "serving"
    before = {"models_config": (serving / "models.config").read_bytes(),
              "versions": sorted(p.name for p in (serving / SERVING_NAME).iterdir())}
    stack.wait_for("kfx_two_days parsed", TWO_DAYS, lambda: stack.query(
        "SELECT is_paused FROM dag WHERE dag_id = ?", TWO_DAYS))
    assert stack.api("PATCH", f"/api/v2/dags/{TWO_DAYS}", {"is_paused": False})["is_paused"] is False

    first_id = stack.wait_for("the first kfx_two_days run created", TWO_DAYS, lambda: next(
        (r["run_id"] for r in stack.runs(TWO_DAYS) if r["logical_date"].startswith(setup["yesterday"])), None))
    stage_dir = setup["root"] / PIPELINE / KILLED_STAGE
    kills = []

    def killed_mid_stage():
        # The stage is writing: its process is up and its uncommitted output directory exists.
        proc = _kfx_process(KILLED_STAGE, first_id)
        if proc is None or not list(stage_dir.glob(".tmp-*/transform_graph")):
            return None
        time.sleep(0.3)
        try:  # kfx leads its process group (the task starts it in a new session)
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            raise AssertionError(f"{KILLED_STAGE} of {first_id} ended before it could be killed") from None
        kills.append(proc.pid)
        return proc.pid
    stack.wait_for(f"{KILLED_STAGE} of {first_id} running", TWO_DAYS, killed_mid_stage, poll=0.1)
    print(f"\nSIGKILLed {KILLED_STAGE} of {TWO_DAYS} {first_id}: {len(kills)} kill(s)")

    # Today's data arrives with shuffled labels; yesterday's run has read its own already
    # (ingest ran before transform) and today's run starts only when it ends (max_active_runs=1).
    for name in ("train.csv", "test.csv"):
        _shuffle_labels(setup["tmp"] / name)
    first = stack.wait_run_done(TWO_DAYS, setup["yesterday"])
    second = stack.wait_run_done(TWO_DAYS, setup["today"])
    return {"first": {**first, "tasks": stack.tasks(TWO_DAYS, first["run_id"]),
                      "xcoms": stack.xcoms(TWO_DAYS, first["run_id"])},
            "second": {**second, "tasks": stack.tasks(TWO_DAYS, second["run_id"]),
                       "xcoms": stack.xcoms(TWO_DAYS, second["run_id"])},
            "kills": kills, "before": before}


def _shuffle_labels(path: Path) -> None:
    """The same rows with their labels permuted: nothing left for a model to learn."""
    import numpy as np

    header, *rows = path.read_text().splitlines()
    cells = [r.rsplit(",", 1) for r in rows]
    labels = np.random.default_rng(7).permutation([c[1] for c in cells])
    path.write_text("\n".join([header, *(f"{c[0]},{y}" for c, y in zip(cells, labels))]) + "\n")


def test_the_scheduler_runs_the_daily_dag_and_pushes_a_model(stack, setup, daily_run):
    run = daily_run
    assert run["state"] == "success", stack.explain(DAILY)
    runs = stack.runs(DAILY)
    assert [(r["run_type"], r["logical_date"][:10]) for r in runs] == [("scheduled", setup["today"])], runs
    assert run["run_id"].startswith(f"scheduled__{setup['today']}")
    assert run["tasks"] == {SENSOR: ("success", 1), **{s: ("success", 1) for s in STAGE_NAMES}}, stack.explain(DAILY)
    assert {t: x["status"] for t, x in run["xcoms"].items()} == dict.fromkeys(STAGE_NAMES, "succeeded")
    assert run["xcoms"]["evaluate"]["metrics"]["blessed"] is True
    pushed = run["xcoms"]["push"]["metrics"]["pushed"]
    assert pushed["model_name"] == SERVING_NAME and pushed["version"] == 1
    model_dir = setup["root"] / "serving" / SERVING_NAME / "1"
    assert pushed["path"] == str(model_dir) and (model_dir / "saved_model.pb").is_file()
    assert "base_path" in (setup["root"] / "serving" / "models.config").read_text()
    # kfx recorded each stage under the Airflow run id.
    store = MetadataStore(f"sqlite:///{setup['root']}/metadata.sqlite")
    assert {e["component"] for e in store.run_executions(PIPELINE, run["run_id"])} >= set(STAGE_NAMES)


def test_a_killed_stage_is_retried_and_commits_the_same_bytes(stack, setup, daily_run, two_days):
    run = two_days["first"]
    assert len(two_days["kills"]) == 1
    assert run["state"] == "success", stack.explain(TWO_DAYS)
    assert run["run_type"] == "scheduled"
    state, tries = run["tasks"][KILLED_STAGE]
    assert (state, tries) == ("success", 2), stack.explain(TWO_DAYS)
    first_attempt = stack.task_log(TWO_DAYS, run["run_id"], KILLED_STAGE, attempt=1)
    assert "-9" in first_attempt, first_attempt[-3000:]
    assert {t: s for t, (s, _) in run["tasks"].items()} == dict.fromkeys([SENSOR, *STAGE_NAMES], "success")

    # The killed execution never committed; the retry executed again (transform is never cached).
    store = MetadataStore(f"sqlite:///{setup['root']}/metadata.sqlite")
    transforms = [e for e in store.run_executions(PIPELINE, run["run_id"]) if e["component"] == KILLED_STAGE]
    assert sorted(e["status"] for e in transforms) == ["running", "succeeded"], transforms
    killed = next(e for e in transforms if e["status"] == "running")
    assert not (setup["root"] / PIPELINE / KILLED_STAGE / str(killed["id"])).exists()
    retried = run["xcoms"][KILLED_STAGE]
    clean = daily_run["xcoms"][KILLED_STAGE]
    assert retried["status"] == "succeeded" and retried["execution_id"] != clean["execution_id"]
    assert retried["metrics"] == clean["metrics"]
    for output, uri in clean["outputs"].items():
        old, new = Path(uri), Path(retried["outputs"][output])
        files = sorted(p.relative_to(old) for p in old.rglob("*") if p.is_file())
        assert files and files == sorted(p.relative_to(new) for p in new.rglob("*") if p.is_file())
        for f in files:
            assert (new / f).read_bytes() == (old / f).read_bytes(), f"{output}/{f} differs after the retry"
    # Downstream of the identical transform every stage is reused, including the push of version 1.
    assert {t: x["status"] for t, x in run["xcoms"].items() if t != KILLED_STAGE} == \
        dict.fromkeys([s for s in STAGE_NAMES if s != KILLED_STAGE], "cached")
    assert run["xcoms"]["push"]["metrics"]["pushed"]["version"] == 1


def test_a_model_failing_the_gate_is_not_pushed_and_the_first_keeps_serving(stack, setup, two_days):
    run = two_days["second"]
    assert run["state"] == "success", stack.explain(TWO_DAYS)
    assert [r["run_type"] for r in stack.runs(TWO_DAYS)] == ["scheduled", "scheduled"]
    states = {t: s for t, (s, _) in run["tasks"].items()}
    assert states.pop("push") == "skipped", stack.explain(TWO_DAYS)
    assert set(states.values()) == {"success"}, states
    assert run["xcoms"]["ingest"]["status"] == "succeeded"  # new data: a new ingest
    evaluation = run["xcoms"]["evaluate"]["metrics"]
    assert evaluation["blessed"] is False and evaluation["auc"] < 0.7, evaluation
    log = stack.task_log(TWO_DAYS, run["run_id"], "push")
    assert "push skipped: evaluate reported blessed=False, so the model is not approved" in log, log[-3000:]
    assert "auc" in log.split("push skipped:", 1)[1].splitlines()[0]  # the failed check, by name
    assert "push" not in run["xcoms"]
    serving = setup["root"] / "serving"
    assert (serving / "models.config").read_bytes() == two_days["before"]["models_config"]
    assert sorted(p.name for p in (serving / SERVING_NAME).iterdir()) == two_days["before"]["versions"] == ["1"]


def test_the_stack_shuts_down_cleanly(stack, two_days):
    assert stack.stack_processes(), "no stack process found before the shutdown"
    codes = stack.stop(grace=90)
    left = [(p.pid, " ".join(p.cmdline())[:120]) for p in stack.stack_processes()]
    print(f"\nexit codes after SIGTERM: {codes}; processes left: {len(left)}")
    assert None not in codes.values(), f"still running after SIGTERM: {codes}\n{stack.server_logs()}"
    assert left == [], left
