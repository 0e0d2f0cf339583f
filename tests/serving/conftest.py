"""Fixtures for the kfx serve tests: tiny SavedModels built here, servers in subprocesses.

Models (all tiny, deterministic):
- keras: Keras 3 `model.export()`; input x float32 [None, 3]; output y = sum(x) + bias.
- tf2: `tf.saved_model.save` of a tf.Module shaped like kfx's exports: serving_default on raw
  features (age int64, name string) plus `classify` / `regress` on serialized tf.Example.
- tf1: a tf.compat.v1 SavedModelBuilder export with real classify/regress method names.
"""

import os
import socket
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def build_keras(path: str, bias: float = 0.0) -> str:
    """Keras 3 export: y = x0 + x1 + x2 + bias."""
    import keras

    inputs = keras.Input((3,), name="x", dtype="float32")
    dense = keras.layers.Dense(1, name="y", kernel_initializer="ones",
                               bias_initializer=keras.initializers.Constant(bias))
    model = keras.Model({"x": inputs}, {"y": dense(inputs)})
    model.export(path, verbose=False)
    return path


class _Tf2Model(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64, name="age"),
                                  tf.TensorSpec([None], tf.string, name="name")])
    def serve(self, age, name):
        return {"score": tf.cast(age, tf.float32) * 0.5, "greeting_bytes": tf.strings.join(["hi ", name])}

    def _age(self, serialized):
        parsed = tf.io.parse_example(serialized, {"age": tf.io.FixedLenFeature([1], tf.int64)})
        return tf.cast(parsed["age"], tf.float32)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def classify(self, inputs):
        p = tf.sigmoid(self._age(inputs) / 10.0 - 4.0)
        return {"scores": tf.concat([1.0 - p, p], axis=1),
                "classes": tf.tile(tf.constant([["<=50K", ">50K"]]), [tf.shape(inputs)[0], 1])}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def regress(self, inputs):
        return {"outputs": self._age(inputs)[:, 0] * 2.0}


def build_tf2(path: str, warmup: bool = True, bad_warmup: bool = False) -> str:
    """kfx-style export with optional assets.extra/tf_serving_warmup_requests."""
    module = _Tf2Model()
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve,
                                                  "classify": module.classify, "regress": module.regress})
    if warmup or bad_warmup:
        from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

        request = predict_pb2.PredictRequest()
        request.model_spec.name = "tf2"
        request.inputs["age"].CopyFrom(tf.make_tensor_proto(np.array([30], np.int64)))
        if not bad_warmup:  # a request missing the `name` input fails, and with it the load
            request.inputs["name"].CopyFrom(tf.make_tensor_proto(np.array([b"warm"], object)))
        os.makedirs(os.path.join(path, "assets.extra"), exist_ok=True)
        with tf.io.TFRecordWriter(os.path.join(path, "assets.extra", "tf_serving_warmup_requests")) as writer:
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return path


def build_tf1(path: str) -> str:
    """TF1 SavedModelBuilder export: classify (scores+classes), regress (3x+1), predict (x -> y)."""
    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        serialized = v1.placeholder(tf.string, [None], name="tf_example")
        x = v1.io.parse_example(serialized, {"x": v1.io.FixedLenFeature([1], tf.float32)})["x"]
        p = tf.sigmoid(x)
        scores = tf.concat([1.0 - p, p], axis=1)
        classes = tf.tile(tf.constant([["a", "b"]]), [tf.shape(x)[0], 1])
        raw = v1.placeholder(tf.float32, [None, 1], name="x")
        utils = v1.saved_model.signature_def_utils
        with v1.Session(graph=graph) as session:
            builder = v1.saved_model.Builder(path)
            builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map={
                "classify_x": utils.classification_signature_def(serialized, classes, scores),
                "regress_x": utils.regression_signature_def(serialized, 3.0 * x + 1.0),
                "serving_default": utils.predict_signature_def({"x": raw}, {"y": 3.0 * raw + 1.0}),
            })
            builder.save()
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_config(path: str, models: list) -> str:
    """Writes a models.config text proto; models are (name, base_path, extra text) tuples."""
    entries = "".join(
        f'  config {{\n    name: "{name}"\n    base_path: "{base}"\n    model_platform: "tensorflow"\n{extra}  }}\n'
        for name, base, extra in models)
    with open(path, "w") as handle:
        handle.write(f"model_config_list {{\n{entries}}}\n")
    return path


class ServerProcess:
    """`python -m kfx.serving` in a subprocess, on free loopback ports."""

    def __init__(self, tmp_path, *flags, rest: bool = False):
        self.port = free_port()
        self.rest_port = free_port() if rest else 0
        self.target = f"127.0.0.1:{self.port}"
        self.log_path = os.path.join(str(tmp_path), f"server-{self.port}.log")
        args = [sys.executable, "-m", "kfx.serving", f"--port={self.port}", *flags]
        if rest:
            args.append(f"--rest_api_port={self.rest_port}")
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(args, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT)
        self.channel = grpc.insecure_channel(self.target)

    def wait_serving(self, timeout: float = 120.0) -> "ServerProcess":
        stub = health_pb2_grpc.HealthStub(self.channel)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                    return self
            except grpc.RpcError:
                time.sleep(0.3)
        raise TimeoutError(f"server not serving after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        with open(self.log_path) as handle:
            return handle.read()

    def rss(self) -> int:
        import psutil

        return psutil.Process(self.process.pid).memory_info().rss

    def stop(self) -> None:
        self.channel.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    """Base paths of the fixture models (built once per test session)."""
    root = tmp_path_factory.mktemp("models")
    build_keras(str(root / "keras" / "1"), bias=0.0)
    build_keras(str(root / "keras" / "2"), bias=10.0)
    build_tf2(str(root / "tf2" / "1"))
    build_tf1(str(root / "tf1" / "1"))
    return root


@pytest.fixture(scope="session")
def main_server(models_dir, tmp_path_factory):
    """One server with the keras (v1+v2, labels), tf2 and tf1 models, REST and Prometheus on."""
    tmp = tmp_path_factory.mktemp("main_server")
    config = write_config(str(tmp / "models.config"), [
        ("keras", str(models_dir / "keras"),
         "    model_version_policy { specific { versions: 1 versions: 2 } }\n"
         '    version_labels { key: "stable" value: 1 }\n    version_labels { key: "canary" value: 2 }\n'),
        ("tf2", str(models_dir / "tf2"), ""),
        ("tf1", str(models_dir / "tf1"), ""),
    ])
    monitoring = tmp / "monitoring.config"
    monitoring.write_text('prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }\n')
    server = ServerProcess(tmp, f"--model_config_file={config}", f"--monitoring_config_file={monitoring}",
                           "--allow_version_labels_for_unavailable_models", rest=True)
    try:
        yield server.wait_serving()
    finally:
        server.stop()
