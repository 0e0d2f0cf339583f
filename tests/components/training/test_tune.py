"""tune: local search writes the best values and the trial table; the budget is enforced;
max_trials 0 writes the defaults; a chief and two workers on loopback tune together."""
from __future__ import annotations

import json
import signal
import socket
import time
from pathlib import Path

import pytest

from tests.models import tiny_pipeline as tiny



@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return tiny.build(tmp_path_factory.mktemp("tune"), to_stage="transform")


def _run_tune(built, **tune):
    from kfx.pipeline.config import load_config
    from kfx.pipeline.runner import run_pipeline

    tmp = Path(built["config"]).parent
    cfg = load_config(tiny.write_config(tmp, "tune-variant.yaml", tune={**tiny.config(tmp)["tune"], **tune}))
    return run_pipeline(cfg, only=["tune"], use_cache=False)["components"]["tune"]


def _artifact(uri: str) -> tuple[dict, list]:
    from kfx.components.training.tune import BEST_FILE, TRIALS_FILE

    return json.loads(Path(uri, BEST_FILE).read_text()), json.loads(Path(uri, TRIALS_FILE).read_text())


@pytest.mark.parametrize("tuner", ["random", "bayesian", "hyperband"])
def test_search_writes_best_values_from_the_space_and_the_trial_table(built, tuner):
    from kfx import models
    from kfx.models.space import check

    res = _run_tune(built, tuner=tuner, max_trials=2, epochs=2 if tuner == "hyperband" else 1, objective="val_auc")
    assert res["status"] == "succeeded", res.get("error")
    best, trials = _artifact(res["outputs"]["hyperparameters"])
    space = models.get("mlp").SPACE
    assert best["family"] == "mlp" and best["source"] == "tuned" and best["tuner"] == tuner
    assert set(best["values"]) == {p.name for p in space} and check(space, best["values"]) == []
    assert best["objective"] == {"name": "val_auc", "direction": "max"}
    scores = [t["score"] for t in trials if t["score"] is not None]
    assert best["score"] == max(scores) and 0.5 <= best["score"] <= 1.0
    if tuner != "hyperband":  # hyperband sizes its own brackets from epochs
        assert len(trials) == 2
    assert res["metrics"]["trials"] == len(trials) and res["metrics"]["best_score"] == best["score"]


def test_zero_trials_writes_the_space_defaults(built):
    from kfx import models
    from kfx.models.space import defaults

    res = _run_tune(built, max_trials=0)
    best, trials = _artifact(res["outputs"]["hyperparameters"])
    assert best["values"] == defaults(models.get("mlp").SPACE) and best["source"] == "defaults"
    assert trials == [] and best["score"] is None


def test_time_budget_is_enforced(built):
    started = time.time()
    res = _run_tune(built, max_trials=50, epochs=1, max_seconds=0.001)
    assert res["status"] == "failed"
    assert "no trial produced objective 'val_loss' within the budget" in res["error"]
    assert time.time() - started < 60


