"""kfx serve --num_workers 2: two real worker processes behind one port.

Which worker answered is observed from outside, as an operator would: every client channel here
has its own TCP connection (a local subchannel pool), and the server side of each connection
belongs to exactly one worker process (psutil lists the process's sockets). Responses carry
nothing that TF Serving's do not.
"""

import os
import signal
import threading
import urllib.request

import grpc
import numpy as np
import psutil
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import (model_management_pb2, model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

from tests.serving.conftest import ServerProcess, build_keras, write_config
from tests.serving.test_reload import wait_for

X = np.array([[1.0, 2.0, 3.0]], np.float32)  # y = 6 + bias; version v has bias 10 * (v - 1)
METRICS = "/monitoring/prometheus/metrics"
COUNT = ':tensorflow:serving:request_count{model_name="m",status="OK"}'


class Channel:
    """One TCP connection to the server (gRPC shares connections between channels otherwise)."""

    def __init__(self, target: str):
        self.channel = grpc.insecure_channel(target, [("grpc.use_local_subchannel_pool", 1)])
        self.prediction = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)

    def predict(self, label: str = "") -> float:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "m"
        if label:
            request.model_spec.version_label = label
        request.inputs["x"].CopyFrom(tf.make_tensor_proto(X))
        return float(tf.make_ndarray(self.prediction.Predict(request, timeout=30).outputs["y"])[0, 0])

    def close(self) -> None:
        self.channel.close()


def config_text(labels: dict) -> str:
    return "".join(f'    version_labels {{ key: "{k}" value: {v} }}\n' for k, v in labels.items()) + \
        "    model_version_policy { latest { num_versions: 2 } }\n"


def workers_of(server: ServerProcess) -> set:
    return {child.pid for child in psutil.Process(server.process.pid).children()}


def answering(server: ServerProcess) -> set:
    """Workers holding an established connection on the gRPC port (each such connection got answers)."""
    pids = set()
    for pid in workers_of(server):
        try:
            connections = psutil.Process(pid).net_connections("tcp")
        except psutil.NoSuchProcess:
            continue
        if any(c.laddr.port == server.port and c.status == psutil.CONN_ESTABLISHED for c in connections):
            pids.add(pid)
    return pids


