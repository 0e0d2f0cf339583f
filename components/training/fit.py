"""Training practices shared by tune and train: strategy, optimizer, schedule, loss, class weights.

Everything is driven by TrainConfig (pipeline/config_modeling.py), so a tuning trial compiles
its model exactly as the final training does.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any

from kfx.pipeline.component import ComponentError


# ------------------------------------------------------------------ distribution
def tf_config() -> dict:
    """The TF_CONFIG cluster description ({} when unset)."""
    try:
        return json.loads(os.environ.get("TF_CONFIG") or "{}")
    except json.JSONDecodeError as err:
        raise ComponentError(f"TF_CONFIG is not valid JSON: {err}") from None


def cluster_size() -> int:
    cluster = tf_config().get("cluster", {})
    return sum(len(v) for k, v in cluster.items() if k in ("chief", "worker"))


def is_chief() -> bool:
    """True unless this process is a non-chief member of a multi-worker cluster."""
    cfg = tf_config()
    task = cfg.get("task", {})
    if not task or cluster_size() <= 1:
        return True
    if "chief" in cfg.get("cluster", {}):
        return task.get("type") == "chief"
    return task.get("type") == "worker" and int(task.get("index", 0)) == 0


def task_id() -> str:
    """'chief' or e.g. 'worker1' in a cluster, '' otherwise (keys per-worker state)."""
    task = tf_config().get("task", {})
    return f"{task.get('type', '')}{task.get('index', '')}" if cluster_size() > 1 else ""


def choose_strategy(kind: str):
    """The tf.distribute strategy: configured, or detected in the order TPU, TF_CONFIG, GPUs.

    Args:
        kind: "auto", "default", "mirrored", "multi_worker" or "tpu" (TrainConfig.strategy).

    Returns:
        (strategy, name).
    """
    import tensorflow as tf

    if kind == "tpu" or (kind == "auto" and os.environ.get("TPU_NAME")):
        # Only when asked or a TPU is named: the resolver probes the GCE metadata server otherwise.
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=os.environ.get("TPU_NAME", ""))
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver), "tpu"
    if kind == "multi_worker" or (kind == "auto" and cluster_size() > 1):
        return tf.distribute.MultiWorkerMirroredStrategy(), "multi_worker"
    gpus = tf.config.list_physical_devices("GPU")
    if kind == "mirrored" or (kind == "auto" and len(gpus) > 1):
        return tf.distribute.MirroredStrategy(), "mirrored"
    return tf.distribute.get_strategy(), "default"


def use_mixed_precision(setting: str) -> bool:
    """mixed_float16 on GPU (auto), always (on) or never (off)."""
    if setting == "auto":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    return setting == "on"


# ------------------------------------------------------------------ optimization
def steps_per_epoch(rows: int, batch_size: int) -> int:
    return max(1, math.ceil(rows / batch_size))


def learning_rate(cfg, base: float, steps: int):
    """A float or a keras LearningRateSchedule (cosine / step); plateau is a callback."""
    import keras

    if cfg.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(base, decay_steps=max(1, cfg.epochs * steps))
    if cfg.lr_schedule == "step":
        return keras.optimizers.schedules.ExponentialDecay(
            base, decay_steps=cfg.step_decay_epochs * steps, decay_rate=cfg.step_decay_rate, staircase=True)
    return base


def optimizer(cfg, base_lr: float, steps: int):
    """The configured optimizer with schedule, decoupled weight decay and gradient clipping."""
    import keras

    common: dict[str, Any] = {"learning_rate": learning_rate(cfg, base_lr, steps)}
    if cfg.clipnorm:
        common["global_clipnorm"] = cfg.clipnorm
    if cfg.weight_decay > 0:
        common["weight_decay"] = cfg.weight_decay
    if cfg.optimizer == "adam":
        return keras.optimizers.Adam(**common)
    if cfg.optimizer == "adamw":
        return keras.optimizers.AdamW(**common)
    if cfg.optimizer == "rmsprop":
        return keras.optimizers.RMSprop(**common)
    return keras.optimizers.SGD(momentum=cfg.momentum, nesterov=cfg.momentum > 0, **common)


def compile_model(model, task: dict, cfg, base_lr: float, steps: int) -> None:
    """Compile with the task's loss/metrics and the configured optimizer."""
    from kfx.models import tasks

    loss, metrics = tasks.of(task).compile_args()
    model.compile(optimizer=optimizer(cfg, base_lr, steps), loss=loss, metrics=metrics)


def class_weight(cfg, task: dict) -> dict[int, float] | None:
    """Keras class_weight by class index for `train.class_weights`, as the task defines it.

    Raises:
        ComponentError: a configured class name that is not in the label vocabulary.
    """
    from kfx.models import tasks

    try:
        return tasks.of(task).class_weight(cfg.class_weights)
    except ValueError as err:
        raise ComponentError(f"train.class_weights {err}") from None

