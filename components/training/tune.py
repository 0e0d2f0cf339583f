"""tune: KerasTuner search over the model family's space (the family is `train.model`).

The space is the family's declaration in models/ (shared with train); each trial compiles its
model with train's optimizer settings (components/modeling_fit.py) and trains on the
preprocessed tf.data pipeline. RandomSearch, BayesianOptimization or Hyperband; the budget is
`max_trials`, `epochs` and `max_seconds` (no trial starts after the deadline and a running one
stops at it). `max_trials: 0` skips the search and writes the space's defaults.

Distributed tuning is KerasTuner's own: with KERASTUNER_ORACLE_IP / KERASTUNER_ORACLE_PORT /
KERASTUNER_TUNER_ID set, the process whose tuner id contains "chief" serves the oracle and the
others run trials. Every role writes the same kind of artifact; the chief's holds all trials.

Output `hyperparameters`: best.json {"family", "values", "objective", "score", "tuner", "role"}
and trials.json (one row per trial: id, status, score, values, tuner).
"""
from __future__ import annotations

import json
import os
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


def _deadline_callback(deadline: float):
    import keras

    class StopAtDeadline(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if time.time() >= deadline:
                self.model.stop_training = True

    return StopAtDeadline()


def make_tuner(cfg, hypermodel, objective: tuple[str, str], directory: str, deadline: float):
    """A KerasTuner tuner of kind `cfg.tuner` with a deadline-aware oracle."""
    import keras_tuner as kt

    obj = kt.Objective(*objective)
    if cfg.tuner == "hyperband":
        oracle = _deadline_oracle(kt.oracles.HyperbandOracle, deadline)(
            objective=obj, max_epochs=cfg.epochs, factor=cfg.hyperband_factor, hyperband_iterations=1,
            seed=cfg.seed)
        tuner_cls = _RecordingHyperband()
    else:
        base = kt.oracles.BayesianOptimizationOracle if cfg.tuner == "bayesian" else kt.oracles.RandomSearchOracle
        oracle = _deadline_oracle(base, deadline)(objective=obj, max_trials=cfg.max_trials, seed=cfg.seed)
        tuner_cls = _Recording(kt.Tuner)
    return tuner_cls(oracle=oracle, hypermodel=hypermodel, directory=directory, project_name="search",
                     overwrite=True, executions_per_trial=cfg.executions_per_trial)


def _Recording(base):
    """`base` tuner that records each trial's best objective value locally (any role)."""

    class Recording(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.records: list[dict] = []

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
                     "values": dict(trial.hyperparameters.values), "tuner": None})
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
            tuner = make_tuner(cfg, _hypermodel(family, spec, train_cfg, steps), objective, workdir, deadline)
            if role == "chief":
                tuner.search()  # serves the oracle until the workers have finished every trial
                rows = _trial_rows(tuner.oracle)
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
               "source": best["source"],
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
