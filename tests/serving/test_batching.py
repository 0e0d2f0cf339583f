"""Server-side batching: correct per-request answers, padding, batch-size metrics, full queue."""

import json
import threading
import urllib.request

import grpc
import numpy as np
import pytest

from kfx.serving.batching import QUEUE_FULL
from kfx.serving.client import ServingClient
from tests.serving.conftest import ServerProcess, write_config

BATCHING = """
max_batch_size { value: 4 }
batch_timeout_micros { value: 1000000 }
max_enqueued_batches { value: 1 }
num_batch_threads { value: 1 }
allowed_batch_sizes: 2
allowed_batch_sizes: 4
"""


@pytest.fixture(scope="module")
def server(models_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("batching")
    (tmp / "batching.config").write_text(BATCHING)
    (tmp / "monitoring.config").write_text('prometheus_config { enable: true path: "/metrics" }\n')
    config = write_config(str(tmp / "models.config"), [("keras", str(models_dir / "keras"), "")])
    proc = ServerProcess(tmp, f"--model_config_file={config}", "--enable_batching",
                         f"--batching_parameters_file={tmp / 'batching.config'}",
                         f"--monitoring_config_file={tmp / 'monitoring.config'}", rest=True)
    try:
        yield proc.wait_serving()
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def client(server):
    with ServingClient(server.target, retries=0, timeout=60) as c:
        yield c


def test_concurrent_requests_are_batched_and_answered_individually(server, client):
    results, threads = {}, []

    def send(i, x):
        # max_enqueued_batches is 1: when the batch thread is slow to take a full batch (a busy
        # machine), a request finds the queue full and gets UNAVAILABLE, as from TF Serving; a
        # client retries those. Rejected requests never run, so the batch counts below still hold.
        for _ in range(50):
            try:
                results[i] = client.predict("keras", {"x": x})["y"].tolist()
                return
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or QUEUE_FULL not in exc.details():
                    raise

    for i in range(8):
        threads.append(threading.Thread(target=send, args=(i, np.full((1, 3), i, np.float32))))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {i: [[3.0 * i + 10.0]] for i in range(8)}
    page = urllib.request.urlopen(f"http://127.0.0.1:{server.rest_port}/metrics").read().decode()
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in page.splitlines()
               if line.startswith(":tensorflow:serving:batching_session:processed_batch_size")}
    count = samples[':tensorflow:serving:batching_session:processed_batch_size_count{model_name="keras"}']
    total = samples[':tensorflow:serving:batching_session:processed_batch_size_sum{model_name="keras"}']
    assert 2 <= count <= 8 and total >= 8  # 8 rows went through in padded batches of 2 or 4
    assert total % 2 == 0  # only allowed batch sizes (2, 4) are run


def test_single_row_is_padded_to_allowed_size(client):
    assert client.predict("keras", {"x": np.array([[1, 2, 3]], np.float32)})["y"].tolist() == [[16.0]]


def test_full_queue_answers_unavailable_at_once(client):
    # One open batch (3 of 4 rows, waiting for its 1 s timeout) fills max_enqueued_batches=1,
    # so a 2-row request cannot be queued and is rejected without waiting.
    for _ in range(3):
        outcomes = []

        def send(rows):
            try:
                y = client.predict("keras", {"x": np.ones((rows, 3), np.float32)})["y"]
                outcomes.append(("ok", rows, y.ravel().tolist()))
            except grpc.RpcError as exc:
                outcomes.append((exc.code(), rows, exc.details()))

        first = threading.Thread(target=send, args=(3,))
        first.start()
        second = threading.Thread(target=send, args=(2,))
        second.start()
        first.join()
        second.join()
        rejected = [o for o in outcomes if o[0] != "ok"]
        if rejected:
            break
    assert len(rejected) == 1
    assert rejected[0][0] == grpc.StatusCode.UNAVAILABLE and rejected[0][2] == QUEUE_FULL
    accepted = [o for o in outcomes if o[0] == "ok"][0]
    assert accepted[2] == [13.0] * accepted[1]


def test_task_larger_than_max_batch_size(client):
    with pytest.raises(grpc.RpcError) as info:
        client.predict("keras", {"x": np.ones((5, 3), np.float32)})
    assert (info.value.code(), info.value.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT, "Task size 5 is larger than maximum input batch size 4")


def test_rest_goes_through_batching_too(server):
    request = urllib.request.Request(f"http://127.0.0.1:{server.rest_port}/v1/models/keras:predict",
                                     data=json.dumps({"instances": [[1, 1, 1]]}).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        assert json.loads(response.read()) == {"predictions": [[13.0]]}
