"""push: publish a blessed, infra-blessed model in TensorFlow Serving's directory layout.

`<serving_base>/<model_name>/<version>/` (integer versions, increasing) plus
`<serving_base>/models.config` (a ModelServerConfig text proto listing every pushed model), so
`kfx serve --model_config_file=...` or real tensorflow_model_server serves the directory as is.

Atomicity: the SavedModel is copied into a staging directory first (inside this execution's
own output, so a crash leaves nothing in the serving tree; beside the versions, with a
non-numeric name servers ignore, if the serving base is on another filesystem: there one pusher
stages at a time and removes what killed ones left) and renamed to its version directory in one
step, so a server polling the base path never sees a half-written version. models.config is written to a temporary file and renamed over the old one, under an
exclusive lock on a local serving base, so concurrent pushers of different models do not drop each
other's entries; the kernel releases the lock of a killed push. (On object stores a rename is a
copy: there only the numeric directory name appearing last protects readers, and concurrent pushes
to one serving base must be serialized by the orchestrator.)

A model that is not blessed (or not infra-blessed) is not pushed; that is not an error: the
stage succeeds with metrics {"pushed": None, "reasons": [...]}.

Inputs: model, blessing, infra_blessing.
Output `pushed_model`: pushed.json ({pushed: {model_name, version, path} or null, reasons}).
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import shutil
from typing import Any

from kfx.pipeline.config_evaluation import PushConfig
from kfx.pipeline.artifacts import PUSHED_FILE, PUSHED_MODEL, load_blessing, load_infra_blessing, load_pushed  # noqa: F401
from kfx.pipeline import fs
from kfx.pipeline.component import ComponentError, ComponentSpec, Context

MODELS_CONFIG = "models.config"
CONFIG_LOCK = f".{MODELS_CONFIG}.lock"
CONFIG_TMP_PREFIX = f".{MODELS_CONFIG}.tmp-"
STAGING_PREFIX = ".staging-"
STAGING_LOCK = ".staging.lock"
THRESHOLDS_ASSET = "assets.extra/kfx_decision_thresholds.json"
_RENAME_ATTEMPTS = 5


def _local(uri: str) -> str:
    return os.path.abspath(uri.removeprefix("file://")) if fs.is_local(uri) else uri.rstrip("/")


def versions(model_dir: str) -> list[int]:
    """The integer version directories under <serving_base>/<model_name>."""
    import tensorflow as tf

    if not tf.io.gfile.isdir(model_dir):
        return []
    return sorted(int(n.rstrip("/")) for n in tf.io.gfile.listdir(model_dir) if n.rstrip("/").isdigit())


def _copy_file(src: str, dst: str) -> None:
    import tensorflow as tf

    tf.io.gfile.copy(src, dst, overwrite=True)


def copy_tree(src: str, dst: str) -> int:
    """Copy a directory tree with tf.io.gfile; returns the number of files."""
    import tensorflow as tf

    count = 0
    for dirpath, _dirs, files in tf.io.gfile.walk(src):
        rel = os.path.relpath(dirpath, src)
        target = dst if rel == "." else f"{dst}/{rel}"
        tf.io.gfile.makedirs(target)
        for name in files:
            _copy_file(f"{dirpath}/{name}", f"{target}/{name}")
            count += 1
    return count


def _rename(src: str, dst: str) -> None:
    import tensorflow as tf

    if fs.is_local(src):
        os.rename(src, dst)  # atomic; fails if dst exists and is not empty
    else:
        tf.io.gfile.rename(src, dst, overwrite=False)


def _replace(src: str, dst: str) -> None:
    import tensorflow as tf

    if fs.is_local(src):
        os.replace(src, dst)  # atomic: readers see the old file or the new one
    else:
        tf.io.gfile.rename(src, dst, overwrite=True)


def publish_version(model_uri: str, model_dir: str, staging_root: str, extra_files: dict[str, str]) -> int:
    """Copy the SavedModel to <model_dir>/<next version> atomically; returns the version.

    Args:
        model_uri: the SavedModel directory.
        model_dir: <serving_base>/<model_name>.
        staging_root: where to stage the copy (same filesystem as model_dir for an atomic rename).
        extra_files: relative path -> text, written into the version (e.g. decision thresholds).
    """
    import tensorflow as tf

    tf.io.gfile.makedirs(model_dir)
    if staging_root != model_dir:
        try:
            return _stage_and_claim(model_uri, model_dir, staging_root, extra_files)
        except OSError as err:
            if err.errno != errno.EXDEV:
                raise
        # The serving base is on another filesystem: stage again beside the versions.
    # There one pusher stages at a time (on a local disk), so staging directories found there
    # were left by killed pushes: servers ignore them (not numeric), and they are removed.
    with _lock(model_dir, STAGING_LOCK) as locked:
        if locked:
            _remove_leftovers(model_dir, STAGING_PREFIX)
        return _stage_and_claim(model_uri, model_dir, model_dir, extra_files)


def _stage_and_claim(model_uri: str, model_dir: str, staging_root: str, extra_files: dict[str, str]) -> int:
    import tensorflow as tf

    stage = f"{staging_root.rstrip('/')}/{STAGING_PREFIX}{secrets.token_hex(4)}"
    try:
        copy_tree(model_uri, stage)
        for rel, text in extra_files.items():
            tf.io.gfile.makedirs(os.path.dirname(f"{stage}/{rel}"))
            with tf.io.gfile.GFile(f"{stage}/{rel}", "w") as f:
                f.write(text)
        return _claim_version(stage, model_dir)
    finally:
        if tf.io.gfile.exists(stage):
            tf.io.gfile.rmtree(stage)


def _claim_version(stage: str, model_dir: str) -> int:
    """Rename `stage` to the next free version; another pusher taking it first means retry."""
    for _ in range(_RENAME_ATTEMPTS):
        version = (versions(model_dir) or [0])[-1] + 1
        try:
            _rename(stage, f"{model_dir}/{version}")
            return version
        except OSError as err:
            if err.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
    raise ComponentError(f"push: could not claim a new version under {model_dir} after {_RENAME_ATTEMPTS} "
                         f"attempts (other pushers?)")


@contextlib.contextmanager
def _lock(directory: str, name: str):
    """Exclusive lock on the file `name` in a local directory; yields whether one is held.

    flock, so the kernel releases it when its holder dies: a killed push never blocks the next.
    Object stores have no such lock (yields False).
    """
    if not fs.is_local(directory):
        yield False
        return
    directory = _local(directory)
    os.makedirs(directory, exist_ok=True)
    with open(f"{directory}/{name}", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield True  # closing the file releases the lock


def _remove_leftovers(directory: str, prefix: str) -> None:
    """Remove what killed pushes left in a local directory (names starting with `prefix`)."""
    directory = _local(directory)
    for name in os.listdir(directory):
        if name.startswith(prefix):
            path = f"{directory}/{name}"
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.remove(path)


def update_models_config(serving_base: str, model_name: str, base_path: str) -> str:
    """Add or update the model's entry in <serving_base>/models.config, atomically; returns its path."""
    serving_base = _local(serving_base)
    with _lock(serving_base, CONFIG_LOCK) as locked:
        if locked:  # no other pusher is writing now: temporary files left are from killed pushes
            _remove_leftovers(serving_base, CONFIG_TMP_PREFIX)
        return _rewrite_models_config(serving_base, model_name, base_path)


