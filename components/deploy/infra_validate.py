"""infra_validate: load the candidate in a real model server and query every signature.

The server runs in a separate process (`tensorflow_model_server` when on PATH, else kfx's own
`python -m kfx.serving`), on a free loopback port, serving a temporary base directory whose only
version links to the candidate SavedModel. Canary requests are built from real examples of a
split and sent over gRPC to every exported signature with the API its method name calls for
(Predict, Classify, Regress); responses are checked for shape, finiteness and agreement with
the same signature run in this process. The server is always shut down.

A model that fails is not a failure of the stage: the output says so, and push refuses it.

Inputs: model, examples.
Output `infra_blessing`: infra_blessing.json ({blessed, model, server, checks, reasons}),
server.log, and an empty INFRA_BLESSED or INFRA_NOT_BLESSED file.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

from kfx.pipeline.config_evaluation import InfraValidateConfig
from kfx.pipeline.artifacts import INFRA_BLESSING, INFRA_BLESSING_FILE, load_infra_blessing, read_columns  # noqa: F401
from kfx.pipeline.component import ComponentError, ComponentSpec, Context

SERVER_LOG = "server.log"
BLESSED_MARKER, NOT_BLESSED_MARKER = "INFRA_BLESSED", "INFRA_NOT_BLESSED"
CANARY_MODEL = "canary"
PREDICT, CLASSIFY, REGRESS = "tensorflow/serving/predict", "tensorflow/serving/classify", "tensorflow/serving/regress"
INTERNAL_SIGNATURES = ("__saved_model_init_op",)


class InfraFailure(Exception):
    """The model failed infra validation (not a fault of the stage)."""


def signature_methods(model_uri: str) -> dict[str, str]:
    """signature name -> method name, read from saved_model.pb (what TF Serving dispatches on)."""
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(f"{model_uri}/saved_model.pb", "rb") as f:
        sm.ParseFromString(f.read())
    return {k: v.method_name for k, v in sm.meta_graphs[0].signature_def.items() if k not in INTERNAL_SIGNATURES}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(kind: str, port: int, base_path: str) -> tuple[str, list[str]]:
    """(server name, argv) of the model server to start."""
    tfms = shutil.which("tensorflow_model_server")
    flags = [f"--port={port}", f"--model_name={CANARY_MODEL}", f"--model_base_path={base_path}",
             "--rest_api_port=0", "--file_system_poll_wait_seconds=1"]
    if kind == "tensorflow_model_server" or (kind == "auto" and tfms):
        if not tfms:
            raise ComponentError("infra_validate.server is tensorflow_model_server but it is not on PATH")
        return "tensorflow_model_server", [tfms, *flags]
    return "kfx serve", [sys.executable, "-m", "kfx.serving", "--host=127.0.0.1", *flags]


def _stage_model(model_uri: str, tmp: str) -> str:
    """A base path <tmp>/canary whose version 1 is the model (a link when local, else a copy)."""
    import tensorflow as tf

    base = os.path.join(tmp, CANARY_MODEL)
    os.makedirs(base)
    target = os.path.join(base, "1")
    if "://" not in model_uri or model_uri.startswith("file://"):
        os.symlink(os.path.abspath(model_uri.removeprefix("file://")), target)
    else:
        for dirpath, _dirs, files in tf.io.gfile.walk(model_uri):
            rel = os.path.relpath(dirpath, model_uri) if dirpath != model_uri else ""
            os.makedirs(os.path.join(target, rel), exist_ok=True)
            for name in files:
                tf.io.gfile.copy(f"{dirpath}/{name}", os.path.join(target, rel, name))
    return base


def _wait_available(client, proc, deadline: float, log_path: str) -> None:
    import grpc

    last = "no answer yet"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise InfraFailure(f"the model server exited with code {proc.returncode} before the model was "
                               f"AVAILABLE: {_tail(log_path)}")
        try:
            states = client.status(CANARY_MODEL)
            if any(state == "AVAILABLE" for _, state, _, _ in states):
                return
            errors = [msg for _, state, code, msg in states if state == "END" and code]
            if errors:
                raise InfraFailure(f"the model server could not load the model: {errors[0]}")
            last = str(states)
        except grpc.RpcError as exc:
            last = f"{exc.code().name}: {exc.details()}"
        time.sleep(0.25)
    raise InfraFailure(f"the model was not AVAILABLE within the start timeout; last status: {last}; "
                       f"server log: {_tail(log_path)}")


def _tail(path: str, lines: int = 6) -> str:
    try:
        with open(path, errors="replace") as f:
            return " | ".join(line.strip() for line in f.readlines()[-lines:])
    except OSError:
        return "(no log)"


def _compare(name: str, got: np.ndarray, want: np.ndarray, cfg) -> list[str]:
    """Problems of one output: shape, finiteness, agreement with the in-process result."""
    problems = []
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        return [f"{name}: shape {list(got.shape)} from the server, {list(want.shape)} in process"]
    if got.dtype.kind in "fc":
        if not np.all(np.isfinite(got)):
            problems.append(f"{name}: {int(np.sum(~np.isfinite(got)))} non-finite values")
        elif not np.allclose(got, want, rtol=cfg.rtol, atol=cfg.atol):
            problems.append(f"{name}: differs from the in-process result by up to "
                            f"{float(np.max(np.abs(got - want))):.3g}")
    elif got.dtype.kind in "iub":
        if not np.array_equal(got, want):
            problems.append(f"{name}: differs from the in-process result")
    else:
        # Compared as bytes: a string output may be binary (a generated image's PNG), not UTF-8.
        g = [v if isinstance(v, bytes) else str(v).encode() for v in got.ravel().tolist()]
        w = [v if isinstance(v, bytes) else str(v).encode() for v in want.ravel().tolist()]
        if g != w:
            problems.append(f"{name}: differs from the in-process result")
    return problems


def _example_input(fn, data) -> str | None:
    """The input name of a signature taking serialized tf.Examples (one string input that is
    not a feature column), else None."""
    import tensorflow as tf

    from kfx.pipeline.artifacts.scoring import input_specs, wire_name

    specs = input_specs(fn)
    if len(specs) == 1:
        arg, spec = next(iter(specs.items()))
        if spec.dtype == tf.string and wire_name(arg, spec) not in data.frame:
            return arg
    return None


def check_signature(client, model, sig: str, method: str, data, cfg, task=None) -> dict:
    """Send the canaries to one signature; returns {signature, method, api, passed, problems}.
    `task` (models/tasks/, optional) may supply inputs that are not columns of the examples."""
    import grpc
    import tensorflow as tf
    from tensorflow.core.example import example_pb2

    from kfx.pipeline.artifacts.scoring import feature_inputs, input_specs, wire_name

    fn = model.signatures[sig]
    examples_input = _example_input(fn, data)
    problems: list[str] = []
    api = {CLASSIFY: "Classify", REGRESS: "Regress"}.get(method, "Predict")
    try:
        own = task.request_inputs(input_specs(fn), data.rows) if task is not None else None
        if own is not None:  # inputs that are not columns of the examples (generation: noise, class)
            local_in = {k: tf.constant(v) for k, v in own.items()}
        elif examples_input is not None:
            local_in = {examples_input: tf.constant(data.serialized)}
        else:
            local_in = feature_inputs(fn, data, where=f"signature {sig}: ")
        want = {k: v.numpy() for k, v in fn(**local_in).items()}
        timeout = cfg.request_timeout_seconds
        if api == "Predict":
            # Over the wire inputs are keyed by the SignatureDef's names, not the Python arguments.
            specs = input_specs(fn)
            sent = {wire_name(k, specs[k]): (np.array(v.numpy(), dtype=object) if v.dtype == tf.string else v.numpy())
                    for k, v in local_in.items()}
            got = client.predict(CANARY_MODEL, sent, signature=sig, timeout=timeout)
            for key in sorted(set(want) | set(got)):
                if key not in got or key not in want:
                    problems.append(f"output {key!r} only {'in process' if key in want else 'from the server'}")
                    continue
                problems += _compare(key, got[key], want[key], cfg)
        else:
            examples = [example_pb2.Example.FromString(s) for s in data.serialized]
            if api == "Classify":
                result = client.classify(CANARY_MODEL, examples, signature=sig, timeout=timeout)
                scores = np.array([[score for _, score in row] for row in result], dtype=np.float32)
                labels = np.array([[label for label, _ in row] for row in result], dtype=object)
                problems += _compare("scores", scores, want["scores"], cfg)
                if "classes" in want:
                    problems += _compare("classes", labels, want["classes"], cfg)
            else:
                values = client.regress(CANARY_MODEL, examples, signature=sig, timeout=timeout)
                problems += _compare("outputs", values, np.reshape(want["outputs"], [-1]), cfg)
    except grpc.RpcError as exc:
        problems.append(f"{api} failed: {exc.code().name}: {exc.details()}")
    except ComponentError as err:
        problems.append(str(err))
    return {"signature": sig, "method": method, "api": api, "requests": data.rows,
            "passed": not problems, "problems": problems}


def _task(model_uri: str):
    """The model's task (models/tasks/), or None for a model without a task description."""
    from kfx.models import tasks

    try:
        return tasks.of(tasks.load(model_uri))
    except (FileNotFoundError, KeyError):
        return None


