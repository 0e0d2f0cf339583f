"""Every use of Keras and KerasTuner private API, in one place, with the versions it was written for.

kfx leans on a few internals that have no public equivalent:
- the metric reduction of Keras's TensorFlow trainer under MultiWorkerMirroredStrategy
  (`patch_multi_worker_reduce`), and the model's symbolic build (`build_before_fit`);
- BackupAndRestore's file paths, to recover from a kill during its own write (`BackupAndRestore`,
  `backup_state_path`);
- KerasTuner's distributed-tuning role (`tuner_role`) and its chief's gRPC servicer, which kfx
  serves in its own loop (`start_oracle_server`) to end the trials of lost workers.

Written for keras 3.15.1 and keras-tuner 1.4.8 (the pins in pyproject.toml). `check()` verifies
that every private target below still exists with the shape this code expects, and each helper
checks its own targets before use, so an upgrade that breaks one fails with an error naming the
target, the version it was written for and the version installed, instead of an AttributeError
in the middle of training. Nothing heavy is imported at module top.
"""
from __future__ import annotations

import functools
import importlib
import importlib.metadata
import inspect
import logging
from dataclasses import dataclass

WRITTEN_FOR = {"keras": "3.15.1", "keras-tuner": "1.4.8"}


class CompatError(RuntimeError):
    """A private Keras/KerasTuner target kfx relies on is missing or has changed shape."""


@dataclass(frozen=True)
class Target:
    """One private name kfx uses.

    Attributes:
        dist: the distribution that provides it ("keras" or "keras-tuner").
        module: the module to import.
        attr: dotted attribute path inside the module ("Model._symbolic_build").
        params: parameter names its signature must have, in this order (None: not checked).
        instance_attrs: attributes an instance (made with `instance_args`) must have.
        instance_args: positional arguments to construct that instance.
    """
    dist: str
    module: str
    attr: str
    params: tuple[str, ...] | None = None
    instance_attrs: tuple[str, ...] = ()
    instance_args: tuple = ()

    @property
    def name(self) -> str:
        return f"{self.module}.{self.attr}"


_TRAINER = "keras.src.backend.tensorflow.trainer"
REDUCE_PER_REPLICA = Target("keras", _TRAINER, "reduce_per_replica", ("values", "strategy", "reduction"))
IS_MULTI_WORKER = Target("keras", _TRAINER, "_collective_all_reduce_multi_worker", ("strategy",))
SYMBOLIC_BUILD = Target("keras", "keras", "Model._symbolic_build", ("self", "iterator", "data_batch"))
MAYBE_SYMBOLIC_BUILD = Target("keras", "keras", "Model._maybe_symbolic_build", ("self", "iterator", "data_batch"))
BACKUP_PATHS = Target("keras", "keras", "callbacks.BackupAndRestore", ("backup_dir", "save_freq", "double_checkpoint"),
                      instance_attrs=("_weights_path", "_training_metadata_path", "_prev_weights_path",
                                      "_prev_training_metadata_path"),
                      instance_args=("kfx-compat-check",))
HAS_CHIEF_ORACLE = Target("keras-tuner", "keras_tuner.src.distribute.utils", "has_chief_oracle", ())
IS_CHIEF_ORACLE = Target("keras-tuner", "keras_tuner.src.distribute.utils", "is_chief_oracle", ())
ORACLE_SERVICER = Target("keras-tuner", "keras_tuner.src.distribute.oracle_chief", "OracleServicer", ("oracle",))
ORACLE_GRPC = Target("keras-tuner", "keras_tuner.src.protos", "get_service_grpc", ())
TARGETS = (REDUCE_PER_REPLICA, IS_MULTI_WORKER, SYMBOLIC_BUILD, MAYBE_SYMBOLIC_BUILD, BACKUP_PATHS,
           HAS_CHIEF_ORACLE, IS_CHIEF_ORACLE, ORACLE_SERVICER, ORACLE_GRPC)