def test_objective_the_task_does_not_report_fails_clearly(built):
    res = _run_tune(built, objective="val_rmse")
    assert res["status"] == "failed"
    assert "tune.objective: metric 'val_rmse' is not reported for a binary task" in res["error"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_distributed_tuning_chief_and_two_workers_on_loopback(built, tmp_path):
    """The same stage run three times (chief + 2 workers) through `kfx component tune`."""
    port = _free_port()
    args = ["component", "tune", "-c", str(built["config"]), "--set", "tune.max_trials=4",
            "--set", "tune.epochs=1", "--no-cache",
            *tiny.inputs_args(built["outputs"], examples=("ingest", "examples"), schema=("schema", "schema"),
                              transform_graph=("transform", "transform_graph"))]
    procs = {}
    for role in ("chief", "tuner0", "tuner1"):
        env = {"KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": str(port), "KERASTUNER_TUNER_ID": role}
        summary = tmp_path / f"{role}.json"
        procs[role] = (tiny.kfx([*args, "--root", str(tmp_path / role), "--summary-json", str(summary)], env=env),
                       summary)
        if role == "chief":
            time.sleep(3)  # let the chief bind the port first
    results = {}
    for role, (proc, summary) in procs.items():
        out, _ = proc.communicate(timeout=240)
        assert proc.returncode == 0, f"{role} failed:\n{out[-3000:]}"
        results[role] = json.loads(summary.read_text())["components"]["tune"]
    chief_best, chief_trials = _artifact(results["chief"]["outputs"]["hyperparameters"])
    assert results["chief"]["metrics"]["role"] == "chief"
    assert len(chief_trials) == 4 and all(t["score"] is not None for t in chief_trials)
    worker_ids = set()
    for role in ("tuner0", "tuner1"):
        best, trials = _artifact(results[role]["outputs"]["hyperparameters"])
        assert results[role]["metrics"]["role"] == "worker"
        assert set(best) == set(chief_best)                      # the same kind of artifact
        assert all(t["tuner"] == role for t in trials)
        worker_ids |= {t["trial_id"] for t in trials}
    # Every trial the chief's oracle handed out was run by one of the two workers.
    assert worker_ids == {t["trial_id"] for t in chief_trials}
    assert chief_best["score"] == max(t["score"] for t in chief_trials) or \
        chief_best["score"] == min(t["score"] for t in chief_trials)


def _mid_trial(search: Path) -> dict[str, str]:
    """{tuner id: trial id} of the workers running a trial, from the chief's oracle files
    (oracle.json's ongoing trials whose trial.json still says RUNNING)."""
    try:
        ongoing = json.loads((search / "oracle.json").read_text())["ongoing_trials"]
        return {tuner: trial for tuner, trial in ongoing.items()
                if json.loads((search / f"trial_{trial}" / "trial.json").read_text())["status"] == "RUNNING"}
    except (OSError, ValueError, KeyError):  # not written yet, or caught mid-write
        return {}


def test_a_worker_killed_mid_trial_is_rerun_elsewhere_and_the_search_ends(built, tmp_path):
    """SIGKILL one of two workers inside a trial: the chief declares it lost after
    tune.worker_timeout, the other worker reruns its trial, and chief and worker finish."""
    port, kills = _free_port(), 0
    chief_tmp = tmp_path / "chief-tmp"  # where the chief's oracle keeps its files (tempfile.mkdtemp)
    chief_tmp.mkdir()
    args = ["component", "tune", "-c", str(built["config"]), "--set", "tune.max_trials=3", "--set", "tune.epochs=1",
            "--set", "tune.batch_size=32", "--set", "tune.worker_timeout=8", "--no-cache",
            *tiny.inputs_args(built["outputs"], examples=("ingest", "examples"), schema=("schema", "schema"),
                              transform_graph=("transform", "transform_graph"))]
    procs = {}
    for role in ("chief", "tuner0", "tuner1"):
        env = {"KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": str(port), "KERASTUNER_TUNER_ID": role,
               **({"TMPDIR": str(chief_tmp)} if role == "chief" else {})}
        procs[role] = tiny.kfx([*args, "--root", str(tmp_path / role), "--summary-json", str(tmp_path / f"{role}.json")],
                               env=env)
    try:
        # Kill a worker inside a trial once both workers have been handed one.
        started, victim, deadline = set(), None, time.time() + 180
        while victim is None and time.time() < deadline and all(p.poll() is None for p in procs.values()):
            running = {}
            for search in chief_tmp.glob("kfx-tune-*/search"):
                running = _mid_trial(search)
            started |= set(running)
            if started == {"tuner0", "tuner1"} and running:
                victim = sorted(running)[0]
                procs[victim].send_signal(signal.SIGKILL)
                kills += 1
            time.sleep(0.05)
        assert victim is not None, "no worker was seen mid-trial: " + str({r: p.poll() for r, p in procs.items()})
        lost_trial, survivor = running[victim], ({"tuner0", "tuner1"} - {victim}).pop()
        outs = {role: procs[role].communicate(timeout=180)[0] for role in (victim, "chief", survivor)}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    print(f"tuner kills: {kills} ({victim} in trial {lost_trial})")
    assert procs[victim].returncode == -signal.SIGKILL
    for role in ("chief", survivor):
        assert procs[role].returncode == 0, f"{role} failed:\n{outs[role][-3000:]}"
    chief = json.loads((tmp_path / "chief.json").read_text())["components"]["tune"]
    assert chief["metrics"]["lost_workers"] == [victim]
    _, trials = _artifact(chief["outputs"]["hyperparameters"])
    assert len(trials) == 3 and all(t["status"] == "COMPLETED" and t["score"] is not None for t in trials)
    lost = next(t for t in trials if t["trial_id"] == lost_trial)
    assert lost["lost"] == [victim] and lost["runs"] == 2  # crashed once, then rerun
    assert all(t["lost"] == [] and t["runs"] == 1 for t in trials if t is not lost)
    # The survivor ran the lost trial again, and its artifact says so.
    survivor_res = json.loads((tmp_path / f"{survivor}.json").read_text())["components"]["tune"]
    _, survivor_trials = _artifact(survivor_res["outputs"]["hyperparameters"])
    assert lost_trial in {t["trial_id"] for t in survivor_trials}


def _in_process_chief(tmp_path, monkeypatch, cfg, seconds: float = 60):
    """A chief serving a tiny search's oracle in a daemon thread (a chief that hangs cannot keep
    the pytest worker alive); (tuner, thread, errors: what serve_oracle raised, once it ended)."""
    import threading

    import keras

    from kfx.components.training.tune import make_tuner, serve_oracle

    for key, value in {"KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": str(_free_port()),
                       "KERASTUNER_TUNER_ID": "chief"}.items():
        monkeypatch.setenv(key, value)

    def build(hp):
        hp.Float("learning_rate", 1e-4, 1e-1)
        return keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])

    deadline = time.time() + seconds
    tuner = make_tuner(cfg, build, ("val_loss", "min"), str(tmp_path), deadline=deadline)
    errors: list = []
    chief = threading.Thread(target=lambda: errors.append(_raised(serve_oracle, tuner.oracle, cfg.worker_timeout,
                                                                  deadline)), daemon=True)
    chief.start()
    return tuner, chief, errors


