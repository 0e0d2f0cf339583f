"""train: Keras 3 training of a models/ family and the serving-ready SavedModel export.

Hyperparameters: the family's space defaults, then the tune artifact's best values (when the
`hyperparameters` input is given), then `train.hyperparameters` overrides. Input: the tf.data
pipeline of components/modeling_data.py with the transform's preprocessing layer. Strategy:
configured or detected (TPU, TF_CONFIG multi-worker, several GPUs, default), mixed precision on
GPU. `train.augmentation` maps random image transformations over the training batches only
(models/augment.py): the exported model never contains them.

Resume: BackupAndRestore writes the weights, optimizer state and epoch after every epoch to a
backup directory OUTSIDE the temporary output directory (which a killed run leaves behind and a
rerun never reuses): `<train.backup_dir or <root>/<pipeline>/train/.backup>/<key>`, where key
hashes the train config, the input artifact URIs and the code of this stage (and, in a cluster,
the worker's task id). A rerun of the same execution (same key) therefore continues from the
last finished epoch; the directory is deleted when training finishes. The epoch history is kept
there too, so history.json covers the epochs run before the kill. With fine_tune, the first
phase's weights and history are kept beside it once that phase ends (`<key>-first_phase`): a
kill during fine-tune resumes the fine-tune phase, not the first.

Warm start (optional input base_model, train.warm_start, freeze, fine_tune): the initial weights,
frozen layers and the second, lower-rate phase of components/training/warm_start.py.

Outputs:
    model: the SavedModel itself (saved_model.pb, variables/, assets.extra/ warmup requests),
        so push can copy the directory to <serving_base>/<name>/<version>/ unchanged.
    model_run: history.json, hyperparameters.json, metrics.json and TensorBoard logs (logs/).
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import time
from typing import Any

from kfx.pipeline.config_modeling import TrainConfig
from kfx.components.training import warm_start
from kfx.components.training.family import family_code
from kfx.pipeline import user_code
from kfx.pipeline.component import ComponentError, ComponentSpec, Context

MODEL, MODEL_RUN = "model", "model_run"
HISTORY_FILE, HPARAMS_FILE, METRICS_FILE, LOGS_DIR = "history.json", "hyperparameters.json", "metrics.json", "logs"
BACKUP_HISTORY = "history.json"
FINE_TUNE = "fine_tune"
# With fine_tune: the first phase's weights and history, kept under the backup until the run ends.
FIRST_PHASE, FIRST_PHASE_WEIGHTS = "first_phase", "model.weights.h5"


def resolve_hyperparameters(cfg, tuned_uri: str | None, config_dir: str = "") -> tuple[dict, str]:
    """(values, source) for train.model: defaults <- tuned best values <- train.hyperparameters.

    Raises:
        ComponentError: the tuned artifact is for another family than train.model.
    """
    from kfx import models
    from kfx.components.training.tune import load_hyperparameters
    from kfx.models.space import COMMON, resolve

    space = models.space_of(models.get(cfg.model, config_dir)) or COMMON
    tuned, source = None, "defaults"
    if tuned_uri:
        best = load_hyperparameters(tuned_uri)
        if best["family"] != cfg.model:
            raise ComponentError(
                f"train: the hyperparameters input was tuned for model {best['family']!r} but train.model is "
                f"{cfg.model!r}; rerun tune (kfx run --from tune --no-cache) or set train.model={best['family']}")
        tuned, source = best["values"], best.get("source", "tuned")
    if cfg.hyperparameters:
        source += "+overrides"
    return resolve(space, tuned, dict(cfg.hyperparameters)), source


def backup_dir(ctx: Context) -> str:
    """Where BackupAndRestore keeps state across executions of the same training (see module doc)."""
    from kfx.components.training.fit import task_id

    cfg = ctx.config
    h = hashlib.sha256()
    h.update(json.dumps(cfg.model_dump(mode="json", exclude={"cache", "verbose", "backup_dir", "worker_timeout"}),
                        sort_keys=True).encode())
    h.update(json.dumps(sorted((k, v) for k, v in ctx.inputs.items() if v)).encode())
    for name in (__name__, *SPEC.code):
        h.update(inspect.getsource(__import__(name, fromlist=["_"])).encode())
    h.update(user_code.fingerprint(family_code(cfg, ctx.pipeline)).encode())
    key = h.hexdigest()[:24] + (f"-{task_id()}" if task_id() else "")
    # The output dir is <root>/<pipeline>/train/<tmp-or-id>/model: its grandparent is the stage dir.
    base = cfg.backup_dir or f"{os.path.dirname(os.path.dirname(ctx.outputs[MODEL]))}/.backup"
    return f"{base.rstrip('/')}/{key}"


def _resumed_history(directory: str, state: str | None) -> dict[str, list]:
    """The epoch history saved under `directory`, if there is one and (with `state`) a backup
    state beside it to resume from; else empty."""
    import tensorflow as tf

    path = f"{directory}/{BACKUP_HISTORY}"
    if not tf.io.gfile.exists(path) or (state is not None and not tf.io.gfile.exists(state)):
        return {}
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def _completed_epochs(backup: str) -> int:
    """Epochs BackupAndRestore holds as completed under `backup` (0 without a readable state)."""
    import tensorflow as tf

    from kfx.models import compat

    try:
        with tf.io.gfile.GFile(compat.backup_state_path(backup)) as f:
            return int(json.load(f).get("epoch", 0))
    except (tf.errors.NotFoundError, ValueError):
        return 0


def _history_callback(path: str, history: dict[str, list], first_epoch: list):
    """Appends each epoch's logs to `history` and saves it to `path` (survives a kill)."""
    import keras
    import tensorflow as tf

    class PersistHistory(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if not first_epoch:
                first_epoch.append(epoch)

        def on_epoch_end(self, epoch, logs=None):
            # Saved before the backup: a kill between the two repeats this epoch, so drop any
            # entry of it (or later) from an earlier attempt before appending.
            keep = sum(1 for e in history.get("epoch", []) if e < epoch)
            for k in list(history):
                history[k] = history[k][:keep]
            history.setdefault("epoch", []).append(epoch)
            for k, v in (logs or {}).items():
                history.setdefault(k, []).append(float(v))
            tf.io.gfile.makedirs(os.path.dirname(path))
            with tf.io.gfile.GFile(path, "w") as f:
                json.dump(history, f)

    return PersistHistory()


def _callbacks(cfg, task: dict, backup: str, logs: str, history: dict, first_epoch: list) -> list:
    import keras

    from kfx.models import compat, tasks

    try:
        monitor, mode = tasks.of(task).objective(cfg.early_stopping_monitor)
    except ValueError as err:
        raise ComponentError(f"train.early_stopping_monitor: {err}") from None
    cbs = [_history_callback(f"{backup}-history/{BACKUP_HISTORY}", history, first_epoch),
           compat.BackupAndRestore(backup),
           keras.callbacks.TensorBoard(log_dir=logs, histogram_freq=0, write_graph=False)]
    if cfg.early_stopping_patience > 0:
        cbs.append(keras.callbacks.EarlyStopping(monitor=monitor, mode=mode, patience=cfg.early_stopping_patience,
                                                 restore_best_weights=True))
    if cfg.lr_schedule == "plateau":
        cbs.append(keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=cfg.plateau_factor,
                                                     patience=cfg.plateau_patience))
    return cbs


