"""SIGTERM with requests in flight: they complete, new requests are refused, the process exits 0.

TF Serving itself ignores SIGTERM (tensorflow/serving#1853); kfx serve drains instead: it stops
accepting requests at once (gRPC UNAVAILABLE, REST connection refused or 503), lets in-flight
requests finish for up to --shutdown_grace_seconds, then exits 0.

The in-flight requests are one batch of a "gated" model: batching runs a batch only when it is
full (max_batch_size 4, a long timeout), so three gRPC and one REST request of one row each
become one model run; its graph writes <gate>/started-<ids> and then waits until <gate>/release
exists. The test so knows that all four are inside the server when it sends SIGTERM, and they
stay there until it releases them (no sleeps, no timing guesses). A single spinning run also
keeps the test independent of how many threads TensorFlow's inter-op pool has.
"""

import http.client
import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import tensorflow as tf

from kfx.serving.client import ServingClient
from tests.serving.conftest import ServerProcess

BATCHING = "max_batch_size { value: 4 } batch_timeout_micros { value: 600000000 } num_batch_threads { value: 1 }"
GRACE = 60  # seconds; generous so a busy machine never cancels the released requests
IDS = (1, 2, 3)  # gRPC requests in flight; the REST one uses id 4
MAX_SPINS = 10**7  # the gate gives up eventually, so a broken test cannot hang a server forever


class _Gated(tf.Module):
    def __init__(self, gate: str):
        super().__init__()
        self.gate = gate

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64, name="id")])
    def serve(self, request_id):
        tag = tf.strings.reduce_join(tf.strings.as_string(request_id), separator="-")
        started = tf.io.write_file(tf.strings.join([self.gate, "/started-", tag]), tag)
        with tf.control_dependencies([started]):
            # Built from the input so graph optimisation cannot fold the file check away.
            pattern = tf.strings.join([self.gate, "/release", tf.strings.substr(tag, 0, 0)])
        spins = tf.while_loop(lambda n: tf.logical_and(tf.size(tf.io.matching_files(pattern)) == 0, n < MAX_SPINS),
                              lambda n: n + 1, [tf.constant(0)])
        return {"y": request_id * 2 + tf.cast(tf.minimum(spins, 0), tf.int64)}


def build_gated(path: str, gate: str) -> str:
    module = _Gated(gate)
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
    return path


@pytest.fixture
def gated_server(tmp_path, request):
    """A server of the gated model; the grace period is GRACE unless parametrized indirectly."""
    grace = getattr(request, "param", GRACE)
    gate = tmp_path / "gate"
    gate.mkdir()
    build_gated(str(tmp_path / "gated" / "1"), str(gate))
    (tmp_path / "batching.config").write_text(BATCHING)
    server = ServerProcess(tmp_path, f"--model_base_path={tmp_path / 'gated'}", "--model_name=gated",
                           f"--shutdown_grace_seconds={grace}", "--enable_batching",
                           f"--batching_parameters_file={tmp_path / 'batching.config'}", rest=True)
    try:
        yield server.wait_serving(), gate
    finally:
        (gate / "release").touch()
        server.stop()


def _wait_for(check, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _rest(port: int, model: str, body: dict, timeout: float = 120) -> tuple:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/models/{model}:predict",
                                     data=json.dumps(body).encode(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def start_gated_batch(server, gate) -> tuple:
    """Sends the 4 gated requests (ids 1-3 over gRPC, 4 over REST); returns (threads, results)
    once their batch runs inside the model."""
    results = {}

    def grpc_call(request_id):
        with ServingClient(server.target, retries=0, timeout=120) as client:
            try:
                results[request_id] = client.predict("gated", {"id": np.array([request_id], np.int64)})["y"].tolist()
            except grpc.RpcError as exc:
                results[request_id] = exc.code()

    def rest_call():
        try:
            results[4] = _rest(server.rest_port, "gated", {"inputs": {"id": [4]}})
        except OSError as exc:
            results[4] = repr(exc)

    threads = [threading.Thread(target=grpc_call, args=(i,)) for i in IDS] + [threading.Thread(target=rest_call)]
    for thread in threads:
        thread.start()

    def started() -> set:
        return {int(i) for name in os.listdir(gate) if name.startswith("started-") for i in name[8:].split("-")}

    _wait_for(lambda: started() == {*IDS, 4}, "the batch of 4 requests to run in the model")
    return threads, results


def test_sigterm_drains_in_flight_requests_and_refuses_new_ones(gated_server):
    server, gate = gated_server
    threads, results = start_gated_batch(server, gate)
    with ServingClient(server.target, retries=0, timeout=30) as client:
        assert client.status("gated") == [(1, "AVAILABLE", 0, "")]
    kept_alive = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=30)
    kept_alive.request("GET", "/v1/models/gated")
    first = kept_alive.getresponse()
    assert (first.status, json.loads(first.read())["model_version_status"][0]["state"]) == (200, "AVAILABLE")

    server.process.send_signal(signal.SIGTERM)

    # New requests are refused while the four above are still running. (GetModelStatus is the
    # probe: a Predict would wait for a batch to fill.)
    refused = []

    def refused_now():
        with ServingClient(server.target, retries=0, timeout=10) as client:
            try:
                client.status("gated")
            except grpc.RpcError as exc:
                refused.append(exc.code())
                return True
        return False

    _wait_for(refused_now, "a new gRPC request to be refused after SIGTERM", timeout=30)
    assert refused == [grpc.StatusCode.UNAVAILABLE]
    try:
        status, _ = _rest(server.rest_port, "gated", {"instances": [5]}, timeout=10)
    except (urllib.error.URLError, ConnectionError) as exc:
        if not isinstance(getattr(exc, "reason", exc), (ConnectionRefusedError, ConnectionResetError)):
            raise  # e.g. a timeout: the request was accepted and never answered, not refused
        status = "refused"  # the listening socket is closed
    assert status in ("refused", 503)
    kept_alive.request("GET", "/v1/models/gated")  # a keep-alive connection opened before SIGTERM
    response = kept_alive.getresponse()
    assert (response.status, json.loads(response.read())) == (503, {"error": "Server is shutting down"})
    kept_alive.close()
    assert all(thread.is_alive() for thread in threads) and server.process.poll() is None

    (gate / "release").touch()
    for thread in threads:
        thread.join(GRACE)
    # Every in-flight request completed with its own answer; then the process exited by itself.
    assert results == {1: [2], 2: [4], 3: [6], 4: (200, {"outputs": [8]})}
    assert server.process.wait(GRACE) == 0
    log = server.log()
    assert "Traceback" not in log, log
    print(f"\nSIGTERM: {len(IDS)} gRPC + 1 REST in-flight requests completed; new requests refused "
          f"({refused[0].name}, REST {status}); exit code 0")


@pytest.mark.parametrize("gated_server", [2], indirect=True)
def test_requests_outliving_the_grace_period_are_cancelled_and_the_process_exits(gated_server):
    server, gate = gated_server
    threads, results = start_gated_batch(server, gate)
    server.process.send_signal(signal.SIGTERM)
    # Never released: after the 2 s grace gRPC cancels the calls, and the process exits 0 without
    # waiting for the model run (which would spin for minutes). The bound only guards against a hang.
    assert server.process.wait(GRACE) == 0
    for thread in threads:
        thread.join(GRACE)
    assert {results[i] for i in IDS} <= {grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE}, results
    assert isinstance(results[4], str)  # the REST connection was closed without an answer
    assert "Model runs still going after --shutdown_grace_seconds; exiting" in server.log()