def test_a_chief_whose_workers_are_all_lost_fails_instead_of_waiting(tmp_path, monkeypatch):
    """In-process chief, one worker that takes a trial and goes silent: with no retries its trial
    is recorded FAILED naming the worker, and the chief stops with a clear error, not a hang."""
    import keras_tuner as kt
    from keras_tuner.src.distribute.oracle_client import OracleClient

    from kfx.pipeline.component import ComponentError
    from kfx.pipeline.config_modeling import TuneConfig

    cfg = TuneConfig(max_trials=3, worker_timeout=1, max_retries_per_trial=0)
    tuner, chief, errors = _in_process_chief(tmp_path, monkeypatch, cfg)
    trial = OracleClient(tuner.oracle).create_trial("w0")  # ... and nothing more from w0
    chief.join(timeout=30)
    assert not chief.is_alive(), "the chief is still waiting for its lost worker"
    assert isinstance(errors[0], ComponentError)
    assert "every tuner worker was lost (w0: no report for more than tune.worker_timeout=1 s)" in str(errors[0])
    assert "0 trial(s) completed" in str(errors[0])
    lost = tuner.oracle.trials[trial.trial_id]
    assert lost.status == kt.engine.trial.TrialStatus.FAILED and tuner.oracle.lost[trial.trial_id] == ["w0"]
    assert "tuner worker 'w0' stopped reporting" in lost.message and tuner.oracle.runs[trial.trial_id] == 1


def test_a_chief_that_no_worker_reaches_fails_at_the_deadline(tmp_path, monkeypatch):
    """No worker ever asks for a trial (one that crashed while loading its data): the chief stops
    at the tune deadline, naming its address, instead of serving for ever."""
    from kfx.pipeline.component import ComponentError
    from kfx.pipeline.config_modeling import TuneConfig

    _, chief, errors = _in_process_chief(tmp_path, monkeypatch, TuneConfig(max_trials=3, worker_timeout=1), seconds=1)
    chief.join(timeout=30)
    assert not chief.is_alive(), "the chief is still waiting for a worker after the deadline"
    assert isinstance(errors[0], ComponentError)
    assert "tune: no tuner worker asked the oracle at 127.0.0.1:" in str(errors[0])
    assert "for a trial within tune.max_seconds" in str(errors[0])


@pytest.mark.parametrize("ended_by", ["chief reaping a lost worker", "worker reporting"])
def test_the_failed_trial_limit_stops_the_chief_and_leaves_the_oracle_unlocked(tmp_path, monkeypatch, ended_by):
    """KerasTuner's max_consecutive_failed_trials raises inside a synchronized oracle method,
    whose lock kt.synchronized then never releases: the chief must fail with KerasTuner's
    message, and the oracle must still answer (any locked-out request would block for ever)."""
    import threading

    import grpc
    import keras_tuner as kt
    from keras_tuner.src.distribute.oracle_client import OracleClient

    from kfx.pipeline.component import ComponentError
    from kfx.pipeline.config_modeling import TuneConfig

    cfg = TuneConfig(max_trials=3, worker_timeout=1, max_retries_per_trial=0)
    tuner, chief, errors = _in_process_chief(tmp_path, monkeypatch, cfg)
    tuner.oracle.max_consecutive_failed_trials = 1
    client = OracleClient(tuner.oracle)
    trial = client.create_trial("w0")
    if ended_by == "worker reporting":
        trial.status = kt.engine.trial.TrialStatus.FAILED
        with pytest.raises(grpc.RpcError, match="consecutive failures exceeded"):  # the worker hears it
            client.end_trial(trial)
    chief.join(timeout=30)
    assert not chief.is_alive(), "the chief is still serving after KerasTuner stopped the search"
    assert isinstance(errors[0], ComponentError)
    assert "tune: Number of consecutive failures exceeded the limit of 1" in str(errors[0])
    probe = threading.Thread(target=tuner.oracle.get_trial, args=(trial.trial_id,), daemon=True)
    probe.start()
    probe.join(timeout=10)
    assert not probe.is_alive(), "the oracle's lock is still held: every later request waits for ever"


def _raised(fn, *args):
    try:
        fn(*args)
    except Exception as err:  # noqa: BLE001 - the test inspects it
        return err
    return None