def score_split(functions: dict, examples: str, split: str, spec: dict, batch_size: int = 4096) -> dict[str, float]:
    """The task's headline metrics (e.g. accuracy and AUC, or RMSE) of the serving function on a split.

    Uses the raw-feature serving path (preprocessing inside), so the numbers are what clients get.
    """
    return split_metrics(spec, *split_scores(functions, examples, split, spec, batch_size))


def split_metrics(spec: dict, y, scores) -> dict[str, float]:
    """The task's headline metrics from a split's raw labels and scores (`split_scores`)."""
    from kfx.models import tasks

    task = tasks.of(spec["task"])
    return {"rows": int(len(y)), **task.headline(task.outcomes(y, scores))}


def split_scores(functions: dict, examples: str, split: str, spec: dict, batch_size: int = 4096) -> tuple:
    """(raw labels, the task's `SCORE_OUTPUT` of the serving function) of every row of a split."""
    import numpy as np

    from kfx.components.training.data import raw_dataset
    from kfx.models import tasks

    serve = functions["serving_default"][0]
    key = tasks.of(spec["task"]).SCORE_OUTPUT
    ys, scores = [], []
    for features, y in raw_dataset(examples, split, spec, batch_size):
        scores.append(serve(features)[key].numpy())
        ys.append(y.numpy())
    return np.concatenate(ys), np.concatenate(scores)


def _warmup_rows(examples: str, spec: dict, n: int) -> dict | None:
    from kfx.components.training.data import raw_dataset

    if n == 0:
        return None
    for features, _ in raw_dataset(examples, "eval", spec, n).take(1):
        return {k: v.numpy() for k, v in features.items()}
    return None