def _rewrite_models_config(serving_base: str, model_name: str, base_path: str) -> str:
    import tensorflow as tf
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    path = f"{serving_base}/{MODELS_CONFIG}"
    config = model_server_config_pb2.ModelServerConfig()
    if tf.io.gfile.exists(path):
        with tf.io.gfile.GFile(path) as f:
            try:
                text_format.Parse(f.read(), config)
            except text_format.ParseError as err:
                raise ComponentError(f"push: {path} is not a ModelServerConfig text proto: {err}") from None
    entries = config.model_config_list.config
    entry = next((e for e in entries if e.name == model_name), None) or entries.add(name=model_name)
    entry.base_path = base_path
    entry.model_platform = "tensorflow"
    tmp = f"{serving_base}/{CONFIG_TMP_PREFIX}{secrets.token_hex(4)}"
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(text_format.MessageToString(config))
    _replace(tmp, path)
    return path


def _refusals(cfg, model: str, blessing: dict, infra: dict | None) -> list[str]:
    reasons = []
    if blessing.get("model") not in (None, model):
        reasons.append(f"the blessing is for model {blessing['model']}, not {model}")
    if not blessing.get("blessed"):
        reasons.append("not blessed by evaluate")
        reasons += list(blessing.get("reasons") or [])
    if cfg.require_infra_blessing:
        if infra is None:
            reasons.append("no infra_blessing (push.require_infra_blessing is true)")
        elif infra.get("model") not in (None, model):
            reasons.append(f"the infra_blessing is for model {infra['model']}, not {model}")
        elif not infra.get("blessed"):
            reasons.append("not blessed by infra_validate")
            reasons += list(infra.get("reasons") or [])
    return reasons


def run(ctx: Context) -> dict[str, Any]:
    import tensorflow as tf


    cfg = ctx.config
    model = ctx.inputs["model"]
    blessing = load_blessing(ctx.inputs["blessing"])
    infra = load_infra_blessing(ctx.inputs["infra_blessing"]) if ctx.inputs.get("infra_blessing") else None
    out = ctx.outputs[PUSHED_MODEL]
    reasons = _refusals(cfg, model, blessing, infra)
    if reasons:
        record = {"pushed": None, "reasons": reasons, "model": model}
        with tf.io.gfile.GFile(f"{out}/{PUSHED_FILE}", "w") as f:
            json.dump(record, f, indent=1)
        ctx.log.info("push: not pushed: %s", reasons)
        return {"pushed": None, "reasons": reasons}
    if not tf.io.gfile.exists(f"{model}/saved_model.pb"):
        raise ComponentError(f"push: {model} is not a SavedModel directory (no saved_model.pb)")

    root = ctx.root or ctx.pipeline.root
    serving_base = _local(cfg.serving_base or f"{root.rstrip('/')}/serving")
    name = cfg.model_name or ctx.pipeline.name
    model_dir = f"{serving_base}/{name}"
    extra = {}
    if blessing.get("decision_thresholds"):
        extra[THRESHOLDS_ASSET] = json.dumps(blessing["decision_thresholds"], indent=1, sort_keys=True)
    # Stage inside this execution's output when it shares a filesystem with the serving base.
    staging = out if fs.is_local(out) == fs.is_local(serving_base) else model_dir
    version = publish_version(model, model_dir, staging, extra)
    config_path = update_models_config(serving_base, name, model_dir)
    pushed = {"model_name": name, "version": version, "path": f"{model_dir}/{version}"}
    with tf.io.gfile.GFile(f"{out}/{PUSHED_FILE}", "w") as f:
        json.dump({"pushed": pushed, "reasons": [], "model": model, "models_config": config_path}, f, indent=1)
    ctx.log.info("push: %s", pushed)
    return {"pushed": pushed, "reasons": []}


SPEC = ComponentSpec(name="push", config=PushConfig, inputs=("model", "blessing", "infra_blessing"), outputs=(PUSHED_MODEL,),
                     run=run, optional_inputs=("infra_blessing",))