def installed_version(dist: str) -> str:
    """The installed version of distribution `dist` ("not installed" when absent)."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _problem(target: Target) -> str | None:
    """What is wrong with `target` in the installed version, or None."""
    try:
        obj = importlib.import_module(target.module)
    except ImportError as err:
        return f"module {target.module} cannot be imported ({err})"
    for part in target.attr.split("."):
        if not hasattr(obj, part):
            return f"{part!r} no longer exists"
        obj = getattr(obj, part)
    if target.params is not None:
        if not callable(obj):
            return "it is no longer callable"
        params = list(inspect.signature(obj).parameters)
        if params[:len(target.params)] != list(target.params):
            return f"its parameters are now {params}, expected {list(target.params)} first"
    if target.instance_attrs:
        instance = obj(*target.instance_args)
        missing = [a for a in target.instance_attrs if not hasattr(instance, a)]
        if missing:
            return f"its instances no longer have {missing}"
    return None


def _error(target: Target, problem: str) -> CompatError:
    return CompatError(
        f"{target.name}: {problem}. kfx.models.compat was written for {target.dist} "
        f"{WRITTEN_FOR[target.dist]}, installed {target.dist} is {installed_version(target.dist)}; "
        f"update kfx/models/compat.py for this version or install {target.dist}=={WRITTEN_FOR[target.dist]}.")


def check(targets: tuple[Target, ...] = TARGETS) -> None:
    """Verify that every private target exists with the expected shape in the installed versions.

    Raises:
        CompatError: naming the first broken target, the version written for and the one installed.
    """
    for target in targets:
        problem = _problem(target)
        if problem:
            raise _error(target, problem)


@functools.cache
def _require(*targets: Target) -> None:
    """check() for these targets, once per process (they cannot change while it runs)."""
    check(targets)


def _resolve(target: Target):
    obj = importlib.import_module(target.module)
    for part in target.attr.split("."):
        obj = getattr(obj, part)
    return obj


# ------------------------------------------------------------------ multi-worker training
def patch_multi_worker_reduce() -> None:
    """Work around Keras 3.15's metric reduction under a multi-worker strategy (idempotent).

    Under MultiWorkerMirroredStrategy Keras reduces each step's metric values with
    `strategy.reduce("MEAN", v, axis=0)`, which fails for the scalar metric values
    ("Invalid reduction dimension 0 for input with 0 dimensions"). Scalars are reduced with
    axis=None (the cross-worker mean) instead; everything else keeps Keras's behaviour. The
    trainer looks the function up as a module global at trace time, so replacing it there is
    enough.
    """
    _require(REDUCE_PER_REPLICA, IS_MULTI_WORKER)
    import keras

    trainer = importlib.import_module(REDUCE_PER_REPLICA.module)
    original = trainer.reduce_per_replica
    if getattr(original, "_kfx_patched", False):
        return
    is_multi_worker = _resolve(IS_MULTI_WORKER)

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and is_multi_worker(strategy):
            def reduce(v):
                rank = strategy.experimental_local_results(v)[0].shape.rank
                return strategy.reduce("MEAN", v, axis=None if rank == 0 else 0)

            return keras.tree.map_structure(reduce, values)
        return original(values, strategy, reduction)

    reduce_per_replica._kfx_patched = True
    trainer.reduce_per_replica = reduce_per_replica


def build_before_fit(model, strategy, local_ds) -> None:
    """Build the model's loss, metrics and optimizer state from one local batch.

    Keras 3.15's fit/evaluate first reduce the first *distributed* batch with strategy.reduce,
    which fails for dict features under a real multi-worker MultiWorkerMirroredStrategy
    ("Attempt to convert a value ({...PerReplica...}) ... to a Tensor"). That step only exists to
    build this state, so it is built here and the step is skipped for this model instance.
    Applies patch_multi_worker_reduce too, which the same training needs.
    """
    _require(SYMBOLIC_BUILD, MAYBE_SYMBOLIC_BUILD)
    patch_multi_worker_reduce()
    with strategy.scope():
        model._symbolic_build(data_batch=next(iter(local_ds)))
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None


# ------------------------------------------------------------------ BackupAndRestore
def backup_state_path(backup_dir: str) -> str:
    """The file whose presence means BackupAndRestore saved a state under `backup_dir`."""
    _require(BACKUP_PATHS)
    import keras

    return keras.callbacks.BackupAndRestore(backup_dir)._training_metadata_path


def BackupAndRestore(backup_dir: str):
    """keras.callbacks.BackupAndRestore that survives a kill during its own write.

    double_checkpoint keeps the previous state beside the latest, and Keras falls back to it when
    the latest weights cannot be read (OSError) but not when the metadata JSON is half-written
    (ValueError): that case restores the previous pair here. If nothing readable is left (killed
    during the very first save), training starts over with a warning.
    """
    _require(BACKUP_PATHS)
    import keras
    import tensorflow as tf

    class Backup(keras.callbacks.BackupAndRestore):
        def on_train_begin(self, logs=None):
            try:
                try:
                    super().on_train_begin(logs)
                except ValueError:
                    if not (tf.io.gfile.exists(self._prev_weights_path)
                            and tf.io.gfile.exists(self._prev_training_metadata_path)):
                        raise
                    tf.io.gfile.copy(self._prev_weights_path, self._weights_path, overwrite=True)
                    tf.io.gfile.copy(self._prev_training_metadata_path, self._training_metadata_path, overwrite=True)
                    super().on_train_begin(logs)
            except (OSError, ValueError) as err:
                logging.getLogger("kfx").warning("train: backup %s is unreadable (%s); starting over", backup_dir, err)
                tf.io.gfile.rmtree(backup_dir)
                tf.io.gfile.makedirs(backup_dir)

    return Backup(backup_dir, double_checkpoint=True)


# ------------------------------------------------------------------ KerasTuner
def tuner_role() -> str:
    """KerasTuner's role for this process: "local", or "chief"/"worker" in distributed tuning.

    KerasTuner decides it from KERASTUNER_ORACLE_IP/PORT/TUNER_ID; asking it (rather than reading
    the variables here) keeps its validation of a half-set environment.
    """
    _require(HAS_CHIEF_ORACLE, IS_CHIEF_ORACLE)
    if not _resolve(HAS_CHIEF_ORACLE)():
        return "local"
    return "chief" if _resolve(IS_CHIEF_ORACLE)() else "worker"


def start_oracle_server(oracle, address: str, threads: int = 4):
    """Serve `oracle` to KerasTuner workers at `address` ("ip:port"); returns (server, servicer).

    What keras_tuner's `oracle_chief.start_server` does before its wait loop, which only ends
    once every worker has asked for a trial after the last one (and polls every 20 s): a worker
    that dies mid-trial keeps it waiting forever. The caller runs its own loop instead, and
    stops the server; `servicer.stop_triggered` says a worker has been told the search is over.
    """
    _require(ORACLE_SERVICER, ORACLE_GRPC)
    from concurrent import futures

    import grpc

    servicer = _resolve(ORACLE_SERVICER)(oracle)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads))
    _resolve(ORACLE_GRPC)().add_OracleServicer_to_server(servicer, server)
    server.add_insecure_port(address)
    server.start()
    return server, servicer
