"""tune: KerasTuner search over the model family's space (the family is `train.model`).

The space is the family's declaration in models/ (shared with train); each trial compiles its
model with train's optimizer settings (components/modeling_fit.py) and trains on the
preprocessed tf.data pipeline. RandomSearch, BayesianOptimization or Hyperband; the budget is
`max_trials`, `epochs` and `max_seconds` (no trial starts after the deadline and a running one
stops at it). `max_trials: 0` skips the search and writes the space's defaults.

Distributed tuning is KerasTuner's own: with KERASTUNER_ORACLE_IP / KERASTUNER_ORACLE_PORT /
KERASTUNER_TUNER_ID set, the process whose tuner id contains "chief" serves the oracle and the
others run trials. Every role writes the same kind of artifact; the chief's holds all trials.
A worker that dies does not hang the search: workers report to the chief every fifth of
`worker_timeout` while they run a trial, and the chief declares a worker that has been silent
for `worker_timeout` seconds lost, and ends its trial as crashed. KerasTuner then reruns it
(up to `max_retries_per_trial` times, on another worker, which waits for that while trials are
still running) or records it as failed; the trial table names the lost workers per trial.

Output `hyperparameters`: best.json {"family", "values", "objective", "score", "tuner", "role"}
and trials.json (one row per trial: id, status, score, values, tuner; the chief's rows also
have `runs` and `lost`, the workers lost while running it).
"""
from __future__ import annotations

import json
import logging
import os
import threading
import shutil
import tempfile
import time
from typing import Any

from kfx.pipeline.config_modeling import TrainConfig, TuneConfig
from kfx.components.training.family import family_code, tuned_model
from kfx.pipeline.component import ComponentError, ComponentSpec, Context

HYPERPARAMETERS = "hyperparameters"
BEST_FILE, TRIALS_FILE = "best.json", "trials.json"


def load_hyperparameters(uri: str) -> dict:
    """best.json of a hyperparameters artifact."""
    import tensorflow as tf

    with tf.io.gfile.GFile(f"{uri}/{BEST_FILE}") as f:
        return json.load(f)


def _deadline_oracle(base_cls, deadline: float):
    """`base_cls` whose oracle stops handing out trials after `deadline` (time.time())."""
    import keras_tuner as kt

    class DeadlineOracle(base_cls):
        def populate_space(self, trial_id):
            if time.time() >= deadline:
                return {"status": kt.engine.trial.TrialStatus.STOPPED, "values": None}
            return super().populate_space(trial_id)

    return DeadlineOracle