def page(server: ServerProcess) -> dict:
    """The Prometheus page (a new connection: any worker may answer) as {series: value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.rest_port}{METRICS}", timeout=30) as response:
        text = response.read().decode()
    return {k: float(v) for k, _, v in (line.rpartition(" ") for line in text.splitlines() if not line.startswith("#"))}


def fresh_answers(server: ServerProcess, label: str, count: int = 12, while_open=lambda: True):
    """Answers to one request on each of `count` new connections (the kernel spreads them over the
    workers); None when one failed or `while_open()`, called before they close, is false."""
    probes = [Channel(server.target) for _ in range(count)]
    try:
        answers = [probe.predict(label) for probe in probes]
        return answers if while_open() else None
    except grpc.RpcError:
        return None
    finally:
        for probe in probes:
            probe.close()


@pytest.fixture(scope="module")
def group(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("workers")
    base = tmp / "m"
    build_keras(str(base / "1"), bias=0.0)
    build_keras(str(tmp / "staging-2"), bias=10.0)
    config = write_config(str(tmp / "models.config"), [("m", str(base), config_text({"stable": 1}))])
    monitoring = tmp / "monitoring.config"
    monitoring.write_text(f'prometheus_config {{ enable: true path: "{METRICS}" }}\n')
    server = ServerProcess(tmp, "--num_workers=2", f"--model_config_file={config}",
                           "--model_config_file_poll_wait_seconds=1", f"--monitoring_config_file={monitoring}",
                           "--file_system_poll_wait_seconds=1", "--allow_version_labels_for_unavailable_models",
                           rest=True)
    try:
        server.wait_serving()
        wait_for(lambda: len(workers_of(server)) == 2, "two workers")
        yield server, tmp, config
    finally:
        server.stop()


def test_metrics_add_up_across_workers(group):
    server, _, _ = group
    # Both workers answered some of the 36.
    assert fresh_answers(server, "", 36, lambda: len(answering(server)) == 2) == [6.0] * 36
    pages = [page(server) for _ in range(6)]  # six connections: both workers serve the page
    assert all(p[COUNT] == 36 for p in pages)
    latency = pages[0]
    assert latency[':tensorflow:serving:request_latency_count{model_name="m",API="Predict",entrypoint="GRPC"}'] == 36
    assert latency[':tensorflow:serving:request_latency_bucket{model_name="m",API="Predict",entrypoint="GRPC",'
                   'le="+Inf"}'] == 36
    assert not any(k.split("{")[0].endswith(("_total", "_created")) for k in latency)


def test_reload_reaches_every_worker_with_no_failed_request(group):
    server, tmp, config = group
    failures, answers, stop = [], [], threading.Event()

    def load(channel: Channel) -> None:
        while not stop.is_set():
            for label in ("stable", ""):
                try:
                    answers.append((label, channel.predict(label)))
                except grpc.RpcError as exc:
                    failures.append(f"{label}: {exc.code().name} {exc.details()}")

    channels = [Channel(server.target) for _ in range(8)]
    threads = [threading.Thread(target=load, args=(channel,)) for channel in channels]
    for thread in threads:
        thread.start()
    try:
        # A new version on disk reaches every worker through its own file-system poll.
        os.rename(tmp / "staging-2", tmp / "m" / "2")
        wait_for(lambda: sum(1 for label, y in answers[-40:] if not label and y == 16.0) >= 8, "version 2 served")
        # The label moves by a ReloadConfig that one worker receives (retried while that worker has
        # not loaded version 2 yet, as TF Serving answers then); it returns once every worker has it.
        request = model_management_pb2.ReloadConfigRequest()
        text = open(config).read().replace("value: 1", "value: 2")
        text_format.Parse(text, request.config)

        def move() -> bool:
            try:
                return channels[0].models.HandleReloadConfigRequest(request, timeout=60).status.error_code == 0
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION, exc.details()
                return False

        wait_for(move, "the label move")
        mark = len(answers)
        assert fresh_answers(server, "stable") == [16.0] * 12  # on every worker at once
        # A label added to --model_config_file reaches every worker through the supervisor's poll.
        with open(config, "w") as handle:
            handle.write(text.replace("num_versions: 2 } }", 'num_versions: 2 } }\n    version_labels { key: "old" value: 1 }'))

        wait_for(lambda: fresh_answers(server, "old") == [6.0] * 12, "label 'old' on every worker")
        stop.set()
        for thread in threads:
            thread.join()
        assert failures == []
        assert {y for label, y in answers[mark:] if label == "stable"} == {16.0}
        assert {y for _, y in answers} == {6.0, 16.0}
        assert len(answering(server)) == 2  # the load's connections were answered by both workers
    finally:
        stop.set()
        for channel in channels:
            channel.close()


def test_killed_worker_is_replaced_and_counts_survive(group):
    server, _, _ = group
    before = page(server)[COUNT]
    victim, survivor = sorted(workers_of(server))
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: f"Worker {victim} exited with -9" in server.log(), "the supervisor reaping the killed worker")
    assert fresh_answers(server, "stable", 6) == [16.0] * 6  # the survivor answers
    replacement = wait_for(lambda: (workers_of(server) - {victim, survivor}) or None, "a replacement worker").pop()

    # Started after the label move, it serves the config the workers agreed on, not the file's first one.
    wait_for(lambda: fresh_answers(server, "stable", 8, lambda: replacement in answering(server)) == [16.0] * 8,
             "the replacement answering")
    assert page(server)[COUNT] >= before + 6  # the killed worker's requests still count


def test_sigterm_drains_every_worker_and_exits_zero(group):
    server, _, _ = group
    pids = workers_of(server)
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(60) == 0
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in pids)
    assert "Workers exited with [0, 0]" in server.log()


@pytest.mark.parametrize("count", [0, -2])
def test_num_workers_below_one_is_rejected(tmp_path, count):
    server = ServerProcess(tmp_path, f"--num_workers={count}", f"--model_base_path={tmp_path}")
    try:
        assert server.process.wait(60) == 1
        assert f"--num_workers must be at least 1, got {count}" in server.log()
    finally:
        server.stop()
