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


def choose_strategy(kind: str, worker_timeout: float = 30.0):
    """The tf.distribute strategy: configured, or detected in the order TPU, TF_CONFIG, GPUs.

    Args:
        kind: "auto", "default", "mirrored", "multi_worker" or "tpu" (TrainConfig.strategy).
        worker_timeout: multi-worker: seconds without a heartbeat after which a worker counts as
            lost and the others' collectives are aborted (`heartbeat_timeout`).

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
        heartbeat_timeout(worker_timeout)
        return tf.distribute.MultiWorkerMirroredStrategy(), "multi_worker"
    gpus = tf.config.list_physical_devices("GPU")
    if kind == "mirrored" or (kind == "auto" and len(gpus) > 1):
        return tf.distribute.MirroredStrategy(), "mirrored"
    return tf.distribute.get_strategy(), "default"


def heartbeat_timeout(seconds: float) -> None:
    """Configure TensorFlow's coordination service as MultiWorkerMirroredStrategy would (it keeps
    a configuration made before it), with a heartbeat timeout of `seconds`: a killed worker is
    declared lost after that, and the survivors' collectives fail instead of waiting for it.
    Without a TF_CONFIG cluster (a local single-worker strategy) there is nothing to configure."""
    cluster = tf_config().get("cluster", {})
    jobs = [job for job in ("chief", "worker") if cluster.get(job)]
    if not jobs:
        return
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.eager import context

    context.context().configure_coordination_service(
        service_type="standalone", service_leader=f"/job:{jobs[0]}/replica:0/task:0",
        heartbeat_timeout_in_ms=int(seconds * 1000),
        coordinated_jobs=[coordination_config_pb2.CoordinatedJob(name=job, num_tasks=len(cluster[job]))
                          for job in jobs])


def lost_worker_error(err: Exception, worker_timeout: float, completed: int) -> str | None:
    """A clear message for a TensorFlow error that means a multi-worker peer was lost, else None.

    Args:
        err: the error fit raised.
        worker_timeout: train.worker_timeout, repeated in the message.
        completed: epochs the backup holds as completed (a rerun starts with the next one).
    """
    import re

    import tensorflow as tf

    if not isinstance(err, (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError,
                            tf.errors.CancelledError, tf.errors.InternalError)):
        return None
    text = str(err)
    if not re.search(r"heartbeat|unhealthy|[Cc]ollective ops is aborted|[Cc]oordination|Socket closed|"
                     r"[Cc]onnection reset|failed to connect", text):
        return None
    lost = sorted(set(re.findall(r"/job:(\w+)/replica:\d+/task:(\d+)", text)) - {_own_task()})
    who = ", ".join(f"{job} {index}" for job, index in lost) or "a peer"
    resume = (f"training resumes after the {completed} epoch(s) completed" if completed
              else "no epoch had completed, so training starts over")
    return (f"train: lost MultiWorkerMirroredStrategy {who} of the TF_CONFIG cluster (no heartbeat within "
            f"train.worker_timeout={worker_timeout:g} s, or its connection dropped); this worker "
            f"({task_id() or 'chief'}) stops instead of waiting for it. Restart every worker with the same "
            f"TF_CONFIG and config: {resume}. TensorFlow said: {text.splitlines()[0][:300]}")


def _own_task() -> tuple[str, str]:
    task = tf_config().get("task", {})
    return str(task.get("type", "")), str(task.get("index", ""))


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