def run(ctx: Context) -> dict[str, Any]:
    import keras
    import tensorflow as tf

    from kfx import models
    from kfx.components.training import export as modeling_export
    from kfx.components.training.data import dataset
    from kfx.components.training.fit import (choose_strategy, class_weight, is_chief, lost_worker_error,
                                             steps_per_epoch, use_mixed_precision)
    from kfx.models import compat, tasks
    from kfx.models.augment import augmenter
    from kfx.models.preprocess import load_transform, make_preprocessor

    cfg = ctx.config
    started = time.time()
    fine_tune = None
    spec = load_transform(ctx.inputs["transform_graph"])
    task = spec["task"]
    examples = ctx.inputs["examples"]
    check_splits(tasks.of(task), _splits(examples))
    hp, hp_source = resolve_hyperparameters(cfg, ctx.inputs.get("hyperparameters"), ctx.pipeline.config_dir)
    family = models.get(cfg.model, ctx.pipeline.config_dir)
    keras.utils.set_random_seed(cfg.seed)
    strategy, strategy_name = choose_strategy(cfg.strategy, cfg.worker_timeout)
    mixed = use_mixed_precision(cfg.mixed_precision)
    previous_policy = keras.mixed_precision.dtype_policy().name
    if mixed:
        keras.mixed_precision.set_dtype_policy("mixed_float16")
    multi = strategy_name == "multi_worker"
    try:
        pre = make_preprocessor(spec)
        # Each replica gets batch_size rows: the global batch grows with the replicas.
        global_batch = cfg.batch_size * strategy.num_replicas_in_sync
        targets = getattr(family, "targets", None)  # the family's hooks (models/__init__.py)
        train_ds = dataset(examples, "train", spec, pre, global_batch, shuffle=True, shuffle_buffer=cfg.shuffle_buffer,
                           cache=cfg.cache_dataset, seed=cfg.seed, shard_by_data=multi, targets=targets,
                           augment=augmenter(cfg.augmentation, spec["outputs"], cfg.seed))
        eval_ds = dataset(examples, "eval", spec, pre, global_batch, cache=cfg.cache_dataset, shard_by_data=multi,
                          targets=targets)
        rows = tasks.of(task).training_row_count(spec["train_rows"], spec["train_rows"])
        steps = steps_per_epoch(rows, global_batch)
        if cfg.fine_tune and hasattr(family, "fit"):
            raise ComponentError(f"train.fine_tune: model {cfg.model!r} trains with its own fit hook; "
                                 f"the fine-tune phase needs Keras fit")
        with strategy.scope():
            model = family.build(spec["outputs"], task, hp)
        # Outside the scope: the source model is loaded as plain variables, then assigned.
        warm = warm_start.start(model, cfg, ctx.inputs.get(warm_start.BASE_MODEL), ctx.log)
        with strategy.scope():
            _compile(model, family, task, cfg, hp, hp["learning_rate"], steps)
        if multi:
            compat.build_before_fit(model, strategy, eval_ds)
        backup = backup_dir(ctx)
        first_phase = f"{backup}-{FIRST_PHASE}"
        first_epoch: list[int] = []
        logs = f"{ctx.outputs[MODEL_RUN]}/{LOGS_DIR}"
        if cfg.fine_tune and tf.io.gfile.exists(f"{first_phase}/{BACKUP_HISTORY}"):
            # A rerun after a kill during fine-tune: the first phase finished, keep its result.
            history = _resumed_history(first_phase, None)
            model.load_weights(f"{first_phase}/{FIRST_PHASE_WEIGHTS}")
            ctx.log.info("train: first phase already done (%d epochs); fine-tuning", len(history.get("epoch", [])))
        else:
            history = _resumed_history(f"{backup}-history", compat.backup_state_path(backup))
            callbacks = _callbacks(cfg, task, backup, logs, history, first_epoch)
            if hasattr(family, "fit"):
                family.fit(model, train_ds, eval_ds, hp, callbacks)
            else:
                model.fit(train_ds, validation_data=eval_ds, epochs=cfg.epochs, class_weight=class_weight(cfg, task),
                          callbacks=callbacks, verbose=cfg.verbose)
            if cfg.fine_tune:
                # BackupAndRestore deleted its state when fit ended: this marks the phase as done.
                tf.io.gfile.makedirs(first_phase)
                model.save_weights(f"{first_phase}/{FIRST_PHASE_WEIGHTS}")
                with tf.io.gfile.GFile(f"{first_phase}/{BACKUP_HISTORY}", "w") as f:
                    json.dump(history, f)
        if cfg.fine_tune:
            # A second fit: unfreezing changes the trainable variables its train step captures.
            done, fine_lr = len(history.get("epoch", [])), hp["learning_rate"] * cfg.fine_tune.learning_rate_factor
            fine_backup = f"{backup}-{FINE_TUNE}"
            history = _resumed_history(f"{fine_backup}-history", compat.backup_state_path(fine_backup)) or history
            if cfg.fine_tune.unfreeze:
                warm_start.unfreeze(model, warm)
            with strategy.scope():
                _compile(model, family, task, cfg.model_copy(update={"lr_schedule": "constant"}), hp, fine_lr, steps)
            model.fit(train_ds, validation_data=eval_ds, initial_epoch=done, epochs=done + cfg.fine_tune.epochs,
                      class_weight=class_weight(cfg, task), verbose=cfg.verbose,
                      callbacks=_callbacks(cfg, task, fine_backup, logs, history, first_epoch))
            fine_tune = {"epochs_run": len(history.get("epoch", [])) - done, "learning_rate": fine_lr}
        for path in (f"{backup}-history", f"{backup}-{FINE_TUNE}-history", first_phase):
            if tf.io.gfile.exists(path):
                tf.io.gfile.rmtree(path)
    except tf.errors.OpError as err:
        # A lost peer aborts the collectives: say which, and that a rerun resumes (not TF's text alone).
        message = multi and lost_worker_error(err, cfg.worker_timeout, _completed_epochs(backup_dir(ctx)))
        if message:
            raise ComponentError(message) from err
        raise
    finally:
        keras.mixed_precision.set_dtype_policy(previous_policy)
    fit_seconds = time.time() - started

    out = ctx.outputs[MODEL]
    functions = modeling_export.make_functions(pre, model, spec)
    # The scores do not depend on what `calibrate` picks on the eval split (e.g. a threshold),
    # which the export then carries.
    scored = {s: split_scores(functions, examples, s, spec) for s in ("eval", "test")
              if s in _splits(examples) and tasks.of(task).SCORES_ROWS}
    if "eval" in scored:
        try:
            spec = {**spec, "task": tasks.of(task).calibrate(*scored["eval"])}
        except ValueError as err:
            raise ComponentError(f"train: {err}") from None
    signatures = modeling_export.export(out, pre, model, spec, _warmup_rows(examples, spec, cfg.warmup_requests),
                                        model_name=ctx.pipeline.name,
                                        trainer={"model": cfg.model, "hyperparameters": hp},
                                        extra=family.signatures(model, spec) if hasattr(family, "signatures") else None)
    metrics: dict[str, Any] = {"rows": spec["train_rows"], "model": cfg.model, "strategy": strategy_name,
                               "replicas": strategy.num_replicas_in_sync, "chief": is_chief(),
                               "mixed_precision": mixed, "epochs_run": len(history.get("epoch", [])),
                               "resumed_from_epoch": first_epoch[0] if first_epoch else cfg.epochs,
                               "hyperparameters_source": hp_source, "fit_seconds": round(fit_seconds, 1),
                               "warm_start": warm, "fine_tune": fine_tune}
    for split, (y, scores) in scored.items():
        metrics.update({f"{split}_{k}": v for k, v in split_metrics(spec, y, scores).items()})
    run_dir = ctx.outputs[MODEL_RUN]
    for name, obj in ((HISTORY_FILE, history), (HPARAMS_FILE, {"family": cfg.model, "values": hp, "source": hp_source}),
                      (METRICS_FILE, {**metrics, "signatures": signatures})):
        with tf.io.gfile.GFile(f"{run_dir}/{name}", "w") as f:
            json.dump(obj, f, indent=1, sort_keys=True)
    ctx.log.info("train %s", metrics)
    return metrics