def _watched_oracle(base_cls, timeout: float):
    """`base_cls` that notes when each worker last reported and ends the trials of silent ones.

    Workers are keyed by KerasTuner's tuner id. Any request about a worker's trial (its creation,
    the worker's heartbeat `get_trial`, updates, its end) counts as a report. `reap` (called by
    the chief's loop) ends the running trial of a worker silent for more than `timeout` seconds as
    INVALID, which KerasTuner's own retry logic turns into a rerun or a FAILED trial.

    KerasTuner's limit of consecutive failed trials raises a RuntimeError inside `end_trial`, and
    `kt.synchronized` releases the oracle's lock only on a normal return: both ways of ending a
    trial catch it under the lock, keep it in `failure` (for the chief's loop) and raise it only
    once the lock is released, or every later request would wait for the lock for ever.
    """
    import keras_tuner as kt

    Status = kt.engine.trial.TrialStatus

    class WatchedOracle(base_cls):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.last_seen: dict[str, float] = {}
            self.lost: dict[str, list[str]] = {}      # trial id -> workers lost while running it
            self.lost_workers: list[str] = []
            self.runs: dict[str, int] = {}              # trial id -> times it ended (crashed or not)
            self.failure: RuntimeError | None = None    # KerasTuner stopped the search

        def _seen(self, trial_id: str) -> None:
            for tuner_id, trial in self.ongoing_trials.items():
                if trial.trial_id == trial_id:
                    self.last_seen[tuner_id] = time.time()

        @kt.synchronized
        def create_trial(self, tuner_id):
            self.last_seen[tuner_id] = time.time()
            trial = super().create_trial(tuner_id)
            if trial.status == Status.STOPPED and self.max_retries_per_trial and any(
                    t != tuner_id for t in self.ongoing_trials):
                # Another worker may still be lost mid-trial: stay to rerun its trial.
                self.tuner_ids.add(tuner_id)
                trial.status = Status.IDLE
            return trial

        @kt.synchronized
        def get_trial(self, trial_id):
            self._seen(trial_id)
            return super().get_trial(trial_id)

        @kt.synchronized
        def update_trial(self, trial_id, metrics, step=0):
            self._seen(trial_id)
            return super().update_trial(trial_id, metrics, step=step)

        def _end(self, trial) -> RuntimeError | None:
            try:
                super().end_trial(trial)
            except RuntimeError as err:  # max_consecutive_failed_trials, raised with the lock held
                self.failure = err
                return err
            return None

        def end_trial(self, trial):
            failure = self._end_reported(trial)
            if failure is not None:
                raise failure

        @kt.synchronized
        def _end_reported(self, trial) -> RuntimeError | None:
            if trial.trial_id in self.lost and not any(t.trial_id == trial.trial_id
                                                       for t in self.ongoing_trials.values()):
                # A worker declared lost finished after all: its trial was already ended.
                logging.getLogger("kfx").warning("tune: late result for trial %s ignored", trial.trial_id)
                return None
            self._seen(trial.trial_id)
            self.runs[trial.trial_id] = self.runs.get(trial.trial_id, 0) + 1
            return self._end(trial)

        @kt.synchronized
        def reap(self, now: float) -> list[str]:
            """End the trials of workers silent for more than `timeout` seconds; their ids (a
            RuntimeError of KerasTuner's is kept in `failure`, not raised: see the class)."""
            lost = sorted(t for t in self.tuner_ids if now - self.last_seen.get(t, now) > timeout)
            for tuner_id in lost:
                self.tuner_ids.discard(tuner_id)
                self.lost_workers.append(tuner_id)
                trial = self.ongoing_trials.get(tuner_id)
                if trial is not None:
                    self.lost.setdefault(trial.trial_id, []).append(tuner_id)
                    trial.status = Status.INVALID
                    trial.message = (f"tuner worker {tuner_id!r} stopped reporting for more than {timeout:g} s "
                                     f"(tune.worker_timeout) while running trial {trial.trial_id}")
                    logging.getLogger("kfx").warning("tune: %s", trial.message)
                    self.runs[trial.trial_id] = self.runs.get(trial.trial_id, 0) + 1
                    self._end(trial)
            return lost

    return WatchedOracle


def serve_oracle(oracle, timeout: float, deadline: float, poll: float = 0.5) -> None:
    """The chief: serve `oracle` to the workers until the search is over, reaping lost workers.

    Over when a worker has been told to stop and no trial runs and no worker is left. The chief
    fails instead of waiting forever when its workers were all lost (none reported for `timeout`
    seconds) or when none asked for a trial by `deadline` (time.time(): tune.max_seconds).

    Raises:
        ComponentError: every worker was lost, none came, or KerasTuner's limit of consecutive
            failed trials was reached.
    """
    from kfx.models import compat

    address = f"{os.environ['KERASTUNER_ORACLE_IP']}:{os.environ['KERASTUNER_ORACLE_PORT']}"
    server, servicer = compat.start_oracle_server(oracle, address)
    try:
        while True:
            time.sleep(poll)
            now = time.time()
            oracle.reap(now)
            if oracle.failure is not None:  # KerasTuner's max_consecutive_failed_trials
                raise ComponentError(f"tune: {oracle.failure}")
            if not oracle.last_seen and now > deadline:
                raise ComponentError(
                    f"tune: no tuner worker asked the oracle at {address} for a trial within tune.max_seconds; "
                    f"start the workers with KERASTUNER_ORACLE_IP/PORT set to it and a KERASTUNER_TUNER_ID "
                    f"without 'chief', and check their logs (a worker that crashed before its first trial)")
            if not oracle.ongoing_trials and not oracle.tuner_ids:
                if servicer.stop_triggered:
                    return
                if oracle.lost_workers and now - max(oracle.last_seen.values()) > timeout:
                    raise ComponentError(
                        f"tune: every tuner worker was lost ({', '.join(oracle.lost_workers)}: no report for "
                        f"more than tune.worker_timeout={timeout:g} s) before the search ended; "
                        f"{sum(1 for t in oracle.trials.values() if t.score is not None)} trial(s) completed. "
                        f"Restart the workers (same KERASTUNER_ORACLE_IP/PORT) or rerun tune")
    finally:
        server.stop(grace=1)


