"""The daily retraining DAG: one Airflow task per kfx stage, wired from pipeline/graph.py.

One parametrised DAG, `kfx_daily_retrain`, rather than one DAG per YAML: the pipeline is the
`config` param (default pipeline/configs/adult.yaml, checked by kfx when the first task runs),
so a run triggered with another config retrains that pipeline. Scheduling a second pipeline
daily is one more `build_dag(dag_id, config)` call: its own id, params default and asset.

Each task runs `kfx component STAGE --run-id <Airflow run id> --input NAME=URI ...` through
bash in the ML environment (its `kfx` is the Airflow Variable `kfx_bin`, else the environment
variable KFX_BIN, else <repo>/.venv/bin/kfx), so TensorFlow never loads in the scheduler, the
DAG processor or the worker's own process, and the ML environment can live in another venv or
image. The input URIs come from the upstream tasks' XComs; a task's XCom is only its outputs'
URIs, its status and its small metrics.

- The default DAG retrains the pipeline of the environment variable KFX_DAG_CONFIG (read when
  the file is parsed), else pipeline/configs/adult.yaml.
- A blocking data anomaly fails the run at `validate`, with the anomaly message in the task log
  and the task's error, and is not retried (the same data gives the same verdict); nor is a bad
  config (kfx exit status 2). Other failures are retried (2 retries, 5 minutes apart, doubling),
  and each stage has its own execution timeout.
- A model that evaluate does not bless leaves `push` skipped, not failed; a push that publishes
  a model emits the asset `kfx://kfx_daily_retrain/pushed_model` (extra: model name, version,
  path) that downstream DAGs, e.g. a canary check, can be scheduled on.
- Tasks are idempotent: a killed attempt leaves only an uncommitted temporary directory, and a
  retry, or a re-run of the whole DAG run, reuses every stage whose fingerprint is unchanged.
- `wait_for_data` turns on a FileSensor (reschedule mode) on `data_path` (a file, folder or
  glob) before ingest; when nothing arrives within 6 hours the day's run is skipped, not failed.

This file is cheap to import: it reads the stage graph (standard library only) and defines
operators; the kfx config is loaded by kfx itself, in the task's subprocess.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shlex
import sys
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

from airflow.providers.standard.operators.bash import BashOperator
from airflow.providers.standard.sensors.filesystem import FileSensor
from airflow.sdk import DAG, Asset, Param, Variable
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

# The repository root holds the stage graph (pipeline/graph.py: standard library only). It is
# loaded by path, not imported as `kfx.pipeline.graph`: kfx is installed in the ML environment,
# not in Airflow's, and adding the repo to sys.path would let its folders shadow packages here.
REPO = Path(__file__).resolve().parents[2]


def _load_graph():
    spec = importlib.util.spec_from_file_location("kfx_stage_graph", REPO / "pipeline" / "graph.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


_graph = _load_graph()
Stage, Upstream = _graph.Stage, _graph.Upstream

DAG_ID = "kfx_daily_retrain"
DEFAULT_CONFIG = "pipeline/configs/adult.yaml"
CONFIG_ENV = "KFX_DAG_CONFIG"  # the default DAG's pipeline YAML, when set
START_DATE = datetime(2025, 1, 1, tzinfo=timezone.utc)
RETRY_DELAY = timedelta(minutes=5)
DEFAULT_KFX_BIN = str(REPO / ".venv" / "bin" / "kfx")
SENSOR_TASK_ID = "wait_for_data"

# `kfx` exit statuses (pipeline/cli.py): 1 a stage failed, 2 a bad command line or config.
EXIT_STAGE_FAILED, EXIT_BAD_CONFIG = 1, 2
# Failures a retry cannot change: a bad config, and validate's verdict on the data.
NOT_RETRYABLE = {"validate": {EXIT_STAGE_FAILED, EXIT_BAD_CONFIG}}
NOT_RETRYABLE_DEFAULT = {EXIT_BAD_CONFIG}

# Keyed by component (a graph may rename stages or hold several of one component):
# The approval gate (TFX's blessing): the stage runs only when the stage feeding its input
# (push's `blessing`) reported the metric true.
RUNS_ONLY_IF = {"push": ("blessing", "blessed")}
# The component whose success publishes a model, and the metric that describes what it published.
PUBLISHES = {"push": "pushed"}

# Upper bounds per attempt; a stage past it is killed (SIGTERM to its process group) and retried.
EXECUTION_TIMEOUTS = {
    "ingest": timedelta(hours=1), "statistics": timedelta(hours=1), "schema": timedelta(minutes=10),
    "validate": timedelta(minutes=15), "transform": timedelta(hours=1), "tune": timedelta(hours=3),
    "train": timedelta(hours=6), "evaluate": timedelta(hours=1), "infra_validate": timedelta(minutes=30),
    "push": timedelta(minutes=15),
}
DEFAULT_TIMEOUT = timedelta(hours=1)

# XCom carries URIs and small metrics only: a metric whose JSON is longer than this stays in the
# kfx metadata store (`kfx runs show RUN_ID`).
MAX_XCOM_METRIC_CHARS = 1024


def pushed_model_asset(dag_id: str = DAG_ID) -> Asset:
    """The asset a successful push updates; downstream DAGs schedule on it (`schedule=[asset]`)
    and read the pushed version from the triggering event's extra."""
    return Asset(name=f"{dag_id}_pushed_model", uri=f"kfx://{dag_id}/pushed_model", group="model")