def _compile(model, family, task: dict, cfg, hp: dict, lr: float, steps: int) -> None:
    """The family's compile hook, else the task's loss and metrics with the configured optimizer."""
    from kfx.components.training.fit import compile_model

    if hasattr(family, "compile"):
        family.compile(model, task, {**hp, "learning_rate": lr})
    else:
        compile_model(model, task, cfg, lr, steps)


def check_splits(task, splits: list[str]) -> None:
    """A task that calibrates on the eval split (e.g. anomaly's threshold) needs one.

    Raises:
        ComponentError: no eval split; the message names the task and the splits present.
    """
    if task.CALIBRATES and "eval" not in splits:
        raise ComponentError(f"train: task {task.NAME!r} picks its decision threshold on an 'eval' split, and the "
                             f"examples have none (splits: {list(splits)}); add one to ingest's splits")


def _splits(examples: str) -> list[str]:
    from kfx.pipeline.artifacts import read_columns

    return read_columns(examples)["splits"]


def _code() -> tuple[str, ...]:
    from kfx.components.training.tune import code_modules

    return (*code_modules(), "kfx.components.training.export", "kfx.components.training.tune",
            "kfx.components.training.warm_start")


SPEC = ComponentSpec(name="train", config=TrainConfig,
                     inputs=("examples", "schema", "transform_graph", "hyperparameters", warm_start.BASE_MODEL),
                     outputs=(MODEL, MODEL_RUN), run=run, optional_inputs=("hyperparameters", warm_start.BASE_MODEL),
                     code=_code(), user_code=family_code, implied_inputs=warm_start.implied_inputs,
                     check_inputs=warm_start.check_inputs,
                     source_fingerprint=warm_start.source_fingerprint)