def validate(model_uri: str, data, cfg, log_path: str) -> dict:
    """Start a server on the model, check every signature, stop the server. Never raises for
    a bad model: returns {blessed, server, checks, reasons}."""
    from kfx.serving.client import ServingClient

    from kfx.pipeline.artifacts.scoring import load

    methods = signature_methods(model_uri)
    checks: list[dict] = []
    reasons: list[str] = []
    try:
        model = load(model_uri)  # the reference results; a model that does not load here fails
    except Exception as err:  # noqa: BLE001 - any load error is the model's failure, reported
        return {"blessed": False, "server": None, "checks": [],
                "reasons": [f"the SavedModel does not load in process: {type(err).__name__}: {err}"[:2000]]}
    tmp = tempfile.mkdtemp(prefix="kfx-infra-")
    server = "?"
    proc = None
    try:
        base = _stage_model(model_uri, tmp)
        server, argv = server_command(cfg.server, free_port(), base)
        port = int(next(a for a in argv if a.startswith("--port=")).split("=")[1])
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        with open(log_path, "w") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        with ServingClient(f"127.0.0.1:{port}", timeout=cfg.request_timeout_seconds, retries=2) as client:
            try:
                _wait_available(client, proc, time.monotonic() + cfg.start_timeout_seconds, log_path)
                served = sorted(k for k in client.metadata(CANARY_MODEL) if k not in INTERNAL_SIGNATURES)
                if served != sorted(methods):
                    reasons.append(f"the server lists signatures {served}, the SavedModel has {sorted(methods)}")
                for sig, method in sorted(methods.items()):
                    check = check_signature(client, model, sig, method, data, cfg, _task(model_uri))
                    checks.append(check)
                    reasons += [f"signature {sig!r} ({check['api']}): {p}" for p in check["problems"]]
            except InfraFailure as err:
                reasons.append(str(err))
    finally:
        if proc is not None:
            _stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)
    return {"blessed": not reasons and bool(checks), "server": server, "checks": checks,
            "reasons": reasons or ([] if checks else ["the model has no signatures"])}


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 10 s: the server never outlives the stage."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def run(ctx: Context) -> dict[str, Any]:
    import tensorflow as tf

    from kfx.pipeline.artifacts.scoring import read_split

    cfg = ctx.config
    started = time.time()
    model_uri = ctx.inputs["model"]
    if not tf.io.gfile.exists(f"{model_uri}/saved_model.pb"):
        raise ComponentError(f"infra_validate: {model_uri} is not a SavedModel directory (no saved_model.pb)")
    meta = read_columns(ctx.inputs["examples"])
    if cfg.split not in meta["splits"]:
        raise ComponentError(f"infra_validate.split {cfg.split!r} is not a split of the examples ({meta['splits']})")
    data = read_split(ctx.inputs["examples"], cfg.split, meta["columns"], rows=cfg.canary_examples)
    if not data.rows:
        raise ComponentError(f"infra_validate: split {cfg.split!r} has no rows for canary requests")
    out = ctx.outputs[INFRA_BLESSING]
    # The server writes its log locally; it is copied into the artifact afterwards (any URI).
    with tempfile.TemporaryDirectory(prefix="kfx-infra-log-") as logdir:
        log_path = os.path.join(logdir, SERVER_LOG)
        result = validate(model_uri, data, cfg, log_path)
        if not os.path.exists(log_path):
            with open(log_path, "w") as f:
                f.write("no server was started: " + "; ".join(result["reasons"]) + "\n")
        tf.io.gfile.copy(log_path, f"{out}/{SERVER_LOG}", overwrite=True)
    result.update(model=model_uri, canary_split=cfg.split, canary_rows=data.rows,
                  seconds=round(time.time() - started, 2))
    with tf.io.gfile.GFile(f"{out}/{INFRA_BLESSING_FILE}", "w") as f:
        json.dump(result, f, indent=1, sort_keys=True)
    with tf.io.gfile.GFile(f"{out}/{BLESSED_MARKER if result['blessed'] else NOT_BLESSED_MARKER}", "w") as f:
        f.write("")
    metrics = {"infra_blessed": result["blessed"], "server": result["server"], "signatures": len(result["checks"]),
               "reasons": result["reasons"], "seconds": result["seconds"]}
    ctx.log.info("infra_validate %s", metrics)
    return metrics


SPEC = ComponentSpec(name="infra_validate", config=InfraValidateConfig, inputs=("model", "examples"), outputs=(INFRA_BLESSING,),
                     run=run, code=("kfx.pipeline.artifacts.scoring",))