def dag_params(config: str = DEFAULT_CONFIG) -> dict[str, Param]:
    """The run's params, checked (JSON schema) when a run is triggered."""
    return {
        "config": Param(config, type="string", minLength=1,
                        description="Pipeline YAML, absolute or relative to the ML environment's "
                                    "working directory (Variable kfx_workdir, default the repository)."),
        "overrides": Param([], type="array",
                           items={"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_.-]*=.*$"},
                           description='Config overrides KEY=VALUE, as `kfx --set`, e.g. ["train.epochs=2"].'),
        "root": Param(None, type=["null", "string"],
                      description="Artifact root (directory or tf.io.gfile URI); default: the config's root."),
        "no_cache": Param(False, type="boolean",
                          description="Re-run every stage even when a cached execution matches."),
        "wait_for_data": Param(False, type="boolean",
                               description="Wait (FileSensor, reschedule mode) for data_path before ingest."),
        "data_path": Param("", type="string",
                           description="File, folder or glob the sensor waits for (the ingest source)."),
    }


def kfx_argv(stage: Stage, kfx_bin: str, params: dict, run_id: str, inputs: dict[str, str],
             summary_json: str) -> list[str]:
    """The `kfx component` command line of one stage.

    Args:
        stage: the stage to run.
        kfx_bin: the ML environment's `kfx` executable.
        params: the DAG run's params (config, overrides, root, no_cache).
        run_id: the Airflow run id, used as kfx's run id.
        inputs: input name -> URI, from the upstream tasks' XComs.
        summary_json: where kfx writes the run summary.

    Returns:
        The argument vector.
    """
    argv = [kfx_bin, "component", stage.name, "-c", params["config"], "--run-id", run_id]
    if params.get("root"):
        argv += ["--root", params["root"]]
    if params.get("no_cache"):
        argv.append("--no-cache")
    for override in params.get("overrides") or ():
        argv += ["--set", override]
    for name, uri in sorted(inputs.items()):
        argv += ["--input", f"{name}={uri}"]
    return argv + ["--summary-json", summary_json]


def xcom_value(component: dict) -> dict:
    """What a stage's task leaves in XCom: status, execution id, output URIs, small metrics."""
    metrics = {k: v for k, v in (component.get("metrics") or {}).items()
               if len(json.dumps(v, default=str)) <= MAX_XCOM_METRIC_CHARS}
    return {"status": component["status"], "execution_id": component.get("execution_id"),
            "outputs": component.get("outputs") or {}, "metrics": metrics}