def _deadline_callback(deadline: float):
    import keras

    class StopAtDeadline(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if time.time() >= deadline:
                self.model.stop_training = True

    return StopAtDeadline()


def make_tuner(cfg, hypermodel, objective: tuple[str, str], directory: str, deadline: float,
               heartbeat: float | None = None):
    """A KerasTuner tuner of kind `cfg.tuner` with a deadline-aware oracle that watches its
    workers (`tune.worker_timeout`); `heartbeat`: seconds between a worker's reports."""
    import keras_tuner as kt

    obj = kt.Objective(*objective)
    retries = {"max_retries_per_trial": cfg.max_retries_per_trial, "seed": cfg.seed}
    if cfg.tuner == "hyperband":
        oracle = _watched_oracle(_deadline_oracle(kt.oracles.HyperbandOracle, deadline), cfg.worker_timeout)(
            objective=obj, max_epochs=cfg.epochs, factor=cfg.hyperband_factor, hyperband_iterations=1, **retries)
        tuner_cls = _RecordingHyperband()
    else:
        base = kt.oracles.BayesianOptimizationOracle if cfg.tuner == "bayesian" else kt.oracles.RandomSearchOracle
        oracle = _watched_oracle(_deadline_oracle(base, deadline), cfg.worker_timeout)(
            objective=obj, max_trials=cfg.max_trials, **retries)
        tuner_cls = _Recording(kt.Tuner)
    tuner = tuner_cls(oracle=oracle, hypermodel=hypermodel, directory=directory, project_name="search",
                      overwrite=True, executions_per_trial=cfg.executions_per_trial)
    tuner.heartbeat = heartbeat
    return tuner


def _Recording(base):
    """`base` tuner that records each trial's best objective value locally (any role)."""

    class Recording(base):
        heartbeat: float | None = None  # a worker: seconds between reports on its running trial

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.records: list[dict] = []
            self._running: str | None = None
            self._ran = True

        def pre_create_trial(self):
            if not self._ran:  # the oracle said IDLE (trials of other workers still run): ask again soon
                time.sleep(0.5)
            self._ran = False
            super().pre_create_trial()

        def on_trial_begin(self, trial):
            self._running, self._ran = trial.trial_id, True
            if self.heartbeat and not hasattr(self, "_reporter"):
                self._reporter = threading.Thread(target=self._report, daemon=True, name="kfx-tune-heartbeat")
                self._reporter.start()
            logging.getLogger("kfx").info("tune: %s started trial %s", self.tuner_id, trial.trial_id)
            super().on_trial_begin(trial)

        def on_trial_end(self, trial):
            super().on_trial_end(trial)
            self._running = None
            logging.getLogger("kfx").info("tune: %s finished trial %s", self.tuner_id, trial.trial_id)

        def _report(self):
            # Tells the chief this worker is alive (its oracle notes the trial's worker as seen).
            while True:
                time.sleep(self.heartbeat)
                running = self._running
                if running is not None:
                    try:
                        self.oracle.get_trial(running)
                    except Exception as err:  # noqa: BLE001 - a missed report must not end the trial
                        logging.getLogger("kfx").warning("tune: report to the chief failed: %s", err)

        def run_trial(self, trial, *args, **kwargs):
            results = super().run_trial(trial, *args, **kwargs)
            name, direction = self.oracle.objective.name, self.oracle.objective.direction
            values = [v for h in (results if isinstance(results, list) else [results])
                      if hasattr(h, "history") for v in h.history.get(name, [])]
            best = float((max if direction == "max" else min)(values)) if values else None
            self.records.append({"trial_id": trial.trial_id, "status": "COMPLETED", "score": best,
                                 "values": dict(trial.hyperparameters.values),
                                 "tuner": os.environ.get("KERASTUNER_TUNER_ID", "local")})
            return results

    return Recording


def _RecordingHyperband():
    import keras_tuner as kt

    class HyperbandWithOracle(kt.Hyperband):
        # Hyperband's constructor builds its own oracle; this one takes ours (with the deadline).
        def __init__(self, oracle, hypermodel, **kwargs):
            kt.Tuner.__init__(self, oracle=oracle, hypermodel=hypermodel, **kwargs)

    return _Recording(HyperbandWithOracle)


def _hypermodel(family, spec: dict, train_cfg, steps: int):
    import keras_tuner as kt

    from kfx.components.training.fit import compile_model
    from kfx.models.space import declare

    class FamilyHyperModel(kt.HyperModel):
        """The family's model per trial, compiled and fitted as train does (its hooks included)."""

        def build(self, hp):
            values = declare(family.SPACE, hp)
            model = family.build(spec["outputs"], spec["task"], values)
            if hasattr(family, "compile"):
                family.compile(model, spec["task"], values)
            else:
                compile_model(model, spec["task"], train_cfg, values["learning_rate"], steps)
            return model

        def fit(self, hp, model, train_ds, *args, **kwargs):
            if hasattr(family, "fit"):  # the hook returns the keras History the tuner scores
                return family.fit(model, train_ds, kwargs.get("validation_data"), dict(hp.values),
                                  kwargs.get("callbacks", []))
            return model.fit(train_ds, *args, **kwargs)

    return FamilyHyperModel()


def _trial_rows(oracle) -> list[dict]:
    rows = []
    for trial in sorted(oracle.trials.values(), key=lambda t: t.trial_id):
        score = None if trial.score is None else float(trial.score)
        rows.append({"trial_id": trial.trial_id, "status": str(trial.status), "score": score,
                     "values": dict(trial.hyperparameters.values), "tuner": None,
                     "runs": oracle.runs.get(trial.trial_id, 0), "lost": oracle.lost.get(trial.trial_id, []),
                     "message": trial.message})
    return rows


def run(ctx: Context) -> dict[str, Any]:
    import tensorflow as tf

    from kfx import models
    from kfx.components.training.data import dataset
    from kfx.components.training.fit import steps_per_epoch
    from kfx.models import compat, tasks
    from kfx.models.augment import augmenter
    from kfx.models.preprocess import load_transform, make_preprocessor
    from kfx.models.space import COMMON, defaults

    cfg, train_cfg = ctx.config, ctx.pipeline.stage("train")
    if not isinstance(train_cfg, TrainConfig):  # no stage named train: its settings' defaults
        train_cfg = TrainConfig()
    family_name = tuned_model(cfg, ctx.pipeline)
    family = models.get(family_name, ctx.pipeline.config_dir)
    space = models.space_of(family)
    spec = load_transform(ctx.inputs["transform_graph"])
    try:
        objective = tasks.of(spec["task"]).objective(cfg.objective)
    except ValueError as err:
        raise ComponentError(f"tune.objective: {err}") from None
    out = ctx.outputs[HYPERPARAMETERS]
    role = compat.tuner_role()
    best: dict[str, Any] = {"family": family_name, "objective": {"name": objective[0], "direction": objective[1]},
                            "tuner": cfg.tuner, "role": role, "tuner_id": os.environ.get("KERASTUNER_TUNER_ID")}
    started = time.time()
    lost_workers: list[str] = []
    if cfg.max_trials == 0 or not space:
        # Without a SPACE there is nothing to search: the defaults pass through, and say so.
        best.update(values=defaults(space or COMMON), score=None,
                    source="defaults" if space else "defaults (model has no SPACE)")
        rows: list[dict] = []
    else:
        import keras

        keras.utils.set_random_seed(cfg.seed)
        rows = min(cfg.train_rows or spec["train_rows"], spec["train_rows"])
        steps = steps_per_epoch(tasks.of(spec["task"]).training_row_count(rows, spec["train_rows"]), cfg.batch_size)
        deadline = started + cfg.max_seconds
        workdir = tempfile.mkdtemp(prefix="kfx-tune-")
        try:
            tuner = make_tuner(cfg, _hypermodel(family, spec, train_cfg, steps), objective, workdir, deadline,
                               heartbeat=cfg.worker_timeout / 5 if role == "worker" else None)
            if role == "chief":
                tuner.save()
                serve_oracle(tuner.oracle, cfg.worker_timeout, deadline)  # until the workers have ended every trial
                rows = _trial_rows(tuner.oracle)
                lost_workers = list(tuner.oracle.lost_workers)
            else:
                pre = make_preprocessor(spec)
                # Trials train as train does: with train.augmentation (none on the eval split).
                train_ds = dataset(ctx.inputs["examples"], "train", spec, pre, cfg.batch_size, shuffle=True,
                                   seed=cfg.seed, rows=cfg.train_rows, targets=getattr(family, "targets", None),
                                   augment=augmenter(train_cfg.augmentation, spec["outputs"], cfg.seed))
                eval_ds = dataset(ctx.inputs["examples"], "eval", spec, pre, cfg.batch_size,
                                  targets=getattr(family, "targets", None))
                tuner.search(train_ds, validation_data=eval_ds, epochs=cfg.epochs, verbose=0,
                             callbacks=[_deadline_callback(deadline)])
                rows = _trial_rows(tuner.oracle) if role == "local" else tuner.records
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        scored = [r for r in rows if r["score"] is not None]
        if not scored:
            raise ComponentError(f"tune: no trial produced objective {objective[0]!r} within the budget "
                                 f"(max_trials={cfg.max_trials}, max_seconds={cfg.max_seconds})")
        pick = (max if objective[1] == "max" else min)(scored, key=lambda r: r["score"])
        # Hyperband adds its bookkeeping values (tuner/epochs, ...): keep the family's names only.
        names = {p.name for p in space}
        values = {**defaults(space), **{k: v for k, v in pick["values"].items() if k in names}}
        best.update(values=values, score=pick["score"], trial_id=pick["trial_id"], source="tuned")
    with tf.io.gfile.GFile(f"{out}/{BEST_FILE}", "w") as f:
        json.dump(best, f, indent=1, sort_keys=True)
    with tf.io.gfile.GFile(f"{out}/{TRIALS_FILE}", "w") as f:
        json.dump(rows, f, indent=1, sort_keys=True)
    metrics = {"trials": len(rows), "best_score": best["score"], "objective": objective[0], "role": role,
               "source": best["source"], "lost_workers": lost_workers,
               "family": family_name, "seconds": round(time.time() - started, 1), "best": best["values"]}
    ctx.log.info("tune %s", metrics)
    return metrics


def code_modules() -> tuple[str, ...]:
    """kfx modules whose source is part of tune's and train's code version. The family's own
    module (and what it imports from its folder) is added per stage (`family_code`), so adding
    or editing another family does not invalidate a cached train or tune."""
    from kfx.models import kinds, tasks

    return ("kfx.components.training.data", "kfx.components.training.fit", "kfx.components.training.family",
            "kfx.models.preprocess", "kfx.models.augment", "kfx.models.space", "kfx.models.compat", *tasks.modules(),
            *kinds.modules())


SPEC = ComponentSpec(name="tune", config=TuneConfig, inputs=("examples", "schema", "transform_graph"), outputs=(HYPERPARAMETERS,),
                     run=run, code=code_modules(), config_sections=("train",), user_code=family_code)