class KfxStageOperator(BashOperator):
    """Runs one kfx stage in the ML environment through bash; returns the stage's XCom value.

    The command is built when the task runs, from the run's params and the upstream XComs, and
    logged before it starts; `kfx` streams its progress and, on failure, its one-paragraph
    message into the task log.
    """

    ui_color = "#e8f0fe"

    def __init__(self, *, stage: Stage, **kwargs):
        super().__init__(task_id=stage.name, bash_command=f"kfx component {stage.name}",
                         skip_on_exit_code=None, **kwargs)
        self.stage = stage

    def _inputs(self, ti) -> dict[str, str]:
        inputs = {}
        for name, binding in self.stage.inputs.items():
            if isinstance(binding, Upstream):
                upstream = ti.xcom_pull(task_ids=binding.stage) or {}
                uri = (upstream.get("outputs") or {}).get(binding.output)
                if uri is None:
                    raise AirflowFailException(
                        f"input {name!r} of {self.stage.name!r}: task {binding.stage!r} left no "
                        f"output {binding.output!r} in XCom (got {upstream!r})")
                inputs[name] = uri
        return inputs

    def _check_gate(self, ti) -> None:
        if self.stage.component not in RUNS_ONLY_IF:
            return
        input_name, metric = RUNS_ONLY_IF[self.stage.component]
        binding = self.stage.inputs.get(input_name)
        if not isinstance(binding, Upstream):
            return
        task_id = binding.stage
        metrics = (ti.xcom_pull(task_ids=task_id) or {}).get("metrics") or {}
        value = metrics.get(metric)
        if not value:
            raise AirflowSkipException(
                f"{self.stage.name} skipped: {task_id} reported {metric}={value!r}, so the model "
                f"is not approved: {_reasons(metrics)} (details in the {task_id} task log).")

    def execute(self, context):
        ti, params = context["ti"], context["params"]
        self._check_gate(ti)
        kfx_bin = Variable.get("kfx_bin", default=os.environ.get("KFX_BIN", DEFAULT_KFX_BIN))
        with tempfile.TemporaryDirectory(prefix=f"kfx-{self.stage.name}-") as tmp:
            summary_path = os.path.join(tmp, "summary.json")
            argv = kfx_argv(self.stage, kfx_bin, params, context["run_id"], self._inputs(ti), summary_path)
            # exec: kfx replaces bash, so a timeout's SIGTERM reaches it directly.
            self.bash_command = "exec " + shlex.join(argv)
            try:
                super().execute(context)
            except AirflowSkipException:
                raise
            except AirflowException as err:
                raise self._failure(err, summary_path) from None
            summary = json.loads(Path(summary_path).read_text())
        value = xcom_value(summary["components"][self.stage.name])
        self._publish(context, summary, value)
        return value

    def _failure(self, err: AirflowException, summary_path: str) -> AirflowException:
        """The exception to raise for a failed kfx: kfx's own message; no retry when futile."""
        code = self.subprocess_hook.sub_process.returncode if self.subprocess_hook.sub_process else None
        try:
            summary = json.loads(Path(summary_path).read_text())
            message = (summary["components"].get(self.stage.name, {}).get("error")
                       or summary.get("error") or str(err))
        except (OSError, ValueError):  # killed before it wrote a summary
            message = f"{err} (kfx exit status {code}; no summary written)"
        if code in NOT_RETRYABLE.get(self.stage.component, NOT_RETRYABLE_DEFAULT):
            return AirflowFailException(message)
        return AirflowException(message)

    def _publish(self, context, summary: dict, value: dict) -> None:
        if self.stage.component not in PUBLISHES:
            return
        published = value["metrics"].get(PUBLISHES[self.stage.component])
        if not published:
            raise AirflowSkipException(f"{self.stage.name} ran and published nothing "
                                       f"({PUBLISHES[self.stage.component]}={published!r}): "
                                       f"{_reasons(value['metrics'])}.")
        for asset in self.outlets:
            context["outlet_events"][asset].extra = {
                "pipeline": summary.get("pipeline"), "run_id": context["run_id"], **published}


def _reasons(metrics: dict) -> str:
    """A stage's `reasons` metric (the failed checks) as one line."""
    return "; ".join(map(str, metrics.get("reasons") or [])) or "no reasons reported"


class NewDataSensor(FileSensor):
    """FileSensor on the ingest source, passing at once unless the run asks to wait.

    An absolute `filepath` is used as it is, so no `fs_default` connection is needed for it.
    """

    @property
    def path(self) -> str:
        return self.filepath if os.path.isabs(self.filepath) else super().path

    def poke(self, context) -> bool:
        if not context["params"]["wait_for_data"]:
            self.log.info("wait_for_data is off: not waiting for new data.")
            return True
        if not self.filepath:
            # A plain error, not a sensor failure: soft_fail must not turn a bad run config into a skip.
            raise ValueError("wait_for_data is on but data_path is empty: set it to the ingest source path.")
        return super().poke(context)


def build_dag(dag_id: str = DAG_ID, config: str = DEFAULT_CONFIG, stages: tuple[Stage, ...] | None = None, *,
              start_date: datetime = START_DATE, catchup: bool = False, retry_delay: timedelta = RETRY_DELAY,
              paused: bool | None = None) -> DAG:
    """The retraining DAG: a sensor, then one KfxStageOperator per stage, wired as `stages`.

    Another DAG file may import this function to schedule another pipeline: the DAGs it makes
    are registered only where they are assigned to a module-level name (`auto_register=False`),
    so importing this module does not register `kfx_daily_retrain` a second time.

    Args:
        dag_id: the DAG's id.
        config: default of the `config` param; its graph (`stages:` or template) gives the tasks.
            A run triggered with another config must have the same stage names.
        stages: the stage graph (default: read from `config`).
        start_date: the first logical date the schedule may create a run for.
        catchup: create the runs of every day since `start_date` (else only the latest one).
        retry_delay: the wait before a failed task's first retry (doubling after each).
        paused: whether the DAG is paused when Airflow first sees it (default: Airflow's
            `[core] dags_are_paused_at_creation`).

    Returns:
        The DAG.
    """
    if stages is None:
        path = Path(config) if Path(config).is_absolute() else REPO / config
        stages = _graph.load_stages(str(path))
    with DAG(
        dag_id=dag_id,
        description="kfx: ingest, validate, transform, tune, train, evaluate and push, daily.",
        doc_md=__doc__,
        schedule="@daily",
        start_date=start_date,
        catchup=catchup,
        is_paused_upon_creation=paused,
        auto_register=False,
        max_active_runs=1,
        dagrun_timeout=timedelta(hours=23),  # before the next day's run
        params=dag_params(config),
        default_args={"retries": 2, "retry_delay": retry_delay, "retry_exponential_backoff": 2,
                      "max_retry_delay": timedelta(minutes=30)},
        tags=["kfx", "ml", "retraining"],
    ) as dag:
        # No data after 6 hours: the day's run is skipped (soft_fail), not failed.
        sensor = NewDataSensor(
            task_id=SENSOR_TASK_ID, filepath="{{ params.data_path }}", mode="reschedule",
            poke_interval=300, timeout=int(timedelta(hours=6).total_seconds()), soft_fail=True, retries=0)
        tasks = {}
        for stage in stages:
            tasks[stage.name] = KfxStageOperator(
                stage=stage,
                # The ML environment's working directory, where relative config paths resolve.
                cwd="{{ var.value.get('kfx_workdir', '" + str(REPO) + "') }}",
                env={"TF_CPP_MIN_LOG_LEVEL": "2"}, append_env=True,
                execution_timeout=EXECUTION_TIMEOUTS.get(stage.component, DEFAULT_TIMEOUT),
                outlets=[pushed_model_asset(dag_id)] if stage.component in PUBLISHES else [],
            )
        for stage in stages:
            upstream = sorted(stage.upstream)
            if upstream:
                tasks[stage.name].set_upstream([tasks[name] for name in upstream])
            else:
                tasks[stage.name].set_upstream(sensor)
    return dag


dag = build_dag(config=os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)
